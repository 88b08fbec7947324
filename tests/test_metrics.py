"""CloudWatch metrics (reconcile.metrics) against moto: names, units, dimensions, batching, and
failures that never fail the pipeline."""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
import uuid

import boto3
import psycopg
import pytest
from moto import mock_aws

from reconcile import metrics
from reconcile.config import ConfigError, load_config
from reconcile.metrics import Datum

NOW = dt.datetime.now(dt.timezone.utc)


def _config(tmp_path, body: str = "", **metric_keys):
    keys = {"enabled": "true", "region": '"us-east-1"', **metric_keys}
    text = body + "\n[metrics]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
    path = tmp_path / f"m{uuid.uuid4().hex[:6]}.toml"
    path.write_text(text)
    return load_config(path, environ={})


def _stats(cw, name: str, unit: str, dims: dict[str, str], namespace: str = "Reconcile") -> list[float]:
    out = cw.get_metric_statistics(Namespace=namespace, MetricName=name, Unit=unit,
                                   Dimensions=[{"Name": k, "Value": v} for k, v in dims.items()],
                                   StartTime=NOW - dt.timedelta(hours=1), EndTime=NOW + dt.timedelta(hours=1),
                                   Period=3600, Statistics=["Sum", "Maximum"])
    return [p["Sum"] for p in out["Datapoints"]]


def _metrics(cw, namespace: str = "Reconcile") -> dict[str, list[dict[str, str]]]:
    found: dict[str, list[dict[str, str]]] = {}
    for m in cw.get_paginator("list_metrics").paginate(Namespace=namespace).build_full_result()["Metrics"]:
        dims = {d["Name"]: d["Value"] for d in m["Dimensions"]}
        if dims not in found.setdefault(m["MetricName"], []):  # moto lists a metric once per datum
            found[m["MetricName"]].append(dims)
    return found


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Settings and dimensions (no AWS)


def test_settings_defaults_off_and_validated(tmp_path):
    cfg = load_config(None, environ={})
    assert cfg.stage("metrics") == metrics.MetricsSettings()
    assert cfg.stage("metrics").enabled is False and cfg.stage("metrics").namespace == "Reconcile"
    with pytest.raises(ConfigError, match="metrics.namespace"):
        _config(tmp_path, namespace='"AWS/RDS"')
    with pytest.raises(ConfigError, match="metrics.endpoint_url"):
        _config(tmp_path, endpoint_url='"localhost:4566"')
    env = load_config(None, environ={"RECONCILE__METRICS__ENABLED": "true", "RECONCILE__METRICS__NAMESPACE": "Ledger/Prod"})
    assert env.stage("metrics").enabled and env.stage("metrics").namespace == "Ledger/Prod"


def test_migration_dimension_is_the_migration_name_or_id_without_secrets(tmp_path):
    from reconcile.identity import migration_of

    cfg = _config(tmp_path, '[target]\nkind = "postgres"\nconninfo = "host=db.example port=6432 dbname=ledger user=app"\n'
                            'password_env = "PGPW"\n[replay]\nslot_name = "mig7"\n')
    assert metrics.migration_dimension(cfg) == migration_of(cfg).id
    assert "app" not in metrics.migration_dimension(cfg) and "PGPW" not in metrics.migration_dimension(cfg)
    other_slot = _config(tmp_path, '[target]\nkind = "postgres"\nconninfo = "host=db.example port=6432 dbname=ledger"\n'
                                   '[replay]\nslot_name = "mig8"\n')
    assert metrics.migration_dimension(other_slot) != metrics.migration_dimension(cfg)
    named = _config(tmp_path, '[migration]\nname = "eu-ledger"\n')
    assert metrics.migration_dimension(named) == "eu-ledger"


