"""Entry-level diff against the real local stack: every kind of discrepancy, text and composite
keys, lag-aware re-checks, runs and findings in the control schema, the CLI's exit codes."""

from __future__ import annotations

import json
import threading
from decimal import Decimal

import psycopg
from typer.testing import CliRunner

from reconcile.cli.diff_cmd import app as diff_app
from reconcile.config import Config, PostgresEndpoint, TableSpec
from reconcile.diff import diff_table, finish_diff, run_diff, start_diff
from reconcile.diff import sqlgen
from reconcile.diff import lag
from reconcile.diff.lag import lsn_int
from reconcile.diff.settings import DiffSettings

# Small segments and buckets, so a few thousand rows already exercise bisection.
SMALL = DiffSettings(segment_rows=1000, bucket_rows=100, bisection_factor=4, fetch_threshold=30, workers=2,
                     lag_wait_seconds=10, poll_seconds=0.05, balances=False)


def config(source: str, target: str, *tables: TableSpec, settings: DiffSettings = SMALL) -> Config:
    return Config(source=PostgresEndpoint("source", source), target=PostgresEndpoint("target", target),
                  tables=tables, stages={"diff": settings})


def run_sql(url: str, *statements: str, params: tuple | None = None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt, params)


def findings(target: str, run_id: str, table: str) -> dict[str, dict]:
    with psycopg.connect(target) as conn:
        rows = conn.execute("SELECT kind, row_key, columns FROM reconcile.diff_findings WHERE run_id = %s "
                            "AND table_name = %s", (run_id, table)).fetchall()
    out: dict[str, dict] = {"missing_in_target": {}, "extra_in_target": {}, "changed": {}}
    for kind, key, cols in rows:
        out[kind][tuple(json.loads(key))] = json.loads(cols)
    return out


ITEMS_DDL = ("CREATE SCHEMA app", "CREATE TABLE app.items (id bigint PRIMARY KEY, name text, amount {numeric}, "
             "at timestamptz, note text, meta json)")
ITEMS = TableSpec("app.items", ("id",))


def items_pair(source: str, target: str, rows: int = 3000) -> None:
    # The source declares plain numeric (any scale), the target numeric(18,6): 1.0 and 1.000000.
    run_sql(source, ITEMS_DDL[0], ITEMS_DDL[1].format(numeric="numeric"))
    run_sql(target, ITEMS_DDL[0], ITEMS_DDL[1].format(numeric="numeric(18,6)"))
    fill = (f"INSERT INTO app.items SELECT g, 'item ' || g, g / 4.0, '2024-01-01 00:00:00+00'::timestamptz "
            f"+ g * interval '1 minute 1 microsecond', CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' || g END, "
            f"json_build_object('a', g, 'b', 'x') FROM generate_series(1, {rows}) g")
    run_sql(source, fill)
    # The target in batches of 1,000 rows (the DSQL guards' 3,000-row transaction limit).
    for lo in range(1, rows + 1, 1000):
        run_sql(target, fill.replace(f"generate_series(1, {rows})", f"generate_series({lo}, {min(rows, lo + 999)})"))


def test_sql_builders_are_pure():
    cols = [sqlgen.Column("id", "int"), sqlgen.Column("t", "text"), sqlgen.Column("n", "numeric")]
    text = sqlgen.row_text(cols).as_string()
    assert "trim_scale" in text and "octet_length" in text
    e, params = sqlgen.bucket_expr([sqlgen.Column("k", "text")], [("b",), ("m",), ("t",)])
    assert e.as_string().count("CASE") == 3 and params == ["m", "b", "t"]
    where, params = sqlgen.range_where([sqlgen.Column("a", "text"), sqlgen.Column("b", "int")], ("x", 1), None)
    assert where.as_string() == '("a" COLLATE "C", "b") >= (%s, %s)' and params == ["x", 1]
    assert lsn_int("16/B374D848") == (0x16 << 32) + 0xB374D848


