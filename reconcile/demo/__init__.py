"""`reconcile demo`: the whole pipeline on the embedded local databases, in a few minutes.

Starts the local stack, seeds the demo ledger, starts a live write workload, audits the source,
applies the target schema, initialises replay (slot first), backfills while the workload writes,
lets the replay catch up, then reconciles: entry and balance diffs, the invariant expectations, the
read gate's evaluation, and a report whose path it prints with a one-screen summary. ``inject``
plants a few discrepancies on the target first, so the report shows what findings look like.

By default the backfill, replay and reconciliation steps run as the real Airflow DAGs
(``dag.test()`` in this process, see :mod:`reconcile.demo.airflow_runner`); ``airflow=False`` runs the
same library calls directly (:mod:`reconcile.demo.library_runner`).
"""

from reconcile.demo.run import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]