def test_datums_of_each_step():
    replay = metrics.replay_datums({"lag_seconds_p99": 2.5, "lag_bytes": 4096, "changes_applied": 500,
                                    "apply_rate_changes_per_second": 250.0, "dead_letters_open": 1,
                                    "conflicts": 3, "target_commits": 60}, {"retained_wal_bytes": 1 << 20})
    by = {d.name: d for d in replay}
    assert by["OccConflictRate"].value == pytest.approx(0.05) and by["OccConflictRate"].unit == "None"
    assert (by["ReplayLagSeconds"].unit, by["ReplayLagBytes"].unit, by["RetainedWalBytes"].value) == \
        ("Seconds", "Bytes", 1 << 20)
    assert by["ReplayAppliedChangesPerSecond"].unit == "Count/Second" and by["DeadLettersOpen"].value == 1
    # No commit and no conflict: rate 0; conflicts without a commit: no rate at all (not a made-up number).
    assert {d.name: d.value for d in metrics.replay_datums({})}["OccConflictRate"] == 0.0
    assert {d.name: d.value for d in metrics.replay_datums({"conflicts": 2})}["OccConflictRate"] is None

    diff = metrics.diff_datums({"verdict": "red", "status": "red", "persistent_mismatches": 4,
                                "balance_differences": 10, "in_flight": 2,
                                "tables": {"a.t": {"missing": 1, "extra": 2, "changed": 0, "in_flight": 2},
                                           "a.u": {"missing": 0, "extra": 0, "changed": 1, "in_flight": 0}}})
    got = {(d.name, d.table): d.value for d in diff}
    assert got[("ReconciliationRed", None)] == 1 and got[("DiffPersistentMismatches", None)] == 4
    assert got[("DiffPersistentMismatches", "a.t")] == 3 and got[("DiffPersistentMismatches", "a.u")] == 1
    assert got[("BalanceDifferences", None)] == 10 and got[("DiffInFlight", "a.t")] == 2
    errored = {d.name: d.value for d in metrics.diff_datums({"verdict": "green", "status": "error"}) if not d.table}
    assert errored["ReconciliationRed"] == 1  # an errored run is not green

    # every datum uses the declared unit, and every declared metric is produced by some step
    checks = [Datum("ExpectationsFailed", 0, "Count"), Datum("ExpectationsEvaluated", 1, "Count")]
    gate = [Datum("GateState", 0, "None"), Datum("GateCriteriaFailing", 0, "Count")]
    backfill = [Datum("BackfillRowsCopied", 1, "Count", "t"), Datum("BackfillRowsRejected", 0, "Count", "t")]
    reverse = metrics.reverse_datums({"lag_seconds_p99": 1.5, "dead_letters_open": 2, "txns_applied": 9})
    assert {d.name: d.value for d in reverse} == {"ReverseReplayLagSeconds": 1.5, "ReverseDeadLettersOpen": 2}
    # caught up with nothing to apply: nothing is behind (0); nothing applied and not caught up: unknown
    assert {d.name: d.value for d in metrics.reverse_datums({"caught_up": True, "txns_applied": 0})} == \
        {"ReverseReplayLagSeconds": 0.0, "ReverseDeadLettersOpen": 0}
    assert {d.name: d.value for d in metrics.reverse_datums({"caught_up": False})}["ReverseReplayLagSeconds"] is None
    produced = {(d.name, d.unit) for d in replay + diff + checks + gate + backfill + reverse}
    assert produced == set(metrics.METRIC_UNITS.items())


# --------------------------------------------------------------------------------------------
# Publishing (moto)