def test_every_kind_of_discrepancy_found_exactly(source_db, target_db):
    items_pair(source_db, target_db)
    run_sql(target_db,
            "DELETE FROM app.items WHERE id = 10",                                        # missing
            "INSERT INTO app.items VALUES (5001, 'extra', 1, now(), 'x', NULL)",           # extra
            "UPDATE app.items SET amount = amount + 0.01 WHERE id = 20",                   # changed amount
            "UPDATE app.items SET at = at + interval '1 microsecond' WHERE id = 30",       # changed timestamp
            "UPDATE app.items SET note = '' WHERE id = 42",                                # NULL vs ''
            "UPDATE app.items SET name = 'Zoe\u0308' WHERE id = 50",                        # unicode: NFD vs NFC
            "UPDATE app.items SET meta = '{\"b\": \"x\",   \"a\": 70}' WHERE id = 70",      # json spacing/order: equal
            "UPDATE app.items SET name = 'Zoë ✓ 李' WHERE id = 80")
    run_sql(source_db, "UPDATE app.items SET name = 'Zo\u00eb' WHERE id = 50",
            "UPDATE app.items SET name = 'Zoë ✓ 李' WHERE id = 80",                         # same unicode: equal
            "UPDATE app.items SET amount = 1.0 WHERE id = 60")                              # 1.0 vs 1.00...
    run_sql(target_db, "UPDATE app.items SET amount = 1.00 WHERE id = 60")                  # ...not a finding
    cfg = config(source_db, target_db, ITEMS)
    run_id = start_diff(cfg)
    counts = diff_table(cfg, run_id, "app.items")
    got = findings(target_db, run_id, "app.items")
    assert got["missing_in_target"] == {(10,): []}
    assert got["extra_in_target"] == {(5001,): []}
    assert got["changed"] == {(20,): ["amount"], (30,): ["at"], (42,): ["note"], (50,): ["name"]}
    assert counts["status"] == "red" and (counts["missing"], counts["extra"], counts["changed"]) == (1, 1, 4)
    assert counts["rows_source"] == 3000 and counts["rows_target"] == 3000
    with psycopg.connect(target_db) as conn:
        src, tgt, delta = conn.execute("SELECT source_values, target_values, money_delta FROM reconcile.diff_findings "
                                       "WHERE run_id = %s AND row_key = '[20]'", (run_id,)).fetchone()
    assert Decimal(json.loads(src)["amount"]) == Decimal("5") and json.loads(tgt)["amount"] == "5.010000"
    assert delta is None  # a plain table (no ledger role) has no money column


def test_text_and_composite_keys(source_db, target_db):
    ddl = ("CREATE SCHEMA app", "CREATE TABLE app.codes (code text PRIMARY KEY, v int)",
           "CREATE TABLE app.pairs (region text, n int, v numeric(12,2), PRIMARY KEY (region, n))")
    run_sql(source_db, *ddl)
    run_sql(target_db, *ddl)
    # Mixed case and accents: en_US order on the source differs from C order; the diff must not care.
    fill = ("INSERT INTO app.codes SELECT (ARRAY['a','B','ä','Z','b','É','z','Å'])[1 + g % 8] || g, g "
            "FROM generate_series(1, 1500) g",
            "INSERT INTO app.pairs SELECT (ARRAY['eu','US','ü','Asia'])[1 + g % 4], g, g * 1.5 FROM generate_series(1, 1500) g")
    run_sql(source_db, *fill)
    run_sql(target_db, *fill)
    run_sql(target_db, "DELETE FROM app.codes WHERE code = 'ä2'", "UPDATE app.codes SET v = -1 WHERE code = 'Z3'",
            "INSERT INTO app.codes VALUES ('Ø-extra', 0)",
            "DELETE FROM app.pairs WHERE region = 'ü' AND n = 2", "UPDATE app.pairs SET v = 0 WHERE region = 'US' AND n = 1",
            "INSERT INTO app.pairs VALUES ('Åland', 7, 1)")
    cfg = config(source_db, target_db, TableSpec("app.codes", ("code",)), TableSpec("app.pairs", ("region", "n")))
    run_id = start_diff(cfg)
    diff_table(cfg, run_id, "app.codes")
    diff_table(cfg, run_id, "app.pairs")
    codes = findings(target_db, run_id, "app.codes")
    assert codes == {"missing_in_target": {("ä2",): []}, "extra_in_target": {("Ø-extra",): []}, "changed": {("Z3",): ["v"]}}
    pairs = findings(target_db, run_id, "app.pairs")
    assert pairs == {"missing_in_target": {("ü", 2): []}, "extra_in_target": {("Åland", 7): []},
                     "changed": {("US", 1): ["v"]}}


