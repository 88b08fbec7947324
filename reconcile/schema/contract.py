"""The column contract: each column's conversion, decided once with the schema plan, stored, read by every stage.

When ``reconcile schema apply`` plans the target, every source column of every planned table gets a
:class:`ColumnContract`: source type, target type, and the named conversion
(:data:`reconcile.db.columns.CONVERSIONS`) that fixes, for all stages alike,

* the *read expression* the backfill SELECTs on the source (``array_to_json(tags)``),
* how the replay turns pgoutput's text form into the target value (cast on the target, or the same
  read expression run on the source over the decoded text),
* the diff's normalisation: the source side is hashed and fetched *through the read expression*,
  then both sides are normalised by the target type's kind (:func:`reconcile.diff.sqlgen.kind_of`),
  so source ``text[]`` and target ``json`` holding the same elements hash equal.

A column the pipeline cannot carry is *refused* with its reason (NaN or infinity in a numeric column,
a key column whose type changes): the audit and the plan report it as a blocker finding and the
backfill and the replay refuse the table before copying anything.

:func:`store_contract` writes the plan's contract to ``reconcile.column_plan``;
:func:`load_contracts` is the one reader every stage uses. It reads both catalogs
(:func:`reconcile.db.columns.read_columns`) and

* with a stored plan for the table, checks it still describes both sides: a source column whose type
  is not the one the plan was made for, or a source column the plan does not know, is refused with one
  sentence (plan and apply again); a target column whose type is not the planned one is drift and is
  refused the same way;
* without one (a target created by hand, or by a test), *derives* the same contract from the two
  catalogs (:func:`reconcile.db.columns.conversion_for` over the pair of types) and says so in the
  log and in :attr:`TableContract.stored`. A derived contract knows no data, so it refuses nothing
  for NaN or infinity: run ``reconcile audit --scan-data`` (or apply the plan) for that.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from reconcile.budget import Budget
from reconcile.control.migrations import ident
from reconcile.db.columns import CONVERSIONS, CatalogColumn, Conversion, conversion_for, read_columns
from reconcile.errors import NotFound
from reconcile.occ import DEFAULT_POLICY, RetryCounters, RetryPolicy, run_with_retry
from reconcile.schema.errors import ContractError

__all__ = [
    "ColumnContract",
    "ContractError",
    "TableContract",
    "derive_contract",
    "load_contract",
    "load_contracts",
    "normalisation",
    "read_stored",
    "store_contract",
]

log = logging.getLogger(__name__)


def normalisation(target_type: str) -> str:
    """The diff's normalisation kind of a target type (see :mod:`reconcile.diff.sqlgen`)."""
    from reconcile.diff.sqlgen import kind_of

    return kind_of(target_type)


_QUALIFIER = re.compile(r'(?:"(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)\.(?=["a-z_])')


def _norm(type_sql: str) -> str:
    """A type's text for comparison: no spaces, no case, no schema qualification (the plan reads the source
    with an empty search_path, so it prints ``public.citext`` where a stage's session prints ``citext``).

    >>> _norm("public.citext") == _norm("citext"), _norm("character varying(10)[]")
    (True, 'charactervarying(10)[]')
    """
    return _QUALIFIER.sub("", "".join(type_sql.lower().split()))


@dataclass(frozen=True)
class ColumnContract:
    """How one source column travels to its target column."""

    table: str
    name: str
    ordinal: int
    """1-based place among the source's columns."""
    source_type: str
    """``format_type`` on the source, with its modifier."""
    target_type: str
    """``format_type`` on the target (the planned DDL type), with its modifier."""
    conversion: str
    """A key of :data:`reconcile.db.columns.CONVERSIONS`."""
    not_null: bool = False
    refused: str | None = None
    """Why the pipeline cannot carry this column (None: it can)."""
    # Facts of the two catalogs, filled in by the loader (not stored).
    source_cast: str = ""
    """The source type without modifier: what decoded text is cast to for a source-side conversion."""
    target_cast: str = ""
    """The target type without modifier: what written values are cast to (a modifier would truncate)."""
    generated: bool = False
    """A stored generated column on the source: computed, never copied."""
    identity_always: bool = False
    """GENERATED ALWAYS identity on the target."""
    source_collatable: bool = False
    target_collatable: bool = False

    @property
    def how(self) -> Conversion:
        return CONVERSIONS[self.conversion]

    @property
    def converted(self) -> bool:
        return self.conversion != "none"

    @property
    def replay(self) -> str:
        """``target`` (cast the decoded text on the target) or ``source`` (convert it on the source first)."""
        return self.how.replay

    @property
    def normalise(self) -> str:
        return normalisation(self.target_type)

    def read_sql(self, ref: sql.Composable) -> sql.Composable:
        """The source read expression over ``ref``."""
        return self.how.read_sql(ref)

    @property
    def read_expression(self) -> str:
        """The read expression for people (``array_to_json(tags)``)."""
        return self.how.shown(self.name)

    def describe(self) -> str:
        """One line: ``tags: text[] -> json, read array_to_json(tags), replay on the source, diff as json``."""
        where = "on the source" if self.replay == "source" else "as text on the target"
        out = (f"{self.name}: {self.source_type} -> {self.target_type}, read {self.read_expression}, "
               f"replay {where}, diff as {self.normalise}")
        return out + (f"; REFUSED: {self.refused}" if self.refused else "")

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "column": self.name, "ordinal": self.ordinal, "source_type": self.source_type,
                "target_type": self.target_type, "conversion": self.conversion,
                "read_expression": self.read_expression, "replay": self.replay, "normalise": self.normalise,
                "not_null": self.not_null, "refused": self.refused}


