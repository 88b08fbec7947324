"""What the backfill needs to know about one table on both sides: its column contract, keys and costs.

The columns, their types on both sides and how each is read come from the column contract
(:func:`reconcile.schema.contract.load_contract`), never from a catalog query of the backfill's own;
a table whose contract refuses a column is refused here, before any chunk is copied.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from reconcile.backfill.errors import TableNotReady
from reconcile.backfill.keys import KeyColumn
from reconcile.budget import Budget, TableCost, qualified, split_table_name, table_cost
from reconcile.config import TableSpec
from reconcile.errors import LimitExceeded
from reconcile.schema.contract import ContractError, TableContract, load_contract

log = logging.getLogger(__name__)

CONTROL_ROWS = 2
"""DSQL rows reserved in every data transaction for the chunk checkpoint written with it (the
``chunks`` row, plus its secondary index when index tuples count)."""
CONTROL_BYTES = 4096
"""Bytes reserved for the same checkpoint."""

_C_COLLATIONS = frozenset({"C", "POSIX", "ucs_basic"})

# Unique, non-partial, non-expression indexes: their key columns in order, with each column's
# collation name ('' when the column is not collatable).
_UNIQUE = """
SELECT i.indexrelid,
       array_agg(a.attname::text ORDER BY k.ord),
       array_agg(coalesce(c.collname::text, '') ORDER BY k.ord)
FROM pg_catalog.pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
LEFT JOIN pg_catalog.pg_collation c ON c.oid = i.indcollation[k.ord - 1]
WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL AND k.ord <= i.indnkeyatts
GROUP BY i.indexrelid
HAVING bool_and(k.attnum <> 0)
"""


@dataclass(frozen=True)
class TableInfo:
    """One table, as both sides and the budget see it."""

    name: str
    """``schema.table``, the same on both sides."""
    key: tuple[str, ...]
    columns: tuple[str, ...]
    """Columns copied, in source order (every source column; target-only columns get defaults)."""
    target_types: tuple[str, ...]
    """Target type of each copied column without its modifier, for the upserts' casts."""
    source_key: tuple[KeyColumn, ...]
    target_key: tuple[KeyColumn, ...]
    key_positions: tuple[int, ...]
    """Where each key column sits in ``columns`` (and so in a COPY line)."""
    index_ordered: bool
    """The source can read C-ordered key ranges from an index (else each read sorts a chunk)."""
    overriding: bool
    """The target has a GENERATED ALWAYS identity column among ``columns``."""
    cost: TableCost
    rows_cap: int
    """Most rows one batch may write: the budget's fraction, minus the checkpoint's reserve."""
    row_dsql_rows: int
    """DSQL rows one table row costs (1, plus its secondary indexes when index tuples count)."""
    index_key_bytes: int
    """Bytes added to a row's measured size for its secondary-index entries (largest sampled)."""
    contract: TableContract | None = None
    """How each column is read, converted and written (:mod:`reconcile.schema.contract`)."""
    read_conversions: tuple[str, ...] = ()
    """The conversion of each copied column (``none``: read as it is), in ``columns`` order."""

    @property
    def update_columns(self) -> tuple[str, ...]:
        """Columns an upsert overwrites (all but the key)."""
        return tuple(c for c in self.columns if c not in self.key)


def _relation(conn: psycopg.Connection, name: str, side: str) -> int:
    schema, table = split_table_name(name)
    row = conn.execute(
        "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')", (schema, table)).fetchone()
    if row is None:
        fix = ("create it first (reconcile schema apply, or your own DDL)" if side == "target"
               else "fix the table name in the config")
        raise TableNotReady(f"table {name} does not exist on the {side}; {fix}")
    return row[0]


def _unique_keys(conn: psycopg.Connection, oid: int) -> list[tuple[list[str], list[str]]]:
    return [(cols, colls) for _, cols, colls in conn.execute(_UNIQUE, (oid,)).fetchall()]


def _database_is_c(conn: psycopg.Connection) -> bool:
    (collate,) = conn.execute(
        "SELECT datcollate FROM pg_catalog.pg_database WHERE datname = current_database()").fetchone()
    return collate in _C_COLLATIONS