def _lsn(url: str) -> str:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]


def _set_watermark(target: str, lsn: str) -> None:
    run_sql(target, "INSERT INTO reconcile.replay_state (slot_name, last_commit_lsn, caught_up_lsn) VALUES "
                    "('reconcile', %s, %s) ON CONFLICT (slot_name) DO UPDATE SET caught_up_lsn = excluded.caught_up_lsn",
            params=(lsn, lsn))


def test_lag_aware_in_flight_vs_persistent(source_db, target_db, monkeypatch):
    items_pair(source_db, target_db, rows=500)
    cfg = config(source_db, target_db, ITEMS)
    run_id = start_diff(cfg)                                    # migrates the control schema
    _set_watermark(target_db, "0/1")                            # a replay exists, far behind
    # In flight: the source wrote rows the replay has not applied yet; persistent: a corrupted row.
    run_sql(source_db, "INSERT INTO app.items VALUES (900, 'late', 2, '2024-02-01Z', NULL, NULL)",
            "UPDATE app.items SET amount = 99 WHERE id = 7")
    run_sql(target_db, "UPDATE app.items SET note = 'corrupted' WHERE id = 11")

    done, waiting = threading.Event(), threading.Event()
    real_wait = lag.Waiter.wait

    def wait(self, lsn: int) -> bool:                             # the diff has read its candidates
        waiting.set()
        return real_wait(self, lsn)

    monkeypatch.setattr(lag.Waiter, "wait", wait)

    def replay() -> None:                                        # the replayer catches up once the diff waits
        assert waiting.wait(120)
        run_sql(target_db, "INSERT INTO app.items VALUES (900, 'late', 2, '2024-02-01Z', NULL, NULL)",
                "UPDATE app.items SET amount = 99 WHERE id = 7")
        while not done.is_set():                                 # then keeps reporting "caught up"
            _set_watermark(target_db, _lsn(source_db))
            done.wait(0.1)

    worker = threading.Thread(target=replay)
    worker.start()
    try:
        counts = diff_table(cfg, run_id, "app.items")
    finally:
        done.set()
        worker.join()
    assert counts["in_flight"] == 2
    assert findings(target_db, run_id, "app.items")["changed"] == {(11,): ["note"]}
    assert counts["missing"] == 0 and counts["changed"] == 1


def test_static_diff_without_replay_and_run_record(source_db, target_db, tmp_path):
    items_pair(source_db, target_db, rows=300)
    run_sql(target_db, "DELETE FROM app.items WHERE id = 3")
    cfg = config(source_db, target_db, ITEMS)
    result = run_diff(cfg, report_dir=tmp_path)
    assert result.verdict == "red"
    s = result.to_dict()
    assert s["persistent_mismatches"] == 1 and s["in_flight"] == 0
    assert s["tables"]["app.items"] == {"status": "red", "missing": 1, "extra": 0, "changed": 0, "in_flight": 0,
                                        "rows_source": 300, "rows_target": 299}
    assert lsn_int(s["start_lsn"]) > 0
    with psycopg.connect(target_db) as conn:
        status, summary = conn.execute("SELECT status, summary FROM reconcile.runs WHERE run_id = %s",
                                       (result.run_id,)).fetchone()
    assert status == "red" and json.loads(summary)["verdict"] == "red"
    # Re-running the table task and finish is idempotent: same findings, no duplicates.
    diff_table(cfg, result.run_id, "app.items")
    again = finish_diff(cfg, result.run_id, report_dir=tmp_path)
    assert again.to_dict()["persistent_mismatches"] == 1
    with psycopg.connect(target_db) as conn:
        assert conn.execute("SELECT count(*) FROM reconcile.diff_findings WHERE run_id = %s",
                            (result.run_id,)).fetchone()[0] == 1


