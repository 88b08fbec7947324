"""DSQL CDC records as the reverse replayer reads them from Kinesis: parsing, fragment reassembly, CRC32C.

A Kinesis record's ``Data`` is one JSON object whose ``type`` is ``full`` (a whole change), ``chunked``
(a change whose ``before`` and/or ``after`` image is split: ``chunked.<side>`` names a ``chunk_id``,
``total_fragments`` and a ``crc32c`` of the image text) or ``fragment`` (``chunk_id``, zero-based
``index``, ``data``: a piece of the image's JSON text). Fragments and their main record may arrive on
any shard, in any order, more than once (DSQL keeps a chunk id stable across retries).
:class:`Reassembler` buffers them until an image is whole, checks its CRC32C and hands out the change
with every Kinesis record it was made of (the checkpoint may pass those only once it is applied).
"""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from typing import Any

KNOWN_OPS = ("c", "u", "d")
_DECODER = json.JSONDecoder(parse_float=Decimal)


class RecordError(ValueError):
    """A Kinesis record that is not a DSQL CDC record (or a reassembled image that fails its checksum)."""


def _table(poly: int) -> list[int]:
    out = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        out.append(c)
    return out


_CRC32C = _table(0x82F63B78)


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32C (Castagnoli), as DSQL puts in ``chunked.<side>.crc32c`` (pure Python; images are rare).

    >>> crc32c(b"123456789")
    3808858755
    """
    crc ^= 0xFFFFFFFF
    table = _CRC32C
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class Item:
    """One Kinesis record as read: where it sits (shard, sequence number)."""

    shard: str
    seq: int


@dataclasses.dataclass
class Change:
    """One row's net change in one DSQL transaction (images reassembled)."""

    tx_id: str
    ts_ns: int
    schema: str
    table: str
    op: str
    """``c``, ``u``, ``d``; any other value is applied as an upsert of ``after`` (DSQL's advice)."""
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    processed_ns: int
    """When DSQL's CDC processed the record (top-level ``ts_ns``)."""
    items: list[Item]
    chunk_ids: tuple[str, ...] = ()

    @property
    def qualified(self) -> str:
        from reconcile.db.names import qualify

        return qualify(self.schema, self.table)

    @property
    def is_delete(self) -> bool:
        return self.op == "d"

    def payload(self) -> dict[str, Any]:
        return {"txId": self.tx_id, "ts_ns": self.ts_ns, "table": self.qualified, "op": self.op,
                "before": self.before, "after": self.after}


def loads(data: bytes | str) -> dict[str, Any]:
    """Parse one record's JSON; numbers with a fraction become Decimal (never float)."""
    try:
        doc = _DECODER.decode(data.decode() if isinstance(data, (bytes, bytearray)) else data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise RecordError("not a JSON object")
    return doc


class Reassembler:
    """Turns parsed records into whole :class:`Change` objects, buffering fragments and chunked mains."""

    def __init__(self) -> None:
        self._fragments: dict[str, dict[int, str]] = {}
        self._fragment_items: dict[str, list[Item]] = {}
        self._mains: dict[str, tuple[dict, list[Item]]] = {}
        """Waiting chunked main records, by the first chunk id they need."""

    def pending_chunks(self) -> set[str]:
        return set(self._fragments) | {c for doc, _ in self._mains.values() for c in _chunk_ids(doc)}

    def fragment_items(self, chunk_id: str) -> list[Item]:
        return self._fragment_items.get(chunk_id, [])

    def forget(self, chunk_id: str) -> list[Item]:
        """Drop a chunk's buffered fragments and any main waiting for it (the chunk was applied already, before
        a restart); returns the Kinesis records they came from."""
        self._fragments.pop(chunk_id, None)
        items = self._fragment_items.pop(chunk_id, [])
        for cid, (doc, main_items) in list(self._mains.items()):
            if chunk_id in _chunk_ids(doc):
                del self._mains[cid]
                items += main_items
        return items

    def add(self, doc: dict, item: Item) -> list[Change]:
        """Feed one parsed record; returns the changes it completed (zero or one, or one waiting main)."""
        kind = doc.get("type", "full")
        if kind == "fragment":
            try:
                cid, idx, data = str(doc["chunk_id"]), int(doc["index"]), doc["data"]
            except (KeyError, TypeError, ValueError):
                raise RecordError("a fragment record without chunk_id, index or data") from None
            if not isinstance(data, str) or idx < 0:
                raise RecordError(f"fragment {idx} of chunk {cid} has no text data")
            self._fragments.setdefault(cid, {})[idx] = data
            self._fragment_items.setdefault(cid, []).append(item)
            main = self._mains.get(cid)
            if main is None:
                return []
            return self._try(*main)
        if kind == "full":
            return [_change(doc, doc.get("before"), doc.get("after"), [item])]
        if kind == "chunked":
            return self._try(doc, [item])
        raise RecordError(f"unknown record type {kind!r}")

    def _try(self, doc: dict, items: list[Item]) -> list[Change]:
        ids = _chunk_ids(doc)
        for cid in ids:  # this main (or a copy of it) may already wait: keep every copy's record
            waiting = self._mains.pop(cid, None)
            if waiting is not None and waiting[1] is not items:
                items = waiting[1] + [i for i in items if i not in waiting[1]]
        images: dict[str, Any] = {"before": doc.get("before"), "after": doc.get("after")}
        missing = None
        for side, spec in (doc.get("chunked") or {}).items():
            cid = str(spec["chunk_id"])
            total = int(spec["total_fragments"])
            have = self._fragments.get(cid, {})
            if len(have) < total or any(i not in have for i in range(total)):
                missing = cid
                continue
            text = "".join(have[i] for i in range(total))
            want = str(spec.get("crc32c"))
            got = str(crc32c(text.encode()))
            if want != got:
                raise RecordError(f"the {side} image of chunk {cid} fails its CRC32C ({got}, expected {want})")
            images[side] = loads(text)
        if missing is not None:
            self._mains[missing] = (doc, items)
            return []
        all_items = list(items)
        for cid in ids:
            all_items += self._fragment_items.pop(cid, [])
            self._fragments.pop(cid, None)
        return [_change(doc, images["before"], images["after"], all_items, ids)]


def _chunk_ids(doc: dict) -> tuple[str, ...]:
    return tuple(str(spec["chunk_id"]) for spec in (doc.get("chunked") or {}).values())


def _change(doc: dict, before: Any, after: Any, items: list[Item], chunk_ids: tuple[str, ...] = ()) -> Change:
    try:
        src = doc["source"]
        tx, ts, schema, table = str(src["txId"]), int(src["ts_ns"]), str(src["schema"]), str(src["table"])
    except (KeyError, TypeError, ValueError):
        raise RecordError("a change record without source.txId, source.ts_ns, source.schema or source.table") \
            from None
    op = str(doc.get("op") or "")
    if op == "d":
        if not isinstance(before, dict):
            raise RecordError(f"a delete on {schema}.{table} without the primary key in before")
    elif not isinstance(after, dict):
        raise RecordError(f"a {op!r} change on {schema}.{table} without an after image")
    return Change(tx, ts, schema, table, op, before if isinstance(before, dict) else None,
                  after if isinstance(after, dict) else None, int(doc.get("ts_ns") or 0), items, chunk_ids)
