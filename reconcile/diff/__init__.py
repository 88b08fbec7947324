"""Reconciliation: entry-level diffs (segment checksums, bisection, lag-aware re-checks) and balance diffs.

Public API (results are JSON-able; see :mod:`reconcile.diff.run` for the contract):

* :func:`start_diff` ``(config, *, tables=None, lag_wait_seconds=None) -> run_id``
* :func:`diff_table` ``(config, run_id, table_name) -> dict``
* :func:`diff_balances` ``(config, run_id) -> dict``
* :func:`finish_diff` ``(config, run_id, *, report_dir=None) -> DiffResult``
* :func:`run_diff` ``(config, *, tables=None, report_dir=None, lag_wait_seconds=None) -> DiffResult``
* :func:`reconcile.diff.inject.plant_discrepancies` for the demo's ``--inject``.
"""

from reconcile.diff.run import DiffResult, diff_balances, diff_table, finish_diff, run_diff, start_diff

__all__ = ["DiffResult", "diff_balances", "diff_table", "finish_diff", "run_diff", "start_diff"]
