"""A backfill run: prepare, plan, copy chunks with workers, report.

:class:`Backfill` holds what a run shares (connection factories, the budget, the retry policy and
counters, the throttle, the progress). :meth:`Backfill.run` copies every selected chunk with
``workers`` threads, table after table in config order (parents first, so a target with foreign
keys accepts the children). :meth:`Backfill.copy_chunk` copies one chunk alone: the unit an Airflow
task maps over (:func:`plan_chunks` lists them, :func:`copy_chunk` runs one from a config).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from reconcile.backfill.catalog import TableInfo, inspect_table
from reconcile.backfill.checkpoints import DONE, Chunk, Control, Plan
from reconcile.backfill.config import DEFAULT_SLOT, BackfillSettings
from reconcile.backfill.copy import ChunkCopier, ChunkResult
from reconcile.backfill.errors import ChunkLost, PlanMismatch, ReplayNotReady
from reconcile.backfill.keys import show_key
from reconcile.backfill.pacing import Throttle
from reconcile.backfill.plan import plan_boundaries, select_range
from reconcile.backfill.progress import BackfillSummary, Progress, TableSummary
from reconcile.backfill.replay import SlotInfo, assert_replay_ready
from reconcile.budget import Budget, budget_from
from reconcile.config import Config, TableSpec, redact
from reconcile.control import migrate
from reconcile.errors import ConfigError, TransientFailure
from reconcile.keyrule import require_unique_key
from reconcile.occ import (
    DEFAULT_POLICY,
    Reconnector,
    RetryCounters,
    RetryPolicy,
    error_boundary,
    policy_from,
    scrubbed,
    stage_error,
)
from reconcile.schema.dialect import dialect_for

log = logging.getLogger("reconcile.backfill")

ConnectionFactory = Callable[[], psycopg.Connection]

# Text forms the target parses the same way whatever its own settings: ISO dates, postgres-style
# intervals, shortest-exact floats, hex bytea, UTF-8.
_SOURCE_SESSION = (
    "SET datestyle = 'ISO, YMD'", "SET intervalstyle = 'postgres'", "SET timezone = 'UTC'",
    "SET extra_float_digits = 3", "SET bytea_output = 'hex'", "SET client_encoding = 'UTF8'",
)


def _source_session(factory: ConnectionFactory) -> ConnectionFactory:
    def open_source() -> psycopg.Connection:
        conn = factory()
        for stmt in _SOURCE_SESSION:
            conn.execute(stmt)
        return conn

    return open_source




class Backfill:
    """One backfill session over a source and a target."""

    def __init__(
        self,
        *,
        source: ConnectionFactory,
        target: ConnectionFactory,
        tables: Sequence[TableSpec],
        budget: Budget | None = None,
        settings: BackfillSettings | None = None,
        policy: RetryPolicy = DEFAULT_POLICY,
        dialect: str = "postgres",
        progress: Progress | None = None,
        migration_id: str | None = None,
    ) -> None:
        self.settings = settings or BackfillSettings()
        if self.settings.slot_name is None:
            self.settings = dataclasses.replace(self.settings, slot_name=DEFAULT_SLOT)
        self.budget = budget or Budget()
        self.policy = policy
        self.dialect = dialect
        self.source_factory = _source_session(source)
        self.target_factory = target
        self.specs = {t.name: t for t in tables}
        self.table_order = [t.name for t in tables]
        self.counters = RetryCounters()
        """Target transactions: attempts, retries, OCC conflicts."""
        self.source_counters = RetryCounters()
        """Source reads (dropped connections and the like)."""
        self.stop = threading.Event()
        self.throttle = Throttle(self.settings.max_rows_per_second)
        self.progress = progress or Progress(enabled=False)
        self.progress.retries = lambda: self.counters.retries
        self._target = Reconnector(target)
        self._source = Reconnector(self.source_factory)
        self.migration_id = migration_id
        """The migration this session's runs belong to (:func:`reconcile.identity.migration_of`)."""
        self.control = Control(self._target, budget=self.budget, policy=policy, counters=self.counters,
                               migration_id=migration_id)
        self.slot: SlotInfo | None = None
        self._prepared = False
        self._infos: dict[str, TableInfo] = {}
        self._copiers: list[ChunkCopier] = []
        self._causes: dict[tuple[str, int], BaseException] = {}
        """What failed each chunk, by (table, chunk id): :meth:`copy_chunk` raises it, classified."""
        self.secrets: tuple[str, ...] = ()
        """Passwords and tokens kept out of messages (:func:`reconcile.config.redact`)."""

    @classmethod
    def from_config(cls, config: Config, settings: BackfillSettings | None = None, *,
                    progress: Progress | None = None) -> Backfill:
        """A session on the configured source and target (connections via :mod:`reconcile.connections`)."""
        from reconcile.connections import connect
        from reconcile.identity import migration_of

        settings = settings or BackfillSettings()
        if settings.slot_name is None:  # the slot replay reads: [replay] slot_name, never a built-in name
            settings = dataclasses.replace(settings, slot_name=config.replay.slot_name)
        bf = cls(source=lambda: connect(config.source), target=lambda: connect(config.target),
                 tables=config.tables, budget=budget_from(config), settings=settings, policy=policy_from(config),
                 dialect=dialect_for(config.target).name, progress=progress,
                 migration_id=migration_of(config).id)
        bf.secrets = tuple(config.secrets())
        return bf

    def close(self) -> None:
        for copier in self._copiers:
            copier.close()
        self._copiers.clear()
        self._target.close()
        self._source.close()

    def __enter__(self) -> Backfill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- preparation ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Control schema up to date, replay readiness checked, dead runs of this host released."""
        if self._prepared:
            return
        migrate(self._target.get(), dialect=self.dialect, policy=self.policy, counters=self.counters)  # type: ignore[arg-type]
        self.slot = assert_replay_ready(self._source.get(), self.settings.slot_name, self.settings.replay)
        if self.slot is None:
            log.info("no replication slot %r on the source: writes racing this backfill are not captured "
                     "(fine for a one-off copy; pass --replay once the replay stage has created the slot)",
                     self.settings.slot_name)
        self.control.abandon_dead_runs()
        self._prepared = True

    def selected(self) -> list[str]:
        """Tables this run copies, in config order."""
        if not self.settings.tables:
            return list(self.table_order)
        unknown = [t for t in self.settings.tables if t not in self.specs]
        if unknown:
            raise ConfigError(f"table(s) {', '.join(unknown)} are not configured; use one of "
                              f"{', '.join(self.table_order)} or add a [[tables]] entry")
        return [t for t in self.table_order if t in self.settings.tables]

    def inspect(self, table: str, *, advise: bool = True) -> TableInfo:
        if table not in self._infos:
            self._infos[table] = inspect_table(self._source.get(), self._target.get(), self.specs[table], self.budget,
                                               advise=advise)
        return self._infos[table]

    def ensure_plan(self, info: TableInfo) -> Plan:
        """The table's stored plan, made now if there is none (or ``replan``)."""
        plan = self.control.load_plan(info.name)
        if plan is not None and self.settings.replan:
            log.info("%s: dropping the stored plan (%d chunks) to plan again", info.name, plan.chunks)
            self.control.drop_plan(info.name)
            plan = None
        if plan is not None and plan.key != info.key:
            raise PlanMismatch(f"{info.name} was planned with key ({', '.join(plan.key)}) but the config now says "
                               f"({', '.join(info.key)}); rerun with --replan to plan (and copy) it again")
        if plan is None:
            # The key must be unique and not null on the source (reconcile.keyrule): proven by the catalog,
            # or by counting duplicates and NULLs, before any chunk boundary is drawn on it.
            how = require_unique_key(self._source.get(), info.name, info.key)
            log.info("%s: key (%s) is unique and not null on the source (%s)", info.name, ", ".join(info.key), how)
            leftovers = self.control.delete_chunks(info.name)  # rows of a planning that never finished
            if leftovers:
                log.info("%s: removed %d chunk rows of an unfinished plan", info.name, leftovers)
            t0 = time.monotonic()
            bounds, rows, strategy = plan_boundaries(self._source.get(), info, self.settings.chunk_rows)
            plan = self.control.save_plan(info.name, info.key, [k.type for k in info.source_key], bounds,
                                          chunk_rows=self.settings.chunk_rows, planned_rows=rows, strategy=strategy)
            log.info("%s: planned %d chunks over %d rows (%s strategy) in %.2f s", info.name, plan.chunks, rows,
                     strategy, time.monotonic() - t0)
        return plan

    def chunks_to_copy(self, info: TableInfo, plan: Plan) -> list[Chunk]:
        """The table's chunks this run copies: in the key range, not done unless ``force``."""
        s = self.settings
        chunks = self.control.chunks(info.name)
        selected = select_range(self._source.get(), info, chunks, s.from_key, s.to_key)
        if not s.force:
            selected = [c for c in selected if c.status != DONE]
        if s.replay and self.slot is not None:
            stale = [c for c in chunks if (c.status == DONE or c.last_key is not None)
                     and c.replay_slot != self.slot.name]
            ids = {c.chunk_id for c in selected} if s.force else set()
            missing = [c for c in stale if c.chunk_id not in ids]
            if missing:
                raise ReplayNotReady(
                    f"{len(missing)} chunk(s) of {info.name} hold rows copied before replication slot "
                    f"{self.slot.name!r} existed, so writes racing them were not captured; rerun with --force "
                    f"(and without --from-key/--to-key) to copy them again under the slot")
        return selected

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> BackfillSummary:
        """Copy every selected chunk; returns the summary (also stored on the run row)."""
        t0 = time.monotonic()
        self.prepare()
        tables = self.selected()
        infos = [self.inspect(t) for t in tables]  # every table checked before anything is written
        plans = {i.name: self.ensure_plan(i) for i in infos}
        work = {i.name: self.chunks_to_copy(i, plans[i.name]) for i in infos}
        doc = {"kind": "backfill", "tables": tables, "settings": _settings_doc(self.settings),
               "replay_slot": self.slot.name if self.slot else None}
        run_id = self.control.start_run(doc)
        log.info("backfill run %s: %s", run_id, ", ".join(f"{t} ({len(work[t])} chunks)" for t in tables))
        summaries: list[TableSummary] = []
        errors: list[str] = []
        status = "done"
        unexpected: BaseException | None = None
        try:
            with self.progress:
                for info in infos:
                    summaries.append(self._copy_table(info, plans[info.name], work[info.name], run_id, errors))
                    if self.stop.is_set() or len(errors) >= self.settings.max_failures:
                        break
        except KeyboardInterrupt:
            self.stop.set()
            status = "interrupted"
        except BaseException as exc:  # recorded on the run row, then raised
            self.stop.set()
            status, unexpected = "failed", exc
            errors.append(f"{type(exc).__name__}: {exc}")
        if status == "done" and (self.stop.is_set() or errors):
            status = "interrupted" if self.stop.is_set() and not errors else "failed"
        summary = BackfillSummary(run_id, status, summaries, time.monotonic() - t0, retries=self.counters.retries,
                                  conflicts=self.counters.conflicts, attempts=self.counters.attempts, errors=errors)
        try:
            self.control.finish_run(run_id, status, summary.to_dict())
        except Exception as exc:  # the summary (or the original error) still reaches the caller
            log.warning("could not record the end of run %s: %s", run_id, exc)
        if unexpected is not None:
            raise unexpected
        return summary

    def _copy_table(self, info: TableInfo, plan: Plan, chunks: list[Chunk], run_id: str,
                    errors: list[str]) -> TableSummary:
        t0 = time.monotonic()
        total = sum(_estimate(plan, c) for c in chunks)
        already = 0 if self.settings.force else sum(c.rows for c in chunks)
        self.progress.start_table(info.name, total=total or None, already=already, chunks=len(chunks))
        pending: queue.Queue[Chunk] = queue.Queue()
        for c in chunks:
            pending.put(c)
        results: list[ChunkResult] = []
        lock = threading.Lock()
        n = min(self.settings.workers, len(chunks))
        while len(self._copiers) < n:
            self._copiers.append(self._new_copier())
        threads = [threading.Thread(target=self._worker, args=(self._copiers[i], info, pending, run_id, results,
                                                               errors, lock), name=f"backfill-{i}", daemon=True)
                   for i in range(n)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt:
            self.stop.set()
            for t in threads:
                t.join()
            raise
        finally:
            self.progress.finish_table(info.name)
        done = [r for r in results if r.status == DONE]
        failed = sum(1 for r in results if r.status == "failed")
        skipped = sum(1 for r in results if r.status == "skipped")
        if skipped:
            log.warning("%s: %d chunk(s) are being copied by another live run and were left to it", info.name,
                        skipped)
        return TableSummary(info.name, len(chunks), len(done), failed, sum(r.rows for r in results),
                            sum(r.rejected for r in results), time.monotonic() - t0, chunks_skipped=skipped)

    def _new_copier(self) -> ChunkCopier:
        target = Reconnector(self.target_factory)
        return ChunkCopier(
            source=Reconnector(self.source_factory), target=target,
            control=Control(target, budget=self.budget, policy=self.policy, counters=self.counters,
                            migration_id=self.migration_id),
            budget=self.budget, settings=self.settings, policy=self.policy, counters=self.counters,
            source_counters=self.source_counters, throttle=self.throttle, progress=self.progress, stop=self.stop)

    def _worker(self, copier: ChunkCopier, info: TableInfo, pending: queue.Queue[Chunk], run_id: str,
                results: list[ChunkResult], errors: list[str], lock: threading.Lock) -> None:
        while not self.stop.is_set():
            with lock:
                if len(errors) >= self.settings.max_failures:
                    return
            try:
                chunk = pending.get_nowait()
            except queue.Empty:
                return
            result = self._copy_one(copier, info, chunk, run_id, errors, lock)
            with lock:
                results.append(result)

    def _copy_one(self, copier: ChunkCopier, info: TableInfo, chunk: Chunk, run_id: str, errors: list[str],
                  lock: threading.Lock) -> ChunkResult:
        try:
            claimed = copier.control.claim(info.name, chunk.chunk_id, run_id, lease_seconds=self.settings.lease_seconds,
                                           slot=self.slot.name if self.slot else None, force=self.settings.force)
        except Exception as exc:
            return self._failed(copier, info, chunk, None, run_id, exc, errors, lock)
        if claimed is None:
            log.info("%s chunk %d: done or owned by another live run; skipped", info.name, chunk.chunk_id)
            return ChunkResult(info.name, chunk.chunk_id, "skipped")
        try:
            result = copier.copy(info, claimed, run_id)
        except ChunkLost as exc:
            log.warning("%s", exc)
            return ChunkResult(info.name, chunk.chunk_id, "skipped")
        except Exception as exc:
            return self._failed(copier, info, chunk, claimed, run_id, exc, errors, lock)
        if result.status == DONE:
            self.progress.chunk_finished(info.name)
        return result

    def _failed(self, copier: ChunkCopier, info: TableInfo, chunk: Chunk, claimed: Chunk | None, run_id: str,
                exc: BaseException, errors: list[str], lock: threading.Lock) -> ChunkResult:
        message = f"{info.name} chunk {chunk.chunk_id} [{show_key(chunk.lo, unbounded='-∞')}, {show_key(chunk.hi)}): " \
                  f"{type(exc).__name__}: {exc}"
        log.error("%s", message)
        with lock:
            errors.append(message)
            self._causes[(info.name, chunk.chunk_id)] = exc
        self.progress.chunk_finished(info.name, failed=True)
        if claimed is not None:
            try:
                copier.control.fail_chunk(claimed, run_id, f"{type(exc).__name__}: {exc}")
            except Exception:  # the chunk stays 'running'; its run's end frees it
                log.warning("could not mark %s chunk %d failed", info.name, chunk.chunk_id, exc_info=True)
        return ChunkResult(info.name, chunk.chunk_id, "failed")

    # --- single chunks (Airflow) ------------------------------------------------------------------

    def plan(self) -> list[dict[str, Any]]:
        """Plan the selected tables (if needed); returns the chunks to copy as ``{"table", "chunk_id"}``."""
        self.prepare()
        refs = []
        for table in self.selected():
            info = self.inspect(table)
            plan = self.ensure_plan(info)
            refs += [{"table": table, "chunk_id": c.chunk_id} for c in self.chunks_to_copy(info, plan)]
        return refs

    def copy_chunk(self, table: str, chunk_id: int, *, run_id: str | None = None) -> ChunkResult:
        """Copy one planned chunk on its own (claim, copy, checkpoint, done).

        Without ``run_id`` a run row is opened for this chunk alone and closed at the end.

        Raises:
            TransientFailure: the chunk failed in a way a retry can get past (a dropped connection, OCC
                retries exhausted); it is marked failed and a retry resumes from its checkpoint.
            TerminalFailure: the chunk failed in a way a retry repeats (a 42xxx error, a bug): a
                person must act. Either carries the SQLSTATE; the original error is its ``__cause__``.
            ReconcileError: a reconcile error the copy raised on purpose, as it was raised.
        """
        self.prepare()
        info = self.inspect(table, advise=False)  # the planning step gave the table's advice once
        own_run = run_id is None
        if run_id is None:
            run_id = self.control.start_run({"kind": "backfill", "tables": [table], "chunk_id": chunk_id,
                                             "settings": _settings_doc(self.settings)})
        if not self._copiers:
            self._copiers.append(self._new_copier())
        copier = self._copiers[0]
        self.progress.start_table(table, total=None, already=0, chunks=1)
        errors: list[str] = []
        chunk = next((c for c in self.control.chunks(table, [chunk_id])), None)
        if chunk is None:
            raise PlanMismatch(f"{table} has no chunk {chunk_id}; plan the table first (plan_chunks) and map over "
                               "the chunk ids it returns")
        result = self._copy_one(copier, info, chunk, run_id, errors, threading.Lock())
        if own_run:
            self.control.finish_run(run_id, "done" if result.status != "failed" else "failed",
                                    dataclasses.asdict(result))
        if result.status == "failed":
            step = f"backfill of {table} chunk {chunk_id}"
            cause = self._causes.pop((table, chunk_id), None)
            if cause is None:  # pragma: no cover - _failed always records the cause
                raise TransientFailure(step, errors[0] if errors else "no cause recorded")
            raise stage_error(cause, step, redact=self._redact) from scrubbed(cause, self._redact)
        return result

    def _redact(self, text: str) -> str:
        return redact(text, self.secrets)


def _estimate(plan: Plan, chunk: Chunk) -> int:
    """Rows a chunk held when planned (the last one holds the remainder)."""
    if chunk.chunk_id < plan.chunks - 1:
        return plan.chunk_rows
    return max(0, plan.planned_rows - plan.chunk_rows * (plan.chunks - 1))


def _settings_doc(s: BackfillSettings) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s).items()}


