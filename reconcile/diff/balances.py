"""Balance diff: the money, account by account and currency by currency, on both sides.

What is compared (exact ``Decimal`` throughout, never float):

* ``balance_mismatch``: per account, the source's stored balance vs the target's (and currency);
* ``balance_vs_entries`` (per side): the stored balance vs the sum of the account's entries. The
  rule is configurable SQL (``[diff] balance_sql``) returning ``(account, currency, stored,
  computed)`` per account; the default is the double-entry layout of the demo ledger;
* ``trial_balance`` (per side): entries of each currency must sum to zero;
* ``currency_total``: per currency, the sum of all balances on the source vs the target;
* ``unbalanced_txn`` (per side): journal transactions whose entries do not sum to zero per currency;
* ``daily_total``: per day and currency, the entry count and posted volume (sum of positive
  amounts) on the source vs the target.

Per-side checks read one snapshot of that side (a REPEATABLE READ transaction). Cross-side checks
are lag-aware like row diffs (:mod:`reconcile.diff.lag`): differences are recomputed after the
replay watermark passes a fresh source LSN, and only persistent ones become findings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from reconcile.diff.compare import Finding, jsonable

TABLE = "balances"
"""``Finding.table`` of balance findings."""
UNBALANCED_LIMIT = 100


@dataclass(frozen=True)
class Layout:
    """Where the money lives: the accounts and entries tables and their role columns."""

    accounts: str
    entries: str
    account_id: str
    balance: str
    account_currency: str
    entry_account: str
    amount: str
    entry_currency: str
    entry_txn: str | None
    date_column: str | None
    rule_sql: str | None = None


def layout_of(config: Any) -> Layout | None:
    """The layout from the tables' roles, or None when there is no accounts + entries pair."""
    accounts = config.tables_with_role("accounts")
    entries = config.tables_with_role("entries")
    if not accounts or not entries:
        return None
    a, e = accounts[0], entries[0]
    settings = config.diff
    return Layout(a.name, e.name, a.account_column, a.balance_column, a.currency_column, e.account_column,
                  e.amount_column, e.currency_column, e.transaction_column, getattr(settings, "date_column", "posted_at"),
                  getattr(settings, "balance_sql", None))


def _t(name: str) -> sql.Identifier:
    return sql.Identifier(*name.split(".", 1))


def _i(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _cur(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) else value


def balance_rule(layout: Layout) -> sql.Composable:
    """The per-account rule: (account, currency, stored, computed)."""
    if layout.rule_sql:
        return sql.SQL(layout.rule_sql).format(accounts=_t(layout.accounts), entries=_t(layout.entries))  # type: ignore[arg-type]
    return sql.SQL(
        "SELECT a.{aid} AS account, a.{acur} AS currency, a.{bal} AS stored, coalesce(e.total, 0) AS computed "
        "FROM {accounts} a LEFT JOIN (SELECT {eacc} AS account, sum({amt}) AS total FROM {entries} GROUP BY 1) e "
        "ON e.account = a.{aid}").format(
        aid=_i(layout.account_id), acur=_i(layout.account_currency), bal=_i(layout.balance),
        accounts=_t(layout.accounts), eacc=_i(layout.entry_account), amt=_i(layout.amount), entries=_t(layout.entries))


def _has_column(conn: psycopg.Connection, table: str, column: str | None) -> bool:
    if not column:
        return False
    schema, name = table.split(".", 1)
    return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = "
                        "a.attrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND "
                        "c.relname = %s AND a.attname = %s AND NOT a.attisdropped)", (schema, name, column)).fetchone()[0]


@dataclass
class Snapshot:
    """Everything the balance diff reads from one side, in one snapshot."""

    accounts: dict[Any, tuple[str | None, Decimal, Decimal]] = field(default_factory=dict)
    """account -> (currency, stored balance, sum of entries per the rule)."""
    entry_totals: dict[str, tuple[Decimal, int]] = field(default_factory=dict)
    """currency -> (sum of entries, entry count)."""
    unbalanced: list[tuple[Any, str | None, Decimal]] = field(default_factory=list)
    daily: dict[tuple[str, str | None], tuple[int, Decimal]] = field(default_factory=dict)
    """(day, currency) -> (entry count, volume)."""

    def balance_totals(self) -> dict[str | None, Decimal]:
        out: dict[str | None, Decimal] = {}
        for cur, stored, _ in self.accounts.values():
            out[cur] = out.get(cur, Decimal(0)) + stored
        return out


def read_snapshot(conn: psycopg.Connection, layout: Layout, *, set_isolation: bool = False) -> Snapshot:
    """Read every balance figure of one side in one REPEATABLE READ transaction.

    ``set_isolation`` asks for REPEATABLE READ explicitly (the source; the target runs nothing else).
    """
    snap = Snapshot()
    entries, amt, cur = _t(layout.entries), _i(layout.amount), _i(layout.entry_currency)
    with_daily = _has_column(conn, layout.entries, layout.date_column)
    with_txn = _has_column(conn, layout.entries, layout.entry_txn)
    with conn.transaction():
        if set_isolation:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        for account, currency, stored, computed in conn.execute(balance_rule(layout)).fetchall():
            snap.accounts[account] = (_cur(currency), Decimal(stored or 0), Decimal(computed or 0))
        for currency, total, n in conn.execute(sql.SQL("SELECT {c}, coalesce(sum({a}), 0), count(*) FROM {e} GROUP BY 1").format(
                c=cur, a=amt, e=entries)).fetchall():
            snap.entry_totals[_cur(currency)] = (Decimal(total), int(n))
        if with_txn:
            snap.unbalanced = [(t, _cur(c), Decimal(s)) for t, c, s in conn.execute(sql.SQL(
                "SELECT {t}, {c}, sum({a}) FROM {e} GROUP BY 1, 2 HAVING sum({a}) <> 0 ORDER BY 1, 2 LIMIT {n}").format(
                t=_i(layout.entry_txn), c=cur, a=amt, e=entries, n=sql.Literal(UNBALANCED_LIMIT))).fetchall()]
        if with_daily:
            for day, currency, n, volume in conn.execute(sql.SQL(
                    "SELECT ({d} AT TIME ZONE 'UTC')::date::text, {c}, count(*), "
                    "coalesce(sum(CASE WHEN {a} > 0 THEN {a} ELSE 0 END), 0) FROM {e} GROUP BY 1, 2").format(
                    d=_i(layout.date_column), c=cur, a=amt, e=entries)).fetchall():
                snap.daily[(day, _cur(currency))] = (int(n), Decimal(volume))
    return snap


