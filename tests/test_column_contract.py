"""The column contract end to end: every converted type through schema apply, backfill, replay and diff.

One source table holds every type issue 13 lists (arrays with NULL elements and two dimensions, jsonb,
enum, domain, ranges, citext, hstore, money, bytea, interval, inet/cidr, uuid, bit/varbit, xml,
+-infinity timestamps and dates, float NaN/+-Inf/-0, numeric NaN/Infinity inside an array). It is
planned, applied and its column contract stored; backfilled, then changed by inserts, updates (one of
them leaving a TOASTed array unchanged) and deletes that the replay applies; then the diff must be
green and an oracle independent of our SQL (values fetched through psycopg from both sides and
compared per the contract, in Python) must agree. Then one value of each converted type is corrupted
on the target and the diff must name each column.
"""

from __future__ import annotations

import doctest
import ipaddress
import json
import math
import random
import string
import uuid
from decimal import Decimal

import psycopg
import pytest
from psycopg.adapt import Loader
from psycopg.types.range import Range

import reconcile.db.columns
import reconcile.diff.compare
import reconcile.diff.sqlgen
import reconcile.replay.apply
from reconcile.audit import carry
from reconcile.audit.catalog import read_catalog
from reconcile.backfill import BackfillSettings, run_backfill
from reconcile.backfill.errors import TableNotReady
from reconcile.config import Config, PostgresEndpoint, TableSpec
from reconcile.diff import diff_table, start_diff
from reconcile.diff.settings import DiffSettings
from reconcile.replay import ReplaySettings, init_replay, run_replay
from reconcile.replay import pgoutput as po
from reconcile.replay.errors import ReplayError
from reconcile.schema import apply_plan, plan_from_source, record_plan
from reconcile.schema.contract import ContractError, derive_contract, load_contract

TABLE = TableSpec("legacy.holdings", ("id",))

SOURCE_DDL = (
    "CREATE EXTENSION IF NOT EXISTS citext",
    "CREATE EXTENSION IF NOT EXISTS hstore",
    "CREATE SCHEMA legacy",
    "CREATE TYPE legacy.status AS ENUM ('open', 'held', 'closed')",
    "CREATE DOMAIN legacy.positive AS numeric(12,2) CHECK (VALUE > 0)",
    """CREATE TABLE legacy.holdings (
        id uuid PRIMARY KEY,
        tags text[], counts int[], amounts numeric[], grid text[][],
        doc jsonb, status legacy.status NOT NULL, email citext, pos legacy.positive,
        period tstzrange, span int4range, attrs hstore, price money, blob bytea, wait interval,
        ip inet, net cidr, guid uuid, flags bit(4), mask varbit, note xml,
        at timestamptz, day date, ratio float8, amount numeric(18,2), memo text)""",
)

# Column -> (how the target stores it, the conversion the contract must decide).
EXPECTED = {
    "tags": ("json", "array_json"), "counts": ("json", "array_json"), "amounts": ("json", "array_json"),
    "grid": ("json", "array_json"), "doc": ("json", "jsonb_json"), "status": ("text", "text"),
    "email": ("text", "text"), "pos": ("numeric(12,2)", "none"), "period": ("text", "text"),
    "span": ("text", "text"), "attrs": ("text", "text"), "price": ("numeric(38,6)", "money_numeric"),
    "blob": ("bytea", "none"), "wait": ("interval", "none"), "ip": ("text", "inet_text"),
    "net": ("text", "text"), "guid": ("uuid", "none"), "flags": ("text", "text"), "mask": ("text", "text"),
    "note": ("text", "text"), "at": ("timestamp with time zone", "none"), "day": ("date", "none"),
    "ratio": ("double precision", "none"), "amount": ("numeric(18,2)", "none"), "memo": ("text", "none"),
}

COLUMNS = ["id", *EXPECTED]

INSERT = (f"INSERT INTO legacy.holdings ({', '.join(COLUMNS)}) VALUES ("
          + ", ".join(["%s"] * len(COLUMNS)) + ")")


