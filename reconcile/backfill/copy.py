"""Copying one chunk: short keyset reads on the source, budget-sized idempotent writes on the target.

A chunk ``[lo, hi)`` is copied as a sequence of *batches*. Each batch is

1. one statement on the source, ``COPY (SELECT ... WHERE key > last ORDER BY key LIMIT n) TO STDOUT``,
   each column read through the column contract's read expression (``array_to_json(tags)``)
   (its own snapshot, over in milliseconds: no long-running source transaction), with ``n`` from
   :class:`~reconcile.backfill.pacing.BatchSizer` (the budget's row cap, adapting toward
   ``batch_seconds``). When no source index returns the key in C order (a text key on a non-C
   source), a chunk is read with one sorted statement instead and cut into batches here;
2. one target transaction through :func:`reconcile.occ.run_with_retry`, holding the batch's rows
   *and* the chunk's checkpoint (``last_key``, ``rows``), so a resume continues exactly after the
   last committed row. The rows of a batch are measured (their COPY text plus the table's index-key
   estimate) and packed with the budget; a batch that does not fit is split, a row that cannot fit
   any transaction is rejected before it is sent.

Write paths, all idempotent (a batch written twice converges, never duplicates):

* ``auto`` / ``copy``: inside the transaction, check that the batch's key range is empty on the
  target; if so ``COPY ... FROM STDIN`` the raw lines from the source (no parsing in Python), else
  upsert with ``unnest``. A key inserted concurrently after the check fails the COPY with 23505 (or
  40001, retried): the batch is then upserted. DSQL has no temporary tables, so COPY into a staging
  table followed by an upsert is not an option.
* ``unnest``: ``INSERT ... SELECT CAST(v1 AS type), ... FROM unnest(%s::text[], ...) ON CONFLICT (key)
  DO UPDATE SET`` every other column: one statement per batch, a fixed number of parameters.
* ``values``: the same upsert with a multi-row ``VALUES`` list.
* ``executemany``: a one-row upsert sent for every row in psycopg's pipeline mode.

``bench/backfill.py`` measures them; ``auto`` is the default.

Rows the target refuses (SQLSTATE class 22 data exceptions, class 23 constraint violations, 54000
limits) are isolated by bisecting the batch: halves are written in their own transactions until
the single refused rows are left, which are recorded in ``reconcile.rejects`` with their key and the
reason; the rest of the batch lands, and the chunk completes. Any other error fails the chunk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from reconcile.backfill.catalog import CONTROL_BYTES, CONTROL_ROWS, TableInfo
from reconcile.backfill.checkpoints import Chunk, Control, Reject
from reconcile.backfill.config import BackfillSettings
from reconcile.backfill.keys import Key, copy_fields, key_range, line_key, order_by
from reconcile.backfill.pacing import BatchSizer, Throttle
from reconcile.backfill.progress import Progress
from reconcile.budget import Budget, qualified
from reconcile.db.columns import CONVERSIONS
from reconcile.errors import LimitExceeded
from reconcile.occ import DEFAULT_POLICY, Reconnector, RetryCounters, RetryPolicy, run_with_retry

log = logging.getLogger(__name__)

_ROW_LEVEL_CLASSES = ("22", "23")
_MAX_PARAMS = 65_535


@dataclass(frozen=True)
class ChunkResult:
    """What one :meth:`ChunkCopier.copy` did."""

    table: str
    chunk_id: int
    status: str
    """``done``, ``stopped`` (asked to stop; resumable) or ``skipped`` (not claimable)."""
    rows: int = 0
    rejected: int = 0
    seconds: float = 0.0


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.2f} MiB"


class _RowRefused(Exception):
    """A write failed because of the data itself (bisect it)."""

    def __init__(self, sqlstate: str | None, reason: str) -> None:
        super().__init__(reason)
        self.sqlstate = sqlstate
        self.reason = reason


def _primary(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    text = getattr(diag, "message_primary", None) if diag is not None else None
    if text:
        return text
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


def _refusal(exc: BaseException) -> _RowRefused | None:
    """The row-level refusal ``exc`` stands for, or None when it is not about the data."""
    if isinstance(exc, LimitExceeded):
        cause = exc.__cause__
        return _RowRefused("54000", _primary(cause) if cause is not None else str(exc))
    if isinstance(exc, psycopg.Error) and exc.sqlstate:
        if exc.sqlstate[:2] in _ROW_LEVEL_CLASSES or exc.sqlstate == "54000":
            return _RowRefused(exc.sqlstate, _primary(exc))
    return None


class Statements:
    """The SQL one table's batches use, composed once."""

    def __init__(self, info: TableInfo) -> None:
        self.info = info
        table = qualified(info.name)
        cols = sql.SQL(", ").join(map(sql.Identifier, info.columns))
        key = sql.SQL(", ").join(map(sql.Identifier, info.key))
        overriding = sql.SQL(" OVERRIDING SYSTEM VALUE") if info.overriding else sql.SQL("")
        if info.update_columns:
            conflict = sql.SQL("ON CONFLICT ({}) DO UPDATE SET {}").format(key, sql.SQL(", ").join(
                sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in info.update_columns))
        else:
            conflict = sql.SQL("ON CONFLICT ({}) DO NOTHING").format(key)
        self.conflict = conflict
        # Type names come from format_type() on the target catalog (SQL text already).
        self._types = [sql.SQL(t) for t in info.target_types]  # type: ignore[arg-type]
        n = len(info.columns)
        self.read_order = order_by(info.source_key, "t")
        # Each column through its contract's read expression (``array_to_json(t.tags)``): COPY then emits
        # the target's value, which lands unchanged by COPY FROM or by the casts of the upserts.
        conversions = info.read_conversions or ("none",) * n
        self.source_columns = sql.SQL(", ").join(
            CONVERSIONS[conv].read_sql(sql.Identifier("t", c)) for c, conv in zip(info.columns, conversions))
        self.source_table = table
        self.copy_in = sql.SQL("COPY {} ({}) FROM STDIN").format(table, cols)
        vs = [sql.Identifier(f"v{i}") for i in range(n)]
        self.unnest = sql.SQL("INSERT INTO {t} ({cols}){ov} SELECT {casts} FROM unnest({arrays}) AS u({vs}) {conflict}").format(
            t=table, cols=cols, ov=overriding,
            casts=sql.SQL(", ").join(sql.SQL("CAST(u.{} AS {})").format(v, ty) for v, ty in zip(vs, self._types)),
            arrays=sql.SQL(", ").join([sql.SQL("%s::text[]")] * n), vs=sql.SQL(", ").join(vs), conflict=conflict)
        self._row = sql.SQL("({})").format(sql.SQL(", ").join(sql.SQL("CAST(%s AS {})").format(ty) for ty in self._types))
        self._insert_head = sql.SQL("INSERT INTO {} ({}){} VALUES ").format(table, cols, overriding)
        self.one_row = sql.Composed([self._insert_head, self._row, sql.SQL(" "), conflict])
        self.rows_per_values = max(1, _MAX_PARAMS // n)

    def values(self, rows: int) -> sql.Composed:
        """A multi-row VALUES upsert for ``rows`` rows."""
        return sql.Composed([self._insert_head, sql.SQL(", ").join([self._row] * rows), sql.SQL(" "), self.conflict])

    def read(self, *, lower: Key | None, inclusive: bool, upper: Key | None,
             limit: int | None) -> tuple[sql.Composed, list[str]]:
        """``COPY (SELECT ...) TO STDOUT`` for keys in the range, in C order, at most ``limit`` rows."""
        cond, params = key_range(self.info.source_key, lower=lower, lower_inclusive=inclusive, upper=upper, alias="t")
        q = sql.SQL("COPY (SELECT {cols} FROM {t} AS t WHERE {cond} ORDER BY {order}{limit}) TO STDOUT").format(
            cols=self.source_columns, t=self.source_table, cond=cond, order=self.read_order,
            limit=sql.SQL(" LIMIT {}").format(sql.Literal(limit)) if limit is not None else sql.SQL(""))
        return q, params

    def occupied(self, first: Key, last: Key) -> tuple[sql.Composed, list[str]]:
        """Whether the target holds any key in ``[first, last]``."""
        cond, params = key_range(self.info.target_key, lower=first, upper=last, upper_inclusive=True)
        return sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(qualified(self.info.name), cond), params


def write_rows(conn: psycopg.Connection, st: Statements, method: str, lines: Sequence[bytes],
               parsed: list[list[str | None]] | None = None) -> str:
    """Write ``lines`` (COPY text) in the caller's transaction; returns the path taken.

    ``parsed`` may carry the lines already split into fields (for a retry).
    """
    info = st.info
    if method in ("auto", "copy"):
        q, params = st.occupied(line_key(lines[0], info.key_positions), line_key(lines[-1], info.key_positions))
        if not conn.execute(q, params).fetchone()[0]:
            with conn.cursor().copy(st.copy_in) as cp:
                cp.write(b"\n".join(lines) + b"\n")
            return "copy"
        method = "unnest"
    rows = parsed if parsed is not None else [copy_fields(line) for line in lines]
    if method == "unnest":
        conn.execute(st.unnest, [list(col) for col in zip(*rows)])
    elif method == "values":
        step = st.rows_per_values
        for i in range(0, len(rows), step):
            part = rows[i:i + step]
            conn.execute(st.values(len(part)), [v for r in part for v in r])
    elif method == "executemany":
        conn.cursor().executemany(st.one_row, rows)
    else:  # pragma: no cover - validated by BackfillSettings
        raise ValueError(f"unknown write method {method!r}")
    return method


class ChunkCopier:
    """Copies chunks for one worker: its own source and target connections, its own batch sizes."""

    def __init__(
        self,
        *,
        source: Reconnector,
        target: Reconnector,
        control: Control,
        budget: Budget,
        settings: BackfillSettings,
        policy: RetryPolicy = DEFAULT_POLICY,
        counters: RetryCounters | None = None,
        source_counters: RetryCounters | None = None,
        throttle: Throttle | None = None,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.source = source
        self.target = target
        self.control = control
        self.budget = budget
        self.settings = settings
        self.policy = policy
        self.counters = counters if counters is not None else RetryCounters()
        self.source_counters = source_counters if source_counters is not None else RetryCounters()
        self.throttle = throttle or Throttle(0)
        self.progress = progress
        self.stop = stop or threading.Event()
        self._sizers: dict[str, BatchSizer] = {}
        self._statements: dict[str, Statements] = {}
        # Room for the checkpoint in every data transaction.
        self.write_budget = Budget(max_rows=max(1, budget.max_rows - CONTROL_ROWS),
                                   max_bytes=max(1, budget.max_bytes - CONTROL_BYTES),
                                   fraction=budget.fraction, count_index_tuples=budget.count_index_tuples)

    def close(self) -> None:
        self.source.close()
        self.target.close()

    # --- one chunk ------------------------------------------------------------------------------------

    def copy(self, info: TableInfo, chunk: Chunk, run_id: str) -> ChunkResult:
        """Copy a claimed chunk from its checkpoint to its end; mark it done.

        Raises:
            ChunkLost: another run took the chunk over; nothing of this batch was committed.
            Exception: anything that is not a row-level refusal (the caller marks the chunk failed).
        """
        t0 = time.monotonic()
        st = self._statements.setdefault(info.name, Statements(info))
        if chunk.last_key is None:
            self.control.purge_rejects(info.name, chunk.chunk_id)
        lower, inclusive = (chunk.last_key, False) if chunk.last_key is not None else (chunk.lo, True)
        sizer = self._sizer(info)
        rows = rejected = 0
        finished = False
        for lines, final, read_s in self._batches(st, chunk, lower, inclusive, sizer):
            tw = time.monotonic()
            if not lines:  # the range held nothing more
                self._checkpoint_only(chunk, run_id, last_key=None, rows=0, rejected=0, done=True, t0=t0)
                finished = True
                break
            w, r = self._write_batch(st, chunk, run_id, lines, final=final, t0=t0)
            rows, rejected = rows + w, rejected + r
            sizer.observe(len(lines), read_s + time.monotonic() - tw, sum(map(len, lines)) / len(lines))
            if self.progress is not None:
                self.progress.add(info.name, w, r)
            if final:
                finished = True
                break
        # Not finished: asked to stop between batches; the chunk resumes after its checkpoint.
        status = "done" if finished else "stopped"
        return ChunkResult(info.name, chunk.chunk_id, status, rows, rejected, time.monotonic() - t0)

    def _sizer(self, info: TableInfo) -> BatchSizer:
        if info.name not in self._sizers:
            self._sizers[info.name] = BatchSizer(
                cap_rows=info.rows_cap, byte_cap=self.write_budget.byte_cap,
                target_seconds=self.settings.batch_seconds, extra_bytes=info.index_key_bytes)
        return self._sizers[info.name]

    # --- reading --------------------------------------------------------------------------------------

    def _read(self, st: Statements, chunk: Chunk, lower: Key | None, inclusive: bool, limit: int | None) -> list[bytes]:
        q, params = st.read(lower=lower, inclusive=inclusive, upper=chunk.hi, limit=limit)

        def fetch(conn: psycopg.Connection) -> bytes:
            with conn.cursor().copy(q, params) as cp:
                return b"".join(cp)

        data = run_with_retry(self.source, fetch, policy=self.policy, counters=self.source_counters,
                              label=f"source read of {chunk.table} chunk {chunk.chunk_id}")
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        return lines

    def _batches(self, st: Statements, chunk: Chunk, lower: Key | None, inclusive: bool,
                 sizer: BatchSizer) -> Iterator[tuple[list[bytes], bool, float]]:
        """(lines, final, read seconds) for each batch of the chunk, from its checkpoint on."""
        if st.info.index_ordered:
            while True:
                n = sizer.next()
                self.throttle.acquire(n, self.stop)
                if self.stop.is_set():
                    return
                t = time.monotonic()
                lines = self._read(st, chunk, lower, inclusive, n)
                final = len(lines) < n
                yield lines, final, time.monotonic() - t
                if final or not lines:
                    return
                lower, inclusive = line_key(lines[-1], st.info.key_positions), False
        else:
            # One sorted read (one statement) of the rest of the chunk, cut into batches here.
            t = time.monotonic()
            rest = self._read(st, chunk, lower, inclusive, None)
            read_s = time.monotonic() - t
            if not rest:
                yield [], True, read_s
                return
            i = 0
            while i < len(rest):
                n = sizer.next()
                self.throttle.acquire(n, self.stop)
                if self.stop.is_set():
                    return
                part = rest[i:i + n]
                i += len(part)
                yield part, i >= len(rest), read_s * len(part) / len(rest)

    # --- writing --------------------------------------------------------------------------------------

    def _write_batch(self, st: Statements, chunk: Chunk, run_id: str, lines: list[bytes], *, final: bool,
                     t0: float) -> tuple[int, int]:
        """Write one batch and its checkpoint; returns (rows written, rows rejected)."""
        info = st.info
        last_key = line_key(lines[-1], info.key_positions)
        rejects: list[Reject] = []
        n = len(lines)
        if self.write_budget.fits(n * info.row_dsql_rows, sum(map(len, lines)) + n * info.index_key_bytes):
            groups = [lines]  # the common case: the whole batch fits one transaction, measured in C
        else:
            groups = self._pack(info, st, chunk, lines, rejects)
        written = 0
        checkpointed = False
        for i, group in enumerate(groups):
            last = i == len(groups) - 1
            if last and not rejects:
                ckpt = dict(last_key=last_key, rows=written + len(group), rejected=0, done=final,
                            duration_ms=int((time.monotonic() - t0) * 1000))
                try:
                    self._write(st, chunk, run_id, group, checkpoint=ckpt)
                    written += len(group)
                    checkpointed = True
                    continue
                except _RowRefused:
                    pass  # isolate the refused rows below; the checkpoint goes with the rejects
            written += self._write_or_isolate(st, chunk, run_id, group, rejects)
        if not checkpointed:
            self._save_rejects(chunk, run_id, rejects, checkpoint=dict(
                last_key=last_key, rows=written, rejected=len(rejects), done=final,
                duration_ms=int((time.monotonic() - t0) * 1000)))
        return written, len(rejects)

    def _pack(self, info: TableInfo, st: Statements, chunk: Chunk, lines: list[bytes],
              rejects: list[Reject]) -> list[list[bytes]]:
        """Split a batch into groups that fit the budget, row by row; oversized rows become rejects."""
        sized: list[tuple[bytes, int]] = []
        for line in lines:
            nbytes = len(line) + info.index_key_bytes
            if not self.write_budget.within_limit(info.row_dsql_rows, nbytes):
                reason = (f"the row needs {_mib(nbytes)} with its index entries, more than one DSQL transaction "
                          f"may write ({_mib(self.budget.max_bytes)} less room for the chunk checkpoint), so it "
                          "cannot be copied; shrink it on the source or move the column elsewhere")
                rejects.append(self._reject(st, chunk, line, "54000", reason))
            else:
                sized.append((line, nbytes))
        return [[line for line, _ in g] for g in
                self.write_budget.batches(sized, lambda item: (info.row_dsql_rows, item[1]), what="row")]

    def _write(self, st: Statements, chunk: Chunk, run_id: str, lines: Sequence[bytes], *,
               checkpoint: dict | None = None) -> None:
        """Write lines (and a checkpoint) in one retried target transaction.

        Raises:
            _RowRefused: the target refused the data.
        """
        method = self.settings.write_method
        parsed: list[list[str | None]] | None = None
        for _ in range(2):
            def txn(conn: psycopg.Connection, method: str = method) -> str:
                path = write_rows(conn, st, method, lines, parsed)
                if checkpoint is not None:
                    Control.checkpoint(conn, chunk, run_id, **checkpoint)
                return path

            try:
                run_with_retry(self.target, txn, policy=self.policy, counters=self.counters,
                               label=f"backfill of {chunk.table} chunk {chunk.chunk_id}")
                return
            except (psycopg.Error, LimitExceeded) as exc:
                state = getattr(exc, "sqlstate", None)
                if state == "23505" and method in ("auto", "copy"):
                    # A key arrived after the empty-range check: upsert instead of COPY.
                    method = "unnest"
                    parsed = [copy_fields(line) for line in lines]
                    continue
                refusal = _refusal(exc)
                if refusal is None:
                    raise
                raise refusal from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_or_isolate(self, st: Statements, chunk: Chunk, run_id: str, lines: Sequence[bytes],
                          rejects: list[Reject]) -> int:
        """Write ``lines``; on a refusal bisect until the refused rows are alone. Returns rows written."""
        try:
            self._write(st, chunk, run_id, lines)
            return len(lines)
        except _RowRefused as refusal:
            if len(lines) == 1:
                rejects.append(self._reject(st, chunk, lines[0], refusal.sqlstate, refusal.reason))
                log.debug("%s: row %s refused by the target (%s %s)", chunk.table,
                         rejects[-1].key, refusal.sqlstate, refusal.reason)
                return 0
        mid = len(lines) // 2
        return (self._write_or_isolate(st, chunk, run_id, lines[:mid], rejects)
                + self._write_or_isolate(st, chunk, run_id, lines[mid:], rejects))

    def _reject(self, st: Statements, chunk: Chunk, line: bytes, sqlstate: str | None, reason: str) -> Reject:
        data = line.decode("utf-8", "replace")
        return Reject(chunk.table, line_key(line, st.info.key_positions), sqlstate, reason, data, chunk.chunk_id)

    def _save_rejects(self, chunk: Chunk, run_id: str, rejects: list[Reject], *, checkpoint: dict) -> None:
        """Record rejects in budget-sized transactions; the checkpoint rides with the last one."""
        batches = list(self.write_budget.batches(rejects, Control.reject_cost, what="reject"))
        if not batches:
            self._checkpoint_only(chunk, run_id, **checkpoint)
            return
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1

            def txn(conn: psycopg.Connection, items=batch.items, last=last) -> None:
                self.control.write_rejects(conn, items, run_id)
                if last:
                    Control.checkpoint(conn, chunk, run_id, **checkpoint)

            run_with_retry(self.target, txn, policy=self.policy, counters=self.counters,
                           label=f"rejects of {chunk.table} chunk {chunk.chunk_id}")

    def _checkpoint_only(self, chunk: Chunk, run_id: str, *, last_key: Key | None, rows: int, rejected: int,
                         done: bool, t0: float | None = None, duration_ms: int | None = None) -> None:
        if duration_ms is None and t0 is not None:
            duration_ms = int((time.monotonic() - t0) * 1000)
        run_with_retry(self.target, lambda c: Control.checkpoint(
            c, chunk, run_id, last_key=last_key, rows=rows, rejected=rejected, done=done, duration_ms=duration_ms),
            policy=self.policy, counters=self.counters, label=f"checkpoint of {chunk.table} chunk {chunk.chunk_id}")
