"""The target side of replay: price source transactions, fold them into net row images, write them.

One target transaction applies one or more *whole* source transactions (never part of one, except
under the explicit ``split`` policy). Inside it:

1. the watermark row (``reconcile.replay_state``) is read and must still be what this replayer
   last wrote (:class:`~reconcile.replay.errors.WatermarkMoved` otherwise: a second replayer);
2. the changes are folded per table and key into their *net* effect at the last source transaction
   of the group (later images win; an unchanged-TOAST value keeps the earlier image's value, or
   the target's own when the group has none), then written: deletes children-first, upserts
   parents-first (config order), one statement per table (``INSERT ... SELECT ... FROM unnest(text
   arrays) ON CONFLICT (key) DO UPDATE`` and ``DELETE ... WHERE (key) IN (SELECT ... FROM unnest)``);
3. the watermark moves to the group's last commit (LSN, end LSN, xid, commit time), in the same
   transaction, so a crash anywhere leaves either all of it or none of it.

Values travel as the source's text forms and are cast on the target to the column's type *without*
its modifier (as the backfill does); a column whose column contract converts on the source (an array
stored as json, money as numeric) is first converted there by :class:`Converter`, with the very read
expression the backfill used: the column's own modifier applies on assignment, so a value too
long for ``varchar(10)`` is refused rather than cut, and numeric digits are never rounded through a
float. A column whose new value is the unchanged-TOAST marker is left out of its statement (rows
with the same set of such columns share one statement), so the target keeps its value.

The cost of a source transaction (for :class:`reconcile.budget.Batcher`) is counted from its raw
changes: one DSQL row per change (plus one per secondary index when index tuples count) and the text
bytes of the row times (1 + secondary indexes); an unchanged TOASTed value is priced at
:data:`UNCHANGED_BYTES`. Folding can only make the real cost smaller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from reconcile.budget import Budget, qualified
from reconcile.config import TableSpec
from reconcile.control.migrations import ident
from reconcile.replay import pgoutput as po
from reconcile.replay.errors import ReplayError, WatermarkMoved
from reconcile.replay.source import Change, SourceTxn

UNCHANGED_BYTES = 64 * 1024
"""Bytes assumed for an unchanged TOASTed value (its size is not sent; TOAST starts near 2 KiB)."""
ROW_OVERHEAD = 16
CONVERTED_GROWTH = 3
"""Bytes a value converted on the source is priced at, per byte of its decoded text (``{a,b}`` → ``["a","b"]``)."""
CONTROL_ROWS = 2
"""DSQL rows reserved in each apply transaction for the watermark (and a split window) row."""
CONTROL_BYTES = 8192

_DELETE = None  # the net effect "row is gone"

Fault = Callable[[str], None]


class ApplyRefused(Exception):
    """A change cannot be written to the target (not a database error): dead-lettered like one."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sqlstate = None


