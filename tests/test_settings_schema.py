"""Every number in the config and on the command line is finite and within a documented range.

The cases are derived from the settings classes themselves (reconcile.config_reference lists every
section the README documents), so a field added later is covered without editing this file: NaN,
infinity, a value below and one above its range are refused from the file, from the environment and
in code, each with one sentence naming the key, where it came from and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from reconcile.backfill.config import BackfillSettings
from reconcile.cli import app
from reconcile.cli._common import Number
from reconcile.config import InvalidSetting, load_config
from reconcile.config_reference import _classes, config_schema, reference, update_readme
from reconcile.errors import ConfigError
from reconcile.settings_schema import DEFAULT_MAX, Bounds, check_fields, specs

REPO = Path(__file__).resolve().parents[1]
DSQL = 'kind = "dsql"\nendpoint = "abc.dsql.us-east-1.on.aws"\n'


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in list(os.environ):
        if var.startswith("RECONCILE"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


def _numeric() -> list[tuple[str, type, str]]:
    return [(section, cls, name) for _, section, cls in _classes()
            for name, spec in specs(cls).items() if spec.numeric]


NUMERIC = _numeric()


def _bad_values(spec) -> list[str]:
    """TOML literals of values the field must refuse: NaN, both infinities, just below and just above its range."""
    step = 1 if spec.kind == "int" else 0.5
    below = spec.gt if spec.gt is not None else spec.ge - step
    above = spec.lt if spec.lt is not None else spec.le + step
    fmt = (lambda v: str(int(v))) if spec.kind == "int" else (lambda v: repr(float(v)))
    return ["nan", "inf", "-inf", fmt(below), fmt(above)]


def test_every_section_has_numbers_to_check():
    sections = {s for s, _, _ in NUMERIC}
    assert {"target", "budget", "retry", "replay", "diff", "checks", "gates", "reverse"} <= sections
    assert len(NUMERIC) >= 40


@pytest.mark.parametrize(("section", "cls", "name"), NUMERIC, ids=[f"{s}.{n}" for s, _, n in NUMERIC])
def test_file_and_environment_refuse_non_finite_and_out_of_range(tmp_path, section, cls, name):
    spec = specs(cls)[name]
    head = DSQL if section == "target" else ""
    for bad in _bad_values(spec):
        path = tmp_path / "reconcile.toml"
        path.write_text(f"[{section}]\n{head}{name} = {bad}\n")
        with pytest.raises(InvalidSetting) as info:
            load_config(path, environ={})
        message = str(info.value)
        assert message.startswith(f"{section}.{name} in {path} must be "), message
        assert "; " in message and "\n" not in message
        if bad.lstrip("-") in ("nan", "inf"):
            assert "must be a finite number" in message
        var = f"RECONCILE__{section.upper()}__{name.upper()}"
        env = {var: bad} | ({"RECONCILE__TARGET__KIND": "dsql", "RECONCILE__TARGET__ENDPOINT": "abc.dsql.us-east-1.on.aws"}
                            if section == "target" else {})
        with pytest.raises(InvalidSetting) as info:
            load_config(None, environ=env)
        assert str(info.value).startswith(f"{section}.{name} from {var} must be "), str(info.value)


@pytest.mark.parametrize(("section", "cls", "name"), [n for n in NUMERIC if n[0] != "target"],
                         ids=[f"{s}.{n}" for s, _, n in NUMERIC if s != "target"])
def test_code_refuses_what_the_file_refuses(section, cls, name):
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(InvalidSetting, match=rf"^{section}\.{name} must be a finite number"):
            cls(**{name: bad})


def test_every_default_is_within_its_range():
    """A field added with a default outside the default rule (a negative, say) must declare its Bounds."""
    for _, section, cls in _classes():
        if section == "target":
            continue
        instance = cls()
        for name, spec in specs(cls).items():
            if spec.numeric:
                value = getattr(instance, name)
                assert math.isfinite(value) and (spec.ge is None or value >= spec.ge) and value <= spec.le, (section, name)
    BackfillSettings()


def test_issue_examples_are_refused(tmp_path):
    """The values issue 14 reports as accepted."""
    cases = {
        "RECONCILE__GATES__MAX_LAG_P99_SECONDS": ("nan", "gates.max_lag_p99_seconds from RECONCILE__GATES__MAX_LAG_P99_"
                                                         "SECONDS must be a finite number, got 'nan'; use the default 30"),
        "RECONCILE__GATES__MIN_GREEN_HOURS": ("nan", "must be a finite number"),
        "RECONCILE__RETRY__MAX_DELAY": ("inf", "retry.max_delay from RECONCILE__RETRY__MAX_DELAY must be a finite number"),
        "RECONCILE__BUDGET__MAX_ROWS": (str(2**63 - 1), "must be between 1 and 3000, got 9223372036854775807"),
        "RECONCILE__DIFF__WORKERS": (str(10**8), "diff.workers from RECONCILE__DIFF__WORKERS must be between 1 and 64"),
        "RECONCILE__DIFF__LAG_WAIT_SECONDS": ("-1", "must be 0 or more, got -1"),
        "RECONCILE__REPLAY__POLL_INTERVAL": ("nan", "must be a finite number"),
    }
    for var, (value, expected) in cases.items():
        with pytest.raises(ConfigError) as info:
            load_config(None, environ={var: value})
        assert expected in str(info.value)
    path = tmp_path / "reconcile.toml"
    path.write_text("[gates]\nmax_lag_p99_seconds = nan\n")
    with pytest.raises(ConfigError, match=r"gates\.max_lag_p99_seconds in .* must be a finite number, got nan"):
        load_config(path, environ={})


def test_valid_values_at_the_edges_pass(tmp_path):
    cfg = load_config(None, environ={"RECONCILE__BUDGET__MAX_ROWS": "3000", "RECONCILE__BUDGET__FRACTION": "1",
                                     "RECONCILE__DIFF__LAG_WAIT_SECONDS": "0", "RECONCILE__GATES__MIN_GREEN_HOURS": "0"})
    assert (cfg.budget.max_rows, cfg.budget.fraction, cfg.diff.lag_wait_seconds, cfg.gates.min_green_hours) == (
        3000, 1.0, 0.0, 0.0)
    assert isinstance(cfg.diff.lag_wait_seconds, float)


def test_a_number_without_declared_bounds_gets_the_default_rule():
    """A field a stage adds without metadata still refuses NaN, infinity, a negative and an absurd value."""

    @dataclass(frozen=True)
    class NewStage:
        seconds: float = 1.0
        count: int = 3
        offset: typing.Annotated[float, Bounds(ge=-10, le=10)] = 0.0

        def __post_init__(self) -> None:
            check_fields(self, "new")

    assert (specs(NewStage)["seconds"].ge, specs(NewStage)["seconds"].le) == (0, DEFAULT_MAX)
    for bad in (math.nan, math.inf, -1.0, DEFAULT_MAX * 2.0):
        with pytest.raises(InvalidSetting, match=r"^new\.seconds must be"):
            NewStage(seconds=bad)
    for bad in (-1, DEFAULT_MAX + 1, True, 2.5):
        with pytest.raises(InvalidSetting, match=r"^new\.count must be"):
            NewStage(count=bad)
    assert NewStage(offset=-5).offset == -5.0 and NewStage(count=0).count == 0
    assert NewStage(seconds=2).seconds == 2.0 and isinstance(NewStage(seconds=2).seconds, float)


def test_backfill_settings_from_the_cli_or_a_dag_are_bounded():
    for field, bad in (("workers", 10**6), ("batch_seconds", math.nan), ("lease_seconds", math.inf),
                       ("max_rows_per_second", -1.0), ("chunk_rows", 0)):
        with pytest.raises(InvalidSetting, match=rf"^backfill\.{field} must be"):
            BackfillSettings(**{field: bad})


def test_readme_reference_is_generated_from_the_classes():
    """README.md's tables are current (regenerate with `python -m reconcile.config_reference`)."""
    assert update_readme(REPO / "README.md", check=True), "README.md is stale: run python -m reconcile.config_reference"
    text = reference()
    assert "| `max_lag_p99_seconds` | `30` | (0, 86400] |" in text
    assert "| `max_rows` | `3000` | [1, 3000] |" in text
    for section, cls, name in NUMERIC:
        assert f"| `{name}` |" in text


