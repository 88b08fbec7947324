"""The configuration against the databases: what ``reconcile config check`` reports and every stage runs first.

A config can be valid TOML with sound values and still not fit the ledger it names: a table that does
not exist, a key column spelled wrong, a role column (balance, amount, currency, account, transaction,
``[diff] date_column``, ``[checks]`` columns) that is not there or holds the wrong kind of value. Each
stage would then fail half-way with a raw SQL error. :func:`run_preflight` checks it with catalog
queries only (plus, where the key rule needs it, the data check of a key without a primary key:
:mod:`reconcile.keyrule`) and names every mismatch with its fix; :func:`require` is what a stage calls
before it starts: it refuses with one sentence (:class:`ConfigMismatch`, exit code 2).

What each stage checks (``STAGES``):

* every stage: each configured table exists on the source, its key exists, has a type that can be a
  key and follows the key rule; every configured role column exists there with a fitting type;
* ``backfill``, ``replay``, ``diff``, ``check``: the same on the target (the schema must be applied),
  and the target has a primary key or unique index on exactly the key (what the plan creates);
* ``config`` (``reconcile config check``): the target too once the schema was applied (any configured
  table exists there);
* ``config``, ``schema``, ``replay-init``: the data check of keys the catalog cannot prove unique and
  not null (the backfill runs the same check when it plans such a table; the audit reports it as a
  finding). Other stages stay on catalog queries.

A role column set to None or ``""`` is not configured (e.g. no currency on a single-currency ledger)
and is not checked. The ``[diff]``/``[checks]`` role columns are unset by default (no column name is
assumed); once set, a column the ledger does not have is an error like any other.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg

from reconcile.config import ROLE_COLUMNS, Config, TableSpec
from reconcile.db.names import qualify, split_name
from reconcile.errors import ConfigError, InvalidArgument
from reconcile.keyrule import KeyFacts, key_problem, read_key_facts, verify_key, violation_message

__all__ = ["STAGES", "ConfigMismatch", "Mismatch", "Preflight", "require", "run_preflight"]

log = logging.getLogger("reconcile.preflight")

Side = Literal["source", "target"]


@dataclass(frozen=True)
class StageRule:
    label: str
    """How the refusal names the stage."""
    target: Literal["none", "if-applied", "required"]
    """Check the target never, once any configured table exists there, or always."""
    verify_keys: bool
    """Run the data check of keys the catalog cannot prove (a scan of such tables)."""


STAGES: dict[str, StageRule] = {
    "config": StageRule("reconcile config check", "if-applied", True),
    "audit": StageRule("reconcile audit", "none", False),
    "schema": StageRule("reconcile schema", "none", True),
    "replay-init": StageRule("reconcile replay init", "none", True),
    "backfill": StageRule("the backfill", "required", False),
    "replay": StageRule("the replay", "required", False),
    "diff": StageRule("the diff", "required", False),
    "check": StageRule("the checks", "required", False),
}
"""Stage name -> what its preflight checks (see the module docstring)."""

# Role column setting -> (pg_type categories it may have, what it holds, the kind of type it needs).
_ROLE_TYPES: dict[str, tuple[str | None, str, str]] = {
    "balance_column": ("N", "stored balance", "a number (numeric or integer)"),
    "amount_column": ("N", "signed amount", "a number (numeric or integer)"),
    "currency_column": ("SE", "currency code", "text (or an enum)"),
    "account_column": (None, "account id", ""),
    "transaction_column": (None, "transaction id", ""),
}
_CURRENCY_FIX = 'or set currency_column = "" for a ledger without a currency column'

# [section] key -> (the role whose tables hold the column, categories, what it holds, type needed, skip fix).
_STAGE_ROLE_COLUMNS: dict[tuple[str, str], tuple[str, str | None, str, str]] = {
    ("diff", "date_column"): ("entries", "D", "posting date the daily totals group by", "a date or timestamp"),
    ("checks", "idempotency_column"): ("transactions", None, "idempotency key that must be unique", ""),
    ("checks", "negative_balance_exempt_column"): ("accounts", None, "kind of account exempt from the "
                                                                     "negative-balance check", ""),
}


@dataclass(frozen=True)
class Mismatch:
    """One way the config does not fit a database, with its fix."""

    setting: str
    """The setting to look at: ``tables[2].amount_column``, ``tables[0].key``, ``diff.date_column``."""
    side: str
    """``source`` or ``target``."""
    text: str
    """One sentence: what is wrong; the fix (no trailing period)."""
    severity: Literal["error", "warning"] = "error"

    def to_dict(self) -> dict[str, str]:
        return {"setting": self.setting, "side": self.side, "severity": self.severity, "text": self.text}


class ConfigMismatch(ConfigError):
    """The configuration does not fit the databases it names (a table, key or role column)."""

    def __init__(self, stage: str, mismatches: tuple[Mismatch, ...]) -> None:
        self.stage, self.mismatches = stage, tuple(mismatches)
        first = self.mismatches[0]
        more = len(self.mismatches) - 1
        rule = STAGES.get(stage)
        label = rule.label if rule else stage
        tail = (f" (and {more} more mismatch(es): `reconcile config check` lists them all)" if more else "")
        super().__init__(f"{label} cannot start: {first.text}{tail}")

    def __reduce__(self):
        return (self.__class__, (self.stage, self.mismatches))


@dataclass
class Preflight:
    """What one preflight found."""

    stage: str
    mismatches: list[Mismatch] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    """What was proven, one line each (e.g. a key's data check)."""
    target_checked: bool = False

    @property
    def errors(self) -> list[Mismatch]:
        return [m for m in self.mismatches if m.severity == "error"]

    @property
    def warnings(self) -> list[Mismatch]:
        return [m for m in self.mismatches if m.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "ok": self.ok, "target_checked": self.target_checked,
                "errors": [m.to_dict() for m in self.errors], "warnings": [m.to_dict() for m in self.warnings],
                "verified": list(self.verified)}

    def raise_if_errors(self) -> None:
        """Raise :class:`ConfigMismatch` naming the first error (and how many more there are)."""
        for m in self.warnings:
            log.warning("%s: %s", m.setting, m.text)
        if self.errors:
            raise ConfigMismatch(self.stage, tuple(self.errors))


def require(config: Config, stage: str, *, source: psycopg.Connection | None = None,
            target: psycopg.Connection | None = None) -> Preflight:
    """Run the stage's preflight and refuse to start on any error (warnings are logged).

    Raises:
        ConfigMismatch: one sentence naming the first mismatch and its fix.
    """
    found = run_preflight(config, stage, source=source, target=target)
    found.raise_if_errors()
    return found


def run_preflight(config: Config, stage: str = "config", *, source: psycopg.Connection | None = None,
                  target: psycopg.Connection | None = None) -> Preflight:
    """Check ``config`` against the source (and the target where the stage needs it).

    Args:
        config: the settings.
        stage: a key of :data:`STAGES`.
        source, target: open autocommit connections to use (default: connect from the config).
    """
    if stage not in STAGES:
        raise InvalidArgument(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    rule = STAGES[stage]
    from reconcile.connections import connect

    found = Preflight(stage)
    own: list[psycopg.Connection] = []
    try:
        src = source or _own(own, connect(config.source))
        source_facts = _check_side(found, config, src, "source", verify=rule.verify_keys)
        if rule.target != "none":
            tgt = target or _own(own, connect(config.target))
            applied = [t.name for t in config.tables if _table_exists(tgt, t.name)]
            if rule.target == "required" or applied:
                found.target_checked = True
                _check_side(found, config, tgt, "target", verify=False, source_facts=source_facts)
            else:
                found.verified.append("target: no configured table exists there yet (the schema is not applied); "
                                      "not checked")
    finally:
        for conn in own:
            conn.close()
    return found


def _own(own: list[psycopg.Connection], conn: psycopg.Connection) -> psycopg.Connection:
    own.append(conn)
    return conn


def _table_exists(conn: psycopg.Connection, name: str) -> bool:
    schema, table = split_name(name)
    return conn.execute(
        "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')", (schema, table)).fetchone() is not None


def _close(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f' (did you mean "{match[0]}"?)' if match else ""


def _missing_table(conn: psycopg.Connection, index: int, name: str, side: Side) -> Mismatch:
    schema = split_name(name)[0]
    others = [qualify(schema, r[0]) for r in conn.execute(
        "SELECT c.relname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY 1", (schema,))]
    if side == "source":
        listed = (f"; tables in schema {schema}: {', '.join(others[:12])}" if others
                  else f"; schema {schema} has no tables")
        text = (f"table {name} does not exist on the source{_close(name, others)}; fix tables[{index}].name"
                f"{listed}")
    else:
        text = (f"table {name} does not exist on the target; create the target schema first "
                "(`reconcile schema apply`, pre-load phase)")
    return Mismatch(f"tables[{index}].name", side, text)


def _check_side(found: Preflight, config: Config, conn: psycopg.Connection, side: Side, *, verify: bool,
                source_facts: dict[str, KeyFacts] | None = None) -> dict[str, KeyFacts]:
    facts_by_table: dict[str, KeyFacts] = {}
    for i, spec in enumerate(config.tables):
        facts = read_key_facts(conn, spec.name, spec.key)
        if not facts.exists:
            found.mismatches.append(_missing_table(conn, i, spec.name, side))
            continue
        facts_by_table[spec.name] = facts
        problem = key_problem(facts) if side == "source" else _target_key_problem(facts)
        if problem:
            found.mismatches.append(Mismatch(f"tables[{i}].key", side, problem))
        elif side == "source" and facts.primary_key is None:
            if verify:
                how, counts = verify_key(conn, facts)
                if counts is not None and not counts.ok:
                    found.mismatches.append(Mismatch(f"tables[{i}].key", side,
                                                     violation_message(spec.name, spec.key, counts)))
                else:
                    rows = f", {counts.rows:,} rows" if counts is not None else ""
                    found.verified.append(f"{spec.name}: key ({', '.join(spec.key)}) is unique and not null on the "
                                          f"source ({how}{rows})")
        # On the target, only what the source has and the target lacks (the rest is reported once, for the source).
        known = None if source_facts is None else source_facts.get(spec.name)
        _check_role_columns(found, i, spec, facts, side, known)
    if side == "source":
        _check_stage_columns(found, config, facts_by_table, side)
    return facts_by_table


def _target_key_problem(facts: KeyFacts) -> str | None:
    if facts.missing:
        return (f"key column(s) {', '.join(facts.missing)} of {facts.table} do not exist on the target; recreate the "
                "table from `reconcile schema plan`")
    if facts.unique_on_exactly_key() is None:
        return (f"{facts.table} on the target has no primary key or unique index on exactly ({', '.join(facts.key)}), "
                "which the backfill's upserts and the diff need; `reconcile schema plan` declares it in the pre-load "
                "phase: recreate the table from the plan")
    return None


def _kind_ok(categories: str | None, category: str) -> bool:
    return categories is None or category in categories


def _check_role_columns(found: Preflight, index: int, spec: TableSpec, facts: KeyFacts, side: Side,
                        source: KeyFacts | None = None) -> None:
    for setting in ROLE_COLUMNS.get(spec.role or "", {}):
        column = getattr(spec, setting, None)
        if not column:
            continue  # not configured: this ledger has no such column (e.g. no currency)
        if side == "target" and (source is None or column not in source.columns):
            continue  # missing on the source too: reported there
        categories, what, kind = _ROLE_TYPES.get(setting, (None, setting.removesuffix("_column"), ""))
        where = f"tables[{index}].{setting}"
        if column not in facts.columns:
            fix = f'name the column holding the {what}{_close(column, facts.columns)}'
            if setting == "currency_column":
                fix += f", {_CURRENCY_FIX}"
            if side == "target":
                fix = "the target table does not match the source: recreate it from `reconcile schema plan`"
            found.mismatches.append(Mismatch(where, side, f"{spec.name} has no column {column} on the {side} ({where}, "
                                                          f"the {spec.role} table's {what}); {fix}"))
            continue
        type_sql, category, _ = facts.columns[column]
        if not _kind_ok(categories, category):
            found.mismatches.append(Mismatch(where, side, f"{spec.name}.{column} ({where}) is {type_sql} on the "
                                                          f"{side}, but the {what} must be {kind}; name such a column"))


def _check_stage_columns(found: Preflight, config: Config, facts: dict[str, KeyFacts], side: Side) -> None:
    for (section, key), (role, categories, what, kind) in _STAGE_ROLE_COLUMNS.items():
        settings = config.stage(section)
        column = getattr(settings, key, None)
        if not column:
            continue
        where = f"{section}.{key}"
        for spec in config.tables_with_role(role):  # type: ignore[arg-type]
            f = facts.get(spec.name)
            if f is None:
                continue  # the table itself is reported missing
            if column not in f.columns:
                fix = (f'set {key} to the {role} table\'s column holding the {what}{_close(column, f.columns)}, '
                       f'or {key} = "" if the ledger has none')
                found.mismatches.append(Mismatch(where, side, f"{spec.name} has no column {column} on the {side} "
                                                              f"({where}); {fix}"))
                continue
            type_sql, category, _ = f.columns[column]
            if not _kind_ok(categories, category):
                found.mismatches.append(Mismatch(where, side, f"{spec.name}.{column} ({where}) is {type_sql} on the "
                                                              f"{side}, but the {what} must be {kind}; name such a "
                                                              "column"))
