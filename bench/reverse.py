"""Reverse replay (DSQL CDC → the old source) against the forward replay (source → DSQL), same run, same servers.

Each business transaction is five row changes in both directions (a journal row, two entries, two account
balances: by the legacy trigger on the source, by the application on DSQL). Four measurements:

* **forward, live**: the workload writes the source at ``--tps`` for ``--seconds`` while ``replay run
  --follow`` applies to the target;
* **forward, backlog**: the same load with no replayer running, then one replay run drains it (throughput);
* **reverse, live**: after write cutover the workload writes the target (the application keeps balances),
  the CDC stand-in publishes continuously *with duplicates, reordering across shards and deferred
  transactions on*, and the reverse replayer follows;
* **reverse, backlog**: the same load with no reverse replayer running, everything published (with the same
  chaos), then one reverse run drains it.

Changes/s = row changes applied / time from the start of the load until caught up (live) or the run's own
time (backlog). Lag = apply commit time minus the original commit time, per transaction; the reverse lag
includes the stand-in's publish interval and ``settle_ms`` (a transaction waits that long for stragglers).
Target == source is checked after each direction.

Usage::

    ./dev run python bench/reverse.py                      # local stack under .reconcile/local
    ./dev run python bench/reverse.py --seconds 10 --tps 300 --data-dir /tmp/stack
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconcile.backfill import BackfillSettings, run_backfill  # noqa: E402
from reconcile.config import Config, PostgresEndpoint  # noqa: E402
from reconcile.local import stack  # noqa: E402
from reconcile.local.cdc import CdcPublisher, Chaos  # noqa: E402
from reconcile.local.kinesis import LocalKinesis, client, ensure_stream  # noqa: E402
from reconcile.replay import ReplaySettings, init_replay, run_replay  # noqa: E402
from reconcile.reverse import ReverseReplayer, ReverseSettings, init_reverse  # noqa: E402
from reconcile.schema import apply_plan, plan_from_source  # noqa: E402
from reconcile.workload import run_workload, seed  # noqa: E402


def fingerprints(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        conn.execute("SET timezone = 'UTC'")
        return [conn.execute(f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY {k})) FROM ledger.{t} t")
                .fetchone() for t, k in (("accounts", "account_id"), ("journal", "txn_id"), ("entries", "entry_id"))]


def row(name: str, changes: int, seconds: float, p50, p99, commits: int, extra: str = "") -> dict:
    return {"phase": name, "changes": changes, "seconds": seconds, "rate": changes / seconds if seconds else 0.0,
            "p50": p50, "p99": p99, "commits": commits, "extra": extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("RECONCILE_LOCAL_DIR", ".reconcile/local")))
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each load phase")
    ap.add_argument("--tps", type=float, default=300.0, help="requested business transactions/s")
    ap.add_argument("--workers", type=int, default=4, help="workload connections")
    ap.add_argument("--shards", type=int, default=4, help="Kinesis shards")
    ap.add_argument("--settle-ms", type=int, default=500, help="reverse.settle_ms")
    ap.add_argument("--duplicates", type=float, default=0.3, help="share of Kinesis records put twice")
    ap.add_argument("--defer", type=float, default=0.2, help="share of transactions published a round later")
    args = ap.parse_args()

    stack.up(args.data_dir)
    name = f"bench_reverse_{uuid.uuid4().hex[:8]}"
    urls = {role: stack.url(role, args.data_dir) for role in stack.ROLES}
    for role in ("source", "target"):
        with psycopg.connect(urls[role], autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template1')
    src = psycopg.conninfo.make_conninfo(urls["source"], dbname=name)
    tgt = psycopg.conninfo.make_conninfo(urls["target"], dbname=name)
    kinesis = LocalKinesis(process=True).start()
    kc = client(kinesis.url)
    ensure_stream(kc, name, shards=args.shards)
    cfg = Config(source=PostgresEndpoint("source", src), target=PostgresEndpoint("target", tgt),
                 stages={"replay": ReplaySettings(slot_name=name, poll_interval=0.2),
                         "reverse": ReverseSettings(stream_name=name, endpoint_url=kinesis.url,
                                                    settle_ms=args.settle_ms, poll_interval=0.05)})
    chaos = Chaos(duplicate_rate=args.duplicates, shuffle=True, defer_rate=args.defer, seed=1)
    results: list[dict] = []
    load = dict(tps=args.tps, duration=args.seconds, workers=args.workers, hot_fraction=0.2)
    try:
        with psycopg.connect(src, autocommit=True) as conn:
            seed(conn, accounts=2000, transactions=5000)
            plan = plan_from_source(conn, tables=cfg.tables, dialect="postgres")
        with psycopg.connect(tgt, autocommit=True) as conn:
            apply_plan(conn, plan, phase="pre-load")
        init_replay(cfg)
        run_backfill(cfg, BackfillSettings(replay=True, slot_name=name))
        run_replay(cfg)

        # forward, live
        stop = threading.Event()
        out: dict = {}
        follower = threading.Thread(target=lambda: out.setdefault("r", run_replay(cfg, follow=True, stop_event=stop)))
        follower.start()
        t0 = time.monotonic()
        run_workload(src, **load)
        stop.set()
        follower.join()
        tail = run_replay(cfg, until_caught_up=True)
        r = out["r"]
        results.append(row("forward, live", r.changes_applied + tail.changes_applied, time.monotonic() - t0,
                           r.lag_seconds_p50, r.lag_seconds_p99, r.target_commits + tail.target_commits))
        # forward, backlog
        run_workload(src, **load)
        r = run_replay(cfg, until_caught_up=True)
        results.append(row("forward, backlog", r.changes_applied, r.duration_seconds, r.lag_seconds_p50,
                           r.lag_seconds_p99, r.target_commits))
        forward_equal = fingerprints(src) == fingerprints(tgt)

        # write cutover
        pub = CdcPublisher(tgt, kc, name, chaos=chaos)
        pub.enable()
        init_reverse(cfg)
        rev = ReverseReplayer.from_config(cfg, kinesis=kc)

        # reverse, live
        stop_pub, stop_rev = threading.Event(), threading.Event()
        publishing = threading.Thread(target=pub.run, args=(stop_pub,))
        follower = threading.Thread(target=lambda: out.__setitem__("v", rev.run(until_caught_up=False, stop=stop_rev)))
        publishing.start()
        follower.start()
        t0 = time.monotonic()
        run_workload(tgt, write_to="target", **load)
        stop_pub.set()
        publishing.join()
        stop_rev.set()
        follower.join()
        tail = rev.run()
        v = out["v"]
        results.append(row("reverse, live", v.changes_applied + tail.changes_applied, time.monotonic() - t0,
                           v.lag_seconds_p50, v.lag_seconds_p99, v.source_commits + tail.source_commits,
                           f"{v.changes_stale + tail.changes_stale:,} stale/dup skipped, "
                           f"{v.changes_late + tail.changes_late} late"))
        # reverse, backlog
        run_workload(tgt, write_to="target", **load)
        published = pub.drain()
        v = rev.run()
        rev.close()
        results.append(row("reverse, backlog", v.changes_applied, v.duration_seconds, v.lag_seconds_p50,
                           v.lag_seconds_p99, v.source_commits,
                           f"{published.kinesis_records:,} Kinesis records for {published.records:,} changes, "
                           f"{v.changes_stale:,} stale/dup skipped"))
        pub.close()
        reverse_equal = fingerprints(src) == fingerprints(tgt)
    finally:
        kinesis.stop()
        with psycopg.connect(urls["source"], autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                         (name,))
        for role in ("source", "target"):
            with psycopg.connect(urls[role], autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    print(f"\nreverse vs forward replay on {platform.node()} ({os.cpu_count()} cores, shared: numbers are noisy); "
          f"load {args.tps:g} business txn/s requested x {args.seconds:g} s per phase; reverse: {args.shards} shards, "
          f"duplicates {args.duplicates:.0%}, shuffled, {args.defer:.0%} of transactions deferred, "
          f"settle_ms {args.settle_ms}")
    head = f"{'phase':<18}{'changes':>9}{'seconds':>9}{'changes/s':>11}{'lag p50 s':>10}{'lag p99 s':>10}{'commits':>9}  notes"
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['phase']:<18}{r['changes']:>9,}{r['seconds']:>9.2f}{r['rate']:>11,.0f}{r['p50'] or 0:>10.3f}"
              f"{r['p99'] or 0:>10.3f}{r['commits']:>9,}  {r['extra']}")
    fwd, rev_ = results[1]["rate"], results[3]["rate"]
    print(f"reverse/forward backlog throughput: {rev_ / fwd:.2f}x; target == source after forward: {forward_equal}, "
          f"after reverse: {reverse_equal}")


if __name__ == "__main__":
    main()
