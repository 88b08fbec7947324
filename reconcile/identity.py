"""Which migration a run belongs to: one stable identity computed from the config, in one place.

One control schema can hold the evidence of several migrations: two ledgers moved into one DSQL
cluster, a dry run against the same target, a colleague's config with one table more. The cutover
gates must count only their own migration's evidence, so every run row (``reconcile.runs``,
``reconcile.audit_runs``) records the migration it belongs to (``migration_id``) and the tables it
covered (``tables``, a JSON list), and the gates read only rows of their own migration that covered
the migration's whole table set.

The identity is derived, never typed: the SHA-256 of the canonical JSON of

- ``name``: ``[migration] name`` (``RECONCILE__MIGRATION__NAME``), a label that tells two migrations
  over the same endpoints apart (None when unset);
- ``source`` and ``target``: where the endpoints point, never how one logs in: a PostgreSQL conninfo
  gives its host(s), port and database (no user, no password, no TLS file); a DSQL target its
  endpoint and port; the embedded local stack its data folder (its ports change on every start);
- ``tables``: the configured table names, sorted (reordering ``[[tables]]`` is the same migration;
  adding one is not: evidence about fewer tables proves nothing about the new one);
- ``slot``: ``[replay] slot_name``.

The cutover state (``reconcile.gate_state``: shadow, read cutover, write cutover) belongs to a migration
too, so approving migration B's read gate never moves migration A's applications. Its key
(:func:`cutover_key`, ``cutover:<hash>``) is derived from the same fields *without the tables*: adding a
table to a running migration must not reset where its applications read and write (its evidence restarts,
the state does not).

The same config read by the CLI and by an Airflow task (endpoints from Connections) gives the same
id when both name the same host, port and database.

>>> MigrationSettings(name="eu ledger").name
'eu ledger'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from reconcile.config import InvalidSetting

__all__ = ["LEGACY_CUTOVER_KEY", "MigrationIdentity", "MigrationSettings", "RunScope", "covers", "cutover_key",
           "migration_of", "run_scope", "tables_json", "text_problem"]

LEGACY_CUTOVER_KEY = "cutover"
"""The one ``gate_state`` key of control schemas written before the state was scoped; the first migration
that opens its gates adopts it (:func:`reconcile.gates.cutover`)."""

_MAX_NAME = 100


def text_problem(value: str) -> str | None:
    """The first character of ``value`` that must not be in a name or a reason, described; None when clean.

    Control characters (newlines, tabs, ESC and every other C0/C1 code, DEL), line and paragraph
    separators and the bidirectional overrides would let a name forge or hide lines in a log or in
    ``reconcile gate history``.

    >>> text_problem("Ana Lima")
    >>> text_problem("ana\\nseq 9 approval")
    'a control character (U+000A)'
    """
    import unicodedata

    for ch in value:
        cat = unicodedata.category(ch)
        if cat == "Cc" or cat in ("Zl", "Zp") or "\u202a" <= ch <= "\u202e" or "\u2066" <= ch <= "\u2069":
            return f"a control character (U+{ord(ch):04X})"
    return None


@dataclass(frozen=True)
class MigrationSettings:
    """The [migration] section: what this migration is called (part of its identity)."""

    name: str | None = None
    """A label for this migration (e.g. "eu-ledger-2026"); two configs over the same endpoints, tables and
    slot with different names are different migrations. Unset: the endpoints, tables and slot alone."""

    def __post_init__(self) -> None:
        if self.name is None:
            return
        name = self.name.strip()
        if not name:
            raise InvalidSetting("migration", "name", "is empty", "remove it, or name the migration, "
                                                                  'e.g. name = "eu-ledger"')
        problem = text_problem(name)
        if problem or len(name) > _MAX_NAME:
            raise InvalidSetting("migration", "name",
                                 f"contains {problem}" if problem else f"is longer than {_MAX_NAME} characters",
                                 "use a short label on one line, e.g. name = \"eu-ledger\"")
        object.__setattr__(self, "name", name)


def _endpoint(ep: Any) -> dict[str, Any]:
    """Where an endpoint points, without anything that logs in (see the module docstring)."""
    kind = getattr(ep, "kind", None)
    if kind == "local":
        return {"kind": "local", "side": ep.side, "data_dir": str(ep.data_dir.expanduser().resolve())}
    if kind == "dsql":
        return {"kind": "dsql", "endpoint": ep.endpoint.lower(), "port": int(ep.port)}
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(ep.conninfo)
    hosts = params.get("host") or params.get("hostaddr") or None
    return {"kind": "postgres", "host": hosts.lower() if isinstance(hosts, str) else hosts,
            "port": str(params.get("port") or "5432"), "dbname": params.get("dbname") or params.get("user"),
            "service": params.get("service")}


def tables_json(tables: Any) -> str:
    """A table set as stored in the ``tables`` column: a sorted JSON list of names.

    >>> tables_json(["ledger.b", "ledger.a", "ledger.a"])
    '["ledger.a","ledger.b"]'
    """
    return json.dumps(sorted({str(t) for t in tables}), separators=(",", ":"), ensure_ascii=False)


def covers(stored: str | None, tables: tuple[str, ...]) -> bool:
    """Whether a run's stored ``tables`` column covers every table of ``tables``.

    >>> covers('["a","b","c"]', ("a", "b")), covers('["a"]', ("a", "b")), covers(None, ("a",))
    (True, False, False)
    """
    if not stored:
        return False
    try:
        have = json.loads(stored)
    except ValueError:
        return False
    return isinstance(have, list) and set(tables) <= {str(t) for t in have}


@dataclass(frozen=True)
class MigrationIdentity:
    """A migration's identity: its id and what it was derived from (nothing secret)."""

    id: str
    name: str | None
    source: dict[str, Any]
    target: dict[str, Any]
    tables: tuple[str, ...]
    """The configured tables, sorted."""
    slot: str

    @property
    def cutover_key(self) -> str:
        """The key of this migration's cutover state row: the identity without the tables."""
        import hashlib

        doc = {"name": self.name, "source": self.source, "target": self.target, "slot": self.slot}
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "cutover:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "source": self.source, "target": self.target,
                "tables": list(self.tables), "slot": self.slot, "cutover_key": self.cutover_key}

    def scope(self, tables: Any = None) -> RunScope:
        """What a run of this migration records: the id and the tables it covered (default: all)."""
        return RunScope(self.id, tuple(sorted(set(self.tables if tables is None else (str(t) for t in tables)))),
                        self.cutover_key)