@dataclass(frozen=True)
class TargetTable:
    """A replicated table as its column contract and the target have it."""

    name: str
    key: tuple[str, ...]
    types: dict[str, str]
    """Column → target type name without modifier (SQL text from ``format_type``)."""
    identity_always: frozenset[str]
    generated: frozenset[str]
    secondary_indexes: int
    source_conversions: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Column → (conversion, source type without modifier) for the columns whose decoded text the contract
    converts on the source (``array_json``, ``money_numeric``)."""


def inspect_target(conn: psycopg.Connection, tables: Sequence[TableSpec],
                   source: psycopg.Connection | None = None) -> dict[str, TargetTable]:
    """Every replicated table's column contract (types, conversions) and secondary-index count.

    Args:
        conn: the target.
        tables: the replicated tables.
        source: the source (the contract is checked against both catalogs); None reads the target
            alone and converts nothing (for callers that only price changes).

    Raises:
        ReplayError: a table is missing on the target, its stored column plan no longer describes the
            source or the target, or the plan refuses one of its columns.
    """
    from reconcile.db.columns import read_columns
    from reconcile.schema.contract import ContractError, load_contracts

    contracts = {}
    if source is not None:
        try:
            contracts = load_contracts(source, conn, tables)
        except ContractError as exc:
            raise ReplayError(str(exc)) from exc
        for contract in contracts.values():
            refusal = contract.refuse("replay")
            if refusal:
                raise ReplayError(refusal)
    columns = read_columns(conn, tables=[t.name for t in tables]) if source is None else {}
    out = {}
    for spec in tables:
        schema, table = spec.schema, spec.table
        row = conn.execute("SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                           "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                           (schema or "public", table)).fetchone()
        if row is None:
            raise ReplayError(f"Table {spec.name} does not exist on the target: create the target schema "
                              "(`reconcile schema apply`) before replaying.")
        (nidx,) = conn.execute("SELECT count(*) FROM pg_catalog.pg_index WHERE indrelid = %s AND NOT indisprimary",
                               (row[0],)).fetchone()
        contract = contracts.get(spec.name)
        target_cols = contract.target_columns if contract is not None else columns.get(spec.name, ())
        conversions = {c.name: (c.conversion, c.source_cast) for c in (contract.columns if contract else ())
                       if c.replay == "source"}
        out[spec.name] = TargetTable(spec.name, tuple(spec.key), {c.name: c.cast for c in target_cols},
                                     frozenset(c.name for c in target_cols if c.identity_always),
                                     frozenset(c.name for c in target_cols if c.generated), int(nidx), conversions)
    return out


class Converter:
    """Decoded text → target value, on the source, for the columns whose contract converts there.

    pgoutput sends each value in its source type's text form (``{a,"b c",NULL}`` for a ``text[]``). A
    column the contract stores differently (``array_json``: a JSON array) is converted by running the
    contract's read expression on the source over ``CAST(text AS source type)``, in the replay's own
    source session (whose text forms are pinned like the backfill's), so the replay writes exactly the
    value the backfill wrote. One query per converted column per apply group; NULLs and
    unchanged-TOAST markers are left alone (the target keeps its own converted value).
    """

    def __init__(self, targets: dict[str, TargetTable]) -> None:
        self.targets = targets
        self._queries: dict[tuple[str, str], sql.Composed] = {}
        self.queries = 0

    @property
    def needed(self) -> bool:
        return any(t.source_conversions for t in self.targets.values())

    def query(self, conversion: str, source_cast: str) -> sql.Composed:
        """``SELECT (<read expression over CAST(u.v AS type)>)::text FROM unnest(%s::text[]) ... ORDER BY n``.

        >>> Converter({}).query("array_json", "text[]").as_string()  # doctest: +NORMALIZE_WHITESPACE
        'SELECT (array_to_json(CAST(u."v" AS text[])))::text FROM unnest(%s::text[])
         WITH ORDINALITY AS u("v", "n") ORDER BY u."n"'
        """
        from reconcile.db.columns import CONVERSIONS

        q = self._queries.get((conversion, source_cast))
        if q is None:
            # The source type's name comes from format_type() on the source catalog (SQL text already).
            value = sql.SQL("CAST(u.{} AS {})").format(sql.Identifier("v"), sql.SQL(source_cast))  # type: ignore[arg-type]
            q = self._queries[(conversion, source_cast)] = sql.SQL(
                "SELECT ({})::text FROM unnest(%s::text[]) WITH ORDINALITY AS u({}, {}) ORDER BY u.{}").format(
                CONVERSIONS[conversion].read_sql(value), sql.Identifier("v"), sql.Identifier("n"), sql.Identifier("n"))
        return q

    def convert(self, source: psycopg.Connection, net: NetChanges) -> int:
        """Convert ``net``'s values in place; returns the number of values converted."""
        done = 0
        for table, rows in net.tables.items():
            t = self.targets.get(table)
            if t is None or not t.source_conversions:
                continue
            for column, (conversion, source_cast) in t.source_conversions.items():
                spots: list[tuple[tuple[str, ...], int]] = []
                texts: list[str] = []
                for key, entry in rows.items():
                    if entry is _DELETE:
                        continue
                    rel, values, _origin = entry
                    i = _position(rel, column)
                    if i is None or not isinstance(values[i], str):
                        continue
                    spots.append((key, i))
                    texts.append(values[i])  # type: ignore[arg-type]
                if not texts:
                    continue
                self.queries += 1
                converted = [r[0] for r in source.execute(self.query(conversion, source_cast), (texts,)).fetchall()]
                for (key, i), value in zip(spots, converted):
                    rel, values, origin = rows[key]  # type: ignore[misc]
                    rows[key] = (rel, values[:i] + (value,) + values[i + 1:], origin)
                done += len(texts)
        return done


def _position(rel: po.Relation, column: str) -> int | None:
    for i, c in enumerate(rel.columns):
        if c.name == column:
            return i
    return None


def reserve(budget: Budget, *, rows: int = 0, nbytes: int = 0) -> Budget:
    """The budget left for changes once the control rows of an apply transaction are set aside (the
    watermark, plus ``rows``/``nbytes`` for other control rows written with the changes)."""
    return Budget(max_rows=max(1, budget.max_rows - CONTROL_ROWS - rows),
                  max_bytes=max(1, budget.max_bytes - CONTROL_BYTES - nbytes),
                  fraction=budget.fraction, count_index_tuples=budget.count_index_tuples)


class Pricer:
    """(DSQL rows, bytes) of changes and whole source transactions."""

    def __init__(self, targets: dict[str, TargetTable], budget: Budget) -> None:
        self.budget = budget
        self._mult = {n: 1 + t.secondary_indexes for n, t in targets.items()}
        self._rows = {n: (1 + t.secondary_indexes) if budget.count_index_tuples else 1 for n, t in targets.items()}
        self._converted = {n: frozenset(t.source_conversions) for n, t in targets.items() if t.source_conversions}

    def change(self, c: Change) -> tuple[int, int]:
        mult = self._mult.get(c.table, 1)
        rows = self._rows.get(c.table, 1)
        if c.new is None:
            nbytes = sum(len(k) for k in c.key) + ROW_OVERHEAD
        else:
            nbytes = ROW_OVERHEAD
            converted = self._converted.get(c.table)
            for i, v in enumerate(c.new):
                if v is None:
                    nbytes += 1
                elif v is po.UNCHANGED:
                    nbytes += UNCHANGED_BYTES
                elif converted and c.relation.columns[i].name in converted:
                    nbytes += CONVERTED_GROWTH * len(v) + 2  # an array literal grows as JSON (quotes, commas)
                else:
                    nbytes += len(v) + 2
        if c.old_key is not None:
            rows *= 2
        return rows, nbytes * mult

    def txn(self, t: SourceTxn) -> tuple[int, int]:
        rows = nbytes = 0
        for c in t.changes:
            r, b = self.change(c)
            rows += r
            nbytes += b
        return rows, nbytes


# --- folding ----------------------------------------------------------------------------------------


class NetChanges:
    """Net effect per table and key of a sequence of changes (later wins; TOAST markers merged).

    An entry is ``None`` (the row is gone) or ``(relation, values, origin)``: ``origin`` is the key
    the row had on the target before this group, where a value still marked unchanged-TOAST must
    come from. It is the entry's own key, except after a key change (``UPDATE ... SET id = ...``):
    pgoutput then sends the moved row with its unchanged TOASTed values marked, and the row under
    the new key does not exist yet, so :class:`Writer` copies those values from the old row.
    """

    def __init__(self) -> None:
        self.tables: dict[str, dict[tuple[str, ...], tuple[po.Relation, tuple[po.Value, ...], tuple[str, ...]] | None]] = {}
        self.count = 0

    def add_all(self, changes: Iterable[Change]) -> None:
        tables = self.tables
        for c in changes:
            self.count += 1
            rows = tables.get(c.table)
            if rows is None:
                rows = tables[c.table] = {}
            if c.new is None:
                rows[c.key] = _DELETE
                continue
            new = c.new
            src = c.key if c.old_key is None else c.old_key
            prev = rows.get(src, _ABSENT)
            origin = src
            if c.old_key is not None:
                rows[c.old_key] = _DELETE
            if prev is not _ABSENT and prev is not _DELETE:
                origin = prev[2]
                if po.UNCHANGED in new and prev[0].columns == c.relation.columns:
                    new = tuple(p if v is po.UNCHANGED else v for v, p in zip(new, prev[1]))
            rows[c.key] = (c.relation, new, origin)


_ABSENT = object()


class Writer:
    """Composes (and caches) the statements for each table and writes a :class:`NetChanges`."""

    def __init__(self, targets: dict[str, TargetTable], order: Sequence[str]) -> None:
        self.targets = targets
        self.order = list(order)
        self._upserts: dict[tuple[str, tuple[str, ...]], sql.Composed] = {}
        self._deletes: dict[str, sql.Composed] = {}

    def delete_sql(self, table: str) -> sql.Composed:
        st = self._deletes.get(table)
        if st is None:
            st = self._deletes[table] = delete_statement(self.targets[table])
        return st

    def upsert_sql(self, table: str, columns: tuple[str, ...]) -> sql.Composed:
        st = self._upserts.get((table, columns))
        if st is None:
            t = self.targets[table]
            missing = [c for c in columns if c not in t.types]
            if missing:
                raise ApplyRefused(f"column(s) {', '.join(missing)} of source table {table} do not exist on the target")
            st = self._upserts[(table, columns)] = upsert_statement(t, columns)
        return st

    def write(self, conn: psycopg.Connection, net: NetChanges, fault: Fault | None = None) -> int:
        """Write the net changes; returns the number of rows written (deletes + upserts)."""
        written = 0
        tables = net.tables
        order = [t for t in self.order if t in tables] + [t for t in tables if t not in self.order]
        for table in order:
            self._fill_moved(conn, table, tables[table])
        for table in reversed(order):
            keys = [k for k, v in tables[table].items() if v is _DELETE]
            if keys:
                conn.execute(self.delete_sql(table), [list(col) for col in zip(*keys)])
                written += len(keys)
                if fault is not None:
                    fault("apply")
        for table in order:
            groups: dict[tuple[tuple[str, ...], tuple[int, ...]], list[tuple[po.Value, ...]]] = {}
            for entry in tables[table].values():
                if entry is _DELETE:
                    continue
                rel, values, _origin = entry
                skip = tuple(i for i, v in enumerate(values) if v is po.UNCHANGED) if po.UNCHANGED in values else ()
                cols = tuple(c.name for c in rel.columns)
                groups.setdefault((cols, skip), []).append(values)
            gen = self.targets[table].generated
            for (cols, skip), rows in groups.items():
                keep = [i for i in range(len(cols)) if i not in skip and cols[i] not in gen]
                columns = tuple(cols[i] for i in keep)
                if len(keep) == len(cols):
                    arrays = [list(col) for col in zip(*rows)]
                else:
                    arrays = [[r[i] for r in rows] for i in keep]
                conn.execute(self.upsert_sql(table, columns), arrays)
                written += len(rows)
                if fault is not None:
                    fault("apply")
        return written


    def _fill_moved(self, conn: psycopg.Connection, table: str, rows: dict) -> None:
        """Unchanged-TOAST values of rows whose key changed: copy them from the row under the old key.

        Runs before the deletes (the old row is still there). Rare: one query per such row.
        """
        t = self.targets[table]
        for key, entry in rows.items():
            if entry is _DELETE or entry[2] == key or po.UNCHANGED not in entry[1]:
                continue
            rel, values, origin = entry
            wanted = [i for i, v in enumerate(values) if v is po.UNCHANGED]
            q = sql.SQL("SELECT {} FROM {} WHERE ({}) = ({})").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(rel.columns[i].name)) for i in wanted),
                qualified(table), sql.SQL(", ").join(map(sql.Identifier, t.key)),
                sql.SQL(", ").join(sql.SQL("CAST(%s AS {})").format(sql.SQL(t.types[k])) for k in t.key))  # type: ignore[arg-type]
            found = conn.execute(q, list(origin)).fetchone()
            if found is None:
                continue  # the old row is not on the target either: the columns get their defaults
            filled = list(values)
            for i, v in zip(wanted, found):
                filled[i] = v
            rows[key] = (rel, tuple(filled), key)


