"""The history page's timeline: one column per diff run, as inline SVG shapes (no script, no CDN).

Tracks, top to bottom: the gate's green streak (a band over exactly the runs the gate counts, with its
count and span, or a mark on the run that broke it), the verdict of each run, persistent row mismatches,
balance differences (explained by faults vs not), and the replay lag p99 recorded with each run. Every
column links to its run page and carries a tooltip with the figures. :func:`shapes` returns plain data
(rect/line/polyline/text dicts) that ``history.html.j2`` draws, so every label is escaped.
"""

from __future__ import annotations

from typing import Any

from reconcile.report import cells

__all__ = ["COLOURS", "shapes"]

COLOURS = {"green": "#1a7f37", "red": "#cf222e", "error": "#9a6700", "partial": "#8c959f", "explained": "#54aeff",
           "unexplained": "#cf222e", "mismatch": "#bc4c00", "lag": "#8250df", "streak": "#1a7f37", "grid": "#d0d7de",
           "text": "#1f2328", "muted": "#57606a"}
WIDTH = 1344
LEFT, RIGHT = 170, 70
TRACKS = {"streak": (14, 20), "verdict": (44, 22), "mismatches": (80, 48), "balances": (142, 48), "lag": (204, 48)}
AXIS_Y = 272
HEIGHT = 290


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def shapes(runs: list[dict[str, Any]], streak: dict[str, Any] | None, *, href=lambda r: f"{r['run_id']}/report.html") \
        -> dict[str, Any]:
    """The timeline of ``runs`` (oldest first, each ``{run_id, status, started_at, summary, counted}``).

    ``streak``: ``{"label", "broken_by"}`` from the gate's ``green_diff_streak`` evidence (None: no gate).
    Returns ``{"width", "height", "shapes": [...], "columns": [{href, x, w, title}]}``.
    """
    out: list[dict[str, Any]] = []
    n = max(1, len(runs))
    x0, x1 = LEFT, WIDTH - RIGHT
    slot = (x1 - x0) / n
    bar = max(2.0, min(26.0, slot * 0.7))

    def cx(i: int) -> float:
        return x0 + slot * i + slot / 2

    def text(x: float, y: float, s: str, *, size: int = 12, fill: str = COLOURS["text"], anchor: str = "start",
             weight: str = "normal") -> None:
        out.append({"t": "text", "x": round(x, 1), "y": round(y, 1), "text": s, "size": size, "fill": fill,
                    "anchor": anchor, "weight": weight})

    def rect(x: float, y: float, w: float, h: float, fill: str, **extra: Any) -> None:
        out.append({"t": "rect", "x": round(x, 1), "y": round(y, 1), "w": round(max(w, 0.0), 1),
                    "h": round(max(h, 0.0), 1), "fill": fill, **extra})

    figures = []
    for r in runs:
        s = r.get("summary") or {}
        att = s.get("attribution") or {}
        bal = int(_num(s.get("balance_differences")))
        explained = int(_num(att.get("explained_balance_differences"))) if att else 0
        figures.append({"mismatches": int(_num(s.get("persistent_mismatches"))), "balances": bal,
                        "explained": min(explained, bal), "lag": (s.get("replay") or {}).get("lag_seconds_p99"),
                        "faults": att.get("faults"), "unexplained": att.get("unexplained")})

    # Track labels and guides.
    for name, label in (("streak", "Gate streak"), ("verdict", "Verdict"), ("mismatches", "Row mismatches"),
                        ("balances", "Balance differences"), ("lag", "Replay lag p99")):
        y, h = TRACKS[name]
        text(4, y + min(h, 22) / 2 + 4, label, weight="bold")
        if name in ("mismatches", "balances", "lag"):
            out.append({"t": "line", "x1": x0, "y1": y + h, "x2": x1, "y2": y + h, "stroke": COLOURS["grid"]})

    # Verdicts.
    y, h = TRACKS["verdict"]
    for i, (r, fig) in enumerate(zip(runs, figures)):
        s = r.get("summary") or {}
        colour = COLOURS.get(r["status"], COLOURS["partial"])
        partial = s.get("full_reconciliation") is False
        rect(cx(i) - bar / 2, y, bar, h, COLOURS["partial"] if partial and r["status"] == "green" else colour,
             stroke="#ffffff" if not partial else colour, dash=partial)

    # Row mismatches and balance differences: bars on a linear scale, the maximum labelled.
    for name, key in (("mismatches", "mismatches"), ("balances", "balances")):
        y, h = TRACKS[name]
        top = max((f[key] for f in figures), default=0)
        text(4, y + h - 2, f"max {top:,}", size=11, fill=COLOURS["muted"])
        for i, fig in enumerate(figures):
            v = fig[key]
            if v <= 0:
                continue
            full = max(2.0, h * v / top)
            if name == "mismatches":
                rect(cx(i) - bar / 2, y + h - full, bar, full, COLOURS["mismatch"])
            else:
                part = full * fig["explained"] / v if v else 0
                if fig["explained"] < v:      # a few unexplained among thousands stay visible
                    part = min(part, full - 3)
                rect(cx(i) - bar / 2, y + h - full, bar, full - part, COLOURS["unexplained"])
                rect(cx(i) - bar / 2, y + h - part, bar, part, COLOURS["explained"])
            if len(figures) <= 30:
                text(cx(i), y + h - full - 2, f"{v:,}", size=10, fill=COLOURS["muted"], anchor="middle")

    # Replay lag: a line through the runs that recorded one.
    y, h = TRACKS["lag"]
    lags = [(i, float(f["lag"])) for i, f in enumerate(figures) if isinstance(f["lag"], (int, float))]
    top = max((v for _, v in lags), default=0.0)
    text(4, y + h - 2, f"max {top:,.2f} s" if lags else "not recorded", size=11, fill=COLOURS["muted"])
    if lags:
        points = [(cx(i), y + h - (h * v / top if top else 0)) for i, v in lags]
        out.append({"t": "polyline", "points": " ".join(f"{px:.1f},{py:.1f}" for px, py in points),
                    "stroke": COLOURS["lag"]})
        for px, py in points:
            out.append({"t": "circle", "cx": round(px, 1), "cy": round(py, 1), "r": 3, "fill": COLOURS["lag"]})

    # The gate's streak: drawn over the runs it counts.
    y, h = TRACKS["streak"]
    counted = [i for i, r in enumerate(runs) if r.get("counted")]
    if streak is not None:
        if counted:
            lo, hi = min(counted), max(counted)
            rect(cx(lo) - slot / 2 + 2, y, cx(hi) - cx(lo) + slot - 4, h, "#dafbe1", stroke=COLOURS["streak"])
            text(cx(hi) + slot / 2 - 6, y + 14, streak["label"], size=11, fill="#116329", anchor="end", weight="bold")
        else:
            text(x1, y + 14, streak["label"], size=11, fill=COLOURS["unexplained"], anchor="end", weight="bold")
        broken = next((i for i, r in enumerate(runs) if r["run_id"] == streak.get("broken_by")), None)
        if broken is not None:
            vy = TRACKS["verdict"][0]
            out.append({"t": "line", "x1": cx(broken) - 6, "y1": vy - 12, "x2": cx(broken) + 6, "y2": vy - 2,
                        "stroke": COLOURS["unexplained"], "width": 2.5})
            out.append({"t": "line", "x1": cx(broken) + 6, "y1": vy - 12, "x2": cx(broken) - 6, "y2": vy - 2,
                        "stroke": COLOURS["unexplained"], "width": 2.5})

    # Time axis (UTC): first, last and a few between.
    step = max(1, len(runs) // 6)
    for i, r in enumerate(runs):
        if i % step == 0 or i == len(runs) - 1:
            if i != len(runs) - 1 and len(runs) - 1 - i < step / 2:
                continue
            text(cx(i), AXIS_Y, cells.utc(r.get("started_at"), seconds=False)[5:-4], size=10, fill=COLOURS["muted"],
                 anchor="middle")
    text(x1 + 8, AXIS_Y, "UTC", size=10, fill=COLOURS["muted"])

    columns = []
    for i, (r, fig) in enumerate(zip(runs, figures)):
        tip = (f"{cells.utc(r.get('started_at'))} · {r['status'].upper()} · {fig['mismatches']:,} row mismatches · "
               f"{fig['balances']:,} balance differences ({fig['explained']:,} explained)")
        if fig["faults"] is not None:
            tip += f" · {fig['faults']:,} faults, {fig['unexplained']:,} unexplained"
        if fig["lag"] is not None:
            tip += f" · replay lag p99 {float(fig['lag']):.2f} s"
        if r.get("counted"):
            tip += " · counted in the gate's streak"
        columns.append({"href": href(r), "x": round(x0 + slot * i, 1), "w": round(slot, 1), "title": tip})
    return {"width": WIDTH, "height": HEIGHT, "shapes": out, "columns": columns}
