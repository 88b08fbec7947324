"""Benchmark: an incremental reconciliation run vs a full diff, on >= 10M entry rows at 1% churn per run.

Not a test. Starts (or reuses, with RECONCILE_BENCH_STACK_DIR) the two local servers, loads the same entries
table on both (the target's DSQL guards off for the load only), creates the replay slot, and then simulates
hourly runs. Each simulated hour a live workload changes ``--churn`` of the rows on the source (half updates of
random existing entries, half appended entries, 20 row changes per source transaction) while the replay follows
it (tracking changed keys, ``[replay] track_window_seconds`` scaled so an hour holds 12 windows, as 5-minute
windows would); a trickle of single-row updates keeps running during the diffs. Then, on the same state:

* the incremental run (``reconcile diff --incremental``: the keys the replay applied since the last run plus one
  sweep slice of 1/N of the key space), and
* a full diff (``reconcile diff --full``),

each timed (wall) with the rows read on each side (from the run's coverage). After the measured hours, a
target-only corruption is planted on a random cold row (never changed, so never tracked) and incremental runs
continue (at ``--detect-churn``) until one finds it: the runs it took, against the bound N.

Usage: ``./dev run python bench/incremental.py [--rows 10000000] [--hours 3] [--sweep-runs 24] [--churn 0.01]``.
The balance diff is left out (``balances = false``): it is a GROUP BY over every entry on each side and not
incremental (see the closing note).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg

from reconcile.config import Config, PostgresEndpoint, TableSpec
from reconcile.diff import run_diff
from reconcile.diff.settings import DiffSettings
from reconcile.local import guards, stack
from reconcile.replay import ReplaySettings, init_replay, run_replay

DDL = ("CREATE SCHEMA ledger",
       "CREATE TABLE ledger.entries (entry_id bigint PRIMARY KEY, txn_id bigint NOT NULL, account_id bigint NOT NULL, "
       "currency char(3) NOT NULL, amount numeric(18,2) NOT NULL, posted_at timestamptz NOT NULL)")
FILL = ("INSERT INTO ledger.entries SELECT g, (g + 1) / 2, 1 + g % 5000, (ARRAY['USD','EUR','GBP','JPY'])[1 + g % 4], "
        "CASE WHEN g % 2 = 0 THEN 1 ELSE -1 END * (1 + (g * 7919) % 100000) / 100.0, "
        "'2024-01-01Z'::timestamptz + g * interval '1 second' FROM generate_series({lo}::bigint, {hi}) g")
TABLE = TableSpec("ledger.entries", ("entry_id",))


def fresh_db(server: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template1')
    return psycopg.conninfo.make_conninfo(server, dbname=name)


def drop_db(server: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
                     (name,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def execute(url: str, *stmts: str, params=None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for s in stmts:
            conn.execute(s, params)


def load(url: str, rows: int) -> float:
    t0 = time.perf_counter()
    execute(url, *DDL)
    step = 2_000_000
    for lo in range(1, rows + 1, step):
        execute(url, FILL.format(lo=lo, hi=min(rows, lo + step - 1)))
    execute(url, "VACUUM ANALYZE ledger.entries")
    return time.perf_counter() - t0


class Workload:
    """Source transactions of 10 updates of random existing entries + 10 appended entries each."""

    def __init__(self, url: str, rows: int, seed: int) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.rng = random.Random(seed)
        self.top = rows
        self.rows = rows
        self.touched: set[int] = set()
        self.changes = 0

    def burst(self, changes: int) -> float:
        t0 = time.perf_counter()
        done = 0
        while done < changes:
            ids = [self.rng.randint(1, self.rows) for _ in range(10)]
            self.touched.update(ids)
            with self.conn.transaction():
                self.conn.execute("UPDATE ledger.entries SET amount = amount + 0.01, posted_at = now() "
                                  "WHERE entry_id = ANY(%s)", (ids,))
                self.conn.execute(FILL.format(lo=self.top + 1, hi=self.top + 10))
            self.top += 10
            done += 20
        self.changes += done
        return time.perf_counter() - t0

    def close(self) -> None:
        self.conn.close()


class Trickle:
    """A few single-row updates a second on the source while the diffs run (the workload stays live)."""

    def __init__(self, url: str, rows: int, touched: set[int]) -> None:
        self.stop = threading.Event()
        self.url, self.rows, self.touched = url, rows, touched
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(7)
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                k = rng.randint(1, self.rows)
                self.touched.add(k)
                conn.execute("UPDATE ledger.entries SET amount = amount + 0.01 WHERE entry_id = %s", (k,))
                self.stop.wait(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


class Replay:
    """The replay following the source in a thread for the whole benchmark (``run_replay(follow=True)``)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg, self.stop, self.result = cfg, threading.Event(), []
        self.thread = threading.Thread(target=lambda: self.result.append(
            run_replay(cfg, follow=True, stop_event=self.stop)), daemon=True)

    def caught_up(self, timeout: float = 1800) -> float:
        """Seconds until the watermark passes the source's position now (a condition, polled)."""
        from reconcile.diff import lag

        t0 = time.perf_counter()
        with psycopg.connect(self.cfg.source.conninfo, autocommit=True) as s, \
                psycopg.connect(self.cfg.target.conninfo, autocommit=True) as t:
            goal = lag.lsn_int(lag.current_lsn(s))
            while (lag.watermark(t, self.cfg.replay.slot_name) or 0) < goal:
                if not self.thread.is_alive() or time.perf_counter() - t0 > timeout:
                    raise RuntimeError(f"the replay stopped or fell behind: {self.result}")
                time.sleep(0.05)
        return time.perf_counter() - t0

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(60)


