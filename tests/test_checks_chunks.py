"""The checks in key-range chunks ([checks] chunk_rows): the same verdicts as one whole-table batch, and no
statement reads a whole ledger table.

One seeded demo ledger (~5,000 entries) on the source and the DSQL stand-in, violations planted on chunk
edges (the last transaction, account and idempotency key of a range), then the suites run with
``chunk_rows = 1000`` and with one chunk per table, on both sides.
"""

from __future__ import annotations

import re
from decimal import Decimal

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from reconcile.checks import run_checks
from reconcile.checks.chunks import ROW_WISE, Chunking, chunked_count, plan_chunks
from reconcile.config import InvalidSetting, load_config
from tests.test_checks import _config, _db, _drop, _ledger_pair, _sql

SMALL, WHOLE = "1000", "50000000"


def _seeded(local_stack):
    from reconcile.backfill import run_backfill
    from reconcile.schema import apply_plan, plan_from_source
    from reconcile.workload import seed

    source, target = _db(local_stack["source"], "cc"), _db(local_stack["target"], "cct")
    with psycopg.connect(source, autocommit=True) as conn:
        seed(conn, accounts=40, transactions=2500)
        plan = plan_from_source(conn, tables=list(_config(source, target).tables), dialect="postgres")
    with psycopg.connect(target, autocommit=True) as conn:
        apply_plan(conn, plan, phase="pre-load")  # no foreign keys: violations can be planted on the target
    run_backfill(_config(source, target))
    return source, target


@pytest.fixture(scope="module")
def ledger(local_stack):
    source, target = _seeded(local_stack)
    for url in (source, target):
        with psycopg.connect(url, autocommit=True) as conn:
            txn_edge = plan_chunks(conn, "ledger.entries", Chunking("txn_id"), 1000).chunks[0].hi
            acc_edge = plan_chunks(conn, "ledger.accounts", Chunking("account_id", keys=("ledger.entries", "account_id"),
                                                                      inner="account_id"), 1000).chunks[0].hi
        _sql(url, "ALTER TABLE ledger.journal DROP CONSTRAINT IF EXISTS journal_idempotency_key_key",
             "DROP INDEX IF EXISTS ledger.journal_idempotency_key_key",
             "CREATE INDEX journal_idem_plain ON ledger.journal (idempotency_key)")
        with psycopg.connect(url, autocommit=True) as conn:
            key_edge = plan_chunks(conn, "ledger.journal", Chunking("idempotency_key"), 1000).chunks[0].hi
            entry = conn.execute("SELECT min(entry_id) FROM ledger.entries WHERE txn_id = %s", (txn_edge,)).fetchone()[0]
        _sql(url,
             # the last transaction of the first txn_id range no longer sums to zero (its account kept in step)
             f"UPDATE ledger.entries SET amount = amount + 0.01 WHERE entry_id = {entry}",
             "UPDATE ledger.accounts SET balance = balance + 0.01 WHERE account_id = "
             f"(SELECT account_id FROM ledger.entries WHERE entry_id = {entry})",
             # the last account of the first account range disagrees with its entries by a cent
             f"UPDATE ledger.accounts SET balance = balance + 0.01 WHERE account_id = {acc_edge}",
             # the last idempotency key of the first range is used twice
             "INSERT INTO ledger.journal (txn_id, idempotency_key, kind, posted_at) "
             f"VALUES (999999901, '{key_edge}', 'deposit', '2024-06-01 00:00:00+00')",
             replica=True)
    yield source, target
    _drop(local_stack["source"], source)
    _drop(local_stack["target"], target)


def _verdicts(result) -> dict[tuple[str, str, str], tuple]:
    out = {}
    for o in result.outcomes:
        observed = o.observed
        if isinstance(observed, dict):  # column expectations: counts, and the values found
            observed = (observed.get("unexpected_count"), observed.get("element_count"),
                        sorted(map(str, observed.get("partial_unexpected_list") or [])))
        out[(o.side, o.check.suite, o.check.name)] = (o.status, observed, o.exception)
    return out


