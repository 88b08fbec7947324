"""Column types SQLAlchemy does not know, kept by their names for Great Expectations.

SQLAlchemy reflects a PostgreSQL type its dialect does not list (``xml``, ``ltree``, ``cube``, any
extension's base type) as ``NullType`` with a warning, and GX compiles the type of every column of a
table before it evaluates any expectation on that table, so one such column made every expectation of
its table an error ("Can't generate DDL for NullType()"). The engines GX creates for our checks load
the :class:`NamedTypesPlugin` (``create_engine(..., plugins=[PLUGIN])``), which gives each engine's
dialect a type lookup that answers an unknown name with a type printing that name. Nothing outside
those engines changes (the dialect class keeps its own lookup).

Our expectations never compare column types, so a type known only by its name is enough; enums and
domains are reported by their names too on these engines.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy.dialects import plugins
from sqlalchemy.engine import CreateEnginePlugin
from sqlalchemy.types import UserDefinedType

__all__ = ["PLUGIN", "NamedType", "NamedTypesPlugin", "register"]

PLUGIN = "reconcile_named_types"
"""The plugin name to pass in ``create_engine(..., plugins=[PLUGIN])`` (after :func:`register`)."""


class NamedType(UserDefinedType):
    """A column type known only by its name (compiles to that name).

    >>> from sqlalchemy.dialects import postgresql
    >>> NamedType("xml").compile(dialect=postgresql.dialect())
    'xml'
    """

    cache_ok = True

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.name = name

    def get_col_spec(self, **kw: Any) -> str:
        return self.name


class _Names(dict):
    """A dialect's ``ischema_names`` whose lookups never miss.

    >>> _Names({"text": str}).get("text"), _Names({}).get("xml")().name
    (<class 'str'>, 'xml')
    """

    def get(self, key: Any, default: Any = None) -> Any:
        found = super().get(key, default)
        return found if found is not None else functools.partial(NamedType, key)


class NamedTypesPlugin(CreateEnginePlugin):
    """Gives the new engine's dialect the lookup of :class:`_Names`."""

    def update_url(self, url):
        return url

    def engine_created(self, engine) -> None:
        engine.dialect.ischema_names = _Names(engine.dialect.ischema_names)


@functools.cache
def register() -> str:
    """Register the plugin with SQLAlchemy (once); returns its name."""
    plugins.register(PLUGIN, __name__, "NamedTypesPlugin")
    return PLUGIN
