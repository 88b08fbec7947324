"""A live repair: copy exactly the keys a diff found wrong through the running replay, then verify them again.

For each table, the keys (a diff run's findings: missing, extra or changed rows; or given keys) are cut
into chunks of ``[repair] chunk_rows``; each chunk follows the DBLog protocol (:mod:`reconcile.replay.marks`):

1. the chunk and its keys are recorded on the target (``requested``);
2. a *low* watermark is written into the source's change stream;
3. the repair waits until every source transaction in progress at that point has ended
   (:func:`reconcile.repair.source.wait_for_older_transactions`), then reads the rows in one statement,
   as the text forms the replay's decoding produces (a key the source lacks becomes a delete);
4. the rows are stored on the target (``copied``), then a *high* watermark is written (``emitted``).

The replay applies each chunk when it reaches its high watermark, minus the keys it saw change between the
two (its own change is newer), in its commit order. The repair waits for that (``[repair]
apply_wait_seconds``; the replay must be running), then re-reads the keys on both sides after the replay
watermark has passed the source's current position, with the diff's lag-aware re-checks, and records each
key's outcome in ``reconcile.repair_results``: ``repaired`` (equal now), ``in_flight`` (the row kept changing
on the source: the target stands between two source reads), ``still_differs``, or ``not_applied`` (the replay
could not apply the chunk, e.g. it never saw its low watermark).

A whole-table repair (``whole_table``) copies every row of a table in key order, chunk by chunk, the same way:
the backfill of a table added to a migration whose replay is already running. Nothing is deleted on the
target then; the table is verified whole at the end.

Killed anywhere, a repair is simply run again: chunks already applied are harmless (each one is correct on
its own), and chunks a dead repair left without a high watermark are marked ``abandoned`` by the next one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from reconcile.budget import budget_from
from reconcile.config import Config, TableSpec
from reconcile.diff import hashdiff, lag
from reconcile.diff.compare import Finding, compare_rows, jsonable
from reconcile.diff.side import Pair, Side
from reconcile.occ import policy_from
from reconcile.repair import source as src
from reconcile.repair.errors import RepairError, RepairTimeout
from reconcile.repair.store import RepairStore
from reconcile.replay.source import prepare_session

log = logging.getLogger("reconcile.repair")

RUN_KIND = "repair"
TEXT_TYPES = ("text", "character varying", "character")


@dataclass
class RepairResult:
    """What one repair did (JSON-able through :meth:`to_dict`)."""

    repair_id: str | None
    status: str
    """``repaired`` (every key equal now), ``partial`` (some still differ or were not applied), ``skipped``
    (an automatic repair decided not to run) or ``error``."""
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return {"repaired": 0, "skipped": 0, "partial": 1}.get(self.status, 2)

    def to_dict(self) -> dict[str, Any]:
        return {"repair_id": self.repair_id, "status": self.status, **self.summary}


def _connect(endpoint: Any) -> psycopg.Connection:
    from reconcile.connections import connect

    return connect(endpoint)


def _control(config: Config, conn: psycopg.Connection):
    from reconcile.backfill.checkpoints import Control

    from reconcile.identity import migration_of

    return Control(conn, budget=budget_from(config), policy=policy_from(config),
                   migration_id=migration_of(config).id)


def latest_diff_run(conn: psycopg.Connection, migration_id: str | None = None) -> str | None:
    """The newest finished diff run (of migration ``migration_id`` when given: never another migration's)."""
    row = conn.execute("SELECT run_id::text FROM reconcile.runs WHERE kind = 'diff' AND status IN ('green', 'red', "
                       "'error') AND (%s::text IS NULL OR migration_id = %s) ORDER BY finished_at DESC NULLS LAST "
                       "LIMIT 1", (migration_id, migration_id)).fetchone()
    return row[0] if row else None


def findings_of(conn: psycopg.Connection, run_id: str, tables: list[str] | None) -> dict[str, list[tuple[Any, str]]]:
    """The row findings a diff run stored, per table: (key values, kind)."""
    from reconcile.diff import store

    out: dict[str, list[tuple[Any, str]]] = {}
    for f in store.load_findings(conn, run_id):
        if f["kind"] not in ("missing_in_target", "extra_in_target", "changed"):
            continue
        if tables and f["table"] not in tables:
            continue
        out.setdefault(f["table"], []).append((tuple(f["key"]), f["kind"]))
    return out


def record_decision(config: Config, diff_run_id: str | None, sentence: str, *, findings: int) -> RepairResult:
    """Record a decision not to repair (an automatic repair over its limit): never silent."""
    with _connect(config.target) as conn:
        runs = _control(config, conn)
        rid = runs.start_run({"diff_run_id": diff_run_id, "slot_name": config.replay.slot_name, "auto": True},
                             kind=RUN_KIND)
        summary = {"diff_run_id": diff_run_id, "decision": "not repaired", "findings": findings, "sentence": sentence}
        runs.finish_run(rid, "skipped", summary)
    log.warning("repair of diff run %s: %s", diff_run_id, sentence)
    return RepairResult(rid, "skipped", summary)


def run_repair(config: Config, *, diff_run_id: str | None = None, tables: list[str] | None = None,
               keys: dict[str, list[tuple]] | None = None, whole_table: bool = False,
               apply_wait_seconds: float | None = None, auto: bool = False) -> RepairResult:
    """Repair the findings of a diff run (default: the latest), or given keys, or whole tables, through the replay.

    Args:
        config: the resolved configuration.
        diff_run_id: the diff run whose findings to repair (default the latest finished diff run).
        tables: only these tables (required with ``whole_table``).
        keys: ``{table: [key values, ...]}`` to repair instead of a run's findings.
        whole_table: copy every row of ``tables`` (a table added to a migration whose replay runs).
        apply_wait_seconds: overrides ``[repair] apply_wait_seconds``.
        auto: started by the reconciliation DAG (recorded as such).

    Raises:
        RepairError: nothing to repair, or a table/key the source lacks, or a source transaction that never ends.
        RepairTimeout: the replay did not reach the high watermarks in time (is it running?).
    """
    from reconcile.control import migrate
    from reconcile.identity import cutover_key, migration_of
    from reconcile.schema.dialect import dialect_for

    s = config.repair
    slot = config.replay.slot_name
    wait = s.apply_wait_seconds if apply_wait_seconds is None else float(apply_wait_seconds)
    for name in tables or []:
        config.table(name)
    if whole_table and not tables:
        raise RepairError("A whole-table repair needs the table: give --table (a table added to the migration).")
    with _connect(config.target) as tconn:
        migrate(tconn, dialect=dialect_for(config.target).name, policy=policy_from(config))
        _refuse_reverse(tconn, diff_run_id, key=cutover_key(config))
        store = RepairStore(tconn, budget=budget_from(config), policy=policy_from(config))
        work: dict[str, list[tuple[Any, str]] | None]
        if whole_table:
            work = {name: None for name in tables or []}
        elif keys is not None:
            work = {config.table(t).name: [(tuple(k), "given") for k in ks] for t, ks in keys.items() if ks}
        else:
            diff_run_id = diff_run_id or latest_diff_run(tconn, migration_of(config).id)
            if diff_run_id is None:
                raise RepairError("No finished diff run of this migration is stored, so there are no findings to "
                                  "repair: run `reconcile diff` first, or give the run (--run) or the keys.")
            work = dict(findings_of(tconn, diff_run_id, tables))  # type: ignore[arg-type]
        if not work:
            raise RepairError(f"Diff run {diff_run_id} has no row findings"
                              + (f" in {', '.join(tables)}" if tables else "") + " to repair; nothing to do.")
        ordered = [t.name for t in config.tables if t.name in work]
        runs = _control(config, tconn)
        repair_id = runs.start_run({"diff_run_id": diff_run_id, "slot_name": slot, "tables": ordered,
                                    "whole_table": whole_table, "auto": auto,
                                    "keys": sum(len(v or ()) for v in work.values())}, kind=RUN_KIND)
        log.info("repair %s of %s: %s", repair_id, diff_run_id or "given keys", ", ".join(ordered))
        try:
            result = _repair(config, store, repair_id, diff_run_id, {t: work[t] for t in ordered}, whole_table, wait)
        except BaseException as exc:
            runs.finish_run(repair_id, "error", {"diff_run_id": diff_run_id, "error": config.safe_message(exc)})
            raise
        runs.finish_run(repair_id, result.status, result.summary)
    return result


def _refuse_reverse(conn: psycopg.Connection, diff_run_id: str | None, *, key: str | None) -> None:
    """A repair copies source rows onto the target: never while the target is the system of record."""
    from reconcile.diff.store import get_run
    from reconcile.direction import REVERSE, direction_of

    run = get_run(conn, diff_run_id) if diff_run_id else None
    if direction_of(conn, key=key) == REVERSE or (run is not None and run["settings"].get("direction") == REVERSE):
        raise RepairError("After write cutover the target is the system of record, and a repair would copy the old "
                          "source's rows over it; let the reverse replay bring the source in line (`reconcile reverse "
                          "run`), or roll back first.")


def _repair(config: Config, store: RepairStore, repair_id: str, diff_run_id: str | None,
            work: dict[str, list[tuple[Any, str]] | None], whole_table: bool, wait: float) -> RepairResult:
    s = config.repair
    slot = config.replay.slot_name
    stale = store.abandon_stale(slot, repair_id)
    if stale:
        log.warning("repair %s: %d chunk(s) left by earlier repairs without a high watermark marked abandoned",
                    repair_id, stale)
    chunks: dict[str, list[str]] = {}
    requested: dict[str, list[tuple]] = {}
    kinds: dict[str, dict[tuple, str]] = {}
    with _connect(config.source) as sconn:
        prepare_session(sconn)
        for name, items in work.items():
            st = src.describe(sconn, name, config.table(name).key)
            if items is None:
                chunks[name] = _copy_range(sconn, store, st, repair_id, slot, s, _byte_cap(config))
                continue
            canon = src.canonical_keys(sconn, st, [k for k, _ in items])
            requested[name] = list(dict.fromkeys(canon))
            kinds[name] = {c: kind for c, (_, kind) in zip(canon, items)}
            chunks[name] = _copy_keys(sconn, store, st, requested[name], repair_id, slot, s, _byte_cap(config))
    all_ids = [c for ids in chunks.values() for c in ids]
    marks = _wait_applied(store, all_ids, wait, s.poll_seconds)
    store.purge_rows(all_ids)  # applied (or closed as not applied): the copies are no longer needed
    tables: dict[str, dict[str, Any]] = {}
    results: list[tuple[str, Any, str | None, str, Any]] = []
    for name in work:
        m = [marks[c] for c in chunks[name]]
        not_applied = [c for c in chunks[name] if marks[c]["outcome"] != "applied"]
        entry = {"chunks": len(chunks[name]), "copied": sum(x["copied"] or 0 for x in m),
                 "dropped": sum(x["dropped"] or 0 for x in m), "applied": sum(x["applied"] or 0 for x in m),
                 "chunks_not_applied": len(not_applied)}
        persistent, in_flight = verify(config, config.table(name), requested.get(name))
        if name in requested:
            with _connect(config.source) as sconn:
                prepare_session(sconn)
                st = src.describe(sconn, name, config.table(name).key)
                bad = dict(zip(src.canonical_keys(sconn, st, [f.key for f in persistent]), persistent))
                moving = set(src.canonical_keys(sconn, st, in_flight))
            counts = {"repaired": 0, "in_flight": 0, "still_differs": 0, "not_applied": 0}
            for key in requested[name]:
                f = bad.get(key)
                if f is not None:
                    outcome = "not_applied" if not_applied else "still_differs"
                    detail = {"kind": f.kind, "columns": f.columns}
                elif key in moving:
                    outcome, detail = "in_flight", None
                else:
                    outcome, detail = "repaired", None
                counts[outcome] += 1
                results.append((name, list(key), kinds[name].get(key), outcome, detail))
            entry.update(keys=len(requested[name]), **counts)
        else:
            entry.update(rows_checked=True, still_differs=len(persistent), in_flight=len(in_flight),
                         repaired=0, not_applied=0)
            for f in persistent:
                results.append((name, jsonable(list(f.key)), f.kind, "still_differs", {"columns": f.columns}))
        tables[name] = entry
    store.save_results(repair_id, results)
    outcomes = {k: sum(t.get(k, 0) for t in tables.values()) for k in ("repaired", "in_flight", "still_differs",
                                                                         "not_applied")}
    status = "repaired" if not outcomes["still_differs"] and not outcomes["not_applied"] else "partial"
    summary = {"diff_run_id": diff_run_id, "mode": "whole_table" if whole_table else "keys", "tables": tables,
               "chunks": len(all_ids), "outcomes": outcomes,
               "copied": sum(t["copied"] for t in tables.values()), "dropped": sum(t["dropped"] for t in tables.values()),
               "sentence": _sentence(whole_table, tables, outcomes, len(all_ids))}
    log.info("repair %s: %s", repair_id, summary["sentence"])
    return RepairResult(repair_id, status, summary)


def _sentence(whole: bool, tables: dict[str, dict], outcomes: dict[str, int], chunks: int) -> str:
    copied = sum(t["copied"] for t in tables.values())
    dropped = sum(t["dropped"] for t in tables.values())
    if whole:
        head = f"{copied:,} row(s) of {', '.join(tables)} copied through the replay in {chunks} chunk(s)"
    else:
        keys = sum(t.get("keys", 0) for t in tables.values())
        head = f"{keys:,} key(s) of {', '.join(tables)} re-copied through the replay in {chunks} chunk(s)"
    return (f"{head}, {dropped:,} copied row(s) dropped for a newer replayed change; re-verified: "
            f"{outcomes['repaired']:,} repaired, {outcomes['in_flight']:,} in flight, "
            f"{outcomes['still_differs']:,} still differ, {outcomes['not_applied']:,} not applied.")


def _byte_cap(config: Config) -> int:
    """Text bytes of copied rows per chunk: an eighth of the budget's bytes (the replay prices them with indexes)."""
    return max(64 * 1024, budget_from(config).byte_cap // 8)


def _fit(rows: list[tuple[tuple, list | None]], cap: int) -> int:
    """How many of ``rows`` (from the first) fit ``cap`` text bytes (at least one)."""
    size = 0
    for i, (_, data) in enumerate(rows):
        size += sum(len(v or "") + 2 for v in data) if data else 16
        if i and size > cap:
            return i
    return len(rows)


def _copy_keys(conn: psycopg.Connection, store: RepairStore, st: src.SourceTable, keys: list[tuple], repair_id: str,
               slot: str, s: Any, cap: int) -> list[str]:
    ids: list[str] = []
    left = list(keys)
    while left:
        batch = left[:s.chunk_rows]
        cid = store.chunk_id(repair_id, st.name, len(ids))
        store.add_chunk(cid, repair_id, slot, st.name, len(ids), "keys", batch, st.doc())
        src.emit(conn, slot, cid, "low")
        src.wait_for_older_transactions(conn, timeout=s.xact_wait_seconds, poll=s.poll_seconds)
        found = src.read_keys(conn, st, batch)
        rows = [(k, found.get(k)) for k in batch]
        n = _fit(rows, cap)
        store.store_rows(cid, rows[:n])
        store.set_status([cid], "copied")
        src.emit(conn, slot, cid, "high")
        store.set_status([cid], "emitted")
        ids.append(cid)
        left = left[n:]
    return ids


def _copy_range(conn: psycopg.Connection, store: RepairStore, st: src.SourceTable, repair_id: str, slot: str,
                s: Any, cap: int) -> list[str]:
    ids: list[str] = []
    after: tuple | None = None
    collate = [st.types[p] in TEXT_TYPES for p in st.key_positions]
    while True:
        cid = store.chunk_id(repair_id, st.name, len(ids))
        store.add_chunk(cid, repair_id, slot, st.name, len(ids), "range", None, st.doc())
        src.emit(conn, slot, cid, "low")
        src.wait_for_older_transactions(conn, timeout=s.xact_wait_seconds, poll=s.poll_seconds)
        got = src.read_after(conn, st, after, s.chunk_rows, collate)
        rows = [(tuple(r[p] for p in st.key_positions), r) for r in got]
        n = _fit(rows, cap) if rows else 0
        store.store_rows(cid, rows[:n])
        store.set_status([cid], "copied")
        src.emit(conn, slot, cid, "high")
        store.set_status([cid], "emitted")
        ids.append(cid)
        if not rows:
            return ids
        after = rows[n - 1][0]
        log.info("whole-table copy of %s: chunk %d, %d rows up to key %s", st.name, len(ids), n, after)


def _wait_applied(store: RepairStore, chunk_ids: list[str], timeout: float, poll: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        marks = store.marks(chunk_ids)
        waiting = [c for c in chunk_ids if (marks.get(c) or {}).get("high_lsn") is None]
        if not waiting:
            return marks
        if time.monotonic() >= deadline:
            opened = sum(1 for c in waiting if (marks.get(c) or {}).get("low_lsn") is not None)
            raise RepairTimeout(
                f"The replay did not reach the high watermark of {len(waiting)} of {len(chunk_ids)} repair chunk(s) "
                f"within {timeout:g} s ({opened} of them opened): the replay must be running (the reconcile_shadow_"
                "replay DAG, or `reconcile replay run --follow`). The copies stay pending and are applied when it "
                "gets there; run the repair again afterwards to re-verify.")
        time.sleep(poll)


def verify(config: Config, spec: TableSpec, keys: list[tuple] | None) -> tuple[list[Finding], list[tuple]]:
    """Compare ``keys`` (text forms; None: the whole table) on both sides once the replay watermark has passed
    the source's current position, with the diff's re-check rounds; returns (persistent findings, keys in
    flight: rows that moved on the source between two reads, the target between them)."""
    d = config.diff
    pair = Pair(Side("source", lambda: _connect(config.source)), Side("target", lambda: _connect(config.target)),
                workers=d.workers)
    try:
        shape = hashdiff.shape_of(pair, spec)
        money = spec.amount_column or spec.balance_column
        key_names = [c.name for c in shape.key]

        def resolve(ks: list[tuple]) -> list[Finding]:
            tgt = hashdiff.fetch_rows(pair.target, shape, ks)
            srcr = hashdiff.fetch_rows(pair.source, shape, ks)
            both = sorted(set(tgt) | set(srcr), key=repr)
            return compare_rows(spec.name, shape.names, key_names, srcr, tgt, both, money_column=money,
                                currency_column=spec.currency_column)

        slot = config.replay.slot_name
        waiter = lag.Waiter(lambda: lag.watermark(pair.target.conn(), slot), time.monotonic() + d.lag_wait_seconds,
                            poll=d.poll_seconds)
        waiter.wait(lag.lsn_int(lag.current_lsn(pair.source.conn())) or 0)
        cands = hashdiff.key_candidates(pair, shape, keys) if keys is not None else \
            hashdiff.candidates(pair, shape, d)
        findings = resolve(cands.keys())
        moving: list[tuple] = []
        for _ in range(d.recheck_rounds):
            if not findings:
                break
            passed = waiter.wait(lag.lsn_int(lag.current_lsn(pair.source.conn())) or 0)
            again = resolve([f.raw_key for f in findings if f.raw_key is not None])
            settled = lag.settle(findings, again, bracket=bool(passed))
            kept = {repr(f.key) for f in settled}
            moving += [tuple(f.key) for f in again if repr(f.key) not in kept]
            findings = settled
            if not passed:
                break
        return findings, moving
    finally:
        pair.close()


__all__ = ["RepairResult", "findings_of", "latest_diff_run", "record_decision", "run_repair", "verify"]
