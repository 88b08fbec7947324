"""A decoder of PostgreSQL's ``pgoutput`` logical replication messages (protocol version 1).

Why our own (about 200 lines) rather than a library: psycopg 3 has no replication protocol, and
the maintained Python decoders (``pypgoutput``, psycopg2's ``LogicalReplicationConnection``
consumers) either pull in psycopg2 or decode values to Python objects through their own, partial
type tables (numeric via float in places). We read the slot through the SQL interface
(``pg_logical_slot_peek_binary_changes``), which hands us exactly one message per row, so all we
need is the wire format of those messages, documented in "Logical Replication Message Formats" of
the PostgreSQL manual. Values stay in the text form the source's output functions produced: that is
exact (numeric digits, timestamptz with its zone, json as written) and is what the apply step casts
on the target; :func:`typed_values` turns them into Python objects with psycopg's own loaders
(Decimal, datetime with tzinfo, parsed json) when a caller wants objects.

Messages (one class each): Begin ``B``, Commit ``C``, Origin ``O``, Relation ``R``, Type ``Y``,
Insert ``I``, Update ``U``, Delete ``D``, Truncate ``T``, Message ``M`` (``pg_logical_emit_message``,
with the ``messages`` option). A tuple value is ``None`` for SQL NULL, :data:`UNCHANGED` for an
unchanged TOASTed value (``u``: the source did not send it; the target must keep its own), or the
text form as ``str``.

>>> decode(bytes.fromhex("42" "0000000001000000" "0000000000000000" "00000007"))
Begin(final_lsn=16777216, commit_ts=0, xid=7)
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from reconcile.replay.errors import ReplayError


class _Unchanged:
    """The marker of an unchanged TOASTed value (a singleton, falsy-safe, JSON as a string)."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self):
        return (_Unchanged, ())


UNCHANGED = _Unchanged()
"""An unchanged TOASTed column value (``u``): keep the target's existing value."""

Value = Union[str, None, _Unchanged]

PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)


class DecodeError(ReplayError, ValueError):
    """A message does not follow the pgoutput format (or uses a protocol feature we did not ask for).

    Terminal: the slot hands out the same bytes again on a retry.
    """


