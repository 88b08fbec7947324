"""What a diff run did, in words, for every place its verdict is shown (CLI, summary.md, report.html).

A verdict alone can mislead: a green run that skipped the balances (``[diff] balances = false``), left
out a table, or compared statically because the replay was not advancing says so next to the verdict,
in the same words everywhere. All of it comes from the run summary (:mod:`reconcile.diff.run`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["balance_phrase", "direction_line", "headline", "notes"]

_STATUS_WORDS = {"skipped": "skipped", "not_applicable": "not applicable", "error": "not compared (error)",
                 "not_run": "not compared"}


def _balances(summary: dict[str, Any]) -> dict[str, Any]:
    return summary.get("balances") or {}


def balance_phrase(summary: dict[str, Any]) -> str:
    """``"3 balance differences"`` when the balances were compared, else what happened to them.

    >>> balance_phrase({"balance_differences": 0, "balances": {"status": "skipped"}})
    'balances skipped'
    >>> balance_phrase({"balance_differences": 2, "balances": {"status": "red"}})
    '2 balance differences'
    """
    status = _balances(summary).get("status")
    if status in (None, "green", "red"):
        return f"{summary.get('balance_differences', 0):,} balance differences"
    return f"balances {_STATUS_WORDS.get(status, status)}"


def headline(summary: dict[str, Any]) -> str:
    """``GREEN``, ``RED``, with ``(not a full reconciliation)`` when the run was partial.

    >>> headline({"verdict": "green", "full_reconciliation": False})
    'GREEN (not a full reconciliation)'
    """
    text = str(summary.get("verdict", "unknown")).upper()
    if summary.get("full_reconciliation") is False:
        text += " (not a full reconciliation)"
    if summary.get("direction") == "reverse":
        text += " (reverse: the target is the system of record)"
    return text


def direction_line(summary: dict[str, Any]) -> str:
    """What the run's direction means for its counts (one sentence).

    >>> direction_line({"direction": "reverse"})[:60]
    'Direction: reverse (the target is the system of record, afte'
    """
    from reconcile.direction import REVERSE, describe

    d = summary.get("direction") or "forward"
    if d == REVERSE:
        return (f"Direction: {describe(d)}; missing = on the target but not on the source, extra = on the "
                "source only.")
    return f"Direction: {describe(d)}; missing = on the source but not on the target, extra = on the target only."


def notes(summary: dict[str, Any]) -> list[str]:
    """Sentences on the run's scope, its balances and its waits for the replay (empty when there is nothing to say)."""
    out = []
    if summary.get("full_reconciliation") is False:
        out.append("Not a full reconciliation: " + "; ".join(summary.get("partial_reasons") or ["partial run"]) + ".")
    b = _balances(summary)
    status = b.get("status")
    if status in ("skipped", "not_applicable", "not_run", "error"):
        out.append(f"Balances {_STATUS_WORDS.get(status, status)}: {b.get('reason') or status}.")
    for kind, why in sorted((b.get("not_applicable") or {}).items()):
        out.append(f"Balance check {kind} not applicable: {why}.")
    waits = summary.get("lag_waits") or {}
    if waits.get("timed_out"):
        text = (f"Replay not advancing: waited {waits.get('waited_seconds', 0):.1f} s for the watermark in all "
                f"(the lag wait ended at {waits.get('timed_out_at')}: {waits.get('reason')}), then compared statically")
        if waits.get("skipped"):
            text += f"; {waits['skipped']} later wait(s) skipped"
        out.append(text + ".")
    elif waits.get("skipped"):
        out.append(f"Compared statically: {waits['skipped']} wait(s) for the replay skipped (the watermark did "
                   "not move after an earlier attempt's wait ended).")
    elif waits.get("waits"):
        out.append(f"Waited {waits.get('waited_seconds', 0):.1f} s for the replay watermark ({waits['waits']} "
                   "wait(s), all passed).")
    from reconcile.report.coverage import coverage_note

    covered = coverage_note(summary)
    if covered:
        out.append(covered)
    if (summary.get("repairs") or {}).get("sentence"):
        out.append(f"Repairs: {summary['repairs']['sentence']}")
    return out