def test_cli_exit_codes(source_db, target_db, tmp_path):
    items_pair(source_db, target_db, rows=200)
    cfg_file = tmp_path / "reconcile.toml"
    cfg_file.write_text(f"""
[source]
kind = "postgres"
conninfo = "{source_db}"
[target]
kind = "postgres"
conninfo = "{target_db}"
[[tables]]
name = "app.items"
key = ["id"]
[diff]
balances = false
""")
    runner = CliRunner()
    green = runner.invoke(diff_app, ["--config", str(cfg_file), "--report-dir", str(tmp_path / "r"), "--json"])
    assert green.exit_code == 0, green.output
    assert json.loads(green.stdout)["verdict"] == "green"
    run_sql(target_db, "UPDATE app.items SET name = 'x' WHERE id = 5")
    red = runner.invoke(diff_app, ["--config", str(cfg_file), "--table", "app.items", "--report-dir", str(tmp_path / "r")])
    assert red.exit_code == 1, red.output
    assert "RED" in red.stdout
    shown = runner.invoke(diff_app, ["show", "--config", str(cfg_file)])
    assert shown.exit_code == 0 and "red" in shown.stdout and "green" in shown.stdout


def test_hash_layout_and_exact_bucket_ranges():
    from reconcile.diff.hashdiff import Segment, _bucket_range

    src = [sqlgen.Column("id", "int", "bigint"), sqlgen.Column("a", "text", "text"),
           sqlgen.Column("amt", "numeric", "numeric(12,2)"), sqlgen.Column("wide", "numeric", "numeric(12,2)"),
           sqlgen.Column("b", "text", "character(3)"), sqlgen.Column("n", "numeric", "numeric")]
    tgt = [sqlgen.Column(c.name, c.kind, c.type_name) for c in src]
    tgt[3] = sqlgen.Column("wide", "numeric", "numeric(14,4)")      # scales differ: trim_scale stays
    tgt[5] = sqlgen.Column("n", "numeric", "numeric(18,6)")          # plain numeric (any scale): too
    s, t = sqlgen.hash_layout(src, tgt)
    assert [c.name for c in s] == [c.name for c in t] == ["id", "amt", "wide", "n", "a", "b"]
    assert [c.form for c in s] == [c.form for c in t] == ["", "plain", "", "", "", "last"]
    text = sqlgen.row_text(s).as_string()
    assert 'coalesce("amt"::text' in text and 'trim_scale("wide")' in text and 'trim_scale("n")' in text
    assert 'octet_length("a"::text)' in text and text.endswith("""coalesce(':' || "b"::text, '')""")
    # Bucket b of an arithmetic bucketing is exactly the keys whose truncating division gives b,
    # also below the origin of an open first segment (written after the segments were planned).
    seg = Segment(None, (200,), sqlgen.Arithmetic(100, 10))
    for b in range(-4, 10):
        lo, hi = _bucket_range(seg, b)
        keys = [k for k in range(40, 200) if int((k - 100) / 10) == b]
        assert list(range(lo[0], hi[0])) == keys, b
    assert _bucket_range(Segment((100,), (125,), sqlgen.Arithmetic(100, 10)), 2) == ((120,), (125,))


COMPACT_DDL = ("CREATE SCHEMA app", "CREATE TABLE app.tx (id bigint PRIMARY KEY, amt numeric(12,2), "
               "wide numeric({scale}), a text, b text)")


