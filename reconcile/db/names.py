"""Qualified table names as reconcile writes them: ``schema.table``, a part double-quoted when it must be.

A part is written bare when it holds no dot, double quote or white space, and is then taken as it is
written (``ledger.Accounts`` is the table ``Accounts``, case kept: reconcile always quotes identifiers in
SQL). Any other part is written in double quotes, a quote inside doubled, as in SQL::

    ledger2."Select"            -> ("ledger2", "Select")      (written back as ledger2.Select)
    "my schema"."tab le"        -> ("my schema", "tab le")
    ledger."say ""hi"".v2"      -> ("ledger", 'say "hi".v2')

:func:`qualify` writes the one canonical form (bare where it can be), so a name read from the catalog and
the same name typed in any valid form compare equal. SQL never sees this text: :func:`identifier` gives
``psycopg.sql.Identifier(schema, table)``.

>>> split_name('"my schema"."tab le"')
('my schema', 'tab le')
>>> qualify("ledger2", "Select"), qualify("my schema", 'a"b')
('ledger2.Select', '"my schema"."a""b"')
>>> canonical('ledger2."Select"')
'ledger2.Select'
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopg import sql

__all__ = ["NameError_", "canonical", "identifier", "qualify", "quote_part", "split_name"]

_BARE = re.compile(r'[^."\s]+')
_PART = re.compile(r'"((?:[^"]|"")+)"|([^."\s]+)')


class NameError_(ValueError):
    """A qualified name that cannot be read; ``problem`` says why (for a one-sentence message)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name!r} {problem}")
        self.name, self.problem = name, problem

    def __reduce__(self):
        return (self.__class__, (self.name, self.problem))


def quote_part(part: str) -> str:
    """One part as written in a qualified name: bare, or in double quotes with quotes doubled."""
    return part if _BARE.fullmatch(part) else '"' + part.replace('"', '""') + '"'


def qualify(schema: str, table: str) -> str:
    """The canonical qualified name of ``schema``.``table``."""
    return f"{quote_part(schema)}.{quote_part(table)}"


def split_name(name: str) -> tuple[str, str]:
    """``(schema, table)`` of a qualified name (see the module docstring).

    Raises:
        NameError_: the name is not two parts separated by one dot (``problem`` says what is wrong).
    """
    parts: list[str] = []
    pos = 0
    while True:
        match = _PART.match(name, pos)
        if match is None:
            rest = name[pos:]
            if rest.startswith('""') and (len(rest) == 2 or rest[2] == "."):
                raise NameError_(name, "has an empty part")
            if rest.startswith('"'):
                raise NameError_(name, "has an unclosed double quote")
            if rest[:1].isspace() or (rest and not rest.startswith(".")):
                raise NameError_(name, "has white space or a quote outside double quotes")
            raise NameError_(name, "has an empty part")
        parts.append(match.group(1).replace('""', '"') if match.group(1) is not None else match.group(2))
        pos = match.end()
        if pos == len(name):
            break
        if name[pos] != ".":
            raise NameError_(name, "has white space or a quote outside double quotes")
        pos += 1
    if len(parts) != 2:
        raise NameError_(name, "is not schema.table" if len(parts) == 1 else
                         "has more than two parts (a dot inside a name must be in double quotes)")
    return parts[0], parts[1]


def canonical(name: str) -> str:
    """``name`` in its canonical form (raises :class:`NameError_` like :func:`split_name`)."""
    return qualify(*split_name(name))


def identifier(name: str) -> sql.Identifier:
    """``schema.table`` as a quoted SQL identifier.

    >>> identifier('ledger."tab le"').as_string()
    '"ledger"."tab le"'
    """
    from psycopg import sql  # deferred: reconcile.config reads names without importing the driver

    return sql.Identifier(*split_name(name))
