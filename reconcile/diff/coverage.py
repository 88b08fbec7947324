"""What has been verified, and when: the coverage state of each table (``reconcile.diff_coverage``,
``reconcile.diff_slices``) and the ``coverage`` part of a diff run's summary.

Per replay slot and table:

* ``verified_lsn``: every change the replay applied at or below it has been verified by a diff run;
* the rolling sweep's pass: the key space cut into at most N slices (``[diff] sweep_runs``), their
  boundaries fixed when the pass starts, one slice verified per incremental run, so a pass takes at
  most N runs; each slice records when, by which run and mode, and with which table status it was last
  fully verified;
* the last complete pass (its start, end, and whether every slice of it was verified by a green table
  diff) and the last full diff (run, time, green or not).

*Every row verified since* (:attr:`TableCoverage.all_verified_since`) is the later of the last full
diff and the start of the last complete pass: a row of a slice not yet verified in the current pass
was verified in the previous one. That is the figure the reports and the read gate show.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from reconcile.control.migrations import ident
from reconcile.occ import RetryPolicy, run_with_retry

GUARANTEE = ("every key the replay applied is verified by the first incremental run after the replay watermark "
             "passes it, and every row of every table at least once every {n} runs (a rolling sweep of 1/{n} of "
             "each table's key space per run; a full diff verifies everything at once)")

FULL_GUARANTEE = "every run verifies every row of every table"


@dataclass
class SliceState:
    slice_no: int
    lo: list | None
    hi: list | None
    last_verified_at: dt.datetime | None = None
    last_run_id: str | None = None
    last_mode: str | None = None
    last_status: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"slice": self.slice_no, "lo": self.lo, "hi": self.hi,
                "last_verified_at": _iso(self.last_verified_at), "last_run_id": self.last_run_id,
                "last_mode": self.last_mode, "last_status": self.last_status}


@dataclass
class TableCoverage:
    slot_name: str
    table: str
    verified_lsn: int | None = None
    verified_run_id: str | None = None
    verified_at: dt.datetime | None = None
    pass_no: int = 0
    pass_runs: int | None = None
    """N when the pass started (a changed ``sweep_runs`` starts a new pass)."""
    bounds: list[list] | None = None
    """Slice boundaries of the current pass (text forms of the key; slice i is [bounds[i-1], bounds[i]))."""
    pass_started_at: dt.datetime | None = None
    next_slice: int = 0
    pass_clean: bool | None = None
    last_pass_started_at: dt.datetime | None = None
    last_pass_finished_at: dt.datetime | None = None
    last_pass_clean: bool | None = None
    last_full_run_id: str | None = None
    last_full_at: dt.datetime | None = None
    last_full_clean: bool | None = None
    slices: list[SliceState] = field(default_factory=list)

    @property
    def pass_slices(self) -> int:
        return len(self.bounds) + 1 if self.bounds is not None else 0

    def slice_range(self, i: int) -> tuple[list | None, list | None]:
        assert self.bounds is not None
        return (self.bounds[i - 1] if i > 0 else None), (self.bounds[i] if i < len(self.bounds) else None)

    @property
    def all_verified_since(self) -> dt.datetime | None:
        """Every row of the table was verified at or after this time (None: not yet)."""
        times = [t for t in (self.last_pass_started_at, self.last_full_at) if t is not None]
        return max(times) if times else None

    @property
    def all_verified_clean(self) -> bool | None:
        """Whether the verification behind :attr:`all_verified_since` found the table green."""
        if self.all_verified_since is None:
            return None
        if self.last_full_at is not None and self.last_full_at == self.all_verified_since:
            return self.last_full_clean
        return self.last_pass_clean

    def to_dict(self) -> dict[str, Any]:
        return {"verified_lsn": self.verified_lsn, "verified_run_id": self.verified_run_id,
                "verified_at": _iso(self.verified_at), "pass_no": self.pass_no, "pass_slices": self.pass_slices,
                "pass_runs": self.pass_runs, "pass_started_at": _iso(self.pass_started_at),
                "next_slice": self.next_slice, "pass_clean": self.pass_clean,
                "last_pass_started_at": _iso(self.last_pass_started_at),
                "last_pass_finished_at": _iso(self.last_pass_finished_at), "last_pass_clean": self.last_pass_clean,
                "last_full_run_id": self.last_full_run_id, "last_full_at": _iso(self.last_full_at),
                "last_full_clean": self.last_full_clean, "all_verified_since": _iso(self.all_verified_since),
                "all_verified_clean": self.all_verified_clean, "slices": [s.to_dict() for s in self.slices]}


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


_COLUMNS = ("verified_lsn", "verified_run_id", "verified_at", "pass_no", "pass_slices", "pass_bounds",
            "pass_started_at", "next_slice", "pass_clean", "last_pass_started_at", "last_pass_finished_at",
            "last_pass_clean", "last_full_run_id", "last_full_at", "last_full_clean")


def _exists(conn: psycopg.Connection) -> bool:
    return bool(conn.execute("SELECT to_regclass('reconcile.diff_coverage') IS NOT NULL").fetchone()[0])


def load(conn: psycopg.Connection, slot_name: str, table: str | None = None) -> dict[str, TableCoverage]:
    """The coverage of ``table`` (or every table) of ``slot_name``, by table name."""
    if not _exists(conn):
        return {}
    where, params = sql.SQL("slot_name = %s"), [slot_name]
    if table is not None:
        where, params = sql.SQL("slot_name = %s AND table_name = %s"), [slot_name, table]
    q = sql.SQL("SELECT table_name, {} FROM {} WHERE {}").format(
        sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)), ident("diff_coverage"), where)
    out: dict[str, TableCoverage] = {}
    for r in conn.execute(q, params).fetchall():
        doc = json.loads(r[6]) if r[6] else None
        out[r[0]] = TableCoverage(
            slot_name, r[0], r[1], str(r[2]) if r[2] else None, r[3], r[4] or 0,
            doc.get("runs") if doc else None, doc.get("bounds") if doc else None, r[7], r[8] or 0, r[9], r[10],
            r[11], r[12], str(r[13]) if r[13] else None, r[14], r[15])
    sq = sql.SQL("SELECT table_name, slice_no, lo, hi, last_verified_at, last_run_id::text, last_mode, last_status "
                 "FROM {} WHERE {} ORDER BY table_name, slice_no").format(ident("diff_slices"), where)
    for r in conn.execute(sq, params).fetchall():
        cov = out.get(r[0])
        if cov is not None and r[1] < cov.pass_slices:
            cov.slices.append(SliceState(r[1], json.loads(r[2]) if r[2] else None, json.loads(r[3]) if r[3] else None,
                                         r[4], r[5], r[6], r[7]))
    return out


def save(conn: psycopg.Connection, cov: TableCoverage, *, policy: RetryPolicy) -> None:
    """Store a table's coverage and its slices in one transaction (at most ``sweep_runs`` + 1 rows, within
    the budget: ``sweep_runs`` is at most 1,000)."""
    values = (cov.verified_lsn, cov.verified_run_id, cov.verified_at, cov.pass_no, cov.pass_slices,
              json.dumps({"runs": cov.pass_runs, "bounds": cov.bounds}, ensure_ascii=False)
              if cov.bounds is not None else None,
              cov.pass_started_at, cov.next_slice, cov.pass_clean, cov.last_pass_started_at,
              cov.last_pass_finished_at, cov.last_pass_clean, cov.last_full_run_id, cov.last_full_at,
              cov.last_full_clean)
    upsert = sql.SQL("INSERT INTO {t} (slot_name, table_name, {cols}, updated_at) VALUES (%s, %s, {ph}, now()) "
                     "ON CONFLICT (slot_name, table_name) DO UPDATE SET {sets}, updated_at = now()").format(
        t=ident("diff_coverage"), cols=sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)),
        ph=sql.SQL(", ").join([sql.Placeholder()] * len(_COLUMNS)),
        sets=sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                                for c in _COLUMNS))
    slice_upsert = sql.SQL(
        "INSERT INTO {} (slot_name, table_name, slice_no, pass_no, lo, hi, last_verified_at, last_run_id, last_mode, "
        "last_status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (slot_name, table_name, slice_no) "
        "DO UPDATE SET pass_no = EXCLUDED.pass_no, lo = EXCLUDED.lo, hi = EXCLUDED.hi, "
        "last_verified_at = EXCLUDED.last_verified_at, last_run_id = EXCLUDED.last_run_id, "
        "last_mode = EXCLUDED.last_mode, last_status = EXCLUDED.last_status").format(ident("diff_slices"))
    rows = [(cov.slot_name, cov.table, s.slice_no, cov.pass_no, json.dumps(s.lo) if s.lo is not None else None,
             json.dumps(s.hi) if s.hi is not None else None, s.last_verified_at, s.last_run_id, s.last_mode,
             s.last_status) for s in cov.slices]

    def write(c: psycopg.Connection) -> None:
        c.execute(upsert, (cov.slot_name, cov.table, *values))
        if rows:
            c.cursor().executemany(slice_upsert, rows)
        c.execute(sql.SQL("DELETE FROM {} WHERE slot_name = %s AND table_name = %s AND slice_no >= %s").format(
            ident("diff_slices")), (cov.slot_name, cov.table, cov.pass_slices))

    run_with_retry(conn, write, policy=policy, label="diff coverage")


def drop_windows(conn: psycopg.Connection, slot_name: str, table: str, upto_lsn: int, *, policy: RetryPolicy,
                 budget: Any = None) -> int:
    """Delete the change windows of ``table`` whose every change is at or below ``upto_lsn`` (verified), in
    transactions that fit the budget (a window row holds up to ``[replay] track_bytes`` of keys)."""
    from reconcile.budget import Budget

    rows = conn.execute(sql.SQL(
        "SELECT window_no, octet_length(keys) FROM {} WHERE slot_name = %s AND table_name = %s AND last_lsn <= %s")
        .format(ident("change_windows")), (slot_name, table, upto_lsn)).fetchall()
    q = sql.SQL("DELETE FROM {} WHERE slot_name = %s AND table_name = %s AND window_no = ANY(%s) "
                "AND last_lsn <= %s").format(ident("change_windows"))
    for batch in (budget or Budget()).batches(rows, lambda r: (1, 256 + int(r[1] or 0)), what="change window"):
        ids = [r[0] for r in batch]
        run_with_retry(conn, lambda c, p=ids: c.execute(q, (slot_name, table, p, upto_lsn)), policy=policy,
                       label="drop verified change windows")
    return len(rows)


def run_summary(conn: psycopg.Connection, slot_name: str, tables: list[str], results: list[dict], *,
                mode: str, sweep_runs: int) -> dict[str, Any]:
    """The ``coverage`` part of a diff run's summary: what this run verified per table and the state after it."""
    state = load(conn, slot_name)
    by_table = {r["table"]: r for r in results}
    out: dict[str, Any] = {}
    since: list[dt.datetime | None] = []
    for name in tables:
        done = ((by_table.get(name) or {}).get("details") or {}).get("coverage") or {}
        cov = state.get(name)
        out[name] = {**done, "state": cov.to_dict() if cov is not None else None}
        since.append(cov.all_verified_since if cov is not None else None)
    oldest = min(since) if since and all(t is not None for t in since) else None  # type: ignore[type-var]
    clean = all(c is not None and c.all_verified_clean is True for c in (state.get(n) for n in tables))
    guarantee = GUARANTEE.format(n=sweep_runs) if mode == "incremental" else FULL_GUARANTEE
    return {"mode": mode, "sweep_runs": sweep_runs, "guarantee": guarantee,
            "all_verified_since": _iso(oldest), "all_verified_clean": bool(tables) and clean, "tables": out}
