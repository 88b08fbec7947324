"""Live repair: re-copy exactly the keys a diff found wrong while the replay keeps running (DBLog watermarks).

* :func:`run_repair` (:mod:`.run`): the findings of a diff run (or given keys, or a whole table added to a
  running migration) copied from the source between low and high watermarks in the change stream, applied
  by the replay in its commit order (:mod:`reconcile.replay.marks`), then verified again; every key's outcome
  is recorded (``reconcile.repair_results``) and the run is a ``reconcile.runs`` row of kind ``repair``.
* :class:`~.settings.RepairSettings`: the ``[repair]`` section (chunk size, waits, ``auto_max_findings`` for
  the reconciliation DAG).
"""

from reconcile.repair.errors import RepairError, RepairTimeout
from reconcile.repair.run import RepairResult, record_decision, run_repair, verify
from reconcile.repair.settings import RepairSettings

__all__ = ["RepairError", "RepairResult", "RepairSettings", "RepairTimeout", "record_decision", "run_repair", "verify"]