@dataclass(frozen=True)
class TableContract:
    """Every column of one table, as the contract says they travel."""

    table: str
    columns: tuple[ColumnContract, ...]
    """Every source column present on the target, in source order."""
    key: tuple[str, ...] = ()
    stored: bool = False
    """True when read from ``reconcile.column_plan``; False when derived from the two catalogs."""
    missing_on_target: tuple[str, ...] = ()
    """Source columns the target lacks (their values cannot be copied or compared)."""
    only_target: tuple[str, ...] = ()
    """Target columns the source lacks (they keep their defaults)."""
    target_columns: tuple[CatalogColumn, ...] = field(default=(), repr=False)
    source_columns: tuple[CatalogColumn, ...] = field(default=(), repr=False)

    def column(self, name: str) -> ColumnContract:
        for c in self.columns:
            if c.name == name:
                return c
        raise NotFound(f"{self.table} has no column {name} in its contract; use one of "
                       f"{', '.join(c.name for c in self.columns)}")

    @property
    def copied(self) -> tuple[ColumnContract, ...]:
        """The columns the backfill and the replay write (generated source columns are computed, not copied)."""
        return tuple(c for c in self.columns if not c.generated)

    @property
    def converted(self) -> tuple[ColumnContract, ...]:
        return tuple(c for c in self.columns if c.converted)

    @property
    def refusals(self) -> list[str]:
        """``table.column: reason`` for every refused column."""
        return [f"{self.table}.{c.name}: {c.refused}" for c in self.columns if c.refused]

    def refuse(self, stage: str) -> str | None:
        """One sentence saying why ``stage`` cannot run on this table, or None when it can."""
        found = self.refusals
        if not found:
            return None
        return (f"The column plan refuses {'; '.join(found)}. The {stage} of {self.table} would refuse these "
                "values, so it does not start: fix them on the source as the audit finding says, then run "
                "`reconcile schema apply` again (it plans and stores the column plan anew).")

    @property
    def origin(self) -> str:
        return "stored column plan" if self.stored else "derived from both catalogs (no stored column plan)"


# --- building (plan time) ------------------------------------------------------------------------


def key_refusal(column: str, conversion: str) -> str | None:
    """Why a key column cannot carry ``conversion`` (None when it can)."""
    if conversion == "none":
        return None
    return (f"key column {column} would be {CONVERSIONS[conversion].what} on the target, so keys would sort and "
            "compare differently on the two sides (finding key_conversion)")


def special_refusal(nans: int, infinities: int) -> str | None:
    """Why a numeric column holding NaN or infinity cannot be carried (None when it holds none)."""
    if not nans and not infinities:
        return None
    parts = [f"{nans:,} NaN" if nans else "", f"{infinities:,} +-Infinity" if infinities else ""]
    return (f"it holds {' and '.join(p for p in parts if p)} value(s), which no DSQL numeric column holds "
            "(finding numeric_special)")


def contract_from_plan(plan: Any) -> list[ColumnContract]:
    """The column contracts of a :class:`~reconcile.schema.plan.SchemaPlan` (what :func:`store_contract` writes)."""
    out: list[ColumnContract] = []
    for t in plan.tables:
        for i, c in enumerate(t.columns, start=1):
            refused = t.refused.get(c.name) or (key_refusal(c.name, c.conversion) if c.name in t.primary_key else None)
            out.append(ColumnContract(t.name, c.name, i, c.source_type, c.target_type, c.conversion,
                                      c.not_null or c.name in t.primary_key, refused))
    return out