def upsert_statement(t: TargetTable, columns: Sequence[str]) -> sql.Composed:
    """``INSERT ... SELECT casts FROM unnest(text arrays) ON CONFLICT (key) DO UPDATE`` for ``columns``.

    >>> t = TargetTable("app.t", ("id",), {"id": "bigint", "n": "numeric"}, frozenset(), frozenset(), 0)
    >>> upsert_statement(t, ["id", "n"]).as_string()  # doctest: +NORMALIZE_WHITESPACE
    'INSERT INTO "app"."t" ("id", "n") SELECT CAST(u."v0" AS bigint), CAST(u."v1" AS numeric)
     FROM unnest(%s::text[], %s::text[]) AS u("v0", "v1") ON CONFLICT ("id") DO UPDATE SET "n" = EXCLUDED."n"'
    """
    vs = [sql.Identifier(f"v{i}") for i in range(len(columns))]
    update = [c for c in columns if c not in t.key]
    if update:
        conflict = sql.SQL("ON CONFLICT ({}) DO UPDATE SET {}").format(
            sql.SQL(", ").join(map(sql.Identifier, t.key)),
            sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in update))
    else:
        conflict = sql.SQL("ON CONFLICT ({}) DO NOTHING").format(sql.SQL(", ").join(map(sql.Identifier, t.key)))
    overriding = sql.SQL(" OVERRIDING SYSTEM VALUE") if any(c in t.identity_always for c in columns) else sql.SQL("")
    # Type names come from format_type() on the target catalog (SQL text already).
    return sql.SQL("INSERT INTO {t} ({cols}){ov} SELECT {casts} FROM unnest({arrays}) AS u({vs}) {conflict}").format(
        t=qualified(t.name), cols=sql.SQL(", ").join(map(sql.Identifier, columns)), ov=overriding,
        casts=sql.SQL(", ").join(sql.SQL("CAST(u.{} AS {})").format(v, sql.SQL(t.types[c]))  # type: ignore[arg-type]
                                 for v, c in zip(vs, columns)),
        arrays=sql.SQL(", ").join([sql.SQL("%s::text[]")] * len(columns)), vs=sql.SQL(", ").join(vs),
        conflict=conflict)