def lsn_to_int(lsn: str | None) -> int:
    """``'X/Y'`` → ``(X << 32) + Y`` (0 for None): LSNs compare as integers.

    >>> lsn_to_int("16/B374D848")
    97500059720
    """
    if not lsn:
        return 0
    hi, _, lo = lsn.partition("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def int_to_lsn(value: int) -> str:
    """The inverse of :func:`lsn_to_int`.

    >>> int_to_lsn(97500059720)
    '16/B374D848'
    """
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def pg_timestamp(micros: int) -> dt.datetime:
    """Microseconds since 2000-01-01 UTC (the protocol's timestamps) → aware datetime."""
    return PG_EPOCH + dt.timedelta(microseconds=micros)


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    """LSN of the transaction's commit record."""
    commit_ts: int
    """Commit timestamp, microseconds since 2000-01-01 UTC."""
    xid: int


@dataclass(frozen=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    """End of the commit record: where a slot advances to once the transaction is applied."""
    commit_ts: int


@dataclass(frozen=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    typmod: int
    key: bool
    """Part of the replica identity (the primary key by default)."""


@dataclass(frozen=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str
    """``d`` default (primary key), ``n`` nothing, ``f`` full, ``i`` index."""
    columns: tuple[Column, ...]

    @property
    def qualified(self) -> str:
        from reconcile.db.names import qualify

        return qualify(self.namespace, self.name)


@dataclass(frozen=True)
class Type:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True)
class Insert:
    relid: int
    new: tuple[Value, ...]


@dataclass(frozen=True)
class Update:
    relid: int
    new: tuple[Value, ...]
    old: tuple[Value, ...] | None = None
    """The old key (``old_kind`` ``K``) or whole old row (``O``, replica identity full), when sent."""
    old_kind: str | None = None


@dataclass(frozen=True)
class Delete:
    relid: int
    old: tuple[Value, ...]
    old_kind: str
    """``K``: only the key columns are set (others NULL); ``O``: the whole old row."""


@dataclass(frozen=True)
class Truncate:
    relids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True)
class Message:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Decoded = Union[Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate, Message]

_I8 = struct.Struct(">b")
_U8 = struct.Struct(">B")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, s: struct.Struct) -> int:
        try:
            (v,) = s.unpack_from(self.buf, self.pos)
        except struct.error as exc:
            raise DecodeError(f"message ends early at byte {self.pos}") from exc
        self.pos += s.size
        return v

    def byte(self) -> str:
        if self.pos >= len(self.buf):
            raise DecodeError(f"message ends early at byte {self.pos}")
        c = chr(self.buf[self.pos])
        self.pos += 1
        return c

    def count(self, s: struct.Struct, what: str) -> int:
        n = self.take(s)
        if n < 0:
            raise DecodeError(f"negative number of {what} ({n}) at byte {self.pos - s.size}")
        return n

    def text(self, raw: bytes) -> str:
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise DecodeError(f"text at byte {self.pos} is not valid UTF-8 ({exc.reason}); the slot must be read "
                              "with client_encoding UTF8 from a UTF8 database") from None

    def string(self) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise DecodeError(f"unterminated string at byte {self.pos}")
        s = self.text(self.buf[self.pos:end])
        self.pos = end + 1
        return s

    def raw(self, n: int) -> bytes:
        if n < 0:
            raise DecodeError(f"negative value length {n} at byte {self.pos}")
        if self.pos + n > len(self.buf):
            raise DecodeError(f"value of {n} bytes runs past the message end at byte {self.pos}")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def tuple(self) -> tuple[Value, ...]:
        n = self.count(_I16, "columns")
        values: list[Value] = []
        append = values.append
        buf = self.buf
        for _ in range(n):
            kind = self.byte()
            if kind == "t":
                length = self.take(_I32)
                end = self.pos + length
                if length < 0:
                    raise DecodeError(f"negative value length {length} at byte {self.pos - 4}")
                if end > len(buf):
                    raise DecodeError(f"value of {length} bytes runs past the message end")
                append(self.text(buf[self.pos:end]))
                self.pos = end
            elif kind == "n":
                append(None)
            elif kind == "u":
                append(UNCHANGED)
            elif kind == "b":
                raise DecodeError("binary tuple values need protocol 2 with binary 'true'; read with text values")
            else:
                raise DecodeError(f"unknown tuple value kind {kind!r}")
        return tuple(values)


def decode(data: bytes | memoryview) -> Decoded:
    """Decode one pgoutput message (one row of ``pg_logical_slot_*_binary_changes``).

    Raises:
        DecodeError: the bytes are not a pgoutput protocol-1 message.
    """
    buf = bytes(data)
    if not buf:
        raise DecodeError("empty message")
    r = _Reader(buf)
    kind = r.byte()
    if kind == "B":
        return Begin(r.take(_U64), r.take(_I64), r.take(_U32))
    if kind == "C":
        return Commit(r.take(_U8), r.take(_U64), r.take(_U64), r.take(_I64))
    if kind == "I":
        relid = r.take(_U32)
        if r.byte() != "N":
            raise DecodeError("insert without a new tuple")
        return Insert(relid, r.tuple())
    if kind == "U":
        relid = r.take(_U32)
        tag = r.byte()
        old = old_kind = None
        if tag in ("K", "O"):
            old_kind, old = tag, r.tuple()
            tag = r.byte()
        if tag != "N":
            raise DecodeError(f"update without a new tuple (got {tag!r})")
        return Update(relid, r.tuple(), old, old_kind)
    if kind == "D":
        relid = r.take(_U32)
        tag = r.byte()
        if tag not in ("K", "O"):
            raise DecodeError(f"delete without an old key or row (got {tag!r})")
        return Delete(relid, r.tuple(), tag)
    if kind == "R":
        oid = r.take(_U32)
        namespace, name = r.string(), r.string()
        ident = r.byte()
        cols = []
        for _ in range(r.count(_I16, "columns")):
            flags = r.take(_I8)
            cname = r.string()
            cols.append(Column(cname, r.take(_U32), r.take(_I32), bool(flags & 1)))
        return Relation(oid, namespace or "pg_catalog", name, ident, tuple(cols))
    if kind == "Y":
        return Type(r.take(_U32), r.string(), r.string())
    if kind == "T":
        n = r.count(_I32, "relations")
        options = r.take(_I8)
        return Truncate(tuple(r.take(_U32) for _ in range(n)), bool(options & 1), bool(options & 2))
    if kind == "M":
        flags = r.take(_U8)
        lsn = r.take(_U64)
        prefix = r.string()
        return Message(bool(flags & 1), lsn, prefix, r.raw(r.take(_I32)))
    if kind == "O":
        return Origin(r.take(_U64), r.string())
    raise DecodeError(f"unknown pgoutput message type {kind!r}")


def typed_values(relation: Relation, values: Sequence[Value], *, context: Any = None) -> dict[str, Any]:
    """A tuple's values as Python objects, loaded by psycopg from their text form by type OID.

    numeric → Decimal, timestamptz → aware datetime, json/jsonb → parsed, int8 → int, and so on
    (whatever psycopg loads); NULL → None; an unchanged TOASTed value stays :data:`UNCHANGED`.

    Args:
        relation: the relation the tuple belongs to.
        values: the tuple.
        context: a psycopg connection (its adapters and time zone); the global adapters when None.
    """
    from psycopg.adapt import Transformer
    from psycopg.pq import Format

    tx = Transformer(context)
    out: dict[str, Any] = {}
    for col, value in zip(relation.columns, values):
        if value is None or value is UNCHANGED:
            out[col.name] = value
        else:
            loader = tx.get_loader(col.type_oid, Format.TEXT)
            out[col.name] = loader.load(value.encode())
    return out


def as_json(value: Value) -> Any:
    """A tuple value for a JSON document: text as is, NULL as null, unchanged TOAST as ``{"unchanged": true}``."""
    if value is UNCHANGED:
        return {"unchanged": True}
    return value


def row_dict(relation: Relation, values: Sequence[Value] | None) -> Mapping[str, Any] | None:
    """``{column: JSON value}`` of a tuple (None when the tuple is None)."""
    if values is None:
        return None
    return {c.name: as_json(v) for c, v in zip(relation.columns, values)}
