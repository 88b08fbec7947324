"""Exact comparison of fetched rows in Python, and JSON-able renderings of values.

The in-database hash only points at rows worth looking at; whether two rows differ is decided
here, on the values the driver returns: ``Decimal`` compares by value (``1.0 == 1.00``), aware
datetimes compare as instants, json values as parsed objects, ``None`` never equals ``""``. Floats
compare as IEEE values except that NaN equals NaN and ``-0.0`` differs from ``0.0`` (their text forms
differ, so the hash differs: the exact comparison must agree). Values Python cannot hold (an
``infinity`` timestamp) arrive as their text forms (:func:`reconcile.diff.side.exact_loaders`).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

MISSING = "missing_in_target"
EXTRA = "extra_in_target"
CHANGED = "changed"
KINDS = (MISSING, EXTRA, CHANGED)


def same(a: Any, b: Any) -> bool:
    """Exact equality of two column values as returned by psycopg.

    >>> same(float("nan"), float("nan")), same(-0.0, 0.0), same(Decimal("1.50"), Decimal("1.5"))
    (True, False, True)
    >>> same([Decimal("1.5"), None], [Decimal("1.50"), None]), same("infinity", "infinity")
    (True, True)
    """
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        if a.is_nan() or b.is_nan():
            return a.is_nan() and b.is_nan()
        return a == b
    if type(a) is not type(b) and not (isinstance(a, (int, Decimal)) and isinstance(b, (int, Decimal))):
        return str(a) == str(b)
    return a == b


def jsonable(value: Any) -> Any:
    """A value as plain JSON data: Decimal and dates as exact strings, bytes as hex."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # 'nan', 'inf', '-0.0': exact, and valid JSON as a string
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (uuid.UUID, dt.timedelta)):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


@dataclass
class Finding:
    """One persistent difference of a table's row (or, for balances, of an account's money)."""

    table: str
    kind: str
    key: list[Any]
    columns: list[str] = field(default_factory=list)
    source: dict[str, Any] | None = None
    target: dict[str, Any] | None = None
    money_delta: str | None = None
    """Target minus source of the money column (an exact decimal string), when the table has one."""
    currency: str | None = None
    raw_key: tuple | None = field(default=None, repr=False, compare=False)
    """The key as fetched (for re-reads); not stored."""

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "kind": self.kind, "key": self.key, "columns": self.columns,
                "source": self.source, "target": self.target, "money_delta": self.money_delta,
                "currency": self.currency}


def _money(row: dict[str, Any] | None, column: str | None) -> Decimal:
    if row is None or column is None:
        return Decimal(0)
    value = row.get(column)
    if value is None:
        return Decimal(0)
    try:
        return Decimal(value)
    except (decimal.InvalidOperation, TypeError, ValueError):
        return Decimal(0)


def compare_rows(table: str, names: Sequence[str], key_names: Sequence[str],
                 source_rows: Mapping[tuple, tuple], target_rows: Mapping[tuple, tuple], keys: Sequence[tuple], *,
                 money_column: str | None = None, currency_column: str | None = None) -> list[Finding]:
    """Findings for ``keys``, given the full rows fetched from each side (keyed by key tuple).

    Values of the two sides are compared column by column with :func:`same`; a key whose rows are
    equal in every column yields nothing.
    """
    out: list[Finding] = []
    for k in keys:
        s, t = source_rows.get(k), target_rows.get(k)
        if s is None and t is None:
            continue
        sd = dict(zip(names, s)) if s is not None else None
        td = dict(zip(names, t)) if t is not None else None
        if s is None:
            kind, cols = EXTRA, []
        elif t is None:
            kind, cols = MISSING, []
        else:
            cols = [n for n in names if not same(sd[n], td[n])]  # type: ignore[index]
            if not cols:
                continue
            kind = CHANGED
        delta = None
        if money_column is not None and money_column in names:
            d = _money(td, money_column) - _money(sd, money_column)
            delta = str(d) if d != 0 else "0"
        currency = None
        if currency_column is not None and currency_column in names:
            currency = (sd or td or {}).get(currency_column)
            currency = currency.strip() if isinstance(currency, str) else currency
        out.append(Finding(table, kind, [jsonable(v) for v in k], cols,
                           {n: jsonable(v) for n, v in sd.items()} if sd is not None else None,
                           {n: jsonable(v) for n, v in td.items()} if td is not None else None,
                           delta, currency, raw_key=k))
    return out
