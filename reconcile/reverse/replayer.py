"""Reverse replay: DSQL's CDC stream (Kinesis) → the old Aurora PostgreSQL source, exactly once in effect.

What DSQL gives (user guide, "Change data capture streams", "Understanding CDC records"): one record per
row's *net* change per transaction, at least once, in no guaranteed order, spread over every shard by a
random partition key, each carrying its transaction's ``txId`` and commit time ``source.ts_ns``; records
over the size limit arrive as a main record and fragments. There is **no** end-of-transaction marker and
no count of a transaction's records.

One round (:meth:`ReverseReplayer._round`):

1. read every shard of the stream (``ListShards``: split and merged shards included; closed parents and
   their children alike, since delivery is unordered anyway) from its checkpoint on;
2. reassemble fragments (:class:`~reconcile.reverse.records.Reassembler`, CRC32C checked); pass over
   records committed before the stream's ``start_ts_ns`` (the forward replay's own writes), records of
   tables outside ``[[tables]]`` and duplicates of chunks already applied; buffer the rest by
   ``(source.ts_ns, txId)``;
3. apply the *ready* transactions in commit-time order, each whole, several per source transaction
   (``group_txns``), through the replication origin, with ``session_replication_role = replica``;
4. in that same source transaction: the per-key versions, the shard checkpoints and the stream row.

When is a transaction complete enough to apply? Nothing in the stream says so. A transaction committed
at ``c`` is applied once the *frontier* has passed ``c + settle``: the frontier is the minimum over the
open shards of how far each has been read, either the newest commit time seen on it or, when a read
reached the shard's tip (``MillisBehindLatest = 0``), the wall-clock time that read started. DSQL
publishes sequentially, in approximate commit order, within seconds (``BehindSourceLag``): with
``settle`` above that lag every record of the transaction is in a shard already read. Transactions are
applied strictly in ``(ts_ns, txId)`` order; one still waiting for a fragment holds back the younger ones.

Why nothing is lost and nothing is applied twice, whatever the duplication, the order or a kill -9:

* **No loss.** A shard's checkpoint only moves past a record once the record is *done*: its change
  committed on the source (with the checkpoint, in the same transaction), or found needless (before
  ``start_ts_ns``, another table, an already-applied chunk). Records read but not done are only in
  memory; a killed run forgets them and the rerun reads them again from the checkpoint. A record that
  arrives *after* its transaction was applied (later than ``settle``: DSQL promises no bound) is still
  applied, as its own source transaction, under the same key guard: the row converges; only the
  transaction's atomicity on the source was broken for that moment, counted as ``late_changes``.
* **Nothing twice.** Every row carries a version (``reconcile_reverse.versions``: the ``ts_ns`` of the
  change last applied to that primary key; a delete leaves a tombstone with its ``ts_ns``). A change is
  written only when its ``ts_ns`` is newer than the key's version, and the version moves in the same
  source transaction. A duplicate (same ``ts_ns`` and key, DSQL's own definition), a re-read after a
  kill, or an older image arriving after a newer one (unordered delivery) is therefore never written;
  a late insert cannot resurrect a deleted row. Per key, DSQL's commit times follow the commit order
  (a writer of a row committed before a later writer of it could start, under snapshot isolation).
* **No loop.** Every reverse-applied transaction carries the replication origin ``origin_name``, and the
  forward replay decodes its slot with ``origin 'none'`` (:mod:`reconcile.replay.source`), so none of
  them flows back to DSQL. ``session_replication_role = replica`` keeps the source's ordinary triggers
  (the demo ledger's balance trigger) from firing: DSQL's rows already hold the balances the application
  computed, so applying them *and* the trigger would double every balance change; foreign keys are not
  checked either, which an unordered stream needs (the target enforced them when the rows were written).
  Both need a superuser-like role on the source (Aurora: ``rds_superuser``); one session at a time can
  hold the origin, so a second replayer fails fast instead of applying alongside the first.

Sequences: a source column fed by a sequence (serial, identity, ``DEFAULT nextval``) falls behind while
the application writes on DSQL; the apply moves the sequence past every value it writes, so the
application can write on the source again after a rollback.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from reconcile.config import TableSpec, redact
from reconcile.errors import ReconcileError
from reconcile.occ import DEFAULT_POLICY, Reconnector, RetryCounters, RetryPolicy, run_with_retry
from reconcile.replay.apply import ApplyRefused
from reconcile.reverse import decode, source_state
from reconcile.reverse.apply import SourceWriter
from reconcile.reverse.control import RUN_KIND, ReverseControl
from reconcile.reverse.records import Change, Item, Reassembler, RecordError, loads
from reconcile.reverse.errors import ReverseError, ReverseNotReady
from reconcile.reverse.settings import ReverseSettings

log = logging.getLogger("reconcile.reverse")

ConnectionFactory = Callable[[], psycopg.Connection]
Fault = Callable[[str], None]




@dataclasses.dataclass
class ReverseResult:
    """What one :meth:`ReverseReplayer.run` did (JSON-able through :meth:`to_dict`)."""

    run_id: str | None = None
    status: str = "done"
    stream: str = ""
    txns_applied: int = 0
    changes_applied: int = 0
    changes_stale: int = 0
    """Changes not written because the key already held a newer (or the same) version: duplicates,
    re-reads after a restart, older images arriving late."""
    changes_late: int = 0
    """Changes written after a newer transaction had been applied (arrived later than ``settle_ms``)."""
    records_read: int = 0
    records_ignored: int = 0
    source_commits: int = 0
    rows_written: int = 0
    shards: int = 0
    lag_seconds_p50: float | None = None
    lag_seconds_p99: float | None = None
    caught_up: bool = False
    applied_ts_ns: int = 0
    duration_seconds: float = 0.0
    apply_rate_changes_per_second: float = 0.0
    dead_letters_open: int = 0
    message: str | None = None
    dead_letter_id: str | None = None

    @property
    def exit_code(self) -> int:
        return {"done": 0, "stopped": 1}.get(self.status, 2)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def text(self) -> str:
        lag = (f"lag p50 {self.lag_seconds_p50:.3f} s, p99 {self.lag_seconds_p99:.3f} s"
               if self.lag_seconds_p50 is not None else "no lag measured")
        line = (f"reverse replay {self.status}: {self.txns_applied:,} DSQL transactions ({self.changes_applied:,} "
                f"changes) in {self.source_commits:,} source commits over {self.duration_seconds:.1f} s "
                f"({self.apply_rate_changes_per_second:,.0f} changes/s) from {self.records_read:,} records on "
                f"{self.shards} shards; {self.changes_stale:,} stale or duplicate, {self.changes_late:,} late; {lag}; "
                f"caught up: {'yes' if self.caught_up else 'no'}; {self.dead_letters_open} open dead letter(s)")
        return line + (f"\n{self.message}" if self.message else "")


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 6)


class _Shard:
    """Read position and not-yet-done records of one shard."""

    def __init__(self, shard_id: str, checkpoint: int | None, ending: int | None) -> None:
        self.id = shard_id
        self.checkpoint = checkpoint
        self.saved = checkpoint
        self.ending = ending
        self.iterator: str | None = None
        self.last_read = checkpoint
        self.entries: collections.deque[list] = collections.deque()  # [seq, done]
        self.index: dict[int, list] = {}
        self.max_ts = 0
        self.drained_at = 0
        self.at_end = False
        self.finished = False

    @property
    def frontier(self) -> int:
        return max(self.max_ts, self.drained_at)

    def add(self, seq: int) -> None:
        entry = [seq, False]
        self.entries.append(entry)
        self.index[seq] = entry

    def mark(self, seq: int) -> None:
        entry = self.index.get(seq)
        if entry is not None:
            entry[1] = True

    def preview(self, extra: set[int]) -> int | None:
        """The checkpoint once ``extra`` records are done as well (nothing changes)."""
        cp = self.checkpoint
        for seq, done in self.entries:
            if not (done or seq in extra):
                break
            cp = seq
        return cp

    def settle(self) -> None:
        while self.entries and self.entries[0][1]:
            seq, _ = self.entries.popleft()
            del self.index[seq]
            self.checkpoint = seq


@dataclasses.dataclass
class _Txn:
    ts_ns: int
    tx_id: str
    changes: list[Change]


class ReverseReplayer:
    """One reverse replay session: a Kinesis stream → the source (tests use it directly)."""

    def __init__(self, *, source: ConnectionFactory, kinesis: Any, tables: Sequence[TableSpec],
                 settings: ReverseSettings | None = None, target: ConnectionFactory | None = None,
                 policy: RetryPolicy = DEFAULT_POLICY, clock: Callable[[], int] = time.time_ns,
                 fault: Fault | None = None, secrets: Sequence[str] = ()) -> None:
        self.settings = settings or ReverseSettings()
        self.kinesis = kinesis
        self.tables = list(tables)
        self.specs = {t.name: t for t in self.tables}
        self.policy = policy
        self.clock = clock
        self.fault = fault
        self.secrets = tuple(secrets)
        self.counters = RetryCounters()
        self._source_factory = source
        self._source = Reconnector(self._prepared_source, max_age=None)
        self.control = ReverseControl(Reconnector(target), policy=policy) if target is not None else None
        self.shards: dict[str, _Shard] = {}
        self.reassembler = Reassembler()
        self.txns: dict[tuple[int, str], _Txn] = {}
        self.done_chunks: set[str] = set()
        self.assembled: dict[str, Change] = {}
        """Reassembled changes not applied yet, by chunk id (late copies of their pieces join them)."""
        self.skip_tx: set[str] = set()
        self._lags: list[float] = []
        self._txn_budget: int | None = None
        self._dirty = False
        self._progress = False
        self._passed_chunks: list[tuple[str, int]] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="reconcile-reverse-read")

    @classmethod
    def from_config(cls, config: Any, *, kinesis: Any = None) -> ReverseReplayer:
        from reconcile.connections import connect
        from reconcile.occ import policy_from
        from reconcile.reverse.stream import kinesis_client

        s: ReverseSettings = config.stage("reverse")
        return cls(source=lambda: connect(config.source), target=lambda: connect(config.target),
                   kinesis=kinesis or kinesis_client(s), tables=config.tables, settings=s,
                   policy=policy_from(config), secrets=config.secrets())

    # --- source session ----------------------------------------------------------------------------

    def _prepared_source(self) -> psycopg.Connection:
        conn = self._source_factory()
        conn.autocommit = True
        try:
            conn.execute("SET session_replication_role = replica")
            conn.execute("SELECT pg_replication_origin_session_setup(%s)", (self.settings.origin_name,))
        except pg_errors.ObjectInUse:
            conn.close()
            raise ReverseError(f"Replication origin {self.settings.origin_name} is in use by another session: "
                               "another reverse replayer is running on this source; stop it first.") from None
        except pg_errors.UndefinedObject:
            conn.close()
            raise ReverseNotReady(f"The source has no replication origin {self.settings.origin_name}: run "
                                  "`reconcile reverse init` first.") from None
        except pg_errors.InsufficientPrivilege as exc:
            conn.close()
            raise ReverseNotReady(f"The source user may not act as a replication origin or set "
                                  f"session_replication_role ({exc.diag.message_primary}): use a superuser-like role "
                                  "(on Aurora, a member of rds_superuser).") from None
        return conn

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._source.close()
        if self.control is not None:
            self.control.target.close()

    def _redact(self, text: str) -> str:
        return redact(text, self.secrets)

    # --- the run -----------------------------------------------------------------------------------

    def run(self, *, duration: float | None = None, until_caught_up: bool = True,
            stop: threading.Event | None = None, max_rounds: int | None = None,
            max_txns: int | None = None) -> ReverseResult:
        """Replay until caught up (default), for ``duration`` seconds, or until ``stop`` is set.

        ``max_txns`` applies at most that many DSQL transactions (in commit-time order), then ends the run;
        the ones read but not applied stay behind the shard checkpoints, so the next run reads them again."""
        s = self.settings
        result = ReverseResult(stream=s.stream_name)
        self.result = result
        self._txn_budget = max_txns
        start = time.monotonic()
        stop = stop or threading.Event()
        runs = None
        if self.control is not None:
            from reconcile.backfill.checkpoints import Control

            runs = Control(self.control.target, policy=self.policy)
            result.run_id = runs.start_run({"settings": dataclasses.asdict(s)}, kind=RUN_KIND)
            for d in self.control.dead_letters(s.stream_name):
                if d.resolution == "skip":
                    self.skip_tx.add(d.tx_id)
        try:
            conn = self._source.get()
            state = source_state.read_stream(conn, s.stream_name) if source_state.exists(conn) else None
            if state is None:
                raise ReverseNotReady(f"The source has no reverse-replay state for stream {s.stream_name}: run "
                                      "`reconcile reverse init` first.")
            self.state = state
            self._load_tables(conn)
            self._load_shards(conn)
            rounds = 0
            while True:
                caught_up = self._round()
                rounds += 1
                result.caught_up = caught_up
                if stop.is_set() or (max_rounds is not None and rounds >= max_rounds):
                    break
                if max_txns is not None and result.txns_applied >= max_txns:
                    break
                if duration is not None and time.monotonic() - start >= duration:
                    break
                if caught_up and until_caught_up and duration is None:
                    break
                if caught_up or not self._progress:
                    stop.wait(s.poll_interval)
        except _Halt as halt:
            result.status, result.message, result.dead_letter_id = "stopped", halt.message, halt.dead_letter_id
        except ReconcileError as exc:
            result.status, result.message = "error", self._redact(str(exc))
            self._finish(result, start, runs)
            raise
        except psycopg.Error as exc:
            result.status = "error"
            result.message = self._redact(f"The reverse replay failed on a database error: "
                                          f"{exc.diag.message_primary or type(exc).__name__}")
            self._finish(result, start, runs)
            raise ReverseError(result.message) from None
        self._finish(result, start, runs)
        return result

    def _finish(self, result: ReverseResult, start: float, runs: Any) -> None:
        result.duration_seconds = round(time.monotonic() - start, 3)
        result.lag_seconds_p50 = percentile(self._lags, 0.50)
        result.lag_seconds_p99 = percentile(self._lags, 0.99)
        result.shards = len(self.shards)
        if result.duration_seconds > 0:
            result.apply_rate_changes_per_second = round(result.changes_applied / result.duration_seconds, 1)
        if self.control is not None:
            try:
                result.dead_letters_open = self.control.count_open(self.settings.stream_name)
                if runs is not None and result.run_id:
                    runs.finish_run(result.run_id, result.status, result.to_dict())
            except Exception as exc:  # bookkeeping must not hide the run's own outcome
                log.warning("could not record the end of reverse run %s: %s", result.run_id, self._redact(str(exc)))

    # --- set-up ------------------------------------------------------------------------------------

    def _load_tables(self, conn: psycopg.Connection) -> None:
        self.writer = SourceWriter.inspect(conn, self.tables)

    def _list_shards(self) -> list[dict]:
        shards, token = [], None
        while True:
            kw = {"NextToken": token} if token else {"StreamName": self.settings.stream_name}
            resp = self.kinesis.list_shards(**kw)
            shards += resp["Shards"]
            token = resp.get("NextToken")
            if not token:
                return shards

    def _load_shards(self, conn: psycopg.Connection) -> None:
        saved = source_state.read_checkpoints(conn, self.settings.stream_name)
        try:
            listed = self._list_shards()
        except self.kinesis.exceptions.ResourceNotFoundException:
            raise ReverseNotReady(f"Kinesis stream {self.settings.stream_name} does not exist: create it and DSQL's "
                                  "CDC stream into it, or fix reverse.stream_name.") from None
        for sh in listed:
            sid = sh["ShardId"]
            end = sh["SequenceNumberRange"].get("EndingSequenceNumber")
            if sid in self.shards:  # closed since (split or merge): it ends there
                if end is not None and self.shards[sid].ending is None:
                    self.shards[sid].ending = int(end)
                    self.shards[sid].iterator = None
                continue
            cp, finished = saved.get(sid, (None, False))
            shard = _Shard(sid, cp, int(end) if end is not None else None)
            shard.finished = finished
            self.shards[sid] = shard

    def _iterator(self, shard: _Shard) -> str:
        args: dict[str, Any] = {"StreamName": self.settings.stream_name, "ShardId": shard.id}
        if shard.last_read is None:
            args["ShardIteratorType"] = "TRIM_HORIZON"
        else:
            args.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=str(shard.last_read))
        return self.kinesis.get_shard_iterator(**args)["ShardIterator"]

    # --- one round ---------------------------------------------------------------------------------

    def _round(self) -> bool:
        """Read every shard once, apply what is ready; True when caught up (nothing read is waiting)."""
        self._progress = False
        self._load_shards(self._source.get())
        all_drained = True
        new_fragments: set[str] = set()
        live = [sh for sh in self.shards.values() if not (sh.finished or sh.at_end)]
        # GetRecords on every shard at once (network waits overlap); records are then taken one shard at a time.
        fetched = list(self._pool.map(self._fetch, live)) if len(live) > 1 else [self._fetch(sh) for sh in live]
        for shard, (started, resp) in zip(live, fetched):
            if not self._read(shard, started, resp, new_fragments):
                all_drained = False
        if new_fragments:
            self._drop_done_chunks(new_fragments)
        self._apply_ready()
        self._save_marks()
        waiting = bool(self.txns) or bool(self.reassembler.pending_chunks())
        caught_up = all_drained and not waiting
        if caught_up:
            frontier = self._frontier()
            if frontier != math.inf and frontier > (self.state.caught_up_ns or 0):
                self._write_stream(caught_up_ns=int(frontier))
        return caught_up

    def _fetch(self, shard: _Shard) -> tuple[int, dict]:
        """One GetRecords call on a shard: (wall time it started, response)."""
        if shard.iterator is None:
            shard.iterator = self._iterator(shard)
        started = self.clock()
        try:
            resp = self.kinesis.get_records(ShardIterator=shard.iterator, Limit=self.settings.read_limit)
        except self.kinesis.exceptions.ExpiredIteratorException:
            shard.iterator = self._iterator(shard)
            resp = self.kinesis.get_records(ShardIterator=shard.iterator, Limit=self.settings.read_limit)
        return started, resp

    def _read(self, shard: _Shard, started: int, resp: dict, new_fragments: set[str]) -> bool:
        """Take one GetRecords response of a shard; True when it reached the shard's tip."""
        records = resp["Records"]
        shard.iterator = resp.get("NextShardIterator")
        if records:
            self._progress = True
        for rec in records:
            seq = int(rec["SequenceNumber"])
            shard.add(seq)
            shard.last_read = seq
            self.result.records_read += 1
            self._take(rec["Data"], Item(shard.id, seq), shard, new_fragments)
        if records and self.fault is not None:
            self.fault("read")
        ended = shard.iterator is None or (shard.ending is not None and shard.last_read is not None
                                           and shard.last_read >= shard.ending)
        if ended:
            shard.at_end = True
            self._dirty = True
            return True
        tip = len(records) < self.settings.read_limit and not resp.get("MillisBehindLatest")
        if tip:
            shard.drained_at = max(shard.drained_at, started)
        return tip

    def _take(self, data: bytes, item: Item, shard: _Shard, new_fragments: set[str]) -> None:
        try:
            doc = loads(data)
            kind = doc.get("type", "full")
            if kind == "fragment":
                ids = [str(doc.get("chunk_id"))]
            else:
                ts = int((doc.get("source") or {}).get("ts_ns") or 0)
                shard.max_ts = max(shard.max_ts, ts)
                ids = [str(v["chunk_id"]) for v in (doc.get("chunked") or {}).values()]
            if ids:
                # A copy of a piece of an image already reassembled: done with (or as) that change.
                if all(c in self.done_chunks for c in ids):
                    self._done([item])
                    return
                owner = next((self.assembled[c] for c in ids if c in self.assembled), None)
                if owner is not None:
                    owner.items.append(item)
                    return
                new_fragments.update(ids)  # applied before a restart? asked of the source once per round
            changes = self.reassembler.add(doc, item)
        except (RecordError, KeyError, TypeError, ValueError) as exc:
            self._unreadable(item, data, str(exc))
            return
        for ch in changes:
            self._buffer(ch)

    def _buffer(self, ch: Change) -> None:
        for cid in ch.chunk_ids:
            self.assembled[cid] = ch
        if ch.ts_ns < self.state.start_ts_ns or ch.qualified not in self.specs or ch.tx_id in self.skip_tx:
            self.result.records_ignored += len(ch.items)
            self._done(ch.items)
            self._chunks_applied(ch)
            self._passed_chunks += [(cid, ch.ts_ns) for cid in ch.chunk_ids]
            return
        key = (ch.ts_ns, ch.tx_id)
        txn = self.txns.get(key)
        if txn is None:
            txn = self.txns[key] = _Txn(ch.ts_ns, ch.tx_id, [])
        txn.changes.append(ch)

    def _chunks_applied(self, ch: Change) -> None:
        for cid in ch.chunk_ids:
            self.done_chunks.add(cid)
            self.assembled.pop(cid, None)

    def _done(self, items: Sequence[Item]) -> None:
        for it in items:
            self.shards[it.shard].mark(it.seq)
        self._dirty = True

    def _drop_done_chunks(self, chunk_ids: set[str]) -> None:
        done = source_state.chunks_done(self._source.get(), sorted(chunk_ids))
        for cid in done:
            self.done_chunks.add(cid)
            self._done(self.reassembler.forget(cid))

    def _unreadable(self, item: Item, data: bytes, why: str) -> None:
        """A Kinesis record that is no DSQL CDC record: dead-lettered (never silently dropped), then passed."""
        reason = self._redact(f"Kinesis record {item.seq} on shard {item.shard} is not a readable DSQL CDC record "
                              f"({why}); it was passed over: inspect it and skip this dead letter with a reason.")
        log.warning("%s", reason)
        if self.control is not None:
            text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
            self.control.record(self.settings.stream_name, f"kinesis:{item.shard}:{item.seq}", 0,
                                [{"table": "?", "data": text}], reason=reason, sqlstate=None,
                                run_id=self.result.run_id)
        self._done([item])

    # --- readiness and apply -----------------------------------------------------------------------

    def _frontier(self) -> float:
        open_ = [s.frontier for s in self.shards.values() if not (s.finished or s.at_end)]
        return min(open_) if open_ else math.inf

    def _apply_ready(self) -> None:
        frontier = self._frontier()
        settle = self.settings.settle_ms * 1_000_000
        blocked = min((int(doc["source"]["ts_ns"]) for doc, _ in self.reassembler._mains.values()),
                      default=math.inf)
        ready: list[_Txn] = []
        for key in sorted(self.txns):
            if key[0] + settle > frontier or key[0] >= blocked:
                break
            ready.append(self.txns[key])
        if self._txn_budget is not None:  # run(max_txns=...): the rest waits for the next run
            ready = ready[:max(0, self._txn_budget - self.result.txns_applied)]
        group: list[_Txn] = []
        changes = 0
        for txn in ready:
            if group and (len(group) >= self.settings.group_txns
                          or changes + len(txn.changes) > self.settings.group_changes):
                self._apply_group(group)
                group, changes = [], 0
            group.append(txn)
            changes += len(txn.changes)
        if group:
            self._apply_group(group)

    def _apply_group(self, group: list[_Txn]) -> None:
        try:
            self._commit(group)
        except (ApplyRefused, decode.DecodeRefused, psycopg.Error) as exc:
            if isinstance(exc, psycopg.Error) and not isinstance(exc, (pg_errors.DataError, pg_errors.IntegrityError,
                                                                       pg_errors.ProgrammingError)):
                raise
            if len(group) > 1:
                for txn in group:
                    self._apply_group([txn])
                return
            self._dead_letter(group[0], exc)

    def _commit(self, group: list[_Txn]) -> None:
        s = self.settings
        changes = [c for t in group for c in t.changes]
        items = {it for c in changes for it in c.items}
        by_shard: dict[str, set[int]] = {}
        for it in items:
            by_shard.setdefault(it.shard, set()).add(it.seq)
        applied_before = self.state.applied_ts_ns
        fault = self.fault

        marks = self._marks(by_shard)
        passed = list(self._passed_chunks)

        def work(conn: psycopg.Connection) -> dict[str, int]:
            stats = self.writer.write(conn, changes, applied_before)
            source_state.record_chunks(conn, passed)
            if fault is not None:
                fault("applied")
            source_state.write_checkpoints(conn, s.stream_name, marks)
            conn.execute(sql.SQL("""
UPDATE {} SET applied_ts_ns = GREATEST(applied_ts_ns, %s), applied_txns = applied_txns + %s,
    applied_changes = applied_changes + %s, stale_changes = stale_changes + %s, late_changes = late_changes + %s,
    updated_at = now() WHERE stream = %s""").format(source_state.ident("streams")),
                         (group[-1].ts_ns, len(group), stats["applied"], stats["stale"], stats["late"], s.stream_name))
            if fault is not None:
                fault("before-commit")
            return stats

        stats = run_with_retry(self._source, work, policy=self.policy, counters=self.counters,
                               label=f"reverse apply of {len(group)} DSQL transaction(s)")
        now = self.clock()
        self._passed_chunks = self._passed_chunks[len(passed):]
        for t in group:
            del self.txns[(t.ts_ns, t.tx_id)]
            self._lags.append((now - t.ts_ns) / 1e9)
        for c in changes:
            self._chunks_applied(c)
        self._done(list({it for c in changes for it in c.items}))
        for sid, (cp, fin) in marks.items():
            self.shards[sid].saved, self.shards[sid].finished = cp, fin
        for sh in self.shards.values():
            sh.settle()
        self.state = dataclasses.replace(self.state, applied_ts_ns=max(applied_before, group[-1].ts_ns))
        self._progress = True
        r = self.result
        r.txns_applied += len(group)
        r.changes_applied += stats["applied"]
        r.changes_stale += stats["stale"]
        r.changes_late += stats["late"]
        r.rows_written += stats["rows"]
        r.source_commits += 1
        r.applied_ts_ns = self.state.applied_ts_ns

    def _marks(self, extra: dict[str, set[int]]) -> dict[str, tuple[int | None, bool]]:
        out = {}
        for sid, sh in self.shards.items():
            cp = sh.preview(extra.get(sid, set()))
            finished = sh.at_end and all(done or seq in extra.get(sid, ()) for seq, done in sh.entries)
            if cp != sh.saved or finished != sh.finished:
                out[sid] = (cp, finished)
        return out

    def _save_marks(self) -> None:
        """Persist checkpoints moved by records found needless (no rows to apply with them)."""
        if not getattr(self, "_dirty", False):
            return
        for sh in self.shards.values():
            sh.settle()
        marks = self._marks({})
        passed = self._passed_chunks
        if marks:
            def save(conn: psycopg.Connection) -> None:
                source_state.write_checkpoints(conn, self.settings.stream_name, marks)
                source_state.record_chunks(conn, passed)  # pieces of them read again later are known as done

            run_with_retry(self._source, save, policy=self.policy, counters=self.counters, label="reverse checkpoints")
            self._passed_chunks = []
            for sid, (cp, fin) in marks.items():
                self.shards[sid].saved = cp
                self.shards[sid].finished = fin
        self._dirty = False

    def _write_stream(self, **values: int) -> None:
        q = sql.SQL("UPDATE {} SET caught_up_ns = GREATEST(coalesce(caught_up_ns, 0), %s), updated_at = now() "
                    "WHERE stream = %s").format(source_state.ident("streams"))
        run_with_retry(self._source, lambda c: c.execute(q, (values["caught_up_ns"], self.settings.stream_name)),
                       policy=self.policy, counters=self.counters, label="reverse caught-up mark")
        self.state = dataclasses.replace(self.state, caught_up_ns=values["caught_up_ns"])

    def _dead_letter(self, txn: _Txn, exc: BaseException) -> None:
        sqlstate = getattr(exc, "sqlstate", None)
        detail = exc.reason if isinstance(exc, ApplyRefused) else (
            exc.diag.message_primary if isinstance(exc, psycopg.Error) and exc.diag.message_primary else str(exc))
        reason = self._redact(
            f"The source refused DSQL transaction {txn.tx_id} (committed at ts_ns {txn.ts_ns}, "
            f"{len(txn.changes)} changes) with {'SQLSTATE ' + sqlstate + ': ' if sqlstate else ''}{detail}; the "
            "reverse replay stopped before it (a ledger needs its order): fix the cause and rerun, or skip it with "
            "`reconcile reverse dead-letters skip ID --reason ...`.")
        dl_id = None
        if self.control is not None:
            dl_id = self.control.record(self.settings.stream_name, txn.tx_id, txn.ts_ns,
                                        [c.payload() for c in txn.changes], reason=reason, sqlstate=sqlstate,
                                        run_id=self.result.run_id)
        raise _Halt(reason + (f" (dead letter {dl_id})" if dl_id else ""), dl_id)


class _Halt(Exception):
    def __init__(self, message: str, dead_letter_id: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.dead_letter_id = dead_letter_id
