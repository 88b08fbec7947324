"""Schema audit: what in the source will not survive Aurora DSQL, and why.

Four levels of evidence, each a module:

* statement (:mod:`~reconcile.audit.lint`): the source's DDL from pg_dump, through the official
  ``dsql-lint``;
* catalog (:mod:`~reconcile.audit.checks`): what only the catalog shows (plain numeric, collations,
  quotas, keys, triggers and what they do, sequences, types, extensions...);
* data (:mod:`~reconcile.audit.scan`): bounded, chunked scans for values DSQL will refuse;
* workload (:mod:`~reconcile.audit.workload`): statements too large for one DSQL transaction.

:func:`run_audit` runs them and returns an :class:`AuditReport` of :class:`Finding` values;
:func:`store_report` records it in the control schema on the target. The schema plan
(:mod:`reconcile.schema`) answers the findings it can, citing each by id.
"""

from reconcile.audit.catalog import Catalog, read_catalog
from reconcile.audit.findings import CODES, Finding, Severity, counts, sort_findings
from reconcile.audit.report import AuditReport, render_html, render_json, render_markdown, render_table, write_report
from reconcile.audit.run import AuditOptions, run_audit
from reconcile.audit.store import load_findings, store_invariants, store_report
from reconcile.audit.translate import NumericProfile, planned_numeric
from reconcile.audit.triggers import Invariant

__all__ = [
    "CODES",
    "AuditOptions",
    "AuditReport",
    "Catalog",
    "Finding",
    "Invariant",
    "NumericProfile",
    "Severity",
    "counts",
    "load_findings",
    "planned_numeric",
    "read_catalog",
    "render_html",
    "render_json",
    "render_markdown",
    "render_table",
    "run_audit",
    "sort_findings",
    "store_invariants",
    "store_report",
    "write_report",
]
