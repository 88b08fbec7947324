"""Changed-key tracking: which keys the replay applied, per table and window, for the incremental diff.

Every apply transaction also upserts, per table it touched, the row of the table's current *window*
in ``reconcile.change_windows`` (same target transaction as the changes and the watermark, so the
windows hold exactly the changes at or below the watermark, across any crash). A window spans the
source commits of ``[replay] track_window_seconds`` of source time; its ``keys`` are bounded by
``[replay] track_bytes`` of JSON:

* a single integer or text key (C order: Python's order of ``int`` and ``str`` is the order the diff's
  ``COLLATE "C"`` range queries use) is kept as sorted closed ranges ``[lo, hi]``: a lone key is
  ``[k, k]``, consecutive integers (appends) merge into one range, and past the byte cap the ranges
  separated by the smallest gaps are merged (*coarsened*: the window then covers a few keys that did
  not change, never fewer than did);
* any other key (composite, uuid, dates, ...) is kept as exact keys (text forms) while they fit; past
  the cap the window becomes ``all``: the whole table changed in it, and the next diff verifies the
  table whole (said in its coverage).

Keys of every source transaction of a group are recorded, the ones skipped by a dead-letter decision
included (their rows are the likeliest to differ), and both keys of an update that changed its key.

Bounded: at most ``track_max_windows`` windows per table are kept unverified (past that the current
window keeps growing, coarsened); the diff deletes the windows it has verified. ``change_tracking``
holds, per slot, the LSN after which every applied source transaction is tracked: a replay with
tracking off deletes it, so the diff never mistakes a gap for "nothing changed".
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from reconcile.control.migrations import ident
from reconcile.replay import pgoutput as po
from reconcile.replay.source import SourceTxn

INT_TYPES = frozenset({"smallint", "integer", "bigint"})
TEXT_TYPES = frozenset({"text", "character varying"})
ROW_OVERHEAD = 256
"""Bytes priced for one window row besides its keys (the other columns, the index entry)."""


def key_order(types: Sequence[str]) -> str | None:
    """``"int"`` or ``"str"`` when a key's text forms can be ordered in Python as the diff orders them
    (a single integer, or text/varchar under ``COLLATE "C"``); None for every other key.

    >>> key_order(["bigint"]), key_order(["character varying"]), key_order(["uuid"]), key_order(["int", "text"])
    ('int', 'str', None, None)
    """
    if len(types) != 1:
        return None
    if types[0] in INT_TYPES:
        return "int"
    if types[0] in TEXT_TYPES:
        return "str"
    return None


def merge_ranges(ranges: Iterable[tuple[Any, Any]], order: str) -> list[tuple[Any, Any]]:
    """Sorted, disjoint closed ranges; integers that touch (``hi + 1 == lo``) merge.

    >>> merge_ranges([(5, 5), (1, 3), (4, 4), (9, 12), (10, 10)], "int")
    [(1, 5), (9, 12)]
    >>> merge_ranges([("b", "b"), ("a", "a"), ("a", "b")], "str")
    [('a', 'b')]
    """
    out: list[list[Any]] = []
    step = 1 if order == "int" else 0
    for lo, hi in sorted(ranges, key=lambda r: r[0]):
        if out and (lo <= out[-1][1] + step if step else lo <= out[-1][1]):
            if hi > out[-1][1]:
                out[-1][1] = hi
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def coarsen(ranges: list[tuple[Any, Any]], order: str, target: int) -> list[tuple[Any, Any]]:
    """At most ``target`` ranges covering ``ranges``: the ranges separated by the smallest gaps merge first
    (integers: the count of keys between them; text: the longest common prefix is the smallest gap).

    >>> coarsen([(1, 1), (3, 3), (100, 100), (102, 102)], "int", 2)
    [(1, 3), (100, 102)]
    >>> coarsen([("aa", "aa"), ("ab", "ab"), ("zz", "zz")], "str", 2)
    [('aa', 'ab'), ('zz', 'zz')]
    """
    target = max(1, target)
    if len(ranges) <= target:
        return list(ranges)
    if order == "int":
        gaps = [(ranges[i + 1][0] - ranges[i][1], i) for i in range(len(ranges) - 1)]
    else:
        gaps = [(-_common_prefix(ranges[i][1], ranges[i + 1][0]), i) for i in range(len(ranges) - 1)]
    gaps.sort()
    joined = {i for _, i in gaps[:len(ranges) - target]}
    out: list[tuple[Any, Any]] = []
    lo = ranges[0][0]
    for i, (_, hi) in enumerate(ranges):
        if i in joined:
            continue
        out.append((lo, hi))
        if i + 1 < len(ranges):
            lo = ranges[i + 1][0]
    return out


@dataclass
class Window:
    """The keys of one table applied in one window of source commits."""

    table: str
    window_no: int
    order: str | None
    """``int``/``str``: kept as ranges; None: exact keys."""
    first_lsn: int = 0
    last_lsn: int = 0
    first_ts: Any = None
    last_ts: Any = None
    changes: int = 0
    form: str = "ranges"
    """``ranges``, ``keys`` or ``all`` (see the module docstring)."""
    ranges: list[tuple[Any, Any]] = field(default_factory=list)
    keys: set[tuple[str, ...]] = field(default_factory=set)

    @classmethod
    def new(cls, table: str, window_no: int, order: str | None) -> Window:
        return cls(table, window_no, order, form="ranges" if order else "keys")

    @property
    def entries(self) -> int:
        return len(self.ranges) if self.form == "ranges" else len(self.keys) if self.form == "keys" else 0

    def encode(self) -> str:
        """The keys as JSON: ranges as ``[lo, hi]``, a lone key as itself (``[7, [10, 20]]``); exact keys as lists."""
        if self.form == "ranges":
            return json.dumps([lo if lo == hi else [lo, hi] for lo, hi in self.ranges], ensure_ascii=False,
                              separators=(",", ":"))
        if self.form == "keys":
            return json.dumps(sorted(list(k) for k in self.keys), ensure_ascii=False, separators=(",", ":"))
        return "[]"

    def size(self) -> int:
        return len(self.encode().encode())

    def merged(self, keys: Iterable[tuple[str, ...]]) -> Window:
        """A copy holding these keys too (not yet bounded: see :meth:`bound`)."""
        out = copy.copy(self)
        if self.form == "keys":
            out.keys = self.keys | set(keys)
        elif self.form == "ranges":
            conv = int if self.order == "int" else str
            out.ranges = merge_ranges(self.ranges + [(conv(k[0]), conv(k[0])) for k in keys], self.order)  # type: ignore[arg-type]
        return out

    def bound(self, cap: int) -> None:
        """Keep the encoded keys within ``cap`` bytes: coarsen ranges, or make an exact-key window ``all``."""
        size = self.size()
        if size <= cap:
            return
        if self.form == "keys":
            self.form, self.keys = "all", set()
            return
        while size > cap and len(self.ranges) > 1:
            self.ranges = coarsen(self.ranges, self.order, int(len(self.ranges) * cap / size * 0.8))  # type: ignore[arg-type]
            size = self.size()
        if size > cap:  # one range of two huge text keys: nothing smaller can say it
            self.form, self.ranges = "all", []

    def add(self, keys: Iterable[tuple[str, ...]], cap: int) -> None:
        """Fold keys (text forms) in, then keep the encoded keys within ``cap`` bytes."""
        if self.form == "all":
            return
        grown = self.merged(keys)
        grown.bound(cap)
        self.form, self.ranges, self.keys = grown.form, grown.ranges, grown.keys

    @staticmethod
    def decode(form: str, text: str, order: str | None) -> tuple[list[tuple[Any, Any]], set[tuple[str, ...]]]:
        data = json.loads(text or "[]")
        if form == "ranges":
            return [(r[0], r[1]) if isinstance(r, list) else (r, r) for r in data], set()
        if form == "keys":
            return [], {tuple(k) for k in data}
        return [], set()


def txn_keys(t: SourceTxn) -> dict[str, list[tuple[str, ...]]]:
    """Per table, the keys a source transaction changed (both keys of a key-changing update)."""
    out: dict[str, list[tuple[str, ...]]] = {}
    for c in t.changes:
        keys = out.setdefault(c.table, [])
        keys.append(c.key)
        if c.old_key is not None:
            keys.append(c.old_key)
    return out


_UPSERT = sql.SQL("""
INSERT INTO {t} (slot_name, table_name, window_no, first_lsn, last_lsn, first_commit_ts, last_commit_ts, changes,
                 form, entries, keys, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
ON CONFLICT (slot_name, table_name, window_no) DO UPDATE SET last_lsn = EXCLUDED.last_lsn,
    last_commit_ts = EXCLUDED.last_commit_ts, changes = EXCLUDED.changes, form = EXCLUDED.form,
    entries = EXCLUDED.entries, keys = EXCLUDED.keys, updated_at = now()""").format(t=ident("change_windows"))


class ChangeTracker:
    """The replay's open window per table; :meth:`pending` folds a group in, :meth:`write` stores it in the
    group's apply transaction, :meth:`commit` adopts it once that transaction committed."""

    def __init__(self, slot_name: str, key_types: dict[str, Sequence[str]], *, enabled: bool = True,
                 cap_bytes: int = 65536, window_seconds: float = 300.0, max_windows: int = 288) -> None:
        self.slot_name = slot_name
        self.enabled = enabled
        self.cap = cap_bytes
        self.window_micros = int(window_seconds * 1_000_000)
        self.max_windows = max_windows
        self.orders = {t: key_order(list(types)) for t, types in key_types.items()}
        self.current: dict[str, Window] = {}
        self.stored: dict[str, int] = {}
        """Windows stored per table (as far as this replayer knows: the diff deletes verified ones)."""
        self.next_no: dict[str, int] = {}

    @property
    def reserve_rows(self) -> int:
        """Control rows an apply transaction may add: a closed and an open window per table."""
        return 2 * len(self.orders) if self.enabled else 0

    @property
    def reserve_bytes(self) -> int:
        return 2 * len(self.orders) * (self.cap + ROW_OVERHEAD) if self.enabled else 0

    # --- state on the target ------------------------------------------------------------------------

    def load(self, conn: psycopg.Connection, applied_lsn: int) -> None:
        """Read back each table's latest window and record (or, tracking off, remove) ``tracked_from``."""
        if not self.enabled:
            conn.execute(sql.SQL("DELETE FROM {} WHERE slot_name = %s").format(ident("change_tracking")),
                         (self.slot_name,))
            return
        conn.execute(sql.SQL("INSERT INTO {} (slot_name, tracked_from) VALUES (%s, %s) "
                             "ON CONFLICT (slot_name) DO NOTHING").format(ident("change_tracking")),
                     (self.slot_name, applied_lsn))
        rows = conn.execute(sql.SQL("SELECT table_name, count(*), max(window_no) FROM {} WHERE slot_name = %s "
                                    "GROUP BY table_name").format(ident("change_windows")),
                            (self.slot_name,)).fetchall()
        self.current, self.stored, self.next_no = {}, {}, {}
        for table, count, top in rows:
            self.stored[table] = int(count)
            self.next_no[table] = int(top) + 1
            if table not in self.orders:
                continue
            row = conn.execute(sql.SQL("SELECT first_lsn, last_lsn, first_commit_ts, last_commit_ts, changes, form, "
                                       "keys FROM {} WHERE slot_name = %s AND table_name = %s AND window_no = %s")
                               .format(ident("change_windows")), (self.slot_name, table, top)).fetchone()
            order = self.orders[table]
            ranges, keys = Window.decode(row[5], row[6], order)
            self.current[table] = Window(table, int(top), order, int(row[0]), int(row[1]), row[2], row[3],
                                         int(row[4]), row[5], ranges, keys)

    def refresh_count(self, conn: psycopg.Connection, table: str) -> int:
        (n,) = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE slot_name = %s AND table_name = %s").format(
            ident("change_windows")), (self.slot_name, table)).fetchone()
        self.stored[table] = int(n)
        return int(n)

    # --- a group ------------------------------------------------------------------------------------

    def pending(self, txns: Sequence[SourceTxn], count: Any = None) -> dict[tuple[str, int], Window]:
        """The windows a group of source transactions changes (new values; nothing is adopted yet).

        Args:
            txns: the group, in commit order.
            count: ``count(table) -> stored windows`` re-read from the target when the cap is reached
                (the diff deletes verified windows); default: this tracker's own count.
        """
        if not self.enabled:
            return {}
        out: dict[tuple[str, int], Window] = {}
        cur: dict[str, Window] = {}
        todo: dict[str, list[tuple[str, ...]]] = {}
        opened: dict[str, int] = {}

        def room(table: str) -> bool:
            """Whether a new window may open now (at most one per table and group: the budget reserves two rows)."""
            if opened.get(table):
                return False
            stored = self.stored.get(table, 0)
            if stored >= self.max_windows and count is not None:
                stored = count(table)
            return stored < self.max_windows

        def open_new(table: str, t: SourceTxn, ts: Any) -> Window:
            no = self.next_no.get(table, 0) + opened.get(table, 0)
            opened[table] = opened.get(table, 0) + 1
            w = Window.new(table, no, self.orders[table])
            w.first_lsn, w.first_ts = t.commit_lsn, ts
            return w

        before: dict[str, tuple[int, Any, int]] = {}
        firsts: dict[str, SourceTxn] = {}
        for t in txns:
            ts = po.pg_timestamp(t.commit_ts)
            for table, keys in txn_keys(t).items():
                if table not in self.orders:
                    continue
                w = cur.get(table)
                if w is None:
                    if table in self.current:
                        w = copy.deepcopy(self.current[table])
                        before[table] = (w.last_lsn, w.last_ts, w.changes)
                    else:
                        w = open_new(table, t, ts)
                if w.first_ts is not None and (ts - w.first_ts).total_seconds() * 1e6 > self.window_micros \
                        and room(table):
                    earlier = todo.pop(table, [])
                    if earlier and (table not in before or w.merged(earlier).size() <= self.cap):
                        w.add(earlier, self.cap)  # this group's keys before the close stay with the closed window
                        out[(table, w.window_no)] = w
                        earlier = []
                    before.pop(table, None)
                    first = firsts.get(table, t) if earlier else t
                    w = open_new(table, first, po.pg_timestamp(first.commit_ts))
                    if earlier:  # the closed window was full: they open the new one (never coarsened)
                        todo[table] = earlier
                        w.changes = len(earlier)
                if w.first_ts is None:
                    w.first_lsn, w.first_ts = t.commit_lsn, ts
                w.last_lsn, w.last_ts = t.commit_lsn, ts
                w.changes += len(keys)
                cur[table] = w
                firsts.setdefault(table, t)
                todo.setdefault(table, []).extend(keys)
        for table, w in cur.items():
            keys = todo.pop(table, [])
            if w.form == "all":
                out[(table, w.window_no)] = w
                continue
            grown = w.merged(keys)
            if table in before and w.entries and grown.size() > self.cap and room(table):
                # The stored window is full: it stays as it was, and this group's keys open the next one, exact
                # while they fit (coarsening is the last resort, once track_max_windows windows wait for a diff).
                first = next(t for t in txns if table in txn_keys(t))
                fresh = open_new(table, first, po.pg_timestamp(first.commit_ts))
                fresh.last_lsn, fresh.last_ts = w.last_lsn, w.last_ts
                fresh.changes = w.changes - before[table][2]
                fresh.add(keys, self.cap)
                w = fresh
            else:
                grown.bound(self.cap)
                w.form, w.ranges, w.keys = grown.form, grown.ranges, grown.keys
            out[(table, w.window_no)] = w
        return out

    def write(self, conn: psycopg.Connection, pending: dict[tuple[str, int], Window]) -> None:
        """Inside the apply transaction: upsert every window the group changed."""
        if not pending:
            return
        rows = [(self.slot_name, w.table, w.window_no, w.first_lsn, w.last_lsn, w.first_ts, w.last_ts, w.changes,
                 w.form, w.entries, w.encode()) for w in pending.values()]
        conn.cursor().executemany(_UPSERT, rows)

    def commit(self, pending: dict[tuple[str, int], Window]) -> None:
        """The group's transaction committed: its windows are now the tracker's."""
        for (table, no), w in sorted(pending.items(), key=lambda kv: kv[0][1]):
            if no >= self.next_no.get(table, 0):
                self.stored[table] = self.stored.get(table, 0) + 1
                self.next_no[table] = no + 1
            self.current[table] = w