@mock_aws
def test_publish_names_units_and_dimensions(tmp_path):
    cfg = _config(tmp_path)
    cw = boto3.client("cloudwatch", region_name="us-east-1")
    mig = metrics.migration_dimension(cfg)
    assert metrics.after_backfill_chunk(cfg, {"table": "ledger.entries", "rows": 1200, "rejected": 3}) == \
        {"published": 2, "failed": 0}
    metrics.after_backfill_chunk(cfg, {"table": "ledger.entries", "rows": 800, "rejected": 0})
    metrics.after_checks(cfg, {"failed": 2, "evaluated": 82})
    metrics.after_gate_evidence(cfg, {"gate": "read", "state": "shadow", "failing": ["audit_blockers"]})
    metrics.after_diff(cfg, {"verdict": "green", "status": "green", "persistent_mismatches": 0, "balance_differences": 0,
                             "in_flight": 0, "tables": {"ledger.entries": {"missing": 0, "extra": 0, "changed": 0,
                                                                           "in_flight": 0}}})
    found = _metrics(cw)
    assert found["BackfillRowsCopied"] == [{"Migration": mig, "Table": "ledger.entries"}]
    assert _stats(cw, "BackfillRowsCopied", "Count", {"Migration": mig, "Table": "ledger.entries"}) == [2000.0]
    assert _stats(cw, "BackfillRowsRejected", "Count", {"Migration": mig, "Table": "ledger.entries"}) == [3.0]
    assert _stats(cw, "BackfillRowsCopied", "Bytes", {"Migration": mig, "Table": "ledger.entries"}) == []  # unit kept
    assert _stats(cw, "ExpectationsFailed", "Count", {"Migration": mig}) == [2.0]
    assert _stats(cw, "GateState", "None", {"Migration": mig}) == [0.0]
    assert _stats(cw, "GateCriteriaFailing", "Count", {"Migration": mig}) == [1.0]
    assert _stats(cw, "ReconciliationRed", "Count", {"Migration": mig}) == [0.0]
    assert sorted(map(len, found["DiffPersistentMismatches"])) == [1, 2]  # the total and the per-table series


@mock_aws
def test_namespace_from_config_and_disabled_sends_nothing(tmp_path):
    cw = boto3.client("cloudwatch", region_name="us-east-1")
    off = _config(tmp_path, enabled="false")
    assert metrics.publish(off, [Datum("X", 1.0, "Count")]) == {"published": 0, "failed": 0}
    assert cw.list_metrics()["Metrics"] == []
    on = _config(tmp_path, namespace='"Ledger/Prod"')
    metrics.publish(on, [Datum("X", 1.0, "Count"), Datum("Y", float("nan"), "Count"), Datum("Z", None, "Count")])
    assert list(_metrics(cw, "Ledger/Prod")) == ["X"]  # NaN and None are left out
    assert _metrics(cw) == {}


@mock_aws
def test_publish_batches_at_most_1000_per_call(tmp_path):
    cfg = _config(tmp_path)
    client = boto3.client("cloudwatch", region_name="us-east-1")
    sizes: list[int] = []
    client.meta.events.register("provide-client-params.cloudwatch.PutMetricData",
                                lambda params, **_: sizes.append(len(params["MetricData"])))
    datums = [Datum("Many", float(i), "Count", f"s.t{i % 7}") for i in range(2345)]
    assert metrics.publish(cfg, datums, client=client) == {"published": 2345, "failed": 0}
    assert sizes == [1000, 1000, 345]


def test_publishing_failures_are_logged_and_counted_never_raised(tmp_path, caplog):
    cfg = _config(tmp_path, endpoint_url=f'"http://127.0.0.1:{_closed_port()}"')
    before = metrics.FAILURES["DiffPersistentMismatches"]
    result = metrics.after_diff(cfg, {"verdict": "red", "persistent_mismatches": 1, "tables": {}})
    assert result == {"published": 0, "failed": 4}
    assert metrics.FAILURES["DiffPersistentMismatches"] == before + 1
    assert "not published to CloudWatch" in caplog.text and "the pipeline goes on" in caplog.text
    # A result the builder cannot read is a counted failure too, not an exception.
    assert metrics.after_backfill_chunk(cfg, {"rows": 1})["failed"] == 1


# --------------------------------------------------------------------------------------------
# The pipeline steps publish (real databases, moto CloudWatch)