def _delta(a: Decimal, b: Decimal) -> str:
    return str(b - a)


def per_side_findings(side: str, snap: Snapshot) -> list[Finding]:
    """Invariants that must hold within one side."""
    out: list[Finding] = []
    vals = lambda d: {k: jsonable(v) for k, v in d.items()}  # noqa: E731
    for account, (currency, stored, computed) in sorted(snap.accounts.items(), key=lambda kv: repr(kv[0])):
        if stored != computed:
            detail = vals({"side": side, "stored": stored, "computed": computed, "currency": currency})
            out.append(Finding(TABLE, "balance_vs_entries", [side, jsonable(account)], ["stored", "computed"],
                               detail if side == "source" else None, detail if side == "target" else None,
                               _delta(stored, computed), currency))
    for currency, (total, _) in sorted(snap.entry_totals.items(), key=lambda kv: str(kv[0])):
        if total != 0:
            detail = vals({"side": side, "sum_of_entries": total})
            out.append(Finding(TABLE, "trial_balance", [side, currency], ["sum_of_entries"],
                               detail if side == "source" else None, detail if side == "target" else None,
                               str(total), currency))
    for txn, currency, total in snap.unbalanced:
        detail = vals({"side": side, "sum_of_entries": total})
        out.append(Finding(TABLE, "unbalanced_txn", [side, jsonable(txn), currency], ["sum_of_entries"],
                           detail if side == "source" else None, detail if side == "target" else None,
                           str(total), currency))
    return out


def cross_findings(src: Snapshot, tgt: Snapshot) -> list[Finding]:
    """Differences between the sides: per-account balances, per-currency totals, daily totals."""
    out: list[Finding] = []
    for account in sorted(set(src.accounts) | set(tgt.accounts), key=repr):
        s, t = src.accounts.get(account), tgt.accounts.get(account)
        if s is not None and t is not None and s[0] == t[0] and s[1] == t[1]:
            continue
        out.append(Finding(TABLE, "balance_mismatch", [jsonable(account)], ["balance"],
                           {"currency": s[0], "balance": jsonable(s[1])} if s else None,
                           {"currency": t[0], "balance": jsonable(t[1])} if t else None,
                           _delta(s[1] if s else Decimal(0), t[1] if t else Decimal(0)), (s or t)[0]))  # type: ignore[index]
    st, tt = src.balance_totals(), tgt.balance_totals()
    for currency in sorted(set(st) | set(tt), key=str):
        a, b = st.get(currency, Decimal(0)), tt.get(currency, Decimal(0))
        if a != b:
            out.append(Finding(TABLE, "currency_total", [currency], ["sum_of_balances"],
                               {"sum_of_balances": str(a)}, {"sum_of_balances": str(b)}, _delta(a, b), currency))
    for day, currency in sorted(set(src.daily) | set(tgt.daily), key=str):
        a = src.daily.get((day, currency), (0, Decimal(0)))
        b = tgt.daily.get((day, currency), (0, Decimal(0)))
        if a != b:
            out.append(Finding(TABLE, "daily_total", [day, currency], ["entries", "volume"],
                               {"entries": a[0], "volume": str(a[1])}, {"entries": b[0], "volume": str(b[1])},
                               _delta(a[1], b[1]), currency))
    return out


def tables_for_report(src: Snapshot, tgt: Snapshot) -> dict[str, Any]:
    """Per-currency figures of both sides, for the report (JSON-able)."""
    st, tt = src.balance_totals(), tgt.balance_totals()
    currencies = sorted(set(st) | set(tt) | set(src.entry_totals) | set(tgt.entry_totals), key=str)
    rows = []
    for c in currencies:
        se, te = src.entry_totals.get(c, (Decimal(0), 0)), tgt.entry_totals.get(c, (Decimal(0), 0))
        rows.append({"currency": c, "balances_source": str(st.get(c, Decimal(0))),
                     "balances_target": str(tt.get(c, Decimal(0))), "entries_source": se[1], "entries_target": te[1],
                     "trial_source": str(se[0]), "trial_target": str(te[0])})
    return {"currencies": rows, "accounts_source": len(src.accounts), "accounts_target": len(tgt.accounts),
            "days": len(set(src.daily) | set(tgt.daily))}


def diff_snapshots(read: Callable[[str], Snapshot]) -> tuple[Snapshot, Snapshot]:
    """Read both sides (target first, so a lag-aware caller's source read is the later one)."""
    tgt = read("target")
    src = read("source")
    return src, tgt
