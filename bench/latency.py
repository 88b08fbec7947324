"""Backfill, replay and diff throughput with the target a network round trip away (bench/latency_proxy.py).

Only the target sits behind the proxy (the source stays direct: in production it is the database the
pipeline's own VPC reaches in well under a millisecond; DSQL is the endpoint a region away or behind
its own front end). For each RTT in ``--rtts`` (``direct`` = no proxy at all, to show the proxy's own
cost; ``0`` = through the proxy with no added delay, the baseline of the ratios):

* **backfill**: the demo ledger (``--transactions`` journal rows, two entries each, accounts) copied into
  a fresh guarded target (the DSQL stand-in's guards on) by :class:`reconcile.backfill.Backfill`
  with each of ``--workers`` (the bench/backfill.py helpers); target == source checked after each run;
* **replay**: a backlog of ``--backlog`` business transactions (5 row changes each: a journal row, two
  entries, two balance updates by the source's trigger) committed on the source by bench/replay.py's
  server-side burst procedure with no replayer running, then one ``run_replay(until_caught_up=True)``
  through the proxy; changes/s = changes applied / the run's time; target == source checked at the end;
* **diff**: ``run_diff`` of two identical ``--diff-rows``-row entries tables (bench/diff.py's table),
  ``--diff-workers`` workers, balances off.

For every run the proxy counts the target connections opened and the *exchanges* (client -> server
turns answered by the server, i.e. round trips waited for), so the table shows exchanges per unit of
work (per backfill target transaction attempted, per replay target commit, per diff query) and the share of
how many round trips were waited for at once on average: exchanges x RTT / seconds (Little's law;
equal to the concurrency when the whole run is spent waiting on the network).

Usage::

    ./dev run python bench/latency.py                                  # direct, 0, 2, 10 ms; ~10 min
    ./dev run python bench/latency.py --rtts 0,10 --workers 4,16 --stages backfill
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import backfill as bench_backfill  # noqa: E402  (bench/backfill.py)
import diff as bench_diff  # noqa: E402  (bench/diff.py)
import replay as bench_replay  # noqa: E402  (bench/replay.py)
from latency_proxy import ProxyProcess, ProxyStats  # noqa: E402

from reconcile.backfill import Backfill, BackfillSettings, run_backfill  # noqa: E402
from reconcile.config import BudgetSettings, Config, PostgresEndpoint  # noqa: E402
from reconcile.db.dsql import DsqlConnection  # noqa: E402
from reconcile.diff import run_diff  # noqa: E402
from reconcile.diff.settings import DiffSettings  # noqa: E402
from reconcile.local import guards, stack  # noqa: E402
from reconcile.replay import ReplaySettings, init_replay, run_replay  # noqa: E402
from reconcile.schema import apply_plan, plan_from_source  # noqa: E402
from reconcile.workload import seed  # noqa: E402

RESULTS: list[dict] = []


@contextlib.contextmanager
def target_at(server_url: str, db_url: str, rtt: str):
    """(url to reach ``db_url`` with, proxy or None): through a proxy adding ``rtt`` ms, or direct."""
    if rtt == "direct":
        yield db_url, None
        return
    # A child process, not a thread: in-process, the proxy would wait for the GIL behind the CPU-busy
    # backfill/replay threads before forwarding a due chunk (latency_proxy.ProxyProcess). Its counters
    # are read after the block.
    with ProxyProcess.for_conninfo(server_url, float(rtt)) as proxy:
        yield proxy.conninfo(db_url), proxy


def probe(server_url: str, rtt: str, n: int = 40) -> float:
    """Median ms of ``SELECT 1`` through a proxy at ``rtt`` (what the runs really got, under this load)."""
    with target_at(server_url, server_url, rtt) as (url, _), psycopg.connect(url, autocommit=True) as conn:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def record(stage: str, rtt: str, concurrency: str, units: str, amount: int, seconds: float,
           stats: ProxyStats | None, work_items: int, work_name: str, parallel: int, **extra) -> dict:
    row = dict(stage=stage, rtt=rtt, concurrency=concurrency, units=units, amount=amount, seconds=seconds,
               rate=amount / seconds if seconds else 0.0, work_items=work_items, work_name=work_name,
               parallel=parallel, connections=stats.connections if stats else None,
               exchanges=stats.exchanges if stats else None, **extra)
    RESULTS.append(row)
    ex = f"{stats.exchanges:,} exchanges on {stats.connections} connections" if stats else "no proxy"
    print(f"  {stage:<9} rtt {rtt:>6}  {concurrency:<38} {amount:>9,} {units} in {seconds:7.2f} s = "
          f"{row['rate']:>9,.0f} {units}/s  ({ex}; {work_items:,} {work_name})", flush=True)
    return row


# -- backfill ---------------------------------------------------------------------------------------

def sweep_backfill(args, servers: dict[str, str]) -> None:
    source = bench_backfill.fresh_db(servers["source"], "bench_s")
    try:
        t0 = time.perf_counter()
        with psycopg.connect(source, autocommit=True) as conn:
            rep = seed(conn, transactions=args.transactions)
        total = rep.entries + rep.journal_rows + rep.accounts
        print(f"backfill: seeded {rep.entries:,} entries, {rep.journal_rows:,} journal rows, {rep.accounts:,} accounts "
              f"({total:,} rows) in {time.perf_counter() - t0:.1f} s", flush=True)
        names = [t.name for t in bench_backfill.TABLES]
        want = [bench_backfill.fingerprint(source, "ledger.entries", "entry_id"),
                bench_backfill.fingerprint(source, "ledger.journal", "txn_id")]
        for workers in args.workers:
            for rtt in args.rtts:
                tgt = bench_backfill.new_target(servers["target"], guarded=True)
                try:
                    with target_at(servers["target"], tgt, rtt) as (url, proxy):
                        with Backfill(source=lambda: psycopg.connect(source, autocommit=True),
                                      target=lambda u=url: DsqlConnection.connect(u, autocommit=True),
                                      tables=[t for t in bench_backfill.TABLES if t.name in names],
                                      settings=BackfillSettings(workers=workers, chunk_rows=args.chunk_rows)) as bf:
                            summary = bf.run()
                    stats = proxy.stats() if proxy else None
                    if summary.status != "done" or summary.rejected or summary.rows != total:
                        raise SystemExit(f"backfill did not complete cleanly: {summary.text()}")
                    got = [bench_backfill.fingerprint(tgt, "ledger.entries", "entry_id"),
                           bench_backfill.fingerprint(tgt, "ledger.journal", "txn_id")]
                    assert got == want, f"backfill at {rtt}: target differs from source"
                    record("backfill", rtt, f"{workers} workers, chunks of {args.chunk_rows:,} rows", "rows", summary.rows,
                           summary.seconds, stats, summary.attempts, "target txns", workers,
                           retries=summary.retries)
                finally:
                    bench_backfill.drop_db(servers["target"], tgt)
    finally:
        bench_backfill.drop_db(servers["source"], source)


# -- replay -----------------------------------------------------------------------------------------

def sweep_replay(args, servers: dict[str, str]) -> None:
    name = f"bench_lat_{uuid.uuid4().hex[:8]}"
    for role in ("source", "target"):
        with psycopg.connect(servers[role], autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template1')
    src = psycopg.conninfo.make_conninfo(servers["source"], dbname=name)
    tgt = psycopg.conninfo.make_conninfo(servers["target"], dbname=name)

    def config(target_url: str, fraction: float = BudgetSettings().fraction, pipeline: bool = True) -> Config:
        return Config(source=PostgresEndpoint("source", src), target=PostgresEndpoint("target", target_url),
                      budget=BudgetSettings(fraction=fraction),
                      stages={"replay": ReplaySettings(slot_name=name, poll_interval=0.2, pipeline_apply=pipeline)})

    try:
        with psycopg.connect(src, autocommit=True) as conn:
            seed(conn, accounts=2000, transactions=5000)
            conn.execute(bench_replay.BURST_PROC)
            plan = plan_from_source(conn, tables=config(tgt).tables, dialect="postgres")
        with psycopg.connect(tgt, autocommit=True) as conn:
            apply_plan(conn, plan, phase="pre-load")
        init_replay(config(tgt))
        run_backfill(config(tgt), BackfillSettings(replay=True, slot_name=name))
        run_replay(config(tgt))
        per_worker = args.backlog // args.burst_workers
        runs = [(f, p, rtt) for f in args.replay_fractions for p in args.replay_pipeline for rtt in args.rtts]
        for fraction, pipeline, rtt in runs:
            rows_per_txn = int(BudgetSettings().max_rows * fraction)
            t0 = time.perf_counter()

            def burst(w: int) -> None:
                with psycopg.connect(src, autocommit=True) as conn:
                    conn.execute("CALL ledger.bench_burst(%s, %s)", (per_worker, w))
            threads = [threading.Thread(target=burst, args=(w,)) for w in range(args.burst_workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            made = time.perf_counter() - t0
            with target_at(servers["target"], tgt, rtt) as (url, proxy):
                r = run_replay(config(url, fraction, pipeline), until_caught_up=True)
            stats = proxy.stats() if proxy else None
            if not r.caught_up or r.dead_letters_open:
                raise SystemExit(f"replay at {rtt} did not catch up cleanly: {r.to_dict()}")
            record("replay", rtt, f"1 conn, budget {fraction:g} (<={rows_per_txn:,} rows/txn), "
                   f"pipeline {'on' if pipeline else 'off'}", "changes",
                   r.changes_applied, r.duration_seconds, stats, r.target_commits, "target commits", 1,
                   backlog_seconds=made, txns=r.txns_applied)
        equal = bench_replay.fingerprints(src) == bench_replay.fingerprints(tgt)
        print(f"replay: target == source after the last run: {equal}", flush=True)
        if not equal:
            raise SystemExit("replay: target differs from source")
    finally:
        with psycopg.connect(servers["source"], autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                         (name,))
        for role in ("source", "target"):
            with psycopg.connect(servers[role], autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- diff -------------------------------------------------------------------------------------------

def sweep_diff(args, servers: dict[str, str]) -> None:
    src, tgt = bench_diff.fresh_db(servers["source"]), bench_diff.fresh_db(servers["target"])
    try:
        guards.configure(tgt, enabled=False)   # the bulk load only
        for url in (src, tgt):
            bench_diff.execute(url, *bench_diff.DDL, bench_diff.FILL.format(n=args.diff_rows),
                               "VACUUM ANALYZE ledger.entries")
        guards.configure(tgt, enabled=True)
        settings = DiffSettings(workers=args.diff_workers, balances=False, lag_wait_seconds=0)
        reports = tempfile.mkdtemp(prefix="bench-latency-diff-")

        def config(target_url: str) -> Config:
            return Config(source=PostgresEndpoint("source", src), target=PostgresEndpoint("target", target_url),
                          tables=(bench_diff.TABLE,), stages={"diff": settings})

        run_diff(config(tgt), report_dir=reports)   # warm-up: control schema, caches
        print(f"diff: loaded {args.diff_rows:,} identical rows on each side", flush=True)
        for rtt in args.rtts:
            with target_at(servers["target"], tgt, rtt) as (url, proxy):
                t0 = time.perf_counter()
                result = run_diff(config(url), report_dir=reports)
                seconds = time.perf_counter() - t0
            stats = proxy.stats() if proxy else None
            t = result.to_dict()["tables"]["ledger.entries"]
            if (t["missing"], t["extra"], t["changed"]) != (0, 0, 0):
                raise SystemExit(f"diff at {rtt} found differences in identical tables: {t}")
            with psycopg.connect(tgt) as conn:
                queries = conn.execute("SELECT queries FROM reconcile.diff_results WHERE run_id = %s "
                                       "AND table_name = %s", (result.run_id, "ledger.entries")).fetchone()[0]
            record("diff", rtt, f"{args.diff_workers} workers, identical tables", "rows", args.diff_rows, seconds,
                   stats, queries, "diff queries (per side)", args.diff_workers)
    finally:
        bench_diff.drop_db(servers["source"], src)
        bench_diff.drop_db(servers["target"], tgt)


# -- report -----------------------------------------------------------------------------------------

def table() -> str:
    base = {(r["stage"], r["concurrency"]): r["rate"] for r in RESULTS if r["rtt"] == "0"}
    head = (f"{'stage':<9}{'RTT ms':>7}  {'concurrency':<38}{'throughput':>16}{'vs 0 ms':>8}{'conns':>6}"
            f"{'exchanges':>10}{'per unit':>16}{'in flight':>10}")
    out = [head, "-" * len(head)]
    for r in RESULTS:
        b = base.get((r["stage"], r["concurrency"]))
        ratio = f"{r['rate'] / b:.2f}x" if b else "-"
        if r["exchanges"] is not None and r["work_items"]:
            unit = {"target txns": "txn", "target commits": "commit"}.get(r["work_name"], "query")
            per = f"{r['exchanges'] / r['work_items']:.1f}/{unit}"
        else:
            per = "-"
        share = "-"
        if r["exchanges"] is not None and r["rtt"] not in ("direct", "0"):
            share = f"{r['exchanges'] * float(r['rtt']) / 1000 / r['seconds']:.2f}"
        conns = "-" if r["connections"] is None else str(r["connections"])
        ex = "-" if r["exchanges"] is None else f"{r['exchanges']:,}"
        out.append(f"{r['stage']:<9}{r['rtt']:>7}  {r['concurrency']:<38}{r['rate']:>10,.0f} {r['units'][:4]}/s"
                   f"{ratio:>8}{conns:>6}{ex:>10}{per:>16}{share:>10}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtts", default="direct,0,2,10", help="comma-separated: direct (no proxy) or ms added per RTT")
    ap.add_argument("--stages", default="backfill,replay,diff")
    ap.add_argument("--transactions", type=int, default=150_000, help="backfill: journal transactions (2 entries each)")
    ap.add_argument("--workers", default="4", help="backfill: comma-separated worker counts")
    ap.add_argument("--chunk-rows", type=int, default=BackfillSettings().chunk_rows, help="backfill: rows per chunk")
    ap.add_argument("--backlog", type=int, default=20_000, help="replay: business transactions per backlog")
    ap.add_argument("--burst-workers", type=int, default=2)
    ap.add_argument("--replay-fractions", default=str(BudgetSettings().fraction),
                    help="replay: comma-separated [budget] fractions (rows per target transaction = 3,000 x fraction)")
    ap.add_argument("--replay-pipeline", default="on,off",
                    help="replay: comma-separated on/off ([replay] pipeline_apply), to compare both in one run")
    ap.add_argument("--diff-rows", type=int, default=300_000)
    ap.add_argument("--diff-workers", type=int, default=2)
    ap.add_argument("--data-dir", default=str(ROOT / ".reconcile" / "bench"), help="local stack folder")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    args.rtts = [r.strip() for r in args.rtts.split(",")]
    for r in args.rtts:
        if r != "direct" and not (r.replace(".", "", 1).isdigit()):
            ap.error(f"--rtts: {r!r} is neither 'direct' nor a number of milliseconds")
    args.workers = [int(w) for w in args.workers.split(",")]
    args.replay_fractions = [float(f) for f in args.replay_fractions.split(",")]
    args.replay_pipeline = [{"on": True, "off": False}[p] for p in args.replay_pipeline.split(",")]
    stages = [s.strip() for s in args.stages.split(",")]

    was_running = all(st.running for st in stack.status(args.data_dir).values())
    stack.up(args.data_dir)
    try:
        run(args, stages)
    finally:
        if not was_running:
            stack.down(args.data_dir)


def run(args, stages: list[str]) -> None:
    servers = {role: stack.url(role, args.data_dir) for role in stack.ROLES}
    print(f"latency sweep on {platform.node()} ({os.cpu_count()} cores, shared with other sessions: numbers are "
          f"noisy), RTTs {', '.join(args.rtts)}; only the target is behind the proxy", flush=True)
    probes = {rtt: probe(servers["target"], rtt) for rtt in args.rtts}
    print("SELECT 1 round trip to the target, median of 40: " + ", ".join(
        f"{rtt}: {ms:.2f} ms" for rtt, ms in probes.items()), flush=True)
    t0 = time.perf_counter()
    for stage in stages:
        {"backfill": sweep_backfill, "replay": sweep_replay, "diff": sweep_diff}[stage](args, servers)
    print(f"\nall stages in {time.perf_counter() - t0:.0f} s\n")
    print("SELECT 1 round trip measured before the runs: " + ", ".join(
        f"{rtt}: {ms:.2f} ms" for rtt, ms in probes.items()))
    print(table())
    print("\nper unit: exchanges per backfill target transaction / replay target commit / diff query; in flight: "
          "exchanges x RTT / wall time, the round trips waited for at once on average (Little's law); when it\n"
          "reaches the concurrency (workers, connections) the whole run is spent waiting on the network")
    if args.json:
        Path(args.json).write_text(json.dumps({"probes_ms": probes, "results": RESULTS}, indent=1))


if __name__ == "__main__":
    main()