def delete_statement(t: TargetTable) -> sql.Composed:
    """``DELETE ... WHERE (key) IN (SELECT casts FROM unnest(text arrays))``.

    >>> t = TargetTable("app.t", ("a", "b"), {"a": "text", "b": "integer"}, frozenset(), frozenset(), 0)
    >>> delete_statement(t).as_string()  # doctest: +NORMALIZE_WHITESPACE
    'DELETE FROM "app"."t" WHERE ("a", "b") IN (SELECT CAST(u."v0" AS text), CAST(u."v1" AS integer)
     FROM unnest(%s::text[], %s::text[]) AS u("v0", "v1"))'
    """
    vs = [sql.Identifier(f"v{i}") for i in range(len(t.key))]
    return sql.SQL("DELETE FROM {t} WHERE ({key}) IN (SELECT {casts} FROM unnest({arrays}) AS u({vs}))").format(
        t=qualified(t.name), key=sql.SQL(", ").join(map(sql.Identifier, t.key)),
        casts=sql.SQL(", ").join(sql.SQL("CAST(u.{} AS {})").format(v, sql.SQL(t.types[c]))  # type: ignore[arg-type]
                                 for v, c in zip(vs, t.key)),
        arrays=sql.SQL(", ").join([sql.SQL("%s::text[]")] * len(t.key)), vs=sql.SQL(", ").join(vs))


