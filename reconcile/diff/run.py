"""A diff run: start, one task per table, the balance diff, then the verdict and the reports.

The steps hand off through the control schema only, so an Airflow DAG can map :func:`diff_table`
over the tables in separate tasks, and any step can be killed and run again:

* :func:`start_diff` records the source's ``pg_current_wal_lsn()`` (the diff's start LSN) and a
  ``reconcile.runs`` row (kind ``diff``, status ``running``, settings JSON);
* :func:`diff_table` finds candidate mismatches (:mod:`reconcile.diff.hashdiff`), confirms them
  exactly in Python, re-checks them after the replay watermark passes (:mod:`reconcile.diff.lag`)
  and stores per-table counts and findings (``diff_results``, ``diff_findings``);
* :func:`diff_balances` does the same for the money (:mod:`reconcile.diff.balances`);
* :func:`finish_diff` sets the verdict, writes the report folder (:mod:`reconcile.report`) and
  closes the run with status ``green``, ``red`` (or ``error`` when a table could not be
  compared) and the summary JSON of the shared contract: ``direction`` (``forward``: the source is the
  system of record, ``reverse``: the target is, after write cutover; :mod:`reconcile.direction`: a table's
  ``missing`` is what the other side lacks of the system of record's rows), ``verdict``, ``persistent_mismatches``,
  ``balance_differences``, ``in_flight``, ``start_lsn``, ``tables {name: {status, missing, extra,
  changed, in_flight, rows_source, rows_target}}``, ``report_dir``, ``duration_seconds``, and

  * ``full_reconciliation`` (bool) with ``partial_reasons`` (sentences, empty when full): a run that
    left out a configured table, could not compare one, or skipped the balances (``[diff] balances =
    false``) is not a full reconciliation, whatever its verdict;
  * ``balances``: ``{status, reason, not_applicable}``: ``green``/``red``/``error``, ``skipped``
    (off), ``not_applicable`` (no ledger roles) or ``not_run``; ``not_applicable`` maps the balance
    checks this ledger has no column for to the reason;
  * ``lag_waits``: ``{waits, passed, timed_out, skipped, waited_seconds, timed_out_at, reason}``, the
    run's waits for the replay watermark (``reconcile.diff_lag_waits``; at most ``lag_wait_seconds``
    in all for a replay that does not advance);
  * from the report (:class:`reconcile.report.RunReport`): ``attribution`` ``{faults, unexplained,
    explained_balance_differences, balance_differences, complete}``, ``report_page`` and
    ``history_page`` (paths, or S3 URIs with ``[diff] s3_uri``), ``replay`` ``{lag_seconds_p99, max_p99,
    dead_letters_open}``, ``expectations`` (the check run the page shows) and ``s3_uri``.
  * ``coverage``: ``{mode, sweep_runs, guarantee, all_verified_since, tables {name: {mode, reason, watermark,
    rows_read, changed, sweep, state}}}``: what the run verified of each table (everything, or the changed
    keys and one sweep slice: :mod:`reconcile.diff.incremental`) and when each slice of each table was last
    fully verified (:mod:`reconcile.diff.coverage`);
  * ``repairs``: ``{runs, outcomes, sentence}`` of the repairs of this run's findings (or decisions not to
    repair) recorded before it finished (:mod:`reconcile.repair`), None without any.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from reconcile.diff import balances as bal
from reconcile.diff import coverage, hashdiff, incremental, lag, store
from reconcile.diff.compare import KINDS, Finding, compare_rows
from reconcile.diff.errors import DiffError, RunNotFound
from reconcile.diff.side import Pair, Side
from reconcile.budget import budget_from
from reconcile.direction import REVERSE, swap_counts
from reconcile.errors import ReconcileError
from reconcile.identity import cutover_key, run_scope
from reconcile.occ import policy_from, retry_step, scrubbed, stage_error

log = logging.getLogger(__name__)

BALANCES_OFF = "[diff] balances = false"
"""Why a run's balances were skipped when the setting is off."""
NO_LEDGER = "no [[tables]] entries with the roles accounts and entries (no ledger to balance)"


