"""Entry-level diff of one table: segment checksums in both databases, bisection, row hashes.

The algorithm (after reladiff's ``HashDiffer``, with one change that makes it much cheaper):

1. Split the key space into *segments* of at most ``segment_rows`` rows. An integer key is split
   by arithmetic on its min/max (no scan); any other key by every ``bucket_rows``-th source key in
   byte order (``COLLATE "C"``).
2. For each segment, one query per side returns a single checksum (the cheapest scan, the whole
   cost when the tables match, ``precheck``); only when it differs, one query per side returns a checksum (row count, sum of 60-bit row hashes)
   for every *bucket* of about ``bucket_rows`` rows inside it (``GROUP BY`` the bucket number). One
   scan localises a difference to a bucket: reladiff spends one query per segment per level.
   Both sides run at once, and ``workers`` segments at a time.
3. A bucket whose checksums differ is fetched as (key, row hash) pairs when it holds at most
   ``fetch_threshold`` rows per side, else split into ``bisection_factor`` sub-buckets, checksummed
   again, and so on.
4. Keys whose hashes differ are the *candidates*; their full rows are fetched from both sides and
   compared exactly in Python (:func:`reconcile.diff.compare.compare_rows`).

Segments are immutable half-open ``[lo, hi)`` key ranges; ``None`` is an open end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from reconcile.diff import sqlgen
from reconcile.diff.settings import DiffSettings
from reconcile.diff.side import Pair, Side
from reconcile.diff.sqlgen import Arithmetic, Column

FETCH_BATCH = 500
"""Keys per ``IN (...)`` list when full rows are fetched."""


@dataclass(frozen=True)
class TableShape:
    """What the algorithm needs to know about one table on both sides."""

    name: str
    ident: sql.Identifier
    key: tuple[Column, ...]
    source_columns: tuple[Column, ...]
    target_columns: tuple[Column, ...]
    only_source: tuple[str, ...] = ()
    only_target: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.source_columns]

    @property
    def integer_key(self) -> bool:
        return len(self.key) == 1 and self.key[0].kind == "int"


@dataclass(frozen=True)
class Segment:
    """A half-open key range ``[lo, hi)`` and how to bucket it."""

    lo: tuple | None
    hi: tuple | None
    bucketing: Any  # Arithmetic | tuple of inner boundaries
    depth: int = 0

    def __post_init__(self) -> None:
        if self.lo is not None and self.hi is not None and len(self.lo) == 1 and isinstance(self.lo[0], int) \
                and self.lo[0] >= self.hi[0]:
            raise ValueError(f"empty segment [{self.lo}, {self.hi})")


@dataclass
class Candidates:
    """Keys whose row hashes differ, and the row counts seen while checksumming."""

    missing: set = field(default_factory=set)
    extra: set = field(default_factory=set)
    changed: set = field(default_factory=set)
    rows_source: int = 0
    rows_target: int = 0
    segments: int = 0
    buckets_fetched: int = 0

    def merge(self, other: Candidates) -> None:
        self.missing |= other.missing
        self.extra |= other.extra
        self.changed |= other.changed
        self.rows_source += other.rows_source
        self.rows_target += other.rows_target
        self.segments += other.segments
        self.buckets_fetched += other.buckets_fetched

    def keys(self) -> list[tuple]:
        return sorted(self.missing | self.extra | self.changed, key=repr)

    def __len__(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.changed)


def _cols(shape: TableShape, side: Side) -> tuple[Column, ...]:
    return shape.source_columns if side.name == "source" else shape.target_columns


def plan_segments(pair: Pair, shape: TableShape, settings: DiffSettings) -> list[Segment]:
    """The top-level segments of the table (see step 1 of the module docstring)."""
    per_segment = max(1, settings.segment_rows // settings.bucket_rows)
    if shape.integer_key:
        (kc,) = shape.key
        q = sqlgen.min_max_query(shape.ident, kc)
        (smin, smax), (tmin, tmax) = pair.both(lambda s: s.one(q))
        lows = [v for v in (smin, tmin) if v is not None]
        highs = [v for v in (smax, tmax) if v is not None]
        if not lows:
            return []
        lo, hi = min(lows), max(highs) + 1
        span = hi - lo
        schema, table = shape.name.split(".", 1)
        est = pair.source.estimate_rows(schema, table) or 0.0
        density = min(1.0, max(est, 1.0) / span) if est > 0 else 1.0
        width = max(1, int(settings.bucket_rows / density))
        seg_width = width * per_segment
        count = max(1, math.ceil(span / seg_width))
        segments = []
        for i in range(count):
            s_lo = lo + i * seg_width
            s_hi = min(hi, s_lo + seg_width)
            # The outer segments are open-ended: rows written beyond min/max meanwhile still land somewhere.
            segments.append(Segment(None if i == 0 else (s_lo,), None if i == count - 1 else (s_hi,),
                                    Arithmetic(lo if i == 0 else s_lo, width)))
        return segments
    # n boundaries make n + 1 buckets; segment j holds buckets j*m .. (j+1)*m - 1.
    bounds = _boundaries(pair, shape, None, None, settings.bucket_rows, 10_000_000)
    n, m = len(bounds), per_segment
    segments = []
    for j in range(math.ceil((n + 1) / m)):
        lo = None if j == 0 else bounds[j * m - 1]
        hi = bounds[(j + 1) * m - 1] if (j + 1) * m - 1 < n else None
        segments.append(Segment(lo, hi, tuple(bounds[j * m:min((j + 1) * m - 1, n)])))
    return segments


def _boundaries(pair: Pair, shape: TableShape, lo: tuple | None, hi: tuple | None, step: int, limit: int,
                side: Side | None = None) -> list[tuple]:
    q, params = sqlgen.boundaries_query(shape.ident, shape.key, lo, hi, max(1, step), limit)
    return [tuple(r) for r in (side or pair.source).fetch(q, params)]


def _checksums(pair: Pair, shape: TableShape, seg: Segment) -> tuple[dict, dict]:
    def run(side: Side) -> dict[int, tuple[int, int]]:
        q, params = sqlgen.checksum_query(shape.ident, _cols(shape, side), shape.key, seg.lo, seg.hi, seg.bucketing)
        return {int(b): (int(c), int(s)) for b, c, s in side.fetch(q, params)}
    return pair.both(run)


def _totals(pair: Pair, shape: TableShape, seg: Segment) -> tuple[tuple[int, int], tuple[int, int]]:
    """One checksum of the whole segment per side (no grouping: the cheapest scan there is)."""
    def run(side: Side) -> tuple[int, int]:
        where, params = sqlgen.range_where(shape.key, seg.lo, seg.hi)
        q = sql.SQL("SELECT count(*), coalesce(sum({h}), 0) FROM {t} WHERE {w}").format(
            h=sqlgen.row_hash(_cols(shape, side)), t=shape.ident, w=where)
        c, s = side.one(q, params)
        return int(c), int(s)
    return pair.both(run)


def _bucket_range(seg: Segment, b: int) -> tuple[tuple | None, tuple | None]:
    if isinstance(seg.bucketing, Arithmetic):
        a = seg.bucketing
        lo, hi = a.origin + b * a.width, a.origin + (b + 1) * a.width
        # Clip to the segment's bounds (the first/last buckets of an open segment stay exact).
        if seg.lo is not None:
            lo = max(lo, seg.lo[0])
        if seg.hi is not None:
            hi = min(hi, seg.hi[0])
        return (lo,), (hi,)
    inner = seg.bucketing
    lo = seg.lo if b == 0 else inner[b - 1]
    hi = seg.hi if b == len(inner) else inner[b]
    return lo, hi


def _hashes(pair: Pair, shape: TableShape, lo: tuple | None, hi: tuple | None) -> tuple[dict, dict]:
    n = len(shape.key)

    def run(side: Side) -> dict[tuple, int]:
        q, params = sqlgen.hashes_query(shape.ident, _cols(shape, side), shape.key, lo, hi)
        return {tuple(r[:n]): r[n] for r in side.fetch(q, params, binary=True)}
    return pair.both(run)


def diff_segment(pair: Pair, shape: TableShape, seg: Segment, settings: DiffSettings, *,
                 top: bool = True) -> Candidates:
    """Checksum one segment on both sides and bisect the buckets that differ."""
    out = Candidates(segments=1)
    if top and settings.precheck:
        (sc, ss), (tc, ts) = _totals(pair, shape, seg)
        out.rows_source, out.rows_target = sc, tc
        if (sc, ss) == (tc, ts):
            return out
        top = False
    src, tgt = _checksums(pair, shape, seg)
    if top:
        out.rows_source = sum(c for c, _ in src.values())
        out.rows_target = sum(c for c, _ in tgt.values())
    for b in sorted(set(src) | set(tgt)):
        s, t = src.get(b, (0, 0)), tgt.get(b, (0, 0))
        if s == t:
            continue
        lo, hi = _bucket_range(seg, b)
        rows = max(s[0], t[0])
        sub = _split(pair, shape, seg, lo, hi, rows, settings) if rows > settings.fetch_threshold else None
        if sub is None:
            out.buckets_fetched += 1
            hs, ht = _hashes(pair, shape, lo, hi)
            for k, h in hs.items():
                other = ht.get(k)
                if other is None:
                    out.missing.add(k)
                elif other != h:
                    out.changed.add(k)
            out.extra.update(k for k in ht if k not in hs)
        else:
            out.merge(diff_segment(pair, shape, sub, settings, top=False))
    return out


def _split(pair: Pair, shape: TableShape, seg: Segment, lo: tuple | None, hi: tuple | None, rows: int,
           settings: DiffSettings) -> Segment | None:
    """A finer bucketing of the bucket ``[lo, hi)``, or None when it cannot be split further."""
    factor = settings.bisection_factor
    if isinstance(seg.bucketing, Arithmetic):
        width = seg.bucketing.width // factor
        if width < 1 or lo is None:
            return None
        return Segment(lo, hi, Arithmetic(lo[0], width), seg.depth + 1)
    # Boundaries from the side holding more rows in the range, so extra target rows split too.
    step = max(1, math.ceil(rows / factor))
    src_n = _count_side(pair.source, shape, lo, hi)
    side = pair.source if src_n >= rows else pair.target
    inner = _boundaries(pair, shape, lo, hi, step, factor, side=side)
    inner = [b for b in inner if b != lo]
    if not inner:
        return None
    return Segment(lo, hi, tuple(inner), seg.depth + 1)


def _count_side(side: Side, shape: TableShape, lo: tuple | None, hi: tuple | None) -> int:
    where, params = sqlgen.range_where(shape.key, lo, hi)
    row = side.one(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(shape.ident, where), params)
    return int(row[0]) if row else 0


def candidates(pair: Pair, shape: TableShape, settings: DiffSettings) -> Candidates:
    """Every key whose row hash differs between the sides (steps 1-3 of the module docstring)."""
    segments = plan_segments(pair, shape, settings)
    total = Candidates()
    if not segments:
        return total
    if settings.workers <= 1 or len(segments) == 1:
        for seg in segments:
            total.merge(diff_segment(pair, shape, seg, settings))
        return total
    with ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="diff-segment") as pool:
        for part in pool.map(lambda s: diff_segment(pair, shape, s, settings), segments):
            total.merge(part)
    return total


def fetch_rows(side: Side, shape: TableShape, keys: Sequence[tuple]) -> dict[tuple, tuple]:
    """Full rows (in the source's column order) for ``keys`` on one side, keyed by key tuple."""
    cols = [c for c in shape.source_columns]
    positions = [shape.names.index(k.name) for k in shape.key]
    out: dict[tuple, tuple] = {}
    for i in range(0, len(keys), FETCH_BATCH):
        batch = list(keys[i:i + FETCH_BATCH])
        q, params = sqlgen.rows_query(shape.ident, cols, shape.key, batch)
        for row in side.fetch(q, params):
            out[tuple(row[p] for p in positions)] = tuple(row)
    return out
