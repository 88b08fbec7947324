"""Speed of the demo ledger's seed and live workload (the claims the test suite no longer times).

* **seed**: :func:`reconcile.workload.seed` of 100,000 journal transactions (about 200,000 entries),
  generated in Python and bulk-loaded with COPY; the claim is under 60 s on a laptop;
* **workload**: :func:`reconcile.workload.run_workload` at ``--tps`` for ``--seconds``; the claim is
  that it attempts within 20 % of the rate asked for (and never more than 10 % above it).

Each number is printed with its claim and whether this run met it; a loaded machine misses them, which
is why they live here and not in ``tests/``.

Usage::

    uv run python bench/workload.py                       # local stack under .reconcile/local
    uv run python bench/workload.py --tps 300 --seconds 5 --data-dir /tmp/stack
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconcile.local import stack  # noqa: E402
from reconcile.workload import run_workload, seed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="the local stack's folder (default .reconcile/local)")
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--tps", type=float, default=150)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    stack.up(args.data_dir)
    server = stack.url("source", args.data_dir)
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template1')
    url = psycopg.conninfo.make_conninfo(server, dbname=name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            report = seed(conn, transactions=args.transactions)
        print(f"seed: {report.summary()} (generate {report.generate_s:.2f} s, load {report.load_s:.2f} s); "
              f"claim < 60 s: {'met' if report.elapsed_s < 60 else 'MISSED'}")
        load = run_workload(url, tps=args.tps, duration=args.seconds, workers=4, seed=1, hot_fraction=0.5)
        low, high = args.tps * 0.8, args.tps * 1.1
        print(f"workload: {load.summary()}; claim {low:.0f}..{high:.0f} attempted TPS: "
              f"{'met' if low <= load.attempted_tps <= high else 'MISSED'}")
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
