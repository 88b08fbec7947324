"""`reconcile demo`: the main job on the embedded local databases.

For now (the pipeline stages arrive issue by issue) it brings the local stack up, prepares the
control schema on the target, seeds the demo ledger on the source, runs a short live workload,
and prints what runs where and what to try next. Every step is idempotent: run it again and it
re-seeds the same deterministic ledger.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from reconcile.config import LocalEndpoint


def run_demo(*, data_dir: Path | None, transactions: int, accounts: int, tps: float, duration: float,
             seed: int, echo: Callable[[str], None] = print) -> dict:
    from reconcile import connections
    from reconcile.control import migrate
    from reconcile.local import stack
    from reconcile.workload import run_workload
    from reconcile.workload import seed as seed_ledger

    t_start = time.monotonic()
    timings: dict[str, float] = {}
    data = stack.resolve_data_dir(data_dir)
    source = LocalEndpoint(side="source", data_dir=data)
    target = LocalEndpoint(side="target", data_dir=data)

    echo("STEP 1: local stack")
    t0 = time.monotonic()
    statuses = stack.up(data)
    timings["stack_up_s"] = time.monotonic() - t0
    for role, st in statuses.items():
        echo(f"  {role:<7} {st.url}")

    echo("STEP 2: control schema on the target")
    t0 = time.monotonic()
    with connections.connect(target) as conn:
        applied = migrate(conn)
    timings["control_schema_s"] = time.monotonic() - t0
    echo(f"  {len(applied)} migration(s) applied" if applied else "  already up to date")

    echo(f"STEP 3: seed the demo ledger on the source ({transactions:,} journal transactions)")
    t0 = time.monotonic()
    with connections.connect(source) as conn:
        seeded = seed_ledger(conn, accounts=accounts, transactions=transactions, seed=seed, reset=True)
    timings["seed_s"] = time.monotonic() - t0
    echo("  " + seeded.summary().replace("\n", "\n  "))

    echo(f"STEP 4: live workload on the source ({tps:g} tps for {duration:g} s)")
    t0 = time.monotonic()
    load = run_workload(lambda: connections.connect(source), tps=tps, duration=duration, seed=seed)
    timings["workload_s"] = time.monotonic() - t0
    echo("  " + load.summary().replace("\n", "\n  "))

    timings["total_s"] = time.monotonic() - t_start
    echo("")
    echo(f"Done in {timings['total_s']:.1f}s. The stack stays up:")
    echo(f"  source (Aurora PostgreSQL stand-in, system of record): {statuses['source'].url}")
    echo(f"  target (Aurora DSQL stand-in, guarded):               {statuses['target'].url}")
    echo("Try next:")
    echo("  reconcile workload run --tps 200 --duration 30    # more live writes on the source")
    echo("  psql \"$(reconcile local url target)\" -c 'TRUNCATE reconcile.runs'   # refused: 0A000")
    echo("  reconcile local status | reconcile local down")
    return {"timings": timings, "seed": seeded.to_dict(), "workload": load.to_dict()}
