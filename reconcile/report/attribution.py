"""Root-cause attribution: which balance differences each row finding explains, exactly, and which none does.

A reviewer's question is not "how many differences" but "which of them are explained by a row that
differs, and which are not". One missing entry shows up as a row finding *and* as the stored balance
of its account disagreeing with its entries, the trial balance of its currency, its journal
transaction no longer summing to zero and its day's totals; a stored balance changed without any
entry change shows up as balance findings only. This module links them.

The model (exact ``Decimal`` arithmetic, no tolerance; column names come from the ledger's roles,
:class:`reconcile.diff.balances.Layout`, never from the demo):

* **Faults** are row findings: every row finding except an accounts row whose stored balance column
  changed, which is the row-level view of a balance difference and is grouped with it. An entries row
  contributes *postings*: its target row adds ``+amount`` and its source row ``-amount`` to its
  account, currency, journal transaction and (UTC) day, so a missing entry moves them by ``-amount``,
  an extra one by ``+amount``, a changed amount by the difference. An accounts row missing or extra on
  the target moves the stored balance of its account by ``target - source`` (NULL counts as 0).
* **Balance differences** (``balances`` findings) are explained by the faults whose impact on the same
  account / currency / transaction / day sums *exactly* to the difference:

  ==================  ================================================================================
  balance_mismatch    stored balance, target - source: equals entry impact + account-row impact on the
                      account (the target's stored balance moved with its entries)
  balance_vs_entries  on the target, (computed - stored) minus the source's own figure: equals entry
                      impact - stored difference; explained only when the stored difference is itself
                      0 or explained
  trial_balance,      on the target, minus the source's own figure for the same key: equals the
  unbalanced_txn      postings' sum in that currency / transaction and currency
  daily_total         entry count and volume (sum of positive amounts), target - source: both equal the
                      postings' count and positive amounts on that day and currency
  currency_total      sum of stored balances, target - source: equals the sum of that currency's
                      balance mismatches, explained when each of those is
  ==================  ================================================================================

* **Unexplained differences** are what is left, grouped so that one cause is one item: every
  unexplained figure of an account (its balance mismatch, its stored-vs-entries difference on either
  side, the accounts row that shows the changed balance) is one difference, with the currency total it
  moves; a trial balance, transaction or day nobody explains is one difference each. Source-side
  findings (the system of record disagreeing with itself) are never explained by a target row; a
  target figure equal to the source's own is shown with it (inherited, not a migration fault).

What is not stored cannot explain anything: when a table has more findings than ``[diff]
max_findings`` keeps, :attr:`Attribution.complete` is False and the report says so.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["Attribution", "Fault", "Link", "Roles", "Unexplained", "attribute"]

PER_SIDE = ("balance_vs_entries", "trial_balance", "unbalanced_txn")
"""Balance kinds computed on each side separately (their key starts with the side)."""
BALANCE_TABLE = "balances"
"""``table`` of balance findings (:data:`reconcile.diff.balances.TABLE`)."""
ZERO = Decimal(0)


@dataclass(frozen=True)
class Roles:
    """The ledger's role columns the attribution reads (None: the ledger has no such table or column)."""

    layout: Any | None
    """:class:`reconcile.diff.balances.Layout` (accounts/entries tables and their columns), or None."""
    transactions: str | None = None
    """The table with the ``transactions`` role (the journal), or None."""
    transaction_column: str | None = None
    """Its transaction id column."""

    @classmethod
    def of(cls, config: Any) -> Roles:
        from reconcile.diff.balances import layout_of

        journal = config.tables_with_role("transactions")
        spec = journal[0] if journal else None
        return cls(layout_of(config), spec.name if spec else None,
                   spec.column("transaction_column") if spec else None)


