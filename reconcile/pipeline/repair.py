"""Automatic repair as an orchestrated step: the reconciliation DAG's ``auto_repair`` task.

:func:`auto_repair_step` looks at the row findings a diff run stored and either repairs them through the
running replay (:func:`reconcile.repair.run_repair`: at least 1 and at most ``[repair] auto_max_findings``)
or records why it did not (none to repair records nothing; more than the limit, or the limit 0, records a
``skipped`` repair run with the sentence). Never silent: the run's report (``repairs`` in its summary) and the
gate evidence show every repair and every decision not to repair.
"""

from __future__ import annotations

import logging
from typing import Any

from reconcile.config import Config

__all__ = ["auto_repair_step", "row_findings"]

log = logging.getLogger("reconcile.pipeline.repair")


def row_findings(config: Config, run_id: str) -> int:
    """Persistent row findings (missing, extra, changed) a diff run counted over its tables."""
    from reconcile.connections import connect
    from reconcile.diff import store

    with connect(config.target) as conn:
        return sum(r["missing"] + r["extra"] + r["changed"] for r in store.load_results(conn, run_id)
                   if r["table"] != store.BALANCES)


def auto_repair_step(config: Config, run_id: str) -> dict[str, Any]:
    """Repair a diff run's row findings when there are few enough; returns what was done (JSON-able).

    Raises:
        RepairTimeout: the replay did not apply the copies in time (transient: the task may retry).
    """
    from reconcile.repair import record_decision, run_repair

    n = row_findings(config, run_id)
    limit = config.repair.auto_max_findings
    if n == 0:
        log.info("diff run %s: no row findings, nothing to repair", run_id)
        return {"decision": "nothing to repair", "findings": 0}
    if limit == 0 or n > limit:
        why = ("automatic repair is off ([repair] auto_max_findings = 0)" if limit == 0
               else f"more than [repair] auto_max_findings = {limit}")
        sentence = (f"{n:,} row finding(s) not repaired automatically: {why}; read the report, then repair with "
                    f"`reconcile repair --run {run_id}`.")
        return {"decision": "not repaired", **record_decision(config, run_id, sentence, findings=n).to_dict()}
    if _reverse(config, run_id):
        sentence = (f"{n:,} row finding(s) not repaired automatically: a reverse reconciliation (the target is the "
                    "system of record); the reverse replay brings the source in line (`reconcile reverse run`)")
        return {"decision": "not repaired", **record_decision(config, run_id, sentence, findings=n).to_dict()}
    result = run_repair(config, diff_run_id=run_id, auto=True)
    return {"decision": "repaired", **result.to_dict()}


def _reverse(config: Config, run_id: str) -> bool:
    """Whether diff run ``run_id`` is a reverse reconciliation (or the cutover state is write_cutover)."""
    from reconcile.connections import connect
    from reconcile.diff import store
    from reconcile.direction import REVERSE, direction_of
    from reconcile.identity import cutover_key

    with connect(config.target) as conn:
        run = store.get_run(conn, run_id)
        return direction_of(conn, key=cutover_key(config)) == REVERSE or (run is not None and run["settings"].get("direction") == REVERSE)