class _Statements:
    """Every SQL statement SQLAlchemy (so GX) sends while active."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.seen.append(statement)

    def __enter__(self):
        event.listen(Engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(Engine, "before_cursor_execute", self)


# accounts (~50 rows) fits one chunk and is read whole, as before; journal and entries do not
_FROM = re.compile(r'FROM "ledger"\."(journal|entries)"(?: AS \w+)?(?P<next>.{0,12})', re.S)


def _unbounded(statements: list[str]) -> list[str]:
    """Statements reading a big ledger table without a WHERE right after it (a scan of the whole table)."""
    return [s for s in statements for m in _FROM.finditer(s)
            if not m["next"].startswith(" WHERE ") or m["next"].startswith(" WHERE TRUE")]


def test_chunked_checks_give_the_whole_table_verdicts_and_no_statement_reads_a_whole_table(ledger):
    source, target = ledger
    suites = ("ledger", "generated", "parity")
    with _Statements() as chunked_sql:
        chunked = run_checks(_config(source, target, chunk_rows=SMALL), suites=suites)
    with _Statements() as whole_sql:
        whole = run_checks(_config(source, target, chunk_rows=WHOLE), suites=suites)
    assert _verdicts(chunked) == _verdicts(whole)
    for side in ("source", "target"):
        failed = {o.check.name: o.observed for o in chunked.failed if o.side == side and o.check.suite == "ledger"}
        # the three planted violations, each on a chunk edge, found once (not split into false positives)
        assert set(failed) == {"entries_sum_to_zero", "balance_equals_sum_of_entries", "idempotency_key_unique"}, failed
        assert failed["entries_sum_to_zero"] == 1 and failed["balance_equals_sum_of_entries"] == 1
        assert failed["idempotency_key_unique"]["unexpected_count"] == 2
        split = {o.check.name: o.result["chunking"] for o in chunked.outcomes
                 if o.side == side and o.check.suite == "ledger" and o.not_applicable is None}
        assert split["entries_sum_to_zero"]["column"] == "txn_id" and split["entries_sum_to_zero"]["chunks"] >= 5
        assert split["balance_equals_sum_of_entries"]["chunks"] >= 5
        assert split["idempotency_key_unique"]["column"] == "idempotency_key"
        assert split["entries_have_account"]["column"] == "entry_id"
        sample = next(o for o in chunked.failed if o.side == side and o.check.name == "balance_equals_sum_of_entries")
        assert len(sample.result["sample_rows"]) == 1  # read from the failed chunk only
        assert Decimal(sample.result["sample_rows"][0]["balance"]) - Decimal(
            sample.result["sample_rows"][0]["sum_of_entries"]) == Decimal("0.01")
    parity = {o.check.name: o for o in chunked.outcomes if o.check.suite == "parity"}
    assert parity["row_count:ledger.entries"].success and parity["row_count:ledger.entries"].result["chunking"]["chunks"] > 1
    # bounded: chunked, every read of a ledger table is restricted to a key range; whole, some are not
    assert _unbounded(chunked_sql.seen) == []
    assert _unbounded(whole_sql.seen)
    assert len(chunked_sql.seen) > len(whole_sql.seen)


def test_chunk_ranges_cover_every_row_once_and_hold_at_most_chunk_rows(ledger):
    source, _ = ledger
    with psycopg.connect(source, autocommit=True) as conn:
        total = conn.execute("SELECT count(*) FROM ledger.entries").fetchone()[0]
        assert chunked_count(conn, "ledger.entries", 1000) == total > 4000
        for chunking in (Chunking("txn_id"), Chunking("account_id"), Chunking("entry_id")):
            plan = plan_chunks(conn, "ledger.entries", chunking, 1000)
            sizes = []
            for chunk in plan.chunks:
                sizes.append(conn.execute(f"SELECT count(*) FROM ({chunk.query.replace(chr(92), '')}) AS c").fetchone()[0])
            assert sum(sizes) == total and len(sizes) >= total // 1000
            # a range ends on a key, with all that key's rows: at most one key's rows over the size
            widest = conn.execute(f"SELECT max(n) FROM (SELECT count(*) AS n FROM ledger.entries "
                                  f"GROUP BY {chunking.column}) AS g").fetchone()[0]
            assert max(sizes) <= 1000 + widest - 1, (chunking.column, sizes)
        # no index starting with the column: the batch is not split, and the plan says why
        plan = plan_chunks(conn, "ledger.entries", Chunking("amount"), 1000)
        assert not plan.chunked and "no index" in plan.whole_reason
        assert plan_chunks(conn, "ledger.entries", ROW_WISE, 1000).column == "entry_id"  # row-wise: the primary key


@pytest.mark.parametrize("value", ["999", "50000001", "-1"])
def test_chunk_rows_is_bounded(value):
    with pytest.raises(InvalidSetting, match="chunk_rows"):
        load_config(None, environ={"RECONCILE__CHECKS__CHUNK_ROWS": value})
