"""CloudWatch metrics of the pipeline: what operators graph and alarm on (``[metrics]``).

Each pipeline step (``reconcile.pipeline``) calls one ``after_*`` function here when it ends; that
function turns the step's result into datums and publishes them with ``PutMetricData``:

======================================  ============  ==========  ===========================================
metric                                  unit          dimensions  from
======================================  ============  ==========  ===========================================
ReplayLagSeconds                        Seconds       Migration   replay tick: lag p99 of the applied txns
ReplayLagBytes                          Bytes         Migration   replay tick: WAL between slot head and watermark
RetainedWalBytes                        Bytes         Migration   replay status: WAL the slot keeps on the source
ReplayChangesApplied                    Count         Migration   replay tick
ReplayAppliedChangesPerSecond           Count/Second  Migration   replay tick
DeadLettersOpen                         Count         Migration   replay tick
OccConflicts / OccConflictRate          Count / None  Migration   replay tick: 40001 retries per target commit
BackfillRowsCopied / BackfillRowsRejected  Count      Migration, Table  each chunk copied
DiffPersistentMismatches                Count         Migration (+ Table)  diff run: total, and per table
DiffInFlight                            Count         Migration (+ Table)  diff run: mismatches the replay closed
BalanceDifferences                      Count         Migration   diff run
ReconciliationRed                       Count         Migration   diff run: 1 red (or errored), 0 green
ExpectationsFailed / ExpectationsEvaluated  Count     Migration   expectations run
ReverseReplayLagSeconds                 Seconds       Migration   reverse tick: lag p99, DSQL commit → source (0: idle)
ReverseDeadLettersOpen                  Count         Migration   reverse tick: DSQL transactions the source refused
GateState                               None          Migration   0 shadow, 1 read_cutover, 2 write_cutover
GateCriteriaFailing                     Count         Migration   the next gate's evaluation
======================================  ============  ==========  ===========================================

The ``Migration`` dimension is :func:`migration_dimension` (today the target endpoint and the replay
slot; the one function to change when migrations get their own id). Datums go out in batches of at
most :data:`MAX_DATUMS_PER_CALL` (PutMetricData takes up to 1,000 metrics and 1 MB per request).

Publishing never fails the pipeline: any error (no credentials, no region, throttling, an
unreachable endpoint) is logged as one warning and counted in :data:`FAILURES`; the step goes on.
With ``enabled = false`` (the default) nothing is sent and boto3 is not even imported.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("reconcile.metrics")

__all__ = ["FAILURES", "MAX_DATUMS_PER_CALL", "METRIC_UNITS", "Datum", "MetricsSettings", "after_backfill_chunk", "after_checks",
           "after_diff", "after_gate_evidence", "after_replay_tick", "after_reverse_tick", "migration_dimension", "publish"]

MAX_DATUMS_PER_CALL = 1000
"""PutMetricData's limit of metrics per request (was 20 until 2023; the payload limit is 1 MB)."""
METRIC_UNITS: dict[str, str] = {
    "ReplayLagSeconds": "Seconds", "ReplayLagBytes": "Bytes", "RetainedWalBytes": "Bytes",
    "ReplayChangesApplied": "Count", "ReplayAppliedChangesPerSecond": "Count/Second", "DeadLettersOpen": "Count",
    "OccConflicts": "Count", "OccConflictRate": "None", "BackfillRowsCopied": "Count", "BackfillRowsRejected": "Count",
    "DiffPersistentMismatches": "Count", "DiffInFlight": "Count", "BalanceDifferences": "Count",
    "ReconciliationRed": "Count", "ExpectationsFailed": "Count", "ExpectationsEvaluated": "Count",
    "GateState": "None", "GateCriteriaFailing": "Count",
    "ReverseReplayLagSeconds": "Seconds", "ReverseDeadLettersOpen": "Count",
}
"""Every metric the pipeline publishes and its unit (the table above; infra/ alarms and dashboard use these)."""
FAILURES: Counter = Counter()
"""Datums this process failed to publish, by metric name (publishing failures are counted, not raised)."""

_NAMESPACE = re.compile(r"[A-Za-z0-9_./#:\- ]{1,255}")
_DIMENSION_MAX = 1024


@dataclass(frozen=True)
class MetricsSettings:
    """The [metrics] section of reconcile.toml (also ``RECONCILE__METRICS__<KEY>``)."""

    enabled: bool = False
    """Publish the pipeline's metrics to CloudWatch (the pipeline role may ``cloudwatch:PutMetricData``)."""
    namespace: str = "Reconcile"
    """CloudWatch namespace (the IAM policy allows only this one: keep it equal to MetricsNamespace in infra/)."""
    region: str | None = None
    """AWS region of CloudWatch; default: the DSQL target's region, else the AWS default chain."""
    endpoint_url: str | None = None
    """Another CloudWatch endpoint (a VPC endpoint, or a local moto server in tests)."""

    def __post_init__(self) -> None:
        from reconcile.config import InvalidSetting

        if not isinstance(self.namespace, str) or not _NAMESPACE.fullmatch(self.namespace) \
                or self.namespace.startswith("AWS/"):
            raise InvalidSetting("metrics", "namespace", f"must be 1-255 letters, digits or _ . / # : - and not "
                                 f"start with AWS/, got {self.namespace!r}", 'use the default "Reconcile"')
        if self.endpoint_url is not None and not re.match(r"https?://", str(self.endpoint_url)):
            raise InvalidSetting("metrics", "endpoint_url", f"must be an http(s) URL, got {self.endpoint_url!r}",
                                 "remove it to use the region's CloudWatch endpoint")


