"""reconcile_shadow_replay: apply source changes to the target, one time-boxed run a minute.

Every minute (one active run at a time), replay_tick applies whole source transactions for
$RECONCILE_REPLAY_TICK_SECONDS (default 50) and stops; the next run resumes from the watermark the
target holds. The lag (p50/p99 seconds, bytes behind, caught up) is logged and emitted as an event
of the asset ``reconcile_replay_lag`` (its extra holds the numbers). A run that halts on a dead
letter fails: replay will not go on until a person resolves it. The slot must exist
(``reconcile replay init``, before the first backfill). In the cutover state ``write_cutover`` the first
task, ``gate_state``, skips the tick with a log line saying why: DSQL is then the system of record and
``reconcile_reverse_replay`` carries its changes back; the forward replay resumes after a rollback from its
watermark (the param ``run_after_write_cutover`` forces a run). Logic lives in reconcile.pipeline.replay.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, Param, dag, task
from reconcile_common import DEFAULT_ARGS, START_DATE, TAGS, env_int, reconcile_errors, task_config

TICK_SECONDS = env_int("RECONCILE_REPLAY_TICK_SECONDS", 50)
REPLAY_LAG = Asset(name="reconcile_replay_lag", uri="reconcile://replay/lag")


@dag(
    dag_id="reconcile_shadow_replay",
    schedule="* * * * *",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(seconds=TICK_SECONDS + 300),
    default_args={**DEFAULT_ARGS, "retries": 1, "retry_delay": timedelta(seconds=10)},
    tags=TAGS,
    doc_md=__doc__,
    params={
        "tick_seconds": Param(None, type=["null", "integer"], minimum=1, maximum=3600,
                              description="Length of this run (default $RECONCILE_REPLAY_TICK_SECONDS, 50)."),
        "until_caught_up": Param(False, type="boolean",
                                 description="Stop as soon as nothing is left to apply (a manual drain)."),
        "run_after_write_cutover": Param(False, type="boolean",
                                         description="Apply even in write_cutover (normally skipped: DSQL is then "
                                                     "the system of record)."),
    },
)
def reconcile_shadow_replay():
    @task.short_circuit
    def gate_state(params=None) -> bool:
        import logging

        from reconcile.pipeline.reverse import forward_gate

        with reconcile_errors():
            gate = forward_gate(task_config(), force=bool(params.get("run_after_write_cutover")))
        logging.getLogger("reconcile.dags").info("shadow replay %s: %s",
                                                 "runs" if gate["run"] else "skipped", gate["reason"])
        return gate["run"]

    @task(outlets=[REPLAY_LAG], execution_timeout=timedelta(seconds=TICK_SECONDS + 240))
    def replay_tick(outlet_events=None, params=None) -> dict:
        from reconcile.pipeline.replay import lag_metrics, replay_tick as tick

        # the tick length is read again at run time (tests shorten it); a manual run may set its own
        seconds = params.get("tick_seconds") or env_int("RECONCILE_REPLAY_TICK_SECONDS", TICK_SECONDS)
        with reconcile_errors():
            summary = tick(task_config(), duration=seconds, until_caught_up=bool(params.get("until_caught_up")))
        outlet_events[REPLAY_LAG].extra = lag_metrics(summary)
        return summary

    gate_state() >> replay_tick()


reconcile_shadow_replay()
