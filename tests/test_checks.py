"""Invariant expectations through real Great Expectations on the real local stack (source + DSQL stand-in).

One seeded demo-ledger pair per module for the tests that only read (or restore what they change);
the planted-violation test gets its own pair. The target is built the way `reconcile schema apply`
and `reconcile backfill` build it.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import psycopg
import pytest
from typer.testing import CliRunner

from reconcile.backfill import run_backfill
from reconcile.checks import generate_suite, ledger_checks, run_checks
from reconcile.checks.gxrun import engine_url
from reconcile.checks.spec import escape_query
from reconcile.cli.check_cmd import app as check_app
from reconcile.config import DEMO_STAGE_SETTINGS, Config, PostgresEndpoint, load_config
from reconcile.schema import apply_plan, plan_from_source
from reconcile.workload import seed

LEDGER = {"entries_sum_to_zero", "entries_have_transaction", "entries_have_account",
          "entry_currency_matches_account", "balance_equals_sum_of_entries", "no_forbidden_negative_balance",
          "idempotency_key_unique", "idempotency_key_not_null"}


def _db(server: str, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template1')
    return psycopg.conninfo.make_conninfo(server, dbname=name)


def _drop(server: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _demo_env() -> dict[str, str]:
    """The demo ledger's optional [checks] roles (unset by default), as environment overrides."""
    return {f"RECONCILE__CHECKS__{k.upper()}": ",".join(v) if isinstance(v, list) else str(v)
            for k, v in DEMO_STAGE_SETTINGS["checks"].items()}


def _config(source: str, target: str, **checks) -> Config:
    cfg = load_config(None, environ={**_demo_env(), **{f"RECONCILE__CHECKS__{k.upper()}": v for k, v in checks.items()}})
    return Config(source=PostgresEndpoint("source", source), target=PostgresEndpoint("target", target),
                  stages=cfg.stages)


def _ledger_pair(local_stack, *, phase: str = "all") -> tuple[str, str]:
    """A seeded demo ledger on the source, its schema applied to the target and the rows copied."""
    source, target = _db(local_stack["source"], "cs"), _db(local_stack["target"], "ct")
    with psycopg.connect(source, autocommit=True) as conn:
        seed(conn, accounts=30, transactions=120)
        plan = plan_from_source(conn, tables=list(_config(source, target).tables), dialect="postgres")
    with psycopg.connect(target, autocommit=True) as conn:
        apply_plan(conn, plan, phase="pre-load")
    run_backfill(_config(source, target))
    if phase == "all":
        with psycopg.connect(target, autocommit=True) as conn:
            apply_plan(conn, plan, phase="post-load")
    return source, target


@pytest.fixture(scope="module")
def pair(local_stack):
    source, target = _ledger_pair(local_stack)
    yield source, target
    _drop(local_stack["source"], source)
    _drop(local_stack["target"], target)


def _failed(result, side: str, suite: str | None = None) -> dict[str, object]:
    return {o.check.name: o.observed for o in result.failed
            if o.side == side and (suite is None or o.check.suite == suite)}


