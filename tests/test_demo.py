"""`reconcile demo` end to end on the local stack, small enough for the suite."""

from __future__ import annotations

import psycopg
from typer.testing import CliRunner

from reconcile.cli import app


def test_demo_runs_end_to_end_and_leaves_the_stack_up(local_stack):
    res = CliRunner().invoke(app, ["demo", "--data-dir", local_stack["data_dir"], "--transactions", "3000",
                                   "--accounts", "300", "--tps", "40", "--duration", "1.5"])
    assert res.exit_code == 0, res.output
    for step in ("STEP 1", "STEP 2", "STEP 3", "STEP 4", "Try next"):
        assert step in res.output
    with psycopg.connect(local_stack["source"]) as conn:
        journal = conn.execute("SELECT count(*) FROM ledger.journal").fetchone()[0]
        assert journal > 3000  # seed plus live workload
        bad = conn.execute("""SELECT count(*) FROM (SELECT txn_id FROM ledger.entries GROUP BY txn_id, currency
                              HAVING sum(amount) <> 0) x""").fetchone()[0]
        assert bad == 0
    with psycopg.connect(local_stack["target"]) as conn:
        assert conn.execute("SELECT count(*) FROM reconcile.schema_migrations").fetchone()[0] > 0
    # re-running converges to the same seeded ledger (idempotent)
    res = CliRunner().invoke(app, ["demo", "--data-dir", local_stack["data_dir"], "--transactions", "3000",
                                   "--accounts", "300", "--tps", "40", "--duration", "0"])
    assert res.exit_code == 0, res.output
    assert "already up to date" in res.output
