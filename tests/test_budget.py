"""The transaction budget: pure packing logic, and batch sizes that really fit the stand-in's limits."""

from __future__ import annotations

import math
import pickle

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconcile.budget import Batch, Batcher, Budget, TableCost, split_table_name, table_cost
from reconcile.errors import LimitExceeded, TerminalError
from reconcile.local import guards


def _cost(**kw) -> TableCost:
    base = dict(table="s.t", secondary_indexes=0, avg_row_bytes=100, max_row_bytes=100, index_key_bytes=0)
    return TableCost(**(base | kw))


# --- pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0, -0.1, 1.01, 2])
def test_fraction_is_validated(fraction):
    with pytest.raises(ValueError, match="fraction"):
        Budget(fraction=fraction)


def test_caps_are_the_fraction_of_both_limits():
    b = Budget(fraction=0.5)
    assert (b.row_cap, b.byte_cap) == (1500, 5 * 1024 * 1024)
    assert Budget(fraction=1).row_cap == 3000


def test_rows_per_batch_takes_the_tighter_limit():
    b = Budget(fraction=0.5)
    assert b.rows_per_batch(_cost(max_row_bytes=100)) == 1500                 # row-bound
    assert b.rows_per_batch(_cost(max_row_bytes=10_000)) == 524               # byte-bound
    assert b.rows_per_batch(_cost(max_row_bytes=100, index_key_bytes=4900)) == 1048  # index keys add bytes


def test_index_tuples_count_only_when_configured():
    cost = _cost(secondary_indexes=2)
    assert Budget(fraction=1).rows_per_batch(cost) == 3000
    assert Budget(fraction=1, count_index_tuples=True).rows_per_batch(cost) == 1000
    assert Budget(count_index_tuples=True).dsql_rows(cost, 10) == 30


def test_oversized_row_goes_alone_and_too_big_row_is_refused():
    b = Budget(fraction=0.5)
    assert b.rows_per_batch(_cost(max_row_bytes=6 * 1024 * 1024)) == 1
    with pytest.raises(LimitExceeded, match="split the work into smaller transactions"):
        b.rows_per_batch(_cost(max_row_bytes=11 * 1024 * 1024))


def test_batcher_keeps_an_item_bigger_than_the_fraction_alone():
    b = Budget(max_rows=100, max_bytes=1000, fraction=0.5)
    out = list(b.batches([("a", 10, 10), ("big", 80, 10), ("c", 10, 10)], size=lambda x: (x[1], x[2])))
    assert [[i[0] for i in batch] for batch in out] == [["a"], ["big"], ["c"]]
    assert out[1].rows == 80


def test_batcher_refuses_an_item_over_the_hard_limit_with_a_sentence():
    batcher = Batcher(Budget(max_rows=100, max_bytes=1000), what="source transaction")
    batcher.add("ok", 1, 1)
    with pytest.raises(LimitExceeded) as info:
        batcher.add("huge", 101, 1, label="source transaction 42")
    msg = str(info.value)
    assert msg.startswith("One source transaction 42 modifies 101 rows")
    assert "cannot be written atomically" in msg and msg.endswith(".")
    assert batcher.flush().items == ("ok",)  # what was already packed is intact
    # picklable (errors cross process boundaries)
    assert str(pickle.loads(pickle.dumps(info.value))) == msg


def test_batcher_fits_and_rejects_negative_costs():
    batcher = Batcher(Budget(max_rows=10, max_bytes=100, fraction=1))
    batcher.add("a", 6, 50)
    assert batcher.fits(4, 50) and not batcher.fits(5, 0) and not batcher.fits(0, 51)
    with pytest.raises(ValueError):
        batcher.add("b", -1, 0)
    assert Batcher(Budget()).flush() is None


def test_split_table_name():
    assert split_table_name("ledger.entries") == ("ledger", "entries")
    assert split_table_name("entries") == ("public", "entries")


def test_row_bytes_sql_matches_the_guard_measure():
    cost = _cost(index_columns=(("a",), ("b", "c")), expression_columns=1)
    assert cost.row_bytes_sql("r").as_string() == (
        'octet_length("r"::text) + octet_length(ROW("r"."a")::text) '
        '+ octet_length(ROW("r"."b", "r"."c")::text) + 64'
    )


items_strategy = st.lists(
    st.tuples(st.integers(0, 1200), st.integers(0, 6000)), max_size=200
)


