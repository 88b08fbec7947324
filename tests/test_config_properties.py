"""Property tests of the config loader with malformed input: a clear ConfigError, never another exception.

Documents are drawn from the real keys of every section (so most examples get past the unknown-key
check and reach the type, range and cross-field checks) mixed with junk: NaN, infinities, huge
integers, dates, strings where numbers belong, ``${...}`` references good and bad, secret-looking
keys, lists and tables in odd places. Environment overrides and raw bytes get the same treatment.
The property: ``load_config`` returns a Config or raises ConfigError with one line that carries a
fix (after ``;``); nothing else escapes (no TypeError, KeyError, OverflowError, ValidationError...).
"""

from __future__ import annotations

import datetime
import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reconcile.config import STAGE_SECTIONS, BudgetSettings, Config, DsqlEndpoint, PostgresEndpoint, RetrySettings
from reconcile.config import TableSpec, _stage_class, load_config
from reconcile.errors import ConfigError
from reconcile.settings_schema import specs

SECTION_CLASSES = {"budget": BudgetSettings, "retry": RetrySettings,
                   **{s: _stage_class(s) for s in STAGE_SECTIONS}}
SECTION_KEYS = {name: list(specs(cls)) for name, cls in SECTION_CLASSES.items()}
SECTION_KEYS["source"] = ["kind", *[k for k in specs(PostgresEndpoint) if k != "side"]]
SECTION_KEYS["target"] = ["kind", *[k for k in specs(DsqlEndpoint) if k != "side"],
                          *[k for k in specs(PostgresEndpoint) if k != "side"]]
SECTION_KEYS["local"] = ["data_dir"]
TABLE_KEYS = list(specs(TableSpec))
JUNK_KEYS = ["hots", "password", "sslpassword", "api_key", "token", "kind", "", " ", "x.y", "1"]

ENV = {"X": "value", "DB_URL": "postgresql://app:Pl4nted@db/ledger", "NUM": "12", "EMPTY": ""}

special_strings = st.sampled_from([
    "${X}", "${NUM}", "${DB_URL}", "${EMPTY}", "$${X}", "${", "${1BAD}", "${UNSET}", "${X", "nan", "inf", "-1",
    "1e999", "postgres", "dsql", "local", "abc.dsql.us-east-1.on.aws", "host=db", "host=db sslpassword=zz",
    "postgresql://u:p@h/d", 'ledger."a b"', "ledger.a b", '"', ".", "a.b", "ledger.accounts", "accounts",
    "entries", "transactions", "stop", "split", "s3://", "s3://bucket/x", "/reconcile/x", "us-east-1", "Id",
    "\x00", "\n", "\u202e", "ä" * 70])
scalars = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, 10**8, 3000, 3001]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
    special_strings,
    st.dates(),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=2))


@st.composite
def sections(draw):
    doc = {}
    for name in draw(st.lists(st.sampled_from([*SECTION_KEYS, "budgett", "tables"]), max_size=5, unique=True)):
        if name == "tables":
            doc["tables"] = draw(st.one_of(
                st.lists(st.dictionaries(st.sampled_from(TABLE_KEYS + JUNK_KEYS[:3]), values, max_size=6), max_size=3),
                scalars))
            continue
        keys = st.sampled_from(SECTION_KEYS.get(name, []) + JUNK_KEYS) if name in SECTION_KEYS else st.text(max_size=5)
        doc[name] = draw(st.one_of(st.dictionaries(keys, values, max_size=5), scalars))
    return doc


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


def toml(doc: dict) -> str:
    lines = []
    for name, body in doc.items():
        if name == "tables" and isinstance(body, list) and all(isinstance(t, dict) for t in body) and body:
            for entry in body:
                lines.append("[[tables]]")
                lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in entry.items()]
        elif isinstance(body, dict):
            lines.append(f"[{json.dumps(name)}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in body.items()]
        else:
            lines.insert(0, f"{json.dumps(name)} = {toml_value(body)}")
    return "\n".join(lines) + "\n"


def _load(text: str | bytes, env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "reconcile.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:
            cfg = load_config(path, environ=env)
        except ConfigError as exc:
            message = str(exc)
            event("refused: " + message.split()[0])
            assert message and "\n" not in message, message
            assert ";" in message, message  # what is wrong; the fix
            assert "Pl4nted" not in message or "DB_URL" not in message, message
            return
        assert isinstance(cfg, Config)
        event("valid")
        json.dumps(cfg.describe())  # what `config check --json` prints is plain data
        assert "Pl4nted" not in json.dumps(cfg.describe())


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(sections())
def test_malformed_documents_give_a_config_error_or_a_config(doc):
    _load(toml(doc), ENV)


env_names = st.one_of(
    st.sampled_from([f"RECONCILE__{s.upper()}__{k.upper()}" for s, keys in SECTION_KEYS.items() for k in keys]),
    st.sampled_from(["RECONCILE__", "RECONCILE__TABLES__NAME", "RECONCILE__X", "RECONCILE__BUDGET__",
                     "RECONCILE__SOURCE__PASSWORD", "RECONCILE_LOCAL_DIR", "RECONCILE__A__B__C"]))
env_values = st.one_of(st.text(max_size=20), st.sampled_from(
    ["nan", "NaN", "inf", "-inf", "1e400", "-0", "", " ", ",", "a,,b", "true", "yes", "2", "0.5", str(2**64), "1_000",
     "0x10", "postgres", "dsql", "abc.dsql.us-east-1.on.aws", "host=db", "Sup3rSecretPW"]))


@PROPERTY
@given(st.dictionaries(env_names, env_values, max_size=4), sections())
def test_malformed_environment_overrides_give_a_config_error_or_a_config(env, doc):
    env = {k: v.replace("\x00", "") for k, v in env.items()}  # the environment cannot hold NUL
    _load(toml(doc), {**ENV, **env})


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_arbitrary_bytes_give_a_config_error_or_a_config(raw):
    _load(raw, ENV)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_table_names_give_a_config_error_or_a_canonical_name(name):
    doc = f"[[tables]]\nname = {json.dumps(name)}\nkey = [\"id\"]\n"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "reconcile.toml"
        path.write_text(doc, encoding="utf-8", errors="surrogatepass")
        try:
            cfg = load_config(path, environ={})
        except ConfigError as exc:
            assert "\n" not in str(exc) and ";" in str(exc)
            return
    table = cfg.tables[0]
    assert TableSpec(table.name, ("id",)).name == table.name  # canonical is a fixed point
    assert (TableSpec(f'"{table.schema.replace(chr(34), chr(34) * 2)}"."{table.table.replace(chr(34), chr(34) * 2)}"',
                      ("id",)).name == table.name)
