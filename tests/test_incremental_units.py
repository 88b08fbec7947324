"""Pure parts of changed-key tracking, repair watermarks and coverage (no database)."""

from __future__ import annotations

import doctest
import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

import reconcile.diff.sqlgen
import reconcile.replay.marks
import reconcile.replay.tracking
from reconcile.diff.coverage import TableCoverage
from reconcile.replay import pgoutput as po
from reconcile.replay.marks import PREFIX, RepairMarks, mark_content, parse_mark
from reconcile.replay.settings import ReplaySettings
from reconcile.replay.source import Change, SourceTxn
from reconcile.replay.tracking import ChangeTracker, Window, coarsen, merge_ranges

REL = po.Relation(1, "app", "t", "d", (po.Column("id", 20, -1, True), po.Column("v", 25, -1, False)))


def test_doctests():
    for module in (reconcile.replay.tracking, reconcile.replay.marks, reconcile.diff.sqlgen):
        assert doctest.testmod(module).failed == 0, module.__name__


def txn(lsn: int, ts_seconds: float, keys: list, table: str = "app.t") -> SourceTxn:
    return SourceTxn(lsn, lsn, lsn + 1, int(ts_seconds * 1e6),
                     [Change("U", table, REL, (str(k),) if not isinstance(k, tuple) else k, (str(k), "x"))
                      for k in keys])


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.integers(-10_000, 10_000), min_size=1, max_size=400),
       cap=st.integers(60, 2000))
def test_a_window_covers_every_key_it_was_given_within_its_byte_cap(keys, cap):
    w = Window.new("app.t", 0, "int")
    half = len(keys) // 2
    w.add([(str(k),) for k in keys[:half]], cap)
    w.add([(str(k),) for k in keys[half:]], cap)
    if w.form == "all":
        return  # nothing smaller could say it: the whole table is verified
    assert len(w.encode().encode()) <= cap
    ranges, _ = Window.decode(w.form, w.encode(), "int")
    assert all(lo <= hi for lo, hi in ranges)
    assert all(ranges[i][1] < ranges[i + 1][0] for i in range(len(ranges) - 1))  # sorted, disjoint
    for k in keys:
        assert any(lo <= k <= hi for lo, hi in ranges), k


def test_appends_merge_into_one_range_and_scattered_keys_coarsen_by_smallest_gap():
    w = Window.new("app.t", 0, "int")
    w.add([(str(k),) for k in range(1000, 6000)], 1024)
    assert w.form == "ranges" and w.ranges == [(1000, 5999)]
    rng = random.Random(3)
    keys = rng.sample(range(10_000_000), 5000)
    w.add([(str(k),) for k in keys], 1024)
    assert w.form == "ranges" and len(w.encode()) <= 1024 and len(w.ranges) > 10
    assert merge_ranges([(1, 2), (3, 4)], "int") == [(1, 4)]
    assert merge_ranges([("a", "b"), ("c", "d")], "str") == [("a", "b"), ("c", "d")]
    assert coarsen([("x1", "x1"), ("x2", "x2"), ("y", "y")], "str", 1) == [("x1", "y")]


def test_exact_keys_of_other_key_types_become_all_past_the_cap():
    w = Window.new("app.t", 0, None)
    w.add([("a", "1"), ("b", "2")], 100)
    assert w.form == "keys" and json.loads(w.encode()) == [["a", "1"], ["b", "2"]]
    w.add([(f"k{i}", str(i)) for i in range(50)], 100)
    assert w.form == "all" and w.encode() == "[]" and w.entries == 0


