"""reconcile_reconcile: hourly proof that the target matches the source.

start_diff -> diff_table (mapped per table) -> balances -> checks (expectations) -> finish_diff
(verdict and report: its folder or S3 link is logged) -> gate_evidence (the next gate evaluated
and recorded) -> verdict. A red run fails visibly: the last task raises, naming what differs and
where the report is. Logic lives in reconcile.pipeline.diff and reconcile.pipeline.gates.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, get_current_context, task
from reconcile_common import DEFAULT_ARGS, START_DATE, TAGS, reconcile_errors, task_config


@dag(
    dag_id="reconcile_reconcile",
    schedule="@hourly",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=55),
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
)
def reconcile_reconcile():
    @task
    def start_diff() -> dict:
        from reconcile.pipeline.diff import diff_start

        with reconcile_errors():
            return diff_start(task_config())

    @task
    def tables(started: dict) -> list[str]:
        return list(started["tables"])

    @task(map_index_template="{{ table }}")
    def diff_table(table: str, started: dict) -> dict:
        from reconcile.pipeline.diff import diff_one_table

        get_current_context()["table"] = table
        with reconcile_errors():
            return diff_one_table(task_config(), started["run_id"], table)

    @task
    def balances(started: dict) -> dict:
        from reconcile.pipeline.diff import diff_balances_step

        with reconcile_errors():
            return diff_balances_step(task_config(), started["run_id"])

    @task
    def checks(started: dict) -> dict:
        from reconcile.pipeline.diff import checks_step

        with reconcile_errors():
            return checks_step(task_config(), diff_run_id=started["run_id"])

    @task
    def finish_diff(started: dict) -> dict:
        from reconcile.pipeline.diff import diff_finish

        with reconcile_errors():
            return diff_finish(task_config(), started["run_id"])

    @task
    def gate_evidence(run_id=None) -> dict:
        from reconcile.pipeline.gates import gate_evidence as record

        with reconcile_errors():
            return record(task_config(), actor=f"airflow:{run_id}")

    @task(retries=0)
    def verdict(diff: dict, expectations: dict, evidence: dict) -> dict:
        from reconcile.pipeline.diff import reconcile_verdict

        with reconcile_errors():
            return reconcile_verdict(diff, expectations, evidence)

    started = start_diff()
    per_table = diff_table.partial(started=started).expand(table=tables(started))
    bal = balances(started)
    per_table >> bal
    exp = checks(started)
    bal >> exp
    done = finish_diff(started)
    exp >> done
    evidence = gate_evidence()
    done >> evidence
    verdict(done, exp, evidence)


reconcile_reconcile()
