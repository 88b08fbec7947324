"""Invariant expectations (Great Expectations). Keep this package's import light: GX loads inside functions.

* :func:`run_checks` (:mod:`reconcile.checks.run`): build the suites, run them through GX on the
  source and the target, record a ``reconcile.runs`` row (kind ``'check'``) and per-expectation
  results, build Data Docs; returns a :class:`CheckResult`.
* :func:`generate_suite` (:mod:`reconcile.checks.generate`): per-table expectations from the source
  catalog and the invariants replacing dropped triggers.
* :func:`ledger_checks` (:mod:`reconcile.checks.ledger`): the double-entry ledger invariants.
* :func:`parity_checks`, :func:`freshness_checks` (:mod:`reconcile.checks.parity`).
* :func:`suite_documents` / :func:`write_suites` (:mod:`reconcile.checks.suites`): the suites as GX
  JSON, for review or for ``checks/expectations/``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CheckResult": "reconcile.checks.run",
    "build_checks": "reconcile.checks.run",
    "run_checks": "reconcile.checks.run",
    "generate_suite": "reconcile.checks.generate",
    "ledger_checks": "reconcile.checks.ledger",
    "parity_checks": "reconcile.checks.parity",
    "freshness_checks": "reconcile.checks.parity",
    "Check": "reconcile.checks.spec",
    "acknowledge": "reconcile.checks.store",
    "load_results": "reconcile.checks.store",
    "suite_documents": "reconcile.checks.suites",
    "write_suites": "reconcile.checks.suites",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reconcile.checks' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
