"""Target schema: the DDL Aurora DSQL accepts, planned from the source and applied idempotently.

* :func:`plan_from_source` reads the source catalog (and sizes plain numeric columns from the
  data) and returns a :class:`SchemaPlan`; :func:`build_plan` does the same from a catalog.
* :func:`apply_plan` runs it on the target one statement per transaction, skipping what exists,
  and reports drift; :func:`record_plan` stores the source sequences, invariants and the column
  contract (:mod:`reconcile.schema.contract`) it carries.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from reconcile.audit.carry import special_numeric_scan
from reconcile.audit.catalog import qualified_schemas, read_catalog
from reconcile.audit.scan import DEFAULT_CHUNK_ROWS, numeric_profiles, scan_tables
from reconcile.audit.translate import IdStrategy
from reconcile.config import TableSpec
from reconcile.schema.apply import (
    ApplyReport,
    Drift,
    StatementResult,
    TargetState,
    apply_plan,
    drift,
    introspect,
    record_plan,
)
from reconcile.schema.dialect import DIALECTS, Dialect, DsqlDialect, PostgresDialect, dialect_for, get_dialect
from reconcile.schema.plan import PHASES, LeftOut, PlannedStatement, SchemaPlan, SequenceRecord, TablePlan, build_plan

__all__ = [
    "DIALECTS",
    "PHASES",
    "ApplyReport",
    "Dialect",
    "Drift",
    "DsqlDialect",
    "LeftOut",
    "PlannedStatement",
    "PostgresDialect",
    "SchemaPlan",
    "SequenceRecord",
    "StatementResult",
    "TablePlan",
    "TargetState",
    "apply_plan",
    "build_plan",
    "dialect_for",
    "drift",
    "get_dialect",
    "introspect",
    "plan_from_source",
    "record_plan",
]


def plan_from_source(conn: psycopg.Connection, *, tables: Sequence[TableSpec | str] | None = None,
                     schemas: Sequence[str] | None = None, dialect: str | Dialect = "dsql",
                     id_strategy: IdStrategy = "bigint", chunk_rows: int = DEFAULT_CHUNK_ROWS) -> SchemaPlan:
    """Read the source and plan its target schema.

    Plain numeric columns are sized from a full, chunked scan of their values (so the planned
    precision holds every value the source has), and every numeric column is scanned for NaN and
    infinity (refused in the column contract); nothing else reads data.

    Args:
        conn: an autocommit connection to the source.
        tables: the tables to plan (TableSpec or ``schema.table``), in order; None with
            ``schemas``: every table of those schemas.
        schemas: schemas to read when ``tables`` is None.
        dialect: ``dsql`` or ``postgres`` (the local stand-in).
        id_strategy: generated keys as ``bigint`` (default) or ``identity``.
        chunk_rows: rows per chunk of the numeric scan.
    """
    names = [t if isinstance(t, str) else t.name for t in tables or ()]
    wanted = tuple(dict.fromkeys([*(schemas or ()), *qualified_schemas(names)])) or ("public",)
    catalog = read_catalog(conn, wanted)
    keys = {t.name: tuple(t.key) for t in tables or () if isinstance(t, TableSpec)}
    scans = scan_tables(conn, catalog, tables=names or None, keys=keys, mode="full", chunk_rows=chunk_rows,
                        numeric_only=True)
    special = special_numeric_scan(conn, catalog, tables=names or None, keys=keys)
    return build_plan(catalog, dialect=dialect, tables=tables, numeric=numeric_profiles(scans),
                      id_strategy=id_strategy, special=special)
