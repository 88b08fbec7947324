"""DDL of the demo legacy ledger on the source: what a core-banking schema on Aurora PostgreSQL
typically carries, including the features Aurora DSQL refuses.

The schema is ``ledger``; three tables:

* ``ledger.accounts``: one row per account. ``kind`` is ``customer``, ``settlement`` or
  ``equity``. ``balance`` is maintained by a trigger and must never go negative, except on the
  per-currency ``equity`` account (see *Opening balances* below).
* ``ledger.journal``: one row per business transaction (``deposit``, ``transfer``, ``reversal``,
  ``withdrawal``). ``txn_id`` is a ``BIGSERIAL`` (DSQL has no SERIAL types); ``fx_rate`` is a plain
  ``numeric`` holding up to 10 decimals (DSQL turns plain ``numeric`` into ``numeric(18,6)``:
  the money trap a migration audit must flag).
* ``ledger.entries``: two rows per journal transaction, one negative and one positive, in the
  currency of both accounts. ``entry_id`` comes from the explicit sequence ``ledger.entry_id_seq``
  (a column ``DEFAULT nextval(...)``, not identity): the audit then sees both flavours of
  generated keys, a serial (``journal``) and a plain sequence (``entries``).

Legacy features DSQL blocks: the PL/pgSQL function ``ledger.apply_entry_balance()`` and the row
trigger ``entries_apply_balance`` (AFTER INSERT ON entries) that keeps ``accounts.balance`` in step;
the ``BIGSERIAL``; plain ``numeric``; ``en_US`` ordering of the mixed-case and accented
``account_no`` values; plain (non-ASYNC) secondary indexes; a self-referencing foreign key.

Opening balances (the choice, and why): every account's ``balance`` equals the sum of its entries,
exactly, with no stored opening balance. Money enters the system through one opening journal
transaction per currency (kind ``deposit``, memo ``opening balance``) that moves a large amount from
that currency's ``equity`` account to its ``settlement`` account. The equity account therefore has
a negative balance (minus all money ever put in), so the CHECK reads
``balance >= 0 OR kind = 'equity'``; every other account, settlement included, must stay >= 0.
Customer deposits move money from the settlement account to a customer, withdrawals back.

Invariants (checked by :mod:`tests.test_workload` and, later, by the balances stage):
entries of each journal transaction sum to zero per currency; an entry's currency is its account's
currency; ``balance = sum(entries.amount)`` per account; no balance below zero outside equity.

DDL is split in two lists so the seed can bulk-load like ``pg_restore`` does: :data:`TABLES` before
the COPY, :data:`POST_LOAD` (foreign keys, secondary indexes, the trigger) after it. Run in that
order, the two lists give exactly the catalog :func:`create_schema` gives.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

SCHEMA = "ledger"

ACCOUNT_KINDS = ("customer", "settlement", "equity")
JOURNAL_KINDS = ("deposit", "transfer", "reversal", "withdrawal")

TABLES: tuple[sql.SQL, ...] = (
    sql.SQL("CREATE SCHEMA ledger"),
    sql.SQL("""
CREATE TABLE ledger.accounts (
    account_id  bigint        PRIMARY KEY,
    account_no  text          NOT NULL UNIQUE,
    owner_name  text          NOT NULL,
    currency    char(3)       NOT NULL,
    kind        text          NOT NULL CHECK (kind IN ('customer', 'settlement', 'equity')),
    balance     numeric(18,2) NOT NULL DEFAULT 0 CHECK (balance >= 0 OR kind = 'equity'),
    opened_at   timestamptz   NOT NULL,
    updated_at  timestamptz   NOT NULL
)"""),
    sql.SQL("""
CREATE TABLE ledger.journal (
    txn_id           BIGSERIAL    PRIMARY KEY,
    idempotency_key  text         NOT NULL UNIQUE,
    kind             text         NOT NULL
                     CHECK (kind IN ('deposit', 'transfer', 'reversal', 'withdrawal')),
    reverses_txn_id  bigint,
    posted_at        timestamptz  NOT NULL,
    memo             text,
    fx_rate          numeric
)"""),
    sql.SQL("CREATE SEQUENCE ledger.entry_id_seq AS bigint"),
    sql.SQL("""
CREATE TABLE ledger.entries (
    entry_id    bigint        PRIMARY KEY DEFAULT nextval('ledger.entry_id_seq'),
    txn_id      bigint        NOT NULL,
    account_id  bigint        NOT NULL,
    currency    char(3)       NOT NULL,
    amount      numeric(18,2) NOT NULL CHECK (amount <> 0),
    posted_at   timestamptz   NOT NULL
)"""),
    sql.SQL("ALTER SEQUENCE ledger.entry_id_seq OWNED BY ledger.entries.entry_id"),
)

POST_LOAD: tuple[sql.SQL, ...] = (
    sql.SQL("""
ALTER TABLE ledger.journal ADD CONSTRAINT journal_reverses_txn_id_fkey
    FOREIGN KEY (reverses_txn_id) REFERENCES ledger.journal (txn_id)"""),
    sql.SQL("""
ALTER TABLE ledger.entries ADD CONSTRAINT entries_txn_id_fkey
    FOREIGN KEY (txn_id) REFERENCES ledger.journal (txn_id)"""),
    sql.SQL("""
ALTER TABLE ledger.entries ADD CONSTRAINT entries_account_id_fkey
    FOREIGN KEY (account_id) REFERENCES ledger.accounts (account_id)"""),
    sql.SQL("CREATE INDEX entries_account_id_idx ON ledger.entries (account_id)"),
    sql.SQL("CREATE INDEX entries_txn_id_idx ON ledger.entries (txn_id)"),
    sql.SQL("""
CREATE FUNCTION ledger.apply_entry_balance() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ledger.accounts
       SET balance = balance + NEW.amount,
           updated_at = NEW.posted_at
     WHERE account_id = NEW.account_id;
    RETURN NULL;
END
$$"""),
    sql.SQL("""
CREATE TRIGGER entries_apply_balance
    AFTER INSERT ON ledger.entries
    FOR EACH ROW EXECUTE FUNCTION ledger.apply_entry_balance()"""),
)


def schema_exists(conn: psycopg.Connection) -> bool:
    """True when the database already has a ``ledger`` schema."""
    row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (SCHEMA,)).fetchone()
    return row is not None


def drop_schema(conn: psycopg.Connection) -> None:
    """Drop the ``ledger`` schema and everything in it (its data is gone)."""
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))


def create_schema(conn: psycopg.Connection) -> None:
    """Create the empty ledger: tables, then constraints, indexes and the trigger.

    Runs in the caller's transaction if one is open, else in one transaction of its own.
    """
    with conn.transaction():
        for stmt in TABLES + POST_LOAD:
            conn.execute(stmt)