def _row(i: int) -> dict:
    """Row ``i``: every value is a literal the source parses (text forms, so psycopg sends them as they are)."""
    inf = ["infinity", "-infinity", None]
    return {
        "id": str(uuid.UUID(int=i + 1)),
        "tags": ["a", "b c", None, 'q"uote', "comma,brace{}", "", "ü✓"][: 1 + i % 7] if i % 9 else None,
        "counts": [i, None, -i, 2147483647] if i % 4 else [],
        "amounts": ["1.50", "NaN", "Infinity", "-Infinity", None, "-0.000", "12345678901234567890.123456789"][: 1 + i % 7],
        "grid": [["a", None], ["b c", "d"]] if i % 2 else [["x"]],
        "doc": json.dumps({"k": i, "nested": {"z": [1, 2.50, None, True]}, "s": "t\n\"x\""}),
        "status": ["open", "held", "closed"][i % 3],
        "email": f"User{i}@Example.COM",
        "pos": f"{i + 1}.25",
        "period": f"[2024-01-{1 + i % 28:02d} 00:00:00+00,2024-02-01 12:30:00+05)" if i % 5 else "empty",
        "span": f"[{i},{i + 10})" if i % 6 else "(,5]",
        "attrs": f'"k{i}"=>"v {i}", "n"=>NULL' if i % 3 else None,
        "price": f"{i * 1000 + 0.07:.2f}" if i % 4 else "-92233720368547758.08",
        "blob": bytes([i % 256, 0, 255, 92]) if i % 2 else b"",
        "wait": ["1 mon", "30 days", "1 year 2 mons 3 days 04:05:06.789", "-00:00:01", "00:00:00"][i % 5],
        "ip": ["10.0.0.1", "10.0.0.0/8", "::1", "2001:db8::/32", "192.168.1.5/24"][i % 5],
        "net": ["10.0.0.0/8", "2001:db8::/32", "192.168.1.0/24"][i % 3],
        "guid": str(uuid.UUID(int=10**20 + i)),
        "flags": format(i % 16, "04b"),
        "mask": format(i, "b") if i % 5 else "",
        "note": None,  # the embedded server is built without libxml: xml accepts no value but NULL
        "at": inf[i % 3] if i % 4 == 0 else f"2024-03-{1 + i % 28:02d} 10:11:12.123456+00",
        "day": inf[(i + 1) % 3] if i % 4 == 1 else f"2024-05-{1 + i % 28:02d}",
        "ratio": ["NaN", "Infinity", "-Infinity", "-0", "0", "1e-300", "3.141592653589793"][i % 7],
        "amount": f"{i}.{i % 100:02d}",
        "memo": f"memo {i}",
    }


def _values(row: dict) -> list:
    out = []
    for c in COLUMNS:
        v = row[c]
        if isinstance(v, list):
            out.append(_array_literal(v))
        else:
            out.append(v)
    return out


def _array_literal(v) -> str:
    """A PostgreSQL array literal (``{a,"b c",NULL}``), nested for two dimensions."""
    def one(x):
        if isinstance(x, list):
            return _array_literal(x)
        if x is None:
            return "NULL"
        text = str(x)
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "{" + ",".join(one(x) for x in v) + "}"


def _toast_tags(seed: int) -> list[str]:
    rnd = random.Random(seed)
    return ["".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(40)) for _ in range(400)]


def _config(source: str, target: str) -> Config:
    slot = "c_" + psycopg.conninfo.conninfo_to_dict(source)["dbname"].lower()
    diff = DiffSettings(segment_rows=1000, bucket_rows=20, bisection_factor=4, fetch_threshold=10, workers=2,
                        lag_wait_seconds=5, poll_seconds=0.05, balances=False)
    return Config(source=PostgresEndpoint("source", source), target=PostgresEndpoint("target", target),
                  tables=(TABLE,), stages={"replay": ReplaySettings(slot_name=slot), "diff": diff})


@pytest.fixture
def drop_slots(source_db):
    yield
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE database = current_database()")


def run_sql(url: str, *statements, params=None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt, params)