def _sql(url: str, *statements: str, replica: bool = False) -> None:
    """Each statement in its own transaction (the stand-in refuses DDL mixed with DML)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in statements:
            with conn.transaction():
                if replica:  # bypass the source's foreign keys and balance trigger, as a broken writer would
                    conn.execute("SET LOCAL session_replication_role = replica")
                conn.execute(stmt)


# --- pure builders (no database) ---------------------------------------------------------------------


def test_queries_escape_braces_and_bind_markers_and_quote_identifiers():
    assert escape_query("SELECT '{x}', a::text, ':y' FROM {batch}") == "SELECT '{{x}}', a::text, '\\:y' FROM {batch}"
    cfg = Config(source=PostgresEndpoint("source", "host=s"), target=PostgresEndpoint("target", "host=t"),
                 tables=load_config(None, environ={}).tables, stages=load_config(None, environ=_demo_env()).stages)
    queries = {c.name: c.kwargs.get("unexpected_rows_query") for c in ledger_checks(cfg)}
    assert set(queries) == LEDGER and not any(c.not_applicable for c in ledger_checks(cfg))
    assert '"ledger"."journal"' in queries["entries_have_transaction"]
    assert "{batch}" in queries["balance_equals_sum_of_entries"]
    # the URL GX stores never carries the password; a socket directory becomes ?host=
    url = engine_url(PostgresEndpoint("source", "host=/run/pg port=5433 dbname=ledger user=app password=hunter2"))
    assert url == "postgresql+psycopg://app@localhost:5433/ledger?host=%2Frun%2Fpg" and "hunter2" not in url


# --- generated suite -----------------------------------------------------------------------------------


def test_generated_suite_covers_keys_not_nulls_checks_and_foreign_keys_of_the_demo_ledger(pair):
    source, target = pair
    with psycopg.connect(source, autocommit=True) as conn:
        checks = generate_suite(_config(source, target), source=conn)
    by_suite: dict[str, set[tuple[str, str]]] = {}
    for c in checks:
        by_suite.setdefault(c.suite, set()).add((c.name, c.expectation))
    assert list(by_suite) == ["ledger.accounts", "ledger.journal", "ledger.entries"]
    assert ("unique:account_id", "ExpectColumnValuesToBeUnique") in by_suite["ledger.accounts"]
    assert ("unique:account_no", "ExpectColumnValuesToBeUnique") in by_suite["ledger.accounts"]
    assert ("unique:idempotency_key", "ExpectColumnValuesToBeUnique") in by_suite["ledger.journal"]
    assert ("unique:entry_id", "ExpectColumnValuesToBeUnique") in by_suite["ledger.entries"]
    not_null = {n.split(":", 1)[1] for n, _ in by_suite["ledger.entries"] if n.startswith("not_null:")}
    assert not_null == {"entry_id", "txn_id", "account_id", "currency", "amount", "posted_at"}
    assert ("check:accounts_kind_check", "ExpectColumnValuesToBeInSet") in by_suite["ledger.accounts"]
    assert ("check:accounts_check", "UnexpectedRowsExpectation") in by_suite["ledger.accounts"]
    fks = {n for s in by_suite.values() for n, e in s if n.startswith("foreign_key:")}
    assert fks == {"foreign_key:entries_txn_id_fkey", "foreign_key:entries_account_id_fkey",
                   "foreign_key:journal_reverses_txn_id_fkey"}
    kind_set = next(c for c in checks if c.name == "check:accounts_kind_check").kwargs["value_set"]
    assert kind_set == ["customer", "settlement", "equity"]
    # the balance trigger's invariant is the ledger suite's balance check: not generated twice...
    assert not any(c.name.startswith("invariant:") for c in checks)
    # ...but generated when the ledger suite is not run
    with psycopg.connect(source, autocommit=True) as conn:
        alone = generate_suite(_config(source, target, suites="generated"), source=conn)
    inv = [c for c in alone if c.name.startswith("invariant:")]
    assert [c.name for c in inv] == ["invariant:balance_equals_sum_of_entries:ledger.accounts.balance"]
    assert inv[0].evidence["invariant"]["replaces_trigger"] == "ledger.entries.entries_apply_balance"


# --- a whole run on clean data ----------------------------------------------------------------------


def test_clean_ledger_is_green_on_both_sides_and_the_run_is_recorded(pair, tmp_path):
    source, target = pair
    result = run_checks(_config(source, target), report_dir=tmp_path)
    assert result.success, [(o.side, o.check.name, o.exception) for o in result.failed]
    summary = result.to_dict()
    assert {"success", "evaluated", "failed", "suites", "data_docs"} <= set(summary)
    assert summary["failed"] == 0 and summary["evaluated"] == len(result.outcomes) > 60
    assert set(summary["suites"]) == {f"{s}@{side}" for side in ("source", "target")
                                      for s in ("ledger", "ledger.accounts", "ledger.journal", "ledger.entries")} | {
        "parity@target", "freshness@target"}
    assert {o.check.name for o in result.outcomes if o.check.suite == "ledger" and o.side == "target"} == LEDGER
    json.dumps(summary)
    with psycopg.connect(target) as conn:
        kind, status, stored = conn.execute("SELECT kind, status, summary FROM reconcile.runs WHERE run_id = %s",
                                            (result.run_id,)).fetchone()
        rows = conn.execute("SELECT count(*), count(*) FILTER (WHERE success) FROM reconcile.check_results "
                            "WHERE run_id = %s", (result.run_id,)).fetchone()
        # GX ran read-only SELECTs: no temporary table was ever created on the DSQL stand-in
        temp = conn.execute("SELECT count(*) FROM pg_class WHERE relpersistence = 't'").fetchone()[0]
    assert (kind, status) == ("check", "green") and json.loads(stored)["suites"] == summary["suites"]
    assert rows == (len(result.outcomes), len(result.outcomes)) and temp == 0
    docs = tmp_path / "data_docs" / "index.html"
    assert summary["data_docs"] == str(docs) and docs.exists()
    rendered = " ".join(p.read_text(errors="replace") for p in (tmp_path / "data_docs").rglob("*.html"))
    assert "ledger:ledger.entries@target" in rendered and "freshness:replay_lag@target" in rendered
    assert "postgresql+psycopg" not in rendered and "127.0.0.1" not in rendered


# --- each invariant catches its planted violation, on both sides ---------------------------------------


def test_each_ledger_invariant_catches_a_planted_violation_on_both_sides(local_stack):
    # the target without its post-load phase: no foreign keys, as on a DSQL target mid-migration
    source, target = _ledger_pair(local_stack, phase="pre-load")
    try:
        for url in (source, target):
            with psycopg.connect(url) as conn:
                cur = conn.execute("SELECT currency FROM ledger.accounts WHERE kind = 'customer' GROUP BY currency "
                                   "ORDER BY count(*) DESC LIMIT 1").fetchone()[0]
                (a,), (b,), (c,) = conn.execute("SELECT account_id FROM ledger.accounts WHERE kind = 'customer' "
                                                "AND balance > 10 AND currency = %s ORDER BY account_id LIMIT 3",
                                                (cur,)).fetchall()
                other = "EUR" if cur != "EUR" else "USD"
                entry = conn.execute("SELECT entry_id, account_id FROM ledger.entries e WHERE account_id = %s "
                                     "ORDER BY entry_id LIMIT 1", (b,)).fetchone()
                txn = conn.execute("SELECT txn_id, idempotency_key FROM ledger.journal ORDER BY txn_id LIMIT 1").fetchone()
                eid = conn.execute("SELECT max(entry_id) FROM ledger.entries").fetchone()[0]
            constraints = ["ALTER TABLE ledger.accounts DROP CONSTRAINT IF EXISTS accounts_check",
                           "ALTER TABLE ledger.journal DROP CONSTRAINT IF EXISTS journal_idempotency_key_key",
                           "DROP INDEX IF EXISTS ledger.journal_idempotency_key_key"]
            stamp = "'2024-06-01 00:00:00+00'"
            _sql(url, *constraints)
            _sql(url,
                 # one entry changed, its account's balance with it: only the transaction's zero sum breaks
                 f"UPDATE ledger.entries SET amount = amount + 1 WHERE entry_id = {entry[0]}",
                 f"UPDATE ledger.accounts SET balance = balance + 1 WHERE account_id = {b}",
                 # a balance that disagrees with its entries
                 f"UPDATE ledger.accounts SET balance = balance + 7 WHERE account_id = {c}",
                 # a transaction that does not exist (a pair summing to zero on one account)
                 f"INSERT INTO ledger.entries VALUES ({eid + 1}, 999999001, {a}, '{cur}', 5, {stamp}), "
                 f"({eid + 2}, 999999001, {a}, '{cur}', -5, {stamp})",
                 # an account that does not exist
                 f"INSERT INTO ledger.entries VALUES ({eid + 3}, {txn[0]}, 999999002, '{cur}', 3, {stamp}), "
                 f"({eid + 4}, {txn[0]}, 999999002, '{cur}', -3, {stamp})",
                 # entries in another currency than their account
                 f"INSERT INTO ledger.entries VALUES ({eid + 5}, {txn[0]}, {a}, '{other}', 4, {stamp}), "
                 f"({eid + 6}, {txn[0]}, {a}, '{other}', -4, {stamp})",
                 # a customer overdrawn, consistently with its entries
                 f"INSERT INTO ledger.journal (txn_id, idempotency_key, kind, posted_at) VALUES "
                 f"(999999003, 'planted-overdraft', 'transfer', {stamp})",
                 f"INSERT INTO ledger.entries VALUES ({eid + 7}, 999999003, {a}, '{cur}', -1000000000, {stamp}), "
                 f"({eid + 8}, 999999003, {b}, '{cur}', 1000000000, {stamp})",
                 f"UPDATE ledger.accounts SET balance = balance - 1000000000 WHERE account_id = {a}",
                 f"UPDATE ledger.accounts SET balance = balance + 1000000000 WHERE account_id = {b}",
                 # a replayed write under the same idempotency key
                 f"INSERT INTO ledger.journal (txn_id, idempotency_key, kind, posted_at) VALUES "
                 f"(999999004, '{txn[1]}', 'deposit', {stamp})",
                 replica=True)
        result = run_checks(_config(source, target), suites=("ledger", "generated"))
        assert not result.success and result.status == "red"
        for side in ("source", "target"):
            ledger = _failed(result, side, "ledger")
            assert set(ledger) == LEDGER - {"idempotency_key_not_null"}, (side, ledger)
            assert ledger["entries_sum_to_zero"] == 1
            assert ledger["balance_equals_sum_of_entries"] == 1
            assert ledger["entries_have_transaction"] == 2 and ledger["entries_have_account"] == 2
            assert ledger["entry_currency_matches_account"] == 2 and ledger["no_forbidden_negative_balance"] == 1
            assert ledger["idempotency_key_unique"]["unexpected_count"] == 2
            generated = _failed(result, side, "ledger.entries")
            assert {"foreign_key:entries_txn_id_fkey", "foreign_key:entries_account_id_fkey"} <= set(generated)
            assert not any(o.exception for o in result.outcomes if o.side == side)
    finally:
        _drop(local_stack["source"], source)
        _drop(local_stack["target"], target)


# --- parity and freshness --------------------------------------------------------------------------------


def test_parity_allows_the_diff_in_flight_count_and_freshness_counts_dead_letters_rejects_and_lag(pair):
    source, target = pair
    cfg = _config(source, target, max_replay_lag_seconds="5")
    with psycopg.connect(target) as conn:
        top = conn.execute("SELECT max(entry_id) FROM ledger.entries").fetchone()[0]
    _sql(target, f"DELETE FROM ledger.entries WHERE entry_id = {top}")
    try:
        diff_id, replay_id, dead_id, reject_id = (str(uuid.uuid4()) for _ in range(4))
        _sql(target,
             "INSERT INTO reconcile.dead_letters (dead_letter_id, slot_name, xid, reason) "
             f"VALUES ('{dead_id}', 'reconcile', 42, 'too big')",
             "INSERT INTO reconcile.rejects (reject_id, stage, table_name, row_key, reason) "
             f"VALUES ('{reject_id}', 'backfill', 'ledger.entries', '[1]', 'numeric overflow')",
             "INSERT INTO reconcile.runs (run_id, kind, status, finished_at, summary) VALUES "
             f"('{replay_id}', 'replay', 'done', now(), '{json.dumps({'lag_seconds_p99': 9.5, 'caught_up': True})}')")
        red = run_checks(cfg, sides=("target",), suites=("parity", "freshness"))
        failed = _failed(red, "target")
        assert set(failed) == {"no_open_dead_letters", "no_unacknowledged_rejects", "replay_lag_p99",
                               "row_count:ledger.entries"}
        assert failed["no_open_dead_letters"] == 1 and failed["no_unacknowledged_rejects"] == 1

        summary = {"verdict": "red", "tables": {"ledger.entries": {"in_flight": 1, "rows_source": 0, "rows_target": 0}}}
        _sql(target,
             f"UPDATE reconcile.dead_letters SET resolved_at = now() WHERE dead_letter_id = '{dead_id}'",
             "INSERT INTO reconcile.runs (run_id, kind, status, finished_at, summary) VALUES "
             f"('{diff_id}', 'diff', 'red', now(), '{json.dumps(summary)}')",
             f"UPDATE reconcile.runs SET summary = '{json.dumps({'lag_seconds_p99': 0.4})}' WHERE run_id = '{replay_id}'")
        runner = CliRunner()
        config_file = _write_config(target, source)
        acked = runner.invoke(check_app, ["ack", "reject", reject_id, "--by", "ops", "--reason", "known overflow",
                                          "--config", str(config_file)])
        assert acked.exit_code == 0, acked.output
        green = run_checks(cfg, sides=("target",), suites=("parity", "freshness"))
        assert green.success, [o.to_dict() for o in green.failed]
        parity = next(o for o in green.outcomes if o.check.name == "row_count:ledger.entries")
        assert parity.check.evidence["in_flight"] == 1 and parity.check.evidence["diff_run"] == diff_id
    finally:
        _sql(target, "DELETE FROM reconcile.runs WHERE kind IN ('diff', 'replay')",
             "DELETE FROM reconcile.dead_letters", "DELETE FROM reconcile.rejects",
             "DELETE FROM reconcile.check_acknowledgements")
        with psycopg.connect(source) as src, psycopg.connect(target, autocommit=True) as tgt:
            values = src.execute("SELECT * FROM ledger.entries WHERE entry_id = %s", (top,)).fetchone()
            tgt.execute("INSERT INTO ledger.entries VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", values)


def _write_config(target: str, source: str):
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp())
    file = folder / "reconcile.toml"
    checks = "\n".join(f"{k} = {json.dumps(v)}" for k, v in DEMO_STAGE_SETTINGS["checks"].items())
    file.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source}"\n\n'
                    f'[target]\nkind = "postgres"\nconninfo = "{target}"\n\n[checks]\n{checks}\n')
    return file


# --- command line ----------------------------------------------------------------------------------------


def test_cli_exits_0_when_green_and_1_when_an_expectation_fails(pair, tmp_path, monkeypatch):
    source, target = pair
    config_file = _write_config(target, source)
    runner = CliRunner()
    green = runner.invoke(check_app, ["--config", str(config_file), "--side", "target", "--suite", "ledger",
                                      "--json"])
    assert green.exit_code == 0, green.output
    doc = json.loads(green.stdout)
    assert doc["success"] is True and set(doc["suites"]) == {"ledger@target"} and doc["results"]
    # no exemption: the equity accounts (negative by design) now break the rule, on the source
    monkeypatch.setenv("RECONCILE__CHECKS__NEGATIVE_BALANCE_EXEMPT_VALUES", "")
    red = runner.invoke(check_app, ["run", "--config", str(config_file), "--side", "source", "--suite", "ledger",
                                    "--report-dir", str(tmp_path)])
    assert red.exit_code == 1, red.output
    assert "FAIL ledger@source  failed: no_forbidden_negative_balance" in red.stdout
    assert "red:" in red.stdout and (tmp_path / "data_docs" / "index.html").exists()


def test_the_balance_invariant_is_exact_to_the_cent(pair):
    source, target = pair
    with psycopg.connect(target) as conn:
        balance = conn.execute("SELECT balance FROM ledger.accounts ORDER BY account_id LIMIT 1").fetchone()[0]
    assert isinstance(balance, Decimal)
    account = psycopg.connect(target).execute("SELECT min(account_id) FROM ledger.accounts").fetchone()[0]
    _sql(target, f"UPDATE ledger.accounts SET balance = balance + 0.01 WHERE account_id = {account}")
    try:
        result = run_checks(_config(source, target), sides=("target",), suites=("ledger",))
        assert _failed(result, "target", "ledger") == {"balance_equals_sum_of_entries": 1}
    finally:
        _sql(target, f"UPDATE ledger.accounts SET balance = balance - 0.01 WHERE account_id = {account}")


def test_a_column_type_sqlalchemy_does_not_know_fails_no_expectation_of_its_table(source_db, target_db):
    """SQLAlchemy reflects xml (or an extension's type) as NullType, and GX compiles every column's type of a
    table before its expectations run: one such column used to make each of them an error."""
    import doctest

    import reconcile.checks.sqla_types
    from reconcile.config import TableSpec

    assert doctest.testmod(reconcile.checks.sqla_types).failed == 0
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS hstore")
        conn.execute("CREATE SCHEMA app")
        conn.execute("CREATE TABLE app.t (id int PRIMARY KEY, doc xml, attrs hstore, n int NOT NULL)")
        conn.execute("INSERT INTO app.t (id, n) SELECT g, g FROM generate_series(1, 5) g")
    cfg = Config(source=PostgresEndpoint("source", source_db), target=PostgresEndpoint("target", target_db),
                 tables=(TableSpec("app.t", ("id",)),), stages=load_config(None, environ={}).stages)
    result = run_checks(cfg, sides=("source",), suites=("generated",))
    ran = {o.check.name: o for o in result.outcomes}
    assert {"unique:id", "not_null:n"} <= set(ran)
    assert result.success and not [o for o in result.outcomes if o.exception], result.to_dict(results=True)
