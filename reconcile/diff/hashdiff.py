"""Entry-level diff of one table: segment checksums in both databases, bisection, row hashes.

The algorithm (after reladiff's ``HashDiffer``, with changes that make it much cheaper):

1. Split the key space into *segments* of about ``segment_rows`` rows. An integer key is split
   by arithmetic on its min/max and the planner's row estimate (no scan); any other key by every
   ``bucket_rows``-th source key in byte order (``COLLATE "C"``).
2. *Precheck* (``precheck``): the first segment alone (the *probe*), then the others in blocks of
   about ``precheck_rows`` rows; one query per side returns a block's count and sum of row
   hashes, with no ``GROUP BY`` (the plain checksum scan, which the server may run with parallel
   workers). Equal blocks are done: that is the whole cost when the tables match. The probe runs
   first, and once a block differs the blocks not started yet skip the precheck: differences are
   rarely alone, and scanning a differing block twice (plain, then bucketed) costs about 2.2
   plain scans where the bucket query alone costs about 1.2. ``precheck = false`` always goes
   straight to the bucket queries.
3. Each segment of a differing block: one query per side returns a checksum (row count, sum of
   60-bit row hashes) for every *bucket* of about ``bucket_rows`` rows (``GROUP BY`` the bucket
   number). One scan localises every difference to a small bucket: reladiff spends one query
   per segment per level. Both sides run at once, and ``workers`` segments at a time.
4. The differing buckets of a segment holding at most ``fetch_threshold`` rows per side come
   back in one more query per side as (key, row hash) pairs (``bucket IN (...)``: only their
   rows are hashed); a larger one is split into ``bisection_factor`` sub-buckets and diffed again.
5. Keys whose hashes differ are the *candidates*; their full rows are fetched from both sides and
   compared exactly in Python (:func:`reconcile.diff.compare.compare_rows`).

So two identical tables cost one checksum scan per side, and scattered differences the probe plus
one bucketed scan per side (about 1.4 plain scans) plus the rows of the differing buckets, in two
round trips per segment and side.
Segments are immutable half-open ``[lo, hi)`` key ranges; ``None`` is an open end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from reconcile.db.names import split_name
from reconcile.diff import sqlgen
from reconcile.diff.settings import DiffSettings
from reconcile.diff.side import Pair, Side
from reconcile.diff.sqlgen import Arithmetic, Column

FETCH_BATCH = 500
"""Keys per ``IN (...)`` list when full rows are fetched."""
KEY_BATCH = 5000
"""Keys of a single-column key per ``= ANY(array)`` when (key, row hash) pairs are fetched by key."""


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


def shape_of(pair: Pair, spec: Any) -> TableShape:
    """The table as its column contract describes it (:func:`reconcile.schema.contract.load_contract`).

    Both sides hash and fetch the columns they share; the source side of a converted column goes
    through its read expression, and both sides are normalised by the target type's kind.

    Raises:
        DiffError: a table or key column is missing on a side, the stored column plan no longer
            describes the tables, or a key column's conversion is refused.
    """
    from reconcile.diff.errors import DiffError
    from reconcile.schema.contract import ContractError, load_contract

    try:
        contract = load_contract(pair.source.conn(), pair.target.conn(), spec)
    except ContractError as exc:
        raise DiffError(str(exc)) from exc
    by_name = {c.name: c for c in contract.columns}
    missing_key = [k for k in spec.key if k not in by_name]
    if missing_key:
        raise DiffError(f"key column(s) {missing_key} of {spec.name} are missing on one side; fix the key in [[tables]]")
    refused = [f"{spec.name}.{k}: {by_name[k].refused}" for k in spec.key if by_name[k].refused]
    if refused:
        raise DiffError(f"The column plan refuses {'; '.join(refused)}, so the two sides' keys cannot be compared; "
                        "configure another key or change the column on the source.")
    src = tuple(Column(c.name, sqlgen.kind_of(c.target_type), c.source_type, conversion=c.conversion)
                for c in contract.columns)
    tgt = tuple(Column(c.name, sqlgen.kind_of(c.target_type), c.target_type) for c in contract.columns)
    key = tuple(Column(k, sqlgen.kind_of(by_name[k].target_type), by_name[k].target_type) for k in spec.key)
    return TableShape(spec.name, sql.Identifier(spec.schema, spec.table), key, src, tgt,
                      contract.missing_on_target, contract.only_target)


def _cols(shape: TableShape, side: Side) -> list[Column]:
    """The side's columns in the hash layout both sides share (:func:`reconcile.diff.sqlgen.hash_layout`)."""
    src, tgt = sqlgen.hash_layout(shape.source_columns, shape.target_columns)
    return src if side.name == "source" else tgt