def test_compact_layout_finds_exactly_the_differences(source_db, target_db):
    run_sql(source_db, COMPACT_DDL[0], COMPACT_DDL[1].format(scale="12,2"))
    run_sql(target_db, COMPACT_DDL[0], COMPACT_DDL[1].format(scale="14,4"))
    fill = "INSERT INTO app.tx SELECT g, g / 8.0, g / 4.0, 'a' || g, CASE WHEN g % 5 = 0 THEN NULL ELSE 'b' || g END " \
           "FROM generate_series({lo}, {hi}) g"
    run_sql(source_db, fill.format(lo=1, hi=2400))
    for lo in range(1, 2401, 800):
        run_sql(target_db, fill.format(lo=lo, hi=lo + 799))
    run_sql(source_db, "UPDATE app.tx SET a = 'x', b = '|y' WHERE id = 7",      # separators inside values
            "UPDATE app.tx SET b = '' WHERE id = 1000",                       # '' in the last column...
            "UPDATE app.tx SET a = NULL WHERE id = 1500")
    run_sql(target_db, "UPDATE app.tx SET a = 'x|', b = 'y' WHERE id = 7",
            "UPDATE app.tx SET b = NULL WHERE id = 1000",                     # ...vs NULL: a finding
            "UPDATE app.tx SET a = '' WHERE id = 1500",                       # NULL vs '' (prefixed column)
            "UPDATE app.tx SET amt = amt + 0.01 WHERE id IN (3, 2399)",       # same numeric(12,2) both sides
            "UPDATE app.tx SET b = 'b11:' WHERE id = 11",
            "UPDATE app.tx SET wide = 5.2500 WHERE id = 21")                  # 5.25 == 5.2500: not a finding
    cfg = config(source_db, target_db, TableSpec("app.tx", ("id",)))
    run_id = start_diff(cfg)
    counts = diff_table(cfg, run_id, "app.tx")
    got = findings(target_db, run_id, "app.tx")
    assert got["changed"] == {(7,): ["a", "b"], (1000,): ["b"], (1500,): ["a"], (3,): ["amt"], (2399,): ["amt"],
                              (11,): ["b"]}
    assert got["missing_in_target"] == got["extra_in_target"] == {}
    assert counts["rows_source"] == counts["rows_target"] == 2400
    with psycopg.connect(target_db) as conn:
        details = json.loads(conn.execute("SELECT details FROM reconcile.diff_results WHERE run_id = %s",
                                          (run_id,)).fetchone()[0])
    assert details["candidates"] == 6   # the hash already agrees on 2.50 vs 2.5000 and 5.25 vs 5.2500


class CountingSide:
    """A Side that records every statement it runs (to see which queries the algorithm issues)."""

    def __new__(cls, name, url):
        from reconcile.diff.side import Side

        class _Counting(Side):
            def fetch(self, query, params=None, *, binary=False):
                self.seen.append(query.as_string() if hasattr(query, "as_string") else str(query))
                return super().fetch(query, params, binary=binary)

            def one(self, query, params=None):
                self.seen.append(query.as_string() if hasattr(query, "as_string") else str(query))
                return super().one(query, params)

        side = _Counting(name, lambda: psycopg.connect(url))
        side.seen = []
        return side


