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

Why whole-ledger figures need more than a re-read: the target snapshot stands at the replay
watermark ``W``, the source snapshot read after it at ``now > W``; under live writes every
transaction committed in between moves a balance, a day's count and volume. A plain re-read of
both sides finds *new* in-flight differences each round, never none. So the rounds of one
re-check (the calls of :func:`diff_snapshots` with the same ``read``) work like the row diff's:

* a round only keeps differences that were already found by the round before (the set shrinks,
  keyed by kind and key); what differs in every round is persistent;
* each snapshot records where it stands (:attr:`Snapshot.lsn`: the source's WAL position as its
  first statement, the target's replay watermark read in the same snapshot). When the target
  snapshot is at or past the previous round's source snapshot, the target's state is a source
  state between the two source reads (the bracket). A currency or daily total is in flight when the
  target's value lies between the two source values (daily counts and volumes only grow in an
  append-only ledger, so this is exact for them); days and currencies nobody writes to have equal
  bracket ends, so they must match exactly. An account whose balance held still on the source
  across the bracket must match exactly; one that moved is in flight: a balance that changes
  faster than the replay lag never equals the target's at any single read, and nothing is lost,
  because with entries only ever appended, "the target's stored balance equals the source's at the
  watermark" is exactly "the target's stored balance equals the sum of its entries" (checked per
  side, in one snapshot) plus "the entries match" (the entry diff).

Without a bracket (no replay watermark, or it never passed the previous source read) the
comparison stays exact.

Any ledger, not only the demo's: columns come from the ``[[tables]]`` roles. A part that needs a
column the ledger does not have is not run and is reported not applicable with the reason
(:func:`not_applicable`): without a stored balance (``balance_column = ""``) the per-account and
currency-total figures, without a transaction column on the entries (``transaction_column = ""``)
the unbalanced transactions, without ``[diff] date_column`` the daily totals. Without a currency
column (``currency_column = ""``, a single-currency ledger) every figure is one group, shown under
``[diff] currency`` (a fixed code for the reports) or none.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from reconcile.budget import qualified
from reconcile.diff import lag
from reconcile.diff.compare import Finding, jsonable
from reconcile.diff.errors import BalanceLayoutError

TABLE = "balances"
"""``Finding.table`` of balance findings."""
UNBALANCED_LIMIT = 100


@dataclass(frozen=True)
class Layout:
    """Where the money lives: the accounts and entries tables and their role columns (None: the ledger has none)."""

    accounts: str
    entries: str
    account_id: str
    balance: str | None
    account_currency: str | None
    entry_account: str
    amount: str
    entry_currency: str | None
    entry_txn: str | None
    date_column: str | None
    rule_sql: str | None = None
    slot: str | None = None
    """The replay slot whose watermark a target snapshot records (None: the snapshot records none)."""
    chunk_rows: int = 200_000
    """Entries one per-account or per-transaction GROUP BY query covers (about; ``[diff] balance_chunk_rows``)."""
    currency: str | None = None
    """The currency a figure without a currency column is shown under (``[diff] currency``), or None."""


def layout_of(config: Any) -> Layout | None:
    """The layout from the tables' roles, or None when there is no accounts + entries pair."""
    accounts = config.tables_with_role("accounts")
    entries = config.tables_with_role("entries")
    if not accounts or not entries:
        return None
    a, e = accounts[0], entries[0]
    settings = config.diff
    return Layout(a.name, e.name, a.account_column, a.column("balance_column"), a.column("currency_column"),
                  e.account_column, e.amount_column, e.column("currency_column"), e.column("transaction_column"),
                  getattr(settings, "date_column", None), getattr(settings, "balance_sql", None), lag.slot_name(config),
                  getattr(settings, "balance_chunk_rows", 200_000), getattr(settings, "currency", None))


KINDS = ("balance_mismatch", "balance_vs_entries", "currency_total", "trial_balance", "unbalanced_txn", "daily_total")
"""Every kind of balance finding."""


def not_applicable(layout: Layout) -> dict[str, str]:
    """The parts of the balance diff this ledger has no column for: kind -> why (they are not run)."""
    out: dict[str, str] = {}
    if layout.balance is None and not layout.rule_sql:
        why = (f'{layout.accounts} keeps no stored balance (balance_column = ""); set [diff] balance_sql to '
               "compare balances computed another way")
        out.update(dict.fromkeys(("balance_mismatch", "balance_vs_entries", "currency_total"), why))
    if layout.entry_txn is None:
        out["unbalanced_txn"] = f'{layout.entries} has no transaction column (transaction_column = "")'
    if layout.date_column is None:
        out["daily_total"] = "[diff] date_column is not set (name the entries' posting timestamp to compare daily totals)"
    return out


