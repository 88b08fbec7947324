"""Backfill throughput against the plainest possible copy, measured in the same run on the same servers.

The demo ledger is seeded on the local source (``--transactions 500000`` gives ~1,000,000 entries,
500,000 journal rows and 10,000 accounts). Every run copies into a fresh target database with the
same tables and indexes:

* **baseline**: for each table one ``COPY (SELECT ...) TO STDOUT`` piped into one ``COPY ... FROM
  STDIN``, all in a single target transaction (guards off: DSQL would refuse it);
* **backfill, guards off**: ``reconcile`` backfill, default settings (``auto`` writes: COPY into empty
  key ranges), with 1 and with ``--workers`` workers;
* **backfill, guards on**: the same against the DSQL stand-in's guards (every statement's rows and
  bytes measured by a trigger): what the guards cost;
* **write paths** on the first ``--method-rows`` entries (guards off): ``auto`` (COPY), ``unnest``,
  ``values``, ``executemany``, and ``auto`` over rows already present (so every batch is an upsert).

Usage::

    uv run python bench/backfill.py                      # ~1M entries
    uv run python bench/backfill.py --transactions 50000 # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconcile.backfill import Backfill, BackfillSettings  # noqa: E402
from reconcile.config import TableSpec  # noqa: E402
from reconcile.db.dsql import DsqlConnection  # noqa: E402
from reconcile.local import guards, stack  # noqa: E402
from reconcile.workload import seed  # noqa: E402

TABLES = (TableSpec("ledger.accounts", ("account_id",)), TableSpec("ledger.journal", ("txn_id",)),
          TableSpec("ledger.entries", ("entry_id",)))
TARGET_DDL = (
    "CREATE SCHEMA ledger",
    """CREATE TABLE ledger.accounts (account_id bigint PRIMARY KEY, account_no text NOT NULL, owner_name text NOT NULL,
        currency char(3) NOT NULL, kind text NOT NULL CHECK (kind IN ('customer', 'settlement', 'equity')),
        balance numeric(18,2) NOT NULL, opened_at timestamptz NOT NULL, updated_at timestamptz NOT NULL)""",
    "CREATE UNIQUE INDEX accounts_account_no_key ON ledger.accounts (account_no)",
    """CREATE TABLE ledger.journal (txn_id bigint PRIMARY KEY, idempotency_key text NOT NULL, kind text NOT NULL,
        reverses_txn_id bigint, posted_at timestamptz NOT NULL, memo text, fx_rate numeric(30,10))""",
    "CREATE UNIQUE INDEX journal_idempotency_key_key ON ledger.journal (idempotency_key)",
    """CREATE TABLE ledger.entries (entry_id bigint PRIMARY KEY, txn_id bigint NOT NULL, account_id bigint NOT NULL,
        currency char(3) NOT NULL, amount numeric(18,2) NOT NULL CHECK (amount <> 0), posted_at timestamptz NOT NULL)""",
    "CREATE INDEX entries_account_id_idx ON ledger.entries (account_id)",
    "CREATE INDEX entries_txn_id_idx ON ledger.entries (txn_id)",
)


def fresh_db(server_url: str, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template1").format(sql.Identifier(name)))
    return psycopg.conninfo.make_conninfo(server_url, dbname=name)


def drop_db(server_url: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def new_target(server_url: str, *, guarded: bool) -> str:
    url = fresh_db(server_url, "bench_t")
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in TARGET_DDL:
            conn.execute(stmt)
    if not guarded:
        guards.configure(url, enabled=False)
    return url


def columns(conn: psycopg.Connection, table: str) -> sql.Composed:
    schema, name = table.split(".")
    cols = [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (f"{schema}.{name}",))]
    return sql.SQL(", ").join(map(sql.Identifier, cols))


def baseline(source: str, target: str, tables: list[str]) -> float:
    """One COPY pipe per table, all into one target transaction; returns seconds."""
    t0 = time.perf_counter()
    with psycopg.connect(source, autocommit=True) as src, psycopg.connect(target) as tgt:
        src.execute("SET datestyle = 'ISO, YMD'")
        for table in tables:
            cols = columns(src, table)
            ident = sql.Identifier(*table.split("."))
            with src.cursor().copy(sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(cols, ident)) as out, \
                    tgt.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(ident, cols)) as into:
                for block in out:
                    into.write(block)
        tgt.commit()
    return time.perf_counter() - t0


def backfill(source: str, target: str, names: list[str], **settings) -> tuple[float, int, int]:
    """A backfill run; returns (seconds, rows copied, retries)."""
    specs = [t for t in TABLES if t.name in names]
    with Backfill(source=lambda: psycopg.connect(source, autocommit=True),
                  target=lambda: DsqlConnection.connect(target, autocommit=True),
                  tables=specs, settings=BackfillSettings(**settings)) as bf:
        summary = bf.run()
    if summary.status != "done" or summary.rejected:
        raise SystemExit(f"backfill did not complete cleanly: {summary.text()}")
    return summary.seconds, summary.rows, summary.retries


def fingerprint(url: str, table: str, key: str, limit: int | None = None) -> tuple:
    where = sql.SQL("WHERE {} <= {}").format(sql.Identifier(key), sql.Literal(limit)) if limit else sql.SQL("")
    q = sql.SQL("SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY {k})) FROM {t} AS t {w}").format(
        k=sql.Identifier(key), t=sql.Identifier(*table.split(".")), w=where)
    with psycopg.connect(url) as conn:
        conn.execute("SET timezone = 'UTC'")
        return conn.execute(q).fetchone()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transactions", type=int, default=500_000, help="journal transactions to seed (2 entries each)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--method-rows", type=int, default=200_000, help="entries copied per write-path comparison")
    ap.add_argument("--data-dir", default=str(ROOT / ".reconcile" / "bench"), help="local stack folder")
    ap.add_argument("--keep", action="store_true", help="keep the bench databases")
    args = ap.parse_args()

    was_running = all(st.running for st in stack.status(args.data_dir).values())
    stack.up(args.data_dir)
    src_server, tgt_server = stack.url("source", args.data_dir), stack.url("target", args.data_dir)
    source = fresh_db(src_server, "bench_s")
    made = [source]
    try:
        t0 = time.perf_counter()
        with psycopg.connect(source, autocommit=True) as conn:
            report = seed(conn, transactions=args.transactions)
        print(f"seeded {report.entries:,} entries, {report.journal_rows:,} journal rows, {report.accounts:,} accounts "
              f"in {time.perf_counter() - t0:.1f} s  ({platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, both servers on this host)")
        all_tables = [t.name for t in TABLES]
        total = report.entries + report.journal_rows + report.accounts
        results: list[tuple[str, int, float, int]] = []

        def record(name: str, rows: int, seconds: float, retries: int = 0) -> float:
            results.append((name, rows, seconds, retries))
            print(f"  {name:<44} {rows:>10,} rows {seconds:8.2f} s {rows / seconds:>10,.0f} rows/s", flush=True)
            return rows / seconds

        print("\nwhole ledger (3 tables):")
        tgt = new_target(tgt_server, guarded=False)
        made.append(tgt)
        base = record("baseline: COPY pipe, one txn (guards off)", total, baseline(source, tgt, all_tables))
        want = [fingerprint(source, "ledger.entries", "entry_id"), fingerprint(source, "ledger.journal", "txn_id")]
        assert want == [fingerprint(tgt, "ledger.entries", "entry_id"), fingerprint(tgt, "ledger.journal", "txn_id")]

        runs = {}
        for name, guarded, workers in ((f"backfill, {args.workers} workers, guards off", False, args.workers),
                                       ("backfill, 1 worker, guards off", False, 1),
                                       (f"backfill, {args.workers} workers, guards on", True, args.workers),
                                       ("backfill, 1 worker, guards on", True, 1)):
            tgt = new_target(tgt_server, guarded=guarded)
            made.append(tgt)
            seconds, rows, retries = backfill(source, tgt, all_tables, workers=workers)
            assert rows == total, (rows, total)
            runs[name] = record(name, rows, seconds, retries)
            got = [fingerprint(tgt, "ledger.entries", "entry_id"), fingerprint(tgt, "ledger.journal", "txn_id")]
            assert got == want, f"{name}: target differs from source"

        n = args.method_rows
        print(f"\nwrite paths on the first {n:,} entries (guards off, {args.workers} workers):")
        tgt = new_target(tgt_server, guarded=False)
        made.append(tgt)
        m_base = record("baseline: COPY pipe, one txn", report.entries, baseline(source, tgt, ["ledger.entries"]))
        methods = {}
        for method in ("auto", "unnest", "values", "executemany"):
            tgt = new_target(tgt_server, guarded=False)
            made.append(tgt)
            settings = dict(tables=("ledger.entries",), to_key=(str(n + 1),), chunk_rows=n // 8,
                            workers=args.workers, write_method=method)
            seconds, rows, retries = backfill(source, tgt, ["ledger.entries"], **settings)
            label = "auto (COPY into empty ranges)" if method == "auto" else f"{method} upsert"
            methods[method] = record(label, rows, seconds, retries)
            assert fingerprint(tgt, "ledger.entries", "entry_id", n) == fingerprint(source, "ledger.entries",
                                                                                    "entry_id", n)
            if method == "auto":  # the same again over the rows now present: every batch upserts
                seconds, rows, retries = backfill(source, tgt, ["ledger.entries"], **settings, force=True)
                methods["auto-over-existing"] = record("auto over existing rows (unnest upsert)", rows, seconds)

        off = runs[f"backfill, {args.workers} workers, guards off"]
        on = runs[f"backfill, {args.workers} workers, guards on"]
        print("\nsummary")
        print(f"  backfill / baseline, guards off, {args.workers} workers: {off / base:.2f}  "
              f"(1 worker: {runs['backfill, 1 worker, guards off'] / base:.2f}; target >= 0.5)")
        print(f"  backfill / baseline, guards on,  {args.workers} workers: {on / base:.2f}  "
              f"(1 worker: {runs['backfill, 1 worker, guards on'] / base:.2f})")
        print(f"  guards cost: {off / on:.2f}x slower with guards on ({(1 - on / off) * 100:.0f}% of the throughput)")
        print("  write paths vs entries baseline: " + ", ".join(f"{k} {v / m_base:.2f}" for k, v in methods.items()))
    finally:
        if not args.keep:
            for url in made:
                drop_db(src_server if url == source else tgt_server, url)
            if not was_running:
                stack.down(args.data_dir)


if __name__ == "__main__":
    main()
