"""Shadow-write replay under a live ledger workload: replayed rows/s against the source's own commit rate.

Both rates come from the same run on the same servers. Each business transaction is one source
transaction of five row changes (a journal row, two entries, two balance updates by the legacy
trigger). Two phases, each with ``reconcile replay run --follow`` running throughout:

* **live**: :func:`reconcile.workload.run_workload` (client-side business transactions with row locks)
  at ``--tps`` for ``--seconds``;
* **burst**: a server-side procedure on the source commits business transactions back to back in
  ``--burst-workers`` sessions (far faster than a client loop): the highest source rate this machine
  produces, to see whether replay keeps up and with what lag.

For each phase: source commits/s and rows/s, replayed rows/s (changes applied / phase time until
caught up), lag p50/p99 (target commit time minus source commit time, per source transaction), catch-up
time after the source stops, conflicts and retries. Target equality is checked at the end.

Usage::

    uv run python bench/replay.py                 # local stack under .reconcile/local
    uv run python bench/replay.py --seconds 20 --tps 800 --data-dir /tmp/stack
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
from reconcile.replay import ReplaySettings, init_replay, run_replay  # noqa: E402
from reconcile.schema import apply_plan, plan_from_source  # noqa: E402
from reconcile.workload import run_workload, seed  # noqa: E402

BURST_PROC = """
CREATE PROCEDURE ledger.bench_burst(n int, worker int) LANGUAGE plpgsql AS $$
DECLARE t bigint; a bigint; b bigint; cur char(3); amt numeric(18,2);
BEGIN
  FOR i IN 1..n LOOP
    SELECT account_id, currency INTO a, cur FROM ledger.accounts
     WHERE kind = 'settlement' ORDER BY account_id LIMIT 1;
    SELECT account_id INTO b FROM ledger.accounts
     WHERE kind = 'customer' AND currency = cur ORDER BY account_id OFFSET (i * 7 + worker * 13) % 50 LIMIT 1;
    amt := ((i % 500) + 1) / 100.0;
    INSERT INTO ledger.journal (idempotency_key, kind, posted_at, memo)
    VALUES ('burst-' || worker || '-' || i || '-' || clock_timestamp(), 'deposit', clock_timestamp(), 'bench')
    RETURNING txn_id INTO t;
    INSERT INTO ledger.entries (txn_id, account_id, currency, amount, posted_at)
    VALUES (t, a, cur, -amt, clock_timestamp()), (t, b, cur, amt, clock_timestamp());
    COMMIT;
  END LOOP;