@dataclass(frozen=True)
class Datum:
    """One value of one metric (``table`` adds the Table dimension)."""

    name: str
    value: float
    unit: str
    table: str | None = None


def migration_dimension(config: Any) -> str:
    """The ``Migration`` dimension's value: which migration a datum belongs to.

    The ``[migration] name`` when set (predictable, for alarms and dashboards: name each migration of an
    account uniquely), else the migration id (:func:`reconcile.identity.migration_of`: a hash of the
    endpoints, tables and slot; never a secret).
    """
    from reconcile.identity import migration_of

    ident = migration_of(config)
    return (ident.name or ident.id)[:_DIMENSION_MAX]


def _settings(config: Any) -> MetricsSettings:
    return config.stage("metrics")


def _client(config: Any, settings: MetricsSettings):
    import boto3
    from botocore.config import Config as BotoConfig

    from reconcile.config import DsqlEndpoint

    region = settings.region or (config.target.region if isinstance(config.target, DsqlEndpoint) else None)
    # Short timeouts and few retries: a metric is never worth stalling a pipeline step for.
    boto = BotoConfig(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"})
    return boto3.client("cloudwatch", region_name=region, endpoint_url=settings.endpoint_url, config=boto)


def _metric_data(datums: Sequence[Datum], migration: str, now: dt.datetime) -> list[dict[str, Any]]:
    out = []
    for d in datums:
        dims = [{"Name": "Migration", "Value": migration}]
        if d.table:
            dims.append({"Name": "Table", "Value": d.table[:_DIMENSION_MAX]})
        out.append({"MetricName": d.name, "Dimensions": dims, "Timestamp": now, "Value": float(d.value),
                    "Unit": d.unit})
    return out


def publish(config: Any, datums: Iterable[Datum], *, client=None) -> dict[str, int]:
    """Send ``datums`` (batched); returns ``{"published": n, "failed": n}``. Never raises.

    Datums whose value is None, NaN or infinite (CloudWatch refuses them) are left out, not failed.
    """
    settings = _settings(config)
    datums = [d for d in datums if d.value is not None and math.isfinite(float(d.value))]
    if not settings.enabled or not datums:
        return {"published": 0, "failed": 0}
    published = failed = 0
    try:
        client = client or _client(config, settings)
        data = _metric_data(datums, migration_dimension(config), dt.datetime.now(dt.timezone.utc))
    except Exception as exc:
        return _failed(settings, datums, exc)
    for start in range(0, len(data), MAX_DATUMS_PER_CALL):
        batch = data[start:start + MAX_DATUMS_PER_CALL]
        try:
            client.put_metric_data(Namespace=settings.namespace, MetricData=batch)
            published += len(batch)
        except Exception as exc:
            failed += _failed(settings, datums[start:start + MAX_DATUMS_PER_CALL], exc)["failed"]
    return {"published": published, "failed": failed}


def _failed(settings: MetricsSettings, datums: Sequence[Datum], exc: BaseException) -> dict[str, int]:
    from reconcile.config import one_line

    FAILURES.update(d.name for d in datums)
    log.warning("metrics: %d datum(s) not published to CloudWatch namespace %s (%s); the pipeline goes on",
                len(datums), settings.namespace, one_line(f"{type(exc).__name__}: {exc}", limit=300))
    return {"published": 0, "failed": len(datums)}


def _guarded(what: str, config: Any, build) -> dict[str, int]:
    """Build the datums of one step and publish them; an error while building is a failure too."""
    try:
        if not _settings(config).enabled:
            return {"published": 0, "failed": 0}
        datums = build()
    except Exception as exc:
        FAILURES[what] += 1
        log.warning("metrics: could not gather the %s metrics (%s: %s); the pipeline goes on", what,
                    type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        return {"published": 0, "failed": 1}
    return publish(config, datums)


def _num(value: Any) -> float | None:
    return None if value is None or isinstance(value, bool) else float(value)


# --------------------------------------------------------------------------------------------
# One function per pipeline step


def replay_datums(summary: Mapping[str, Any], status: Mapping[str, Any] | None = None) -> list[Datum]:
    """Datums of one replay tick (``summary``: the run's dict; ``status``: ``replay_status``)."""
    commits, conflicts = summary.get("target_commits") or 0, summary.get("conflicts") or 0
    out = [Datum("ReplayLagSeconds", _num(summary.get("lag_seconds_p99")), "Seconds"),
           Datum("ReplayLagBytes", _num(summary.get("lag_bytes")), "Bytes"),
           Datum("ReplayChangesApplied", _num(summary.get("changes_applied") or 0), "Count"),
           Datum("ReplayAppliedChangesPerSecond", _num(summary.get("apply_rate_changes_per_second") or 0),
                 "Count/Second"),
           Datum("DeadLettersOpen", _num(summary.get("dead_letters_open") or 0), "Count"),
           Datum("OccConflicts", float(conflicts), "Count"),
           Datum("OccConflictRate", conflicts / commits if commits else (None if conflicts else 0.0), "None")]
    if status is not None:
        out.append(Datum("RetainedWalBytes", _num(status.get("retained_wal_bytes")), "Bytes"))
    return out


def after_replay_tick(config: Any, summary: Mapping[str, Any]) -> dict[str, int]:
    """Publish a replay tick's metrics (and the slot's retained WAL, read from the source)."""
    def build():
        from reconcile.replay import replay_status

        try:
            status = replay_status(config)
        except Exception as exc:  # the lag metrics still go out
            log.warning("metrics: retained WAL not measured (%s)", type(exc).__name__)
            status = None
        return replay_datums(summary, status)

    return _guarded("replay", config, build)


def reverse_datums(summary: Mapping[str, Any]) -> list[Datum]:
    """Datums of one reverse replay tick (``summary``: :func:`reconcile.pipeline.reverse.reverse_summary`).

    The lag is the p99 of the DSQL transactions the tick applied (commit on DSQL → committed on the source).
    A tick that applied nothing but was caught up reports 0 (nothing is behind); one that applied nothing and
    was not caught up reports no lag at all (unknown, not a made-up number).
    """
    lag = _num(summary.get("lag_seconds_p99"))
    if lag is None and summary.get("caught_up") and not summary.get("txns_applied"):
        lag = 0.0
    return [Datum("ReverseReplayLagSeconds", lag, "Seconds"),
            Datum("ReverseDeadLettersOpen", _num(summary.get("dead_letters_open") or 0), "Count")]


def after_reverse_tick(config: Any, summary: Mapping[str, Any]) -> dict[str, int]:
    """Publish a reverse replay tick's lag and open reverse dead letters."""
    return _guarded("reverse", config, lambda: reverse_datums(summary))


def after_backfill_chunk(config: Any, result: Mapping[str, Any]) -> dict[str, int]:
    """Publish the rows one chunk copied and rejected (dimension Table)."""
    return _guarded("backfill", config, lambda: [
        Datum("BackfillRowsCopied", float(result.get("rows") or 0), "Count", result["table"]),
        Datum("BackfillRowsRejected", float(result.get("rejected") or 0), "Count", result["table"])])


def diff_datums(summary: Mapping[str, Any]) -> list[Datum]:
    """Datums of a finished diff run (its summary): totals, and per table."""
    out = [Datum("DiffPersistentMismatches", float(summary.get("persistent_mismatches") or 0), "Count"),
           Datum("BalanceDifferences", float(summary.get("balance_differences") or 0), "Count"),
           Datum("DiffInFlight", float(summary.get("in_flight") or 0), "Count"),
           Datum("ReconciliationRed", 0.0 if summary.get("status", summary.get("verdict")) == "green" else 1.0,
                 "Count")]
    for name, t in sorted((summary.get("tables") or {}).items()):
        out += [Datum("DiffPersistentMismatches", float((t.get("missing") or 0) + (t.get("extra") or 0)
                                                         + (t.get("changed") or 0)), "Count", name),
                Datum("DiffInFlight", float(t.get("in_flight") or 0), "Count", name)]
    return out


def after_diff(config: Any, summary: Mapping[str, Any]) -> dict[str, int]:
    """Publish a finished diff run's mismatches, balance differences, in-flight count and verdict."""
    return _guarded("diff", config, lambda: diff_datums(summary))


def after_checks(config: Any, result: Mapping[str, Any]) -> dict[str, int]:
    """Publish an expectations run's failed and evaluated counts."""
    def build():
        failed = result.get("failed")
        failed = len(failed) if isinstance(failed, (list, tuple)) else failed
        return [Datum("ExpectationsFailed", float(failed or 0), "Count"),
                Datum("ExpectationsEvaluated", _num(result.get("evaluated")), "Count")]

    return _guarded("checks", config, build)


def after_gate_evidence(config: Any, evaluation: Mapping[str, Any]) -> dict[str, int]:
    """Publish the cutover state (0 shadow, 1 read_cutover, 2 write_cutover) and the failing criteria."""
    def build():
        from reconcile.gates.cutover import STATES

        state = evaluation.get("state")
        out = [Datum("GateState", float(STATES.index(state)) if state in STATES else None, "None")]
        if evaluation.get("gate"):
            out.append(Datum("GateCriteriaFailing", float(len(evaluation.get("failing") or [])), "Count"))
        return out

    return _guarded("gates", config, build)