def test_config_schema_command_gives_every_range():
    result = CliRunner().invoke(app, ["config", "schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    gates = schema["properties"]["gates"]["properties"]
    assert gates["max_lag_p99_seconds"] == {"exclusiveMinimum": 0, "maximum": 86400, "type": "number", "default": 30.0,
                                            "description": gates["max_lag_p99_seconds"]["description"]}
    for section, cls, name in NUMERIC:
        if section == "target":
            continue
        prop = schema["properties"][section]["properties"][name]
        assert ("minimum" in prop or "exclusiveMinimum" in prop) and "maximum" in prop, (section, name)


# -- command-line options --------------------------------------------------------------------------------------


def _commands(typer_app: typer.Typer, path: tuple[str, ...] = ()):
    """(command path, callback) of every command and group callback of the CLI."""
    if typer_app.registered_callback is not None and typer_app.registered_callback.callback is not None:
        yield path, typer_app.registered_callback.callback
    for cmd in typer_app.registered_commands:
        yield (*path, cmd.name or cmd.callback.__name__.replace("_", "-")), cmd.callback
    for group in typer_app.registered_groups:
        yield from _commands(group.typer_instance, (*path, group.name))


def _numeric_options():
    out = []
    for path, callback in _commands(app):
        hints = typing.get_type_hints(callback)
        for name, default in _defaults(callback).items():
            if not isinstance(default, typer.models.OptionInfo):
                continue
            base = [a for a in typing.get_args(hints[name]) if a is not type(None)] or [hints[name]]
            if base[0] in (int, float):
                flag = next((d for d in default.param_decls if d.startswith("--")), f"--{name.replace('_', '-')}")
                out.append((path, flag, default))
    return out


def _defaults(callback):
    import inspect

    return {p.name: p.default for p in inspect.signature(callback).parameters.values()}


NUMERIC_OPTIONS = _numeric_options()


def test_every_numeric_option_is_bounded():
    """Each int/float option of every command parses through Number (finite, within its range)."""
    assert len(NUMERIC_OPTIONS) >= 20
    unbounded = [f"{' '.join(p)} {flag}" for p, flag, info in NUMERIC_OPTIONS if not isinstance(info.parser, Number)]
    assert unbounded == []
    flags = {(" ".join(p), flag) for p, flag, _ in NUMERIC_OPTIONS}
    assert {("replay run", "--duration"), ("replay run", "--max-txns"), ("diff", "--lag-wait"),
            ("backfill", "--workers"), ("backfill run", "--batch-seconds")} <= flags


@pytest.mark.parametrize(("path", "flag"), [(p, f) for p, f, _ in NUMERIC_OPTIONS],
                         ids=[f"{' '.join(p)} {f}" for p, f, _ in NUMERIC_OPTIONS])
def test_numeric_options_refuse_nan_infinity_and_negatives(path, flag):
    for bad in ("nan", "inf", "-1", "1e400", "12abc"):
        result = CliRunner().invoke(app, [*path, flag, bad])
        assert result.exit_code == 2, (bad, result.output)
        assert f"Invalid value for '{flag}'" in result.output, result.output
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def test_option_ranges_follow_the_settings():
    lag_wait = Number(setting="reconcile.diff.settings:DiffSettings.lag_wait_seconds")
    assert lag_wait("0") == 0.0 and lag_wait("86400") == 86400.0
    with pytest.raises(typer.BadParameter, match="must be between 0 and 86400, got '86401'"):
        lag_wait("86401")
    workers = Number(setting="reconcile.backfill.config:BackfillSettings.workers")
    with pytest.raises(typer.BadParameter, match="must be a whole number, got '2.5'"):
        workers("2.5")
    assert dataclasses.is_dataclass(BackfillSettings)