def _table_seconds(summary: dict) -> float | None:
    """The entries table's own diff time (its diff_results duration), without the run's start and finish."""
    with psycopg.connect(summary_target[0]) as conn:
        row = conn.execute("SELECT duration_ms FROM reconcile.diff_results WHERE run_id = %s AND table_name = %s",
                           (summary["run_id"], "ledger.entries")).fetchone()
    return row[0] / 1000 if row and row[0] is not None else None


summary_target: list[str] = []


def timed_diff(cfg: Config, mode: str, reports: str) -> tuple[float, dict, dict]:
    t0 = time.perf_counter()
    result = run_diff(cfg, mode=mode, report_dir=reports)
    wall = time.perf_counter() - t0
    cov = result.summary["coverage"]["tables"]["ledger.entries"]
    return wall, result.summary, cov


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--hours", type=int, default=3, help="simulated hours measured against a full diff")
    ap.add_argument("--sweep-runs", type=int, default=24)
    ap.add_argument("--churn", type=float, default=0.01, help="share of rows changed per simulated hour")
    ap.add_argument("--detect-churn", type=float, default=0.001, help="churn while waiting for the sweep")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    data_dir = Path(os.environ.get("RECONCILE_BENCH_STACK_DIR") or tempfile.mkdtemp(prefix="bench-inc-"))
    stack.up(data_dir)
    servers = {role: stack.url(role, data_dir) for role in stack.ROLES}
    src, tgt = fresh_db(servers["source"]), fresh_db(servers["target"])
    try:
        guards.configure(tgt, enabled=False)   # bulk load only
        for url in (src, tgt):
            print(f"loaded {args.rows:,} rows in {load(url, args.rows):.1f}s", flush=True)
        guards.configure(tgt, enabled=True)
        burst = int(args.rows * args.churn)
        workload = Workload(src, args.rows, seed=11)
        # an hour's churn takes about burst / 6000 s here: 12 windows per simulated hour, as 5-minute windows
        window = max(1.0, burst / 6000 / 12)
        slot = "bench_" + uuid.uuid4().hex[:8]
        cfg = Config(source=PostgresEndpoint("source", src), target=PostgresEndpoint("target", tgt), tables=(TABLE,),
                     stages={"replay": ReplaySettings(slot_name=slot, publication=slot, require_backfill=False,
                                                      track_window_seconds=window),
                             "diff": DiffSettings(workers=args.workers, balances=False, lag_wait_seconds=120,
                                                  sweep_runs=args.sweep_runs, mode="incremental")})
        reports = tempfile.mkdtemp(prefix="bench-inc-reports-")
        summary_target.append(tgt)
        init_replay(cfg)
        run_replay(cfg, until_caught_up=True)
        t, first, _ = timed_diff(cfg, "full", reports)
        print(f"first verification (full): {t:.2f}s, verdict {first['verdict']}", flush=True)
        rows = []
        replay = Replay(cfg).__enter__()
        for hour in range(1, args.hours + 1):
            tw = workload.burst(burst)
            tr = replay.caught_up()
            with Trickle(src, args.rows, workload.touched):
                ti, inc, ci = timed_diff(cfg, "incremental", reports)
                tf, full, cf = timed_diff(cfg, "full", reports)
            ch = ci.get("changed") or {}
            rows.append((hour, ti, ci["rows_read"], tf, cf["rows_read"], inc["verdict"], full["verdict"],
                         ch.get("changes"), ch.get("keys"), ch.get("ranges")))
            print(f"hour {hour}: workload {burst:,} changes in {tw:.1f}s (replay following; caught up {tr:.1f}s after "
                  f"the burst); incremental {ti:.2f}s "
                  f"{ci['rows_read']} ({ch.get('changes')} tracked changes: {ch.get('keys')} keys, "
                  f"{ch.get('ranges')} ranges; slice {(ci.get('sweep') or {}).get('slice')}; seconds "
                  f"{ci.get('seconds')}, table {_table_seconds(inc)}) {inc['verdict']}; "
                  f"full {tf:.2f}s (table {_table_seconds(full)}) {cf['rows_read']} {full['verdict']}", flush=True)

        # a target-only corruption on a cold row: only the sweep can find it
        rng = random.Random(5)
        cold = next(k for k in iter(lambda: rng.randint(1, args.rows), None) if k not in workload.touched)
        execute(tgt, "UPDATE ledger.entries SET amount = amount + 1 WHERE entry_id = %s", params=(cold,))
        small = max(20, int(args.rows * args.detect_churn))
        runs, found, times = 0, None, []
        while found is None and runs < args.sweep_runs + 1:
            workload.burst(small)
            replay.caught_up()
            runs += 1
            t, s, c = timed_diff(cfg, "incremental", reports)
            times.append(t)
            if s["verdict"] == "red":
                found = (runs, (c.get("sweep") or {}).get("slice"))
        print()
        print(f"{'hour':>4} {'incremental':>12} {'rows read src/tgt':>20} {'full diff':>10} {'rows read src/tgt':>22} "
              f"{'inc/full time':>14} {'inc/full rows':>14}")
        for hour, ti, ri, tf, rf, vi, vf, *_ in rows:
            print(f"{hour:>4} {ti:>11.2f}s {ri['source']:>9,}/{ri['target']:<10,} {tf:>9.2f}s "
                  f"{rf['source']:>10,}/{rf['target']:<11,} {ti / tf:>13.1%} "
                  f"{(ri['source'] + ri['target']) / (rf['source'] + rf['target']):>13.1%}  ({vi}/{vf})")
        med_i = statistics.median(r[1] for r in rows)
        med_f = statistics.median(r[3] for r in rows)
        print(f"median: incremental {med_i:.2f}s, full {med_f:.2f}s: {med_i / med_f:.1%} of a full diff at "
              f"{args.churn:.1%} churn, sweep N = {args.sweep_runs}")
        if found:
            print(f"cold-row corruption (entry {cold}) found by incremental run {found[0]} after planting (sweep slice "
                  f"{found[1] + 1} of {args.sweep_runs}; bound: {args.sweep_runs} runs = {args.sweep_runs} h hourly); "
                  f"those runs took {statistics.median(times):.2f}s each (median)")
        else:
            print(f"cold-row corruption NOT found within {runs} runs (bound {args.sweep_runs})")
        # for reference: the balance diff's core, a GROUP BY over every entry, on both sides at once
        def group_by(url: str, out: list) -> None:
            with psycopg.connect(url) as c:
                t0 = time.perf_counter()
                c.execute("SELECT account_id, currency, sum(amount) FROM ledger.entries GROUP BY 1, 2").fetchall()
                out.append(time.perf_counter() - t0)
        took: list = []
        other = threading.Thread(target=group_by, args=(tgt, took))
        t0 = time.perf_counter()
        other.start()
        group_by(src, took)
        other.join()
        print(f"balance diff core (per-account sums over every entry, both sides at once): "
              f"{time.perf_counter() - t0:.2f}s: not incremental (see the closing note)")
        workload.close()
        replay.__exit__()
    finally:
        drop_db(servers["source"], src)
        drop_db(servers["target"], tgt)
        if not os.environ.get("RECONCILE_BENCH_STACK_DIR"):
            stack.down(data_dir)


if __name__ == "__main__":
    main()