@dataclass
class DiffResult:
    """The outcome of a diff run."""

    run_id: str
    verdict: str
    report_dir: str | None
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.summary)


def _connect(endpoint: Any) -> psycopg.Connection:
    from reconcile.connections import connect
    return connect(endpoint)


def _dialect(config: Any) -> str:
    from reconcile.schema.dialect import dialect_for

    return dialect_for(config.target).name


def _settings(config: Any) -> Any:
    return config.diff


def start_diff(config: Any, *, tables: list[str] | tuple[str, ...] | None = None,
               lag_wait_seconds: float | None = None, run_id: str | None = None, mode: str | None = None,
               direction: str | None = None) -> str:
    """Open a diff run; returns its run_id.

    Args:
        config: the resolved configuration.
        tables: names of the tables to compare (default every configured table).
        lag_wait_seconds: overrides ``[diff] lag_wait_seconds`` for this run.
        run_id: the run's id (an orchestrator derives it from its own run, so a retry opens no second run;
            the insert is ``ON CONFLICT DO NOTHING``); default a new random id.
        mode: ``full`` or ``incremental`` (:mod:`reconcile.diff.incremental`); default ``[diff] mode``.
        direction: ``forward`` or ``reverse`` (:mod:`reconcile.direction`); default from the cutover state
            when the run starts (``write_cutover``: reverse). Recorded in ``runs.direction`` and the summary.

    Raises:
        ConfigError: a named table is not configured.
        DiffError: ``mode`` is neither full nor incremental.
        InvalidArgument: ``direction`` is neither forward nor reverse.
    """
    from reconcile.control import migrate
    from reconcile.direction import check_direction, direction_of

    names = [config.table(t).name for t in tables] if tables else [t.name for t in config.tables]
    settings = _settings(config)
    if lag_wait_seconds is not None:  # checked like [diff] lag_wait_seconds (finite, within its range)
        settings = dataclasses.replace(settings, lag_wait_seconds=lag_wait_seconds)
    wait = settings.lag_wait_seconds
    mode = mode or settings.mode
    check_direction(direction)
    if mode not in incremental.MODES:
        raise DiffError(f"diff mode {mode!r} is not one of {', '.join(incremental.MODES)}; use full or incremental")
    with _connect(config.source) as src:
        start_lsn = lag.current_lsn(src)
    run_id = run_id or store.new_run_id()
    with _connect(config.target) as tgt:
        migrate(tgt, dialect=_dialect(config), policy=policy_from(config))
        direction = direction_of(tgt, direction, key=cutover_key(config))
        store.insert_run(tgt, run_id, {
            "tables": names, "start_lsn": start_lsn, "slot_name": lag.slot_name(config),
            "lag_wait_seconds": wait, "mode": mode, "direction": direction,
            "diff": {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)},
            "source": config.source.describe(), "target": config.target.describe(),
        }, policy_from(config), scope=run_scope(config, names), direction=direction)
    log.info("diff run %s started at source LSN %s (%d tables, %s)", run_id, start_lsn, len(names), direction)
    return run_id


def _balances_due(config: Any, tables: list[str]) -> bool:
    """Whether a run over ``tables`` owes a balance diff: a ledger is configured, ``[diff] balances`` is
    on and the run covers its accounts or entries table (a missing balance diff is then an error)."""
    layout = bal.layout_of(config)
    return layout is not None and _settings(config).balances and bool({layout.accounts, layout.entries} & set(tables))


def _run_settings(conn: psycopg.Connection, run_id: str) -> dict:
    run = store.get_run(conn, run_id)
    if run is None or run["kind"] != "diff":
        raise RunNotFound(f"no diff run {run_id} in reconcile.runs; start one with start_diff (or `reconcile diff`)")
    return run


def _shape(pair: Pair, spec: Any) -> hashdiff.TableShape:
    return hashdiff.shape_of(pair, spec)  # the column contract: both sides, converted columns read through it


