"""Plant known discrepancies on the TARGET of the demo ledger, so a diff has something to find.

``reconcile demo --inject`` calls :func:`plant_discrepancies` after the replay has caught up and
stopped, before the diff. Four kinds, chosen deterministically from ``seed``:

* ``missing_in_target``: one entry row deleted;
* ``extra_in_target``: one journal row that exists only on the target (no entries);
* ``changed`` (amount): one entry's amount set to the source's amount + 0.01;
* ``balance``: one account's stored balance set to the source's balance + 100.00.

Values are computed from the source, so running it twice plants the same state (idempotent): a
diff afterwards finds exactly these rows, plus the balance findings they imply (the accounts and
entries no longer agree on the target). All target writes are one transaction through
:func:`reconcile.occ.run_with_retry`, four rows, well within the budget.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from reconcile.diff.errors import DiffError
from reconcile.occ import run_with_retry

EXTRA_TXN_ID = 9_000_000_000_000
"""Journal id of the planted target-only row (far above any real id)."""


def _table(config: Any, role: str, default: str) -> Any:
    specs = config.tables_with_role(role)
    if specs:
        return specs[0]
    return config.table(default)


def plant_discrepancies(target_conn: psycopg.Connection, config: Any, *, seed: int = 0) -> list[dict]:
    """Plant one discrepancy of each kind on the target; returns what was planted.

    Args:
        target_conn: an autocommit connection to the target.
        config: the configuration (source endpoint and the ledger tables' roles).
        seed: picks which rows are touched.

    Returns:
        One dict per planted discrepancy: ``{"kind", "table", "key", "description"}``.

    Raises:
        DiffError: the ledger has too few rows to plant into.
    """
    from reconcile.connections import connect

    accounts = _table(config, "accounts", "ledger.accounts")
    journal = _table(config, "transactions", "ledger.journal")
    entries = _table(config, "entries", "ledger.entries")
    a_id, bal = sql.Identifier(accounts.account_column), sql.Identifier(accounts.balance_column)
    e_key, amt = sql.Identifier(entries.key[0]), sql.Identifier(entries.amount_column)
    j_key = sql.Identifier(journal.key[0])
    ta, tj, te = (sql.Identifier(t.schema, t.table) for t in (accounts, journal, entries))
    rng = random.Random(seed)
    with connect(config.source) as src:
        entry_ids = [r[0] for r in src.execute(sql.SQL("SELECT {k} FROM {t} ORDER BY {k} LIMIT 2000").format(
            k=e_key, t=te)).fetchall()]
        account_ids = [r[0] for r in src.execute(sql.SQL("SELECT {k} FROM {t} ORDER BY {k} LIMIT 2000").format(
            k=a_id, t=ta)).fetchall()]
        if len(entry_ids) < 2 or not account_ids:
            raise DiffError("the source ledger has too few rows to plant discrepancies; seed it first (reconcile demo)")
        missing_id, changed_id = rng.sample(entry_ids, 2)
        # An account not touched by the two entries above keeps the findings apart.
        touched = {r[0] for r in src.execute(sql.SQL("SELECT {a} FROM {t} WHERE {k} IN (%s, %s)").format(
            a=sql.Identifier(entries.account_column), t=te, k=e_key), (missing_id, changed_id)).fetchall()}
        candidates = [a for a in account_ids if a not in touched] or account_ids
        account = rng.choice(candidates)
        (amount,) = src.execute(sql.SQL("SELECT {a} FROM {t} WHERE {k} = %s").format(a=amt, t=te, k=e_key),
                                (changed_id,)).fetchone()
        (balance,) = src.execute(sql.SQL("SELECT {b} FROM {t} WHERE {k} = %s").format(b=bal, t=ta, k=a_id),
                                 (account,)).fetchone()
        template = src.execute(sql.SQL("SELECT * FROM {t} ORDER BY {k} LIMIT 1").format(t=tj, k=j_key))
        names = [d.name for d in template.description]
        jrow = dict(zip(names, template.fetchone()))
    new_amount = Decimal(amount) + Decimal("0.01")
    if new_amount == 0:
        new_amount += Decimal("0.01")
    new_balance = Decimal(balance) + Decimal("100.00")
    jrow[journal.key[0]] = EXTRA_TXN_ID
    if "idempotency_key" in jrow:
        jrow["idempotency_key"] = f"planted-extra-{EXTRA_TXN_ID}"
    if "memo" in jrow:
        jrow["memo"] = "planted by reconcile diff inject"
    if "reverses_txn_id" in jrow:
        jrow["reverses_txn_id"] = None

    def write(c: psycopg.Connection) -> None:
        c.execute(sql.SQL("DELETE FROM {t} WHERE {k} = %s").format(t=te, k=e_key), (missing_id,))
        c.execute(sql.SQL("UPDATE {t} SET {a} = %s WHERE {k} = %s").format(t=te, a=amt, k=e_key), (new_amount, changed_id))
        c.execute(sql.SQL("UPDATE {t} SET {b} = %s WHERE {k} = %s").format(t=ta, b=bal, k=a_id), (new_balance, account))
        c.execute(sql.SQL("INSERT INTO {t} ({cols}) VALUES ({vals}) ON CONFLICT DO NOTHING").format(
            t=tj, cols=sql.SQL(", ").join(map(sql.Identifier, jrow)), vals=sql.SQL(", ").join(sql.Placeholder() * len(jrow))),
            list(jrow.values()))

    run_with_retry(target_conn, write, label="plant discrepancies")
    return [
        {"kind": "missing_in_target", "table": entries.name, "key": [missing_id],
         "description": f"entry {missing_id} deleted on the target"},
        {"kind": "extra_in_target", "table": journal.name, "key": [EXTRA_TXN_ID],
         "description": f"journal row {EXTRA_TXN_ID} exists only on the target"},
        {"kind": "changed", "table": entries.name, "key": [changed_id], "columns": [entries.amount_column],
         "description": f"entry {changed_id} amount {amount} -> {new_amount} on the target"},
        {"kind": "changed", "table": accounts.name, "key": [account], "columns": [accounts.balance_column],
         "description": f"account {account} balance {balance} -> {new_balance} on the target (balance no longer matches)"},
    ]