@mock_aws
def test_pipeline_steps_publish_backfill_and_replay_metrics(source_db, target_db, tmp_path):
    from reconcile.pipeline.backfill import backfill_chunk, backfill_plan
    from reconcile.pipeline.replay import replay_init, replay_tick
    from reconcile.workload import run_workload
    from tests.test_dags import _ledger_pair

    slot = f"m_{uuid.uuid4().hex[:8]}"
    cfg = _config(tmp_path, f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n'
                            f'[target]\nkind = "postgres"\nconninfo = "{target_db}"\n'
                            f'[replay]\nslot_name = "{slot}"\npublication = "{slot}"\n')
    cw = boto3.client("cloudwatch", region_name="us-east-1")
    mig = metrics.migration_dimension(cfg)
    _ledger_pair(source_db, target_db, transactions=120)
    try:
        replay_init(cfg)
        params = {"replay": True, "chunk_rows": 100}
        copied = sum(backfill_chunk(cfg, ref, params)["rows"] for ref in backfill_plan(cfg, params))
        with psycopg.connect(source_db) as conn:
            entries = conn.execute("SELECT count(*) FROM ledger.entries").fetchone()[0]
        assert _stats(cw, "BackfillRowsCopied", "Count", {"Migration": mig, "Table": "ledger.entries"}) == [entries]
        tables = {m["Table"] for m in _metrics(cw)["BackfillRowsCopied"]}
        assert tables == {"ledger.accounts", "ledger.journal", "ledger.entries"}
        assert sum(sum(_stats(cw, "BackfillRowsCopied", "Count", {"Migration": mig, "Table": t})) for t in tables) \
            == copied

        run_workload(source_db, tps=40, duration=0.5, workers=1, seed=3)
        summary = replay_tick(cfg, duration=30, until_caught_up=True)
        assert summary["changes_applied"] > 0
        names = _metrics(cw)
        for name, unit in (("ReplayLagSeconds", "Seconds"), ("ReplayLagBytes", "Bytes"),
                           ("RetainedWalBytes", "Bytes"), ("ReplayAppliedChangesPerSecond", "Count/Second"),
                           ("DeadLettersOpen", "Count"), ("OccConflictRate", "None")):
            assert names[name] == [{"Migration": mig}], name
            assert _stats(cw, name, unit, {"Migration": mig}), (name, unit)
        assert _stats(cw, "ReplayChangesApplied", "Count", {"Migration": mig}) == [float(summary["changes_applied"])]
    finally:
        with psycopg.connect(source_db, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                         (slot,))


def test_a_pipeline_step_succeeds_when_cloudwatch_is_unreachable(source_db, target_db, tmp_path):
    from reconcile.pipeline.backfill import backfill_chunk, backfill_plan
    from tests.test_dags import _ledger_pair

    cfg = _config(tmp_path, f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n'
                            f'[target]\nkind = "postgres"\nconninfo = "{target_db}"\n',
                  endpoint_url=f'"http://127.0.0.1:{_closed_port()}"')
    _ledger_pair(source_db, target_db, transactions=20)
    before = sum(metrics.FAILURES.values())
    results = [backfill_chunk(cfg, ref, {}) for ref in backfill_plan(cfg, {})]
    assert {r["status"] for r in results} == {"done"} and sum(metrics.FAILURES.values()) > before
    assert dataclasses.asdict(cfg.stage("metrics"))["enabled"] is True


@mock_aws
def test_reverse_tick_publishes_lag_and_open_dead_letters(tmp_path):
    cfg = _config(tmp_path)
    cw = boto3.client("cloudwatch", region_name="us-east-1")
    mig = metrics.migration_dimension(cfg)
    assert metrics.after_reverse_tick(cfg, {"lag_seconds_p99": 4.25, "dead_letters_open": 1, "txns_applied": 3,
                                            "caught_up": True}) == {"published": 2, "failed": 0}
    metrics.after_reverse_tick(cfg, {"lag_seconds_p99": None, "caught_up": False, "dead_letters_open": 0})
    assert _stats(cw, "ReverseReplayLagSeconds", "Seconds", {"Migration": mig}) == [4.25]  # the unknown one left out
    assert _stats(cw, "ReverseDeadLettersOpen", "Count", {"Migration": mig}) == [1.0]
    assert set(_metrics(cw)) == {"ReverseReplayLagSeconds", "ReverseDeadLettersOpen"}
    off = _config(tmp_path, enabled="false")
    assert metrics.after_reverse_tick(off, {"lag_seconds_p99": 1.0}) == {"published": 0, "failed": 0}
