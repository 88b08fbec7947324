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

Every invariant is always listed. One that does not fit the configured ledger (no table with the role
it needs, a role column switched off with ``""`` such as a single-currency ledger's
``currency_column``, an optional ``[checks]`` role left unset) carries its reason in
``Check.not_applicable``: it is never run, and reported "not applicable", neither passed nor failed.
Without a currency column the zero-sum invariant groups by transaction alone.
"""

from __future__ import annotations

from reconcile.checks.spec import ROW_WISE, Check, Chunking, ident, literal, qualified
from reconcile.checks.settings import CheckSettings
from reconcile.config import Config, TableSpec

__all__ = ["NAMES", "SUITE", "ledger_checks"]

SUITE = "ledger"
NAMES = ("entries_sum_to_zero", "entries_have_transaction", "entries_have_account", "entry_currency_matches_account",
         "balance_equals_sum_of_entries", "no_forbidden_negative_balance", "idempotency_key_unique",
         "idempotency_key_not_null")
"""Every ledger invariant, in suite order."""

_DESCRIPTIONS = {
    "entries_sum_to_zero": "a journal transaction's entries do not sum to zero (in one currency)",
    "entries_have_transaction": "an entry has no journal transaction",
    "entries_have_account": "an entry has no account",
    "entry_currency_matches_account": "an entry is in another currency than its account",
    "balance_equals_sum_of_entries": "an account's stored balance differs from the sum of its entries",
    "no_forbidden_negative_balance": "an account has a forbidden negative balance",
    "idempotency_key_unique": "two journal transactions share an idempotency key",
    "idempotency_key_not_null": "a journal transaction has no idempotency key",
}


def _col(name: str) -> str:
    return ident(name)


def _no_role(role: str) -> str:
    return f"no [[tables]] entry has role {role}"


def _off(table: TableSpec, setting: str, meaning: str) -> str:
    return f'{table.name} has no {meaning} ({setting} = "")'


def _na(name: str, reason: str, table: TableSpec | None = None) -> Check:
    return Check(SUITE, name, "UnexpectedRowsExpectation", {}, _DESCRIPTIONS[name],
                 table=table.name if table else None, not_applicable=reason)


def ledger_checks(config: Config) -> list[Check]:
    """Every ledger invariant for the configured roles; one that does not apply carries the reason why."""
    settings = config.checks
    accounts = _first(config.tables_with_role("accounts"))
    journal = _first(config.tables_with_role("transactions"))
    entries_tables = config.tables_with_role("entries")
    checks: list[Check] = []
    if not entries_tables:
        checks += [_na(n, _no_role("entries")) for n in NAMES[:4]]
    for entries in entries_tables:
        checks += _entry_checks(entries, accounts, journal)
    entries = _first(entries_tables)
    if accounts is None:
        checks += [_na(n, _no_role("accounts")) for n in NAMES[4:6]]
    elif not accounts.column("balance_column"):
        reason = f'{accounts.name} keeps no stored balance (balance_column = "")'
        checks += [_na(n, reason, accounts) for n in NAMES[4:6]]
    else:
        checks.append(_balance_check(accounts, entries) if entries is not None
                      else _na("balance_equals_sum_of_entries", _no_role("entries"), accounts))
        checks.append(_negative_check(accounts, settings))
    checks += _idempotency_checks(journal, settings.idempotency_column)
    return checks


def _first(tables: tuple[TableSpec, ...]) -> TableSpec | None:
    return tables[0] if tables else None


def _entry_checks(entries: TableSpec, accounts: TableSpec | None, journal: TableSpec | None) -> list[Check]:
    txn, acc = entries.column("transaction_column"), _col(entries.account_column or "")
    amt, cur = _col(entries.amount_column or ""), entries.column("currency_column")
    checks = []
    if txn is None:
        reason = _off(entries, "transaction_column", "transaction column")
        checks += [_na("entries_sum_to_zero", reason, entries), _na("entries_have_transaction", reason, entries)]
    else:
        e_txn = _col(txn)
        groups = f"e.{e_txn}, e.{_col(cur)}" if cur else f"e.{e_txn}"
        in_currency = " in one currency" if cur else ""
        checks.append(Check(
            SUITE, "entries_sum_to_zero", "UnexpectedRowsExpectation",
            {"unexpected_rows_query": f"SELECT {groups}, sum(e.{amt}) AS total FROM (SELECT * FROM {{batch}}) AS e "
                                      f"GROUP BY {groups} HAVING sum(e.{amt}) <> 0"},
            f"a journal transaction's entries in {entries.name} do not sum to zero{in_currency}", table=entries.name,
            chunking=Chunking(txn)))  # a transaction's entries never straddle two chunks
        if journal is None:
            checks.append(_na("entries_have_transaction", _no_role("transactions"), entries))
        else:
            j, j_txn = qualified(journal.name), _col(journal.transaction_column or "")
            checks.append(Check(
                SUITE, "entries_have_transaction", "UnexpectedRowsExpectation",
                {"unexpected_rows_query": f"SELECT e.* FROM (SELECT * FROM {{batch}}) AS e WHERE e.{e_txn} IS NULL OR "
                                          f"NOT EXISTS (SELECT 1 FROM {j} AS j WHERE j.{j_txn} = e.{e_txn})"},
                f"an entry of {entries.name} has no journal transaction in {journal.name}", table=entries.name,
                chunking=ROW_WISE))
    if accounts is None:
        checks += [_na("entries_have_account", _no_role("accounts"), entries),
                   _na("entry_currency_matches_account", _no_role("accounts"), entries)]
        return checks
    a, a_acc = qualified(accounts.name), _col(accounts.account_column or "")
    checks.append(Check(
        SUITE, "entries_have_account", "UnexpectedRowsExpectation",
        {"unexpected_rows_query": f"SELECT e.* FROM (SELECT * FROM {{batch}}) AS e WHERE e.{acc} IS NULL OR NOT EXISTS "
                                  f"(SELECT 1 FROM {a} AS a WHERE a.{a_acc} = e.{acc})"},
        f"an entry of {entries.name} has no account in {accounts.name}", table=entries.name, chunking=ROW_WISE))
    a_cur = accounts.column("currency_column")
    if cur is None or a_cur is None:
        off = entries if cur is None else accounts
        checks.append(_na("entry_currency_matches_account", _off(off, "currency_column", "currency column"), entries))
    else:
        e_cur, a_cur_q = _col(cur), _col(a_cur)
        checks.append(Check(
            SUITE, "entry_currency_matches_account", "UnexpectedRowsExpectation",
            {"unexpected_rows_query": f"SELECT e.*, a.{a_cur_q} AS account_currency FROM (SELECT * FROM {{batch}}) AS e "
                                      f"JOIN {a} AS a ON a.{a_acc} = e.{acc} WHERE e.{e_cur} <> a.{a_cur_q}"},
            f"an entry of {entries.name} is in another currency than its account", table=entries.name,
            chunking=ROW_WISE))
    return checks


def _idempotency_checks(journal: TableSpec | None, column: str) -> list[Check]:
    names = ("idempotency_key_unique", "idempotency_key_not_null")
    if journal is None:
        return [_na(n, _no_role("transactions")) for n in names]
    if not column:
        return [_na(n, "[checks] idempotency_column is not set (name the transactions table's idempotency key "
                       "column to check it)", journal) for n in names]
    # uniqueness splits on the key column itself (equal keys share a chunk); not-null anywhere
    return [Check(SUITE, name, cls, {"column": column}, f"{_DESCRIPTIONS[name]} ({journal.name}.{column})",
                  table=journal.name, chunking=chunking)
            for name, cls, chunking in zip(names, ("ExpectColumnValuesToBeUnique", "ExpectColumnValuesToNotBeNull"),
                                           (Chunking(column), ROW_WISE))]


def balance_query(accounts: str, account_key: str, balance: str, entries: str, entry_account: str,
                  amount: str) -> str:
    """Accounts whose stored balance differs from the sum of their entries (none: the sum is 0).

    The entries' sub-query is restricted by ``{chunk}`` (replaced by the chunk's range of the entries'
    account column, ``TRUE`` when run whole: :func:`balance_chunking`), so one chunk sums only its accounts'
    entries instead of grouping the whole entries table.
    """
    a_key, bal = _col(account_key), _col(balance)
    e_acc, amt = _col(entry_account), _col(amount)
    return (f"SELECT a.{a_key}, a.{bal}, coalesce(s.total, 0) AS sum_of_entries FROM (SELECT * FROM {{batch}}) AS a "
            f"LEFT JOIN (SELECT {e_acc} AS account, sum({amt}) AS total FROM {qualified(entries)} "
            f"WHERE {{chunk}} GROUP BY {e_acc}) AS s ON s.account = a.{a_key} "
            f"WHERE a.{bal} IS DISTINCT FROM coalesce(s.total, 0)")


def balance_chunking(account_key: str, entries: str, entry_account: str) -> Chunking:
    """Split the balance invariant on account ranges taken from the entries' account column (the big side):
    the accounts batch and the entries sub-query get the same range, so an account meets all its entries."""
    return Chunking(account_key, keys=(entries, entry_account), inner=entry_account)


def _balance_check(accounts: TableSpec, entries: TableSpec) -> Check:
    query = balance_query(accounts.name, accounts.account_column or "", accounts.balance_column or "", entries.name,
                          entries.account_column or "", entries.amount_column or "")
    return Check(SUITE, "balance_equals_sum_of_entries", "UnexpectedRowsExpectation",
                 {"unexpected_rows_query": query},
                 f"an account's {accounts.balance_column} in {accounts.name} differs from the sum of its "
                 f"entries in {entries.name}", table=accounts.name,
                 chunking=balance_chunking(accounts.account_column or "", entries.name, entries.account_column or ""))


def _negative_check(accounts: TableSpec, settings: CheckSettings) -> Check:
    name = "no_forbidden_negative_balance"
    exempt_column, exempt_values = settings.negative_balance_exempt_column, settings.negative_balance_exempt_values
    if settings.allow_negative_balances:
        return _na(name, "negative balances are allowed ([checks] allow_negative_balances = true)", accounts)
    if settings.allow_negative_balances is None and not exempt_column:
        return _na(name, "which accounts may go below zero is not configured (a double-entry ledger's sign "
                         "convention is not guessed): set [checks] negative_balance_exempt_column and "
                         "negative_balance_exempt_values, or allow_negative_balances = false to forbid every "
                         "negative balance", accounts)
    bal = _col(accounts.balance_column or "")
    where = f"a.{bal} < 0"
    if exempt_column and exempt_values:
        values = ", ".join(literal(v) for v in exempt_values)
        where += f" AND (a.{_col(exempt_column)} IS NULL OR a.{_col(exempt_column)} NOT IN ({values}))"
        allowed = f" (allowed where {exempt_column} is {', '.join(exempt_values)})"
    else:
        allowed = ""
    return Check(SUITE, name, "UnexpectedRowsExpectation",
                 {"unexpected_rows_query": f"SELECT a.* FROM (SELECT * FROM {{batch}}) AS a WHERE {where}"},
                 f"an account in {accounts.name} has a negative {accounts.balance_column}{allowed}",
                 table=accounts.name, chunking=ROW_WISE)
