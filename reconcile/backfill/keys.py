"""Primary keys of a backfill: their stored form, COPY text parsing, and the SQL that ranges over them.

A key travels as a tuple of the *text forms* of its values, in key-column order (``("42",)``,
``("B", "7")``): PostgreSQL prints and parses every key type losslessly in text, and the text form is
what COPY emits. In the control tables a key is stored as a JSON array of those strings
(:func:`encode_key`). SQL never compares text forms: every placeholder is cast to the column's type
on the side the statement runs on, and every collatable key column is compared and ordered with an
explicit ``COLLATE "C"`` on both sides of the comparison. That is what makes a range ``[lo, hi)`` mean
the same rows on an ``en_US`` source and on the C-only target.

Single-column keys compare as plain scalars (so a btree on the column serves the range); composite
keys compare as row values, ``ROW(a, b COLLATE "C") >= ROW(CAST(%s AS int), CAST(%s AS text) COLLATE "C")``,
which a btree on ``(a, b)`` also serves when its collation matches.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from reconcile.backfill.errors import BadKey

Key = tuple[str, ...]
"""Text forms of one key's values, in key-column order."""

C = sql.SQL(' COLLATE "C"')


@dataclass(frozen=True)
class KeyColumn:
    """One key column as seen on one side (source or target)."""

    name: str
    type: str
    """The column's type on that side without its modifier, e.g. ``bigint``, ``character varying``
    (a cast to ``varchar(20)`` would truncate the value being compared)."""
    collatable: bool
    """Text-like (it has a collation): ordered and compared with ``COLLATE "C"``."""


# --- stored form --------------------------------------------------------------------------------


def encode_key(key: Key | None) -> str | None:
    """The control-table form of a key: a JSON array of text values (None stays None).

    >>> encode_key(("B", "7"))
    '["B", "7"]'
    """
    if key is None:
        return None
    return json.dumps(list(key), ensure_ascii=False)


def decode_key(text: str | None) -> Key | None:
    """Inverse of :func:`encode_key`.

    >>> decode_key('["ä", "1"]')
    ('ä', '1')
    """
    if text is None:
        return None
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadKey(f"stored key {text!r} is not a JSON array of strings; the chunk row is damaged, "
                     "rerun the table with --replan")
    return tuple(value)


def show_key(key: Key | None, *, unbounded: str = "∞") -> str:
    """A key for people: ``42`` or ``(B, 7)``; ``unbounded`` for None."""
    if key is None:
        return unbounded
    return key[0] if len(key) == 1 else "(" + ", ".join(key) + ")"


def parse_key_arg(text: str, columns: Sequence[str], *, option: str = "--from-key") -> Key:
    """A key given on the command line.

    A single-column key is given as its text form (``--from-key 5000``, ``--from-key ä-001``); a
    composite key as a JSON array (``--from-key '["EUR", 17]'``). A JSON array is accepted for a
    single column too.

    >>> parse_key_arg("5000", ["entry_id"])
    ('5000',)
    >>> parse_key_arg('["EUR", 17]', ["currency", "n"])
    ('EUR', '17')
    """
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise BadKey(f"{option} {text!r} is not a valid JSON array ({exc.msg}); write it as "
                         f"'[{', '.join(chr(34) + c + chr(34) for c in columns)}]'") from None
        if not isinstance(value, list) or any(isinstance(v, (list, dict)) or v is None for v in value):
            raise BadKey(f"{option} {text!r} must be a flat JSON array of key values without nulls")
        key: Key = tuple(v if isinstance(v, str) else json.dumps(v) for v in value)
    elif len(columns) == 1:
        key = (text,)
    else:
        raise BadKey(f"{option} needs all {len(columns)} key columns ({', '.join(columns)}) of this "
                     f"composite key as a JSON array, e.g. '[\"...\", \"...\"]'")
    if len(key) != len(columns):
        raise BadKey(f"{option} {text!r} has {len(key)} value(s) but the key has {len(columns)} "
                     f"column(s): {', '.join(columns)}")
    return key


# --- COPY text format -----------------------------------------------------------------------------

_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.DOTALL)
_SIMPLE = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def _unescape_match(m: re.Match[bytes]) -> bytes:
    octal, hexa, char = m.groups()
    if octal is not None:
        return bytes([int(octal, 8) & 0xFF])
    if hexa is not None:
        return bytes([int(hexa, 16)])
    return _SIMPLE.get(char, char)


def copy_field(raw: bytes) -> str | None:
    r"""Decode one field of a COPY text-format line (``\N`` is NULL).

    >>> copy_field(rb"a\tb\\c"), copy_field(rb"\N")
    ('a\tb\\c', None)
    """
    if raw == b"\\N":
        return None
    if b"\\" in raw:
        raw = _ESCAPE.sub(_unescape_match, raw)
    return raw.decode("utf-8")


