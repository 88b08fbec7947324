"""Run the whole audit: catalog, statements (dsql-lint), data (optional) and workload."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psycopg

from reconcile.audit.carry import carry_findings, special_numeric_scan
from reconcile.audit.catalog import qualified_schemas, read_catalog
from reconcile.audit.checks import catalog_findings
from reconcile.audit.errors import AuditFailed
from reconcile.audit.findings import Finding, make
from reconcile.audit.keys import key_findings
from reconcile.audit.lint import LintUnavailable, dump_schema, lint_findings, run_dsql_lint
from reconcile.audit.report import AuditReport
from reconcile.audit.scan import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_SAMPLE_ROWS,
    ORDER_SAMPLE,
    ScanMode,
    collation_findings,
    data_findings,
    numeric_profiles,
    scan_tables,
)
from reconcile.audit.translate import IdStrategy
from reconcile.audit.workload import workload_findings
from reconcile.config import TableSpec, mask_conninfo
from reconcile.errors import InvalidArgument

__all__ = ["AuditOptions", "run_audit"]


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """Turn a database error of one audit step into one sentence naming the step and the fix."""
    try:
        yield
    except psycopg.Error as exc:
        reason = (exc.diag.message_primary if exc.diag else None) or str(exc)
        raise AuditFailed(f"The audit failed while {what} on the source (SQLSTATE {exc.sqlstate}: {reason}); "
                          "check that the source user may read the catalog and the configured tables, "
                          "then rerun.") from exc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditOptions:
    """What the audit reads beyond the catalog."""

    scan: ScanMode | None = None
    """Data scan: None (catalog only), ``sample`` or ``full``."""
    sample_rows: int = DEFAULT_SAMPLE_ROWS
    """Rows per table a sample reads at most."""
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    """Rows per chunk of a full scan."""
    lint: bool = True
    """Run pg_dump + dsql-lint over the DDL."""
    workload: bool = True
    """Read pg_stat_statements when the extension exists (the audit never creates it)."""
    collation_sample: int = ORDER_SAMPLE
    """Key values per text key read to compare the source's ordering with C (0: skip)."""
    id_strategy: IdStrategy = "bigint"

    def __post_init__(self) -> None:
        if self.scan not in (None, "sample", "full"):
            raise InvalidArgument(f"scan must be None, 'sample' or 'full', got {self.scan!r}; pass one of those")
        if self.sample_rows < 1 or self.chunk_rows < 1:
            raise InvalidArgument(f"sample_rows and chunk_rows must be positive, got {self.sample_rows!r} and "
                                  f"{self.chunk_rows!r}; pass whole numbers of 1 or more")


def run_audit(conn: psycopg.Connection, *, tables: Sequence[TableSpec] | None = None,
              schemas: Sequence[str] | None = None, options: AuditOptions = AuditOptions(),
              source: str | None = None) -> AuditReport:
    """Audit the source for Aurora DSQL.

    Args:
        conn: an autocommit connection to the source.
        tables: the configured tables (their schemas are audited; their keys stand in for missing
            primary keys).
        schemas: schemas to audit instead of (or besides) the tables' schemas.
        options: data scan, lint and workload switches.
        source: how to name the source in the report (default: the connection's masked dsn).

    Returns:
        The report; ``report.exit_code`` is 1 when any finding is a blocker.
    """
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    tables = tuple(tables or ())
    names = tuple(s for s in (schemas or ())) + qualified_schemas([t.name for t in tables])
    wanted = tuple(dict.fromkeys(names)) or ("public",)
    keys = {t.name: tuple(t.key) for t in tables}
    checks: dict = {"levels": ["catalog"]}

    log.info("STEP 1: reading the catalog of %s", ", ".join(wanted))
    with _step("reading the catalog"):
        catalog = read_catalog(conn, wanted)
    checks["tables"] = len(catalog.tables)

    extra: list[Finding] = []
    profiles = {}
    special: dict = {}
    if options.scan:
        log.info("STEP 2: scanning data (%s)", options.scan)
        with _step("scanning the data"):
            scans = scan_tables(conn, catalog, keys=keys, mode=options.scan, sample_rows=options.sample_rows,
                                chunk_rows=options.chunk_rows)
        profiles = numeric_profiles(scans)
        extra += data_findings(catalog, scans)
        with _step("scanning numeric columns for NaN and infinity"):
            sample = options.scan == "sample"
            special = special_numeric_scan(conn, catalog, keys=keys, chunk_rows=options.chunk_rows,
                                           max_rows=options.sample_rows if sample else None)
        checks["levels"].append("data")
        checks["scan"] = {"mode": options.scan, "rows": sum(s.rows for s in scans),
                          "chunks": sum(s.chunks for s in scans), "tables": len(scans)}
    findings, invariants = catalog_findings(catalog, keys=keys, numeric=profiles, id_strategy=options.id_strategy)
    extra += carry_findings(catalog, keys=keys, special=special)  # what the column contract cannot carry
    with _step("checking the configured keys of tables without a primary key"):
        findings, key_problems = key_findings(conn, catalog, keys, findings)
    extra += key_problems
    if options.collation_sample:
        with _step("sampling text keys"):
            extra += collation_findings(conn, catalog, sample=options.collation_sample)

    if options.lint:
        log.info("STEP 3: linting the DDL with dsql-lint")
        try:
            ddl = dump_schema(conn, wanted)
            diagnostics = run_dsql_lint(ddl)
        except LintUnavailable as exc:
            extra.append(make("lint_unavailable", catalog.database, str(exc), level="statement"))
            checks["lint"] = {"error": str(exc)}
        else:
            findings, from_lint = lint_findings(diagnostics, findings)
            extra += from_lint
            checks["levels"].append("statement")
            checks["lint"] = {"diagnostics": len(diagnostics),
                              "rules": sorted({d.rule for d in diagnostics})}

    if options.workload:
        log.info("STEP 4: reading pg_stat_statements")
        found = workload_findings(conn, schemas=wanted)
        extra += found
        if not any(f.code == "workload_unavailable" for f in found):
            checks["levels"].append("workload")

    checks["seconds"] = round(time.monotonic() - t0, 3)
    return AuditReport(
        run_id=uuid.uuid4(), started_at=started, finished_at=dt.datetime.now(dt.UTC),
        source_fingerprint=catalog.fingerprint(),
        source=source or mask_conninfo(conn.info.dsn), schemas=catalog.schemas,
        findings=tuple(findings + extra), invariants=tuple(invariants), checks=checks,
    )

