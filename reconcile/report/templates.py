"""The Jinja2 environment of the report pages (``reconcile/report/templates/*.j2``).

Autoescaping is on for every template: values from the databases (a memo, a column name) are text,
never markup. The pages are self-contained: the stylesheet is included inline, charts are inline SVG,
and nothing is fetched (no CDN, no script).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2

__all__ = ["render"]


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    from reconcile.report.html import LISTED

    env = jinja2.Environment(loader=jinja2.PackageLoader("reconcile.report", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.globals["listed"] = LISTED   # faults / differences F<n>, U<n> up to this number have an anchor on the run page
    return env


def render(name: str, **values: Any) -> str:
    """Render template ``name`` (e.g. ``run.html.j2``) with ``values``."""
    return environment().get_template(name).render(**values)