# --- storing --------------------------------------------------------------------------------------

_UPSERT = sql.SQL(
    "INSERT INTO {} (table_name, column_name, ordinal, source_type, target_type, conversion, read_expression, "
    "replay, normalise, not_null, refused, source_fingerprint, recorded_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now()) "
    "ON CONFLICT (table_name, column_name) DO UPDATE SET ordinal = excluded.ordinal, "
    "source_type = excluded.source_type, target_type = excluded.target_type, conversion = excluded.conversion, "
    "read_expression = excluded.read_expression, replay = excluded.replay, normalise = excluded.normalise, "
    "not_null = excluded.not_null, refused = excluded.refused, source_fingerprint = excluded.source_fingerprint, "
    "recorded_at = excluded.recorded_at").format(ident("column_plan"))
_PRUNE = sql.SQL("DELETE FROM {} WHERE table_name = %s AND NOT (column_name = ANY(%s))").format(ident("column_plan"))


def store_contract(conn: psycopg.Connection, columns: Sequence[ColumnContract], *, fingerprint: str | None = None,
                   budget: Budget | None = None, policy: RetryPolicy = DEFAULT_POLICY,
                   counters: RetryCounters | None = None) -> int:
    """Upsert the contract of every planned column; drop stored columns a table no longer has.

    One transaction per table (a table has at most 255 columns, well inside the budget), through the
    retry helper; running it twice changes nothing. The control schema must be migrated.
    """
    budget = budget or Budget()
    by_table: dict[str, list[ColumnContract]] = {}
    for c in columns:
        by_table.setdefault(c.table, []).append(c)
    for table, cols in by_table.items():
        rows = [(c.table, c.name, c.ordinal, c.source_type, c.target_type, c.conversion, c.read_expression,
                 c.replay, c.normalise, c.not_null, c.refused, fingerprint) for c in cols]
        for batch in budget.batches(rows, lambda r: (1, sum(len(str(v)) for v in r)), what="column plan row"):
            items = list(batch)

            def write(cx: psycopg.Connection, items=items, table=table) -> None:
                with cx.cursor() as cur:
                    cur.executemany(_UPSERT, items)

            run_with_retry(conn, write, policy=policy, counters=counters, label=f"store column plan of {table}")
        names = [c.name for c in cols]
        run_with_retry(conn, lambda cx, table=table, names=names: cx.execute(_PRUNE, (table, names)),
                       policy=policy, counters=counters, label=f"prune column plan of {table}")
    return len(columns)