def _i(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _cur(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) else value


def balance_rule(layout: Layout) -> sql.Composable:
    """The per-account rule over the whole ledger: (account, currency, stored, computed).

    A user rule (``layout.rule_sql``, ``[diff] balance_sql``) is arbitrary SQL: it cannot be split
    into key ranges generically, so it always runs whole, in one query (on DSQL its GROUP BYs must fit
    128 MiB). The default rule is read in account ranges by :func:`read_snapshot` (see
    :func:`_range_rule`); this whole-ledger form is the same rule without the ranges.
    """
    if layout.rule_sql:
        return sql.SQL(layout.rule_sql).format(accounts=qualified(layout.accounts), entries=qualified(layout.entries))  # type: ignore[arg-type]
    return _range_rule(layout, sql.SQL("TRUE"), sql.SQL("TRUE"))


def _range_rule(layout: Layout, acc_where: sql.Composable, ent_where: sql.Composable) -> sql.Composable:
    """The default rule restricted to the accounts matching ``acc_where`` / entries matching ``ent_where``."""
    return sql.SQL(
        "SELECT a.{aid} AS account, {acur} AS currency, a.{bal} AS stored, coalesce(e.total, 0) AS computed "
        "FROM {accounts} a LEFT JOIN (SELECT {eacc} AS account, sum({amt}) AS total FROM {entries} WHERE {ew} GROUP BY 1) e "
        "ON e.account = a.{aid} WHERE {aw}").format(
        aid=_i(layout.account_id), acur=_currency(layout.account_currency, "a"), bal=_i(layout.balance or ""),
        accounts=qualified(layout.accounts), eacc=_i(layout.entry_account), amt=_i(layout.amount), entries=qualified(layout.entries),
        ew=ent_where, aw=acc_where)


def _currency(column: str | None, alias: str | None = None) -> sql.Composable:
    """The currency column (qualified by ``alias``), or a NULL text when the ledger has none."""
    if column is None:
        return sql.SQL("NULL::text")
    return sql.Identifier(alias, column) if alias else sql.Identifier(column)


def _range(column: sql.Composable, lo: Any, hi: Any) -> tuple[sql.Composable, list[Any]]:
    """``lo < column <= hi`` (an open end when None: NULL keys are in no range) and its parameters."""
    parts, params = [], []
    if lo is not None:
        parts.append(sql.SQL("{} > %s").format(column))
        params.append(lo)
    if hi is not None:
        parts.append(sql.SQL("{} <= %s").format(column))
        params.append(hi)
    return (sql.SQL(" AND ").join(parts) if parts else sql.SQL("{} IS NOT NULL").format(column)), params


def key_ranges(conn: psycopg.Connection, table: str, column: str, rows: int) -> list[tuple[Any, Any]]:
    """Ranges ``(lo, hi]`` of ``table.column`` that each hold about ``rows`` rows (one key's rows never split).

    A keyset walk on the column (an index-only scan where it is indexed): each boundary is the key
    ``rows`` rows past the previous one. The ranges cover every non-NULL key in order; the first has
    ``lo`` None and the last ``hi`` None. One query per boundary, plus one that finds none.
    """
    out: list[tuple[Any, Any]] = []
    lo = None
    col, tab = _i(column), qualified(table)
    while True:
        where, params = _range(col, lo, None)
        row = conn.execute(sql.SQL("SELECT {c} FROM {t} WHERE {w} ORDER BY {c} OFFSET %s LIMIT 1").format(
            c=col, t=tab, w=where), [*params, rows - 1]).fetchone()
        if row is None:
            out.append((lo, None))
            return out
        out.append((lo, row[0]))
        lo = row[0]


def _column(conn: psycopg.Connection, table: str, column: str | None) -> tuple[bool, bool, str | None]:
    """(the column exists, it may hold NULL, its type as ``format_type`` shows it)."""
    if not column:
        return False, False, None
    from reconcile.db.columns import read_columns  # the one column reader

    found = [c for c in read_columns(conn, tables=[table]).get(table, ()) if c.name == column]
    return (False, False, None) if not found else (True, not found[0].not_null, found[0].type)


def _configured(conn: psycopg.Connection, table: str, column: str | None, setting: str) -> tuple[bool, str | None]:
    """(may hold NULL, type) of a configured column; raises when it does not exist (a config mistake, never a
    silently skipped check)."""
    exists, nullable, type_ = _column(conn, table, column)
    if column and not exists:
        raise BalanceLayoutError(f"{setting} names column {column!r}, which {table} does not have; name an existing "
                                 f"column or switch the setting off")
    return nullable, type_


def _day(column: str, type_: str | None) -> sql.Composable:
    """The UTC calendar day of a posting timestamp, as text: a timestamptz is read in UTC (both sessions agree
    whatever their TimeZone), a timestamp or date as it is stored."""
    if type_ == "timestamp with time zone":
        return sql.SQL("({} AT TIME ZONE 'UTC')::date::text").format(_i(column))
    return sql.SQL("{}::date::text").format(_i(column))


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
    lsn: int | None = None
    """Where in the source's history the snapshot stands (an integer LSN): on the source the WAL
    position read as the snapshot's first statement (every transaction it sees committed before it);
    on the target the replay watermark read in the same snapshot (every source transaction
    committed before it is in it). None when unknown (no replay watermark)."""
    before: Snapshot | None = None
    """Source only: the source snapshot of the previous round of the same re-check."""
    suspects: frozenset | None = None
    """Source only: the (kind, key) of the cross-side differences the previous round kept; None on a
    first read (every difference is a suspect)."""

    def balance_totals(self) -> dict[str | None, Decimal]:
        out: dict[str | None, Decimal] = {}
        for cur, stored, _ in self.accounts.values():
            out[cur] = out.get(cur, Decimal(0)) + stored
        return out


def read_snapshot(conn: psycopg.Connection, layout: Layout, *, set_isolation: bool = False) -> Snapshot:
    """Read every balance figure of one side in one REPEATABLE READ transaction.

    ``set_isolation`` asks for REPEATABLE READ explicitly and marks the source: its snapshot records
    ``pg_current_wal_lsn()``; a target snapshot records the watermark of ``layout.slot`` instead
    (the target runs nothing but REPEATABLE READ).

    The per-account figures (default rule) and the unbalanced transactions are GROUP BYs with one
    group per account / transaction: on DSQL (128 MiB per query) they cannot run over the whole
    ledger at once. Inside the same transaction (one snapshot, so the figures stay consistent) they
    run in key ranges of the entries' account / transaction column, about ``layout.chunk_rows``
    entries each (boundaries from :func:`key_ranges`). A group never spans two ranges, so the
    figures are exactly the whole-ledger ones; unbalanced transactions come in key order, up to
    ``UNBALANCED_LIMIT`` as before. The currency and daily totals (few groups) and a user
    ``balance_sql`` rule (not splittable) run whole.
    """
    snap = Snapshot()
    entries, amt, cur = qualified(layout.entries), _i(layout.amount), _currency(layout.entry_currency)
    skip = not_applicable(layout)
    _, date_type = _configured(conn, layout.entries, layout.date_column, "[diff] date_column")
    txn_nullable, _ = _configured(conn, layout.entries, layout.entry_txn, f"{layout.entries} transaction_column")
    _configured(conn, layout.entries, layout.entry_currency, f"{layout.entries} currency_column")
    _configured(conn, layout.accounts, layout.account_currency, f"{layout.accounts} currency_column")
    if not layout.rule_sql:
        _configured(conn, layout.accounts, layout.balance, f"{layout.accounts} balance_column")
    aid_nullable = _column(conn, layout.accounts, layout.account_id)[1] if not layout.rule_sql else False
    rows = max(1, int(layout.chunk_rows))
    account_currency = _fixed(layout, layout.account_currency)
    entry_currency = _fixed(layout, layout.entry_currency)
    with conn.transaction():
        if set_isolation:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            snap.lsn = lag.lsn_int(lag.current_lsn(conn))  # the first statement: it takes the snapshot
        elif layout.slot:
            snap.lsn = lag.watermark(conn, layout.slot)
        queries: list[tuple[sql.Composable, list[Any]]] = []  # none without a stored balance or a rule
        if layout.rule_sql:
            queries = [(balance_rule(layout), [])]
        elif "balance_vs_entries" not in skip:
            aid, eacc = sql.SQL("a.{}").format(_i(layout.account_id)), _i(layout.entry_account)
            for lo, hi in key_ranges(conn, layout.entries, layout.entry_account, rows):
                acc_where, acc_params = _range(aid, lo, hi)
                ent_where, ent_params = _range(eacc, lo, hi)
                queries.append((_range_rule(layout, acc_where, ent_where), ent_params + acc_params))
            if aid_nullable:  # accounts without a key match no entries (as in the whole-ledger join)
                queries.append((_range_rule(layout, sql.SQL("a.{} IS NULL").format(_i(layout.account_id)),
                                            sql.SQL("FALSE")), []))
        for query, params in queries:
            for account, currency, stored, computed in conn.execute(query, params).fetchall():
                snap.accounts[account] = (account_currency(currency), Decimal(stored or 0), Decimal(computed or 0))
        group = sql.SQL(" GROUP BY 1") if layout.entry_currency else sql.SQL("")
        for currency, total, n in conn.execute(sql.SQL("SELECT {c}, coalesce(sum({a}), 0), count(*) FROM {e}{g}").format(
                c=cur, a=amt, e=entries, g=group)).fetchall():
            snap.entry_totals[entry_currency(currency)] = (Decimal(total), int(n))
        if "unbalanced_txn" not in skip:
            txn = _i(layout.entry_txn or "")
            wheres = [_range(txn, lo, hi) for lo, hi in key_ranges(conn, layout.entries, layout.entry_txn or "", rows)]
            if txn_nullable:  # NULL sorts last, as in the whole-ledger ORDER BY
                wheres.append((sql.SQL("{} IS NULL").format(txn), []))
            by = sql.SQL("1, 2") if layout.entry_currency else sql.SQL("1")
            for where, params in wheres:  # ascending key ranges: the first UNBALANCED_LIMIT in key order
                left = UNBALANCED_LIMIT - len(snap.unbalanced)
                if left <= 0:
                    break
                snap.unbalanced += [(t, entry_currency(c), Decimal(s)) for t, c, s in conn.execute(sql.SQL(
                    "SELECT {t}, {c}, sum({a}) FROM {e} WHERE {w} GROUP BY {by} HAVING sum({a}) <> 0 "
                    "ORDER BY 1, 2 LIMIT {n}").format(t=txn, c=cur, a=amt, e=entries, w=where, by=by,
                                                      n=sql.Literal(left)), params).fetchall()]
        if "daily_total" not in skip:
            by = sql.SQL("1, 2") if layout.entry_currency else sql.SQL("1")
            for day, currency, n, volume in conn.execute(sql.SQL(
                    "SELECT {d}, {c}, count(*), "
                    "coalesce(sum(CASE WHEN {a} > 0 THEN {a} ELSE 0 END), 0) FROM {e} GROUP BY {by}").format(
                    d=_day(layout.date_column or "", date_type), c=cur, a=amt, e=entries, by=by)).fetchall():
                snap.daily[(day, entry_currency(currency))] = (int(n), Decimal(volume))
    return snap


def _fixed(layout: Layout, column: str | None) -> Callable[[Any], str | None]:
    """How a currency value read from ``column`` is shown: trimmed, or ``layout.currency`` when there is no
    column (a single-currency ledger; a ``balance_sql`` rule may still return one)."""
    if column is None:
        return lambda value: _cur(value) if value is not None else layout.currency
    return _cur


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


def _account(value: tuple[str | None, Decimal, Decimal] | None) -> tuple[str | None, Decimal] | None:
    return None if value is None else (value[0], value[1])


def _between(value: Any, a: Any, b: Any) -> bool:
    return min(a, b) <= value <= max(a, b)


def _bracket(src: Snapshot, tgt: Snapshot) -> Snapshot | None:
    """The previous round's source snapshot when the target snapshot stands at or past it, else None."""
    before = src.before
    if before is None or before.lsn is None or tgt.lsn is None or tgt.lsn < before.lsn:
        return None
    return before


def identity(finding: Finding) -> tuple[str, str]:
    """What identifies a balance difference across the rounds of a re-check: its kind and key."""
    return finding.kind, repr(finding.key)


def cross_findings(src: Snapshot, tgt: Snapshot) -> list[Finding]:
    """Differences between the sides: per-account balances, per-currency totals, daily totals.

    With a previous round (``src.before``, ``src.suspects``, set by :func:`diff_snapshots`), only
    differences the previous round kept are reported, and a target value the source had between
    its two reads is in flight (see the module docstring).
    """
    out: list[Finding] = []
    prev = _bracket(src, tgt)
    for account in sorted(set(src.accounts) | set(tgt.accounts), key=repr):
        s, t = src.accounts.get(account), tgt.accounts.get(account)
        if _account(s) == _account(t):
            continue
        if prev is not None and _account(prev.accounts.get(account)) != _account(s):
            continue  # it moved on the source within the bracket: in flight (see the module docstring)
        out.append(Finding(TABLE, "balance_mismatch", [jsonable(account)], ["balance"],
                           {"currency": s[0], "balance": jsonable(s[1])} if s else None,
                           {"currency": t[0], "balance": jsonable(t[1])} if t else None,
                           _delta(s[1] if s else Decimal(0), t[1] if t else Decimal(0)), (s or t)[0]))  # type: ignore[index]
    st, tt = src.balance_totals(), tgt.balance_totals()
    pt = prev.balance_totals() if prev is not None else {}
    for currency in sorted(set(st) | set(tt), key=str):
        a, b = st.get(currency, Decimal(0)), tt.get(currency, Decimal(0))
        if a == b or (prev is not None and _between(b, pt.get(currency, Decimal(0)), a)):
            continue
        out.append(Finding(TABLE, "currency_total", [currency], ["sum_of_balances"],
                           {"sum_of_balances": str(a)}, {"sum_of_balances": str(b)}, _delta(a, b), currency))
    zero = (0, Decimal(0))
    for day, currency in sorted(set(src.daily) | set(tgt.daily), key=str):
        a, b = src.daily.get((day, currency), zero), tgt.daily.get((day, currency), zero)
        if a == b:
            continue
        if prev is not None:
            p = prev.daily.get((day, currency), zero)
            if _between(b[0], p[0], a[0]) and _between(b[1], p[1], a[1]):
                continue
        out.append(Finding(TABLE, "daily_total", [day, currency], ["entries", "volume"],
                           {"entries": a[0], "volume": str(a[1])}, {"entries": b[0], "volume": str(b[1])},
                           _delta(a[1], b[1]), currency))
    if src.suspects is not None:
        out = [f for f in out if identity(f) in src.suspects]
    return out


def tables_for_report(src: Snapshot, tgt: Snapshot, layout: Layout | None = None) -> dict[str, Any]:
    """Per-currency figures of both sides, for the report (JSON-able); with ``layout``, the parts that do not
    apply are left out of the rows and listed under ``not_applicable`` (kind -> reason)."""
    skip = not_applicable(layout) if layout is not None else {}
    st, tt = src.balance_totals(), tgt.balance_totals()
    currencies = sorted(set(st) | set(tt) | set(src.entry_totals) | set(tgt.entry_totals), key=str)
    rows = []
    for c in currencies:
        se, te = src.entry_totals.get(c, (Decimal(0), 0)), tgt.entry_totals.get(c, (Decimal(0), 0))
        row: dict[str, Any] = {"currency": c, "entries_source": se[1], "entries_target": te[1],
                               "trial_source": str(se[0]), "trial_target": str(te[0])}
        if "currency_total" not in skip:
            row.update(balances_source=str(st.get(c, Decimal(0))), balances_target=str(tt.get(c, Decimal(0))))
        rows.append(row)
    out = {"currencies": rows, "accounts_source": len(src.accounts), "accounts_target": len(tgt.accounts),
           "days": len(set(src.daily) | set(tgt.daily)), "not_applicable": skip}
    if layout is not None:
        out["currency_column"] = bool(layout.entry_currency or layout.account_currency)
        out["currency"] = layout.currency
    return out


_ROUNDS: weakref.WeakKeyDictionary[Callable[[str], Snapshot], tuple[Snapshot, Snapshot]] = weakref.WeakKeyDictionary()
"""The last (source, target) pair read with each ``read`` function: the previous round of its re-check."""


def diff_snapshots(read: Callable[[str], Snapshot]) -> tuple[Snapshot, Snapshot]:
    """Read both sides (target first, so a lag-aware caller's source read is the later one).

    Calls with the same ``read`` function are the rounds of one lag-aware re-check (``diff_balances``
    makes one ``read`` per run): from the second call on, the new source snapshot carries the
    previous one (``before``, its nested history dropped) and the differences the previous round
    kept (``suspects``), which :func:`cross_findings` narrows down.
    """
    prior = _ROUNDS.get(read)
    tgt = read("target")
    src = read("source")
    if prior is None:
        src = dataclasses.replace(src, before=None, suspects=None)
    else:
        src = dataclasses.replace(src, before=dataclasses.replace(prior[0], before=None, suspects=None),
                                  suspects=frozenset(identity(f) for f in cross_findings(*prior)))
    _ROUNDS[read] = (src, tgt)
    return src, tgt