def _apply_schema(source: str, target: str, *, record: bool = True):
    with psycopg.connect(source, autocommit=True) as conn:
        plan = plan_from_source(conn, tables=[TABLE], dialect="postgres")
    with psycopg.connect(target, autocommit=True) as conn:
        apply_plan(conn, plan, phase="pre-load")
        if record:
            record_plan(conn, plan)
    return plan


# --- the oracle: values through psycopg, compared per the contract in plain Python --------------------


class _Text(Loader):
    def load(self, data):
        return bytes(data).decode()


def _oracle_conn(url: str) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET TimeZone TO 'UTC'")
    conn.execute("SET DateStyle TO 'ISO, YMD'")
    conn.execute("SET IntervalStyle TO 'postgres'")
    for name in ("date", "timestamptz", "interval", "money"):  # text: infinity, months, lc_monetary
        conn.adapters.register_loader(name, _Text)
    psycopg.types.json.set_json_loads(lambda s: json.loads(s, parse_float=Decimal), conn)
    return conn


def _fetch(url: str) -> dict[str, dict]:
    with _oracle_conn(url) as conn:
        cur = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM legacy.holdings")
        return {str(r[0]): dict(zip(COLUMNS, r)) for r in cur.fetchall()}


def _json_number(d: Decimal):
    return d if d.is_finite() else str(d).replace("sNaN", "NaN")


def _expected_target(column: str, value, source_conn: psycopg.Connection):
    """What the target must hold for a source value, per the contract (written out here, not derived)."""
    if value is None:
        return None
    if column in ("tags", "counts", "grid"):
        return value  # a JSON array of the same elements (NULL -> null), nested for two dimensions
    if column == "amounts":
        return [None if v is None else _json_number(v) for v in value]  # NaN / Infinity as JSON strings
    if column == "price":
        return Decimal(value.replace("$", "").replace(",", ""))  # money's exact amount
    if column in ("period", "span"):
        return value  # compared after loading the target text back through psycopg's range loader
    if column == "ip":
        return value  # compared as ipaddress values
    if column == "net":
        return value
    return value


def _same(column: str, source_value, target_value, source_conn: psycopg.Connection) -> bool:
    if source_value is None or target_value is None:
        return source_value is None and target_value is None
    if column in ("period", "span"):
        # The target holds the range's text form: psycopg's own range loader reads it back.
        oid = {"period": "tstzrange", "span": "int4range"}[column]
        info = psycopg.types.TypeInfo.fetch(source_conn, oid)
        loader = source_conn.adapters.get_loader(info.oid, psycopg.pq.Format.TEXT)(info.oid, source_conn)
        back = loader.load(target_value.encode())
        return isinstance(back, Range) and back == source_value
    if column == "ip":
        # psycopg loads a full-mask inet as an address, others as an interface: both print as inet prints.
        return ipaddress.ip_interface(target_value) == ipaddress.ip_interface(source_value) \
            and target_value == str(source_value)
    if column == "net":
        return ipaddress.ip_network(target_value) == source_value and target_value == str(source_value)
    if column == "ratio":
        if math.isnan(source_value):
            return math.isnan(target_value)
        return source_value == target_value and math.copysign(1, source_value) == math.copysign(1, target_value)
    return _expected_target(column, source_value, source_conn) == target_value


def assert_target_equals_source(source: str, target: str) -> int:
    src, tgt = _fetch(source), _fetch(target)
    assert set(src) == set(tgt), (set(src) ^ set(tgt))
    with _oracle_conn(source) as sconn:
        for key, row in src.items():
            for column in EXPECTED:
                assert _same(column, row[column], tgt[key][column], sconn), (key, column, row[column], tgt[key][column])
    return len(src)


# --- tests ----------------------------------------------------------------------------------------------


def test_pure_parts_of_the_contract():
    for module in (reconcile.db.columns, reconcile.diff.sqlgen, reconcile.diff.compare, reconcile.replay.apply):
        assert doctest.testmod(module).failed == 0, module.__name__


def _ids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(n)]


