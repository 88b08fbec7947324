"""The whole pipeline at scale (default ten million entries): wall time and peak RSS per stage.

Stages, in order, on one seeded demo ledger (``--entries``; half as many journal transactions, 10,000
customer accounts):

1. **seed**: :func:`reconcile.workload.seed` (what ``reconcile workload seed`` runs): generated a batch
   ahead of COPY;
2. **COPY pipe**: one ``COPY ... TO STDOUT`` piped into one ``COPY ... FROM STDIN`` per table, one target
   transaction, guards off (:func:`bench.backfill.baseline`): the floor the backfill is compared with;
3. **backfill** with 1, 2 and 4 workers into fresh targets (the DSQL stand-in's guards on, default
   settings); the 4-worker run is the real one (``replay = true``: it takes the slot's snapshot) whose
   target the next stages use;
4. **backlog**: ``--changes`` row changes committed on the source by a server-side procedure (each
   business transaction is 5 changes: a journal row, two entries, two balance updates by the trigger),
   not timed as a stage of ours;
5. **replay catch-up** of that backlog (``reconcile replay run`` until caught up): changes/s;
6. **diff identical** (row diff of the three tables, balances off), **balances** (the balance diff alone),
   **expectations** (every suite, both sides, ``[checks] chunk_rows`` default), then **diff with 1,000
   scattered changes** (amounts changed on the target, spread over the key space).

Each stage runs in its own fresh Python process (``multiprocessing`` spawn) so its peak RSS
(``ru_maxrss`` of the process, and of any process it started) is its own. The servers' memory is not
counted. Prints a table: stage, wall s, rows or changes per second, peak RSS MiB, ratio vs the COPY pipe.

Usage::

    uv run python bench/scale.py                          # 10M entries, 1M changes
    uv run python bench/scale.py --entries 200000 --changes 20000   # a quick look
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ACCOUNTS = 10_000


def _rss_mib() -> float:
    """Peak RSS of this process or of any child it waited for, MiB (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def _config(source: str, target: str, slot: str, **diff):
    from reconcile.checks.settings import CheckSettings
    from reconcile.config import DEMO_STAGE_SETTINGS, Config, PostgresEndpoint
    from reconcile.diff.settings import DiffSettings
    from reconcile.replay import ReplaySettings

    checks = {k: tuple(v) if isinstance(v, list) else v for k, v in DEMO_STAGE_SETTINGS["checks"].items()}
    return Config(source=PostgresEndpoint("source", source), target=PostgresEndpoint("target", target),
                  stages={"replay": ReplaySettings(slot_name=slot), "checks": CheckSettings(**checks),
                          "diff": DiffSettings(**{**DEMO_STAGE_SETTINGS["diff"], "lag_wait_seconds": 0, **diff})})


# --- stages: each runs in a spawned process and returns (count, details) --------------------------------


def st_seed(source: str, entries: int) -> tuple[int, str]:
    from reconcile.workload import seed

    with psycopg.connect(source, autocommit=True) as conn:
        report = seed(conn, accounts=ACCOUNTS, transactions=max(1, entries // 2))
    return report.rows, (f"{report.entries:,} entries, {report.journal_rows:,} journal, {report.accounts:,} accounts; "
                         f"generate {report.generate_s:.0f} s")


def st_copy_pipe(source: str, target: str) -> tuple[int, str]:
    from bench.backfill import TABLES, baseline

    baseline(source, target, [t.name for t in TABLES])
    with psycopg.connect(target) as conn:
        rows = sum(conn.execute(f"SELECT count(*) FROM {t.name}").fetchone()[0] for t in TABLES)
    return rows, "guards off, one transaction"


def st_backfill(source: str, target: str, workers: int) -> tuple[int, str]:
    from bench.backfill import TABLES, backfill

    _, rows, retries = backfill(source, target, [t.name for t in TABLES], workers=workers)
    return rows, f"guards on, retries {retries}"


def st_backfill_replay(source: str, target: str, slot: str, workers: int) -> tuple[int, str]:
    from reconcile.backfill import BackfillSettings, run_backfill

    cfg = _config(source, target, slot)
    summary = run_backfill(cfg, BackfillSettings(replay=True, slot_name=slot, workers=workers))
    if summary.status != "done" or summary.rejected:
        raise SystemExit(f"backfill did not complete cleanly: {summary.text()}")
    return summary.rows, "guards on, replay snapshot (the target the next stages use)"


def st_replay(source: str, target: str, slot: str) -> tuple[int, str]:
    from reconcile.replay import run_replay

    result = run_replay(_config(source, target, slot))
    return result.changes_applied, (f"{result.txns_applied:,} txns, {result.target_commits:,} commits, "
                                    f"caught up {result.caught_up}")


def st_diff(source: str, target: str, slot: str, expect_changed: int) -> tuple[int, str]:
    from reconcile.diff import run_diff

    result = run_diff(_config(source, target, slot, balances=False))
    tables = result.to_dict()["tables"]
    changed = sum(int(t.get("changed") or 0) + int(t.get("missing") or 0) + int(t.get("extra") or 0)
                  for t in tables.values())
    if changed != expect_changed:
        raise SystemExit(f"diff found {changed} differences, expected {expect_changed}")
    rows = sum(int(t.get("rows_source") or 0) for t in tables.values())
    return rows, f"{changed:,} differences found"


def st_balances(source: str, target: str, slot: str) -> tuple[int, str]:
    from reconcile.diff.run import diff_balances, finish_diff, start_diff

    cfg = _config(source, target, slot)
    run_id = start_diff(cfg, tables=["ledger.accounts"], lag_wait_seconds=0)
    out = diff_balances(cfg, run_id)
    finish_diff(cfg, run_id)
    with psycopg.connect(source) as conn:
        entries = conn.execute("SELECT count(*) FROM ledger.entries").fetchone()[0]
    return entries, f"{out.get('status')}, {out.get('balance_differences')} differences"


def st_checks(source: str, target: str, slot: str) -> tuple[int, str]:
    from reconcile.checks import run_checks

    cfg = _config(source, target, slot)
    result = run_checks(cfg)
    with psycopg.connect(source) as conn:
        rows = sum(conn.execute(f"SELECT count(*) FROM ledger.{t}").fetchone()[0]
                   for t in ("accounts", "journal", "entries"))
    chunks = sum(int((o.result or {}).get("chunking", {}).get("chunks") or 0) for o in result.evaluated)
    failed = ", ".join(sorted({f"{o.check.suite}/{o.check.name}" for o in result.failed}))
    return 2 * rows, (f"{result.status}, {len(result.evaluated)} expectations, {len(result.failed)} failed"
                      f"{' (' + failed + ')' if failed else ''}, {chunks} chunk batches, both sides")


def _child(fn_name: str, args: tuple, out) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    try:
        count, note = globals()[fn_name](*args)
        out.send(("ok", time.perf_counter() - t0, count, note, _rss_mib()))
    except BaseException as exc:  # reported by the parent
        out.send(("error", time.perf_counter() - t0, 0, f"{type(exc).__name__}: {exc}", _rss_mib()))
        raise


def stage(results: list, name: str, fn_name: str, *args, unit: str = "rows", base: float | None = None) -> float:
    """Run one stage in a spawned process; record and print its line; returns its rate."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn_name, args, send), name=name)
    proc.start()
    send.close()
    status, wall, count, note, rss = recv.recv()
    proc.join()
    if status != "ok":
        raise SystemExit(f"stage {name} failed: {note}")
    rate = count / wall if wall > 0 else 0.0
    ratio = f"{rate / base:.2f}x" if base else ""
    results.append((name, wall, count, unit, rate, rss, ratio, note))
    print(f"  {name:<34} {wall:9.1f} s {count:>12,} {unit:<7} {rate:>10,.0f}/s {rss:8.0f} MiB {ratio:>6}  {note}",
          flush=True)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=10_000_000, help="entries to seed (half as many transactions)")
    ap.add_argument("--changes", type=int, default=1_000_000, help="row changes in the replay backlog")
    ap.add_argument("--scattered", type=int, default=1_000, help="entries changed on the target for the last diff")
    ap.add_argument("--data-dir", default=str(ROOT / ".reconcile" / "scale"), help="local stack folder")
    ap.add_argument("--keep", action="store_true", help="keep the bench databases")
    args = ap.parse_args()

    from bench.backfill import drop_db, fresh_db, new_target
    from bench.replay import BURST_PROC
    from reconcile.local import stack

    was_running = all(st.running for st in stack.status(args.data_dir).values())
    stack.up(args.data_dir)
    src_server, tgt_server = stack.url("source", args.data_dir), stack.url("target", args.data_dir)
    slot = f"scale_{uuid.uuid4().hex[:8]}"
    source = fresh_db(src_server, "scale_s")
    made = [source]
    results: list = []
    print(f"scale bench: {args.entries:,} entries, {args.changes:,} backlog changes on {platform.node()} "
          f"({os.cpu_count()} CPUs, both servers on this host)\n")
    print(f"  {'stage':<34} {'wall':>11} {'count':>20} {'rate':>12} {'peak RSS':>12} {'vs COPY':>6}")
    try:
        stage(results, "seed (COPY, generated ahead)", "st_seed", source, args.entries)
        tgt = new_target(tgt_server, guarded=False)
        made.append(tgt)
        base = stage(results, "COPY pipe (baseline)", "st_copy_pipe", source, tgt)
        drop_db(tgt_server, tgt)
        made.remove(tgt)
        for workers in (1, 2):
            tgt = new_target(tgt_server, guarded=True)
            made.append(tgt)
            stage(results, f"backfill, {workers} worker{'s' if workers > 1 else ''}", "st_backfill", source, tgt,
                  workers, base=base)
            drop_db(tgt_server, tgt)
            made.remove(tgt)
        from reconcile.replay import init_replay
        from reconcile.schema import apply_plan, plan_from_source

        target = fresh_db(tgt_server, "scale_t")
        made.append(target)
        cfg = _config(source, target, slot)
        with psycopg.connect(source, autocommit=True) as conn:
            plan = plan_from_source(conn, tables=cfg.tables, dialect="postgres")
            conn.execute(BURST_PROC)
        with psycopg.connect(target, autocommit=True) as conn:
            apply_plan(conn, plan, phase="pre-load")
        init_replay(cfg)
        stage(results, "backfill, 4 workers (+ replay slot)", "st_backfill_replay", source, target, slot, 4, base=base)

        txns = max(1, args.changes // 5)
        t0 = time.perf_counter()
        import threading

        def burst(w: int, n: int) -> None:
            with psycopg.connect(source, autocommit=True) as conn:
                conn.execute("CALL ledger.bench_burst(%s, %s)", (n, w))
        threads = [threading.Thread(target=burst, args=(w, txns // 2 + (w < txns % 2))) for w in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"  (backlog: {txns:,} business transactions, {txns * 5:,} changes committed on the source in "
              f"{time.perf_counter() - t0:.0f} s)", flush=True)
        stage(results, "replay catch-up of the backlog", "st_replay", source, target, slot, unit="changes")
        t0 = time.perf_counter()
        with psycopg.connect(target, autocommit=True) as conn:
            apply_plan(conn, plan, phase="post-load")  # secondary indexes: the chunk boundaries' index walks
        print(f"  (target post-load phase: indexes and foreign keys in {time.perf_counter() - t0:.0f} s)", flush=True)
        stage(results, "diff, identical", "st_diff", source, target, slot, 0)
        stage(results, "balances", "st_balances", source, target, slot, unit="entries")
        stage(results, "expectations (both sides)", "st_checks", source, target, slot)
        with psycopg.connect(target, autocommit=True) as conn:
            top = conn.execute("SELECT max(entry_id) FROM ledger.entries").fetchone()[0]
            step = max(1, top // args.scattered)
            ids = list(range(step // 2 + 1, top + 1, step))[:args.scattered]
            for i in range(0, len(ids), 500):  # within a DSQL transaction's row limit
                with conn.transaction():
                    conn.execute("UPDATE ledger.entries SET amount = amount + 0.01 WHERE entry_id = ANY(%s)",
                                 (ids[i:i + 500],))
        stage(results, f"diff, {len(ids):,} scattered changes", "st_diff", source, target, slot, len(ids))
    finally:
        with psycopg.connect(src_server, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                         (slot,))
        if not args.keep:
            for url in made:
                drop_db(src_server if url == source else tgt_server, url)
            if not was_running:
                stack.down(args.data_dir)

    print("\n| stage | wall s | rows or changes | per second | peak RSS MiB | vs COPY pipe |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, wall, count, unit, rate, rss, ratio, note in results:
        print(f"| {name} | {wall:.1f} | {count:,} {unit} | {rate:,.0f} | {rss:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
