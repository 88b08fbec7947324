"""`reconcile gate ...` end to end through the console-script wrapper (exit codes 0/1/2), and the
[gates] settings (TOML and validation); pure evidence hashing without a database."""

from __future__ import annotations

import json
import sys

import pytest

from reconcile import control
from reconcile.cli import app
from reconcile.cli._common import run_app
from reconcile.config import InvalidSetting, load_config
from reconcile.connections import connect
from reconcile.gates import Criterion, Evaluation, GateError, GateSettings

from tests.test_gates import GREEN_CHECK, GREEN_DIFF, MUST_CHANGE, REPLAY, add_audit, add_run, bind


@pytest.fixture
def toml(tmp_path, target_db, local_stack):
    path = tmp_path / "reconcile.toml"
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{local_stack["source"]}"\n'
                    f'[target]\nkind = "postgres"\nconninfo = "{target_db}"\n'
                    "[gates]\nmin_green_runs = 1\nmin_green_hours = 0\nmin_read_hours = 0\n")
    with connect(load_config(path, environ={}).target) as conn:
        control.migrate(conn)
    return path


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["reconcile", *args])
    code = 0
    try:
        run_app(app)
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_gate_commands_and_their_exit_codes(toml, target_db, monkeypatch, capsys, aws):
    c = str(toml)
    code, out, _ = cli(monkeypatch, capsys, "gate", "status", "--json", "--config", c)
    status = json.loads(out)
    assert code == 0 and status["state"] == "shadow" and status["next_gates"] == ["read", "write"]
    assert not status["gates"]["read"]["passed"] and status["chain"]["ok"]

    code, out, _ = cli(monkeypatch, capsys, "gate", "evaluate", "read", "--config", c)
    assert code == 1 and "[FAIL] green_diff_streak" in out

    code, out, err = cli(monkeypatch, capsys, "gate", "approve", "read", "--by", "ana", "--reason", "go", "--config", c)
    assert code == 1 and out == "" and "refuses approval" in err and "expectations_green" in err
    sentence = err.strip().removeprefix("refused: ")
    assert "\n" not in sentence and sentence.endswith(".") and ". " not in sentence  # one sentence, one line
    assert "--override REASON" in sentence

    loaded = load_config(toml, environ={})
    with bind(connect(loaded.target), loaded) as conn:  # the demo's history: N=1, T=0
        add_run(conn, "diff", "green", 0.1, GREEN_DIFF)
        add_run(conn, "check", "green", 0.1, GREEN_CHECK)
        add_run(conn, "replay", "done", 0.1, REPLAY)
        add_audit(conn)
    code, out, _ = cli(monkeypatch, capsys, "gate", "evaluate", "read", "--json", "--config", c)
    assert code == 0 and json.loads(out)["passed"]
    code, out, _ = cli(monkeypatch, capsys, "gate", "approve", "read", "--by", "ana", "--reason", "green",
                       "--config", c)
    assert code == 0 and "shadow -> read_cutover" in out

    code, _, err = cli(monkeypatch, capsys, "gate", "acknowledge", "nope:x", "--by", "ana", "--reason", "r",
                       "--config", c)
    assert code == 2 and "no finding 'nope:x'" in err  # an error, not a refusal
    code, out, _ = cli(monkeypatch, capsys, "gate", "acknowledge", MUST_CHANGE, "--by", "ana", "--reason",
                       "reviewed", "--config", c)
    assert code == 0 and "acknowledged by ana" in out
    code, out, _ = cli(monkeypatch, capsys, "gate", "approve", "write", "--by", "bo", "--reason", "held",
                       "--config", c)
    assert code == 0 and "read_cutover -> write_cutover" in out

    code, _, err = cli(monkeypatch, capsys, "gate", "rollback", "--by", "bo", "--reason", "r", "--config", c)
    assert code == 1 and "reverse_replay_lag" in err and "reconcile reverse run" in err
    code, out, _ = cli(monkeypatch, capsys, "gate", "evaluate", "rollback", "--json", "--config", c)
    assert code == 1 and "reverse_reconciliation_green" in json.loads(out)["failing"]
    code, out, _ = cli(monkeypatch, capsys, "gate", "status", "--config", c)
    assert "rollback gate: FAIL" in out and "[FAIL] reverse_replay_lag" in out
    code, out, _ = cli(monkeypatch, capsys, "gate", "rollback", "--by", "bo", "--reason", "r", "--override",
                       "copied back", "--config", c)
    assert code == 0 and "write_cutover -> read_cutover (override recorded)" in out

    code, out, _ = cli(monkeypatch, capsys, "gate", "publish", "--config", c)
    assert code == 0 and "control table unchanged" in out

    code, out, _ = cli(monkeypatch, capsys, "gate", "history", "--config", c)
    assert code == 0 and "audit trail: intact" in out and "transition" in out and "override" in out
    with connect(load_config(toml, environ={}).target) as conn:
        conn.execute("UPDATE reconcile.audit_events SET actor = 'mallory' WHERE event = 'transition'")
    code, out, _ = cli(monkeypatch, capsys, "gate", "history", "--json", "--config", c)
    assert code == 1 and not json.loads(out)["chain"]["ok"]
    code, out, _ = cli(monkeypatch, capsys, "gate", "status", "--config", c)
    assert code == 1 and "audit trail: BROKEN" in out