# --- the watermark ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Watermark:
    """``reconcile.replay_state`` of one slot (LSNs as integers; 0 when never written)."""

    last_commit_lsn: int = 0
    last_end_lsn: int = 0
    last_xid: int | None = None
    caught_up_lsn: int = 0
    applied_txns: int = 0
    last_commit_ts: Any = None
    updated_at: Any = None

    def to_dict(self) -> dict[str, Any]:
        lsn = lambda v: po.int_to_lsn(v) if v else None  # noqa: E731
        return {"last_commit_lsn": lsn(self.last_commit_lsn), "last_end_lsn": lsn(self.last_end_lsn),
                "last_xid": self.last_xid, "caught_up_lsn": lsn(self.caught_up_lsn),
                "applied_txns": self.applied_txns,
                "last_commit_ts": self.last_commit_ts.isoformat() if self.last_commit_ts else None,
                "updated_at": self.updated_at.isoformat() if self.updated_at else None}


_READ_WM = sql.SQL("SELECT last_commit_lsn, last_end_lsn, last_xid, caught_up_lsn, applied_txns, last_commit_ts, "
                   "updated_at FROM {} WHERE slot_name = %s").format(ident("replay_state"))

_WRITE_WM = sql.SQL("""
INSERT INTO {t} AS s (slot_name, last_commit_lsn, last_end_lsn, last_xid, last_commit_ts, applied_txns, caught_up_lsn,
                      updated_at)
VALUES (%(slot)s, %(lsn)s, %(end)s, %(xid)s, %(ts)s, %(n)s, %(caught)s, now())
ON CONFLICT (slot_name) DO UPDATE SET last_commit_lsn = EXCLUDED.last_commit_lsn, last_end_lsn = EXCLUDED.last_end_lsn,
    last_xid = EXCLUDED.last_xid, last_commit_ts = EXCLUDED.last_commit_ts,
    applied_txns = s.applied_txns + EXCLUDED.applied_txns,
    caught_up_lsn = coalesce(EXCLUDED.caught_up_lsn, s.caught_up_lsn), updated_at = now()""").format(
    t=ident("replay_state"))

