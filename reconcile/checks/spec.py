"""One expectation as a plain, JSON-able value, and the SQL text helpers that build its queries.

A :class:`Check` names a Great Expectations expectation class and its arguments, the data it runs
on (a table of the ledger or of the control schema, or a small frame of facts computed here) and
the suite it belongs to. Suites are built from lists of checks without importing GX (so building
and testing them is fast); :mod:`reconcile.checks.gxrun` turns them into GX objects.

Queries for ``UnexpectedRowsExpectation`` are text GX formats twice: ``str.format`` substitutes
``{batch}`` (so literal braces are doubled), then SQLAlchemy's ``text()`` reads ``:name`` as a bind
parameter (so a colon before a word is escaped). :func:`ident` and :func:`literal` quote through
``psycopg.sql`` and apply both escapes.

>>> ident("ledger", "entries")
'"ledger"."entries"'
>>> literal("{c} :b")
"'{{c}} \\\\:b'"
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

__all__ = ["ROW_WISE", "Check", "Chunking", "escape_query", "ident", "literal", "substitute_chunk", "suite_key"]

_BIND = re.compile(r"(?<![:\w\\]):(?=\w)")


def escape_query(text: str) -> str:
    """Escape braces for ``str.format`` and ``:word`` for SQLAlchemy ``text()``; ``{batch}`` is kept.

    >>> escape_query("SELECT '{x}', a::text, ':y' FROM {batch}")
    "SELECT '{{x}}', a::text, '\\\\:y' FROM {batch}"
    """
    marker = "\x00batch\x00"
    text = text.replace("{batch}", marker).replace("{", "{{").replace("}", "}}")
    return _BIND.sub(r"\\:", text).replace(marker, "{batch}")


_CHUNK = re.compile(r"(?<!\{)\{chunk\}(?!\})")


def substitute_chunk(query: str, condition: str = "TRUE") -> str:
    """Replace the ``{chunk}`` token of a query (a key-range condition; ``TRUE``: the whole table).

    >>> substitute_chunk("SELECT '{{chunk}}' FROM t WHERE {chunk}", "k > 5")
    "SELECT '{{chunk}}' FROM t WHERE k > 5"
    """
    return _CHUNK.sub(lambda _m: condition, query)


def ident(*parts: str) -> str:
    """A quoted (qualified) identifier, escaped for a GX query."""
    return escape_query(sql.Identifier(*parts).as_string())


def qualified(name: str) -> str:
    """``schema.table`` (:mod:`reconcile.db.names`) quoted, escaped for a GX query.

    >>> qualified('ledger2."Sel""ect"'), qualified("ledger.tab;le")
    ('"ledger2"."Sel""ect"', '"ledger"."tab;le"')
    """
    from reconcile.db.names import split_name

    return ident(*split_name(name))


def literal(value: Any) -> str:
    """A SQL literal (strings quoted, quotes doubled), escaped for a GX query."""
    return escape_query(sql.Literal(value).as_string())


def suite_key(suite: str, side: str) -> str:
    """The name a suite's result goes by in a run summary: ``<suite>@<side>``, e.g. ``ledger@target``."""
    return f"{suite}@{side}"


@dataclass(frozen=True)
class Chunking:
    """How a check's batch may be split into key ranges (see the module docstring)."""

    column: str | None = None
    """Column of the checked table each range restricts; None: the table's primary key (row-wise checks)."""
    keys: tuple[str, str] | None = None
    """(table, column) whose index gives the range boundaries; None: the checked table's ``column``."""
    inner: str | None = None
    """Column the query's ``{chunk}`` token restricts to the same range (a sub-query on another table)."""

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "keys": list(self.keys) if self.keys else None, "inner": self.inner}


ROW_WISE = Chunking()
"""Split anywhere: on the table's primary key."""


@dataclass(frozen=True)
class Check:
    """One expectation of one suite, as data.

    ``table`` is the ``schema.table`` the expectation runs on through SQL, or None when it runs on
    ``frame`` (rows of facts computed in Python, e.g. the replay lag read from the control schema).
    """

    suite: str
    """Suite it belongs to: ``ledger``, a table name for generated suites, ``parity``, ``freshness``."""
    name: str
    """Stable name within the suite (``entries_sum_to_zero_per_txn_currency``, ``not_null:amount``...)."""
    expectation: str
    """GX expectation class in ``great_expectations.expectations`` (``UnexpectedRowsExpectation``...)."""
    kwargs: dict[str, Any]
    """Its arguments (JSON-able)."""
    description: str
    """One sentence: what a failure means."""
    table: str | None = None
    """``schema.table`` the batch reads (SQL), or None for a frame."""
    frame: tuple[dict[str, Any], ...] | None = None
    """Rows of facts (a pandas batch) when ``table`` is None; ``frame_name`` names the asset."""
    frame_name: str | None = None
    sides: tuple[str, ...] = ("source", "target")
    """Where it runs."""
    evidence: dict[str, Any] = field(default_factory=dict)
    """What the expectation's parameters were derived from (diff run, catalog constraint...)."""
    not_applicable: str | None = None
    """Why this check does not apply to the configured ledger (e.g. no currency column), or None. A check
    that does not apply is never run: it is reported with this reason, neither passed nor failed."""
    chunking: Chunking | None = None
    """How the batch splits into key ranges (:mod:`reconcile.checks.chunks`); None: it runs whole (a
    control table of a few rows, a frame)."""

    def __post_init__(self) -> None:
        if self.not_applicable is not None:
            if not self.not_applicable.strip():
                raise ValueError(f"check {self.suite}/{self.name} needs a reason to be not applicable")
            return
        if (self.table is None) == (self.frame is None):
            raise ValueError(f"check {self.suite}/{self.name} needs exactly one of table and frame")

    @property
    def asset(self) -> str:
        """Name of the data the expectation reads (table, or frame name)."""
        return self.table or self.frame_name or self.name

    def to_dict(self) -> dict[str, Any]:
        out = {"suite": self.suite, "name": self.name, "expectation": self.expectation, "kwargs": self.kwargs,
               "description": self.description, "asset": self.asset, "sides": list(self.sides)}
        if self.evidence:
            out["evidence"] = self.evidence
        if self.not_applicable is not None:
            out["not_applicable"] = self.not_applicable
        if self.chunking is not None:
            out["chunking"] = self.chunking.to_dict()
        return out
