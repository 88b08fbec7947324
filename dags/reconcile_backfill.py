"""reconcile_backfill: copy the source tables into the target, one mapped task per chunk.

Manual. plan -> copy_chunk (mapped over chunk ids) -> summary. Re-running resumes: the plan lists
only chunks not done yet (``force`` lists them all). ``max_active_tis_per_dagrun`` bounds how many
chunks copy at once ($RECONCILE_BACKFILL_MAX_ACTIVE_CHUNKS, default 4); ``throttle_rows_per_second``
caps the rows read from the source over the whole run. Logic lives in reconcile.pipeline.backfill.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task
from reconcile_common import DEFAULT_ARGS, START_DATE, TAGS, env_int, reconcile_errors, task_config

MAX_ACTIVE_CHUNKS = env_int("RECONCILE_BACKFILL_MAX_ACTIVE_CHUNKS", 4)


@dag(
    dag_id="reconcile_backfill",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
    params={
        "tables": Param([], type="array",
                        items={"type": "string",
                               "pattern": r'^(?:"(?:[^"]|"")+"|[^."\s]+)\.(?:"(?:[^"]|"")+"|[^."\s]+)$'},
                        description="Tables to copy (schema.table); empty copies every configured table."),
        "from_key": Param(None, type=["null", "string"],
                          description="Copy only chunks with keys >= this (one table; JSON array for a composite key)."),
        "to_key": Param(None, type=["null", "string"], description="Copy only chunks with keys < this (one table)."),
        "force": Param(False, type="boolean", description="Copy the selected chunks again even when done."),
        "throttle_rows_per_second": Param(0, type="number", minimum=0,
                                          description="Rows per second read from the source over the whole run; "
                                                      "0 is unlimited."),
        "chunk_rows": Param(50_000, type="integer", minimum=1, maximum=10_000_000,
                            description="Rows per chunk when a table is planned (its first run)."),
        "replay": Param(False, type="boolean",
                        description="Replay will follow: refuse to copy unless its replication slot exists."),
        "slot_name": Param(None, type=["null", "string"],
                           description="The replay slot's name (default: the config's [replay] slot_name)."),
    },
)
def reconcile_backfill():
    @task
    def plan(params=None) -> list[str]:
        from reconcile.pipeline.backfill import backfill_plan

        with reconcile_errors():
            return backfill_plan(task_config(), dict(params))

    @task(max_active_tis_per_dagrun=MAX_ACTIVE_CHUNKS, map_index_template="{{ chunk }}")
    def copy_chunk(chunk: str, params=None) -> dict:
        from reconcile.pipeline.backfill import backfill_chunk

        get_current_context()["chunk"] = chunk  # the mapped task's label in the UI
        with reconcile_errors():
            return backfill_chunk(task_config(), chunk, dict(params), parallel=MAX_ACTIVE_CHUNKS)

    @task(trigger_rule="none_failed")
    def summary(chunks: list[str], params=None, run_id=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from reconcile.pipeline.backfill import backfill_summary

        with reconcile_errors():
            result = backfill_summary(task_config(), dict(params), list(chunks), run_label=run_id)
        if result["status"] != "done":
            raise AirflowFailException(f"backfill incomplete: {len(result['not_done'])} chunk(s) not done "
                                       f"({', '.join(result['not_done'][:10])}); trigger the DAG again to resume")
        return result

    chunks = plan()
    copy_chunk.expand(chunk=chunks) >> summary(chunks)


reconcile_backfill()