def copy_fields(line: bytes) -> list[str | None]:
    """All fields of one COPY text line (without its newline)."""
    return [copy_field(f) for f in line.split(b"\t")]


def line_key(line: bytes, positions: Sequence[int]) -> Key:
    """The key of one COPY text line, from the key columns' positions in the line."""
    fields = line.split(b"\t")
    out = []
    for p in positions:
        value = copy_field(fields[p])
        if value is None:  # a primary key is never NULL; a unique key might be
            raise BadKey("a key column holds NULL; backfill keys must be NOT NULL (use the primary key)")
        out.append(value)
    return tuple(out)


# --- SQL builders -----------------------------------------------------------------------------------


def _column(col: KeyColumn, alias: str | None) -> sql.Composable:
    ident = sql.Identifier(alias, col.name) if alias else sql.Identifier(col.name)
    return sql.Composed([ident, C]) if col.collatable else ident


def _placeholder(col: KeyColumn) -> sql.Composable:
    # The type name comes from format_type() in the catalog, never from a user: it is SQL text
    # already (quoted where needed), so it is composed as SQL, not as an identifier.
    cast = sql.SQL("CAST(%s AS {})").format(sql.SQL(col.type))  # type: ignore[arg-type]
    return sql.Composed([cast, C]) if col.collatable else cast


def key_expr(cols: Sequence[KeyColumn], alias: str | None = None) -> sql.Composable:
    """The key of a row, comparable and orderable in C order.

    >>> key_expr([KeyColumn("id", "bigint", False)], "t").as_string()
    '"t"."id"'
    >>> key_expr([KeyColumn("a", "text", True), KeyColumn("n", "integer", False)]).as_string()
    'ROW("a" COLLATE "C", "n")'
    """
    parts = [_column(c, alias) for c in cols]
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("ROW({})").format(sql.SQL(", ").join(parts))


def key_value(cols: Sequence[KeyColumn]) -> sql.Composable:
    """Placeholders for one key value, each cast to its column's type (and C-collated).

    >>> key_value([KeyColumn("a", "text", True), KeyColumn("n", "integer", False)]).as_string()
    'ROW(CAST(%s AS text) COLLATE "C", CAST(%s AS integer))'
    """
    parts = [_placeholder(c) for c in cols]
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("ROW({})").format(sql.SQL(", ").join(parts))


def order_by(cols: Sequence[KeyColumn], alias: str | None = None) -> sql.Composable:
    """``ORDER BY`` list in C order.

    >>> order_by([KeyColumn("a", "text", True), KeyColumn("n", "integer", False)], "t").as_string()
    '"t"."a" COLLATE "C", "t"."n"'
    """
    return sql.SQL(", ").join(_column(c, alias) for c in cols)


def key_range(
    cols: Sequence[KeyColumn],
    *,
    lower: Key | None = None,
    lower_inclusive: bool = True,
    upper: Key | None = None,
    upper_inclusive: bool = False,
    alias: str | None = None,
) -> tuple[sql.Composable, list[str]]:
    """A WHERE condition selecting keys between two bounds, and its parameters.

    None bounds are open; with neither bound the condition is ``TRUE``.

    >>> cond, params = key_range([KeyColumn("id", "bigint", False)], lower=("10",), upper=("20",))
    >>> cond.as_string(), params
    ('"id" >= CAST(%s AS bigint) AND "id" < CAST(%s AS bigint)', ['10', '20'])
    """
    expr = key_expr(cols, alias)
    value = key_value(cols)
    parts: list[sql.Composable] = []
    params: list[str] = []
    for bound, op in ((lower, ">=" if lower_inclusive else ">"), (upper, "<=" if upper_inclusive else "<")):
        if bound is None:
            continue
        if len(bound) != len(cols):
            raise BadKey(f"key {bound!r} has {len(bound)} value(s); the key has {len(cols)} column(s)")
        parts.append(sql.SQL("{} {} {}").format(expr, sql.SQL(op), value))
        params.extend(bound)
    if not parts:
        return sql.SQL("TRUE"), []
    return sql.SQL(" AND ").join(parts), params


def compare_sql(cols: Sequence[KeyColumn]) -> sql.Composed:
    """``SELECT`` returning -1, 0 or 1 for two keys (params: a's values, then b's), in C order."""
    a, b = key_value(cols), key_value(cols)
    return sql.SQL("SELECT CASE WHEN {a} < {b} THEN -1 WHEN {a2} = {b2} THEN 0 ELSE 1 END").format(
        a=a, b=b, a2=key_value(cols), b2=key_value(cols))
