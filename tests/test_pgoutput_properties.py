"""Property tests of the pgoutput decoder and the transaction assembler on malformed input.

Whatever bytes the slot hands over, :func:`pgoutput.decode` and :meth:`Assembler.assemble` either
return decoded messages / whole transactions or raise :class:`pgoutput.DecodeError` (a terminal
:class:`~reconcile.errors.ReconcileError` with a reason): never another exception type, never a hang
(hypothesis' deadline bounds each example). Valid messages are made by a small encoder that follows
"Logical Replication Message Formats" (protocol 1) and round-trip through the decoder; malformed
ones are those messages cut short, with bytes overwritten or inserted, or random bytes.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reconcile.config import TableSpec
from reconcile.errors import ReconcileError
from reconcile.replay import pgoutput as po
from reconcile.replay.source import Assembler

PROPS = settings(max_examples=400, deadline=10_000, derandomize=True,  # 10 s: a hang, never a slow machine
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- a protocol-1 encoder (the inverse of po.decode) ----------------------------------------------------------


def _s(text: str) -> bytes:
    return text.encode() + b"\0"


def _tuple(values) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is po.UNCHANGED:
            out += b"u"
        else:
            raw = v.encode()
            out += b"t" + struct.pack(">i", len(raw)) + raw
    return out


def encode(m: po.Decoded) -> bytes:
    if isinstance(m, po.Begin):
        return b"B" + struct.pack(">QqI", m.final_lsn, m.commit_ts, m.xid)
    if isinstance(m, po.Commit):
        return b"C" + struct.pack(">BQQq", m.flags, m.commit_lsn, m.end_lsn, m.commit_ts)
    if isinstance(m, po.Origin):
        return b"O" + struct.pack(">Q", m.lsn) + _s(m.name)
    if isinstance(m, po.Relation):
        cols = b"".join(struct.pack(">b", int(c.key)) + _s(c.name) + struct.pack(">Ii", c.type_oid, c.typmod)
                        for c in m.columns)
        return (b"R" + struct.pack(">I", m.oid) + _s(m.namespace) + _s(m.name) + m.replica_identity.encode()
                + struct.pack(">h", len(m.columns)) + cols)
    if isinstance(m, po.Type):
        return b"Y" + struct.pack(">I", m.oid) + _s(m.namespace) + _s(m.name)
    if isinstance(m, po.Insert):
        return b"I" + struct.pack(">I", m.relid) + b"N" + _tuple(m.new)
    if isinstance(m, po.Update):
        old = (m.old_kind.encode() + _tuple(m.old)) if m.old is not None else b""
        return b"U" + struct.pack(">I", m.relid) + old + b"N" + _tuple(m.new)
    if isinstance(m, po.Delete):
        return b"D" + struct.pack(">I", m.relid) + m.old_kind.encode() + _tuple(m.old)
    if isinstance(m, po.Truncate):
        options = int(m.cascade) | (int(m.restart_identity) << 1)
        return b"T" + struct.pack(">ib", len(m.relids), options) + b"".join(struct.pack(">I", r) for r in m.relids)
    if isinstance(m, po.Message):
        return (b"M" + struct.pack(">BQ", int(m.transactional), m.lsn) + _s(m.prefix)
                + struct.pack(">i", len(m.content)) + m.content)
    raise AssertionError(m)


# --- strategies -------------------------------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
name = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=12)
value = st.one_of(st.none(), st.just(po.UNCHANGED), st.text(st.characters(blacklist_categories=("Cs",)), max_size=20))
row = st.lists(value, max_size=6).map(tuple)
column = st.builds(po.Column, name, u32, st.integers(-(2**31), 2**31 - 1), st.booleans())

messages = st.one_of(
    st.builds(po.Begin, u64, i64, u32),
    st.builds(po.Commit, st.integers(0, 255), u64, u64, i64),
    st.builds(po.Origin, u64, name),
    st.builds(po.Relation, u32, name.filter(bool), name, st.sampled_from("dnfi"),
              st.lists(column, max_size=5).map(tuple)),
    st.builds(po.Type, u32, name, name),
    st.builds(po.Insert, u32, row),
    st.one_of(st.builds(po.Update, u32, row), st.builds(po.Update, u32, row, row, st.sampled_from("KO"))),
    st.builds(po.Delete, u32, row, st.sampled_from("KO")),
    st.builds(po.Truncate, st.lists(u32, max_size=4).map(tuple), st.booleans(), st.booleans()),
    st.builds(po.Message, st.booleans(), u64, name, st.binary(max_size=20)),
)


@st.composite
def mangled(draw) -> bytes:
    """A valid message cut short, with bytes overwritten or inserted, or plain random bytes."""
    data = bytearray(encode(draw(messages)))
    how = draw(st.sampled_from(["cut", "overwrite", "insert", "random"]))
    if how == "cut":
        return bytes(data[:draw(st.integers(0, max(0, len(data) - 1)))])
    if how == "random":
        return draw(st.binary(max_size=64))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        chunk = draw(st.binary(min_size=1, max_size=4))
        if how == "overwrite":
            data[at:at + len(chunk)] = chunk
        else:
            data[at:at] = chunk
    return bytes(data)


def decoded_or_refused(data: bytes):
    """decode(data), or None when it refused with DecodeError; any other outcome fails the test."""
    try:
        return po.decode(data)
    except po.DecodeError as exc:
        assert isinstance(exc, ReconcileError) and not exc.retryable and str(exc)
        return None


# --- properties ---------------------------------------------------------------------------------------------------


@PROPS
@given(messages)
def test_every_valid_message_round_trips(m):
    assert po.decode(encode(m)) == m


@PROPS
@given(st.one_of(mangled(), st.binary(max_size=200)))
@example(b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x02\xff\xfe")  # a value that is not UTF-8
@example(b"R\x00\x00\x00\x01\xff\x00t\x00d\x00\x00")  # a relation name that is not UTF-8
@example(b"I\x00\x00\x00\x01N\x00\x02t\xff\xff\xff\xf0ab")  # a negative value length
@example(b"T\xff\xff\xff\xff\x00")  # a negative relation count
@example(b"T\x7f\xff\xff\xff\x00")  # two billion relations announced, none sent
@example(b"R\x00\x00\x00\x01s\x00t\x00d\xff\xff")  # a negative column count
@example(b"M\x01" + b"\x00" * 8 + b"p\x00\xff\xff\xff\xff")  # a negative content length
def test_malformed_bytes_decode_or_fail_with_a_decode_error(data):
    decoded_or_refused(data)


TABLES = [TableSpec("app.t", ("id",)), TableSpec("app.u", ("k", "j"))]
REL_T = po.Relation(16384, "app", "t", "d", (po.Column("id", 23, -1, True), po.Column("v", 25, -1, False)))
REL_U = po.Relation(16385, "app", "u", "d", (po.Column("k", 25, -1, True), po.Column("j", 23, -1, True)))

# Messages an assembler may meet: real shapes for the configured relations (right and wrong arity, unknown
# relations, keys missing), transaction edges, and mangled bytes.
stream_item = st.one_of(
    st.just(REL_T), st.just(REL_U),
    st.builds(po.Relation, st.sampled_from([16384, 16385, 9]), st.just("app"), st.sampled_from(["t", "u", "x"]),
              st.just("d"), st.lists(column, max_size=3).map(tuple)),
    st.builds(po.Begin, st.integers(1, 50), i64, u32),
    st.builds(po.Commit, st.just(0), st.integers(1, 50), st.integers(1, 60), i64),
    st.builds(po.Insert, st.sampled_from([16384, 16385, 7]), row),
    st.builds(po.Update, st.sampled_from([16384, 16385]), row, st.one_of(st.none(), row), st.sampled_from("KO")),
    st.builds(po.Delete, st.sampled_from([16384, 16385]), row, st.sampled_from("KO")),
    st.builds(po.Truncate, st.lists(st.sampled_from([16384, 16385, 7]), max_size=2).map(tuple), st.booleans(),
              st.booleans()),
    st.builds(po.Message, st.booleans(), u64, name, st.binary(max_size=8)),
).map(encode) | mangled()


@PROPS
@given(st.lists(stream_item, max_size=12))
@example([encode(REL_T), encode(po.Begin(10, 0, 1)), encode(po.Insert(16384, ())), encode(po.Commit(0, 10, 11, 0))])
@example([encode(REL_U), encode(po.Begin(10, 0, 1)), encode(po.Delete(16385, ("a",), "K")),
          encode(po.Commit(0, 10, 11, 0))])
def test_the_assembler_returns_whole_transactions_or_fails_with_a_decode_error(rows):
    try:
        txns, partial = Assembler(TABLES).assemble(rows)
    except po.DecodeError as exc:
        assert isinstance(exc, ReconcileError) and str(exc)
        return
    for t in txns:  # what it returns is whole and keyed
        assert t.end_lsn > t.commit_lsn
        for change in t.changes:
            spec = next(s for s in TABLES if s.name == change.table)
            assert len(change.key) == len(spec.key) and all(isinstance(k, str) for k in change.key)
            if change.new is not None:
                assert len(change.new) == len(change.relation.columns)


def test_the_decoder_refuses_the_malformed_shapes_it_used_to_crash_on():
    """Found by the properties above: each raised UnicodeDecodeError or IndexError, or read garbage."""
    with pytest.raises(po.DecodeError, match="not valid UTF-8"):
        po.decode(b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x02\xff\xfe")
    with pytest.raises(po.DecodeError, match="negative"):
        po.decode(b"I\x00\x00\x00\x01N\x00\x02t\xff\xff\xff\xf0ab")
    asm = Assembler(TABLES)
    with pytest.raises(po.DecodeError, match="0 values for the 2 columns of app.t"):
        asm.assemble([encode(REL_T), encode(po.Begin(10, 0, 1)), encode(po.Insert(16384, ()))])