# --- entry points for Airflow tasks ---------------------------------------------------------------


def run_backfill(config: Config, settings: BackfillSettings | None = None, *,
                 progress: Progress | None = None) -> BackfillSummary:
    """Run a whole backfill from a config (what ``reconcile backfill`` does)."""
    with _boundary(config, "backfill"), Backfill.from_config(config, settings, progress=progress) as bf:
        return bf.run()


def plan_chunks(config: Config, settings: BackfillSettings | None = None) -> list[dict[str, Any]]:
    """Plan the selected tables and list the chunks to copy, for ``copy_chunk.expand(...)``."""
    with _boundary(config, "backfill plan"), Backfill.from_config(config, settings) as bf:
        return bf.plan()


def copy_chunk(config: Config, table: str, chunk_id: int, settings: BackfillSettings | None = None) -> ChunkResult:
    """Copy one chunk from a config: the independent unit an Airflow task maps over.

    Raises:
        TransientFailure, TerminalFailure, ReconcileError: as :meth:`Backfill.copy_chunk`.
    """
    with _boundary(config, f"backfill of {table} chunk {chunk_id}"), Backfill.from_config(config, settings) as bf:
        return bf.copy_chunk(table, chunk_id)


def _boundary(config: Config, step: str):
    """The backfill's error boundary: every error leaves classified (see :func:`reconcile.occ.stage_error`)."""
    secrets = config.secrets()
    return error_boundary(step, redact=lambda text: redact(text, secrets))