def _pair(config: Any) -> Pair:
    settings = _settings(config)
    return Pair(Side("source", lambda: _connect(config.source)), Side("target", lambda: _connect(config.target)),
                workers=settings.workers)


def _slot(config: Any, run: dict) -> str:
    return run["settings"].get("slot_name") or lag.slot_name(config)


def _lsn(value: int | None) -> str:
    from reconcile.replay.pgoutput import int_to_lsn

    return "none" if value is None else int_to_lsn(value)


class RunWaiter:
    """The watermark waits of one table's (or the balances') re-checks, within the run's one lag wait.

    ``[diff] lag_wait_seconds`` bounds the time a whole run waits for a replay that does not advance, not each
    table: every wait is recorded in ``reconcile.diff_lag_waits`` (any task of the run sees it), and

    * a wait that starts while another of the run is still waiting shares that one's deadline;
    * after a wait of the run timed out, later waits only read the watermark once: when it has not moved
      since, they do not wait at all (outcome ``skipped``) and the table is compared statically;
    * a wait the watermark answers at once records nothing.

    What it waits for, why, and a countdown go to the console (log level WARNING) as soon as it starts.
    """

    def __init__(self, config: Any, run_id: str, run: dict, pair: Pair, control: psycopg.Connection,
                 table: str, slot: str) -> None:
        self.config, self.run_id, self.pair, self.control, self.table, self.slot = (
            config, run_id, pair, control, table, slot)
        self.label = "balances" if table == store.BALANCES else table
        """What the console calls it."""
        self.seconds = float(run["settings"].get("lag_wait_seconds", _settings(config).lag_wait_seconds))
        self.poll = _settings(config).poll_seconds
        self.passed: bool | None = None

    def read(self) -> int | None:
        return lag.watermark(self.pair.target.conn(), self.slot)

    def position(self) -> int:
        """Where the replay must be for a re-read to be meaningful: the source's current LSN."""
        return lag.lsn_int(lag.current_lsn(self.pair.source.conn())) or 0

    def state(self) -> str:
        """Whether a replay is advancing the watermark (a phrase for the console)."""
        return lag.slot_state(self.pair.source.conn(), self.slot)

    def fmt(self, value: int | None) -> str:
        return _lsn(value)

    def wait(self, lsn: int) -> bool:
        """True once the watermark is at or past ``lsn``; False when the run's lag wait ends first (or has ended)."""
        policy = policy_from(self.config)
        mark = self.read()
        if mark is not None and mark >= lsn:
            self.passed = True
            return True
        waits = store.load_waits(self.control, self.run_id)
        ended = [w for w in waits if w["outcome"] in ("timed_out", "skipped")]
        if ended and (mark or 0) <= max(w["watermark"] or 0 for w in ended):
            first = ended[0]
            reason = (f"the run's lag wait ended at {first['table']} and the replay watermark has not moved since "
                      f"({self.fmt(mark)})")
            log.warning("diff %s: not waiting for the replay: %s; comparing statically", self.label, reason)
            store.record_wait(self.control, self.run_id, self.table, "skipped", target_lsn=lsn, watermark=mark,
                              reason=reason, policy=policy)
            self.passed = False
            return False
        state = self.state()
        shared = [w for w in waits if w["outcome"] is None and (w["remaining"] or 0) > 0]
        seconds = min(w["remaining"] for w in shared) if shared else self.seconds
        reason = f"the replay watermark ({self.fmt(mark)}) is behind the source ({self.fmt(lsn)}); {state}"
        if shared:
            log.warning("diff %s: %s; waiting with %s: %.0f s left of this run's lag wait", self.label, reason,
                        shared[0]["table"], seconds)
        else:
            log.warning("diff %s: %s; waiting up to %.0f s for it (once for this diff run), then comparing "
                        "statically", self.label, reason, seconds)
        wait_id, _ = store.start_wait(self.control, self.run_id, self.table, seconds=seconds, target_lsn=lsn,
                                      watermark=mark, reason=reason, policy=policy)
        t0 = time.monotonic()
        waiter = lag.Waiter(self.read, t0 + seconds, poll=self.poll, every=min(10.0, max(1.0, seconds / 6)),
                            tick=lambda left: log.warning("diff %s: waiting for the replay watermark to reach %s: "
                                                          "%.0f s left", self.label, self.fmt(lsn), left))
        passed = waiter.wait(lsn)
        waited = time.monotonic() - t0
        outcome = "passed" if passed else "timed_out"
        store.finish_wait(self.control, self.run_id, wait_id, outcome, watermark=waiter.mark, waited=waited,
                          policy=policy)
        if passed:
            log.info("diff %s: the replay watermark passed %s after %.1f s", self.label, self.fmt(lsn), waited)
        else:
            log.warning("diff %s: the replay watermark (%s) did not reach %s within %.0f s (%s); comparing "
                        "statically: what still differs is reported, and later tables of this run do not wait "
                        "unless the watermark moves", self.label, self.fmt(waiter.mark), self.fmt(lsn), waited, state)
        self.passed = passed
        return passed