END $$"""


def fingerprints(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        conn.execute("SET timezone = 'UTC'")
        return [conn.execute(f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY {k})) FROM ledger.{t} t")
                .fetchone() for t, k in (("accounts", "account_id"), ("journal", "txn_id"), ("entries", "entry_id"))]


def journal_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM ledger.journal").fetchone()[0]


def phase(cfg: Config, name: str, load) -> dict:
    """Run ``load()`` (returns source business transactions committed) while replay follows."""
    stop = threading.Event()
    out: dict = {}
    follower = threading.Thread(target=lambda: out.setdefault("r", run_replay(cfg, follow=True, stop_event=stop)))
    follower.start()
    t0 = time.monotonic()
    committed = load()
    t_source = time.monotonic() - t0
    # Let the follower catch up, then stop it.
    src = journal_count(cfg.source.conninfo)
    while journal_count(cfg.target.conninfo) < src:
        time.sleep(0.05)
    t_all = time.monotonic() - t0
    stop.set()
    follower.join()
    r = out["r"]
    rows = committed * 5
    return {
        "phase": name, "source_txns": committed, "source_seconds": t_source,
        "source_txn_s": committed / t_source, "source_rows_s": rows / t_source,
        "replayed_rows": r.changes_applied, "replay_rows_s": r.changes_applied / t_all,
        "catch_up_s": t_all - t_source, "lag_p50": r.lag_seconds_p50, "lag_p99": r.lag_seconds_p99,
        "target_commits": r.target_commits, "conflicts": r.conflicts, "retries": r.retries,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("RECONCILE_LOCAL_DIR", ".reconcile/local")))
    ap.add_argument("--seconds", type=float, default=15.0, help="length of the live phase")
    ap.add_argument("--tps", type=float, default=600.0, help="requested business transactions/s in the live phase")
    ap.add_argument("--workers", type=int, default=6, help="workload connections in the live phase")
    ap.add_argument("--burst", type=int, default=20000, help="business transactions per burst worker")
    ap.add_argument("--burst-workers", type=int, default=2)
    args = ap.parse_args()

    stack.up(args.data_dir)
    name = f"bench_replay_{uuid.uuid4().hex[:8]}"
    urls = {role: stack.url(role, args.data_dir) for role in stack.ROLES}
    for role in ("source", "target"):
        with psycopg.connect(urls[role], autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template1')
    src = psycopg.conninfo.make_conninfo(urls["source"], dbname=name)
    tgt = psycopg.conninfo.make_conninfo(urls["target"], dbname=name)
    cfg = Config(source=PostgresEndpoint("source", src), target=PostgresEndpoint("target", tgt),
                 stages={"replay": ReplaySettings(slot_name=name, poll_interval=0.2)})
    results = []
    try:
        with psycopg.connect(src, autocommit=True) as conn:
            seed(conn, accounts=2000, transactions=5000)
            conn.execute(BURST_PROC)
            plan = plan_from_source(conn, tables=cfg.tables, dialect="postgres")
        with psycopg.connect(tgt, autocommit=True) as conn:
            apply_plan(conn, plan, phase="pre-load")  # foreign keys would refuse chunks copied out of order
        init_replay(cfg)
        run_backfill(cfg, BackfillSettings(replay=True, slot_name=name))
        run_replay(cfg)

        def live() -> int:
            rep = run_workload(src, tps=args.tps, duration=args.seconds, workers=args.workers)
            return rep.committed_total

        def burst() -> int:
            def one(w: int) -> None:
                with psycopg.connect(src, autocommit=True) as conn:
                    conn.execute("CALL ledger.bench_burst(%s, %s)", (args.burst, w))
            threads = [threading.Thread(target=one, args=(w,)) for w in range(args.burst_workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return args.burst * args.burst_workers

        results.append(phase(cfg, "live workload", live))
        results.append(phase(cfg, "burst (server-side)", burst))
        final = run_replay(cfg)
        equal = fingerprints(src) == fingerprints(tgt)
    finally:
        with psycopg.connect(urls["source"], autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                         (name,))
        for role in ("source", "target"):
            with psycopg.connect(urls[role], autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    print(f"\nreplay benchmark on {platform.node()} ({os.cpu_count()} cores, shared: numbers are noisy), "
          "guards on (the DSQL stand-in), default budget (1,500 rows per target transaction)")
    head = (f"{'phase':<22}{'src txn/s':>10}{'src rows/s':>11}{'replayed rows/s':>16}{'lag p50 s':>10}"
            f"{'lag p99 s':>10}{'catch-up s':>11}{'commits':>9}{'conflicts':>10}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['phase']:<22}{r['source_txn_s']:>10,.0f}{r['source_rows_s']:>11,.0f}{r['replay_rows_s']:>16,.0f}"
              f"{r['lag_p50'] or 0:>10.3f}{r['lag_p99'] or 0:>10.3f}{r['catch_up_s']:>11.2f}{r['target_commits']:>9,}"
              f"{r['conflicts']:>10}")
    print(f"target == source after catch-up: {equal}; final run caught up: {final.caught_up}")
    print("goal (issue 5): >= 20,000 replayed rows/s with lag p99 < 5 s")


if __name__ == "__main__":
    main()
