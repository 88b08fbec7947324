"""Pipeline steps for an orchestrator: what each Airflow task (and the demo) calls.

Every step takes the loaded :class:`~reconcile.config.Config` plus JSON-able arguments and returns
JSON-able data (what crosses an XCom); none imports Airflow, and each is idempotent and safe to
retry because its state lives in the target's control schema. Heavy modules load inside the steps.

Modules and their steps:

- :mod:`.config`: :func:`load_pipeline_config` (``$RECONCILE_CONFIG`` / Variable ``reconcile_config``
  / ``./reconcile.toml``, then Connections ``reconcile_source`` / ``reconcile_target`` over the
  endpoints), :func:`endpoint_from_connection`.
- :mod:`.backfill`: ``backfill_plan(config, params) -> ["schema.table/<chunk_id>", ...]``,
  ``backfill_chunk(config, chunk_id, params, *, parallel) -> dict``,
  ``backfill_summary(config, params, chunk_ids, *, run_label) -> dict``, ``backfill_params``.
- :mod:`.replay`: ``replay_init(config)``, ``replay_tick(config, *, duration, max_txns) -> summary``,
  ``replay_status(config)``, ``lag_metrics(summary)``.
- :mod:`.reverse`: ``reverse_gate(config) / forward_gate(config, *, force)`` (``{"state", "run", "reason"}``:
  which replay applies in the current cutover state), ``reverse_tick(config, *, duration, max_txns,
  until_caught_up) -> summary`` (secret-free: counts, lag, caught up, dead letters open).
- :mod:`.diff`: ``diff_start(config, *, tables, run_id) -> {"run_id", "tables", "reused"}``
  (``run_id``: ``diff_run_id_for(dag_id, run_id)``, so a retry reuses its run), ``opened_run(started)``,
  ``diff_one_table(config, run_id, table)``, ``diff_balances_step(config, run_id)``,
  ``checks_step(config, *, diff_run_id)`` (the check run records the diff run it is ``part_of``),
  ``diff_finish(config, run_id, *, report_dir, checks, checks_expected)`` (closes tables and balances
  that never reported as errors; logs the reconciliation red when the checks step failed),
  ``reconcile_verdict(diff, checks, evidence, *, expected)`` (raises :class:`ReconcileRed` naming the
  failed step and its fix on a red run or a missing step result).
- :mod:`.repair`: ``auto_repair_step(config, run_id)`` (repairs a diff run's row findings through the running
  replay when there are at most ``[repair] auto_max_findings``; otherwise records why not).
- :mod:`.gates`: ``gate_evaluate(config, gate, *, actor, override_reason) -> evaluation + body``,
  ``approval_body(evaluation)``, ``gate_transition(config, gate, *, by, reason, override_reason,
  evaluation)``, ``gate_publish(config, *, actor)``, ``gate_verify(config, gate, *, transition)``,
  ``gate_evidence(config, *, actor)``.

Errors: terminal ones (:class:`~reconcile.errors.TerminalError`: bad parameters, a red run, a refused
gate, a replay halted on a dead letter) must not be retried; transient ones may be.
"""

from reconcile.pipeline.config import load_pipeline_config

__all__ = ["load_pipeline_config"]