class ReverseWaiter(RunWaiter):
    """A reverse reconciliation's waits: the target (DSQL) is the system of record, so a re-check waits for the
    reverse replay's caught-up point (``reconcile_reverse.streams.caught_up_ns`` on the source: every DSQL
    change committed before it is applied) to pass the target's clock at the re-check (nanoseconds), with the
    same once-per-run lag wait and records as the forward waits."""

    def __init__(self, config: Any, run_id: str, run: dict, pair: Pair, control: psycopg.Connection,
                 table: str, slot: str, stream: str) -> None:
        super().__init__(config, run_id, run, pair, control, table, slot)
        self.stream = stream

    def read(self) -> int | None:
        from reconcile.reverse import source_state

        src = self.pair.source.conn()
        if not source_state.exists(src):
            return None
        st = source_state.read_stream(src, self.stream)
        return st.caught_up_ns if st is not None else None

    def position(self) -> int:
        return int(self.pair.target.conn().execute(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint").fetchone()[0])

    def state(self) -> str:
        return f"the reverse replay of stream {self.stream} moves it (`reconcile reverse run`)"

    def fmt(self, value: int | None) -> str:
        import datetime as dt

        if value is None:
            return "none"
        return dt.datetime.fromtimestamp(value / 1e9, dt.timezone.utc).isoformat(timespec="milliseconds")


def _waiter(config: Any, run_id: str, run: dict, pair: Pair, control: psycopg.Connection,
            table: str) -> RunWaiter | None:
    """A watermark waiter when a replay writes a watermark for the slot (in reverse: when the reverse replay
    has a caught-up point on the source), else None (static diff, said on the console)."""
    slot = run["settings"].get("slot_name") or lag.slot_name(config)
    if run["settings"].get("direction") == REVERSE:
        stream = config.stage("reverse").stream_name
        waiter = ReverseWaiter(config, run_id, run, pair, control, table, slot, stream)
        if waiter.read() is None:
            log.warning("diff %s: no reverse replay of stream %s has caught up on the source; comparing statically "
                        "(differences are not re-checked for reverse replay lag)", table, stream)
            return None
        return waiter
    if lag.watermark(pair.target.conn(), slot) is None:
        log.warning("diff %s: no replay has written a watermark for slot %r on the target; comparing statically "
                    "(differences are not re-checked for replay lag)", table, slot)
        return None
    return RunWaiter(config, run_id, run, pair, control, table, slot)


def _recheck(pair: Pair, waiter: RunWaiter, rounds: int, findings: list[Finding],
             redo: Any) -> tuple[list[Finding], int, bool]:
    """Re-read candidates after the watermark passes a fresh source LSN; (persistent, in_flight, passed)."""
    first = len(findings)
    passed = True
    for _ in range(rounds):
        if not findings:
            break
        passed = waiter.wait(waiter.position())
        findings = redo(findings)
        if not passed:
            break
    return findings, first - len(findings), passed


def diff_table(config: Any, run_id: str, table_name: str) -> dict:
    """Compare one table of a run and store its findings; see :func:`_diff_table`.

    A transient failure (a dropped connection) compares the table again from the start, up to the
    ``[retry]`` policy's attempts, then raises :class:`~reconcile.errors.TransientFailure` (the
    orchestrator retries later); it is never stored as the table's ``error``.
    """
    return retry_step(lambda: _diff_table(config, run_id, table_name), policy=policy_from(config),
                      label=f"diff of {table_name}")


def _transient(config: Any, exc: BaseException, step: str) -> None:
    """Raise ``exc`` classified when a retry can get past it (the step's error boundary)."""
    from reconcile.config import redact

    secrets = config.secrets()
    error = stage_error(exc, step, redact=lambda text: redact(text, secrets))
    if error.retryable:
        raise error from scrubbed(exc, lambda text: redact(text, secrets))


def _diff_table(config: Any, run_id: str, table_name: str) -> dict:
    """Compare one table of a run and store its findings; returns the table's counts.

    Returns:
        ``{"table", "status", "missing", "extra", "changed", "in_flight", "rows_source",
        "rows_target", "queries", "duration_ms"}`` (status ``green``, ``red`` or ``error``).
    """
    settings = _settings(config)
    spec = config.table(table_name)
    t0 = time.monotonic()
    plan: incremental.TablePlan | None = None
    with _connect(config.target) as control:
        run = _run_settings(control, run_id)
        pair = _pair(config)
        details: dict[str, Any] = {}
        try:
            shape = _shape(pair, spec)
            details = {"columns": [c.name for c in shape.source_columns], "only_source": list(shape.only_source),
                       "only_target": list(shape.only_target), "key": list(spec.key)}
            plan = incremental.plan_table(control, settings, mode=run["settings"].get("mode") or "full",
                                          slot=_slot(config, run), table=spec.name, shape=shape, pair=pair)
            cands = incremental.candidates(pair, shape, settings, plan)
            money = spec.amount_column or spec.balance_column
            names, key_names = shape.names, [c.name for c in shape.key]

            def resolve(keys: list[tuple]) -> list[Finding]:
                tgt = hashdiff.fetch_rows(pair.target, shape, keys)
                src = hashdiff.fetch_rows(pair.source, shape, keys)
                return compare_rows(spec.name, names, key_names, src, tgt, keys, money_column=money,
                                    currency_column=spec.currency_column)

            findings = resolve(cands.keys())
            in_flight, passed = 0, True
            waiter = _waiter(config, run_id, run, pair, control, spec.name) if findings else None
            if waiter is not None:
                findings, in_flight, passed = _recheck(
                    pair, waiter, settings.recheck_rounds, findings,
                    # a row whose source version moved between two reads is in flight (lag.settle)
                    lambda fs: lag.settle(fs, resolve([f.raw_key for f in fs if f.raw_key is not None]),
                                          bracket=bool(waiter.passed)))
            details.update(lag_aware=waiter is not None, watermark_passed=passed,
                           candidates=len(cands), buckets_fetched=cands.buckets_fetched, segments=cands.segments,
                           shown_findings=min(len(findings), settings.max_findings), coverage=plan.describe(cands))
            counts = {k: sum(1 for f in findings if f.kind == k) for k in KINDS}
            missing, extra = swap_counts(run["settings"].get("direction"), counts)  # as the system of record sees it
            result = {"table": spec.name, "status": "red" if findings else "green",
                      "missing": missing, "extra": extra,
                      "changed": counts["changed"], "in_flight": in_flight, "rows_source": cands.rows_source,
                      "rows_target": cands.rows_target, "queries": pair.queries}
            stored = findings[:settings.max_findings]
            if shape.only_source:  # values the target cannot hold were never compared: never green
                result["status"] = "error"
                result["error"] = (f"column(s) {', '.join(shape.only_source)} of {spec.name} exist on the source but "
                                   "not on the target, so their values were not compared; add them to the target "
                                   "(reconcile schema apply) and copy the table again (reconcile backfill --force)")
        except (ReconcileError, psycopg.Error) as exc:
            _transient(config, exc, f"diff of {spec.name}")  # a dropped connection is retried, never stored
            result = {"table": spec.name, "status": "error", "error": config.safe_message(exc), "missing": 0, "extra": 0, "changed": 0,
                      "in_flight": 0, "rows_source": None, "rows_target": None, "queries": pair.queries}
            stored = []
        finally:
            pair.close()
        result["duration_ms"] = int((time.monotonic() - t0) * 1000)
        result["details"] = details
        store.save_table(control, run_id, spec.name, result, stored, budget=budget_from(config),
                         policy=policy_from(config))
        if plan is not None:  # after the result: a kill in between only makes the next run verify more
            incremental.record(control, plan, run_id, result["status"], policy=policy_from(config),
                               budget=budget_from(config))
    log.info("diff %s %s: %s", run_id, spec.name, {k: result[k] for k in ("status", "missing", "extra", "changed",
                                                                          "in_flight")})
    return {k: v for k, v in result.items() if k != "details"}


def diff_balances(config: Any, run_id: str) -> dict:
    """Compare the money of both sides and store the findings; see :func:`_diff_balances`.

    Transient failures are retried as in :func:`diff_table`.
    """
    return retry_step(lambda: _diff_balances(config, run_id), policy=policy_from(config), label="balance diff")


def _diff_balances(config: Any, run_id: str) -> dict:
    """Compare the money of both sides (see :mod:`reconcile.diff.balances`) and store the findings.

    Returns:
        ``{"status", "balance_differences", "in_flight", "by_kind", "duration_ms"}`` and ``not_applicable``
        (kind -> why: the parts this ledger has no column for, not run); status ``skipped`` when
        ``[diff] balances`` is off, ``not_applicable`` when no accounts + entries tables are configured
        (both with ``reason``).
    """
    settings = _settings(config)
    t0 = time.monotonic()
    layout = bal.layout_of(config)
    with _connect(config.target) as control:
        run = _run_settings(control, run_id)
        if layout is None or not settings.balances:
            reason = NO_LEDGER if layout is None else BALANCES_OFF
            result = {"status": "not_applicable" if layout is None else "skipped", "balance_differences": 0,
                      "in_flight": 0, "by_kind": {}, "reason": reason}
            findings: list[Finding] = []
            details: dict[str, Any] = {"reason": reason}
            log.warning("diff %s: balances %s: %s", run_id, result["status"].replace("_", " "), reason)
        else:
            pair = _pair(config)
            try:
                def read(side: str) -> bal.Snapshot:
                    s = pair.source if side == "source" else pair.target
                    return bal.read_snapshot(s.conn(), layout, set_isolation=side == "source")

                src, tgt = bal.diff_snapshots(read)
                cross = bal.cross_findings(src, tgt)
                in_flight, passed = 0, True
                waiter = _waiter(config, run_id, run, pair, control, store.BALANCES) if cross else None
                if waiter is not None:
                    def redo(_: list[Finding]) -> list[Finding]:
                        nonlocal src, tgt
                        src, tgt = bal.diff_snapshots(read)
                        return bal.cross_findings(src, tgt)
                    cross, in_flight, passed = _recheck(pair, waiter, settings.recheck_rounds, cross, redo)
                    in_flight = max(0, in_flight)
                findings = bal.per_side_findings("source", src) + bal.per_side_findings("target", tgt) + cross
                by_kind: dict[str, int] = {}
                for f in findings:
                    by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
                result = {"status": "red" if findings else "green", "balance_differences": len(findings),
                          "in_flight": in_flight, "by_kind": by_kind}
                details = {"lag_aware": waiter is not None, "watermark_passed": passed, "by_kind": by_kind,
                           **bal.tables_for_report(src, tgt, layout)}
                result["not_applicable"] = details["not_applicable"]
                for kind, why in details["not_applicable"].items():
                    log.warning("diff %s: balances: %s not applicable: %s", run_id, kind, why)
            except (psycopg.Error, ReconcileError) as exc:
                _transient(config, exc, "balance diff")  # a dropped connection is retried, never stored
                result = {"status": "error", "balance_differences": 0, "in_flight": 0, "by_kind": {},
                          "error": config.safe_message(exc)}
                findings, details = [], {"not_applicable": bal.not_applicable(layout)}
            finally:
                pair.close()
        result["duration_ms"] = int((time.monotonic() - t0) * 1000)
        row = {"status": result["status"], "missing": 0, "extra": 0, "changed": result["balance_differences"],
               "in_flight": result["in_flight"], "duration_ms": result["duration_ms"], "error": result.get("error"),
               "details": details}
        store.save_table(control, run_id, store.BALANCES, row, findings[:settings.max_findings],
                         budget=budget_from(config), policy=policy_from(config))
    return result


def finish_diff(config: Any, run_id: str, *, report_dir: str | Path | None = None,
                expect_checks: bool = False) -> DiffResult:
    """Set the verdict, write the reports and close the run.

    Args:
        config: the resolved configuration.
        run_id: the run from :func:`start_diff`.
        report_dir: parent folder of the report folder (default ``[diff] report_dir``); the
            reports go to ``<report_dir>/<run_id>/``.
        expect_checks: this run is part of a whole reconciliation that ran an expectations step (the DAG):
            the run page's banner is red when that step left no result, not the diff's own green.
    """
    from reconcile import report

    settings = _settings(config)
    with _connect(config.target) as control:
        run = _run_settings(control, run_id)
        results = store.load_results(control, run_id)
        findings = store.load_findings(control, run_id, limit=settings.max_findings)
        by_table = {r["table"]: r for r in results}
        tables: dict[str, dict] = {}
        errors: dict[str, str] = {}
        for name in run["settings"].get("tables", []):
            r = by_table.get(name)
            if r is None:
                errors[name] = "not compared (diff_table did not run for it)"
                tables[name] = {"status": "error", "missing": 0, "extra": 0, "changed": 0, "in_flight": 0,
                                "rows_source": None, "rows_target": None}
                continue
            if r["error"]:
                errors[name] = r["error"]
            tables[name] = {k: r[k] for k in ("status", "missing", "extra", "changed", "in_flight", "rows_source",
                                              "rows_target")}
        balances = by_table.get(store.BALANCES)
        if balances is not None and balances["error"]:
            errors["balances"] = balances["error"]
        elif balances is None and _balances_due(config, run["settings"].get("tables", [])):
            errors["balances"] = "not compared (diff_balances did not run for it)"
        balance_state = _balance_state(config, balances)
        partial = _partial_reasons(config, tables, balance_state)
        waits = _lag_waits(store.load_waits(control, run_id))
        persistent = sum(t["missing"] + t["extra"] + t["changed"] for t in tables.values())
        balance_diffs = balances["changed"] if balances else 0
        in_flight = sum(t["in_flight"] for t in tables.values()) + (balances["in_flight"] if balances else 0)
        verdict = "green" if persistent == 0 and balance_diffs == 0 and not errors else "red"
        status = "error" if errors else verdict
        now = control.execute("SELECT now()").fetchone()[0]
        duration = (now - run["started_at"]).total_seconds()
        parent = Path(report_dir if report_dir is not None else settings.report_dir)
        folder = parent / run_id
        summary = {
            "direction": run["settings"].get("direction") or "forward",
            "verdict": verdict, "persistent_mismatches": persistent, "balance_differences": balance_diffs,
            "in_flight": in_flight, "start_lsn": run["settings"].get("start_lsn"), "tables": tables,
            "report_dir": str(folder), "duration_seconds": round(duration, 3),
            "run_id": run_id, "status": status, "errors": errors,
            "balances": balance_state, "full_reconciliation": not partial, "partial_reasons": partial,
            "lag_waits": waits,
            "coverage": coverage.run_summary(control, _slot(config, run), list(run["settings"].get("tables", [])),
                                             results, mode=run["settings"].get("mode") or "full",
                                             sweep_runs=settings.sweep_runs),
            "repairs": _repairs(control, run_id),
        }
        context = {"summary": summary, "results": results, "findings": findings, "run": {
            "run_id": run_id, "started_at": run["started_at"].isoformat(), "finished_at": now.isoformat(),
            "settings": run["settings"]}, "balances": balances, "expect_checks": expect_checks}
        pages = report.RunReport(config, control, folder, context, s3_uri=settings.s3_uri)
        summary.update(pages.summary_fields())  # faults / unexplained counts, page links, replay lag, s3_uri
        # Closed before the pages are written: the gate evaluation and the history on them count this run.
        store.finish_run(control, run_id, status, summary, policy_from(config))
        pages.write()
    return DiffResult(run_id, verdict, str(folder), summary)


def _repairs(control: psycopg.Connection, run_id: str) -> dict[str, Any] | None:
    from reconcile.repair.store import repairs_of

    return repairs_of(control, run_id)


def _balance_state(config: Any, row: dict | None) -> dict[str, Any]:
    """What the run did about the balances: ``{"status", "reason", "not_applicable"}`` for the summary."""
    if row is None:
        if bal.layout_of(config) is None:
            return {"status": "not_applicable", "reason": NO_LEDGER, "not_applicable": {}}
        return {"status": "not_run", "reason": "diff_balances did not run for this run", "not_applicable": {}}
    details = row.get("details") or {}
    return {"status": row["status"], "reason": row.get("error") or details.get("reason"),
            "not_applicable": details.get("not_applicable") or {}}


def _partial_reasons(config: Any, tables: dict[str, dict], balances: dict[str, Any]) -> list[str]:
    """Why a run is not a full reconciliation (every configured table and, with a ledger, the balances
    compared); empty when it is one. Parts that do not apply to this ledger do not make a run partial."""
    out = []
    configured = [t.name for t in config.tables]
    left_out = [t for t in configured if t not in tables]
    if left_out:
        out.append(f"{len(left_out)} of {len(configured)} configured tables left out ({', '.join(left_out[:5])}"
                   f"{', ...' if len(left_out) > 5 else ''})")
    not_compared = [name for name, t in tables.items() if t["status"] not in ("green", "red")]
    if not_compared:
        out.append(f"not compared: {', '.join(not_compared[:5])}{', ...' if len(not_compared) > 5 else ''}")
    if balances["status"] == "skipped":
        out.append(f"balances skipped ({balances['reason']})")
    elif balances["status"] not in ("green", "red", "not_applicable"):
        out.append(f"balances not compared ({balances['reason'] or balances['status']})")
    return out


def _lag_waits(waits: list[dict]) -> dict[str, Any]:
    """The run's waits for the replay watermark, for the summary."""
    ended = next((w for w in waits if w["outcome"] == "timed_out"), None)
    return {"waits": len(waits), "passed": sum(1 for w in waits if w["outcome"] == "passed"),
            "timed_out": sum(1 for w in waits if w["outcome"] == "timed_out"),
            "skipped": sum(1 for w in waits if w["outcome"] == "skipped"),
            "waited_seconds": round(sum(w["waited_seconds"] or 0 for w in waits), 3),
            "timed_out_at": ended["table"] if ended else None, "reason": ended["reason"] if ended else None}


def run_diff(config: Any, *, tables: list[str] | tuple[str, ...] | None = None, report_dir: str | Path | None = None,
             lag_wait_seconds: float | None = None, mode: str | None = None,
             direction: str | None = None) -> DiffResult:
    """Start a run, diff every table, diff the balances and finish (the whole run in one call).

    ``direction``: forward or reverse; default from the cutover state (:func:`start_diff`)."""
    run_id = start_diff(config, tables=tables, lag_wait_seconds=lag_wait_seconds, mode=mode, direction=direction)
    with _connect(config.target) as control:
        names = _run_settings(control, run_id)["settings"]["tables"]
    for name in names:
        diff_table(config, run_id, name)
    if not tables or any(config.table(t).role in ("accounts", "entries") for t in tables):
        diff_balances(config, run_id)
    return finish_diff(config, run_id, report_dir=report_dir)