def test_windows_close_on_source_time_at_most_once_per_group_and_stay_bounded():
    t = ChangeTracker("s", {"app.t": ["bigint"]}, window_seconds=60, max_windows=2)
    first = t.pending([txn(10, 0, [1, 2]), txn(20, 30, [3])])
    assert list(first) == [("app.t", 0)] and first[("app.t", 0)].ranges == [(1, 3)]
    t.commit(first)
    # 90 s after the window opened: a new one; a group spanning more closes at most one window
    second = t.pending([txn(30, 90, [7]), txn(40, 500, [9])])
    assert sorted(second) == [("app.t", 1)] and second[("app.t", 1)].ranges == [(7, 7), (9, 9)]
    t.commit(second)
    assert t.stored["app.t"] == 2
    # at the cap (2 windows stored and none verified since) the current window keeps growing
    third = t.pending([txn(50, 1000, [11])], count=lambda table: 2)
    assert sorted(third) == [("app.t", 1)] and third[("app.t", 1)].ranges == [(7, 7), (9, 9), (11, 11)]
    # once the diff dropped verified windows, a new one opens
    fourth = t.pending([txn(50, 1000, [11])], count=lambda table: 0)
    assert sorted(fourth) == [("app.t", 2)]
    assert t.reserve_rows == 2 and t.reserve_bytes == 2 * (65536 + 256)
    off = ChangeTracker("s", {"app.t": ["bigint"]}, enabled=False)
    assert off.pending([txn(1, 0, [1])]) == {} and off.reserve_rows == 0


def test_both_keys_of_a_key_change_and_unlisted_tables():
    t = ChangeTracker("s", {"app.t": ["text"]})
    moved = SourceTxn(5, 5, 6, 0, [Change("U", "app.t", REL, ("b",), ("b", "x"), old_key=("a",)),
                                   Change("I", "app.other", REL, ("z",), ("z", "x"))])
    out = t.pending([moved])
    assert list(out) == [("app.t", 0)] and out[("app.t", 0)].ranges == [("a", "a"), ("b", "b")]


def _reader(chunks: dict, rows: dict):
    def read(fn, label):
        class Conn:
            def execute(self, q, params=None):
                text = q.as_string() if hasattr(q, "as_string") else q

                class R:
                    def fetchone(self_inner):
                        cid = str(params[0])
                        if "repair_chunks" in text and "columns" in text and "mode" not in text:
                            return (json.dumps({"columns": [["id", 20, -1, True], ["v", 25, -1, False]],
                                                "key_positions": [0]}),)
                        return chunks.get(cid)

                    def fetchall(self_inner):
                        if "repair_rows" in text:
                            return rows[str(params[0])]
                        return []
                return R()
        return fn(Conn())
    return read


def test_marks_drop_keys_seen_between_the_watermarks_and_apply_the_rest_at_the_high_one():
    cid = "6b0f7d1e-6a3a-4a57-9a0b-0a4b8f3c2d11"
    chunks = {cid: ("app.t", "keys", json.dumps([["1"], ["2"], ["3"]]))}
    rows = {cid: [(json.dumps(["1"]), json.dumps(["1", "copy"])), (json.dumps(["2"]), json.dumps(["2", "copy"])),
                  (json.dumps(["3"]), None)]}
    m = RepairMarks("s", _reader(chunks, rows), tables={"app.t"})
    msg = lambda mark: po.Message(True, 0, PREFIX, mark_content("s", cid, mark).encode())  # noqa: E731
    other = po.Message(True, 0, PREFIX, mark_content("other_slot", cid, "low").encode())
    assert parse_mark(other, "s") is None and parse_mark(msg("low"), "s") == (cid, "low")
    low = SourceTxn(1, 10, 11, 0, messages=[msg("low")])
    change = txn(20, 1, [2, 9])
    high = SourceTxn(3, 30, 31, 2, messages=[msg("high")])
    m.begin_round()
    for t in (low, change, high):
        m.scan(t)
    assert m.cost(change)[0] == 1  # one seen-keys row for the chunk
    # key 2 changed between the watermarks: its copy is dropped; key 1 is applied, key 3 (absent) deleted
    assert [(c.op, c.key, c.new) for c in high.changes] == [("I", ("1",), ("1", "copy")), ("D", ("3",), None)]
    # a round that failed is forgotten; committed effects are kept
    m.begin_round()
    assert not m.active
    m.scan(low)
    m.committed([low])
    m.begin_round()
    assert m.active and m.confirmed[cid].seen == set()


def test_a_sweep_pass_partitions_the_key_space():
    cov = TableCoverage("s", "app.t", bounds=[["10"], ["20"], ["30"]])
    assert cov.pass_slices == 4
    assert [cov.slice_range(i) for i in range(4)] == [(None, ["10"]), (["10"], ["20"]), (["20"], ["30"]),
                                                      (["30"], None)]
    assert cov.all_verified_since is None and cov.all_verified_clean is None


