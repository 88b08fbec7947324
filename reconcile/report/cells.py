"""Cells a person can read: amounts with their currency, keys as ``col=value``, long values around the
first difference, timestamps in UTC with the zone stated.

Display only: every figure keeps all its digits (no rounding, no float), and the exact values stay in
``summary.json`` and ``findings.csv``. Everything returns plain text (or plain data); the templates
escape it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["amount", "around_difference", "count", "key_pairs", "plain", "signed", "stamp", "utc", "when"]

LONG = 120
"""Values longer than this (characters) are shown around their first difference, the rest folded."""
CONTEXT = 40
"""Characters shown on each side of the first difference."""


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _group(digits: str) -> str:
    out = []
    while len(digits) > 3:
        out.insert(0, digits[-3:])
        digits = digits[:-3]
    out.insert(0, digits)
    return ",".join(out)


def amount(value: Any, currency: str | None = None, *, sign: bool = False) -> str:
    """An exact amount with thousands separators, at least two decimals, and its currency.

    >>> amount("-3625.61", "EUR"), amount("100", "GBP", sign=True), amount("99978489431.8512")
    ('-3,625.61 EUR', '+100.00 GBP', '99,978,489,431.8512')
    >>> amount(None), amount("n/a")
    ('–', 'n/a')
    """
    d = _decimal(value)
    if d is None:
        return "–" if value is None or value == "" else str(value)
    text = format(d, "f")
    negative = text.startswith("-")
    whole, _, frac = text.lstrip("-").partition(".")
    frac = frac.ljust(2, "0")
    out = f"{_group(whole)}.{frac}"
    if negative and d != 0:
        out = "-" + out
    elif sign and d > 0:
        out = "+" + out
    return f"{out} {currency}" if currency else out


def signed(value: Any, currency: str | None = None) -> str:
    """:func:`amount` with a ``+`` on positive values (a difference, target − source)."""
    return amount(value, currency, sign=True)


def count(value: Any) -> str:
    """A whole number with thousands separators (``–`` for None).

    >>> count(1930), count(None)
    ('1,930', '–')
    """
    if value is None:
        return "–"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


def plain(value: Any, *, limit: int = 80) -> str:
    """One value as short text: NULL, strings unquoted, JSON compact, cut at ``limit`` characters."""
    if value is None:
        return "NULL"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    text = stamp(text) or text
    return text if len(text) <= limit else text[:limit - 1] + "…"


def key_pairs(names: list[str] | tuple[str, ...] | None, values: list[Any]) -> str:
    """A row key as ``col=value`` pairs (positional names when the columns are unknown).

    >>> key_pairs(["voucher", "line_no"], ["a1", 2]), key_pairs(None, [7])
    ('voucher=a1, line_no=2', 'key=7')
    """
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    names = list(names or [])
    if len(names) != len(values):
        names = ["key"] if len(values) == 1 else [f"key{i + 1}" for i in range(len(values))]
    return ", ".join(f"{n}={plain(v, limit=60)}" for n, v in zip(names, values))


def utc(value: Any, *, seconds: bool = True, exact: bool = False) -> str:
    """A timestamp in UTC with the zone stated (``2026-12-04 17:16:18 UTC``); naive ones are taken as UTC.

    ``exact`` keeps the fraction of a second (a value in a row, where it matters).

    >>> utc("2026-12-04T18:16:18.745+01:00"), utc("2024-02-01T04:31:03.544865+00:00", exact=True), utc(None)
    ('2026-12-04 17:16:18 UTC', '2024-02-01 04:31:03.544865 UTC', '–')
    """
    if value is None or value == "":
        return "–"
    moment = value
    if not isinstance(moment, dt.datetime):
        try:
            moment = dt.datetime.fromisoformat(str(value))
        except ValueError:
            return str(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    moment = moment.astimezone(dt.timezone.utc)
    if not seconds:
        return moment.strftime("%Y-%m-%d %H:%M UTC")
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if exact and moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + " UTC"


_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")


def stamp(text: str) -> str | None:
    """An ISO timestamp as written in a row, readable: in UTC with the zone stated (exact to the microsecond),
    a timestamp without a zone said to have none; None when ``text`` is not a timestamp.

    >>> stamp("2024-02-01T05:31:03.5+01:00"), stamp("2025-03-01T10:00:00"), stamp("hello")
    ('2024-02-01 04:31:03.500000 UTC', '2025-03-01 10:00:00 (no time zone)', None)
    """
    if not isinstance(text, str) or not _STAMP.match(text):
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.isoformat(sep=" ") + " (no time zone)"
    return utc(moment, exact=True)


def when(value: Any) -> str:
    """A date as written, a timestamp through :func:`utc`.

    >>> when("2025-03-01"), when("2024-02-01T04:31:03.544865+00:00")
    ('2025-03-01', '2024-02-01 04:31:03.544865 UTC')
    """
    if isinstance(value, str) and len(value) <= 10:
        return value
    return stamp(value) or utc(value) if isinstance(value, str) else utc(value, exact=True)


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def around_difference(source: Any, target: Any, *, long: int = LONG, context: int = CONTEXT) -> dict[str, Any]:
    """Two values of one cell, ready to show: whole when short, else around their first difference.

    Returns ``{"long": bool, "at": first differing character (1-based) or None, "source": (before, differing,
    after), "target": (...), "length": (len source, len target)}``; for a short pair ``before`` holds the
    whole value. Text forms are compared (JSON for structured values), so the position is the one a
    reader sees.

    >>> d = around_difference("a" * 200 + "X" + "b" * 50, "a" * 200 + "Y" + "b" * 50, context=3)
    >>> d["at"], d["source"], d["target"]
    (201, ('…aaa', 'X', 'bbb…'), ('…aaa', 'Y', 'bbb…'))
    >>> around_difference("5.00", "5.01")["source"]
    ('5.00', '', '')
    """
    a, b = _text(source), _text(target)
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if at is None and len(a) != len(b):
        at = min(len(a), len(b))
    if max(len(a), len(b)) <= long or at is None:
        return {"long": False, "at": None if at is None else at + 1, "source": (a, "", ""), "target": (b, "", ""),
                "length": (len(a), len(b))}

    def cut(text: str) -> tuple[str, str, str]:
        lo = max(0, at - context)
        before = ("…" if lo > 0 else "") + text[lo:at]
        differing = text[at:at + 1]
        rest = text[at + 1:at + 1 + context]
        after = rest + ("…" if at + 1 + context < len(text) else "")
        return before, differing, after

    return {"long": True, "at": at + 1, "source": cut(a), "target": cut(b), "length": (len(a), len(b))}
