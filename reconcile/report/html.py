"""The run page (``report.html``) and its findings pages, rendered from ``templates/run.html.j2``.

What a reviewer sees first, top to bottom at 1400x900: the verdict banner (green ``#1a7f37`` / red
``#cf222e``, full width) saying how many *faults* and *unexplained differences* the run has; a strip of
cards with the rest of the evidence (row mismatches, balance differences and how many are explained,
expectations, the gate, replay lag, dead letters, coverage); then side by side the unexplained
differences (to investigate first) and the faults, each a row finding with its money impact and the
balance differences it explains (:mod:`reconcile.report.attribution`). Below: the gate's criteria with
their evidence, the failed expectations with sample rows and their Data Docs pages, replay lag and dead
letters, what was covered, balances per currency, every finding with readable cells, run facts.

A run with many findings stays usable: the lists show the first :data:`SHOWN` items and fold up to
:data:`LISTED`; the column-level detail shows :data:`DETAIL_INLINE` findings and pages the rest into
``findings-<n>.html`` (:data:`PAGE_ROWS` each). ``findings.csv`` and ``summary.json`` keep every value.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from reconcile.direction import describe
from reconcile.report import cells
from reconcile.report.attribution import Attribution, Fault, Roles, Unexplained, attribute
from reconcile.report.history import finding_id
from reconcile.report.coverage import coverage_html
from reconcile.report.notes import balance_phrase, notes as scope_notes
from reconcile.report.sections import (coverage_view, currencies_view, expectations_view, gate_view, replay_view,
                                       seconds)
from reconcile.report.templates import render

__all__ = ["AMBER", "GREEN", "RED", "findings_pages", "render_findings_page", "render_html", "run_view"]

GREEN, RED, AMBER = "#1a7f37", "#cf222e", "#9a6700"
SHOWN = 20
"""Faults / unexplained differences shown open on the run page (the rest folded)."""
LISTED = 200
"""Faults / unexplained differences on the run page at most (all of them in summary.json)."""
DETAIL_INLINE = 100
"""Findings with column-level detail on the run page."""
PAGE_ROWS = 1000
"""Findings per ``findings-<n>.html`` page."""
MAX_CELLS = 4
"""Changed columns shown per fault."""

ROW_KIND = {"missing_in_target": "missing on the target", "extra_in_target": "only on the target",
            "changed": "changed"}
ROW_CHIP = {"missing_in_target": "red", "extra_in_target": "amber", "changed": ""}
REVERSE_ROW_KIND = {"missing_in_target": "only on the source", "extra_in_target": "missing on the source",
                    "changed": "changed"}
"""A reverse run's wording (the target is the system of record; finding kinds stay physical)."""
REVERSE_ROW_CHIP = {"missing_in_target": "amber", "extra_in_target": "red", "changed": ""}
BALANCE_KIND = {"balance_mismatch": "stored balance", "balance_vs_entries": "balance vs entries",
                "trial_balance": "trial balance", "unbalanced_txn": "unbalanced transaction",
                "currency_total": "currency total", "daily_total": "daily total"}


class Labels:
    """How keys are named on the page: the tables' key columns and the ledger's role columns."""

    def __init__(self, roles: Roles, results: list[dict[str, Any]], direction: str | None = None) -> None:
        self.roles = roles
        reverse = direction == "reverse"
        self.row_kind = REVERSE_ROW_KIND if reverse else ROW_KIND
        """How a finding's kind reads in this run's direction (:mod:`reconcile.direction`)."""
        self.row_chip = REVERSE_ROW_CHIP if reverse else ROW_CHIP
        self.keys = {r["table"]: (r.get("details") or {}).get("key") for r in results}
        lay = roles.layout
        self.account = lay.account_id if lay is not None else "account"
        self.txn = lay.entry_txn if lay is not None and lay.entry_txn else "transaction"
        self.day = lay.date_column if lay is not None and lay.date_column else "day"
        self.money: dict[str, str] = {}
        """table -> its money column (shown as an amount with its currency)."""
        if lay is not None:
            self.money[lay.entries] = lay.amount
            if lay.balance:
                self.money[lay.accounts] = lay.balance
        self.currency = lay.currency if lay is not None else None


def _money(value: Any, currency: str | None) -> dict[str, str] | None:
    if value is None or value == "":
        return None
    d = cells._decimal(value)
    cls = "neg" if d is not None and d < 0 else ""   # negative in red, as on a statement; never green: a difference is not good news
    return {"text": cells.signed(value, currency), "cls": cls}