def test_replay_settings_bound_the_tracking():
    import pytest

    from reconcile.config import InvalidSetting

    with pytest.raises(InvalidSetting, match="track_bytes"):
        ReplaySettings(track_bytes=10)
    with pytest.raises(InvalidSetting, match="track_max_windows"):
        ReplaySettings(track_max_windows=0)


def test_which_gate_needs_which_full_pass():
    import datetime as dt

    from reconcile.gates.coverage import full_diff_recent, full_pass_recent
    from reconcile.gates.settings import GateSettings

    now = dt.datetime(2026, 1, 2, 12, tzinfo=dt.timezone.utc)
    s = GateSettings()

    def run(rid, hours_ago, cov=None, status="green", complete=True):
        return {"run_id": rid, "status": status, "complete": complete, "started_at": now - dt.timedelta(hours=hours_ago),
                "summary": {} if cov is None else {"coverage": cov}}

    sweep = {"mode": "incremental", "all_verified_since": (now - dt.timedelta(hours=20)).isoformat(),
             "all_verified_clean": True}
    hist = {"recent": [run("inc", 1, sweep), run("old-full", 30)]}
    read, write = full_pass_recent(hist, s, now, {}), full_diff_recent(hist, s, now, {})
    assert read.passed and read.evidence["how"] == "sweep" and read.evidence["age_hours"] == 20
    assert not write.passed and "30 h ago" in write.message  # incremental runs never stand in for the full diff
    dirty = {**sweep, "all_verified_clean": False}
    assert not full_pass_recent({"recent": [run("inc", 1, dirty)]}, s, now, {}).passed
    stale = {**sweep, "all_verified_since": (now - dt.timedelta(hours=30)).isoformat()}
    assert "more than 24 h" in full_pass_recent({"recent": [run("inc", 1, stale)]}, s, now, {}).message
    legacy = {"recent": [run("legacy", 2), run("red", 1, {"mode": "full"}, status="red")]}
    assert full_pass_recent(legacy, s, now, {}).passed and full_diff_recent(legacy, s, now, {}).passed
    assert not full_pass_recent({"recent": [run("partial", 1, complete=False)]}, s, now, {}).passed


def test_a_full_window_closes_and_the_next_group_opens_one_with_its_keys_exact():
    t = ChangeTracker("s", {"app.t": ["bigint"]}, cap_bytes=1024, window_seconds=3600, max_windows=2)
    first = t.pending([txn(10, 0, list(range(1, 20_000, 199)))])  # 101 scattered keys, ~600 bytes
    t.commit(first)
    second = t.pending([txn(20, 1, list(range(7, 20_000, 211)))])  # 95 more: over 1 KiB together
    assert sorted(second) == [("app.t", 1)]  # window 0 stays as stored; the new keys open window 1, exact
    assert second[("app.t", 1)].ranges == [(k, k) for k in range(7, 20_000, 211)]
    assert second[("app.t", 1)].first_lsn == 20 and second[("app.t", 1)].changes == 95
    t.commit(second)
    # at track_max_windows, the last window grows and is coarsened instead (still covering every key)
    third = t.pending([txn(30, 2, list(range(3, 20_000, 101)))], count=lambda table: 2)
    w = third[("app.t", 1)]
    assert sorted(third) == [("app.t", 1)] and w.size() <= 1024
    assert all(any(lo <= k <= hi for lo, hi in w.ranges) for k in list(range(3, 20_000, 101)) + [7, 218])


def test_a_window_full_when_its_time_is_up_hands_the_groups_keys_to_the_next_one():
    t = ChangeTracker("s", {"app.t": ["bigint"]}, cap_bytes=1024, window_seconds=60, max_windows=10)
    t.commit(t.pending([txn(10, 0, list(range(1, 20_000, 199)))]))  # ~600 bytes
    # one group: 95 keys within the window's time (over the cap together), then a txn past its end
    group = [txn(20, 10, list(range(7, 20_000, 211))), txn(30, 100, [5])]
    out = t.pending(group)
    assert sorted(out) == [("app.t", 1)]  # window 0 stays as stored, nothing coarsened
    w = out[("app.t", 1)]
    assert w.first_lsn == 20 and w.ranges == sorted([(k, k) for k in range(7, 20_000, 211)] + [(5, 5)])