def test_gates_settings_from_toml_and_environment(tmp_path):
    path = tmp_path / "reconcile.toml"
    path.write_text('[gates]\nmin_green_runs = 1\nmin_green_hours = 0\nssm_parameter = "/reconcile/cutover/state"\n')
    cfg = load_config(path, environ={"RECONCILE__GATES__TWO_PERSON": "true"})
    assert (cfg.gates.min_green_runs, cfg.gates.min_green_hours, cfg.gates.two_person) == (1, 0.0, True)
    assert cfg.gates.ssm_parameter == "/reconcile/cutover/state"
    with pytest.raises(InvalidSetting, match="gates.min_green_runs"):
        GateSettings(min_green_runs=0)
    with pytest.raises(InvalidSetting, match="ssm_parameter"):
        GateSettings(ssm_parameter="reconcile/state")
    with pytest.raises(InvalidSetting, match="max_conflict_rate"):
        GateSettings(max_conflict_rate=5.0)
    path.write_text("[gates]\nmax_lag_p99_seconds = -1\n")
    with pytest.raises(InvalidSetting, match="gates.max_lag_p99_seconds"):
        load_config(path, environ={})


def test_evidence_hash_is_canonical_and_round_trips():
    crit = (Criterion("a", True, {"n": 1, "when": None}, "ok"), Criterion("b", False, {"x": [1, 2]}, "no"))
    ev = Evaluation("read", "shadow", "2026-01-01T00:00:00+00:00", crit)
    same = Evaluation("read", "shadow", "2026-01-01T00:00:00+00:00",
                      (Criterion("a", True, {"when": None, "n": 1}, "ok"), crit[1]))
    assert ev.evidence_hash == same.evidence_hash and len(ev.evidence_hash) == 64
    assert not ev.passed and ev.failing == ("b",)
    assert Evaluation.from_dict(json.loads(json.dumps(ev.to_dict()))).evidence_hash == ev.evidence_hash
    doc = ev.to_dict()
    doc["criteria"][1]["passed"] = True
    with pytest.raises(GateError, match="evidence hash"):
        Evaluation.from_dict(doc)


@pytest.fixture
def aws(monkeypatch):
    """moto in-process: STS answers GetCallerIdentity with one fixed identity, whatever --by says."""
    from moto import mock_aws

    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    with mock_aws():
        yield


def _no_aws(monkeypatch, tmp_path):
    """No AWS credentials anywhere (and no instance metadata to wait for)."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def _green(toml):
    loaded = load_config(toml, environ={})
    with bind(connect(loaded.target), loaded) as conn:
        add_run(conn, "diff", "green", 0.1, GREEN_DIFF)
        add_run(conn, "replay", "done", 0.1, REPLAY)
        add_audit(conn)


def test_two_names_with_one_aws_identity_do_not_make_two_approvers(toml, monkeypatch, capsys, aws, tmp_path):
    toml.write_text(toml.read_text() + "two_person = true\n")
    _green(toml)
    c = str(toml)
    code, out, _ = cli(monkeypatch, capsys, "gate", "approve", "read", "--by", "ana", "--reason", "green", "--config", c)
    assert code == 0 and "waiting for a second" in out
    code, out, err = cli(monkeypatch, capsys, "gate", "approve", "read", "--by", "bo", "--reason", "agree",
                         "--config", c)
    assert code == 1 and "ana and bo are one authenticated identity (aws:arn:aws:sts::123456789012:user/moto)" in err
    code, out, _ = cli(monkeypatch, capsys, "gate", "status", "--json", "--config", c)
    assert json.loads(out)["state"] == "shadow"
    code, out, _ = cli(monkeypatch, capsys, "gate", "history", "--config", c)
    assert code == 0 and "ana [aws:arn:aws:sts::123456789012:user/moto]: green" in out


def test_without_aws_credentials_the_two_person_rule_is_an_error_on_the_command_line(toml, monkeypatch, capsys,
                                                                                   tmp_path):
    _no_aws(monkeypatch, tmp_path)
    toml.write_text(toml.read_text() + "two_person = true\n")
    _green(toml)
    code, out, err = cli(monkeypatch, capsys, "gate", "approve", "read", "--by", "cy", "--reason", "r",
                         "--config", str(toml))
    assert code == 2 and out == "" and "AWS STS could not authenticate the caller (NoCredentialsError)" in err
    assert err.count("\n") == 1


def test_names_and_reasons_with_control_characters_are_refused(toml, monkeypatch, capsys, tmp_path):
    _no_aws(monkeypatch, tmp_path)  # no two-person rule: unauthenticated approvals are recorded as asserted
    _green(toml)
    c = str(toml)
    forged = "ana\n   9 2026-01-01T00:00:00+00:00 transition      read  mallory: approved"
    for args in (("approve", "read", "--by", forged, "--reason", "r"),
                 ("approve", "read", "--by", "ana", "--reason", "ok\x1b[1A\x1b[2Kall green"),
                 ("approve", "read", "--by", "ana", "--reason", "r", "--override", "because\rreasons"),
                 ("rollback", "--by", "ana\u202egnp.exe", "--reason", "r"),
                 ("acknowledge", MUST_CHANGE, "--by", "ana", "--reason", "seen\nand fine")):
        code, out, err = cli(monkeypatch, capsys, "gate", *args, "--config", c)
        assert code == 2 and out == "", args
        assert "contains a control character (U+" in err and "write it on one line" in err, err
        assert err.count("\n") == 1, err
    code, out, _ = cli(monkeypatch, capsys, "gate", "history", "--json", "--config", c)
    assert json.loads(out)["events"] == []  # nothing was recorded
    code, out, err = cli(monkeypatch, capsys, "gate", "approve", "read", "--by", "ana", "--reason", "green",
                         "--config", c)
    assert code == 0 and "warning: not authenticated" in err
