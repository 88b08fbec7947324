"""Backfill pieces that need no database: keys, SQL builders, pacing, progress, settings, migrations."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconcile.backfill import BackfillSettings, BadKey, parse_key_arg
from reconcile.backfill.catalog import TableInfo
from reconcile.backfill.copy import Statements
from reconcile.backfill.keys import (
    KeyColumn,
    compare_sql,
    copy_field,
    copy_fields,
    decode_key,
    encode_key,
    key_range,
    line_key,
)
from reconcile.backfill.pacing import BatchSizer, Throttle
from reconcile.backfill.progress import BackfillSummary, Progress, TableSummary, render_line
from reconcile.budget import TableCost
from reconcile.config import InvalidSetting
from reconcile.control import render
from reconcile.control.backfill_tables import STEPS

TEXT = KeyColumn("code", "text", True)
NUM = KeyColumn("n", "integer", False)


def test_text_key_columns_compare_in_c_order_on_both_sides():
    cond, params = key_range([TEXT, NUM], lower=("B", "1"), lower_inclusive=False, upper=("a", "9"))
    assert cond.as_string() == (
        'ROW("code" COLLATE "C", "n") > ROW(CAST(%s AS text) COLLATE "C", CAST(%s AS integer)) AND '
        'ROW("code" COLLATE "C", "n") < ROW(CAST(%s AS text) COLLATE "C", CAST(%s AS integer))')
    assert params == ["B", "1", "a", "9"]
    single, _ = key_range([NUM], upper=("5",), upper_inclusive=True, alias="t")
    assert single.as_string() == '"t"."n" <= CAST(%s AS integer)'  # a scalar: a btree on n serves it
    assert key_range([NUM])[0].as_string() == "TRUE"
    with pytest.raises(BadKey):
        key_range([TEXT, NUM], lower=("only-one",))
    assert compare_sql([NUM]).as_string().count("%s") == 4


def test_keys_round_trip_through_the_control_tables():
    for key in [("42",), ("ä", "7"), ('quo"te', "\\", "tab\t")]:
        assert decode_key(encode_key(key)) == key
    assert encode_key(None) is None and decode_key(None) is None
    with pytest.raises(BadKey, match="--replan"):
        decode_key('{"not": "a list"}')


def test_key_arguments():
    assert parse_key_arg("ä-001", ["code"]) == ("ä-001",)
    assert parse_key_arg('["EUR", 17]', ["cur", "n"]) == ("EUR", "17")
    with pytest.raises(BadKey, match="JSON array"):
        parse_key_arg("EUR,17", ["cur", "n"])
    with pytest.raises(BadKey, match="has 1 value"):
        parse_key_arg('["EUR"]', ["cur", "n"])
    with pytest.raises(BadKey, match="without nulls"):
        parse_key_arg("[null]", ["n"])


def test_copy_text_fields_decode_like_the_server_encodes_them():
    line = "7\ta\\tb\\\\c\\nd\t\\N\tä\\011x\\x41".encode()
    assert copy_fields(line) == ["7", "a\tb\\c\nd", None, "ä\txA"]
    assert copy_field(b"plain") == "plain"
    assert line_key(line, (3, 0)) == ("ä\txA", "7")
    with pytest.raises(BadKey, match="NULL"):
        line_key(line, (2,))


def _info(**over) -> TableInfo:
    base = dict(
        name="app.t", key=("id",), columns=("id", "v", "n"), target_types=("bigint", "character varying", "numeric"),
        source_key=(KeyColumn("id", "bigint", False),), target_key=(KeyColumn("id", "bigint", False),),
        key_positions=(0,), index_ordered=True, overriding=False, cost=TableCost("app.t", 0, 10, 10, 0),
        rows_cap=100, row_dsql_rows=1, index_key_bytes=0)
    return TableInfo(**(base | over))


def test_write_statements_upsert_every_non_key_column():
    st = Statements(_info())
    assert st.copy_in.as_string() == 'COPY "app"."t" ("id", "v", "n") FROM STDIN'
    assert st.unnest.as_string() == (
        'INSERT INTO "app"."t" ("id", "v", "n") SELECT CAST(u."v0" AS bigint), CAST(u."v1" AS character varying), '
        'CAST(u."v2" AS numeric) FROM unnest(%s::text[], %s::text[], %s::text[]) AS u("v0", "v1", "v2") '
        'ON CONFLICT ("id") DO UPDATE SET "v" = EXCLUDED."v", "n" = EXCLUDED."n"')
    assert st.values(2).as_string().count("CAST(%s AS bigint)") == 2
    q, params = st.read(lower=("5",), inclusive=False, upper=None, limit=10)
    assert q.as_string() == ('COPY (SELECT "t"."id", "t"."v", "t"."n" FROM "app"."t" AS t WHERE "t"."id" > '
                             'CAST(%s AS bigint) ORDER BY "t"."id" LIMIT 10) TO STDOUT') and params == ["5"]
    only_key = Statements(_info(columns=("id",), target_types=("bigint",), overriding=True))
    assert only_key.one_row.as_string() == (
        'INSERT INTO "app"."t" ("id") OVERRIDING SYSTEM VALUE VALUES (CAST(%s AS bigint)) ON CONFLICT ("id") DO NOTHING')


def test_batch_sizer_adapts_toward_the_time_target_within_the_budget():
    s = BatchSizer(cap_rows=1500, byte_cap=5_000_000, target_seconds=0.5)
    assert s.next() == 1500
    s.observe(1500, 3.0, 100)                  # slow target: 500 rows/s
    assert s.next() == 250
    for _ in range(10):
        s.observe(s.next(), 0.001, 100)        # fast again
    assert s.next() == 1500                    # never above the budget's cap
    s.observe(1500, 0.1, 1_000_000)            # big rows: bytes bound the batch
    assert s.next() == 5
    s.observe(0, 1.0, 100)                     # an empty read tells nothing
    assert s.next() == 5


def test_throttle_paces_rows_over_all_callers():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    t = Throttle(1000, clock=lambda: now[0], sleep=sleep)
    t.acquire(1000)                   # starts empty: no burst at start
    assert sum(slept) == pytest.approx(1.0)
    t.acquire(500)
    assert sum(slept) == pytest.approx(1.5)
    now[0] += 5                       # a pause banks at most one second of tokens
    t.acquire(1500)
    assert sum(slept) == pytest.approx(2.0)
    Throttle(0, clock=lambda: now[0], sleep=sleep).acquire(10**9)  # 0 = unlimited
    assert sum(slept) == pytest.approx(2.0)


def test_progress_line_on_a_terminal_and_log_lines_elsewhere(caplog):
    out = io.StringIO()
    p = Progress(stream=out, tty=True)
    p.start_table("app.t", total=200, already=50, chunks=2)
    p.add("app.t", 50, rejected=1)
    p.finish_table("app.t")
    text = out.getvalue()
    assert text.startswith("\rapp.t [") and "100/200 rows" in text and "rejected 1" in text and text.endswith("\n")
    caplog.set_level("INFO", logger="reconcile.backfill")
    q = Progress(stream=io.StringIO(), tty=False)
    q.start_table("app.t", total=None, already=0, chunks=1)
    q.add("app.t", 7)
    q.finish_table("app.t")
    assert any("backfill progress table=app.t rows=7 total=?" in r.message for r in caplog.records)
    from reconcile.backfill.progress import TableProgress
    assert "ETA ?" in render_line(TableProgress("x", total=None), now=1.0)


def test_summary_exit_codes():
    ok = BackfillSummary("r", "done", [TableSummary("t", 2, 2, 0, 10, 0, 1.0)], 1.0)
    assert ok.exit_code == 0 and "10 rows copied" in ok.text()
    rejected = BackfillSummary("r", "done", [TableSummary("t", 2, 2, 0, 10, 3, 1.0)], 1.0)
    assert rejected.exit_code == 1 and "reconcile backfill rejects" in rejected.text()
    failed = BackfillSummary("r", "failed", [TableSummary("t", 2, 1, 1, 10, 0, 1.0)], 1.0, errors=["boom"])
    assert failed.exit_code == 2 and json.loads(json.dumps(failed.to_dict()))["failed_chunks"] == 1


def test_settings_are_validated():
    with pytest.raises(InvalidSetting, match="backfill.write_method"):
        BackfillSettings(write_method="fast")
    with pytest.raises(InvalidSetting, match="exactly one table"):
        BackfillSettings(from_key=("1",))
    assert BackfillSettings(replan=True).force


def test_backfill_migrations_are_single_idempotent_dsql_valid_column_additions(tmp_path):
    for step in STEPS:
        text = step.statement("dsql").as_string()
        assert text.startswith("ALTER TABLE") and "ADD COLUMN IF NOT EXISTS" in text and ";" not in text
        assert "DEFAULT" not in text and "NOT NULL" not in text  # DSQL refuses both on ADD COLUMN
    lint = shutil.which("dsql-lint") or str(Path(sys.executable).with_name("dsql-lint"))
    script = tmp_path / "backfill_steps.sql"
    script.write_text(render("dsql", STEPS))
    report = json.loads(subprocess.run([lint, str(script), "--format", "json"], capture_output=True, text=True,
                                       timeout=60).stdout)
    assert report["summary"]["errors"] == 0 and report["files"][0]["diagnostics"] == []
