"""Benchmark: reconcile's diff vs reladiff on >= 1,000,000 entry rows, plus the floor.

Not a test. Starts (or reuses, with RECONCILE_BENCH_STACK_DIR) the two local servers, loads an
entries table on both (the target's DSQL guards are switched off for the load only), then times
for (a) identical tables, (b) 100 changed amounts, (c) 1,000 missing rows:

* reconcile: ``run_diff`` on the one table (balances off; findings stored, reports written);
* reladiff (PyPI): ``diff_tables`` over the same two tables, threaded like ours;
* the floor: one full-scan checksum query (count + sum of row hashes) on the larger side, with
  exactly the row hash the diff computes for these tables;
* for reference, "both": that same query on both sides at once, the least any diff that reads
  both sides can cost when the two servers share one machine's cores (as here).

Usage: ``./dev run python bench/diff.py [--rows 1000000] [--workers 2] [--repeat 1]``. Prints
wall times (the median of ``--repeat`` runs, with their range), the ratios reladiff / reconcile
and reconcile / floor, whether both found the same rows, and where the time went: server CPU
seconds per side (from /proc, Linux) and, for reconcile, the queries it sent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
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
TABLE = TableSpec("ledger.entries", ("entry_id",), "entries", amount_column="amount", currency_column="currency",
                  account_column="account_id", transaction_column="txn_id")


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


def cpu_seconds(data_dir: Path) -> dict[str, float]:
    """CPU seconds used so far by each server: postmaster, its live backends and the reaped ones."""
    tick = os.sysconf("SC_CLK_TCK")
    roots: dict[int, str] = {}
    for role in stack.ROLES:
        try:
            roots[int((data_dir / role / "postmaster.pid").read_text().split()[0])] = role
        except (OSError, ValueError, IndexError):
            return {}
    used = {role: 0 for role in stack.ROLES}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        ppid, own, reaped = int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
        if int(entry) in roots:
            used[roots[int(entry)]] += own + reaped
        elif ppid in roots:
            used[roots[ppid]] += own
    return {role: v / tick for role, v in used.items()}


def profiled(data_dir: Path, fn):
    """(wall seconds, result, {role: server CPU seconds}) of one call."""
    before = cpu_seconds(data_dir)
    t, out = timed(fn)
    after = cpu_seconds(data_dir)
    return t, out, {r: after[r] - before[r] for r in after} if before and after else {}


def reconcile_diff(cfg: Config, report_dir: str):
    result = run_diff(cfg, report_dir=report_dir)
    t = result.to_dict()["tables"]["ledger.entries"]
    with psycopg.connect(cfg.target.conninfo) as conn:
        queries = conn.execute("SELECT queries FROM reconcile.diff_results WHERE run_id = %s AND table_name = %s",
                               (result.run_id, "ledger.entries")).fetchone()[0]
    return (t["missing"], t["extra"], t["changed"]), queries


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


def _columns(conn: psycopg.Connection) -> list[sqlgen.Column]:
    return [sqlgen.Column(n, sqlgen.kind_of(t), t) for n, t in conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'ledger.entries'::regclass "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum").fetchall()]


def checksum_query(src: str, tgt: str) -> psycopg.sql.Composed:
    """count + sum of row hashes over the whole table, with exactly the diff's row hash for this pair."""
    with psycopg.connect(src) as s, psycopg.connect(tgt) as t:
        cols, _ = sqlgen.hash_layout(_columns(s), _columns(t))
    return psycopg.sql.SQL("SELECT count(*), sum({}) FROM ledger.entries").format(sqlgen.row_hash(cols))


def _session(url: str) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=True)
    for s in ("SET TimeZone TO 'UTC'", "SET DateStyle TO 'ISO, MDY'", "SET extra_float_digits TO 1"):
        conn.execute(s)
    return conn


def floor(src: str, tgt: str) -> float:
    """One full-scan checksum query (count + sum of row hashes) on the source, the larger side.

    The row hash is exactly the one the diff computes for this pair of tables (same layout and
    normalisation, :func:`reconcile.diff.sqlgen.hash_layout`), run with the server's defaults
    (parallel query included), so the floor only gets faster when the diff's hashing does.
    """
    q = checksum_query(src, tgt)
    with _session(src) as conn:
        t0 = time.perf_counter()
        conn.execute(q).fetchone()
        return time.perf_counter() - t0


def both_sides(src: str, tgt: str) -> float:
    """The floor's query on both sides at the same time (reference only: the least a diff reading
    both sides can cost when the two servers share the same cores)."""
    q = checksum_query(src, tgt)
    with _session(src) as s, _session(tgt) as t:
        t0 = time.perf_counter()
        other = threading.Thread(target=lambda: t.execute(q).fetchone())
        other.start()
        s.execute(q).fetchone()
        other.join()
        return time.perf_counter() - t0


def _spread(runs: list) -> str:
    walls = sorted(r[0] for r in runs)
    med = statistics.median(walls)
    return f"{med:.2f}s" if len(walls) == 1 else f"{med:.2f}s ({walls[0]:.2f}-{walls[-1]:.2f})"


def _cpu(used: dict[str, float]) -> str:
    return " + ".join(f"{role} {used[role]:.2f}s" for role in stack.ROLES) if used else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per tool and case (the median is shown)")
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
            f = min(floor(src, tgt) for _ in range(2 * args.repeat))
            both = min(both_sides(src, tgt) for _ in range(args.repeat))
            recs = [profiled(data_dir, lambda: reconcile_diff(cfg, reports)) for _ in range(args.repeat)]
            rels = [profiled(data_dir, lambda: reladiff_diff(src, tgt, args.workers)) for _ in range(args.repeat)]
            (found_rec, queries), found_rel = recs[0][1], rels[0][1]
            same = all(r[1][0] == found_rel for r in recs) and all(r[1] == found_rel for r in rels)
            t_rec, t_rel = statistics.median(r[0] for r in recs), statistics.median(r[0] for r in rels)
            rows.append((name, t_rec, t_rel, f, both, found_rec, same))
            cpu_rec, cpu_rel = recs[0][2], rels[0][2]
            print(f"{name}: reconcile {_spread(recs)} {found_rec} in {queries} queries, server CPU {_cpu(cpu_rec)}; "
                  f"reladiff {_spread(rels)} {found_rel}, server CPU {_cpu(cpu_rel)}; floor {f:.2f}s, both sides "
                  f"{both:.2f}s", flush=True)
        print()
        print(f"{'case':<24}{'reconcile':>11}{'reladiff':>10}{'floor':>8}{'both':>7}{'reladiff/rec':>14}"
              f"{'rec/floor':>11}  same findings")
        for name, t_rec, t_rel, f, both, found, same in rows:
            print(f"{name:<24}{t_rec:>10.2f}s{t_rel:>9.2f}s{f:>7.2f}s{both:>6.2f}s{t_rel / t_rec:>13.1f}x"
                  f"{t_rec / f:>10.2f}x  {'yes' if same else 'NO'} (missing, extra, changed) = {found}")
    finally:
        drop_db(servers["source"], src)
        drop_db(servers["target"], tgt)
        if not os.environ.get("RECONCILE_BENCH_STACK_DIR"):
            stack.down(data_dir)
        del started


if __name__ == "__main__":
    main()
