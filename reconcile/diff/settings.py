"""The [diff] section of reconcile.toml (also `RECONCILE__DIFF__<KEY>`).

Keys, their types and the ranges of numbers come from the fields below (:mod:`reconcile.settings_schema`);
`__post_init__` checks what relates fields and raises :class:`reconcile.config.InvalidSetting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from reconcile.config import InvalidSetting
from reconcile.settings_schema import Bounds, check_fields

_S = "diff"


@dataclass(frozen=True)
class DiffSettings:
    """Settings of the diff stage (entry-level diffs, balance diffs, reports)."""

    segment_rows: Annotated[int, Bounds(ge=100, le=100_000_000)] = 200_000
    """Rows one bucketed checksum query covers (about; keeps each query far under DSQL's 128 MiB and 5 min:
    its aggregate state is two numbers per bucket)."""
    bucket_rows: Annotated[int, Bounds(ge=10, le=1_000_000)] = 128
    """Rows per checksum bucket inside a segment: a differing bucket is fetched as (key, row hash) pairs,
    so small buckets keep scattered differences cheap (the bucket query returns segment_rows / bucket_rows rows)."""
    bisection_factor: Annotated[int, Bounds(ge=2, le=1024)] = 16
    """Sub-buckets a mismatching bucket is split into when it is too large to fetch."""
    fetch_threshold: Annotated[int, Bounds(ge=10, le=1_000_000)] = 5_000
    """A mismatching bucket with at most this many rows per side is fetched as (key, row hash) pairs."""
    precheck: bool = True
    """Checksum the first segment (the probe), then blocks of precheck_rows rows, as a whole first (one plain
    count + sum per side, no GROUP BY) and bucket only what differs: the fastest when tables mostly match.
    Once the probe or a block differs, the blocks not started yet go straight to the bucket queries."""
    precheck_rows: Annotated[int, Bounds(ge=100, le=1_000_000_000)] = 1_000_000
    """Rows per precheck block (about; whole segments). A plain aggregate needs no memory, so this only
    bounds the query's duration (DSQL: 5 minutes per transaction)."""
    workers: Annotated[int, Bounds(ge=1, le=64)] = 2
    """Segments checksummed at once (each worker has one source and one target connection)."""
    lag_wait_seconds: Annotated[float, Bounds(ge=0, le=86_400)] = 60.0
    """How long a diff run waits in all for a replay watermark that does not advance: once per run, not per table
    (after one wait timed out, later tables are compared statically unless the watermark moved)."""
    recheck_rounds: Annotated[int, Bounds(ge=1, le=100)] = 3
    """Re-checks of a candidate mismatch (each after the watermark passes a fresh source LSN)."""
    poll_seconds: Annotated[float, Bounds(gt=0, le=60)] = 0.5
    """How often the watermark is polled while waiting."""
    max_findings: Annotated[int, Bounds(ge=1, le=10_000_000)] = 10_000
    """Findings stored per table (counts stay exact beyond it)."""
    balances: bool = True
    """Run the balance diff (needs tables with the accounts and entries roles)."""
    balance_sql: str | None = None
    """Per-side balance rule: SQL returning (account, currency, stored, computed) for every account;
    ``{accounts}`` and ``{entries}`` are replaced by the quoted table names. None = the double-entry
    default (stored balance vs sum of the account's entries)."""
    balance_chunk_rows: Annotated[int, Bounds(ge=1, le=100_000_000)] = 200_000
    """Entries one per-account or per-transaction balance query covers (about): the balance diff reads
    those GROUP BYs in key ranges of this size inside its one snapshot (DSQL: 128 MiB per query).
    A ``balance_sql`` rule cannot be split and runs whole."""
    date_column: str | None = None
    """Timestamp (or date) column of the entries table that daily totals group by; unset (or ""): the
    daily totals are reported not applicable."""
    currency: str | None = None
    """Currency code the reports show for a single-currency ledger (tables with ``currency_column = ""``),
    e.g. "EUR"; unset: shown as none."""
    mode: str = "full"
    """``full``: every run reads every row on both sides. ``incremental``: a run verifies the keys the replay
    applied since the table was last verified plus one slice of a rolling sweep, so every row is verified at
    least once every ``sweep_runs`` runs (``reconcile diff --full`` still reads everything on demand)."""
    sweep_runs: Annotated[int, Bounds(ge=1, le=1000, fix="use e.g. 24 (every row verified once a day under hourly runs)")] = 24
    """N: incremental runs in which the rolling sweep verifies each table's whole key space (24: a daily
    full pass under hourly runs)."""
    report_dir: str = "reports/diff"
    """Folder under which each run writes its report folder (``<report_dir>/<run_id>/``); a relative
    folder is relative to the config file's folder (without a file, to the working directory)."""
    s3_uri: str | None = None
    """When set (``s3://bucket/prefix``), each report folder is also uploaded there."""

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("report_dir",)
    """Folders the config loader resolves against the config file's folder."""

    def __post_init__(self) -> None:
        check_fields(self, _S)
        if self.mode not in ("full", "incremental"):
            raise InvalidSetting(_S, "mode", f"must be full or incremental, got {self.mode!r}",
                                 'use "full" (read every row each run) or "incremental" (changed keys + sweep)')
        if self.bucket_rows > self.segment_rows:
            raise InvalidSetting(_S, "bucket_rows", f"({self.bucket_rows}) exceeds segment_rows ({self.segment_rows})",
                                 "lower bucket_rows or raise segment_rows")
        if self.balance_sql is not None and ("{accounts}" not in self.balance_sql
                                             and "{entries}" not in self.balance_sql):
            raise InvalidSetting(_S, "balance_sql", "names neither {accounts} nor {entries}",
                                 "write the rule against {accounts} and {entries}, or remove it for the default")
        if self.date_column is not None:
            if not isinstance(self.date_column, str) or self.date_column != self.date_column.strip():
                raise InvalidSetting(_S, "date_column", f"must be a column name, got {self.date_column!r}",
                                     'name the entries\' timestamp column, e.g. date_column = "posted_at", or remove it')
            if not self.date_column:
                object.__setattr__(self, "date_column", None)
        if self.currency is not None and (not isinstance(self.currency, str) or not self.currency.strip()
                                          or len(self.currency) > 16 or self.currency != self.currency.strip()):
            raise InvalidSetting(_S, "currency", f"must be a currency code, got {self.currency!r}",
                                 'write the code, e.g. currency = "EUR", or remove it')
        if not isinstance(self.report_dir, str) or not self.report_dir.strip():
            raise InvalidSetting(_S, "report_dir", "is empty", 'give a folder, e.g. report_dir = "reports/diff"')
        if self.s3_uri is not None and (not isinstance(self.s3_uri, str) or not self.s3_uri.startswith("s3://")
                                        or len(self.s3_uri) <= 5):
            raise InvalidSetting(_S, "s3_uri", f"must look like s3://bucket/prefix, got {self.s3_uri!r}",
                                 "fix the URI or remove s3_uri")
