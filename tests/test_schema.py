"""`reconcile schema plan|apply`: DDL that dsql-lint passes, applied idempotently, keeping every value exact."""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from reconcile.audit.lint import dsql_lint_path
from reconcile.cli import schema_cmd
from reconcile.config import PostgresEndpoint, TableSpec
from reconcile.connections import connect
from reconcile.schema import DsqlDialect, PostgresDialect, apply_plan, introspect, plan_from_source, record_plan
from reconcile.workload import seed
from test_audit import AWKWARD, create_awkward, write_config

AWKWARD_TABLES = ["legacy.accounts", "legacy.entries", "legacy.scratch", "legacy.audit_log", "legacy.bookings",
                  "legacy.events", "legacy.events_2024", "legacy.fx", "legacy.wide_index", "legacy.too_wide"]


def _conn(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def _target(url: str) -> psycopg.Connection:
    return connect(PostgresEndpoint("target", url))  # a DsqlConnection, as the CLI opens it


def _lint(path) -> dict:
    proc = subprocess.run([dsql_lint_path(), str(path), "--format", "json"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def _snapshot(url: str) -> list[tuple]:
    """Every object and column definition in the legacy schema (to prove a rerun changed nothing)."""
    with _conn(url) as conn:
        return conn.execute(
            "SELECT c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
            "(SELECT string_agg(conname || ':' || convalidated, ',' ORDER BY conname) FROM pg_constraint "
            " WHERE conrelid = c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
            "WHERE n.nspname = 'legacy' ORDER BY 1, 3").fetchall()


@pytest.fixture
def awkward_db(source_db) -> str:
    create_awkward(source_db)
    return source_db


# --- pure ------------------------------------------------------------------------------------


def test_one_code_path_switches_index_and_validation_by_dialect():
    table = sql.Identifier("s", "t")
    keys = [sql.Identifier("a"), sql.SQL("(lower(b))")]
    kwargs = dict(name="t_idx", table=table, keys=keys, unique=False, include=["c"], predicate=sql.SQL("a > 0"))
    assert DsqlDialect().create_index(**kwargs).as_string() == (
        'CREATE INDEX ASYNC IF NOT EXISTS "t_idx" ON "s"."t" ("a", (lower(b))) INCLUDE ("c") WHERE a > 0')
    assert PostgresDialect().create_index(**kwargs).as_string() == (
        'CREATE INDEX IF NOT EXISTS "t_idx" ON "s"."t" ("a", (lower(b))) INCLUDE ("c") WHERE a > 0')
    assert DsqlDialect().validate_constraint(table=table, name="fk").as_string() == \
        'ALTER TABLE ASYNC "s"."t" VALIDATE CONSTRAINT "fk"'
    assert PostgresDialect().validate_constraint(table=table, name="fk").as_string() == \
        'ALTER TABLE "s"."t" VALIDATE CONSTRAINT "fk"'


# --- planning the awkward schema -------------------------------------------------------------


def test_the_dsql_plan_passes_dsql_lint_and_cites_every_change(awkward_db, tmp_path):
    with _conn(awkward_db) as conn:
        plan = plan_from_source(conn, tables=AWKWARD_TABLES, dialect="dsql")
    script = tmp_path / "plan_dsql.sql"
    script.write_text(plan.render())
    report = _lint(script)
    assert report["summary"]["errors"] == 0
    assert report["files"][0]["diagnostics"] == [], report["files"][0]["diagnostics"]

    text = plan.render()
    for refused in ("SERIAL", "COLLATE", "jsonb", "[]", "TRIGGER", "PARTITION BY", "UNLOGGED", "EXCLUDE",
                    "CREATE TYPE", "CREATE EXTENSION", "plpgsql"):
        assert refused.lower() not in "\n".join(s.sql for s in plan.statements).lower(), refused
    assert all("INDEX ASYNC" in s.sql for s in plan.statements if s.kind == "index")
    assert "ALTER TABLE ASYNC" in text and "NOT VALID" in text

    # every citation is a finding the audit reports, and every change is cited
    ids = {f.id for f in plan.findings}
    cited = {a for s in plan.statements for a in s.answers} | {lo.finding for lo in plan.left_out}
    assert cited <= ids
    accounts = next(s for s in plan.statements if s.object == "legacy.accounts")
    assert set(accounts.answers) >= {
        "serial:legacy.accounts.account_id", "column_collation:legacy.accounts.code",
        "custom_type:legacy.accounts.owner_email", "enum:legacy.account_status", "array_column:legacy.accounts.tags",
        "jsonb_column:legacy.accounts.attrs", "plain_numeric:legacy.accounts.balance",
        "domain:legacy.positive_amount"}
    assert "-- [" in text and "answers: serial:legacy.accounts.account_id" in text

    columns = {c.name: c for c in plan.table("legacy.accounts").columns}
    assert columns["account_id"].target_type == "bigint" and columns["account_id"].default is None
    assert columns["balance"].target_type == "numeric(38,6)"
    assert columns["tags"].copy_expression == 'array_to_json("tags")'
    assert columns["status"].check == "\"status\" IN ('open', 'frozen', 'closed')"
    assert columns["status"].default == "'open'::text"
    assert columns["credit_limit"].target_type == "numeric(20,4)"
    assert '"credit_limit" > ' in columns["credit_limit"].check
    assert {c.name: c.target_type for c in plan.table("legacy.fx").columns} == {
        "pair": "text", "rate": "numeric(38,10)", "spread": "numeric(38,6)"}  # sized from the data
    fx = next(s for s in plan.statements if s.object == "legacy.fx")
    assert "numeric_unfit:legacy.fx.spread" in fx.answers  # 'Infinity' fits no DSQL numeric

    left = {(lo.object_type, lo.object): lo for lo in plan.left_out}
    assert left[("trigger", "legacy.entries.entries_apply")].replacement == \
        "balance_equals_sum_of_entries:legacy.accounts.balance"
    assert left[("trigger", "legacy.accounts.accounts_stamp")].finding == "trigger:legacy.accounts.accounts_stamp"
    for obj in ("legacy.events_2024", "legacy.too_wide"):
        assert ("table", obj) in left
    for kind, obj in (("constraint", "legacy.bookings.bookings_room_during_excl"),
                      ("rule", "legacy.audit_log.audit_log_no_delete"), ("index", "legacy.wide_index_all_idx"),
                      ("view", "legacy.account_totals"), ("procedure", "legacy.close_account(IN id bigint)"),
                      ("function", "legacy.fee(amount numeric)")):
        assert (kind, obj) in left, (kind, obj)
    assert [i.kind for i in plan.invariants] == ["balance_equals_sum_of_entries"]
    recorded = {(r.sequence, r.table, r.column): r.last_value for r in plan.sequences}
    assert recorded == {("legacy.accounts_account_id_seq", "legacy.accounts", "account_id"): 4,
                        ("legacy.entry_id_seq", "legacy.entries", "entry_id"): 4,
                        ("legacy.bookings_booking_id_seq", "legacy.bookings", "booking_id"): None}
    seq = next(s for s in plan.statements if s.kind == "sequence")
    assert seq.object == "legacy.invoice_no_seq" and "CACHE 65536" in seq.sql

    identity = plan_from_source(_conn(awkward_db), tables=["legacy.entries"], dialect="dsql", id_strategy="identity")
    entry_id = identity.table("legacy.entries").columns[0]
    assert entry_id.identity == "GENERATED BY DEFAULT AS IDENTITY (CACHE 65536)"


def test_apply_twice_on_the_stand_in_the_second_a_no_op(awkward_db, target_db):
    with _conn(awkward_db) as conn:
        specs = [TableSpec(n, ("at",)) if n == "legacy.audit_log" else n for n in AWKWARD_TABLES]
        plan = plan_from_source(conn, tables=specs, dialect="postgres")
    assert not any("ASYNC" in s.sql for s in plan.statements)
    with _target(target_db) as target:
        dry = apply_plan(target, plan, dry_run=True)
        assert len(dry.pending) == len(plan.statements) and not dry.drift and not dry.changed

        first = apply_plan(target, plan, phase="pre-load")
        assert first.changed and not first.drift, [str(d) for d in first.drift]
        assert {r.kind for r in first.applied} == {"schema", "sequence", "table", "index"}
        post = apply_plan(target, plan, phase="post-load")
        assert [r.kind for r in post.applied] == ["foreign_key", "validate"] and not post.drift
        record_plan(target, plan)
        before = _snapshot(target_db)

        second = apply_plan(target, plan)
        assert not second.changed and not second.drift and second.exit_code == 0
        assert {r.status for r in second.results} == {"exists"}
        assert second.summary().startswith("nothing to do")
        assert _snapshot(target_db) == before

        # the configured key of a table without one became its primary key
        pk = target.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                            "WHERE conrelid = 'legacy.audit_log'::regclass AND contype = 'p'").fetchone()
        assert pk == ("PRIMARY KEY (at)",)
        assert target.execute("SELECT convalidated FROM pg_constraint WHERE conname = 'entries_account_id_fkey'"
                              ).fetchone() == (True,)
        assert target.execute("SELECT last_value FROM reconcile.source_sequences "
                              "WHERE sequence_name = 'legacy.accounts_account_id_seq'").fetchone() == (4,)

        # drift: a column the plan does not know, and a type that differs, are reported, never altered
        target.execute("ALTER TABLE legacy.scratch ADD COLUMN surprise text")
        target.execute("DROP TABLE legacy.fx")
        target.execute("CREATE TABLE legacy.fx (pair text PRIMARY KEY, rate numeric(18,6), spread numeric(38,6))")
        drifted = apply_plan(target, plan)
        assert not drifted.changed and drifted.exit_code == 1
        assert {str(d) for d in drifted.drift} == {
            "legacy.scratch.surprise: column is not in the plan (target has text)",
            "legacy.fx.rate: type differs: planned numeric(38,10), target has numeric(18,6)"}
        state = introspect(target, ["legacy"])
        assert state.tables["legacy.fx"]["rate"] == ("numeric(18,6)", False)


EXTREMES = r"""
CREATE TABLE legacy.extremes (
    id       bigserial PRIMARY KEY,
    n38      numeric(38,10),
    plain    numeric,
    big      bigint,
    ts       timestamptz,
    txt      text COLLATE "en_US",
    doc      jsonb,
    arr      integer[],
    status   legacy.account_status,
    amount   legacy.positive_amount,
    email    citext,
    span     tstzrange
);
INSERT INTO legacy.extremes VALUES
 (9223372036854775807, 9999999999999999999999999999.9999999999, 123456789012345678901234567890.123456789012,
  9223372036854775807, '294276-12-31 23:59:59.999999+00', repeat('ä😀李ß', 40000),
  '{"a": [1, 2.5, "ü", null], "nested": {"k": -0.000000000001}}', '{1,2,NULL,-2147483648}', 'frozen',
  9999999999999999.9999, 'Zoë@Example.COM', '[2024-01-01 00:00:00.000001+00,2024-12-31 23:59:59.999999+00)'),
 (-9223372036854775808, -9999999999999999999999999999.9999999999, -0.000000000001,
  -9223372036854775808, '4714-11-24 00:00:00+00 BC', '', '[]', '{}', 'open', 0.0001, '', 'empty'),
 (1, 0, 0, 0, '2024-02-29 12:34:56.123456+00', NULL, 'null', NULL, 'closed', NULL, NULL, NULL);
"""


def test_extreme_values_round_trip_exactly_through_each_translated_column(source_db, target_db):
    with _conn(source_db) as conn:
        conn.execute(AWKWARD)
        conn.execute(EXTREMES)
        plan = plan_from_source(conn, tables=["legacy.extremes"], dialect="postgres")
    with _target(target_db) as target:
        apply_plan(target, plan)
    table = plan.table("legacy.extremes")
    types = {c.name: c.target_type for c in table.columns}
    assert types == {"id": "bigint", "n38": "numeric(38,10)", "plain": "numeric(42,12)", "big": "bigint",
                     "ts": "timestamp with time zone", "txt": "text", "doc": "json", "arr": "json",
                     "status": "text", "amount": "numeric(20,4)", "email": "text", "span": "text"}

    # Copy as the backfill will: read each column through its copy expression as text, write
    # text cast to the target type (the COPY text format's round trip).
    exprs = [sql.SQL(c.copy_expression) if c.copy_expression else sql.Identifier(c.name) for c in table.columns]
    read = sql.SQL("SELECT {} FROM legacy.extremes AS t ORDER BY t.id").format(
        sql.SQL(", ").join(sql.SQL("({})::text").format(e) for e in exprs))
    with _conn(source_db) as conn:
        rows = conn.execute(read).fetchall()
        source_numeric = conn.execute("SELECT id, n38, plain, amount FROM legacy.extremes ORDER BY id").fetchall()
    insert = sql.SQL("INSERT INTO legacy.extremes ({}) VALUES ({})").format(
        sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns),
        sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(c.target_type)) for c in table.columns))
    with _target(target_db) as target:
        with target.transaction():
            with target.cursor() as cur:
                cur.executemany(insert, rows)
        back = target.execute(sql.SQL("SELECT {} FROM legacy.extremes AS t ORDER BY t.id").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in table.columns))).fetchall()
        target_numeric = target.execute("SELECT id, n38, plain, amount FROM legacy.extremes ORDER BY id").fetchall()

    names = [c.name for c in table.columns]
    for src, dst in zip(rows, back):
        for name, a, b in zip(names, src, dst):
            if name == "plain" and a is not None:
                assert Decimal(a) == Decimal(b), name  # numeric(42,12) pads the scale: same number
            else:
                assert a == b, (name, a[:80] if a else a, b[:80] if b else b)
    # and as numbers, never through float
    assert source_numeric == target_numeric
    assert all(isinstance(v, Decimal) for row in target_numeric for v in row[1:] if v is not None)
    extremes = {row[0]: row for row in target_numeric}
    assert extremes[9223372036854775807][1] == Decimal("9999999999999999999999999999.9999999999")
    assert extremes[-9223372036854775808][2] == Decimal("-0.000000000001")


