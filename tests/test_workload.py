"""The demo ledger: a deterministic seed and a live workload that keep every ledger invariant."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from reconcile.cli import workload_cmd
from reconcile.errors import ReconcileError, TerminalError
from reconcile.workload import SchemaExists, run_workload, seed
from reconcile.workload.seed import generate
from tests.waiting import wait_for

SMALL = {"accounts": 300, "transactions": 2_000}
TABLES = {"accounts": "account_id", "journal": "txn_id", "entries": "entry_id"}


def _conn(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


@pytest.fixture
def other_source_db(local_stack) -> str:
    """A second fresh database on the source server, for side-by-side seeds."""
    name = f"s_{uuid.uuid4().hex[:10]}"
    with _conn(local_stack["source"]) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template1").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(local_stack["source"], dbname=name)
    finally:
        with _conn(local_stack["source"]) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def table_digests(url: str) -> dict[str, str]:
    """md5 of each ledger table's rows in key order, plus the two sequences' positions."""
    out = {}
    with _conn(url) as conn:
        for table, key in TABLES.items():
            out[table] = conn.execute(sql.SQL(
                "SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t.{}), '')) FROM {} t"
            ).format(sql.Identifier(key), sql.Identifier("ledger", table))).fetchone()[0]
        out["sequences"] = conn.execute(
            "SELECT (SELECT last_value FROM ledger.journal_txn_id_seq),"
            "       (SELECT last_value FROM ledger.entry_id_seq)").fetchone()
    return out


INVARIANTS = {
    "txn not zero-sum per currency":
        "SELECT txn_id FROM ledger.entries GROUP BY txn_id, currency HAVING sum(amount) <> 0",
    "txn without exactly two entries":
        "SELECT j.txn_id FROM ledger.journal j LEFT JOIN ledger.entries e USING (txn_id)"
        " GROUP BY j.txn_id HAVING count(e.entry_id) <> 2",
    "txn in more than one currency":
        "SELECT txn_id FROM ledger.entries GROUP BY txn_id HAVING count(DISTINCT currency) <> 1",
    "balance differs from sum(entries)":
        "SELECT a.account_id FROM ledger.accounts a LEFT JOIN"
        " (SELECT account_id, sum(amount) AS s FROM ledger.entries GROUP BY account_id) e"
        " USING (account_id) WHERE a.balance <> coalesce(e.s, 0)",
    "negative balance outside equity":
        "SELECT account_id FROM ledger.accounts WHERE balance < 0 AND kind <> 'equity'",
    "negative customer balance":
        "SELECT account_id FROM ledger.accounts WHERE balance < 0 AND kind = 'customer'",
    "entry currency differs from its account's":
        "SELECT e.entry_id FROM ledger.entries e JOIN ledger.accounts a USING (account_id)"
        " WHERE e.currency <> a.currency",
    "duplicate idempotency key":
        "SELECT idempotency_key FROM ledger.journal GROUP BY 1 HAVING count(*) > 1",
    "transfer reversed more than once":
        "SELECT reverses_txn_id FROM ledger.journal WHERE kind = 'reversal'"
        " GROUP BY 1 HAVING count(*) > 1",
    "reversal that does not negate a transfer":
        "SELECT r.txn_id FROM ledger.journal r"
        " JOIN ledger.journal o ON o.txn_id = r.reverses_txn_id"
        " WHERE r.kind = 'reversal' AND (o.kind <> 'transfer' OR EXISTS ("
        "   (SELECT account_id, -amount FROM ledger.entries WHERE txn_id = o.txn_id)"
        "   EXCEPT ALL (SELECT account_id, amount FROM ledger.entries WHERE txn_id = r.txn_id)))",
    "updated_at is not the last posting":
        "SELECT a.account_id FROM ledger.accounts a"
        " JOIN (SELECT account_id, max(posted_at) AS m FROM ledger.entries GROUP BY account_id) e"
        " USING (account_id) WHERE a.updated_at <> e.m",
}


def assert_invariants(url: str) -> None:
    with _conn(url) as conn:
        broken = {name: rows for name, q in INVARIANTS.items()
                  if (rows := conn.execute(q).fetchmany(5))}
    assert broken == {}


def _count(url: str, table: str) -> int:
    with _conn(url) as conn:
        return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier("ledger", table))).fetchone()[0]


# --- pure generation, no database --------------------------------------------------------------

def test_generation_is_deterministic_and_seed_sensitive():
    a = generate(accounts=50, transactions=500, seed=7, currencies=("USD", "JPY"))
    b = generate(accounts=50, transactions=500, seed=7, currencies=("USD", "JPY"))
    c = generate(accounts=50, transactions=500, seed=8, currencies=("USD", "JPY"))
    assert (a.accounts, a.journal, a.entries) == (b.accounts, b.journal, b.entries)
    assert a.entries != c.entries
    assert sum(a.by_kind.values()) == 500


def test_the_seed_streams_batches_that_add_up_to_the_whole_ledger(monkeypatch):
    import importlib

    seed_module = importlib.import_module("reconcile.workload.seed")  # the module (the package exports the function)

    whole = generate(accounts=50, transactions=1000, seed=7, currencies=("USD", "JPY"))
    items = list(seed_module.stream(accounts=50, transactions=1000, seed=7, currencies=("USD", "JPY"), batch=300))
    batches, last = items[:-1], items[-1]
    assert [len(j) for j, _ in batches] == [300 + 2, 300, 300, 100]  # the first holds the openings too
    assert [line for j, _ in batches for line in j] == whole.journal
    assert [line for _, e in batches for line in e] == whole.entries and last.accounts == whole.accounts
    # past the cap, reversal candidates take old slots: the list stops growing, the ledger stays valid
    monkeypatch.setattr(seed_module, "REVERSIBLE_CAP", 10)
    capped = generate(accounts=50, transactions=1000, seed=7, currencies=("USD", "JPY"))
    assert capped.by_kind["reversal"] > 0 and len(capped.entries) == 2 * len(capped.journal)


@pytest.mark.parametrize("kwargs, word", [
    ({"accounts": 3}, "--accounts"),
    ({"transactions": -1}, "--transactions"),
    ({"currencies": ("usd",)}, "upper-case"),
    ({"currencies": ("USD", "USD")}, "distinct"),
])
def test_generation_rejects_bad_arguments(kwargs, word):
    args = {"accounts": 10, "transactions": 10, "seed": 1, "currencies": ("USD", "EUR")} | kwargs
    with pytest.raises(TerminalError, match=word):
        generate(**args)


# --- seeding the source ------------------------------------------------------------------------

def test_same_seed_gives_identical_tables_and_another_seed_does_not(source_db, other_source_db):
    with _conn(source_db) as conn:
        first = seed(conn, seed=42, **SMALL)
    with _conn(other_source_db) as conn:
        seed(conn, seed=42, **SMALL)
    assert table_digests(source_db) == table_digests(other_source_db)
    with _conn(other_source_db) as conn:
        seed(conn, seed=43, reset=True, **SMALL)
    a, b = table_digests(source_db), table_digests(other_source_db)
    assert all(a[t] != b[t] for t in TABLES)
    assert first.journal_rows == SMALL["transactions"] + len(first.currencies)
    assert first.entries == 2 * first.journal_rows
    assert first.accounts == SMALL["accounts"] + 2 * len(first.currencies)


def test_seed_keeps_every_invariant_and_carries_the_dsql_traps(source_db):
    with _conn(source_db) as conn:
        report = seed(conn, **SMALL)
        assert set(report.by_kind) == {"deposit", "transfer", "withdrawal", "reversal"}
        # What a migration must notice: the trigger, the serial, plain numeric with >6 decimals,
        # and account numbers whose order depends on the collation.
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'entries_apply_balance'"
                            ).fetchone()[0] == 1
        assert conn.execute("SELECT pg_get_serial_sequence('ledger.journal', 'txn_id')"
                            ).fetchone()[0] == "ledger.journal_txn_id_seq"
        assert conn.execute("SELECT count(*) FROM ledger.journal WHERE scale(fx_rate) > 6"
                            ).fetchone()[0] > 0
        en = [r[0] for r in conn.execute("SELECT account_no FROM ledger.accounts ORDER BY account_no")]
        c = [r[0] for r in conn.execute(
            'SELECT account_no FROM ledger.accounts ORDER BY account_no COLLATE "C"')]
        assert en != c
        assert conn.execute("SELECT count(*) FROM ledger.accounts WHERE owner_name ~ '[^[:ascii:]]'"
                            ).fetchone()[0] > 0
        # The sequences continue after the seeded keys.
        conn.execute("INSERT INTO ledger.journal (idempotency_key, kind, posted_at)"
                     " VALUES ('probe', 'deposit', now())")
        assert conn.execute("SELECT max(txn_id) FROM ledger.journal").fetchone()[0] == report.journal_rows + 1
        conn.execute("DELETE FROM ledger.journal WHERE idempotency_key = 'probe'")
        assert conn.execute("SELECT nextval('ledger.entry_id_seq')").fetchone()[0] == report.entries + 1
    assert_invariants(source_db)


def test_seed_refuses_an_existing_schema_unless_reset(source_db):
    with _conn(source_db) as conn:
        seed(conn, accounts=20, transactions=50)
        before = table_digests(source_db)
        with pytest.raises(SchemaExists, match="--reset") as caught:
            seed(conn, accounts=20, transactions=50, seed=1)
        assert isinstance(caught.value, ReconcileError)
        assert table_digests(source_db) == before
        seed(conn, accounts=20, transactions=80, seed=1, reset=True)
    assert _count(source_db, "journal") == 80 + 4


def test_the_trigger_keeps_balances_for_new_postings(source_db):
    with _conn(source_db) as conn:
        seed(conn, accounts=20, transactions=50)
        with conn.transaction():
            txn = conn.execute("INSERT INTO ledger.journal (idempotency_key, kind, posted_at)"
                               " VALUES ('t1', 'deposit', now()) RETURNING txn_id").fetchone()[0]
            conn.execute("INSERT INTO ledger.entries (txn_id, account_id, currency, amount, posted_at)"
                         " VALUES (%s, 1, 'USD', -5, now()), (%s, 9, 'USD', 5, now())", (txn, txn))
        with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
            txn = conn.execute("INSERT INTO ledger.journal (idempotency_key, kind, posted_at)"
                               " VALUES ('t2', 'withdrawal', now()) RETURNING txn_id").fetchone()[0]
            conn.execute("INSERT INTO ledger.entries (txn_id, account_id, currency, amount, posted_at)"
                         " VALUES (%s, 9, 'USD', -1e9, now()), (%s, 1, 'USD', 1e9, now())", (txn, txn))
    assert_invariants(source_db)


# --- the live workload -------------------------------------------------------------------------


def _last_txn(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT coalesce(max(txn_id), 0) FROM ledger.journal").fetchone()[0]


def _kinds_since(url: str, txn_id: int) -> set[str]:
    """Kinds of the business transactions committed with a journal id above ``txn_id``."""
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT DISTINCT kind FROM ledger.journal WHERE txn_id > %s", (txn_id,))}


def test_workload_commits_real_transactions_and_keeps_the_invariants(source_db):
    with _conn(source_db) as conn:
        seed(conn, **SMALL)
    journal_before, last = _count(source_db, "journal"), _last_txn(source_db)
    stop, result = threading.Event(), {}
    worker = threading.Thread(target=lambda: result.setdefault("r", run_workload(
        source_db, tps=150, duration=None, workers=4, seed=1, hot_fraction=0.5, stop_event=stop)))
    worker.start()
    # Until every kind of business transaction has committed, however slow the machine (its speed: bench/).
    wait_for(lambda: _kinds_since(source_db, last) == {"transfer", "deposit", "withdrawal", "reversal"}
             or not worker.is_alive(), "every kind of business transaction")
    stop.set()
    worker.join()
    report = result["r"]
    print(f"\n{report.summary()}")
    assert report.errors == 0, report.error_samples
    assert set(report.committed) == {"transfer", "deposit", "withdrawal", "reversal"}
    assert report.attempted_tps <= 150 * 1.1  # paced: never faster than asked (slower only on a busy machine)
    assert _count(source_db, "journal") == journal_before + report.committed_total
    assert_invariants(source_db)


def test_workload_stops_on_its_event_and_accepts_a_connection_factory(source_db):
    with _conn(source_db) as conn:
        seed(conn, accounts=40, transactions=200)
    stop = threading.Event()
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("r", run_workload(
        lambda: _conn(source_db), tps=100, duration=None, workers=2, stop_event=stop)))
    journal_before = _count(source_db, "journal")
    worker.start()
    wait_for(lambda: _count(source_db, "journal") > journal_before, "a committed business transaction")
    stop.set()
    worker.join(120)  # a bound against a hang, not a speed claim
    assert not worker.is_alive()
    assert result["r"].committed_total > 0 and result["r"].errors == 0
    assert_invariants(source_db)


def test_workload_on_an_unseeded_source_says_what_to_do(source_db):
    with pytest.raises(TerminalError, match="workload seed"):
        run_workload(source_db, duration=0.1)


def test_cli_seed_and_run(source_db, monkeypatch):
    monkeypatch.setattr(workload_cmd, "open_source", lambda config, **kw: _conn(source_db))
    runner = CliRunner()
    out = runner.invoke(workload_cmd.app, ["seed", "--accounts", "30", "--transactions", "100"])
    assert out.exit_code == 0, out.output
    assert "seeded ledger" in out.output
    out = runner.invoke(workload_cmd.app, ["seed", "--accounts", "30", "--transactions", "100"])
    assert out.exit_code != 0 and isinstance(out.exception, SchemaExists)
    out = runner.invoke(workload_cmd.app, ["run", "--tps", "50", "--duration", "0.5", "--json"])
    assert out.exit_code == 0, out.output
    assert '"achieved_tps"' in out.output


# --- full size ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_seed_100k_transactions(source_db):
    with _conn(source_db) as conn:
        report = seed(conn)
    print(f"\n{report.summary()} (generate {report.generate_s:.2f} s, load {report.load_s:.2f} s)")
    assert report.journal_rows == 100_000 + 4  # its speed (under 60 s): bench/workload.py
    assert_invariants(source_db)