def test_every_type_through_backfill_replay_and_diff_under_the_contract(source_db, target_db, drop_slots):
    run_sql(source_db, *SOURCE_DDL)
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.cursor().executemany(INSERT, [_values(_row(i)) for i in range(60)])
        # A TOASTed array: 400 random 40-character strings (about 17 KiB, not compressible enough to stay inline).
        conn.execute("UPDATE legacy.holdings SET tags = %s WHERE id = %s", (_array_literal(_toast_tags(1)), _ids(1)[0]))
    plan = _apply_schema(source_db, target_db)

    # The plan decided each column once; the stored contract says the same, and the target has those types.
    with psycopg.connect(source_db) as s, psycopg.connect(target_db) as t:
        contract = load_contract(s, t, TABLE)
    assert contract.stored
    got = {c.name: (c.target_type, c.conversion) for c in contract.columns if c.name != "id"}
    assert got == EXPECTED
    assert not contract.refusals
    # Without the stored plan, the two catalogs give the same contract (what a hand-made target gets).
    derived = derive_contract(TABLE.name, contract.source_columns, contract.target_columns, TABLE.key)
    assert [(c.name, c.conversion, c.target_type) for c in derived.columns] == \
        [(c.name, c.conversion, c.target_type) for c in contract.columns] and not derived.stored
    assert {c["column"]: c["read_expression"] for c in plan.to_dict()["column_contract"]}["tags"] == "array_to_json(tags)"
    assert "array_to_json(tags)" in plan.render()

    cfg = _config(source_db, target_db)
    init_replay(cfg)
    backfill = run_backfill(cfg, BackfillSettings(replay=True, chunk_rows=25, workers=2, slot_name=cfg.replay.slot_name))
    assert backfill.status == "done" and backfill.rejected == 0 and backfill.rows == 60, backfill.to_dict()

    # Changes under the contract: inserts, updates of every converted column, deletes, and an update that
    # leaves the TOASTed array unchanged (pgoutput sends the unchanged-TOAST marker for it).
    ids = _ids(60)
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.cursor().executemany(INSERT, [_values(_row(i)) for i in range(60, 80)])
        for i in range(1, 40, 3):
            new = _values(_row(i + 7))
            sets = ", ".join(f"{c} = %s" for c in COLUMNS[1:])
            conn.execute(f"UPDATE legacy.holdings SET {sets} WHERE id = %s", [*new[1:], ids[i]])
        conn.execute("DELETE FROM legacy.holdings WHERE id = ANY(%s::uuid[])", ([ids[5], ids[50]],))
        conn.execute("UPDATE legacy.holdings SET amount = amount + 1, memo = 'toast kept' WHERE id = %s", (ids[0],))
    with psycopg.connect(source_db, autocommit=True) as conn:
        changes = conn.execute("SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', "
                               "'1', 'publication_names', %s)", (cfg.replay.slot_name, cfg.replay.publication)).fetchall()
    updates = [m for m in (po.decode(bytes(r[0])) for r in changes) if isinstance(m, po.Update)]
    assert any(po.UNCHANGED in u.new for u in updates), "the TOASTed array must arrive as unchanged-TOAST"

    replay = run_replay(cfg, until_caught_up=True)
    assert replay.status == "done" and replay.caught_up and replay.dead_letters_open == 0, replay.to_dict()

    # Target == source, by an oracle that uses none of our SQL.
    assert assert_target_equals_source(source_db, target_db) == 78
    with psycopg.connect(target_db) as conn:
        toast = conn.execute("SELECT tags, memo FROM legacy.holdings WHERE id = %s", (ids[0],)).fetchone()
    assert toast == (_toast_tags(1), "toast kept")

    # The diff agrees: green, every column compared.
    run_id = start_diff(cfg)
    green = diff_table(cfg, run_id, TABLE.name)
    assert green["status"] == "green" and green["rows_source"] == green["rows_target"] == 78, green

    # Corrupt one value of each converted (and each special) type on the target, each on its own row.
    corrupt = {
        "tags": "'[\"a\", \"b\"]'", "counts": "'[1, 2]'", "amounts": "'[\"NaN\", 2]'", "grid": "'[[\"a\"]]'",
        "doc": "'{\"k\": -1}'", "status": "CASE status WHEN 'open' THEN 'held' ELSE 'open' END", "email": "'other@example.com'", "pos": "99.99",
        "period": "'empty'", "span": "'[1,2)'", "attrs": "'\"x\"=>\"y\"'", "price": "0.01", "blob": "'\\xdead'",
        "wait": "'30 days'", "ip": "'10.0.0.1/32'", "net": "'10.9.0.0/16'", "guid": "gen_random_uuid()",
        "flags": "'1111'", "mask": "'0'", "note": "'<x/>'", "at": "'-infinity'", "day": "'infinity'",
        "ratio": "'-0'", "amount": "0.01",
    }
    rows = [i for i in range(60, 80)] + [i for i in range(2, 60) if i not in (5, 50) and i % 3 != 1]
    victims = {}
    with psycopg.connect(target_db, autocommit=True) as conn:
        for (column, value), i in zip(corrupt.items(), rows):
            key = str(uuid.UUID(int=i + 1))
            before = conn.execute(f"SELECT {column}::text FROM legacy.holdings WHERE id = %s", (key,)).fetchone()[0]
            conn.execute(f"UPDATE legacy.holdings SET {column} = {value} WHERE id = %s", (key,))
            after = conn.execute(f"SELECT {column}::text FROM legacy.holdings WHERE id = %s", (key,)).fetchone()[0]
            if before != after:  # a corruption that happens to equal the source's value is no corruption
                victims[key] = column
    assert sorted(victims.values()) == sorted(corrupt)  # every corruption really changed a value
    run_id = start_diff(cfg, lag_wait_seconds=0)
    red = diff_table(cfg, run_id, TABLE.name)
    with psycopg.connect(target_db) as conn:
        found = {json.loads(k)[0]: json.loads(c) for k, c in conn.execute(
            "SELECT row_key, columns FROM reconcile.diff_findings WHERE run_id = %s", (run_id,))}
    assert red["status"] == "red" and red["changed"] == len(victims), red
    assert found == {k: [c] for k, c in victims.items()}