# --- the command line on the demo ledger -----------------------------------------------------


def test_schema_commands_build_the_demo_ledger_target(source_db, target_db, tmp_path):
    with _conn(source_db) as conn:
        seed(conn, accounts=30, transactions=100)
    config = write_config(tmp_path / "reconcile.toml", source_db, target_db)
    runner = CliRunner()

    planned = runner.invoke(schema_cmd.app, ["plan", "--config", str(config), "--dialect", "dsql",
                                             "--out", str(tmp_path / "ledger.sql")])
    assert planned.exit_code == 0, planned.output
    script = (tmp_path / "ledger.sql").read_text()
    assert "answers: trigger_balance" not in script  # left out, not answered by a statement
    assert "trigger_balance:ledger.entries.entries_apply_balance" in script
    assert '"fx_rate" numeric(38,10)' in script and '"txn_id" bigint NOT NULL' in script
    assert _lint(tmp_path / "ledger.sql")["files"][0]["diagnostics"] == []

    # no --phase and no backfill yet: the pre-load phase only (tests/test_stage_defaults.py has the rest)
    bare = runner.invoke(schema_cmd.app, ["apply", "--config", str(config)])
    assert bare.exit_code == 0, bare.output
    assert "applying the pre-load phase only (no foreign keys), because no backfill has run yet" in bare.stderr
    with _conn(target_db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND "
                            "connamespace = 'ledger'::regnamespace").fetchone() == (0,)
    applied = runner.invoke(schema_cmd.app, ["apply", "--config", str(config), "--phase", "post-load"])
    assert applied.exit_code == 0, applied.output
    assert "applied" in applied.stdout and "no drift" in applied.stdout
    with _conn(target_db) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'ledger'")}
        assert tables == {"accounts", "journal", "entries"}
        fks = {r[0] for r in conn.execute("SELECT conname FROM pg_constraint WHERE contype = 'f' AND "
                                          "connamespace = 'ledger'::regnamespace")}
        assert fks == {"journal_reverses_txn_id_fkey", "entries_txn_id_fkey", "entries_account_id_fkey"}
        assert conn.execute("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                            "WHERE c.relnamespace = 'ledger'::regnamespace AND NOT t.tgisinternal "
                            "AND t.tgname NOT LIKE 'dsql_guard%'"
                            ).fetchone() == (0,)
        recorded = dict(conn.execute("SELECT sequence_name, last_value FROM reconcile.source_sequences").fetchall())
        assert recorded["ledger.journal_txn_id_seq"] == 100 + 4  # the opening transactions, one per currency

    again = runner.invoke(schema_cmd.app, ["apply", "--config", str(config), "--phase", "all", "--json"])
    assert again.exit_code == 0
    result = json.loads(again.stdout)
    assert result["changed"] is False and result["summary"].startswith("nothing to do")
