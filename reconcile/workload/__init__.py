"""The demo legacy ledger on the source: its schema, a deterministic seed, and a live write load.

It mimics a core-banking ledger on Aurora PostgreSQL and deliberately carries what Aurora DSQL
blocks (a PL/pgSQL balance trigger, a BIGSERIAL, plain ``numeric``, en_US ordering), so every later
stage has something real to audit, copy, replay and reconcile.

>>> from reconcile.workload import seed, run_workload  # doctest: +SKIP
>>> seed(conn, transactions=100_000)                     # doctest: +SKIP
>>> run_workload(conninfo, tps=200, duration=10)          # doctest: +SKIP
"""

from __future__ import annotations

from .run import WorkloadReport, run_workload
from .schema import create_schema, drop_schema, schema_exists
from .seed import SchemaExists, SeedReport, seed

__all__ = ["SchemaExists", "SeedReport", "WorkloadReport", "create_schema", "drop_schema",
           "run_workload", "schema_exists", "seed"]