def balance_line(f: dict[str, Any], names: Labels) -> dict[str, Any]:
    """One balance finding as a sentence: ``{"label", "text", "money"}``."""
    kind, key, cur = f["kind"], f["key"], f.get("currency")
    s, t = f.get("source") or {}, f.get("target") or {}
    a = lambda v: cells.amount(v, cur)  # noqa: E731
    if kind == "balance_mismatch":
        text = (f"{names.account}={cells.plain(key[0])}: stored balance "
                f"{a(s.get('balance')) if f.get('source') else 'none (no account row)'} on the source, "
                f"{a(t.get('balance')) if f.get('target') else 'none (no account row)'} on the target")
    elif kind == "balance_vs_entries":
        d = t or s
        text = (f"{names.account}={cells.plain(key[1])} on the {key[0]}: stored {a(d.get('stored'))}, "
                f"its entries sum to {a(d.get('computed'))}")
    elif kind == "trial_balance":
        d = t or s
        text = f"{cur or 'all'} entries on the {key[0]} sum to {a(d.get('sum_of_entries'))}, not 0"
    elif kind == "unbalanced_txn":
        d = t or s
        text = f"{names.txn}={cells.plain(key[1])} on the {key[0]}: its entries sum to {a(d.get('sum_of_entries'))}, not 0"
    elif kind == "currency_total":
        text = (f"{cur or 'all'} stored balances sum to {a(s.get('sum_of_balances'))} on the source, "
                f"{a(t.get('sum_of_balances'))} on the target")
    elif kind == "daily_total":
        text = (f"{key[0]} {cur or ''} (UTC day of {names.day}): {cells.count(s.get('entries'))} → "
                f"{cells.count(t.get('entries'))} entries, volume {a(s.get('volume'))} → {a(t.get('volume'))}")
    else:
        text = f"{kind} {cells.plain(key)}"
    return {"label": BALANCE_KIND.get(kind, kind), "text": text, "money": _money(f.get("money_delta"), cur)}


def balance_key(f: dict[str, Any], names: Labels) -> str:
    """A balance finding's key as ``col=value`` pairs (``side=target, account_id=2551``)."""
    cols = {"balance_mismatch": [names.account], "balance_vs_entries": ["side", names.account],
            "trial_balance": ["side", "currency"], "unbalanced_txn": ["side", names.txn, "currency"],
            "currency_total": ["currency"], "daily_total": ["day", "currency"]}.get(f["kind"])
    return cells.key_pairs(cols, f["key"])


def _seen_text(seen: dict[str, Any] | None, run_id: str) -> str | None:
    if not seen:
        return None
    if seen["runs"] <= 1 or seen.get("first_run") == run_id:
        return "new in this run"
    return f"seen in {seen['runs']} runs since {cells.utc(seen['first_at'], seconds=False)}"


def _row_cells(f: dict[str, Any], names: Labels) -> tuple[list[dict[str, Any]], int]:
    """The changed columns of a row finding, readable: the money column as amounts, timestamps in UTC, long
    values around their first difference."""
    if f["kind"] != "changed":
        return [], 0
    cols = list(f.get("columns") or [])
    s, t = f.get("source") or {}, f.get("target") or {}
    money = names.money.get(f["table"])
    out = []
    for c in cols[:MAX_CELLS]:
        a, b = s.get(c), t.get(c)
        if c == money:
            cur = f.get("currency") or names.currency
            a, b = cells.amount(a, cur), cells.amount(b, cur)
        else:
            a = cells.stamp(a) or a if isinstance(a, str) else a
            b = cells.stamp(b) or b if isinstance(b, str) else b
        out.append({"column": c, **cells.around_difference(a, b)})
    return out, max(0, len(cols) - MAX_CELLS)


