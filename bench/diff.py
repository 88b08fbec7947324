"""Benchmark: reconcile's diff vs reladiff on >= 1,000,000 entry rows, plus the floor.

Not a test. Starts (or reuses, with RECONCILE_BENCH_STACK_DIR) the two local servers, loads an
entries table on both (the target's DSQL guards are switched off for the load only), then times
for (a) identical tables, (b) 100 changed amounts, (c) 1,000 missing rows:

* reconcile: ``run_diff`` on the one table (balances off; findings stored, reports written);
* reladiff (PyPI): ``diff_tables`` over the same two tables, threaded like ours;
* the floor: one full-scan checksum query (count + sum of row hashes) on the larger side.

Usage: ``./dev run python bench/diff.py [--rows 1000000] [--workers 2]``. Prints wall times,
the ratios reladiff / reconcile and reconcile / floor, and whether both found the same rows.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from reconcile.config import Config, PostgresEndpoint, TableSpec
from reconcile.diff import run_diff
from reconcile.diff import sqlgen
from reconcile.diff.settings import DiffSettings
from reconcile.local import guards, stack

DDL = ("CREATE SCHEMA ledger",
       "CREATE TABLE ledger.entries (entry_id bigint PRIMARY KEY, txn_id bigint NOT NULL, account_id bigint NOT NULL, "
       "currency char(3) NOT NULL, amount numeric(18,2) NOT NULL, posted_at timestamptz NOT NULL)")
FILL = ("INSERT INTO ledger.entries SELECT g, (g + 1) / 2, 1 + g % 5000, (ARRAY['USD','EUR','GBP','JPY'])[1 + g % 4], "
        "CASE WHEN g % 2 = 0 THEN 1 ELSE -1 END * (1 + (g * 7919) % 100000) / 100.0, "
        "'2024-01-01Z'::timestamptz + g * interval '1 second' FROM generate_series(1::bigint, {n}) g")
TABLE = TableSpec("ledger.entries", ("entry_id",), "entries")


def fresh_db(server: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template1')
    return psycopg.conninfo.make_conninfo(server, dbname=name)


def drop_db(server: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def execute(url: str, *stmts: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for s in stmts:
            conn.execute(s)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def reconcile_diff(cfg: Config, report_dir: str):
    result = run_diff(cfg, report_dir=report_dir)
    t = result.to_dict()["tables"]["ledger.entries"]
    return t["missing"], t["extra"], t["changed"]


def reladiff_diff(src: str, tgt: str, workers: int):
    import reladiff
    from reladiff import connect

    def uri(url: str) -> str:
        d = psycopg.conninfo.conninfo_to_dict(url)
        return f"postgresql://{d.get('user', 'postgres')}@{d['host']}:{d['port']}/{d['dbname']}"

    cols = ("txn_id", "account_id", "currency", "amount", "posted_at")
    # Fresh, unshared connections per run: a cached one would keep its REPEATABLE READ snapshot
    # (the target's default) from the previous case and miss the new differences.
    db1, db2 = connect(uri(src), workers, shared=False), connect(uri(tgt), workers, shared=False)
    try:
        t1 = reladiff.connect_to_table(db1, ("ledger", "entries"), "entry_id", extra_columns=cols)
        t2 = reladiff.connect_to_table(db2, ("ledger", "entries"), "entry_id", extra_columns=cols)
        minus, plus = set(), set()
        for sign, row in reladiff.diff_tables(t1, t2, threaded=True, max_threadpool_size=workers):
            (minus if sign == "-" else plus).add(row[0])
    finally:
        db1.close()
        db2.close()
    return len(minus - plus), len(plus - minus), len(minus & plus)


def floor(src: str) -> float:
    with psycopg.connect(src) as conn:
        for s in ("SET TimeZone TO 'UTC'", "SET DateStyle TO 'ISO, MDY'", "SET extra_float_digits TO 1"):
            conn.execute(s)
        cols = [sqlgen.Column(n, sqlgen.kind_of(t)) for n, t in conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'ledger.entries'::regclass "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum").fetchall()]
        q = psycopg.sql.SQL("SELECT count(*), sum({}) FROM ledger.entries").format(sqlgen.row_hash(cols))
        t0 = time.perf_counter()
        conn.execute(q).fetchone()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    data_dir = Path(os.environ.get("RECONCILE_BENCH_STACK_DIR") or tempfile.mkdtemp(prefix="bench-diff-"))
    started = stack.up(data_dir)
    servers = {role: stack.url(role, data_dir) for role in stack.ROLES}
    src, tgt = fresh_db(servers["source"]), fresh_db(servers["target"])
    try:
        guards.configure(tgt, enabled=False)   # bulk load only; the diff itself writes within the budget
        for url in (src, tgt):
            execute(url, *DDL)
            t, _ = timed(lambda u=url: execute(u, FILL.format(n=args.rows), "VACUUM ANALYZE ledger.entries"))
            print(f"loaded {args.rows:,} rows in {t:.1f}s")
        settings = DiffSettings(workers=args.workers, balances=False, lag_wait_seconds=0)
        cfg = Config(source=PostgresEndpoint("source", src), target=PostgresEndpoint("target", tgt), tables=(TABLE,),
                     stages={"diff": settings})
        reports = tempfile.mkdtemp(prefix="bench-diff-reports-")
        run_diff(cfg, report_dir=reports)   # warm-up: control schema, caches
        cases = [("a identical", []),
                 ("b 100 changed amounts", ["UPDATE ledger.entries SET amount = amount + 0.01 WHERE entry_id % 10000 = 7"]),
                 ("c 1,000 missing rows", ["UPDATE ledger.entries SET amount = amount - 0.01 WHERE entry_id % 10000 = 7",
                                           "DELETE FROM ledger.entries WHERE entry_id % 1000 = 3"])]
        rows = []
        for name, changes in cases:
            execute(tgt, *changes)
            execute(tgt, "VACUUM ANALYZE ledger.entries")
            f = min(floor(src), floor(src))
            t_rec, found_rec = timed(lambda: reconcile_diff(cfg, reports))
            t_rel, found_rel = timed(lambda: reladiff_diff(src, tgt, args.workers))
            rows.append((name, t_rec, t_rel, f, found_rec, found_rel))
            print(f"{name}: reconcile {t_rec:.2f}s {found_rec}, reladiff {t_rel:.2f}s {found_rel}, floor {f:.2f}s", flush=True)
        print()
        print(f"{'case':<24}{'reconcile':>11}{'reladiff':>10}{'floor':>8}{'reladiff/rec':>14}{'rec/floor':>11}  same findings")
        for name, t_rec, t_rel, f, a, b in rows:
            print(f"{name:<24}{t_rec:>10.2f}s{t_rel:>9.2f}s{f:>7.2f}s{t_rel / t_rec:>13.1f}x{t_rec / f:>10.2f}x  "
                  f"{'yes' if a == b else 'NO'} (missing, extra, changed) = {a}")
    finally:
        drop_db(servers["source"], src)
        drop_db(servers["target"], tgt)
        if not os.environ.get("RECONCILE_BENCH_STACK_DIR"):
            stack.down(data_dir)
        del started


if __name__ == "__main__":
    main()
