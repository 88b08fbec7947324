"""`reconcile audit`: every kind of legacy feature on a deliberately awkward source, with its severity."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from reconcile.audit import AuditOptions, Severity, render_html, render_markdown, run_audit, store_report
from reconcile.audit.catalog import read_catalog
from reconcile.audit.findings import CODES, make
from reconcile.audit.lint import Diagnostic, lint_findings, split_statements
from reconcile.audit.translate import NumericProfile, planned_numeric
from reconcile.audit.triggers import describe_trigger_body
from reconcile.cli import audit_cmd
from reconcile.workload import seed

MiB = 1024 * 1024

# Every category the audit knows, on one schema. Kept in this module so the schema tests reuse it.
AWKWARD = r"""
CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS btree_gist;
CREATE SCHEMA legacy;
CREATE TYPE legacy.account_status AS ENUM ('open', 'frozen', 'closed');
CREATE DOMAIN legacy.positive_amount AS numeric(20,4) CHECK (VALUE > 0);
CREATE TABLE legacy.accounts (
    account_id    bigserial PRIMARY KEY,
    code          text COLLATE "en_US" NOT NULL UNIQUE,
    owner_email   citext,
    status        legacy.account_status NOT NULL DEFAULT 'open',
    tags          text[],
    attrs         jsonb,
    balance       numeric NOT NULL DEFAULT 0,
    credit_limit  legacy.positive_amount,
    opened_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (balance >= 0 OR status <> 'open')
);
CREATE SEQUENCE legacy.entry_id_seq;
CREATE SEQUENCE legacy.invoice_no_seq CACHE 20;
CREATE TABLE legacy.entries (
    entry_id    bigint PRIMARY KEY DEFAULT nextval('legacy.entry_id_seq'),
    account_id  bigint NOT NULL REFERENCES legacy.accounts (account_id),
    amount      numeric(18,2) NOT NULL,
    posted_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX entries_account_idx ON legacy.entries (account_id);
CREATE INDEX entries_posted_desc_idx ON legacy.entries (posted_at DESC);
CREATE FUNCTION legacy.apply_entry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- keep the running balance
    UPDATE legacy.accounts
       SET balance = balance + NEW.amount
     WHERE account_id = NEW.account_id;
    RETURN NEW;
END $$;
CREATE TRIGGER entries_apply AFTER INSERT ON legacy.entries FOR EACH ROW EXECUTE FUNCTION legacy.apply_entry();
CREATE FUNCTION legacy.stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.opened_at := now(); RETURN NEW; END $$;
CREATE TRIGGER accounts_stamp BEFORE INSERT ON legacy.accounts FOR EACH ROW EXECUTE FUNCTION legacy.stamp();
CREATE FUNCTION legacy.fee(amount numeric) RETURNS numeric LANGUAGE plpgsql AS $$ BEGIN RETURN amount * 0.01; END $$;
CREATE FUNCTION legacy.double_it(x numeric) RETURNS numeric LANGUAGE sql AS 'SELECT x * 2';
CREATE PROCEDURE legacy.close_account(id bigint) LANGUAGE plpgsql AS $$
BEGIN UPDATE legacy.accounts SET status = 'closed' WHERE account_id = id; END $$;
CREATE UNLOGGED TABLE legacy.scratch (id int PRIMARY KEY, note text);
CREATE TABLE legacy.audit_log (at timestamptz NOT NULL, message text);
CREATE RULE audit_log_no_delete AS ON DELETE TO legacy.audit_log DO INSTEAD NOTHING;
CREATE TABLE legacy.bookings (
    booking_id serial PRIMARY KEY,
    room int NOT NULL,
    during tstzrange NOT NULL,
    EXCLUDE USING gist (room WITH =, during WITH &&)
);
CREATE MATERIALIZED VIEW legacy.account_totals AS
    SELECT account_id, sum(amount) AS total FROM legacy.entries GROUP BY account_id;
CREATE VIEW legacy.open_accounts AS SELECT account_id, code FROM legacy.accounts WHERE status = 'open';
CREATE TABLE legacy.events (
    event_id bigint NOT NULL,
    happened_on date NOT NULL,
    payload jsonb,
    PRIMARY KEY (event_id, happened_on)
) PARTITION BY RANGE (happened_on);
CREATE TABLE legacy.events_2024 PARTITION OF legacy.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE legacy.fx (pair text PRIMARY KEY, rate numeric, spread numeric);
CREATE TABLE legacy.wide_index (a int, b int, c int, d int, e int, f int, g int, h int, i int PRIMARY KEY);
CREATE INDEX wide_index_all_idx ON legacy.wide_index (a, b, c, d, e, f, g, h, i);
"""

AWKWARD_DATA = r"""
INSERT INTO legacy.accounts (code, owner_email, status, tags, attrs, credit_limit) VALUES
    ('a', 'Anna@Example.com', 'open', '{x,y}', '{"tier": 1}', 100),
    ('B', NULL, 'open', NULL, NULL, NULL),
    ('ä', NULL, 'frozen', '{}', '[]', 5.5),
    ('Z', NULL, 'open', NULL, NULL, NULL);
INSERT INTO legacy.entries (account_id, amount) SELECT account_id, 10.25 FROM legacy.accounts;
INSERT INTO legacy.fx VALUES ('EURUSD', 1.0812345678, 0.0001), ('BIG', 12345678901234.5, 'Infinity');
INSERT INTO legacy.events VALUES (1, '2024-03-01', '{"k": "v"}');
"""

CREATE_WIDE = "CREATE TABLE legacy.too_wide ({})".format(", ".join(f"c{i} int" for i in range(256)))

# (code, object) -> severity: what the audit must report on AWKWARD.
EXPECTED = {
    ("trigger_balance", "legacy.entries.entries_apply"): "blocker",
    ("trigger", "legacy.accounts.accounts_stamp"): "blocker",
    ("procedural_function", "legacy.fee(amount numeric)"): "blocker",
    ("sql_function", "legacy.double_it(x numeric)"): "info",
    ("rule", "legacy.audit_log.audit_log_no_delete"): "blocker",
    ("exclusion_constraint", "legacy.bookings.bookings_room_during_excl"): "blocker",
    ("materialized_view", "legacy.account_totals"): "blocker",
    ("view", "legacy.open_accounts"): "info",
    ("quota_columns", "legacy.too_wide"): "blocker",
    ("quota_key_columns", "legacy.wide_index_all_idx"): "blocker",
    ("serial", "legacy.accounts.account_id"): "must-change",
    ("serial", "legacy.bookings.booking_id"): "must-change",
    ("serial", "legacy.entries.entry_id"): "must-change",
    ("sequence", "legacy.invoice_no_seq"): "must-change",
    ("enum", "legacy.account_status"): "must-change",
    ("domain", "legacy.positive_amount"): "info",
    ("array_column", "legacy.accounts.tags"): "must-change",
    ("jsonb_column", "legacy.accounts.attrs"): "must-change",
    ("jsonb_column", "legacy.events.payload"): "must-change",
    ("extension", "citext"): "must-change",
    ("extension", "btree_gist"): "must-change",
    ("custom_type", "legacy.accounts.owner_email"): "must-change",
    ("custom_type", "legacy.bookings.during"): "must-change",
    ("unlogged_table", "legacy.scratch"): "must-change",
    ("partitioned_table", "legacy.events"): "must-change",
    ("partition", "legacy.events_2024"): "info",
    ("no_primary_key", "legacy.audit_log"): "must-change",
    ("plain_numeric", "legacy.accounts.balance"): "must-change",
    ("plain_numeric", "legacy.fx.rate"): "must-change",
    ("column_collation", "legacy.accounts.code"): "must-change",
    ("collation_key_order", "legacy.accounts.code"): "warning",
    ("foreign_key", "legacy.entries.entries_account_id_fkey"): "info",
    ("index_async", "legacy.entries_account_idx"): "must-change",
    ("index_order", "legacy.entries_posted_desc_idx"): "must-change",
}


def _conn(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def create_awkward(url: str, *, data: bool = True, wide: bool = True) -> None:
    """Build the awkward legacy schema (and a little data) in the database at ``url``."""
    with _conn(url) as conn:
        conn.execute(AWKWARD)
        if wide:
            conn.execute(CREATE_WIDE)
        if data:
            conn.execute(AWKWARD_DATA)


@pytest.fixture
def awkward_db(source_db) -> str:
    create_awkward(source_db)
    return source_db


def write_config(path: Path, source: str, target: str, tables: list[tuple[str, list[str]]] | None = None) -> Path:
    lines = ["[source]", 'kind = "postgres"', f'conninfo = "{source}"', "[target]", 'kind = "postgres"',
             f'conninfo = "{target}"']
    for name, key in tables or ():
        lines += ["[[tables]]", f'name = "{name}"', f"key = {json.dumps(key)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- pure ------------------------------------------------------------------------------------


def test_every_code_names_why_and_fix():
    for code, c in CODES.items():
        assert c.why.strip() and c.fix.strip(), code
    f = make("plain_numeric", "s.t.c", "plain numeric")
    assert f.id == "plain_numeric:s.t.c" and f.severity is Severity.MUST_CHANGE and f.level == "catalog"


def test_a_balance_trigger_body_becomes_an_invariant():
    body = """
    BEGIN
        UPDATE "ledger".accounts AS a
           SET balance = coalesce(balance, 0) + NEW.amount, updated_at = NEW.posted_at
         WHERE a.account_id = NEW.account_id;
        INSERT INTO ledger.history (id) VALUES (NEW.entry_id);
        IF NEW.amount = 0 THEN RAISE EXCEPTION 'zero'; END IF;
        NEW.seen := true;
        RETURN NEW;
    END"""
    actions, inv = describe_trigger_body(body, table="ledger.entries", events=("INSERT",), trigger="ledger.entries.t")
    assert inv is not None and inv.kind == "balance_equals_sum_of_entries"
    assert inv.spec == {"accounts": "ledger.accounts", "balance_column": "balance", "account_key": "account_id",
                        "entries": "ledger.entries", "amount_column": "amount", "entry_account_column": "account_id",
                        "replaces_trigger": "ledger.entries.t", "events": ["INSERT"]}
    kinds = [a["action"] for a in actions]
    assert kinds == ["maintains_balance", "inserts", "sets_columns", "validates"]
    # something unrecognised yields no invariant, and says so through an empty action list
    nothing = describe_trigger_body("BEGIN RETURN NULL; END", table="s.t", events=("DELETE",), trigger="s.t.x")
    assert nothing == ([], None)


def test_planned_numeric_holds_what_was_seen_with_a_floor():
    assert planned_numeric(None) == (38, 6)
    assert planned_numeric(NumericProfile(rows=5, max_scale=2, max_integer_digits=3)) == (38, 6)
    assert planned_numeric(NumericProfile(rows=5, max_scale=12, max_integer_digits=30)) == (42, 12)
    assert planned_numeric(NumericProfile(rows=1, max_scale=0, max_integer_digits=1200)) == (1000, 0)
    assert not NumericProfile(rows=1, infinities=1).fits_anywhere


def test_lint_diagnostics_merge_into_catalog_findings_or_stand_alone():
    ddl = ("CREATE TABLE s.t (\n    id integer NOT NULL,\n    tags text[]\n);\n\n"
           "CREATE UNLOGGED TABLE s.u (id integer);\n\nTRUNCATE s.t;\n\nDO $$ BEGIN\nEND $$;\n")
    statements = split_statements(ddl)
    assert [(a, b) for a, b, _ in statements] == [(1, 4), (6, 6), (8, 8), (10, 11)]
    catalog = [make("array_column", "s.t.tags", "array"), make("unlogged_table", "s.u", "unlogged")]
    diags = [
        Diagnostic("array_type", 3, "Column `tags` uses an array type", "", "unfixable", statements[0][2]),
        Diagnostic("parse_error", 6, "Failed to parse", "", "unfixable", statements[1][2]),
        Diagnostic("truncate", 8, "TRUNCATE is not supported in DSQL.", "Use DELETE", "unfixable", statements[2][2]),
        Diagnostic("parse_error", 10, "Failed to parse", "", "unfixable", statements[3][2]),
    ]
    merged, new = lint_findings(diags, catalog)
    assert [d["rule"] for d in merged[0].details["dsql_lint"]] == ["array_type"]
    assert [d["rule"] for d in merged[1].details["dsql_lint"]] == ["parse_error"]
    assert [(f.code, f.severity.value) for f in new] == [("lint.truncate", "blocker"),
                                                         ("lint_parse_error", "warning")]
    assert "DO $$" in new[1].message


# --- on the source ---------------------------------------------------------------------------


def test_the_awkward_schema_gets_every_finding_with_its_severity(awkward_db):
    with _conn(awkward_db) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")  # the audit only reads it
        conn.execute("INSERT INTO legacy.audit_log SELECT now(), 'bulk' FROM generate_series(1, 3500)")
        report = run_audit(conn, schemas=["legacy"])
    got = {(f.code, f.object): f.severity.value for f in report.findings}
    missing = {k: v for k, v in EXPECTED.items() if k not in got}
    assert not missing, f"missing findings: {missing}"
    wrong = {k: (got[k], v) for k, v in EXPECTED.items() if got[k] != v}
    assert not wrong, f"wrong severities (got, expected): {wrong}"
    assert report.find("procedure", "legacy.close_account(IN id bigint)").severity is Severity.BLOCKER
    assert report.by_code("database_collation")[0].severity is Severity.MUST_CHANGE
    assert report.exit_code == 1

    # the trigger says what it does, and hands over its invariant
    balance = report.find("trigger_balance", "legacy.entries.entries_apply")
    assert "balance += NEW.amount" in balance.message
    assert balance.details["invariant"]["kind"] == "balance_equals_sum_of_entries"
    assert [i.name for i in report.invariants] == ["balance_equals_sum_of_entries:legacy.accounts.balance"]
    assert "sets opened_at" in report.find("trigger", "legacy.accounts.accounts_stamp").message

    # statement level: dsql-lint confirmed what it could parse, and what it could not parse is
    # covered by a catalog check rather than dropped
    assert "statement" in report.checks["levels"] and "parse_error" in report.checks["lint"]["rules"]
    rules = lambda code, obj: {d["rule"] for d in report.find(code, obj).details.get("dsql_lint", [])}  # noqa: E731
    assert "unsupported_create_trigger" in rules("trigger_balance", "legacy.entries.entries_apply")
    assert rules("unlogged_table", "legacy.scratch") == {"parse_error"}
    assert rules("rule", "legacy.audit_log.audit_log_no_delete") == {"parse_error"}
    assert rules("exclusion_constraint", "legacy.bookings.bookings_room_during_excl") == {"parse_error"}
    assert "parse_error" in rules("procedure", "legacy.close_account(IN id bigint)")
    assert not report.by_code("lint_parse_error"), report.by_code("lint_parse_error")

    # collation: the sampled key values really sort differently
    order = report.find("collation_key_order", "legacy.accounts.code")
    assert order.details["source_order"] == ["a", "ä", "B", "Z"]
    assert order.details["c_order"] == ["B", "Z", "a", "ä"]

    # workload: the 3,500-row INSERT
    bulk = [f for f in report.by_code("workload_rows") if "audit_log" in f.details["query"]]
    assert bulk and bulk[0].details["rows_per_call"] == 3500 and bulk[0].severity is Severity.MUST_CHANGE

    # the same schema gives the same fingerprint
    with _conn(awkward_db) as conn:
        assert read_catalog(conn, ["legacy"]).fingerprint() == report.source_fingerprint


def test_a_data_scan_finds_values_dsql_refuses(source_db):
    with _conn(source_db) as conn:
        conn.execute(AWKWARD)
        conn.execute(AWKWARD_DATA)
        conn.execute("CREATE TABLE legacy.docs (doc_id bigint PRIMARY KEY, body jsonb, blob text, "
                     "label text UNIQUE)")
        big_json = json.dumps({"x": "j" * (MiB + 10)})
        conn.execute("INSERT INTO legacy.docs VALUES (1, %s, %s, 'ok'), (2, NULL, 'small', %s)",
                     (big_json, "b" * (MiB + 10), "k" * 1500))
        conn.execute("INSERT INTO legacy.docs SELECT g, NULL, 'x', NULL FROM generate_series(3, 60) g")
        full = run_audit(conn, schemas=["legacy"], options=AuditOptions(scan="full", chunk_rows=7, lint=False,
                                                                        workload=False))
        sample = run_audit(conn, schemas=["legacy"], options=AuditOptions(scan="sample", sample_rows=5000,
                                                                          lint=False, workload=False))
    for report in (full, sample):
        got = {(f.code, f.object): f for f in report.findings if f.level == "data"}
        assert got[("json_too_large", "legacy.docs.body")].severity is Severity.BLOCKER
        assert got[("value_too_large", "legacy.docs.blob")].details["values"] == 1
        assert got[("row_too_large", "legacy.docs")].details["rows"] == 1
        assert got[("index_key_too_large", "legacy.docs_label_key")].details["max_bytes"] == 1500
        assert got[("numeric_unfit", "legacy.fx.spread")].severity is Severity.BLOCKER
        exceeds = got[("numeric_exceeds_dsql_default", "legacy.fx.rate")]
        assert exceeds.details["profile"]["max_scale"] == 10
        assert exceeds.details["profile"]["max_integer_digits"] == 14
        # the plain-numeric finding now names the precision the plan will use
        assert report.find("plain_numeric", "legacy.fx.rate").details["planned_type"] == "numeric(38,10)"
    assert full.checks["scan"]["chunks"] > 10  # 60 docs in chunks of 7, and the other tables


def test_findings_are_stored_with_the_run_in_the_control_schema(awkward_db, target_db):
    with _conn(awkward_db) as conn:
        report = run_audit(conn, schemas=["legacy"], options=AuditOptions(lint=False, workload=False))
    from reconcile.connections import connect
    from reconcile.config import PostgresEndpoint
    from reconcile.budget import Budget

    with connect(PostgresEndpoint("target", target_db)) as target:
        assert store_report(target, report, budget=Budget(max_rows=20, fraction=0.5)) == len(report.findings)
        assert store_report(target, report) == len(report.findings)  # rerun: nothing duplicated
        run = target.execute("SELECT source_fingerprint, blockers, exit_code, started_at FROM reconcile.audit_runs "
                             "WHERE run_id = %s", (report.run_id,)).fetchone()
        assert run[:3] == (report.source_fingerprint, report.counts["blocker"], 1) and run[3] == report.started_at
        stored = target.execute("SELECT count(*), count(DISTINCT finding_id) FROM reconcile.audit_findings "
                                "WHERE run_id = %s", (report.run_id,)).fetchone()
        assert stored == (len(report.findings), len({f.id for f in report.findings}))
        spec = target.execute("SELECT spec FROM reconcile.invariants").fetchone()[0]
        assert json.loads(spec)["accounts"] == "legacy.accounts"


def test_reports_render_as_markdown_and_html(awkward_db, tmp_path):
    with _conn(awkward_db) as conn:
        report = run_audit(conn, schemas=["legacy"], options=AuditOptions(lint=False, workload=False))
    md = render_markdown(report)
    assert "## blocker" in md and "`legacy.entries.entries_apply`" in md and report.source_fingerprint in md
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>") and 'class="blocker"' in page and "&lt;" not in report.source


# --- the command line on the demo ledger -----------------------------------------------------


def test_audit_command_on_the_demo_ledger(source_db, target_db, tmp_path):
    with _conn(source_db) as conn:
        seed(conn, accounts=40, transactions=150)
    config = write_config(tmp_path / "reconcile.toml", source_db, target_db)
    runner = CliRunner()
    result = runner.invoke(audit_cmd.app, ["--config", str(config), "--format", "json", "--scan-data",
                                           "--sample", "500", "--report", str(tmp_path / "audit.md")])
    assert result.exit_code == 1, result.output  # the balance trigger is a blocker
    data = json.loads(result.stdout)
    ids = {f["id"]: f for f in data["findings"]}
    assert ids["trigger_balance:ledger.entries.entries_apply_balance"]["severity"] == "blocker"
    assert ids["serial:ledger.journal.txn_id"]["message"].startswith("ledger.journal.txn_id is BIGSERIAL")
    assert ids["serial:ledger.entries.entry_id"]["severity"] == "must-change"
    assert {i for i in ids if i.startswith("foreign_key:")} == {
        "foreign_key:ledger.journal.journal_reverses_txn_id_fkey", "foreign_key:ledger.entries.entries_txn_id_fkey",
        "foreign_key:ledger.entries.entries_account_id_fkey"}
    fx = ids["plain_numeric:ledger.journal.fx_rate"]
    assert fx["severity"] == "must-change" and fx["details"]["profile"]["max_scale"] == 10
    assert ids["collation_key_order:ledger.accounts.account_no"]["severity"] == "warning"
    assert data["invariants"][0]["accounts"] == "ledger.accounts"
    assert (tmp_path / "audit.md").read_text().startswith("# DSQL migration audit")
    with _conn(target_db) as conn:
        assert conn.execute("SELECT count(*) FROM reconcile.audit_runs WHERE run_id = %s",
                            (uuid.UUID(data["run_id"]),)).fetchone()[0] == 1

    table = runner.invoke(audit_cmd.app, ["--config", str(config), "--no-store", "--no-workload"])
    assert table.exit_code == 1
    for needle in ("trigger_balance", "ledger.journal.txn_id", "entries_account_id_fkey", "ledger.journal.fx_rate",
                   "BLOCKED"):
        assert needle in table.stdout

    bad = runner.invoke(audit_cmd.app, ["--config", str(config), "--full"])
    assert bad.exit_code == 2 and "--scan-data" in bad.output


def test_audit_exits_0_without_a_blocker(source_db, target_db, tmp_path):
    with _conn(source_db) as conn:
        conn.execute("CREATE SCHEMA clean; CREATE TABLE clean.items (item_id bigint PRIMARY KEY, "
                     "price numeric(12,2) NOT NULL, label varchar(40))")
    config = write_config(tmp_path / "reconcile.toml", source_db, target_db, [("clean.items", ["item_id"])])
    result = CliRunner().invoke(audit_cmd.app, ["--config", str(config), "--format", "json", "--no-workload"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["counts"]["blocker"] == 0 and data["exit_code"] == 0
    assert {f["code"] for f in data["findings"]} <= {"database_collation", "inline_keys", "monitoring_extension"}


# --- accuracy ----------------------------------------------------------------------------------


def test_the_workload_check_reads_only_and_never_creates_pg_stat_statements(source_db):
    with _conn(source_db) as conn:
        seed(conn, accounts=10, transactions=20)
        before = conn.execute("SELECT extname FROM pg_extension ORDER BY 1").fetchall()
        first = run_audit(conn, schemas=["ledger"], options=AuditOptions(lint=False))
        assert conn.execute("SELECT extname FROM pg_extension ORDER BY 1").fetchall() == before
        second = run_audit(conn, schemas=["ledger"], options=AuditOptions(lint=False))
        dbname = conn.info.dbname
    assert first.source_fingerprint == second.source_fingerprint
    assert {f.id for f in first.findings} == {f.id for f in second.findings}  # the next audit does not differ
    (missing,) = first.by_code("workload_unavailable")
    assert missing.message.startswith(f"pg_stat_statements is not installed in database {dbname}")
    assert "CREATE EXTENSION pg_stat_statements" in missing.fix and missing.details["library_loaded"] is True
    assert "workload" not in first.checks["levels"]


def test_a_never_analysed_table_gets_no_negative_size(source_db):
    with _conn(source_db) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute("CREATE SCHEMA s")
        conn.execute("CREATE TABLE s.fresh (id bigint PRIMARY KEY, v text) WITH (autovacuum_enabled = false)")
        conn.execute("INSERT INTO s.fresh SELECT g, repeat('x', 200) FROM generate_series(1, 3500) g")
        assert conn.execute("SELECT reltuples FROM pg_class WHERE oid = 's.fresh'::regclass").fetchone() == (-1.0,)
        report = run_audit(conn, schemas=["s"], options=AuditOptions(lint=False))
    (bulk,) = [f for f in report.by_code("workload_rows") if "s.fresh" in f.details["query"]]
    assert bulk.details["rows_per_call"] == 3500
    assert bulk.details["estimated_bytes_per_call"] is None  # unknown, not negative
    assert "MiB" not in bulk.message and "-" not in bulk.message.split("modifies", 1)[1]


def test_values_not_fitting_numeric_18_6_are_counted_exactly(source_db):
    with _conn(source_db) as conn:
        conn.execute("CREATE SCHEMA s")
        conn.execute("CREATE TABLE s.rates (id int PRIMARY KEY, rate numeric)")
        # 2,000 values of scale 8: 1,643 need the 7th decimal, 357 end in zeros and fit numeric(18,6) exactly
        conn.execute("INSERT INTO s.rates SELECT g, CASE WHEN g <= 1643 THEN (g + 0.0000001)::numeric(20,8) "
                     "ELSE g::numeric(20,8) END FROM generate_series(1, 2000) g")
        full = run_audit(conn, schemas=["s"], options=AuditOptions(scan="full", lint=False, workload=False))
        sample = run_audit(conn, schemas=["s"], options=AuditOptions(scan="sample", sample_rows=500, lint=False,
                                                                     workload=False))
    for report in (full, sample):
        f = report.find("numeric_exceeds_dsql_default", "s.rates.rate")
        assert f.message.startswith("1,643 values of s.rates.rate do not fit numeric(18,6) exactly"), f.message
        assert f.details["values"] == 1643
        assert f.message.endswith("counted over every row)")


def test_constraints_are_counted_once_and_a_trigger_function_is_its_own_finding(source_db):
    from reconcile.schema import build_plan

    with _conn(source_db) as conn:
        seed(conn, accounts=10, transactions=20)
        report = run_audit(conn, schemas=["ledger"], options=AuditOptions(workload=False))
        catalog = read_catalog(conn, ["ledger"])
    (inline,) = report.by_code("inline_keys")
    # three primary keys and two unique constraints, each flagged by dsql-lint under two rules
    assert inline.message.startswith("5 primary key/unique constraints are added by ALTER TABLE")
    assert len(inline.details["dsql_lint"]) == 10
    fn = report.find("procedural_function", "ledger.apply_entry_balance()")
    assert fn is not None and fn.severity is Severity.BLOCKER
    assert fn.details["triggers"] == ["ledger.entries.entries_apply_balance"]
    assert "unsupported_create_function_non_sql" in {d["rule"] for d in fn.details["dsql_lint"]}
    assert report.find("trigger_balance", "ledger.entries.entries_apply_balance") is not None
    plan = build_plan(catalog, dialect="postgres", findings=report.findings, invariants=report.invariants)
    left = [line for line in plan.render().splitlines() if line.startswith("--   ")]
    assert "--   function ledger.apply_entry_balance(): procedural_function:ledger.apply_entry_balance()" in left
