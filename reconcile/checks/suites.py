"""The suites as Great Expectations JSON, for review and for committing under ``checks/expectations/``.

One file per suite, named for its data (``ledger.accounts.json``, ``ledger.json``), holding GX's own
serialisation of an ``ExpectationSuite``: what ``reconcile check generate`` writes. The files are
generated: regenerate them after a schema change rather than editing them by hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reconcile.checks.spec import Check, substitute_chunk

__all__ = ["suite_documents", "write_suites"]


def suite_documents(checks: Iterable[Check]) -> dict[str, dict[str, Any]]:
    """suite name -> the GX ExpectationSuite JSON (expectation meta names each check)."""
    from reconcile.checks.gxrun import _context, import_gx

    gx = import_gx()
    _context(gx, None)  # GX binds suites to the current context
    grouped: dict[str, list[Check]] = {}
    for check in checks:
        grouped.setdefault(check.suite, []).append(check)
    out = {}
    for name, group in grouped.items():
        suite = gx.ExpectationSuite(name=name, meta={"generated_by": "reconcile check generate",
                                                     "sides": sorted({s for c in group for s in c.sides})})
        for check in group:
            cls = getattr(gx.expectations, check.expectation)
            kwargs = dict(check.kwargs)
            if "unexpected_rows_query" in kwargs:  # the whole-table form (key-range chunks are a run's affair)
                kwargs["unexpected_rows_query"] = substitute_chunk(kwargs["unexpected_rows_query"])
            suite.add_expectation(cls(**kwargs, description=check.description,
                                      meta={"reconcile_check": check.name, "asset": check.asset,
                                            **({"evidence": check.evidence} if check.evidence else {})}))
        doc = suite.to_json_dict()
        doc.pop("id", None)
        for e in doc.get("expectations", []):
            e.pop("id", None)
        out[name] = doc
    return out


def write_suites(checks: Iterable[Check], out_dir: Path | str) -> list[Path]:
    """Write one ``<suite>.json`` per suite into ``out_dir``; returns the files written."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in suite_documents(checks).items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        written.append(path)
    return written