def _row_facts(f: dict[str, Any], names: Labels) -> list[str]:
    """The ledger context of a row (account, transaction, date, amount) or, for another table, a few columns."""
    row = f.get("source") if f["kind"] == "missing_in_target" else (f.get("target") or f.get("source"))
    row = row or {}
    lay = names.roles.layout
    key_cols = set(names.keys.get(f["table"]) or [])
    if lay is not None and f["table"] == lay.entries:
        out = [f"{lay.entry_account}={cells.plain(row.get(lay.entry_account))}"]
        if lay.entry_txn:
            out.append(f"{lay.entry_txn}={cells.plain(row.get(lay.entry_txn))}")
        if lay.date_column and row.get(lay.date_column) is not None:
            out.append(f"{lay.date_column} {cells.when(row.get(lay.date_column))}")
        if f["kind"] != "changed":
            cur = row.get(lay.entry_currency) if lay.entry_currency else lay.currency
            out.append(f"{lay.amount} {cells.amount(row.get(lay.amount), cur.strip() if isinstance(cur, str) else cur)}")
        return out
    if f["kind"] == "changed":
        return []
    cols = [c for c in row if c not in key_cols][:5]
    return [f"{c}={cells.plain(row.get(c), limit=40)}" for c in cols] + (["…"] if len(row) - len(key_cols) > 5 else [])


def fault_view(fault: Fault, names: Labels, seen: dict[str, dict], run_id: str) -> dict[str, Any]:
    f = fault.finding
    cell_list, more = _row_cells(f, names)
    if fault.amount is None:
        none = f"moves no money ({f['table']} has no amount or balance column); no balance difference"
    elif fault.amount == 0:
        none = "no money impact; no balance difference"
    else:
        none = "no balance difference stored for it"
    return {"id": fault.id, "table": f["table"], "kind": names.row_kind.get(f["kind"], f["kind"]),
            "chip": names.row_chip.get(f["kind"], ""), "key": cells.key_pairs(names.keys.get(f["table"]), f["key"]),
            "money": _money(None if fault.amount is None else str(fault.amount), fault.currency),
            "facts": _row_facts(f, names), "cells": cell_list, "more_cells": more,
            "explains": [{**balance_line(link.finding, names), "jointly": link.jointly(fault.id, limit=7),
                          "jointly_total": len(link.by) - 1} for link in fault.explains],
            "partly": fault.partly, "related": fault.related, "no_balance": none,
            "seen": _seen_text(seen.get(finding_id(f["table"], f["kind"], f["key"])), run_id)}


def _view_row(f: dict[str, Any], names: Labels) -> str:
    lay = names.roles.layout
    s, t = f.get("source") or {}, f.get("target") or {}
    cur = (s.get(lay.account_currency) or t.get(lay.account_currency)) if lay is not None and lay.account_currency \
        else (lay.currency if lay is not None else None)
    cur = cur.strip() if isinstance(cur, str) else cur
    bal = lay.balance if lay is not None else None
    others = [c for c in f.get("columns") or [] if c != bal]
    text = (f"{f['table']} {cells.key_pairs(names.keys.get(f['table']), f['key'])}: {bal} "
            f"{cells.amount(s.get(bal), cur)} → {cells.amount(t.get(bal), cur)}")
    return text + (f" (also changed: {', '.join(others)})" if others else "")


def unexplained_view(u: Unexplained, names: Labels, seen: dict[str, dict], run_id: str) -> dict[str, Any]:
    kinds = {f["kind"] for f in u.findings}
    key = u.key
    where = "the source" if u.side == "source" else "the target"
    if u.subject == "account":
        who = f"{names.account}={cells.plain(key[0])}"
        if u.side == "source":
            title = f"{who}: the source's stored balance disagrees with its own entries"
        elif "balance_mismatch" in kinds or u.rows:
            title = f"{who}: stored balance differs from the source and no entry explains it"
        else:
            title = f"{who}: stored balance disagrees with its entries on the target; no row finding explains it"
    elif u.subject == "trial_balance":
        title = f"{key[0] or 'The'} entries on {where} do not sum to zero; no row finding explains it"
    elif u.subject == "unbalanced_txn":
        title = f"{names.txn}={cells.plain(key[0])} on {where} does not sum to zero; no row finding explains it"
    elif u.subject == "daily_total":
        title = f"daily totals of {key[0]} {key[1] or ''} differ; no row finding explains them"
    else:
        title = f"the {key[0] or ''} stored balances sum differently; no account explains it"
    lead = u.findings[0] if u.findings else (u.rows[0] if u.rows else None)
    s = seen.get(finding_id(lead["table"], lead["kind"], lead["key"])) if lead else None
    if u.side == "source" and u.amount is None:
        money = None
    else:
        money = _money(None if u.amount is None else str(u.amount), u.currency)
    return {"id": u.id, "side": u.side, "title": title, "money": money,
            "lines": [balance_line(f, names) for f in u.findings], "rows": [_view_row(r, names) for r in u.rows],
            "partly": u.partly, "seen": _seen_text(s, run_id)}