def test_the_diff_fetch_shows_infinity_and_nan_without_errors(source_db, target_db):
    ddl = ("CREATE SCHEMA app", "CREATE TABLE app.t (id int PRIMARY KEY, at timestamptz, day date, f float8, "
                                "w interval)")
    run_sql(source_db, *ddl)
    run_sql(target_db, *ddl)
    rows = "INSERT INTO app.t VALUES (1, 'infinity', '-infinity', 'NaN', '1 mon'), (2, '-infinity', 'infinity', '-0', '1 day')"
    run_sql(source_db, rows)
    run_sql(target_db, rows.replace("'1 day'", "'24:00:00'"), "UPDATE app.t SET at = 'infinity' WHERE id = 2")
    cfg = Config(source=PostgresEndpoint("source", source_db), target=PostgresEndpoint("target", target_db),
                 tables=(TableSpec("app.t", ("id",)),), stages={"diff": DiffSettings(lag_wait_seconds=0, balances=False)})
    run_id = start_diff(cfg)
    result = diff_table(cfg, run_id, "app.t")
    with psycopg.connect(target_db) as conn:
        (cols, src, tgt), = conn.execute("SELECT columns, source_values, target_values FROM reconcile.diff_findings "
                                         "WHERE run_id = %s", (run_id,)).fetchall()
    # Row 1: NaN on both sides and infinity dates are equal; row 2: -infinity vs infinity and 1 day vs 24:00:00 differ.
    assert result["status"] == "red" and result["changed"] == 1
    assert sorted(json.loads(cols)) == ["at", "w"]
    assert json.loads(src)["at"] == "-infinity" and json.loads(tgt)["at"] == "infinity"
    assert json.loads(src)["f"] == "-0.0"


