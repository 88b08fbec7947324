"""What a trigger does, read from its function body, and the invariant that replaces it.

DSQL has no triggers, so each one must become application code. The audit says what each
trigger does, in words an engineer can act on, by recognising the common shapes of legacy
PL/pgSQL: a running balance kept by ``UPDATE accounts SET balance = balance + NEW.amount``,
audit/history rows written by ``INSERT INTO``, columns stamped by ``NEW.col := ...``,
validation by ``RAISE EXCEPTION``, notifications by ``pg_notify``.

A recognised balance trigger yields an :class:`Invariant`: a small structured record the
balance checks (expectations) verify on both sides, because the property the trigger kept true
by construction must now be checked instead.

>>> body = '''BEGIN UPDATE ledger.accounts SET balance = balance + NEW.amount
...          WHERE account_id = NEW.account_id; RETURN NULL; END'''
>>> actions, inv = describe_trigger_body(body, table="ledger.entries", events=("INSERT",),
...                                      trigger="ledger.entries.t")
>>> inv.kind, inv.spec["accounts"], inv.spec["amount_column"]
('balance_equals_sum_of_entries', 'ledger.accounts', 'amount')
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reconcile.budget import split_table_name
from reconcile.db.names import qualify

__all__ = ["Invariant", "describe_trigger_body"]


@dataclass(frozen=True)
class Invariant:
    """A property the source kept true by code (a trigger) that must now be checked instead."""

    name: str
    """Stable name: ``<kind>:<object>``."""
    kind: str
    """e.g. ``balance_equals_sum_of_entries``."""
    spec: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """What the check needs (tables, columns, the trigger it replaces)."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, **self.spec}


_IDENT = r'(?:"[^"]+"|[A-Za-z_][\w$]*)'
_QNAME = rf"{_IDENT}(?:\s*\.\s*{_IDENT})?"
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_UPDATE = re.compile(
    rf"\bUPDATE\s+(?:ONLY\s+)?(?P<table>{_QNAME})(?:\s+(?:AS\s+)?(?!SET\b){_IDENT})?\s+SET\s+(?P<sets>.*?)"
    rf"(?:\bWHERE\s+(?P<where>.*?))?(?:;|\bRETURNING\b|$)", re.I | re.S)
_ASSIGN_RUNNING = re.compile(
    rf"(?P<col>{_IDENT})\s*=\s*(?:coalesce\s*\(\s*)?(?:{_IDENT}\s*\.\s*)?(?P=col)(?:\s*,\s*0(?:\.0*)?\s*\))?\s*"
    rf"(?P<op>[+-])\s*(?P<rec>NEW|OLD)\s*\.\s*(?P<amount>{_IDENT})", re.I)
_KEY_MATCH = re.compile(
    rf"(?:{_IDENT}\s*\.\s*)?(?P<key>{_IDENT})\s*=\s*(?P<rec>NEW|OLD)\s*\.\s*(?P<fk>{_IDENT})", re.I)
_INSERT = re.compile(rf"\bINSERT\s+INTO\s+(?P<table>{_QNAME})", re.I)
_DELETE = re.compile(rf"\bDELETE\s+FROM\s+(?:ONLY\s+)?(?P<table>{_QNAME})", re.I)
_SET_NEW = re.compile(rf"\bNEW\s*\.\s*(?P<col>{_IDENT})\s*:?=(?!=)", re.I)
_RAISE = re.compile(r"\bRAISE\s+(?:EXCEPTION\b|'|SQLSTATE\b|USING\b)", re.I)
_NOTIFY = re.compile(r"\bpg_notify\s*\(|\bNOTIFY\b", re.I)
_DYNAMIC = re.compile(r"\bEXECUTE\s+(?:format\s*\(|'|\w)", re.I)


def _unquote(name: str) -> str:
    parts = [p.strip() for p in re.split(r"\.(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", name)]
    return ".".join(p[1:-1].replace('""', '"') if p.startswith('"') else p.lower() for p in parts)