def test_precheck_is_skipped_once_segments_differ(source_db, target_db):
    from reconcile.diff import hashdiff
    from reconcile.diff.run import _shape
    from reconcile.diff.side import Pair

    run_sql(source_db, "CREATE SCHEMA app", "CREATE TABLE app.n (id bigint PRIMARY KEY, v int)",
            "INSERT INTO app.n SELECT g, g FROM generate_series(1, 2000) g", "ANALYZE app.n")
    run_sql(target_db, "CREATE SCHEMA app", "CREATE TABLE app.n (id bigint PRIMARY KEY, v int)",
            "INSERT INTO app.n SELECT g, g FROM generate_series(1, 2000) g", "ANALYZE app.n")
    spec = TableSpec("app.n", ("id",))

    def run(settings: DiffSettings) -> tuple[hashdiff.Candidates, int, int, int]:
        with Pair(CountingSide("source", source_db), CountingSide("target", target_db)) as pair:
            cands = hashdiff.candidates(pair, _shape(pair, spec), settings)
            seen = pair.source.seen
            return (cands, sum("GROUP BY" not in q and "coalesce(sum(" in q for q in seen),
                    sum("GROUP BY" in q for q in seen), sum(" IN (" in q for q in seen))

    per_segment = DiffSettings(segment_rows=400, precheck_rows=400, bucket_rows=40, fetch_threshold=100, workers=1)
    whole = DiffSettings(segment_rows=400, bucket_rows=40, fetch_threshold=100, workers=2)
    cands, totals, grouped, fetches = run(per_segment)
    assert (len(cands), cands.segments, totals, grouped, fetches) == (0, 5, 5, 0, 0)  # one plain scan per block
    cands, totals, grouped, fetches = run(whole)
    assert (len(cands), cands.segments, totals, grouped, fetches) == (0, 5, 2, 0, 0)  # the probe, then one block
    assert (cands.rows_source, cands.rows_target) == (2000, 2000)
    run_sql(target_db, "UPDATE app.n SET v = -v WHERE id % 400 = 7")       # one row in every segment
    for settings in (per_segment, whole):
        cands, totals, grouped, fetches = run(settings)
        assert cands.changed == {(7,), (407,), (807,), (1207,), (1607,)} and not cands.missing | cands.extra
        # Only the probe is prechecked (it differs, so the rest skip it); then each segment: one bucket
        # query and one fetch of its differing bucket.
        assert (totals, grouped, fetches, cands.buckets_fetched) == (1, 5, 5, 5)
        assert (cands.rows_source, cands.rows_target, cands.segments) == (2000, 2000, 5)


def test_cli_diff_with_checks_is_a_whole_reconciliation_the_read_gate_counts(source_db, target_db, tmp_path):
    from reconcile.config import load_config
    from reconcile.gates import evaluate

    items_pair(source_db, target_db, rows=200)
    cfg_file = tmp_path / "reconcile.toml"
    cfg_file.write_text(f"""
[source]
kind = "postgres"
conninfo = "{source_db}"
[target]
kind = "postgres"
conninfo = "{target_db}"
[[tables]]
name = "app.items"
key = ["id"]
[diff]
balances = false
report_dir = "{tmp_path / 'r'}"
[gates]
min_green_runs = 1
min_green_hours = 0
""")
    runner = CliRunner()

    def streak() -> dict:
        ev = evaluate(load_config(cfg_file, environ={}), "read", record=False)
        return next(c for c in ev.criteria if c.name == "green_diff_streak").to_dict()

    alone = runner.invoke(diff_app, ["--config", str(cfg_file)])
    assert alone.exit_code == 0, alone.output
    assert "reconciliation" not in alone.stdout
    assert not streak()["passed"]  # a diff without its expectations is not a reconciliation a gate counts

    whole = runner.invoke(diff_app, ["--config", str(cfg_file), "--checks", "--json"])
    assert whole.exit_code == 0, whole.output
    summary = json.loads(whole.stdout)
    assert summary["reconciliation"] == {"verdict": "green", "failed_steps": []}
    assert summary["checks"]["success"] and summary["checks"]["evaluated"] > 0
    with psycopg.connect(target_db) as conn:  # the check run is recorded as part of this diff run
        (part_of,) = conn.execute("SELECT part_of::text FROM reconcile.runs WHERE run_id = %s",
                                  (summary["checks"]["run_id"],)).fetchone()
    assert part_of == summary["run_id"]
    assert streak()["passed"]
    text = runner.invoke(diff_app, ["--config", str(cfg_file), "--checks"])
    assert text.exit_code == 0 and "reconciliation GREEN" in text.stdout and "expectations: " in text.stdout
