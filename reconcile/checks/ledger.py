"""The ledger invariants, as expectations that run on the source and on the target alike.

Tables and columns come from the configured ledger roles (``[[tables]]`` with ``role`` accounts,
transactions, entries and their ``*_column`` settings), never from the demo's names. Each invariant
is the one a double-entry ledger lives by:

* ``entries_sum_to_zero``: a journal transaction's entries sum to zero in each currency;
* ``entries_have_transaction`` / ``entries_have_account``: no entry without its journal transaction
  or its account (foreign keys are not enforced everywhere on the target);
* ``balance_equals_sum_of_entries``: an account's stored balance is the sum of its entries (what the
  source's balance trigger kept true, which DSQL cannot run);
* ``no_forbidden_negative_balance``: no balance below zero, except on accounts whose
  ``[checks] negative_balance_exempt_column`` holds an exempt value (the demo: ``kind = 'equity'``);
* ``entry_currency_matches_account``: an entry's currency is its account's;
* ``idempotency_key_unique``: the transactions table's idempotency key
  (``[checks] idempotency_column``) is unique and never null (GX column expectations).

SQL-shaped invariants are ``UnexpectedRowsExpectation`` queries (they fail when they return a row);
every query reads the checked table through ``{batch}``.
"""

from __future__ import annotations

from reconcile.checks.spec import Check, ident, literal, qualified
from reconcile.config import Config, TableSpec

__all__ = ["SUITE", "ledger_checks"]

SUITE = "ledger"


def _col(name: str) -> str:
    return ident(name)


def ledger_checks(config: Config) -> list[Check]:
    """The ledger invariants for the configured roles (an invariant whose roles are missing is left out)."""
    settings = config.checks
    accounts = _first(config.tables_with_role("accounts"))
    journal = _first(config.tables_with_role("transactions"))
    checks: list[Check] = []
    for entries in config.tables_with_role("entries"):
        checks += _entry_checks(entries, accounts, journal)
    if accounts is not None:
        for entries in config.tables_with_role("entries")[:1]:
            checks.append(_balance_check(accounts, entries))
        if not settings.allow_negative_balances:
            checks.append(_negative_check(accounts, settings.negative_balance_exempt_column,
                                          settings.negative_balance_exempt_values))
    if journal is not None and settings.idempotency_column:
        column = settings.idempotency_column
        for cls, what in (("ExpectColumnValuesToBeUnique", "two journal transactions share an idempotency key"),
                          ("ExpectColumnValuesToNotBeNull", "a journal transaction has no idempotency key")):
            checks.append(Check(SUITE, f"idempotency_key_{'unique' if 'Unique' in cls else 'not_null'}", cls,
                                {"column": column}, f"{what} ({journal.name}.{column})", table=journal.name))
    return checks


def _first(tables: tuple[TableSpec, ...]) -> TableSpec | None:
    return tables[0] if tables else None


def _entry_checks(entries: TableSpec, accounts: TableSpec | None, journal: TableSpec | None) -> list[Check]:
    e_txn, e_acc = _col(entries.transaction_column), _col(entries.account_column)
    e_amt, e_cur = _col(entries.amount_column), _col(entries.currency_column)
    checks = [Check(
        SUITE, "entries_sum_to_zero", "UnexpectedRowsExpectation",
        {"unexpected_rows_query": f"SELECT e.{e_txn}, e.{e_cur}, sum(e.{e_amt}) AS total FROM (SELECT * FROM {{batch}}) AS e "
                                  f"GROUP BY e.{e_txn}, e.{e_cur} HAVING sum(e.{e_amt}) <> 0"},
        f"a journal transaction's entries in {entries.name} do not sum to zero in one currency",
        table=entries.name)]
    if journal is not None:
        j = qualified(journal.name)
        j_txn = _col(journal.transaction_column)
        checks.append(Check(
            SUITE, "entries_have_transaction", "UnexpectedRowsExpectation",
            {"unexpected_rows_query": f"SELECT e.* FROM (SELECT * FROM {{batch}}) AS e WHERE e.{e_txn} IS NULL OR NOT EXISTS "
                                      f"(SELECT 1 FROM {j} AS j WHERE j.{j_txn} = e.{e_txn})"},
            f"an entry of {entries.name} has no journal transaction in {journal.name}", table=entries.name))
    if accounts is not None:
        a = qualified(accounts.name)
        a_acc, a_cur = _col(accounts.account_column), _col(accounts.currency_column)
        checks.append(Check(
            SUITE, "entries_have_account", "UnexpectedRowsExpectation",
            {"unexpected_rows_query": f"SELECT e.* FROM (SELECT * FROM {{batch}}) AS e WHERE e.{e_acc} IS NULL OR NOT EXISTS "
                                      f"(SELECT 1 FROM {a} AS a WHERE a.{a_acc} = e.{e_acc})"},
            f"an entry of {entries.name} has no account in {accounts.name}", table=entries.name))
        checks.append(Check(
            SUITE, "entry_currency_matches_account", "UnexpectedRowsExpectation",
            {"unexpected_rows_query": f"SELECT e.*, a.{a_cur} AS account_currency FROM (SELECT * FROM {{batch}}) AS e "
                                      f"JOIN {a} AS a ON a.{a_acc} = e.{e_acc} WHERE e.{e_cur} <> a.{a_cur}"},
            f"an entry of {entries.name} is in another currency than its account", table=entries.name))
    return checks


def balance_query(accounts: str, account_key: str, balance: str, entries: str, entry_account: str,
                  amount: str) -> str:
    """Accounts whose stored balance differs from the sum of their entries (none: the sum is 0)."""
    a_key, bal = _col(account_key), _col(balance)
    e_acc, amt = _col(entry_account), _col(amount)
    return (f"SELECT a.{a_key}, a.{bal}, coalesce(s.total, 0) AS sum_of_entries FROM (SELECT * FROM {{batch}}) AS a "
            f"LEFT JOIN (SELECT {e_acc} AS account, sum({amt}) AS total FROM {qualified(entries)} "
            f"GROUP BY {e_acc}) AS s ON s.account = a.{a_key} "
            f"WHERE a.{bal} IS DISTINCT FROM coalesce(s.total, 0)")


def _balance_check(accounts: TableSpec, entries: TableSpec) -> Check:
    query = balance_query(accounts.name, accounts.account_column, accounts.balance_column, entries.name,
                          entries.account_column, entries.amount_column)
    return Check(SUITE, "balance_equals_sum_of_entries", "UnexpectedRowsExpectation",
                 {"unexpected_rows_query": query},
                 f"an account's {accounts.balance_column} in {accounts.name} differs from the sum of its "
                 f"entries in {entries.name}", table=accounts.name)


def _negative_check(accounts: TableSpec, exempt_column: str, exempt_values: tuple[str, ...]) -> Check:
    bal = _col(accounts.balance_column)
    where = f"a.{bal} < 0"
    if exempt_column and exempt_values:
        values = ", ".join(literal(v) for v in exempt_values)
        where += f" AND (a.{_col(exempt_column)} IS NULL OR a.{_col(exempt_column)} NOT IN ({values}))"
        allowed = f" (allowed where {exempt_column} is {', '.join(exempt_values)})"
    else:
        allowed = ""
    return Check(SUITE, "no_forbidden_negative_balance", "UnexpectedRowsExpectation",
                 {"unexpected_rows_query": f"SELECT a.* FROM (SELECT * FROM {{batch}}) AS a WHERE {where}"},
                 f"an account in {accounts.name} has a negative {accounts.balance_column}{allowed}",
                 table=accounts.name)