def test_values_the_pipeline_cannot_carry_are_refused_before_any_copy(source_db, target_db):
    run_sql(source_db, "CREATE SCHEMA legacy",
            "CREATE TABLE legacy.prices (id int PRIMARY KEY, px numeric(12,4), plain numeric, ok numeric[])",
            "INSERT INTO legacy.prices VALUES (1, 'NaN', 1, '{NaN,Infinity}'), (2, 3.5, 'Infinity', NULL), (3, 1, 2, '{1}')")
    spec = TableSpec("legacy.prices", ("id",))
    with psycopg.connect(source_db, autocommit=True) as conn:
        catalog = read_catalog(conn, ["legacy"])
        special = carry.special_numeric_scan(conn, catalog, chunk_rows=2)
        plan = plan_from_source(conn, tables=[spec], dialect="postgres")
    # NaN in a numeric(p,s) column and infinity in a plain numeric: no DSQL numeric holds them. Inside an
    # array they are carried (JSON strings), so ``ok`` is not refused.
    assert special == {"legacy.prices.px": (1, 0), "legacy.prices.plain": (0, 1)}
    codes = {f.id for f in plan.findings}
    assert "numeric_special:legacy.prices.px" in codes
    assert "numeric_unfit:legacy.prices.plain" in codes  # the scan's own finding for infinity in a plain numeric
    assert {c.name: c.refused is not None for c in plan.contract()} == {"id": False, "px": True, "plain": True,
                                                                       "ok": False}
    with psycopg.connect(target_db, autocommit=True) as conn:
        apply_plan(conn, plan, phase="pre-load")
        record_plan(conn, plan)
    cfg = Config(source=PostgresEndpoint("source", source_db), target=PostgresEndpoint("target", target_db),
                 tables=(spec,))
    with pytest.raises(TableNotReady, match=r"refuses legacy\.prices\.px: it holds 1 NaN value.*does not start"):
        run_backfill(cfg, BackfillSettings(replay=False))
    with psycopg.connect(target_db) as conn:
        assert conn.execute("SELECT count(*) FROM legacy.prices").fetchone() == (0,)  # nothing was copied


def test_a_stored_plan_that_no_longer_matches_the_source_is_refused_and_no_plan_is_derived(source_db, target_db):
    ddl = "CREATE TABLE app.t (id int PRIMARY KEY, tags text[], st app.s, price money)"
    run_sql(source_db, "CREATE SCHEMA app", "CREATE TYPE app.s AS ENUM ('a', 'b')", ddl)
    spec = TableSpec("app.t", ("id",))
    # No stored plan: a target made by hand with the types the plan would choose gives the same contract.
    run_sql(target_db, "CREATE SCHEMA app",
            "CREATE TABLE app.t (id int PRIMARY KEY, tags json, st text, price numeric(38,6))")
    with psycopg.connect(source_db) as s, psycopg.connect(target_db) as t:
        derived = load_contract(s, t, spec)
    assert not derived.stored and "derived" in derived.origin
    assert {c.name: c.conversion for c in derived.columns} == {"id": "none", "tags": "array_json", "st": "text",
                                                              "price": "money_numeric"}
    # A stored plan, then the source changes under it: refused with one sentence.
    with psycopg.connect(source_db, autocommit=True) as conn:
        plan = plan_from_source(conn, tables=[spec], dialect="postgres")
    with psycopg.connect(target_db, autocommit=True) as conn:
        record_plan(conn, plan)
    assert {(c.name, c.conversion) for c in plan.contract()} == {(c.name, c.conversion) for c in derived.columns}
    run_sql(source_db, "ALTER TABLE app.t ALTER COLUMN tags TYPE varchar(10)[]")
    with psycopg.connect(source_db) as s, psycopg.connect(target_db) as t:
        with pytest.raises(ContractError, match=r"made for source type text\[\], but the source now has "
                                                r"character varying\(10\)\[\]; run `reconcile schema apply` again"):
            load_contract(s, t, spec)
    cfg = Config(source=PostgresEndpoint("source", source_db), target=PostgresEndpoint("target", target_db),
                 tables=(spec,), stages={"replay": ReplaySettings(require_backfill=False)})
    with pytest.raises(TableNotReady, match="made for source type"):
        run_backfill(cfg, BackfillSettings(replay=False))
    from reconcile.replay.apply import inspect_target
    with psycopg.connect(source_db) as s, psycopg.connect(target_db) as t:
        with pytest.raises(ReplayError, match="made for source type"):
            inspect_target(t, [spec], source=s)