def _budget_caps(budget: Budget, cost: TableCost) -> tuple[int, TableCost]:
    """Rows per batch for ``cost``; a sampled row too big for any transaction is priced at the average."""
    try:
        per_batch = budget.rows_per_batch(cost)
    except LimitExceeded:
        log.warning("%s: a sampled row exceeds one DSQL transaction (%d bytes); batches are sized from "
                    "the average row and such rows are rejected", cost.table, cost.bytes_per_row)
        cost = dataclasses.replace(cost, max_row_bytes=2 * cost.avg_row_bytes,
                                   index_key_bytes=2 * cost.avg_index_key_bytes)
        per_batch = budget.rows_per_batch(cost)
    one_rows = budget.dsql_rows(cost)
    by_rows = max(1, (budget.row_cap - CONTROL_ROWS) // one_rows)
    by_bytes = max(1, (budget.byte_cap - CONTROL_BYTES) // cost.bytes_per_row)
    return max(1, min(per_batch, by_rows, by_bytes)), cost


def inspect_table(source: psycopg.Connection, target: psycopg.Connection, spec: TableSpec,
                  budget: Budget, *, advise: bool = True) -> TableInfo:
    """Read both catalogs and price a row of ``spec`` for the budget.

    ``advise``: log the advice about the source's key order (a missing C-ordered index); the planning step
    and a whole run give it once per table, a single chunk's copy (one Airflow task each) does not repeat it.

    Raises:
        TableNotReady: the table is missing on a side, a source column is missing on the target,
            or the target has no unique index on exactly the configured key columns (the source
            needs none: its key follows :mod:`reconcile.keyrule`, checked when the table is planned).
    """
    name = spec.name
    soid = _relation(source, name, "source")
    toid = _relation(target, name, "target")
    try:
        contract = load_contract(source, target, spec)
    except ContractError as exc:
        raise TableNotReady(str(exc)) from exc
    refusal = contract.refuse("backfill")
    if refusal:
        raise TableNotReady(refusal)
    targets = {c.name: c for c in contract.target_columns}
    copied = contract.copied  # generated source columns are computed, not copied
    columns = [c.name for c in copied]
    generated_on_source = {c.name for c in contract.source_columns if c.generated}
    missing = [c for c in contract.missing_on_target if c not in generated_on_source]
    if missing:
        raise TableNotReady(f"{name}: the target lacks column(s) {', '.join(missing)}; add them to the target "
                            "table (or recreate it from the source DDL) before the backfill")
    generated = [c for c in columns if targets[c].generated]
    if generated:
        raise TableNotReady(f"{name}: column(s) {', '.join(generated)} are generated on the target but stored "
                            "on the source; make them plain columns on the target")
    skipped = [c for c in contract.only_target if not targets[c].generated]
    if skipped:
        log.info("%s: target-only column(s) %s keep their defaults", name, ", ".join(skipped))
    if contract.converted:
        log.info("%s: %s; converted: %s", name, contract.origin,
                 "; ".join(c.describe() for c in contract.converted))

    key = tuple(spec.key)
    absent = [k for k in key if k not in columns]
    if absent:
        raise TableNotReady(f"{name}: key column(s) {', '.join(absent)} do not exist on the source; fix "
                            "tables.key in the config")

    def unique_on_key(conn: psycopg.Connection, oid: int, side: str) -> list[tuple[list[str], list[str]]]:
        found = [(cols, colls) for cols, colls in _unique_keys(conn, oid) if set(cols) == set(key)]
        if not found:
            raise TableNotReady(
                f"{name}: the {side} has no primary key or unique index on exactly ({', '.join(key)}); "
                "idempotent upserts need one and `reconcile schema plan` declares it in the pre-load phase: "
                "recreate the table from the plan, or fix tables.key in the config")
        return found

    # The source's key is proven by the key rule (reconcile.keyrule) when the table is planned, never by
    # demanding an index there that the schema plan would not create; a unique index only speeds reads.
    source_unique = [(cols, colls) for cols, colls in _unique_keys(source, soid) if set(cols) == set(key)]
    unique_on_key(target, toid, "target")

    by_name = {c.name: c for c in copied}
    source_key = tuple(KeyColumn(k, by_name[k].source_cast, by_name[k].source_collatable) for k in key)
    target_key = tuple(KeyColumn(k, by_name[k].target_cast, by_name[k].target_collatable) for k in key)

    # The source serves C-ordered ranges from an index only when one lists the key columns in key
    # order and every collatable one is C-collated there.
    db_is_c = _database_is_c(source)

    def c_ordered(cols: list[str], colls: list[str]) -> bool:
        if tuple(cols) != key:
            return False
        for kc, coll in zip(source_key, colls):
            if kc.collatable and not (coll in _C_COLLATIONS or (coll == "default" and db_is_c)):
                return False
        return True

    index_ordered = any(c_ordered(cols, colls) for cols, colls in source_unique)
    if not index_ordered and advise:
        text_cols = [k.name for k in source_key if k.collatable]
        log.warning(
            "%s: no source index returns the key in C order%s, so each chunk is read with one sort of "
            "its range; for large tables add one on the source, e.g. CREATE UNIQUE INDEX CONCURRENTLY "
            "ON %s (%s)", name, f" (text key column(s) {', '.join(text_cols)})" if text_cols else "",
            qualified(name).as_string(),
            ", ".join(sql.Identifier(k.name).as_string() + (' COLLATE "C"' if k.collatable else "") for k in source_key))

    cost = table_cost(target, name, rows_conn=source)
    rows_cap, cost = _budget_caps(budget, cost)
    return TableInfo(
        name=name, key=key, columns=tuple(columns),
        target_types=tuple(c.target_cast for c in copied),
        source_key=source_key, target_key=target_key,
        key_positions=tuple(columns.index(k) for k in key),
        index_ordered=index_ordered,
        overriding=any(c.identity_always for c in copied),
        cost=cost, rows_cap=rows_cap, row_dsql_rows=budget.dsql_rows(cost),
        index_key_bytes=cost.index_key_bytes,
        contract=contract, read_conversions=tuple(c.conversion for c in copied),
    )


