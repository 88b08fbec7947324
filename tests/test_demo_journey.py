"""`reconcile demo --journey`: there and back again on the local stack, every gate passed on its evidence.

The oracle is outside the journey's own counters: the audit trail holds each approval and the rollback
(no override anywhere), the target's diff runs hold a reverse reconciliation, and at the end the two
ledgers are equal row for row (a fingerprint of each table computed here), with the rows the
application wrote on the target during write cutover present on the source.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
from typer.testing import CliRunner

from reconcile.cli import app
from tests.test_replay import ledger_fingerprints

SMALL = ["--transactions", "2000", "--accounts", "200", "--tps", "30", "--write-seconds", "3"]


def _events(target_url: str) -> list[tuple]:
    with psycopg.connect(target_url) as conn:
        return conn.execute("SELECT event, gate, actor FROM reconcile.audit_events ORDER BY seq").fetchall()


def test_the_journey_walks_every_gate_on_evidence_and_ends_with_equal_ledgers(local_stack):
    data_dir = Path(local_stack["data_dir"])
    res = CliRunner().invoke(app, ["demo", "--journey", "--no-airflow", "--json", "--data-dir", str(data_dir), *SMALL])
    assert res.exit_code == 0, res.output
    assert "Journey: GREEN" in res.output
    out = json.loads(res.output[res.output.index("{\n"):])
    states = [e["state"] for e in out["timeline"]]
    assert states[:4] == ["shadow", "shadow", "read_cutover", "write_cutover"]
    assert states[-1] == "read_cutover"

    events = _events(local_stack["target"])
    kinds = [e[0] for e in events]
    assert "override" not in kinds  # every gate passed on its evidence
    assert ("approval", "read", "Ana Ribeiro (finance)") in events
    assert ("approval", "write", "Ben Okafor (risk)") in events
    assert any(e[0] == "rollback" and e[2] == "Chen Wu (SRE)" for e in events)
    assert any(e[0] == "retirement" for e in events), kinds  # the balance trigger retired, not overridden

    with psycopg.connect(local_stack["target"]) as conn:
        directions = [r[0] for r in conn.execute(
            "SELECT direction FROM reconcile.runs WHERE kind = 'diff' ORDER BY started_at").fetchall()]
    assert directions == ["forward", "reverse", "forward"]

    assert ledger_fingerprints(local_stack["source"]) == ledger_fingerprints(local_stack["target"])
    on_target = out["steps"]["target_writes"]["committed_total"]
    assert on_target > 0
    with psycopg.connect(local_stack["source"]) as conn:  # the target's writes reached the source
        (journal,) = conn.execute("SELECT count(*) FROM ledger.journal").fetchone()
    shadow_writes = out["shadow"]["steps"]["workload"]["committed_total"]
    assert journal >= 2000 + shadow_writes + on_target + out["steps"]["source_writes"]["committed_total"]
