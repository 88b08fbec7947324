"""A second legacy ledger, unlike the demo, through every stage with no manual step (issue 13, "Done means").

The ``treasury`` ledger has its own schema, table and column names, no currency column (one currency,
reported as CHF), uuid keys (``holders``), a composite key with a text column (``vouchers``: book, voucher_no;
books sort differently under the source's en_US collation and the target's C collation), and a table with no
primary key at all (``legs``: keyed by the configured (voucher_ref, leg_no), unique and not null by a data
check). ``holders`` carries every type issue 13 lists: arrays of text/int/numeric with NULL elements and two
dimensions (NaN and +-Infinity inside numeric arrays), jsonb, enum, domain, ranges, citext, hstore, money,
bytea, interval, inet/cidr, uuid, bit/varbit, xml (NULL only when the server is built without libxml, as the
embedded one is), timestamptz and date with +-infinity, float8/float4 NaN/+-Inf/-0; one holder has a TOASTed array and text that later updates leave unchanged.

Only public entry points run it: the CLI (typer's CliRunner, and one real subprocess) and the
``reconcile.pipeline`` steps the DAGs call. The order is the runbook's: config check -> audit -> schema
plan and apply (bare: pre-load) -> replay init (replica identity for the keyless table) -> backfill while a
writer thread keeps writing -> a source transaction of 3,320 rows (over DSQL's 3,000) -> replay ticks under
the live writes -> final catch-up -> schema apply (bare: now both phases) -> diff -> check. The config states
``[replay] oversized_policy = "split"``: the big transaction lands in budget-sized pieces recorded as one
non-atomic window, never dead-lettered, never lost.

Then an oracle that uses none of our SQL (rows fetched through psycopg from both sides, compared in Python
per the README's column contract) checks target == source; one value of each converted (and special) type
is corrupted on the target and the diff, run as a real ``reconcile diff`` process with the replay stopped
behind the source, names each one with its column, waits for the watermark once in all and says why. NaN
in a numeric column (not an array) stays an audit blocker: shown on a small table of its own.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import math
import os
import random
import re
import string
import subprocess
import sys
import threading
import uuid
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg.adapt import Loader
from psycopg.types.datetime import DateLoader, TimestamptzLoader
from psycopg.types.range import Range
from typer.testing import CliRunner

from reconcile.cli import app
from reconcile.config import load_config
from reconcile.pipeline.backfill import backfill_chunk, backfill_plan, backfill_summary
from reconcile.pipeline.diff import diff_balances_step, diff_finish, diff_one_table, diff_start
from reconcile.pipeline.replay import replay_status, replay_tick
from reconcile.replay import pgoutput as po

HOLDERS, VOUCHERS, LEGS = "treasury.holders", "treasury.vouchers", "treasury.legs"

SOURCE_DDL = (
    "CREATE EXTENSION IF NOT EXISTS citext",
    "CREATE EXTENSION IF NOT EXISTS hstore",
    "CREATE SCHEMA treasury",
    "CREATE TYPE treasury.tier AS ENUM ('bronze', 'silver', 'gold')",
    "CREATE DOMAIN treasury.cap AS numeric(14,2) CHECK (VALUE >= 0)",
    """CREATE TABLE treasury.holders (
        holder_id uuid PRIMARY KEY, handle citext NOT NULL, tier treasury.tier NOT NULL,
        "position" numeric(20,4) NOT NULL, credit_cap treasury.cap,
        tags text[], limits int[], rates numeric[], grid text[], profile jsonb, attrs hstore,
        active tstzrange, seats int4range, fee money, avatar bytea, grace interval, last_ip inet, subnet cidr,
        ext_ref uuid, flags bit(8), mask varbit, remarks xml, opened_at timestamptz, review_on date,
        score float8, weight real, bio text)""",
    """CREATE TABLE treasury.vouchers (
        book text NOT NULL, voucher_no bigint NOT NULL, voucher_ref uuid NOT NULL UNIQUE,
        booked_on date NOT NULL, posted timestamptz, memo text, PRIMARY KEY (book, voucher_no))""",
    """CREATE TABLE treasury.legs (
        voucher_ref uuid NOT NULL REFERENCES treasury.vouchers (voucher_ref), leg_no smallint NOT NULL,
        holder_id uuid NOT NULL REFERENCES treasury.holders, delta numeric(20,4) NOT NULL,
        value_date date NOT NULL, memo text)""",
)

TYPED = ["handle", "tier", "credit_cap", "tags", "limits", "rates", "grid", "profile", "attrs", "active", "seats",
         "fee", "avatar", "grace", "last_ip", "subnet", "ext_ref", "flags", "mask", "remarks", "opened_at",
         "review_on", "score", "weight", "bio"]
HOLDER_COLUMNS = ["holder_id", "position", *TYPED]
VOUCHER_COLUMNS = ["book", "voucher_no", "voucher_ref", "booked_on", "posted", "memo"]
LEG_COLUMNS = ["voucher_ref", "leg_no", "holder_id", "delta", "value_date", "memo"]

# Column -> (the target type the contract must choose, its conversion); the README's table, written out.
CONTRACT = {
    "holder_id": ("uuid", "none"), "position": ("numeric(20,4)", "none"), "handle": ("text", "text"),
    "tier": ("text", "text"), "credit_cap": ("numeric(14,2)", "none"), "tags": ("json", "array_json"),
    "limits": ("json", "array_json"), "rates": ("json", "array_json"), "grid": ("json", "array_json"),
    "profile": ("json", "jsonb_json"), "attrs": ("text", "text"), "active": ("text", "text"),
    "seats": ("text", "text"), "fee": ("numeric(38,6)", "money_numeric"), "avatar": ("bytea", "none"),
    "grace": ("interval", "none"), "last_ip": ("text", "inet_text"), "subnet": ("text", "text"),
    "ext_ref": ("uuid", "none"), "flags": ("text", "text"), "mask": ("text", "text"), "remarks": ("text", "text"),
    "opened_at": ("timestamp with time zone", "none"), "review_on": ("date", "none"),
    "score": ("double precision", "none"), "weight": ("real", "none"), "bio": ("text", "none"),
}

BOOKS = ["ap", "AR", "Gl-Main", "zz", "Été", "b 2"]
TAGS = ["a", "b c", None, 'q"uote', "comma,brace{}", "", "ü✓", "back\\slash", "NULL"]
RATES = ["1.50", "NaN", "Infinity", "-Infinity", None, "-0.000", "12345678901234567890.123456789"]
INTERVALS = ["1 mon", "30 days", "1 year 2 mons 3 days 04:05:06.789", "-00:00:01", "00:00:00"]
INETS = ["10.0.0.1", "10.0.0.0/8", "::1", "2001:db8::1/64", "192.168.1.5/24"]
CIDRS = ["10.0.0.0/8", "2001:db8::/32", "192.168.1.0/24"]
FLOATS = ["NaN", "Infinity", "-Infinity", "-0", "0", "1e-300", "3.141592653589793"]
REALS = ["NaN", "Infinity", "-Infinity", "-0", "1.5", "3.4e38"]

SEED_HOLDERS, SEED_VOUCHERS = 120, 400
BULK_HOLDERS = range(100, 120)       # only the bulk transaction touches these (no lock waits with the writer)
BULK_VOUCHERS = 1_100                # 1,100 vouchers + 2,200 legs + 20 holders = 3,320 rows in one transaction
LIVE_TXNS = 25                       # writer commits the replay must see while it runs
# The writer's first typed updates use these variants of typed(): between them they carry every special value
# through the replay (+-infinity in both date columns, NaN/+-Infinity/-0 in both float columns, NaN/+-Infinity
# and two dimensions in a numeric array, a 2-d int array, NULL elements, empty ranges and an unbounded one,
# money's minimum, an empty bytea, varbit and hstore); each updates its own holder, so it stays the final value.
REPLAYED_SPECIALS = (360, 121, 21, 8, 4)


def array_literal(values) -> str:
    """A PostgreSQL array literal (``{a,"b c",NULL}``), nested for more dimensions."""
    def one(x):
        if isinstance(x, list):
            return array_literal(x)
        if x is None:
            return "NULL"
        return '"' + str(x).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "{" + ",".join(one(x) for x in values) + "}"


def typed(i: int, xml_ok: bool) -> dict:
    """Values of every typed holder column for variant ``i``, as literals the source parses."""
    rnd = random.Random(i)
    return {
        "handle": f"Holder{i}@Example.COM",
        "tier": ("bronze", "silver", "gold")[i % 3],
        "credit_cap": None if i % 5 == 0 else f"{i * 37 % 100000}.{i % 100:02d}",
        "tags": None if i % 9 == 0 else array_literal(TAGS[: 1 + i % len(TAGS)]),
        "limits": array_literal([[i, None], [3, -4]] if i % 7 == 3 else [i, None, -i, 2147483647][: i % 5]),
        "rates": array_literal([["1.5", "NaN"], ["Infinity", None]] if i % 6 == 1 else RATES[: 1 + i % 7]),
        "grid": array_literal([["a", None], ["b c", "d"]]) if i % 2 else array_literal([["x"]]),
        "profile": ('{"k": %d, "amt": 12345678901234567890.123456789, "nested": {"z": [1, 2.50, null, true]}, '
                    '"s": "t\\n\\"x\\"", "ü": "✓"}' % i) if i % 10 else None,
        "attrs": None if i % 4 == 0 else (f'"k{i}"=>"v {i}", "n"=>NULL' if i % 3 else ""),
        "active": ("empty", "(,2024-06-01 00:00:00+00)",
                   f"[2024-01-{1 + i % 28:02d} 00:00:00+00,2024-02-01 12:30:00+05)")[min(i % 5, 2)],
        "seats": ("(,5]", "empty", f"[{i},{i + 10})")[min(i % 6, 2)],
        "fee": "-92233720368547758.08" if i % 8 == 0 else f"{i * 1000 + 0.07:.2f}",
        "avatar": b"" if i % 4 == 0 else bytes([i % 256, 0, 255, 92]) + rnd.randbytes(8),
        "grace": INTERVALS[i % len(INTERVALS)],
        "last_ip": INETS[i % len(INETS)],
        "subnet": CIDRS[i % len(CIDRS)],
        "ext_ref": str(uuid.UUID(int=rnd.getrandbits(128))),
        "flags": format(i % 256, "08b"),
        "mask": format(i, "b") if i % 5 else "",
        "remarks": f'<note n="{i}">x &amp; y</note>' if xml_ok and i % 2 else None,
        "opened_at": (("infinity", "-infinity", None)[i % 3] if i % 4 == 0
                      else f"2024-03-{1 + i % 28:02d} 10:11:12.123456+00"),
        "review_on": ("infinity", "-infinity")[i // 4 % 2] if i % 4 == 1 else f"2024-05-{1 + i % 28:02d}",
        "score": FLOATS[i % len(FLOATS)],
        "weight": REALS[i % len(REALS)],
        "bio": f"holder {i}",
    }


def toast_tags() -> str:
    rnd = random.Random(13)
    return array_literal(["".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(40))
                          for _ in range(400)])


def toast_bio() -> str:
    rnd = random.Random(14)
    return "".join(rnd.choice(string.printable) for _ in range(30_000))


INSERT_HOLDER = (f'INSERT INTO treasury.holders (holder_id, "position", {", ".join(TYPED)}) VALUES ('
                 + ", ".join(["%s"] * (2 + len(TYPED))) + ")")
UPDATE_TYPED = f"UPDATE treasury.holders SET {', '.join(f'{c} = %s' for c in TYPED)} WHERE holder_id = %s"
INSERT_VOUCHER = "INSERT INTO treasury.vouchers VALUES (%s, %s, %s, %s, %s, %s)"
INSERT_LEG = "INSERT INTO treasury.legs VALUES (%s, %s, %s, %s, %s, %s)"
MOVE = 'UPDATE treasury.holders SET "position" = "position" + %s WHERE holder_id = %s'


def holder_id(i: int) -> uuid.UUID:
    return uuid.UUID(int=(i + 1) * 7919, version=4)


def seed(conn: psycopg.Connection, xml_ok: bool) -> None:
    """Holders with every type, balanced vouchers of 2-3 legs; each position is the sum of its legs."""
    rng = random.Random(2024)
    for stmt in SOURCE_DDL:
        conn.execute(stmt)
    position = {i: Decimal(0) for i in range(SEED_HOLDERS)}
    vouchers, legs = [], []
    for v in range(SEED_VOUCHERS):
        ref = uuid.UUID(int=rng.getrandbits(128), version=4)
        day = f"2025-0{1 + v % 6}-{1 + v % 28:02d}"
        posted = ("infinity", None)[v % 2] if v % 50 == 0 else f"{day} 09:{v % 60:02d}:00+02"
        vouchers.append((BOOKS[v % len(BOOKS)], v, ref, day, posted, None if v % 3 else f"seed {v}"))
        amounts = [Decimal(rng.randint(1, 10**7)) / 10000 for _ in range(rng.choice((1, 2)))]
        amounts.append(-sum(amounts))
        for n, amount in enumerate(amounts, start=1):
            h = rng.randrange(BULK_HOLDERS.start)
            position[h] += amount
            legs.append((ref, n, holder_id(h), amount, day, None))
    with conn.transaction():
        for i in range(SEED_HOLDERS):
            values = typed(i, xml_ok)
            if i == 0:  # the TOASTed holder: an array and a text far over the TOAST threshold
                values |= {"tags": toast_tags(), "bio": toast_bio()}
            conn.execute(INSERT_HOLDER, [holder_id(i), position[i], *values.values()])
        conn.cursor().executemany(INSERT_VOUCHER, vouchers)
        conn.cursor().executemany(INSERT_LEG, legs)


class Writer(threading.Thread):
    """The live workload: business transactions on the source until stopped (inserts, updates of every typed
    column, deletes, updates of the keyless table, and positions moved on the TOASTed holder)."""

    def __init__(self, url: str, xml_ok: bool) -> None:
        super().__init__(daemon=True)
        self.url, self.xml_ok = url, xml_ok
        self.rng = random.Random(7)
        self.stop = threading.Event()
        self.cond = threading.Condition()
        self.commits = 0
        self.error: BaseException | None = None
        self.regular = [holder_id(i) for i in range(1, BULK_HOLDERS.start)]
        self.fresh: list[uuid.UUID] = []
        self.typed_updates: list[tuple[uuid.UUID, int]] = []
        self.mine: list[tuple[uuid.UUID, uuid.UUID, uuid.UUID, Decimal]] = []

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                n = 0
                while not self.stop.is_set():
                    with conn.transaction():
                        self.business(conn, n)
                    n += 1
                    with self.cond:
                        self.commits += 1
                        self.cond.notify_all()
                    self.stop.wait(0.005)  # pacing, not synchronisation
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc
        finally:
            with self.cond:
                self.cond.notify_all()

    def wait_for(self, commits: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.commits >= commits or self.error is not None or not self.is_alive(),
                               timeout=120)
        assert self.error is None, f"the writer failed: {self.error!r}"
        assert self.commits >= commits, f"the writer made {self.commits} commits, expected {commits}"

    def business(self, conn: psycopg.Connection, n: int) -> None:
        rng = self.rng
        a = holder_id(0) if n % 3 == 0 else rng.choice(self.regular)   # every third moves the TOASTed holder
        b = rng.choice([h for h in self.regular if h != a])
        amount = Decimal(rng.randint(1, 10**8)) / 10000
        ref = uuid.UUID(int=rng.getrandbits(128), version=4)
        day = f"2025-0{1 + n % 9}-{1 + n % 28:02d}"
        conn.execute(INSERT_VOUCHER, (BOOKS[n % len(BOOKS)], 1_000_000 + n, ref, day,
                                      "-infinity" if n % 13 == 0 else f"{day} 17:00:00+00", f"live {n}"))
        conn.execute(INSERT_LEG, (ref, 1, a, amount, day, None))
        conn.execute(INSERT_LEG, (ref, 2, b, -amount, day, None))
        conn.execute(MOVE, (amount, a))
        conn.execute(MOVE, (-amount, b))
        self.mine.append((ref, a, b, amount))
        if n % 5 == 4:   # every typed column of a holder changes (never the TOASTed one), one holder after another
            k = len(self.typed_updates)
            variant = REPLAYED_SPECIALS[k] if k < len(REPLAYED_SPECIALS) else 1_000 + n
            holder = self.regular[k % len(self.regular)]
            conn.execute(UPDATE_TYPED, [*typed(variant, self.xml_ok).values(), holder])
            self.typed_updates.append((holder, variant))
        if n % 7 == 6:   # a new holder with every type
            new = uuid.UUID(int=rng.getrandbits(128), version=4)
            conn.execute(INSERT_HOLDER, [new, 0, *typed(2_000 + n, self.xml_ok).values()])
            self.fresh.append(new)
        if n % 11 == 10 and self.fresh:   # a holder without legs goes away
            conn.execute("DELETE FROM treasury.holders WHERE holder_id = %s", (self.fresh.pop(0),))
        if n % 6 == 5:   # the keyless table: an update found by its configured key (replica identity full)
            leg_ref = rng.choice(self.mine)[0]
            conn.execute("UPDATE treasury.legs SET memo = %s WHERE voucher_ref = %s AND leg_no = 2",
                         (f"corrected {n}", leg_ref))
        if n % 9 == 8 and len(self.mine) > 4:   # a voucher cancelled: its legs, itself, the positions back
            ref_x, a_x, b_x, amount_x = self.mine.pop(rng.randrange(len(self.mine) - 2))
            conn.execute("DELETE FROM treasury.legs WHERE voucher_ref = %s", (ref_x,))
            conn.execute("DELETE FROM treasury.vouchers WHERE voucher_ref = %s", (ref_x,))
            conn.execute(MOVE, (-amount_x, a_x))
            conn.execute(MOVE, (amount_x, b_x))


def bulk_close(url: str) -> tuple[int, int]:
    """One source transaction of 3,320 rows (over DSQL's 3,000): returns (its xid, rows changed)."""
    rng = random.Random(99)
    vouchers, legs = [], []
    position = dict.fromkeys(BULK_HOLDERS, Decimal(0))
    for v in range(BULK_VOUCHERS):
        ref = uuid.UUID(int=rng.getrandbits(128), version=4)
        a, b = rng.sample(list(BULK_HOLDERS), 2)
        amount = Decimal(rng.randint(1, 10**6)) / 100
        vouchers.append(("BULK", v, ref, "2025-12-31", "2025-12-31 23:59:59+00", "year-end close"))
        legs += [(ref, 1, holder_id(a), amount, "2025-12-31", None),
                 (ref, 2, holder_id(b), -amount, "2025-12-31", None)]
        position[a] += amount
        position[b] -= amount
    with psycopg.connect(url) as conn:
        with conn.transaction():
            (xid,) = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
            conn.cursor().executemany(INSERT_VOUCHER, vouchers)
            conn.cursor().executemany(INSERT_LEG, legs)
            conn.cursor().executemany(MOVE, [(amount, holder_id(h)) for h, amount in position.items()])
    return xid, len(vouchers) + len(legs) + len(position)


TABLES_TOML = """
[[tables]]
name = "treasury.holders"
key = ["holder_id"]
role = "accounts"
account_column = "holder_id"
balance_column = "position"
currency_column = ""

[[tables]]
name = "treasury.vouchers"
key = ["book", "voucher_no"]
role = "transactions"
transaction_column = "voucher_ref"

[[tables]]
name = "treasury.legs"
key = ["voucher_ref", "leg_no"]
role = "entries"
account_column = "holder_id"
amount_column = "delta"
currency_column = ""
transaction_column = "voucher_ref"
"""


def write_config(path: Path, source: str, target: str, slot: str, tables: str = TABLES_TOML) -> Path:
    path.write_text(
        f'[source]\nkind = "postgres"\nconninfo = "{source}"\n\n'
        f'[target]\nkind = "postgres"\nconninfo = "{target}"\n\n'
        f'[replay]\nslot_name = "{slot}"\npublication = "{slot}_pub"\npoll_interval = 0.1\n'
        'oversized_policy = "split"\n\n'   # the policy for a source transaction over DSQL's 3,000 rows
        '[diff]\nsegment_rows = 500\nbucket_rows = 32\nfetch_threshold = 40\nlag_wait_seconds = 3\npoll_seconds = 0.05\n'
        f'currency = "CHF"\ndate_column = "value_date"\nreport_dir = "{path.parent / "reports"}"\n\n'
        '[checks]\nidempotency_column = "voucher_ref"\nallow_negative_balances = true\n' + tables)
    return path


# --- the oracle: rows through psycopg, compared in plain Python per the README's column contract -----------


class _Text(Loader):
    def load(self, data):
        return bytes(data).decode()


class _InfinityTimestamptz(TimestamptzLoader):
    def load(self, data):
        return bytes(data).decode() if bytes(data) in (b"infinity", b"-infinity") else super().load(data)


class _InfinityDate(DateLoader):
    def load(self, data):
        return bytes(data).decode() if bytes(data) in (b"infinity", b"-infinity") else super().load(data)


def oracle_conn(url: str) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET IntervalStyle TO 'postgres'")
    conn.adapters.register_loader("timestamptz", _InfinityTimestamptz)
    conn.adapters.register_loader("date", _InfinityDate)
    for name in ("interval", "money"):  # interval: months are not days; money: the text form, parsed below
        conn.adapters.register_loader(name, _Text)
    psycopg.types.json.set_json_loads(lambda s: json.loads(s, parse_float=Decimal), conn)
    return conn


def fetch(url: str, table: str, columns: list[str], key: list[str]) -> dict[tuple, dict]:
    cols = ", ".join(f'"{c}"' for c in columns)
    with oracle_conn(url) as conn:
        rows = conn.execute(f"SELECT {cols} FROM {table}").fetchall()
    out = {}
    for r in rows:
        row = dict(zip(columns, r))
        k = tuple(str(row[c]) for c in key)
        assert k not in out, f"{table}: key {k} twice"
        out[k] = row
    return out


def _json_number(d):
    if isinstance(d, list):
        return [_json_number(x) for x in d]
    if isinstance(d, Decimal) and not d.is_finite():
        return "NaN" if d.is_nan() else str(d)  # array_to_json writes NaN and +-Infinity as JSON strings
    return d


def _range_from_text(text: str, oid_name: str, conn: psycopg.Connection):
    oid = psycopg.postgres.types[oid_name].oid
    return conn.adapters.get_loader(oid, psycopg.pq.Format.TEXT)(oid, conn).load(text.encode())


def same(column: str, src, tgt, conn: psycopg.Connection) -> bool:
    """Is target value ``tgt`` what the contract makes of source value ``src``?"""
    if src is None or tgt is None:
        return src is None and tgt is None
    if column in ("tags", "limits", "rates", "grid"):        # array -> JSON array of the same elements
        return _json_number(src) == tgt
    if column in ("active", "seats"):                         # range -> its text form
        back = _range_from_text(tgt, {"active": "tstzrange", "seats": "int4range"}[column], conn)
        return isinstance(back, Range) and back == src
    if column == "fee":                                       # money -> its exact amount
        return Decimal(re.sub(r"[^0-9.\-]", "", src)) == tgt
    if column == "last_ip":                                   # inet -> text as inet prints it
        return tgt == str(src) and ipaddress.ip_interface(tgt) == ipaddress.ip_interface(src)
    if column == "subnet":                                    # cidr -> text
        return tgt == str(src) and ipaddress.ip_network(tgt) == src
    if column in ("score", "weight") and isinstance(src, float):
        if math.isnan(src):
            return isinstance(tgt, float) and math.isnan(tgt)
        return src == tgt and math.copysign(1, src) == math.copysign(1, tgt)
    # enum, citext, hstore, bit, varbit, xml -> text (psycopg delivers the source's text form); jsonb -> json
    # (parsed both sides, decimals exact); domain -> its base type; the rest: the same type
    return src == tgt


def assert_target_equals_source(source: str, target: str) -> dict[str, int]:
    counts = {}
    with oracle_conn(source) as conn:
        for table, columns, key in ((HOLDERS, HOLDER_COLUMNS, ["holder_id"]),
                                    (VOUCHERS, VOUCHER_COLUMNS, ["book", "voucher_no"]),
                                    (LEGS, LEG_COLUMNS, ["voucher_ref", "leg_no"])):
            src, tgt = fetch(source, table, columns, key), fetch(target, table, columns, key)
            assert src.keys() == tgt.keys(), (table, sorted(src.keys() ^ tgt.keys())[:5])
            for k, row in src.items():
                for c in columns:
                    assert same(c, row[c], tgt[k][c], conn), (table, k, c, row[c], tgt[k][c])
            counts[table] = len(src)
    return counts


# --- the test --------------------------------------------------------------------------------------------


@pytest.fixture
def slot(source_db):
    name = "tr_" + psycopg.conninfo.conninfo_to_dict(source_db)["dbname"].lower()
    yield name
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE database = current_database() AND NOT active")


def xml_supported(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute("SELECT '<a/>'::xml")
            return True
        except psycopg.errors.FeatureNotSupported:  # built without libxml: xml holds NULL only
            return False


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_a_second_ledger_goes_through_every_stage_with_no_manual_step(source_db, target_db, slot, tmp_path):
    xml_ok = xml_supported(source_db)
    with psycopg.connect(source_db, autocommit=True) as conn:
        seed(conn, xml_ok)
    path = write_config(tmp_path / "treasury.toml", source_db, target_db, slot)
    cfg_args = ["--config", str(path)]
    cfg = load_config(path, environ={})

    # config check against the databases: the keyless table's key proven by a data check
    check = cli("config", "check", *cfg_args)
    assert check.exit_code == 0, check.output
    assert "treasury.legs: key (voucher_ref, leg_no) is unique and not null on the source (data check" in check.stdout

    # audit: nothing the pipeline cannot carry (no blocker)
    audit = cli("audit", *cfg_args, "--scan-data", "--full", "--no-workload", "--format", "json")
    assert audit.exit_code == 0, (audit.output, audit.exception)
    findings = json.loads(audit.stdout)["findings"]
    assert not [f for f in findings if f["severity"] == "blocker"], findings

    # schema plan: every conversion decided once and shown; bare apply = pre-load only, said on stderr
    plan = cli("schema", "plan", *cfg_args, "--json")
    assert plan.exit_code == 0, (plan.output, plan.exception)
    contract = {c["column"]: (c["target_type"], c["conversion"]) for c in json.loads(plan.stdout)["column_contract"]
                if c["table"] == HOLDERS}
    assert contract == CONTRACT
    applied = cli("schema", "apply", *cfg_args)
    assert applied.exit_code == 0, (applied.output, applied.exception)
    assert "applying the pre-load phase only (no foreign keys), because the backfill is not complete" in applied.stderr

    # replay init: the keyless table needs its old values in the WAL
    init = cli("replay", "init", *cfg_args, "--replica-identity-full")
    assert init.exit_code == 0, (init.output, init.exception)

    writer = Writer(source_db, xml_ok)
    writer.start()
    try:
        writer.wait_for(10)
        # backfill (the DAG's steps) while the writer keeps writing
        params = {"replay": True, "chunk_rows": 150}
        chunks = backfill_plan(cfg, params)
        assert {c.split("/")[0] for c in chunks} == {HOLDERS, VOUCHERS, LEGS} and len(chunks) > 3
        for ref in chunks:
            backfill_chunk(cfg, ref, params)
        copied = backfill_summary(cfg, params, chunks, run_label="second ledger")
        assert copied["status"] == "done" and copied["not_done"] == [], copied
        assert sum(t["rejected"] for t in copied["tables"].values()) == 0, copied

        bulk_xid, bulk_rows = bulk_close(source_db)
        assert bulk_rows == 3_320
        writer.wait_for(writer.commits + 5)
        # pgoutput sends the TOASTed holder's untouched array and text as "unchanged" in the writer's updates
        with psycopg.connect(source_db, autocommit=True) as conn:
            peeked = conn.execute("SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
                                  "'proto_version', '1', 'publication_names', %s)", (slot, f"{slot}_pub")).fetchall()
        updates = [m for m in (po.decode(bytes(r[0])) for r in peeked) if isinstance(m, po.Update)]
        assert any(po.UNCHANGED in u.new for u in updates), "the TOASTed values must arrive as unchanged-TOAST"

        # replay under live writes: ticks until the writer has committed LIVE_TXNS more while they ran
        first = writer.commits
        ticks = []
        while True:
            ticks.append(replay_tick(cfg, duration=60, until_caught_up=True))
            if writer.commits >= first + LIVE_TXNS:
                break
            writer.wait_for(writer.commits + 3)
        assert all(t["status"] == "done" and t["dead_letters_open"] == 0 for t in ticks), ticks
        assert sum(t["split_windows"] for t in ticks) == 1
    finally:
        writer.stop.set()
        writer.join(timeout=60)
    assert writer.error is None, writer.error
    final = replay_tick(cfg, duration=120, until_caught_up=True)
    assert final["status"] == "done" and final["caught_up"] and final["dead_letters_open"] == 0, final
    assert writer.commits >= first + LIVE_TXNS
    assert [v for _, v in writer.typed_updates[:len(REPLAYED_SPECIALS)]] == list(REPLAYED_SPECIALS)
    specials = [typed(i, xml_ok) for i in REPLAYED_SPECIALS]
    for column in ("opened_at", "review_on"):
        assert {"infinity", "-infinity"} <= {v[column] for v in specials}, column
    for column in ("score", "weight"):
        assert {"NaN", "Infinity", "-Infinity", "-0"} <= {v[column] for v in specials}, column

    # the over-limit transaction: applied in pieces, one recorded non-atomic window, nothing dead-lettered
    status = replay_status(cfg)
    (window,) = status["split_windows"]
    assert (window["xid"], window["changes"]) == (bulk_xid, bulk_rows), window
    assert window["pieces"] >= 3 and window["pieces_applied"] == window["pieces"] and window["finished_at"]
    assert window["tables"] == "treasury.holders, treasury.legs, treasury.vouchers"
    assert status["dead_letters_open"] == 0

    # post-load: bare apply now adds the foreign keys, and says why
    post = cli("schema", "apply", *cfg_args)
    assert post.exit_code == 0, (post.output, post.exception)
    assert "applying both phases, foreign keys included, because the backfill is complete" in post.stderr
    with psycopg.connect(target_db) as conn:
        fks = conn.execute("SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
                           "WHERE n.nspname = 'treasury' AND c.contype = 'f'").fetchone()[0]
    assert fks == 2

    # diff (the DAG's steps): green, a full reconciliation with the balances
    started = diff_start(cfg)
    for table in started["tables"]:
        diff_one_table(cfg, started["run_id"], table)
    diff_balances_step(cfg, started["run_id"])
    green = diff_finish(cfg, started["run_id"])
    assert green["verdict"] == "green", green
    assert green["full_reconciliation"] is True and green["persistent_mismatches"] == 0, green
    assert green["balances"]["status"] == "green", green["balances"]
    page = (Path(green["report_dir"]) / "report.html").read_text()  # the split transaction is on the run page
    assert f"1 source transaction(s) applied in pieces ({bulk_rows:,} changes)" in page and "every piece applied" in page

    # check: every suite green on both sides
    checked = cli("check", *cfg_args)
    assert checked.exit_code == 0, (checked.output, checked.exception)

    # the oracle: target == source, value by value
    counts = assert_target_equals_source(source_db, target_db)
    assert counts[HOLDERS] == SEED_HOLDERS + len(writer.fresh)
    assert counts[VOUCHERS] == SEED_VOUCHERS + BULK_VOUCHERS + len(writer.mine)
    with psycopg.connect(target_db) as conn:
        assert conn.execute("SELECT count(*) FROM treasury.vouchers WHERE book = 'BULK'").fetchone() == (BULK_VOUCHERS,)
        assert conn.execute("SELECT count(*) FROM treasury.legs l JOIN treasury.vouchers v USING (voucher_ref) "
                            "WHERE v.book = 'BULK'").fetchone() == (2 * BULK_VOUCHERS,)

    # --- one value of each converted (and special) type corrupted on the target -------------------------------
    victims = corrupt_target(target_db)
    assert sorted(victims.values()) == sorted(CORRUPT), victims
    with psycopg.connect(target_db, autocommit=True) as conn:
        voucher = conn.execute("SELECT book, voucher_no FROM treasury.vouchers ORDER BY voucher_ref LIMIT 1").fetchone()
        conn.execute("UPDATE treasury.vouchers SET memo = coalesce(memo, '') || ' (altered)' "
                     "WHERE (book, voucher_no) = (%s, %s)", voucher)
        leg = conn.execute("SELECT voucher_ref, leg_no FROM treasury.legs ORDER BY voucher_ref, leg_no "
                           "LIMIT 1").fetchone()
        conn.execute("UPDATE treasury.legs SET memo = 'altered' WHERE (voucher_ref, leg_no) = (%s, %s)", leg)
    # The replay is stopped and the source moves on (a table outside the publication: the ledger is unchanged),
    # so the watermark stays behind the source for the whole diff.
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA scratch")
        conn.execute("CREATE TABLE scratch.marks (id int PRIMARY KEY, px numeric(12,4))")
        conn.execute("INSERT INTO scratch.marks VALUES (1, 'NaN'), (2, 1.5)")

    # a real `reconcile diff` process, as an operator runs it: red, each corruption named with its column
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE")}
    red = subprocess.run([sys.executable, "-m", "reconcile", "diff", "--config", str(path)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert red.returncode == 1, (red.stdout, red.stderr)
    assert red.stdout.startswith("diff RED: 26 persistent mismatches, 0 balance differences"), red.stdout
    run_id = re.search(r"\(run ([0-9a-f-]{36}),", red.stdout).group(1)
    with psycopg.connect(target_db) as conn:
        found = conn.execute("SELECT table_name, kind, row_key, columns FROM reconcile.diff_findings "
                             "WHERE run_id = %s", (run_id,)).fetchall()
        waits = conn.execute("SELECT table_name, outcome, waited_seconds, reason FROM reconcile.diff_lag_waits "
                             "WHERE run_id = %s ORDER BY started_at", (run_id,)).fetchall()
    named = {(t, tuple(json.loads(k))): (kind, json.loads(c)) for t, kind, k, c in found}
    assert named == {**{(HOLDERS, (key,)): ("changed", [column]) for key, column in victims.items()},
                     (VOUCHERS, (voucher[0], voucher[1])): ("changed", ["memo"]),
                     (LEGS, (str(leg[0]), leg[1])): ("changed", ["memo"])}

    with open(tmp_path / "reports" / run_id / "findings.csv", newline="") as f:   # the report names them too
        reported = {(r["table"], r["columns"]) for r in csv.DictReader(f)}
    assert reported == {(HOLDERS, c) for c in CORRUPT} | {(VOUCHERS, "memo"), (LEGS, "memo")}

    # the lag wait: once for the whole run (the first red table), the later red tables not waiting, and why
    assert [w[1] for w in waits] == ["timed_out", "skipped", "skipped"], waits
    assert [w[0] for w in waits] == [HOLDERS, VOUCHERS, LEGS]
    assert all(w[2] == 0 for w in waits[1:])
    assert f"no replay is reading slot '{slot}'" in waits[0][3]
    assert "waiting up to 3 s for it (once for this diff run)" in red.stderr, red.stderr
    assert red.stderr.count("not waiting for the replay") == 2, red.stderr
    assert (f"Replay not advancing: waited {float(waits[0][2]):.1f} s for the watermark in all (the lag wait ended "
            f"at {HOLDERS}: ") in red.stdout and "then compared statically; 2 later wait(s) skipped." in red.stdout

    # NaN in a numeric column (not in an array) cannot be carried: an audit blocker, before any copy
    blocked = write_config(tmp_path / "scratch.toml", source_db, target_db, slot,
                           tables='\n[[tables]]\nname = "scratch.marks"\nkey = ["id"]\n')
    audit = cli("audit", "--config", str(blocked), "--scan-data", "--full", "--no-workload", "--no-store",
                "--format", "json")
    assert audit.exit_code == 1, (audit.output, audit.exception)
    (blocker,) = [f for f in json.loads(audit.stdout)["findings"] if f["severity"] == "blocker"]
    assert (blocker["code"], blocker["object"]) == ("numeric_special", "scratch.marks.px"), blocker


# Column -> (a condition picking a holder whose value the corruption really changes, the target's new value).
CORRUPT = {
    "tags": ("tags IS NOT NULL", "'[\"corrupt\"]'"),
    "limits": ("limits IS NOT NULL", "'[-99]'"),
    "rates": ("rates IS NOT NULL", "'[\"NaN\", 2]'"),
    "grid": ("grid IS NOT NULL", "'[[\"a\"]]'"),
    "profile": ("profile IS NOT NULL", "'{\"k\": -1}'"),
    "tier": ("true", "CASE tier WHEN 'gold' THEN 'silver' ELSE 'gold' END"),
    "handle": ("handle <> upper(handle)", "upper(handle)"),       # equal as citext on the source, not as stored
    "credit_cap": ("credit_cap IS NOT NULL", "credit_cap + 1"),
    "active": ("active <> 'empty'", "'empty'"),
    "seats": ("seats IS NOT NULL", "'[1000,1001)'"),
    "attrs": ("attrs IS NOT NULL", "'\"x\"=>\"y\"'"),
    "fee": ("fee IS NOT NULL", "fee + 0.000001"),                 # below a cent: numeric(38,6) keeps it
    "avatar": ("avatar IS NOT NULL", "'\\xdead'"),
    "grace": ("grace::text = '1 mon'", "'30 days'"),              # equal for interval's =, not the same value
    "last_ip": ("last_ip = '10.0.0.1'", "'10.0.0.1/32'"),          # the same address, not the same text form
    "subnet": ("subnet IS NOT NULL", "'10.9.0.0/16'"),
    "ext_ref": ("ext_ref IS NOT NULL", "gen_random_uuid()"),
    "flags": ("flags <> '11111111'", "'11111111'"),
    "mask": ("mask <> '0'", "'0'"),
    "remarks": ("remarks IS NULL", "'<x/>'"),
    "opened_at": ("opened_at = 'infinity'", "'-infinity'"),
    "review_on": ("review_on = '-infinity'", "'infinity'"),
    "score": ("score::text = '0'", "'-0'"),                        # -0 differs from 0
    "weight": ("weight = 1.5", "'NaN'"),
}


def corrupt_target(target: str) -> dict[str, str]:
    """One holder per column of CORRUPT, changed on the target; returns {holder_id: column}."""
    victims: dict[str, str] = {}
    with psycopg.connect(target, autocommit=True) as conn:
        for column, (where, value) in CORRUPT.items():
            row = conn.execute(f"SELECT holder_id, {column}::text FROM treasury.holders WHERE {where} "
                               "AND NOT holder_id = ANY(%s::uuid[]) ORDER BY holder_id LIMIT 1",
                               (list(victims),)).fetchone()
            assert row is not None, f"no holder fits the corruption of {column}"
            conn.execute(f"UPDATE treasury.holders SET {column} = {value} WHERE holder_id = %s", (row[0],))
            after = conn.execute(f"SELECT {column}::text FROM treasury.holders WHERE holder_id = %s",
                                 (row[0],)).fetchone()[0]
            assert after != row[1], (column, row[1], after)
            victims[str(row[0])] = column
    return victims