def finding_row(f: dict[str, Any], names: Labels) -> dict[str, Any]:
    """One finding for the detail table: readable cells, exact money."""
    if f["table"] == "balances":
        line = balance_line(f, names)
        return {"table": "balances", "kind": line["label"], "key": balance_key(f, names), "cells": [],
                "text": line["text"], "money": line["money"]}
    cell_list, more = _row_cells(f, names)
    text = "; ".join(_row_facts(f, names)) if f["kind"] != "changed" else (f"and {more} more column(s)" if more else "")
    return {"table": f["table"], "kind": names.row_kind.get(f["kind"], f["kind"]),
            "key": cells.key_pairs(names.keys.get(f["table"]), f["key"]), "cells": cell_list, "text": text,
            "money": _money(f.get("money_delta"), f.get("currency"))}


# -- the page -------------------------------------------------------------------------------------------


def _card(label: str, value: str, state: str, note: str | None = None, id: str | None = None) -> dict[str, Any]:
    return {"label": label, "value": value, "state": state, "note": note, "id": id}


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def every_finding_stored(s: dict[str, Any], findings: list[dict[str, Any]], balances: dict[str, Any] | None) -> bool:
    """Whether ``findings`` hold every row and balance difference the summary counts (none cut by a limit)."""
    rows = sum(t["missing"] + t["extra"] + t["changed"] for t in (s.get("tables") or {}).values())
    stored_rows = sum(1 for f in findings if f["table"] != "balances")
    stored_bal = len(findings) - stored_rows
    return stored_rows >= rows and stored_bal >= int(s.get("balance_differences") or 0)


def attribution_of(context: dict[str, Any]) -> Attribution:
    """The context's attribution, computed from its findings when the caller did not (no ledger roles known)."""
    if context.get("attribution") is not None:
        return context["attribution"]
    findings = context.get("findings") or []
    return attribute(findings, context.get("roles") or Roles(None),
                     complete=every_finding_stored(context["summary"], findings, context.get("balances")))


def expectations_problem(exp: dict[str, Any] | None, expected: bool) -> str | None:
    """Why a green diff is not a green reconciliation because of its expectations (None: no such reason).

    Only the expectations run of this reconciliation counts (``linked``); without one, only a run that
    was meant to have one (``expected``: the DAG's checks step ran, or should have) is red for it.
    """
    exp = exp or {}
    if exp.get("run_id") and exp.get("linked"):
        if exp.get("status") == "green":
            return None
        if exp.get("error"):
            return "the expectations did not complete"
        failed = exp.get("failed")
        return f"{_plural(failed, 'expectation')} failed" if failed else f"the expectations are {exp.get('status')}"
    return "the expectations step left no result" if expected else None


def _headline(s: dict[str, Any], att: Attribution, checks_problem: str | None = None) -> tuple[str, str, str]:
    if s["verdict"] == "green" and checks_problem:
        word, head = "RED", f"RED: source and target match, but {checks_problem}"
    elif s["verdict"] == "green":
        word, head = "GREEN", "GREEN: source and target match"
    else:
        word = "RED"
        parts = [_plural(len(att.faults), "fault"), _plural(len(att.unexplained), "unexplained difference")]
        head = "RED: " + ", ".join(parts)
        if s.get("errors"):
            head += f"; {_plural(len(s['errors']), 'part')} not compared"
    if s.get("full_reconciliation") is False:
        head += " (not a full reconciliation)"
    bal = balance_phrase(s)
    if (s.get("balances") or {}).get("status") in (None, "green", "red") and s.get("balance_differences"):
        bal += f" ({att.explained:,} explained by faults)"
    sub = (f"{s['persistent_mismatches']:,} persistent row mismatches · {bal} · {s['in_flight']:,} in flight · "
           f"{describe(s.get('direction'))}")
    return word, head, sub