def _key(value: Any) -> str:
    """A value as a comparable key (row values and balance keys are both JSON-able renderings).

    >>> _key("7") != _key(7), _key([1, "a"])
    (True, '[1, "a"]')
    """
    if isinstance(value, str):
        return "s:" + value
    if isinstance(value, int) and not isinstance(value, bool):
        return "i:" + str(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _dec(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _cur(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) else (None if value is None else str(value))


def utc_day(value: Any) -> str | None:
    """The calendar day of a posting timestamp as the balance diff groups it: an aware timestamp in UTC,
    a naive one or a date as written.

    >>> utc_day("2024-02-01T23:30:00-02:00"), utc_day("2024-02-01T23:30:00"), utc_day("2024-02-01")
    ('2024-02-02', '2024-02-01', '2024-02-01')
    """
    if value is None:
        return None
    text = str(value)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            return dt.date.fromisoformat(text[:10]).isoformat()
        except ValueError:
            return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc)
    return moment.date().isoformat()


@dataclass(frozen=True)
class Posting:
    """What one side's entries row adds to the ledger's figures (sign +1 target row, -1 source row)."""

    sign: int
    account: str
    currency: str | None
    txn: str | None
    day: str | None
    amount: Decimal | None

    @property
    def signed(self) -> Decimal:
        return self.sign * (self.amount or ZERO)

    @property
    def volume(self) -> Decimal:
        return self.sign * self.amount if self.amount is not None and self.amount > 0 else ZERO


@dataclass(eq=False)
class Link:
    """A balance difference a fault explains, and ``by``: every fault it takes to sum exactly (this one
    included; one list shared by all of them, so a figure many faults explain costs one list, not a square)."""

    finding: dict[str, Any]
    by: list[str] = field(default_factory=list)

    def jointly(self, fault_id: str, limit: int | None = None) -> list[str]:
        """The other faults it takes (at most ``limit``)."""
        out = []
        for other in self.by:
            if other != fault_id:
                out.append(other)
                if limit is not None and len(out) >= limit:
                    break
        return out


@dataclass(eq=False)
class Fault:
    """A row finding with the balance differences it explains."""

    id: str
    finding: dict[str, Any]
    amount: Decimal | None
    """Its money impact (target - source of the table's money column), None when the table has none."""
    currency: str | None
    explains: list[Link] = field(default_factory=list)
    partly: list[str] = field(default_factory=list)
    """Ids of unexplained differences it accounts for part of."""
    related: list[str] = field(default_factory=list)
    """Ids of faults in the same journal transaction."""
    postings: list[Posting] = field(default_factory=list, repr=False)
    stored: tuple[str, str | None, Decimal] | None = field(default=None, repr=False)
    """An accounts row missing/extra: (account, currency, target - source stored balance)."""
    txn: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "table": self.finding["table"], "kind": self.finding["kind"], "key": self.finding["key"],
               "amount": None if self.amount is None else str(self.amount), "currency": self.currency,
               "explains": [{"kind": link.finding["kind"], "key": link.finding["key"],
                             **({"with": len(link.by) - 1} if len(link.by) > 1 else {})} for link in self.explains]}
        if self.related:
            out["related"] = self.related
        if self.partly:
            out["partly"] = self.partly
        return out


@dataclass(eq=False)
class Unexplained:
    """A balance difference (or a group of them with one cause) that no row finding accounts for."""

    id: str
    subject: str
    """``account``, ``trial_balance``, ``unbalanced_txn``, ``daily_total`` or ``currency_total``."""
    key: list[Any]
    """The account / currency / transaction / day it is about (as the balance finding's key)."""
    side: str
    """``target`` (a migration difference) or ``source`` (the system of record disagrees with itself)."""
    amount: Decimal | None
    """The part of the difference nothing explains."""
    currency: str | None
    findings: list[dict[str, Any]] = field(default_factory=list)
    """Its balance findings."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Row findings that show the same difference (an accounts row whose stored balance changed)."""
    partly: list[str] = field(default_factory=list)
    """Faults that account for part of it."""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "subject": self.subject, "key": self.key, "side": self.side,
                "amount": None if self.amount is None else str(self.amount), "currency": self.currency,
                "findings": [{"kind": f["kind"], "key": f["key"]} for f in self.findings],
                "rows": [{"table": f["table"], "kind": f["kind"], "key": f["key"]} for f in self.rows],
                "partly": self.partly}


@dataclass
class Attribution:
    """Faults and unexplained differences of one run."""

    faults: list[Fault]
    unexplained: list[Unexplained]
    balance_differences: int
    """Balance findings attributed (explained + unexplained + inherited from the source)."""
    explained: int
    """Balance findings explained by faults."""
    complete: bool = True
    """False when not every finding was stored (some may be explained by rows beyond the limit)."""

    def counts(self) -> dict[str, Any]:
        return {"faults": len(self.faults), "unexplained": len(self.unexplained),
                "explained_balance_differences": self.explained, "balance_differences": self.balance_differences,
                "complete": self.complete}

    def to_dict(self) -> dict[str, Any]:
        """Counts, every fault (``explains``: the balance findings, ``with``: how many other faults it takes),
        every unexplained difference, and ``explained_detail``: each explained balance finding with all the
        faults that explain it together (``by``)."""
        explained, done = [], set()
        for fault in self.faults:
            for link in fault.explains:
                if id(link) not in done:
                    done.add(id(link))
                    explained.append({"kind": link.finding["kind"], "key": link.finding["key"],
                                      "table": link.finding["table"], "by": link.by})
        return {**self.counts(), "faults_detail": [f.to_dict() for f in self.faults],
                "unexplained_detail": [u.to_dict() for u in self.unexplained], "explained_detail": explained}