def plan_segments(pair: Pair, shape: TableShape, settings: DiffSettings, lo_key: tuple | None = None,
                  hi_key: tuple | None = None) -> list[Segment]:
    """The top-level segments of the table, or of its keys in ``[lo_key, hi_key)`` (see step 1 of the
    module docstring); the first and last segments are open-ended where the range is."""
    per_segment = max(1, settings.segment_rows // settings.bucket_rows)
    ranged = lo_key is not None or hi_key is not None
    if shape.integer_key:
        (kc,) = shape.key
        q = sqlgen.min_max_query(shape.ident, kc)
        if ranged:
            where, params = sqlgen.range_where(shape.key, lo_key, hi_key)
            rq = sql.SQL("{} WHERE {}").format(q, where)
            (smin, smax), (tmin, tmax) = pair.both(lambda s: s.one(rq, params))
        else:
            (smin, smax), (tmin, tmax) = pair.both(lambda s: s.one(q))
        lows = [v for v in (smin, tmin) if v is not None]
        highs = [v for v in (smax, tmax) if v is not None]
        if not lows:
            return []
        lo, hi = min(lows), max(highs) + 1
        span = hi - lo
        schema, table = split_name(shape.name)
        est = pair.source.estimate_rows(schema, table) or 0.0
        if ranged:  # the density of the whole table (its min and max are two index probes)
            whole = [v for v in pair.source.one(q) or () if v is not None]
            full_span = (whole[1] - whole[0] + 1) if len(whole) == 2 else span
            density = min(1.0, max(est, 1.0) / max(1, full_span)) if est > 0 else 1.0
            est = density * span
        else:
            density = min(1.0, max(est, 1.0) / span) if est > 0 else 1.0
        width = max(1, int(settings.bucket_rows / density))
        # As many segments as the rows need, the buckets spread evenly over them (no sliver at the end).
        buckets = math.ceil(span / width)
        rows = est if est > 0 else span
        count = max(1, math.ceil(rows / settings.segment_rows))
        seg_width = width * math.ceil(buckets / count)
        count = max(1, math.ceil(span / seg_width))
        segments = []
        for i in range(count):
            s_lo = lo + i * seg_width
            s_hi = min(hi, s_lo + seg_width)
            # The outer segments are open-ended: rows written beyond min/max meanwhile still land somewhere.
            segments.append(Segment(lo_key if i == 0 else (s_lo,), hi_key if i == count - 1 else (s_hi,),
                                    Arithmetic(lo if i == 0 else s_lo, width)))
        return segments
    # n boundaries make n + 1 buckets; segment j holds buckets j*m .. (j+1)*m - 1.
    bounds = _boundaries(pair, shape, lo_key, hi_key, settings.bucket_rows, 10_000_000)
    n, m = len(bounds), per_segment
    segments = []
    for j in range(math.ceil((n + 1) / m)):
        lo = lo_key if j == 0 else bounds[j * m - 1]
        hi = bounds[(j + 1) * m - 1] if (j + 1) * m - 1 < n else hi_key
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


def _totals(pair: Pair, shape: TableShape, lo: tuple | None,
            hi: tuple | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """One checksum of ``[lo, hi)`` per side (no grouping: the cheapest scan there is)."""
    def run(side: Side) -> tuple[int, int]:
        where, params = sqlgen.range_where(shape.key, lo, hi)
        q = sql.SQL("SELECT count(*), coalesce(sum({h}), 0) FROM {t} WHERE {w}").format(
            h=sqlgen.row_hash(_cols(shape, side)), t=shape.ident, w=where)
        c, s = side.one(q, params)
        return int(c), int(s)
    return pair.both(run)


def _bucket_range(seg: Segment, b: int) -> tuple[tuple | None, tuple | None]:
    """The keys of bucket ``b`` of ``seg`` as a half-open range (exact, clipped to the segment)."""
    if isinstance(seg.bucketing, Arithmetic):
        a = seg.bucketing
        # SQL integer division truncates towards zero: bucket 0 also holds keys just below the
        # origin, a negative bucket b the keys in (origin + (b - 1) * width, origin + b * width].
        if b > 0:
            lo, hi = a.origin + b * a.width, a.origin + (b + 1) * a.width
        elif b == 0:
            lo, hi = a.origin - a.width + 1, a.origin + a.width
        else:
            lo, hi = a.origin + (b - 1) * a.width + 1, a.origin + b * a.width + 1
        if seg.lo is not None:
            lo = max(lo, seg.lo[0])
        if seg.hi is not None:
            hi = min(hi, seg.hi[0])
        return (lo,), (hi,)
    inner = seg.bucketing
    lo = seg.lo if b == 0 else inner[b - 1]
    hi = seg.hi if b == len(inner) else inner[b]
    return lo, hi


def _hashes(pair: Pair, shape: TableShape, seg: Segment, buckets: Sequence[int]) -> tuple[dict, dict]:
    """(key, row hash) of every row in ``buckets`` of ``seg``, one query per side for all of them."""
    n = len(shape.key)

    def run(side: Side) -> dict[tuple, int]:
        q, params = sqlgen.hashes_query(shape.ident, _cols(shape, side), shape.key, seg.lo, seg.hi,
                                        seg.bucketing, buckets)
        return {tuple(r[:n]): r[n] for r in side.fetch(q, params, binary=True)}
    return pair.both(run)


def diff_segment(pair: Pair, shape: TableShape, seg: Segment, settings: DiffSettings, *,
                 top: bool = True) -> Candidates:
    """Checksum one segment's buckets on both sides and bisect the buckets that differ.

    Per side: one ``GROUP BY`` bucket query, and one query returning the (key, row hash) pairs
    of every differing bucket small enough to fetch; a larger differing bucket is split and
    diffed again (``top=False``: its rows are already counted).
    """
    out = Candidates(segments=1 if top else 0)
    src, tgt = _checksums(pair, shape, seg)
    if top:
        out.rows_source = sum(c for c, _ in src.values())
        out.rows_target = sum(c for c, _ in tgt.values())
    fetch: list[int] = []
    for b in sorted(set(src) | set(tgt)):
        s, t = src.get(b, (0, 0)), tgt.get(b, (0, 0))
        if s == t:
            continue
        rows = max(s[0], t[0])
        sub = None
        if rows > settings.fetch_threshold:
            lo, hi = _bucket_range(seg, b)
            sub = _split(pair, shape, seg, lo, hi, rows, settings)
        if sub is None:
            fetch.append(b)
        else:
            out.merge(diff_segment(pair, shape, sub, settings, top=False))
    if fetch:
        out.buckets_fetched += len(fetch)
        hs, ht = _hashes(pair, shape, seg, fetch)
        for k, h in hs.items():
            other = ht.get(k)
            if other is None:
                out.missing.add(k)
            elif other != h:
                out.changed.add(k)
        out.extra.update(k for k in ht if k not in hs)
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


def _blocks(segments: list[Segment], settings: DiffSettings) -> list[list[Segment]]:
    """Precheck blocks: the first segment alone (the probe), then ``precheck_rows`` rows at a time."""
    per_block = max(1, settings.precheck_rows // settings.segment_rows)
    rest = segments[1:]
    return [segments[:1]] + [rest[i:i + per_block] for i in range(0, len(rest), per_block)]


def candidates(pair: Pair, shape: TableShape, settings: DiffSettings, lo: tuple | None = None,
               hi: tuple | None = None) -> Candidates:
    """Every key whose row hash differs between the sides (steps 1-4 of the module docstring), in the
    whole table or in the keys ``[lo, hi)``."""
    segments = plan_segments(pair, shape, settings, lo, hi)
    total = Candidates()
    if not segments:
        return total
    precheck = [settings.precheck]   # shared by the workers: off once a block differs

    def check(block: list[Segment]) -> tuple[list[Segment], Candidates | None]:
        if not precheck[0]:
            return block, None
        (sc, ss), (tc, ts) = _totals(pair, shape, block[0].lo, block[-1].hi)
        if (sc, ss) == (tc, ts):
            return [], Candidates(rows_source=sc, rows_target=tc, segments=len(block))
        precheck[0] = False
        return block, None

    def run(fn: Any, items: list) -> list:
        if settings.workers <= 1 or len(items) <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="diff-segment") as pool:
            return list(pool.map(fn, items))

    blocks = _blocks(segments, settings)
    todo: list[Segment] = []
    # The probe runs alone, first: when it differs, differences are likely everywhere and the other
    # blocks go straight to the bucket queries instead of being scanned twice.
    for differing, done in [check(blocks[0])] + run(check, blocks[1:]):
        todo.extend(differing)
        if done is not None:
            total.merge(done)
    for part in run(lambda seg: diff_segment(pair, shape, seg, settings), todo):
        total.merge(part)
    return total


def key_candidates(pair: Pair, shape: TableShape, keys: Sequence[tuple]) -> Candidates:
    """The keys (text forms or values) whose row hashes differ: (key, row hash) fetched by key on both sides,
    ``FETCH_BATCH`` keys per query; ``rows_source``/``rows_target`` count the rows read."""
    out = Candidates()
    n = len(shape.key)
    step = KEY_BATCH if n == 1 else FETCH_BATCH
    for i in range(0, len(keys), step):
        batch = list(keys[i:i + step])

        def run(side: Side) -> dict[tuple, int]:
            q, params = sqlgen.hashes_by_key_query(shape.ident, _cols(shape, side), shape.key, batch)
            return {tuple(r[:n]): r[n] for r in side.fetch(q, params, binary=True)}
        hs, ht = pair.both(run)
        out.rows_source += len(hs)
        out.rows_target += len(ht)
        for k, h in hs.items():
            other = ht.get(k)
            if other is None:
                out.missing.add(k)
            elif other != h:
                out.changed.add(k)
        out.extra.update(k for k in ht if k not in hs)
    return out


def range_candidates(pair: Pair, shape: TableShape, lo: tuple | None, hi: tuple | None) -> Candidates:
    """The keys of ``[lo, hi)`` whose row hashes differ, from every (key, row hash) of the range on both sides
    (one query per side: for ranges small enough to fetch whole)."""
    out = Candidates()
    n = len(shape.key)

    def run(side: Side) -> dict[tuple, int]:
        q, params = sqlgen.hashes_query(shape.ident, _cols(shape, side), shape.key, lo, hi)
        return {tuple(r[:n]): r[n] for r in side.fetch(q, params, binary=True)}
    hs, ht = pair.both(run)
    out.rows_source, out.rows_target = len(hs), len(ht)
    for k, h in hs.items():
        other = ht.get(k)
        if other is None:
            out.missing.add(k)
        elif other != h:
            out.changed.add(k)
    out.extra.update(k for k in ht if k not in hs)
    return out


def fetch_rows(side: Side, shape: TableShape, keys: Sequence[tuple]) -> dict[tuple, tuple]:
    """Full rows (in the source's column order) for ``keys`` on one side, keyed by key tuple.

    The source reads converted columns through their read expressions, so both sides return values of
    the target's types (a ``text[]`` as the json list the target holds).
    """
    cols = list(shape.source_columns if side.name == "source" else shape.target_columns)
    positions = [shape.names.index(k.name) for k in shape.key]
    out: dict[tuple, tuple] = {}
    for i in range(0, len(keys), FETCH_BATCH):
        batch = list(keys[i:i + FETCH_BATCH])
        q, params = sqlgen.rows_query(shape.ident, cols, shape.key, batch)
        for row in side.fetch(q, params):
            out[tuple(row[p] for p in positions)] = tuple(row)
    return out
