"""reconcile_reconcile: hourly proof that the target matches the source.

The schedule is ``$RECONCILE_RECONCILE_SCHEDULE`` when set (a cron expression or preset, or ``none``
for manual runs only), else hourly.

start_diff -> diff_table (mapped per table) -> balances -> auto_repair -> checks (expectations) ->
finish_diff (verdict and report: its folder or S3 link is logged) -> gate_evidence (the next gate
evaluated and recorded) -> verdict. A red run fails visibly: the last task raises, naming the step
that failed and the action that fits (a key range to re-copy only when the diff found differences).
The checks run records the diff run it belongs to, so the gates count this reconciliation only when
its diff, balances and expectations all completed green.

The param ``mode`` picks a full diff (every row) or an incremental one (changed keys plus a sweep
slice) for this run; ``config`` follows ``[diff] mode``. ``auto_repair`` repairs the run's row
findings through the running replay when there are at most ``[repair] auto_max_findings`` of them
(never more), and records every repair or decision not to repair: the report and the gate evidence
show it. The run itself stays red: it found differences.

Failures still close the run: balances, checks, finish_diff, gate_evidence and verdict run once
their upstream tasks are done, failed or not (``all_done``), so a failed diff_table leaves no diff
run 'running' forever: finish_diff closes it as ``error`` with a report naming the tables not
compared, and verdict fails. The diff run id is derived from the Airflow run (dag_id + run_id), so a
retried start_diff reuses the run it opened. Logic lives in reconcile.pipeline.diff and
reconcile.pipeline.gates.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task
from reconcile_common import DEFAULT_ARGS, START_DATE, TAGS, env_schedule, reconcile_errors, task_config

AFTER_FAILURES = "all_done"
"""Trigger rule of the steps that must run even when a step before them failed."""


@dag(
    dag_id="reconcile_reconcile",
    schedule=env_schedule("RECONCILE_RECONCILE_SCHEDULE", "@hourly"),  # "none": manual runs only
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=55),
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
    params={"mode": Param("config", enum=["config", "full", "incremental"],
                          description="full: read every row; incremental: changed keys + one sweep slice; "
                                      "config: [diff] mode.")},
)
def reconcile_reconcile():
    @task
    def start_diff(dag_run=None, params=None) -> dict:
        from reconcile.pipeline.diff import diff_run_id_for, diff_start

        mode = (params or {}).get("mode", "config")
        with reconcile_errors():
            return diff_start(task_config(), run_id=diff_run_id_for(dag_run.dag_id, dag_run.run_id),
                              mode=None if mode == "config" else mode)

    @task
    def tables(started: dict) -> list[str]:
        return list(started["tables"])

    @task(map_index_template="{{ table }}")
    def diff_table(table: str, started: dict) -> dict:
        from reconcile.pipeline.diff import diff_one_table

        get_current_context()["table"] = table
        with reconcile_errors():
            return diff_one_table(task_config(), started["run_id"], table)

    @task(trigger_rule=AFTER_FAILURES)
    def balances(started: dict | None) -> dict:
        from reconcile.pipeline.diff import diff_balances_step, opened_run

        with reconcile_errors():
            return diff_balances_step(task_config(), opened_run(started))

    @task(trigger_rule=AFTER_FAILURES)
    def auto_repair(started: dict | None) -> dict:
        from reconcile.pipeline.diff import opened_run
        from reconcile.pipeline.repair import auto_repair_step

        with reconcile_errors():
            return auto_repair_step(task_config(), opened_run(started))

    @task(trigger_rule=AFTER_FAILURES)
    def checks(started: dict | None) -> dict:
        from reconcile.pipeline.diff import checks_step, opened_run

        with reconcile_errors():
            return checks_step(task_config(), diff_run_id=opened_run(started))

    @task(trigger_rule=AFTER_FAILURES)
    def finish_diff(started: dict | None, expectations: dict | None) -> dict:
        from reconcile.pipeline.diff import diff_finish, opened_run

        with reconcile_errors():
            return diff_finish(task_config(), opened_run(started), checks=expectations, checks_expected=True)

    @task(trigger_rule=AFTER_FAILURES)
    def gate_evidence(run_id=None) -> dict:
        from reconcile.pipeline.gates import gate_evidence as record

        with reconcile_errors():
            return record(task_config(), actor=f"airflow:{run_id}")

    @task(retries=0, trigger_rule=AFTER_FAILURES)
    def verdict(diff: dict | None, expectations: dict | None, evidence: dict | None) -> dict:
        from reconcile.pipeline.diff import reconcile_verdict

        with reconcile_errors():
            return reconcile_verdict(diff, expectations, evidence, expected=("checks", "evidence"))

    started = start_diff()
    per_table = diff_table.partial(started=started).expand(table=tables(started))
    bal = balances(started)
    per_table >> bal
    rep = auto_repair(started)
    bal >> rep
    exp = checks(started)
    rep >> exp
    done = finish_diff(started, exp)
    evidence = gate_evidence()
    done >> evidence
    verdict(done, exp, evidence)


reconcile_reconcile()