def run_view(context: dict[str, Any]) -> dict[str, Any]:
    """Everything the run page shows, as plain data (see the module docstring)."""
    s = context["summary"]
    run = context.get("run") or {}
    results = context.get("results") or []
    findings = context.get("findings") or []
    balances = context.get("balances")
    ev = context.get("evidence") or {}
    roles = context.get("roles") or Roles(None)
    names = Labels(roles, results, s.get("direction"))
    att = attribution_of(context)
    seen = (ev.get("seen") or {})
    run_id = s["run_id"]
    word, headline, sub = _headline(s, att, expectations_problem(ev.get("expectations"),
                                                                 bool(context.get("expect_checks"))))
    colour = GREEN if word == "GREEN" else RED

    nav = [{"text": "History of runs", "href": ev["history_href"]}] if ev.get("history_href") else []
    nav += [{"text": "findings.csv", "href": "findings.csv"}, {"text": "summary.json", "href": "summary.json"}]
    exp = ev.get("expectations")
    if exp and exp.get("data_docs"):
        nav.append({"text": "Data Docs", "href": exp["data_docs"]})

    # The evidence strip.
    tables = s.get("tables") or {}
    kinds = {k: sum(t[k] for t in tables.values()) for k in ("missing", "extra", "changed")}
    cards = [_card("Row mismatches", f"{s['persistent_mismatches']:,}", "bad" if s["persistent_mismatches"] else "ok",
                   f"{kinds['missing']:,} missing · {kinds['extra']:,} extra · {kinds['changed']:,} changed")]
    bstate = (s.get("balances") or {}).get("status")
    if bstate in (None, "green", "red"):
        n = int(s.get("balance_differences") or 0)
        cards.append(_card("Balance differences", f"{n:,}", "bad" if n else "ok",
                           f"{att.explained:,} explained by faults, {n - att.explained:,} not" if n else "none"))
    else:
        cards.append(_card("Balances", balance_phrase(s), "warn", (s.get("balances") or {}).get("reason")))
    if exp and exp.get("run_id"):
        ev_n, failed = exp.get("evaluated") or 0, (exp.get("failed") or 0) + (exp.get("errors") or 0)
        cards.append(_card("Expectations", f"{ev_n - failed:,} / {ev_n:,} passed", "bad" if failed else "ok",
                           f"{failed:,} failed" + ("" if exp.get("linked") else " · latest run, not this one")))
    else:
        cards.append(_card("Expectations", "not run", "warn", "no expectations run stored" if exp else None))
    gate = ev.get("gate") or {}
    gev = gate.get("evaluation")
    if gev:
        streak = next((c for c in gev["criteria"] if c["name"] == "green_diff_streak"), None)
        note = None
        if streak:
            e = streak.get("evidence") or {}
            note = f"green streak {e.get('consecutive_green', 0)} of {e.get('required_runs', '?')} runs"
        fail = len(gev.get("failing") or [])
        cards.append(_card(f"{gev['gate'].capitalize()} gate", "ready" if gev.get("passed") else
                           f"{fail} of {len(gev['criteria'])} fail", "ok" if gev.get("passed") else "bad", note, id="gate-card"))
    elif gate:
        cards.append(_card("Cutover gate", gate.get("state") or "error", "warn" if gate.get("error") else "info",
                           gate.get("error")))
    rep = ev.get("replay") or {}
    if rep and "error" not in rep:
        limit = context.get("lag_limit")
        p99 = rep.get("lag_seconds_p99")
        state = "info" if p99 is None else ("bad" if limit and p99 >= limit else "ok")
        cards.append(_card("Replay lag p99", seconds(p99), state,
                           f"latest replay run; max {seconds(rep.get('max_p99'))} in {rep.get('window_hours', 24):g} h"
                           if rep.get("runs") else "no replay run in the window"))
        dl = rep.get("dead_letters_open")
        if dl is not None:
            cards.append(_card("Dead letters", f"{dl:,} open", "bad" if dl else "ok"))
    cov = coverage_view(s, results, balances)
    cards.append(_card("Coverage", f"{cov['compared']} / {cov['configured']} tables", "ok" if cov["full"] else "warn",
                       "full reconciliation" if cov["full"] else "partial: see below"))

    unexplained = [unexplained_view(u, names, seen, run_id) for u in att.unexplained[:LISTED]]
    faults = [fault_view(f, names, seen, run_id) for f in att.faults[:LISTED]]
    rest = "{:,} more on the findings pages and in summary.json (attribution)."
    view = {
        "title": f"{word} · {len(att.faults):,} faults, {len(att.unexplained):,} unexplained · diff run {run_id}",
        "colour": colour, "word": word, "headline": headline, "sub": sub, "nav": nav,
        "meta": f"run {run_id} · finished {cells.utc(run.get('finished_at'))} · {s['duration_seconds']:.1f} s",
        "cards": cards, "scope_notes": scope_notes(s), "errors": s.get("errors") or {},
        "counts": {"faults": len(att.faults), "unexplained": len(att.unexplained)},
        "faults": faults, "unexplained": unexplained,
        "faults_cut": rest.format(len(att.faults) - LISTED) if len(att.faults) > LISTED else None,
        "unexplained_cut": rest.format(len(att.unexplained) - LISTED) if len(att.unexplained) > LISTED else None,
        "faults_none": "No row differs between source and target." if not s["persistent_mismatches"]
        else "None stored.",
        "unexplained_none": ("Every balance difference is explained by a fault." if s.get("balance_differences")
                             else "No balance difference."),
        "attribution_note": None if att.complete else
        ("not every finding of this run is stored ([diff] max_findings per table): a difference shown as "
         "unexplained may be explained by a row finding beyond the limit."),
        "gate": gate_view(gate or None), "expectations": expectations_view(exp),
        "replay": replay_view(rep or None, context.get("lag_limit")), "coverage": cov,
        "sweep_coverage": Markup(coverage_html(s)),
        "currencies": currencies_view(balances),
        "findings_total": len(findings),
        "findings_rows": [finding_row(f, names) for f in findings[:DETAIL_INLINE]],
    }
    pages = findings_pages(len(findings))
    view["findings_pages"] = pages
    view["findings_more"] = (f"The first {DETAIL_INLINE:,} are shown here; all {len(findings):,}, "
                             f"{PAGE_ROWS:,} a page:" if pages else "")
    settings = run.get("settings") or {}
    view["facts"] = [("Run id", run_id), ("Status", s.get("status", s["verdict"])),
                     ("Started", cells.utc(run.get("started_at"))), ("Finished", cells.utc(run.get("finished_at"))),
                     ("Duration", f"{s['duration_seconds']:.3f} s"), ("Start LSN (source)", s.get("start_lsn") or "–"),
                     ("Replay slot", settings.get("slot_name") or "–"),
                     ("Lag wait", f"{settings.get('lag_wait_seconds')} s"),
                     ("Report folder", s.get("report_page") or s.get("report_dir") or "–")]
    view["settings"] = [(k, cells.plain(v, limit=200)) for k, v in sorted((settings.get("diff") or {}).items())]
    return view