def test_generated_expectations_run_on_each_side_with_that_sides_types(source_db, target_db):
    from reconcile.checks import generate_suite, run_checks
    from reconcile.config import load_config

    run_sql(source_db, "CREATE SCHEMA app", "CREATE TYPE app.s AS ENUM ('a', 'b', 'c')",
            "CREATE TABLE app.t (id int PRIMARY KEY, st app.s NOT NULL CHECK (st <> 'c'), "
            "tags text[] UNIQUE CHECK (cardinality(tags) < 4), price money CHECK (price > '0'::money))",
            "INSERT INTO app.t SELECT g, (ARRAY['a','b'])[1 + g % 2]::app.s, ARRAY['x' || g], g FROM generate_series(1, 30) g")
    spec = TableSpec("app.t", ("id",))
    with psycopg.connect(source_db, autocommit=True) as conn:
        plan = plan_from_source(conn, tables=[spec], dialect="postgres")
    assert {"app.t.t_tags_check", "app.t.t_price_check", "app.t.t_tags_key"} <= {lo.object for lo in plan.left_out}
    with psycopg.connect(target_db, autocommit=True) as conn:
        apply_plan(conn, plan, phase="pre-load")
        record_plan(conn, plan)
    stages = load_config(None, environ={"RECONCILE__CHECKS__SUITES": "generated"}).stages
    cfg = Config(source=PostgresEndpoint("source", source_db), target=PostgresEndpoint("target", target_db),
                 tables=(spec,), stages=stages)
    run_backfill(cfg, BackfillSettings(replay=False))
    with psycopg.connect(source_db) as s, psycopg.connect(target_db) as t:
        checks = generate_suite(cfg, source=s, target=t)
    sides = {(c.name, c.sides) for c in checks}
    assert ("unique:tags", ("source",)) in sides                    # json has no equality on the target
    assert ("check:t_tags_check", ("source",)) in sides             # cardinality() of a json array: source only
    assert ("check:t_price_check", ("source",)) in sides            # compares money: source only
    assert {("check:t_st_check", ("source",)), ("check:t_st_check", ("target",))} <= sides  # enum cast rewritten
    target_st = next(c for c in checks if c.name == "check:t_st_check" and c.sides == ("target",))
    assert "app.s" not in json.dumps(target_st.kwargs)
    result = run_checks(cfg)
    assert result.status == "green", result.to_dict(results=True)
    assert {o.side for o in result.outcomes if o.check.name == "check:t_st_check"} == {"source", "target"}
    # A violation on the target is still found there, through the rewritten expression.
    run_sql(target_db, "ALTER TABLE app.t DROP CONSTRAINT t_st_check", "UPDATE app.t SET st = 'c' WHERE id = 1")
    red = run_checks(cfg)
    assert [(o.side, o.check.name) for o in red.failed] == [("target", "check:t_st_check")]


def test_a_key_whose_type_would_change_is_an_audit_blocker_and_refused(source_db, target_db):
    from reconcile.audit import AuditOptions, run_audit

    run_sql(source_db, "CREATE SCHEMA app", "CREATE TYPE app.code AS ENUM ('x', 'y')",
            "CREATE TABLE app.k (code app.code PRIMARY KEY, n int)", "INSERT INTO app.k VALUES ('x', 1), ('y', 2)")
    spec = TableSpec("app.k", ("code",))
    with psycopg.connect(source_db, autocommit=True) as conn:
        report = run_audit(conn, tables=[spec], options=AuditOptions(lint=False, workload=False))
        plan = plan_from_source(conn, tables=[spec], dialect="postgres")
    blocker = next(f for f in report.findings if f.code == "key_conversion")
    assert blocker.severity.value == "blocker" and blocker.object == "app.k.code"
    assert "key_conversion:app.k.code" in {f.id for f in plan.findings}
    with psycopg.connect(target_db, autocommit=True) as conn:
        apply_plan(conn, plan, phase="pre-load")
        record_plan(conn, plan)
    cfg = Config(source=PostgresEndpoint("source", source_db), target=PostgresEndpoint("target", target_db),
                 tables=(spec,))
    with pytest.raises(TableNotReady, match=r"refuses app\.k\.code: key column code would be stored as its text form"):
        run_backfill(cfg, BackfillSettings(replay=False))