@dataclass(frozen=True)
class RunScope:
    """What a run row records about the migration it belongs to (``migration_id``, ``tables``)."""

    migration_id: str | None
    tables: tuple[str, ...]
    cutover_key: str | None = None
    """The migration's cutover state key (:func:`cutover_key`); None: unscoped (legacy)."""

    @property
    def tables_json(self) -> str:
        return tables_json(self.tables)


def migration_of(config: Any) -> MigrationIdentity:
    """The identity of the migration ``config`` describes (see the module docstring)."""
    import hashlib

    settings = config.stage("migration")
    doc = {"name": settings.name, "source": _endpoint(config.source), "target": _endpoint(config.target),
           "tables": sorted(t.name for t in config.tables), "slot": config.replay.slot_name}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return MigrationIdentity(hashlib.sha256(text.encode("utf-8")).hexdigest()[:32], settings.name, doc["source"],
                             doc["target"], tuple(doc["tables"]), doc["slot"])


def run_scope(config: Any, tables: Any = None) -> RunScope:
    """``migration_of(config).scope(tables)``: what a run over ``tables`` (default every table) records."""
    return migration_of(config).scope(tables)


def cutover_key(config: Any) -> str:
    """The ``gate_state`` key of the migration ``config`` describes (see the module docstring)."""
    return migration_of(config).cutover_key
