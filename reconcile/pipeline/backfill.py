"""Backfill as orchestrated steps: plan -> one task per chunk -> summary.

The unit of work is a chunk id, ``"<schema.table>/<chunk_id>"`` (:func:`chunk_ref`): the plan step
returns ids, never row payloads, so an orchestrator maps over them cheaply. Every step is
idempotent and resumable because the state lives in the target's control tables
(:mod:`reconcile.backfill.checkpoints`):

- :func:`backfill_plan` plans the selected tables once (a stored plan is reused) and lists the chunks
  still to copy: done chunks are left out unless ``force``, so re-running the DAG resumes;
- :func:`backfill_chunk` claims and copies one chunk, resuming after its last committed batch; a
  retried task converges (writes are upserts by key);
- :func:`backfill_summary` reads the chunk states back and fails when a selected chunk is not done.

Parameters (the DAG's Params, validated by :func:`backfill_params`): ``tables`` (list, empty = all
configured), ``from_key``/``to_key`` (one table only; text form, or a JSON array for a composite
key), ``force``, ``throttle_rows_per_second`` (over the whole run; 0 = unlimited), ``chunk_rows``
(used when a table is planned), ``replay`` (refuse unless the replay slot exists) and ``slot_name``
(default: the config's ``[replay] slot_name``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from reconcile import metrics
from reconcile.config import Config, InvalidSetting

__all__ = [
    "PARAM_DEFAULTS",
    "backfill_chunk",
    "backfill_params",
    "backfill_plan",
    "backfill_summary",
    "chunk_ref",
    "parse_chunk_ref",
]

log = logging.getLogger("reconcile.pipeline.backfill")

PARAM_DEFAULTS: dict[str, Any] = {
    "tables": [],
    "from_key": None,
    "to_key": None,
    "force": False,
    "throttle_rows_per_second": 0.0,
    "chunk_rows": 50_000,
    "replay": False,
    "slot_name": None,
}


def chunk_ref(table: str, chunk_id: int) -> str:
    """The id a chunk task is mapped over.

    >>> chunk_ref("ledger.entries", 3)
    'ledger.entries/3'
    """
    return f"{table}/{chunk_id}"


def parse_chunk_ref(ref: str) -> tuple[str, int]:
    """Inverse of :func:`chunk_ref`.

    >>> parse_chunk_ref("ledger.entries/3")
    ('ledger.entries', 3)
    """
    table, sep, number = ref.rpartition("/")
    if not sep or not table or not number.isdigit():
        raise InvalidSetting("backfill", "chunk", f"{ref!r} is not a chunk id", "map over the ids backfill_plan "
                             "returns, e.g. 'ledger.entries/3'")
    return table, int(number)


def backfill_params(config: Config, params: Mapping[str, Any] | None, *, parallel: int = 1):
    """Validate the run's parameters into :class:`~reconcile.backfill.BackfillSettings`.

    Args:
        config: The pipeline config (tables and their keys).
        params: The DAG run's params; missing keys take :data:`PARAM_DEFAULTS`, unknown keys are refused.
        parallel: Chunk tasks that may run at once; the run's throttle is shared among them.

    Raises:
        InvalidSetting: a parameter is wrong (one sentence naming it and the fix).
    """
    from reconcile.backfill import BackfillSettings, parse_key_arg

    given = dict(params or {})
    unknown = sorted(set(given) - set(PARAM_DEFAULTS))
    if unknown:
        raise InvalidSetting("backfill", unknown[0], "is not a backfill parameter",
                             f"use only {', '.join(PARAM_DEFAULTS)}")
    p = {**PARAM_DEFAULTS, **{k: v for k, v in given.items() if v is not None or k in ("from_key", "to_key")}}
    tables = p["tables"]
    if isinstance(tables, str):
        tables = [t.strip() for t in tables.split(",") if t.strip()]
    if not isinstance(tables, (list, tuple)) or not all(isinstance(t, str) for t in tables):
        raise InvalidSetting("backfill", "tables", f"must be a list of table names, got {tables!r}",
                             'pass e.g. ["ledger.entries"], or [] for every configured table')
    for name in tables:
        config.table(name)  # ConfigError naming the configured tables
    keys: dict[str, Any] = {}
    for name in ("from_key", "to_key"):
        text = p[name]
        if text in (None, ""):
            continue
        if len(tables) != 1:
            raise InvalidSetting("backfill", name, "needs exactly one table (a key means nothing across tables)",
                                 "set tables to the one table the key range belongs to")
        keys[name] = parse_key_arg(str(text), config.table(tables[0]).key, option=name)
    throttle = p["throttle_rows_per_second"]
    if isinstance(throttle, bool) or not isinstance(throttle, (int, float)) or throttle < 0:
        raise InvalidSetting("backfill", "throttle_rows_per_second", f"must be a number >= 0, got {throttle!r}",
                             "use 0 for no throttle")
    for name in ("force", "replay"):
        if not isinstance(p[name], bool):
            raise InvalidSetting("backfill", name, f"must be true or false, got {p[name]!r}", "pass a boolean")
    chunk_rows = p["chunk_rows"]
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int):
        raise InvalidSetting("backfill", "chunk_rows", f"must be a whole number, got {chunk_rows!r}",
                             "use e.g. 50000")
    return BackfillSettings(tables=tuple(tables), from_key=keys.get("from_key"), to_key=keys.get("to_key"),
                            force=p["force"], workers=1, chunk_rows=chunk_rows,
                            max_rows_per_second=float(throttle) / max(1, parallel), replay=p["replay"],
                            slot_name=p["slot_name"] or config.replay.slot_name)


def backfill_plan(config: Config, params: Mapping[str, Any] | None = None) -> list[str]:
    """Plan the selected tables (if not planned yet) and list the chunk ids to copy, parents first.

    Returns:
        ``["ledger.accounts/0", ...]``: chunks not done yet (every selected chunk with ``force``),
        restricted to the key range when one is given. Empty when everything is copied.
    """
    from reconcile.backfill import plan_chunks
    from reconcile.preflight import require

    settings = backfill_params(config, params)
    require(config, "backfill")
    refs = [chunk_ref(c["table"], c["chunk_id"]) for c in plan_chunks(config, settings)]
    log.info("backfill plan: %d chunk(s) to copy%s", len(refs), " (force)" if settings.force else "")
    return refs


def backfill_chunk(config: Config, ref: str, params: Mapping[str, Any] | None = None, *,
                   parallel: int = 1) -> dict[str, Any]:
    """Copy one chunk (claim, copy in budget-sized batches, checkpoint, done).

    A chunk that another live run owns, or that is done already (without ``force``), is left alone
    and reported ``skipped``.

    Returns:
        ``{"table", "chunk_id", "status", "rows", "rejected", "seconds"}``.

    Raises:
        TransientFailure: the chunk failed in a way a retry can get past; it is marked failed and a
            retry resumes from its checkpoint.
        TerminalFailure: the chunk failed in a way a retry repeats (the task fails without retries).
    """
    from reconcile.backfill import copy_chunk

    table, chunk_id = parse_chunk_ref(ref)
    settings = backfill_params(config, params, parallel=parallel)
    # The key range only selects chunks at plan time; a mapped chunk is always copied whole.
    settings = dataclasses.replace(settings, tables=(table,), from_key=None, to_key=None)
    result = dataclasses.asdict(copy_chunk(config, table, chunk_id, settings))
    log.info("%s chunk %d: %s, %d rows, %d rejected, %.2f s", table, chunk_id, result["status"], result["rows"],
             result["rejected"], result["seconds"])
    metrics.after_backfill_chunk(config, result)
    return result


def backfill_summary(config: Config, params: Mapping[str, Any] | None = None,
                     refs: list[str] | None = None, *, run_label: str | None = None) -> dict[str, Any]:
    """Read the chunk states of the selected tables back, record a run row, and say what is left.

    Args:
        refs: The chunk ids this run was to copy (from :func:`backfill_plan`); those not done are listed.
        run_label: Who ran it (e.g. the Airflow run id), stored on the run row.

    Returns:
        ``{"run_id", "status" ("done"|"incomplete"), "tables": {name: {chunks, done, pending, running,
        failed, rows, rejected, planned_rows}}, "chunks_planned", "not_done": [ids]}``.
    """
    from reconcile.backfill import Backfill

    settings = backfill_params(config, params)
    with Backfill.from_config(config, settings) as bf:
        bf.prepare()
        names = bf.selected()
        statuses = {s.table: dataclasses.asdict(s) for s in bf.control.status(names)}
        not_done = []
        for ref in refs or []:
            table, chunk_id = parse_chunk_ref(ref)
            chunk = next(iter(bf.control.chunks(table, [chunk_id])), None)
            if chunk is None or chunk.status != "done":
                not_done.append(ref)
        incomplete = any(s["done"] < s["chunks"] for s in statuses.values()) and (
            not settings.from_key and not settings.to_key)
        status = "incomplete" if not_done or incomplete else "done"
        summary = {"status": status, "tables": {t: {k: v for k, v in s.items() if k != "table"}
                                                for t, s in statuses.items()},
                   "chunks_planned": len(refs or []), "not_done": not_done, "label": run_label}
        run_id = bf.control.start_run({"kind": "backfill", "orchestrated": True, "label": run_label,
                                       "tables": names})
        bf.control.finish_run(run_id, status, summary)
    for name, s in summary["tables"].items():
        log.info("%s: %d/%d chunks done, %d rows, %d rejected", name, s["done"], s["chunks"], s["rows"],
                 s["rejected"])
    return {"run_id": run_id, **summary}