@settings(max_examples=300, deadline=None)
@given(items=items_strategy, fraction=st.sampled_from([0.1, 0.25, 0.5, 0.9, 1.0]))
def test_property_batches_fit_preserve_order_and_lose_nothing(items, fraction):
    budget = Budget(max_rows=1000, max_bytes=5000, fraction=fraction)
    labelled = list(enumerate(items))
    if any(not budget.within_limit(r, b) for r, b in items):
        with pytest.raises(LimitExceeded):
            list(budget.batches(labelled, size=lambda x: x[1]))
        return
    out: list[Batch] = list(budget.batches(labelled, size=lambda x: x[1]))
    # nothing lost, nothing duplicated, order preserved
    assert [i for batch in out for i, _ in batch] == list(range(len(items)))
    for batch in out:
        assert len(batch) >= 1
        assert batch.rows == sum(r for _, (r, _) in batch.items)
        assert batch.bytes == sum(b for _, (_, b) in batch.items)
        # within the fraction, unless it is a single item (an oversized item travels alone)
        assert budget.fits(batch.rows, batch.bytes) or len(batch) == 1
        assert budget.within_limit(batch.rows, batch.bytes)
    # greedy: no two neighbouring batches could have been one
    for a, b in zip(out, out[1:]):
        assert not budget.fits(a.rows + b.items[0][1][0], a.bytes + b.items[0][1][1])


# --- on the DSQL stand-in --------------------------------------------------------------------

WIDTH = 5000  # payload characters: ~5 KiB rows make the 10 MiB limit bind before 3,000 rows


def _insert(conn: psycopg.Connection, lo: int, hi: int, width: int) -> None:
    conn.execute(
        "INSERT INTO ledger.entries (id, account, currency, amount, memo) "
        "SELECT g, 'acct-' || lpad((g %% 1000)::text, 6, '0'), 'EUR', 12345.67, repeat('m', %s) "
        "FROM generate_series(%s::bigint, %s::bigint) AS g",
        (width, lo, hi - 1),
    )


def _try(url: str, lo: int, n: int, width: int) -> str | None:
    """Insert n rows [lo, lo+n) in one transaction, roll back; the SQLSTATE that failed it, or None."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            with conn.transaction(force_rollback=True):
                _insert(conn, lo, lo + n, width)
        except psycopg.Error as exc:
            return exc.sqlstate
    return None


@pytest.mark.parametrize(
    "width, count_index_tuples",
    [(WIDTH, False), (10, True)],
    ids=["byte-bound", "row-bound-with-index-tuples"],
)
def test_budget_batch_commits_and_1_01x_the_hard_limit_fails(target_db, width, count_index_tuples):
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA ledger")
        conn.execute("CREATE TABLE ledger.entries (id bigint PRIMARY KEY, account text NOT NULL, "
                     "currency text NOT NULL, amount numeric(18,2) NOT NULL, memo text)")
        conn.execute("CREATE INDEX entries_account ON ledger.entries (account)")
        conn.execute("CREATE INDEX entries_account_currency ON ledger.entries (account, currency)")
        with conn.transaction():
            _insert(conn, 100_000, 100_200, width)  # a sample to measure (ids as wide as below)
        cost = table_cost(conn, "ledger.entries")
    if count_index_tuples:
        guards.configure(target_db, count_index_tuples=True)

    assert cost.secondary_indexes == 2 and cost.sampled_rows == 200 and cost.source == "sample"
    assert cost.index_columns == (("account",), ("account", "currency"))
    assert cost.max_row_bytes >= cost.avg_row_bytes > width

    budget = Budget(count_index_tuples=count_index_tuples)        # fraction 0.5
    n = budget.rows_per_batch(cost)
    assert _try(target_db, 200_000, n, width) is None               # a budgeted batch commits

    hard = Budget(fraction=1.0, count_index_tuples=count_index_tuples).rows_per_batch(cost)
    if count_index_tuples:
        assert hard == 1000                                        # 3,000 / (1 + 2 indexes)
    else:
        assert hard < 3000                                         # the 10 MiB limit binds first
    over = math.ceil(hard * 1.01)
    assert _try(target_db, 200_000, over, width) == "54000"          # 1.01x the hard limit fails
    assert _try(target_db, 200_000, hard, width) is None             # and the limit itself does not


def test_table_cost_estimates_an_empty_table_and_reads_rows_elsewhere(target_db, source_db):
    with psycopg.connect(target_db, autocommit=True) as t, psycopg.connect(source_db, autocommit=True) as s:
        t.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, name varchar(40), opened timestamptz)")
        t.execute("CREATE INDEX accounts_name ON accounts (name)")
        empty = table_cost(t, "public.accounts")
        assert empty.source == "types" and empty.sampled_rows == 0
        assert empty.max_row_bytes >= 20 + 160 + 35          # int8 + varchar(40) x 4 bytes + timestamptz
        assert empty.index_key_bytes > 0

        s.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, name varchar(40), opened timestamptz)")
        s.execute("INSERT INTO accounts SELECT g, 'name ' || g, now() FROM generate_series(1, 50) g")
        sampled = table_cost(t, "public.accounts", rows_conn=s)
        assert sampled.source == "sample" and sampled.sampled_rows == 50
        assert sampled.index_columns == (("name",),)
        assert sampled.bytes_per_row < empty.bytes_per_row  # the estimate errs on the safe side

        with pytest.raises(TerminalError, match="does not exist"):
            table_cost(t, "public.nope")