def _parts(name: str) -> list[str]:
    parts = [p.strip() for p in re.split(r"\.(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", name)]
    return [p[1:-1].replace('""', '"') if p.startswith('"') else p.lower() for p in parts]


def _qualify(name: str, default_schema: str) -> str:
    """A table named in a trigger body, in the canonical form of :mod:`reconcile.db.names`."""
    parts = _parts(name)
    if len(parts) == 1:
        parts = [default_schema, *parts]
    return qualify(*parts) if len(parts) == 2 else ".".join(parts)


def describe_trigger_body(body: str, *, table: str, events: Sequence[str], trigger: str,
                          ) -> tuple[list[dict[str, Any]], Invariant | None]:
    """Recognise what a trigger function does.

    Args:
        body: the function's source (``pg_proc.prosrc``).
        table: ``schema.table`` the trigger fires on (the entries table, for a balance trigger).
        events: INSERT / UPDATE / DELETE / TRUNCATE.
        trigger: ``schema.table.trigger`` (named in the invariant).

    Returns:
        (actions, invariant): each action is ``{"action": ..., "text": <one sentence>, ...}``;
        the invariant is set when the trigger keeps a running balance.
    """
    code = _COMMENTS.sub(" ", body)
    schema = split_table_name(table)[0]
    actions: list[dict[str, Any]] = []
    invariant: Invariant | None = None

    for m in _UPDATE.finditer(code):
        target = _qualify(m.group("table"), schema)
        sets = m.group("sets") or ""
        where = m.group("where") or ""
        running = _ASSIGN_RUNNING.search(sets)
        key = _KEY_MATCH.search(where)
        if running and key:
            balance, amount = _unquote(running.group("col")), _unquote(running.group("amount"))
            account_key, entry_account = _unquote(key.group("key")), _unquote(key.group("fk"))
            sign = running.group("op")
            rec = running.group("rec").upper()
            actions.append({
                "action": "maintains_balance", "table": target, "balance_column": balance,
                "amount_column": amount, "sign": sign, "record": rec,
                "text": (f"keeps {target}.{balance} as a running total: {balance} {sign}= {rec}.{amount} "
                         f"for the row whose {account_key} = {rec}.{entry_account}"),
            })
            if invariant is None and sign == "+" and rec == "NEW":
                invariant = Invariant(
                    name=f"balance_equals_sum_of_entries:{target}.{balance}",
                    kind="balance_equals_sum_of_entries",
                    spec={"accounts": target, "balance_column": balance, "account_key": account_key,
                          "entries": table, "amount_column": amount, "entry_account_column": entry_account,
                          "replaces_trigger": trigger, "events": list(events)},
                )
        else:
            cols = [c.strip().split("=")[0].strip() for c in re.split(r",(?![^()]*\))", sets) if "=" in c]
            actions.append({"action": "updates", "table": target, "columns": [_unquote(c) for c in cols if c],
                            "text": f"updates {target} ({', '.join(_unquote(c) for c in cols if c)})"})
    for m in _INSERT.finditer(code):
        target = _qualify(m.group("table"), schema)
        actions.append({"action": "inserts", "table": target,
                        "text": f"writes rows into {target} (audit or history)"})
    for m in _DELETE.finditer(code):
        target = _qualify(m.group("table"), schema)
        actions.append({"action": "deletes", "table": target, "text": f"deletes rows from {target}"})
    stamped = sorted({_unquote(m.group("col")) for m in _SET_NEW.finditer(code)})
    if stamped:
        actions.append({"action": "sets_columns", "columns": stamped,
                        "text": f"sets {', '.join(stamped)} on the row being written"})
    if _RAISE.search(code):
        actions.append({"action": "validates", "text": "rejects some writes (RAISE EXCEPTION)"})
    if _NOTIFY.search(code):
        actions.append({"action": "notifies", "text": "sends notifications (DSQL has no LISTEN/NOTIFY)"})
    if _DYNAMIC.search(code):
        actions.append({"action": "dynamic_sql", "text": "runs dynamic SQL (EXECUTE): review by hand"})
    return actions, invariant