def findings_pages(total: int) -> list[dict[str, str]]:
    """The ``findings-<n>.html`` pages a run with ``total`` findings gets (none when they fit on the run page)."""
    if total <= DETAIL_INLINE:
        return []
    n = (total + PAGE_ROWS - 1) // PAGE_ROWS
    return [{"href": f"findings-{i}.html", "label": f"{i * PAGE_ROWS - PAGE_ROWS + 1:,}–{min(total, i * PAGE_ROWS):,}"}
            for i in range(1, n + 1)]


def render_html(context: dict[str, Any]) -> str:
    """The run page (``report.html``)."""
    return render("run.html.j2", v=run_view(context))


def render_findings_page(context: dict[str, Any], page: int) -> str:
    """Findings page ``page`` (1-based): :data:`PAGE_ROWS` findings with readable cells."""
    s = context["summary"]
    findings = context.get("findings") or []
    names = Labels(context.get("roles") or Roles(None), context.get("results") or [], s.get("direction"))
    att = attribution_of(context)
    word, headline, _ = _headline(s, att)
    rows = findings[(page - 1) * PAGE_ROWS: page * PAGE_ROWS]
    pages = findings_pages(len(findings))
    for i, p in enumerate(pages, start=1):
        p["current"] = i == page
    ev = context.get("evidence") or {}
    nav = [{"text": "History of runs", "href": ev["history_href"]}] if ev.get("history_href") else []
    return render("findings.html.j2", v={
        "title": f"Findings {pages[page - 1]['label'] if pages else ''} · diff run {s['run_id']}",
        "colour": GREEN if s["verdict"] == "green" else RED, "word": word, "headline": headline,
        "sub": f"Findings {pages[page - 1]['label'] if pages else ''} of {len(findings):,} · run {s['run_id']}",
        "nav": nav, "pages": pages, "rows": [finding_row(f, names) for f in rows]})
