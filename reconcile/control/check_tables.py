"""Control-schema steps of the expectation check stage (versions 700-749).

Imported by :mod:`reconcile.control`, so these steps are part of every ``migrate``. One DDL
statement per step (``table_step``, ``register_index``, or an ``ALTER TABLE ... ADD COLUMN``
without inline DEFAULT/NOT NULL); never renumber a shipped step.

* ``check_results``: one row per expectation evaluated in a check run (``reconcile.runs`` kind
  ``'check'``), on one side: the suite, the check's name, the GX expectation type, the data it read,
  success, the observed value and the details (kwargs, GX result summary, exception) as JSON text.
  ``status`` (step 720) is ``passed``, ``failed``, ``error`` or ``not_applicable``; ``reason`` (721)
  says why a ``not_applicable`` check was not run (it does not fit the configured ledger: no currency
  column, no idempotency key...). Such a row has ``success`` false but counts neither as passed nor as
  failed: read ``status``. Rows written before step 720 have no status (``success`` says it).
* ``check_acknowledgements``: an operator's acknowledgement of a known problem the freshness suite
  would otherwise count (kind ``'reject'`` and the reject's id): who, why, when. Upsert by
  (kind, ref); rows are never deleted by the tool.
"""

from __future__ import annotations

from psycopg import sql

from reconcile.control.migrations import Migration, ident, register, register_index, table_step

register(table_step(700, "check results", "check_results", """
    run_id uuid NOT NULL,
    result_no integer NOT NULL,
    side text NOT NULL,
    suite text NOT NULL,
    name text NOT NULL,
    expectation text NOT NULL,
    asset text,
    success boolean NOT NULL,
    observed text,
    details text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, result_no)"""))

register(table_step(701, "check acknowledgements", "check_acknowledgements", """
    kind text NOT NULL,
    ref text NOT NULL,
    acknowledged_by text NOT NULL,
    reason text NOT NULL,
    acknowledged_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, ref)"""))

register_index(702, "check results by check", table="check_results", index="check_results_name_idx",
               columns=["suite", "name", "recorded_at"])

register(Migration(720, "check_results.status", sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} text").format(
    ident("check_results"), sql.Identifier("status"))))
register(Migration(721, "check_results.reason", sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} text").format(
    ident("check_results"), sql.Identifier("reason"))))
