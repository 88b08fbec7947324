"""Airflow's own footprint on the local multi-worker setup: start-up time, memory idle and under a
backfill, tasks per worker, wall time.

Seeds the demo ledger into fresh databases on the local stack (nothing existing is touched),
brings up ``reconcile airflow up --workers N``, measures every process tree idle (RSS and PSS from
/proc/<pid>/smaps_rollup, children included: a worker's task processes count to the worker), then
triggers ``reconcile_backfill`` through the REST API and samples the memory every 0.5 s until the
run ends: the peak per process and the peak of the sum (one instant). Stops the setup at the end
unless ``--keep``.

Usage::

    uv run python bench/airflow_footprint.py                    # 2 workers, ~200k entries
    uv run python bench/airflow_footprint.py --workers 4 --transactions 20000
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconcile.local import stack  # noqa: E402
from reconcile.local.airflow_cluster import Cluster, _children_map, memory_of_tree  # noqa: E402

MIB = 1024 * 1024


def _database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template1").format(sql.Identifier(name)))
    return psycopg.conninfo.make_conninfo(server_url, dbname=name)


def _drop(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _sample(cluster: Cluster) -> dict[str, dict[str, int]]:
    children = _children_map()
    out = {}
    for name in cluster.names():
        pid = cluster.pid(name)
        if pid:
            out[name] = memory_of_tree(pid, children)
    st = cluster.metadb().status()
    if st.pid:
        out["metadb"] = memory_of_tree(st.pid, children)
    return out


def _table(title: str, rows: dict[str, dict[str, int]]) -> None:
    print(f"\n{title}")
    print(f"  {'process':<14} {'RSS MiB':>8} {'PSS MiB':>8} {'procs':>6}")
    for name, m in rows.items():
        print(f"  {name:<14} {m['rss'] / MIB:>8.0f} {m['pss'] / MIB:>8.0f} {m['processes']:>6}")
    print(f"  {'total':<14} {sum(m['rss'] for m in rows.values()) / MIB:>8.0f} "
          f"{sum(m['pss'] for m in rows.values()) / MIB:>8.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--transactions", type=int, default=100_000, help="journal transactions seeded (2 entries each)")
    ap.add_argument("--accounts", type=int, default=2_000)
    ap.add_argument("--chunk-rows", type=int, default=20_000)
    ap.add_argument("--dir", type=Path, default=None, help="setup folder (default: a temporary one)")
    ap.add_argument("--stack-dir", type=Path, default=None, help="local stack folder (default: $RECONCILE_LOCAL_DIR)")
    ap.add_argument("--keep", action="store_true", help="leave the setup running")
    args = ap.parse_args()

    stack.up(args.stack_dir)
    src_url, tgt_url = stack.url("source", args.stack_dir), stack.url("target", args.stack_dir)
    name = f"bench_af_{uuid.uuid4().hex[:8]}"
    folder = args.dir or Path(tempfile.mkdtemp(prefix="reconcile-airflow-bench-"))
    source, target = _database(src_url, name), _database(tgt_url, name)
    cluster = Cluster(folder)
    try:
        from reconcile.schema import apply_plan, plan_from_source
        from reconcile.workload import seed

        with psycopg.connect(source, autocommit=True) as conn:
            seed(conn, accounts=args.accounts, transactions=args.transactions)
            plan = plan_from_source(conn, schemas=["ledger"], dialect="postgres")
            entries = conn.execute("SELECT count(*) FROM ledger.entries").fetchone()[0]
        with psycopg.connect(target, autocommit=True) as conn:
            apply_plan(conn, plan, phase="pre-load")
        conf = folder / "reconcile.toml"
        folder.mkdir(parents=True, exist_ok=True)
        conf.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source}"\n\n'
                        f'[target]\nkind = "postgres"\nconninfo = "{target}"\n')
        print(f"seeded {entries:,} entries; setup in {folder}")

        status = cluster.up(workers=args.workers, concurrency=args.concurrency, config=conf)
        print(f"start-up: {status.startup_seconds:.1f} s ({args.workers} workers)")
        idle = _sample(cluster)
        _table("idle", idle)

        rest = cluster.rest()
        rest.set_paused("reconcile_backfill", False)
        peaks: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"rss": 0, "pss": 0, "processes": 0})
        total_peak = {"rss": 0, "pss": 0}
        stop = threading.Event()

        def sampler():
            while not stop.is_set():
                now = _sample(cluster)
                for n, m in now.items():
                    for k in ("rss", "pss", "processes"):
                        peaks[n][k] = max(peaks[n][k], m[k])
                for k in ("rss", "pss"):
                    total_peak[k] = max(total_peak[k], sum(m[k] for m in now.values()))
                stop.wait(0.5)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        t0 = time.monotonic()
        run = rest.trigger("reconcile_backfill", {"chunk_rows": args.chunk_rows})
        while (state := rest.dag_run("reconcile_backfill", run["dag_run_id"])["state"]) not in ("success", "failed"):
            time.sleep(1.0)
        wall = time.monotonic() - t0
        stop.set()
        thread.join()
        tis = rest.task_instances("reconcile_backfill", run["dag_run_id"])
        chunks = [t for t in tis if t["task_id"] == "copy_chunk"]
        per_worker = collections.Counter(t["hostname"] for t in chunks)
        _table("peak during the backfill (per process; children included)", dict(peaks))
        print(f"  peak of the sum at one instant: RSS {total_peak['rss'] / MIB:.0f} MiB, "
              f"PSS {total_peak['pss'] / MIB:.0f} MiB")
        print(f"\nbackfill {state}: {entries:,} entries in {len(chunks)} chunks, wall {wall:.1f} s; "
              f"chunks per worker {dict(sorted(per_worker.items()))}; "
              f"mean chunk task {sum(t['duration'] or 0 for t in chunks) / max(1, len(chunks)):.1f} s")
    finally:
        if not args.keep:
            cluster.down()
            _drop(src_url, name)
            _drop(tgt_url, name)


if __name__ == "__main__":
    main()