def _postings(row: dict[str, Any] | None, sign: int, layout: Any) -> list[Posting]:
    if row is None:
        return []
    currency = _cur(row.get(layout.entry_currency)) if layout.entry_currency else layout.currency
    return [Posting(sign, _key(row.get(layout.entry_account)), currency,
                    _key(row.get(layout.entry_txn)) if layout.entry_txn else None,
                    utc_day(row.get(layout.date_column)) if layout.date_column else None,
                    _dec(row.get(layout.amount)))]


def _abs(value: Decimal | None) -> Decimal:
    return abs(value) if value is not None else ZERO


class _Builder:
    """One attribution pass (state shared by the per-kind rules)."""

    def __init__(self, findings: list[dict[str, Any]], roles: Roles) -> None:
        self.roles, self.layout = roles, roles.layout
        self.faults: list[Fault] = []
        self.views: dict[str, list[dict]] = defaultdict(list)
        self.view_accounts: dict[str, Any] = {}
        self.balance: list[dict] = []
        for f in findings:
            if f["table"] == BALANCE_TABLE:
                self.balance.append(f)
            elif self._is_view(f):
                account = (f.get("target") or f.get("source") or {}).get(self.layout.account_id)
                self.views[_key(account)].append(f)
                self.view_accounts[_key(account)] = account
            else:
                self.faults.append(self._fault(f))
        self.faults.sort(key=lambda x: (-_abs(x.amount), x.finding["table"], x.finding["kind"], _key(x.finding["key"])))
        for i, fault in enumerate(self.faults, start=1):
            fault.id = f"F{i}"
        self.groups: dict[tuple, Unexplained] = {}
        self.explained = 0
        self.index()

    # -- faults ---------------------------------------------------------------------------------------

    def _is_view(self, f: dict) -> bool:
        lay = self.layout
        return (lay is not None and lay.balance is not None and f["table"] == lay.accounts and f["kind"] == "changed"
                and lay.balance in (f.get("columns") or []))

    def _fault(self, f: dict) -> Fault:
        amount = _dec(f.get("money_delta"))
        fault = Fault("", f, amount, f.get("currency"))
        lay = self.layout
        if lay is not None and f["table"] == lay.entries:
            fault.postings = _postings(f.get("target"), +1, lay) + _postings(f.get("source"), -1, lay)
            txns = {p.txn for p in fault.postings if p.txn is not None}
            fault.txn = next(iter(txns)) if len(txns) == 1 else None
        elif lay is not None and f["table"] == lay.accounts and f["kind"] in ("missing_in_target", "extra_in_target"):
            row = f.get("target") or f.get("source") or {}
            if lay.balance is not None:
                delta = (_dec((f.get("target") or {}).get(lay.balance)) or ZERO) - \
                        (_dec((f.get("source") or {}).get(lay.balance)) or ZERO)
                currency = _cur(row.get(lay.account_currency)) if lay.account_currency else lay.currency
                fault.stored = (_key(row.get(lay.account_id)), currency, delta)
        elif self.roles.transactions and f["table"] == self.roles.transactions and self.roles.transaction_column:
            row = f.get("target") or f.get("source") or {}
            if self.roles.transaction_column in row:
                fault.txn = _key(row[self.roles.transaction_column])
        return fault

    def index(self) -> None:
        """Postings and stored-balance moves by account, currency, transaction and day (sums in O(matches))."""
        self.by_account: dict[str, list[tuple[Fault, Posting]]] = defaultdict(list)
        self.by_currency: dict[str | None, list[tuple[Fault, Posting]]] = defaultdict(list)
        self.by_txn: dict[tuple[str | None, str | None], list[tuple[Fault, Posting]]] = defaultdict(list)
        self.by_day: dict[tuple[str | None, str | None], list[tuple[Fault, Posting]]] = defaultdict(list)
        self.stored: dict[str, list[Fault]] = defaultdict(list)
        for fault in self.faults:
            for p in fault.postings:
                self.by_account[p.account].append((fault, p))
                self.by_currency[p.currency].append((fault, p))
                self.by_txn[(p.txn, p.currency)].append((fault, p))
                self.by_day[(p.day, p.currency)].append((fault, p))
            if fault.stored is not None:
                self.stored[fault.stored[0]].append(fault)

    @staticmethod
    def _sum(pairs: list[tuple[Fault, Posting]], part) -> tuple[Decimal, list[Fault]]:
        """Sum of ``part(posting)`` over ``pairs``, and the faults whose parts do not cancel out to zero."""
        per: dict[int, Decimal] = {}
        owner: dict[int, Fault] = {}
        for fault, p in pairs:
            per[id(fault)] = per.get(id(fault), ZERO) + part(p)
            owner[id(fault)] = fault
        who = [owner[k] for k, v in per.items() if v]
        return sum(per.values(), ZERO), who

    def entries_on(self, account: str) -> tuple[Decimal, list[Fault]]:
        return self._sum(self.by_account.get(account, []), lambda p: p.signed)

    def stored_on(self, account: str) -> tuple[Decimal, list[Fault]]:
        faults = [f for f in self.stored.get(account, []) if f.stored[2]]
        return sum((f.stored[2] for f in faults), ZERO), faults

    # -- outcomes -------------------------------------------------------------------------------------

    def explain(self, finding: dict, who: list[Fault]) -> None:
        link = Link(finding, [f.id for f in who])   # one link, shared by every fault it takes
        for fault in who:
            fault.explains.append(link)
        self.explained += 1

    def group(self, subject: str, key: list, side: str, currency: str | None) -> Unexplained:
        gk = (subject, _key(key), side)
        if gk not in self.groups:
            self.groups[gk] = Unexplained("", subject, key, side, None, currency)
        return self.groups[gk]

    def unexplained(self, subject: str, key: list, side: str, finding: dict, amount: Decimal | None,
                    partly: list[Fault] = (), *, lead: bool = False) -> Unexplained:
        g = self.group(subject, key, side, finding.get("currency"))
        g.findings.append(finding)
        if amount is not None and (lead or g.amount is None):
            g.amount = amount
            g.currency = finding.get("currency") or g.currency
        for fault in partly:
            if fault.id not in g.partly:
                g.partly.append(fault.id)
        return g


