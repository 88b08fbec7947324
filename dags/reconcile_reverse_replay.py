"""reconcile_reverse_replay: after write cutover, carry DSQL's changes back to the old source, a slice a minute.

Active only in the cutover state ``write_cutover`` (DSQL is then the system of record): the first task,
``gate_state``, reads the state and short-circuits the run (``reverse_tick`` is skipped, with a log line
saying why) in ``shadow`` and ``read_cutover``, where the source is still the system of record. In
``write_cutover``, ``reverse_tick`` reads every shard of DSQL's CDC stream (Kinesis, ``[reverse]``) and
applies whole DSQL transactions to the source for $RECONCILE_REVERSE_TICK_SECONDS (default 50) and stops;
the next run resumes from the shard checkpoints the source holds (committed with the rows they cover, so
a retried or killed slice applies nothing twice). The summary (transactions and records applied, lag,
open reverse dead letters, caught up; no secret) goes to XCom and to the asset ``reconcile_reverse_lag``.
A slice that halts on a dead letter fails: a person resolves it (``reconcile reverse status``,
``reconcile reverse dead-letters skip``). ``reconcile reverse init`` must have run (at write cutover).
Schedule: every minute, or $RECONCILE_REVERSE_SCHEDULE (a cron expression, or ``none`` for manual runs).
Logic lives in reconcile.pipeline.reverse.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, Param, dag, task
from reconcile_common import DEFAULT_ARGS, START_DATE, TAGS, env_int, env_schedule, reconcile_errors, task_config

TICK_SECONDS = env_int("RECONCILE_REVERSE_TICK_SECONDS", 50)
REVERSE_LAG = Asset(name="reconcile_reverse_lag", uri="reconcile://reverse/lag")


@dag(
    dag_id="reconcile_reverse_replay",
    schedule=env_schedule("RECONCILE_REVERSE_SCHEDULE", "* * * * *"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(seconds=TICK_SECONDS + 300),
    default_args={**DEFAULT_ARGS, "retries": 1, "retry_delay": timedelta(seconds=10)},
    tags=TAGS,
    doc_md=__doc__,
    params={
        "tick_seconds": Param(None, type=["null", "integer"], minimum=1, maximum=3600,
                              description="Length of this run (default $RECONCILE_REVERSE_TICK_SECONDS, 50)."),
        "max_txns": Param(None, type=["null", "integer"], minimum=1, maximum=10_000_000,
                          description="Also stop once this many DSQL transactions were applied (default: no limit)."),
        "until_caught_up": Param(False, type="boolean",
                                 description="Stop as soon as nothing is left to apply (a manual drain)."),
    },
)
def reconcile_reverse_replay():
    @task.short_circuit
    def gate_state() -> bool:
        import logging

        from reconcile.pipeline.reverse import reverse_gate

        with reconcile_errors():
            gate = reverse_gate(task_config())
        logging.getLogger("reconcile.dags").info("reverse replay %s: %s",
                                                 "runs" if gate["run"] else "skipped", gate["reason"])
        return gate["run"]

    @task(outlets=[REVERSE_LAG], execution_timeout=timedelta(seconds=TICK_SECONDS + 240))
    def reverse_tick(outlet_events=None, params=None) -> dict:
        from reconcile.pipeline.reverse import reverse_tick as tick

        seconds = params.get("tick_seconds") or env_int("RECONCILE_REVERSE_TICK_SECONDS", TICK_SECONDS)
        with reconcile_errors():
            summary = tick(task_config(), duration=seconds, max_txns=params.get("max_txns"),
                           until_caught_up=bool(params.get("until_caught_up")))
        outlet_events[REVERSE_LAG].extra = summary
        return summary

    gate_state() >> reverse_tick()


reconcile_reverse_replay()