_WRITE_CAUGHT_UP = sql.SQL("""
INSERT INTO {t} AS s (slot_name, last_commit_lsn, applied_txns, caught_up_lsn, updated_at)
VALUES (%(slot)s, '0/0', 0, %(caught)s, now())
ON CONFLICT (slot_name) DO UPDATE SET caught_up_lsn = EXCLUDED.caught_up_lsn, updated_at = now()""").format(
    t=ident("replay_state"))


def read_watermark(conn: psycopg.Connection, slot_name: str) -> Watermark:
    row = conn.execute(_READ_WM, (slot_name,)).fetchone()
    if row is None:
        return Watermark()
    lsn, end, xid, caught, n, ts, at = row
    return Watermark(po.lsn_to_int(lsn), po.lsn_to_int(end), xid, po.lsn_to_int(caught), n or 0, ts, at)


def check_watermark(conn: psycopg.Connection, slot_name: str, expected: int) -> None:
    """Inside the apply transaction: the watermark must still be the one this replayer last saw."""
    row = conn.execute(_READ_WM, (slot_name,)).fetchone()
    now = po.lsn_to_int(row[0]) if row else 0
    if now != expected:
        raise WatermarkMoved(
            f"The replay watermark of slot {slot_name} moved to {po.int_to_lsn(now)} while this replayer expected "
            f"{po.int_to_lsn(expected)}: another replayer is running on the same slot; stop one of them, then rerun.")


def write_watermark(conn: psycopg.Connection, slot_name: str, last: SourceTxn, applied: int,
                    caught_up: int | None = None) -> None:
    conn.execute(_WRITE_WM, {
        "slot": slot_name, "lsn": last.commit_lsn_text, "end": last.end_lsn_text, "xid": last.xid,
        "ts": po.pg_timestamp(last.commit_ts), "n": applied,
        "caught": po.int_to_lsn(caught_up) if caught_up else None})


def write_caught_up(conn: psycopg.Connection, slot_name: str, caught_up: int) -> None:
    conn.execute(_WRITE_CAUGHT_UP, {"slot": slot_name, "caught": po.int_to_lsn(caught_up)})