def read_stored(conn: psycopg.Connection, tables: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Stored rows per table and column (empty when nothing, or no control table, is there)."""
    names = list(tables)
    exists = conn.execute("SELECT to_regclass('reconcile.column_plan') IS NOT NULL").fetchone()[0]
    if not exists or not names:
        return {}
    cur = conn.execute(sql.SQL("SELECT table_name, column_name, ordinal, source_type, target_type, conversion, "
                               "not_null, refused FROM {} WHERE table_name = ANY(%s) ORDER BY table_name, ordinal")
                       .format(ident("column_plan")), (names,))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for table, column, ordinal, stype, ttype, conv, notnull, refused in cur:
        out.setdefault(table, {})[column] = {"ordinal": ordinal, "source_type": stype, "target_type": ttype,
                                             "conversion": conv, "not_null": notnull, "refused": refused}
    return out


# --- loading (every stage) ------------------------------------------------------------------------


def _runtime(c: ColumnContract, s: CatalogColumn, t: CatalogColumn) -> ColumnContract:
    return ColumnContract(c.table, c.name, c.ordinal, c.source_type, c.target_type, c.conversion, c.not_null,
                          c.refused, source_cast=s.cast, target_cast=t.cast, generated=s.generated,
                          identity_always=t.identity_always, source_collatable=s.collatable,
                          target_collatable=t.collatable)


def derive_contract(table: str, source: Sequence[CatalogColumn], target: Sequence[CatalogColumn],
                    key: Sequence[str] = ()) -> TableContract:
    """The contract of a table whose plan was not stored, decided from the pair of catalogs.

    For a target made by the schema plan this is the stored contract (the same decision rule); for
    one made by hand it is what its types allow (a pair no conversion is known for is refused).
    """
    tgt = {c.name: c for c in target}
    cols: list[ColumnContract] = []
    for i, s in enumerate(source, start=1):
        t = tgt.get(s.name)
        if t is None:
            continue
        conv = conversion_for(s.base, s.category, t.base)
        refused = None
        if conv is None:
            conv, refused = "none", (f"no conversion is known from {s.type} on the source to {t.type} on the "
                                     "target; declare the target column as the schema plan does")
        elif s.name in key:
            refused = key_refusal(s.name, conv)
        base = ColumnContract(table, s.name, i, s.type, t.type, conv, s.not_null, refused)
        cols.append(_runtime(base, s, t))
    src_names = {c.name for c in source}
    return TableContract(table, tuple(cols), tuple(key), False,
                         tuple(s.name for s in source if s.name not in tgt),
                         tuple(t.name for t in target if t.name not in src_names), tuple(target), tuple(source))


def _from_stored(table: str, rows: Mapping[str, Mapping[str, Any]], source: Sequence[CatalogColumn],
                 target: Sequence[CatalogColumn], key: Sequence[str]) -> TableContract:
    src_names = {c.name for c in source}
    unknown = [c.name for c in source if c.name not in rows]
    gone = [name for name in rows if name not in src_names]
    if unknown or gone:
        what = []
        if unknown:
            what.append(f"the source has column(s) {', '.join(unknown)} the stored column plan does not know")
        if gone:
            what.append(f"the stored column plan has column(s) {', '.join(gone)} the source no longer has")
        raise ContractError(f"{table}: {' and '.join(what)}; the source changed since `reconcile schema apply`: "
                            "plan and apply the target schema again before this stage.")
    tgt = {c.name: c for c in target}
    cols: list[ColumnContract] = []
    for s in source:
        row = rows[s.name]
        if _norm(row["source_type"]) != _norm(s.type):
            raise ContractError(
                f"The stored column plan of {table}.{s.name} was made for source type {row['source_type']}, but the "
                f"source now has {s.type}; run `reconcile schema apply` again (a column whose type changed needs "
                "its target column recreated) before this stage.")
        if row["conversion"] not in CONVERSIONS:
            raise ContractError(
                f"The stored column plan of {table}.{s.name} names conversion {row['conversion']!r}, which this "
                "version of reconcile does not know; run `reconcile schema apply` again with this version.")
        t = tgt.get(s.name)
        if t is None:
            continue
        if _norm(row["target_type"]) != _norm(t.type):
            raise ContractError(
                f"{table}.{s.name} is {t.type} on the target but the stored column plan says {row['target_type']} "
                "(drift); recreate the column as planned (`reconcile schema apply --dry-run` shows the drift) "
                "before this stage.")
        refused = row["refused"] or (key_refusal(s.name, row["conversion"]) if s.name in key else None)
        base = ColumnContract(table, s.name, int(row["ordinal"]), row["source_type"], row["target_type"],
                              row["conversion"], bool(row["not_null"]), refused)
        cols.append(_runtime(base, s, t))
    return TableContract(table, tuple(cols), tuple(key), True,
                         tuple(s.name for s in source if s.name not in tgt),
                         tuple(t.name for t in target if t.name not in src_names), tuple(target), tuple(source))


def load_contracts(source: psycopg.Connection, target: psycopg.Connection,
                   tables: Sequence[Any]) -> dict[str, TableContract]:
    """The contract of each table (``TableSpec`` or ``schema.table``), checked against both catalogs.

    Raises:
        ContractError: a table is missing on a side, or its stored plan no longer describes the source or
            the target (one sentence saying what changed and what to do).
    """
    specs = [(t, ()) if isinstance(t, str) else (t.name, tuple(t.key)) for t in tables]
    names = [n for n, _ in specs]
    src = read_columns(source, tables=names)
    tgt = read_columns(target, tables=names)
    stored = read_stored(target, names)
    out: dict[str, TableContract] = {}
    for name, key in specs:
        if name not in src:
            raise ContractError(f"Table {name} does not exist on the source; fix [[tables]] in the configuration "
                                "or the source schema.")
        if name not in tgt:
            raise ContractError(f"Table {name} does not exist on the target; create it first (`reconcile schema "
                                "apply`, or your own DDL).")
        rows = stored.get(name)
        if rows:
            out[name] = _from_stored(name, rows, src[name], tgt[name], key)
        else:
            out[name] = derive_contract(name, src[name], tgt[name], key)
            log.info("%s: no stored column plan; the column contract is derived from both catalogs", name)
    return out


def load_contract(source: psycopg.Connection, target: psycopg.Connection, table: Any) -> TableContract:
    """:func:`load_contracts` for one table."""
    name = table if isinstance(table, str) else table.name
    return load_contracts(source, target, [table])[name]