def attribute(findings: list[dict[str, Any]], roles: Roles, *, complete: bool = True) -> Attribution:
    """Link every balance finding of a run to the row findings that explain it exactly (see the module docstring).

    Args:
        findings: the run's stored findings (:func:`reconcile.diff.store.load_findings`).
        roles: the ledger's role columns (:meth:`Roles.of` the config).
        complete: whether every finding of the run is in ``findings`` (False: the stored ones are a subset).
    """
    b = _Builder(findings, roles)
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for f in b.balance:
        by_kind[f["kind"]].append(f)

    source_side = {(f["kind"], _key(f["key"][1:])): f for f in b.balance
                   if f["kind"] in PER_SIDE and f["key"] and f["key"][0] == "source"}

    def side_value(kind: str, key_tail: list, own: dict) -> Decimal:
        """A target figure minus the source's own figure for the same key (0 when the source has none)."""
        src = source_side.get((kind, _key(key_tail)))
        return (_dec(own.get("money_delta")) or ZERO) - ((_dec(src.get("money_delta")) or ZERO) if src else ZERO)

    def has_source(kind: str, key_tail: list) -> bool:
        return (kind, _key(key_tail)) in source_side

    # Accounts: balance_mismatch, then balance_vs_entries.
    settled: dict[str, bool] = {}       # account -> its stored-balance difference is 0 or explained
    mismatch: dict[str, dict] = {}
    for f in by_kind["balance_mismatch"]:
        acct = _key(f["key"][0])
        mismatch[acct] = f
        moved = _dec(f.get("money_delta")) or ZERO
        e, e_who = b.entries_on(acct)
        s, s_who = b.stored_on(acct)
        who = e_who + [x for x in s_who if x not in e_who]
        if who and moved == e + s:
            b.explain(f, who)
            settled[acct] = True
            for view in b.views.pop(acct, []):
                link = Link(view, [x.id for x in who])
                for fault in who:
                    fault.explains.append(link)
        else:
            settled[acct] = False
            g = b.unexplained("account", [f["key"][0]], "target", f, moved - e - s, who, lead=True)
            g.rows.extend(b.views.pop(acct, []))
    for f in by_kind["balance_vs_entries"]:
        side, account = f["key"][0], f["key"][1]
        acct = _key(account)
        if side == "source":
            b.unexplained("account", [account], "source", f, _dec(f.get("money_delta")))
            continue
        value = side_value("balance_vs_entries", [account], f)
        moved = _dec((mismatch.get(acct) or {}).get("money_delta")) or ZERO
        e, e_who = b.entries_on(acct)
        s, s_who = b.stored_on(acct)
        if settled.get(acct, True) and value == e - moved:
            who = e_who if moved == 0 else s_who
            if who:
                b.explain(f, who)
                continue
            if value == 0 and has_source("balance_vs_entries", [account]):
                b.unexplained("account", [account], "source", f, None)   # the same figure as the source's own
                continue
        target_group = ("account", _key([account]), "target") in b.groups
        b.unexplained("account", [account], "target", f, None if target_group else value - e, e_who)

    # Currency, transaction and day figures.
    def per_currency(kind: str, postings) -> None:
        for f in by_kind[kind]:
            side, tail = f["key"][0], f["key"][1:]
            subject_key = tail
            if side == "source":
                b.unexplained(kind, subject_key, "source", f, _dec(f.get("money_delta")))
                continue
            value = side_value(kind, tail, f)
            total, who = b._sum(postings(tail), lambda p: p.signed)
            if who and value == total:
                b.explain(f, who)
            elif not who and value == 0 and has_source(kind, tail):
                b.unexplained(kind, subject_key, "source", f, None)   # the same figure as the source's own
            else:
                b.unexplained(kind, subject_key, "target", f, value - total, who, lead=True)

    per_currency("trial_balance", lambda tail: b.by_currency.get(tail[0], []))
    per_currency("unbalanced_txn", lambda tail: b.by_txn.get((_key(tail[0]), tail[1]), []))

    for f in by_kind["daily_total"]:
        day, currency = f["key"][0], f["key"][1]
        src, tgt = f.get("source") or {}, f.get("target") or {}
        d_count = int(tgt.get("entries") or 0) - int(src.get("entries") or 0)
        d_volume = _dec(f.get("money_delta")) or ZERO
        here = b.by_day.get((day, currency), [])
        count, c_who = b._sum(here, lambda p: Decimal(p.sign))
        volume, v_who = b._sum(here, lambda p: p.volume)
        who = c_who + [x for x in v_who if x not in c_who]
        if who and count == d_count and volume == d_volume:
            b.explain(f, who)
        else:
            b.unexplained("daily_total", [day, currency], "target", f, d_volume - volume, who, lead=True)

    for f in by_kind["currency_total"]:
        currency = f["key"][0]
        moved = _dec(f.get("money_delta")) or ZERO
        mine = {a: m for a, m in mismatch.items() if m.get("currency") == currency}
        if mine and sum((_dec(m.get("money_delta")) or ZERO for m in mine.values()), ZERO) == moved:
            open_accounts = [a for a in mine if not settled.get(a, True)]
            if not open_accounts:
                ids = {id(m) for m in mine.values()}
                who = [fault for fault in b.faults if any(id(link.finding) in ids for link in fault.explains)]
                b.explain(f, who)
                continue
            first = max(open_accounts, key=lambda a: _abs(_dec(mismatch[a].get("money_delta"))))
            b.group("account", [mismatch[first]["key"][0]], "target", currency).findings.append(f)
            continue
        b.unexplained("currency_total", [currency], "target", f, moved, lead=True)

    # Views left over (a stored balance changed, no balance_mismatch stored for the account): one item each.
    for acct, rows in b.views.items():
        lay = b.layout
        delta = sum(((_dec((r.get("target") or {}).get(lay.balance)) or ZERO)
                     - (_dec((r.get("source") or {}).get(lay.balance)) or ZERO) for r in rows), ZERO)
        g = b.group("account", [b.view_accounts[acct]], "target", rows[0].get("currency"))
        g.rows.extend(rows)
        if g.amount is None:
            g.amount = delta

    # Faults in the same journal transaction are related.
    by_txn: dict[str, list[Fault]] = defaultdict(list)
    for fault in b.faults:
        if fault.txn is not None:
            by_txn[fault.txn].append(fault)
    for same in by_txn.values():
        for fault in same:
            fault.related = [x.id for x in same if x is not fault]

    groups = sorted(b.groups.values(), key=lambda g: (g.side != "target", -_abs(g.amount), g.subject, _key(g.key)))
    by_id = {fault.id: fault for fault in b.faults}
    for i, g in enumerate(groups, start=1):
        g.id = f"U{i}"
        for fault_id in g.partly:
            by_id[fault_id].partly.append(g.id)
    return Attribution(b.faults, groups, len(b.balance), b.explained, complete)
