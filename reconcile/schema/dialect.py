"""Where the target DDL differs between Aurora DSQL and PostgreSQL (the local stand-in).

The plan is built by one code path; the few statements that differ ask the dialect for their
form (a subclass per server, not flags, per STYLE.md section 1):

============================  =====================================  ===============================
statement                     DSQL                                   PostgreSQL / stand-in
============================  =====================================  ===============================
create an index               ``CREATE INDEX ASYNC`` (returns a      ``CREATE INDEX`` (synchronous)
                              job id to wait for)
validate a foreign key        ``ALTER TABLE ASYNC ... VALIDATE``     ``ALTER TABLE ... VALIDATE``
                              (returns a job id)
============================  =====================================  ===============================
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from reconcile.config import DsqlEndpoint, Endpoint
from reconcile.errors import InvalidArgument

__all__ = ["DIALECTS", "Dialect", "DsqlDialect", "PostgresDialect", "dialect_for", "get_dialect"]


class Dialect:
    """PostgreSQL's forms; :class:`DsqlDialect` overrides what DSQL does differently."""

    name = "postgres"
    async_ddl = False
    """Whether index builds and validations return a job id to wait for."""

    def create_index(self, *, name: str, table: sql.Composable, keys: Sequence[sql.Composable], unique: bool,
                     include: Sequence[str] = (), predicate: sql.Composable | None = None) -> sql.Composed:
        """``CREATE [UNIQUE] INDEX [ASYNC] IF NOT EXISTS name ON table (keys) [INCLUDE] [WHERE]``.

        >>> PostgresDialect().create_index(name="i", table=sql.Identifier("s", "t"),
        ...     keys=[sql.Identifier("a")], unique=False).as_string()
        'CREATE INDEX IF NOT EXISTS "i" ON "s"."t" ("a")'
        >>> DsqlDialect().create_index(name="i", table=sql.Identifier("s", "t"),
        ...     keys=[sql.Identifier("a")], unique=True).as_string()
        'CREATE UNIQUE INDEX ASYNC IF NOT EXISTS "i" ON "s"."t" ("a")'
        """
        parts: list[sql.Composable] = [sql.SQL("CREATE {}INDEX {}IF NOT EXISTS {} ON {} ({})").format(
            sql.SQL("UNIQUE " if unique else ""), sql.SQL("ASYNC " if self.async_ddl else ""),
            sql.Identifier(name), table, sql.SQL(", ").join(keys))]
        if include:
            parts.append(sql.SQL(" INCLUDE ({})").format(sql.SQL(", ").join(map(sql.Identifier, include))))
        if predicate is not None:
            parts.append(sql.SQL(" WHERE {}").format(predicate))
        return sql.Composed(parts)

    def validate_constraint(self, *, table: sql.Composable, name: str) -> sql.Composed:
        """``ALTER TABLE [ASYNC] table VALIDATE CONSTRAINT name``."""
        return sql.SQL("ALTER TABLE {}{} VALIDATE CONSTRAINT {}").format(
            sql.SQL("ASYNC " if self.async_ddl else ""), table, sql.Identifier(name))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class PostgresDialect(Dialect):
    """PostgreSQL and the local DSQL stand-in: synchronous DDL."""


class DsqlDialect(Dialect):
    """Aurora DSQL: asynchronous index builds and constraint validation."""

    name = "dsql"
    async_ddl = True


DIALECTS: dict[str, Dialect] = {"postgres": PostgresDialect(), "dsql": DsqlDialect()}


def get_dialect(name: str | Dialect) -> Dialect:
    """The dialect called ``name`` (``postgres`` or ``dsql``)."""
    if isinstance(name, Dialect):
        return name
    try:
        return DIALECTS[name]
    except KeyError:
        raise InvalidArgument(f"unknown dialect {name!r}; use one of {', '.join(DIALECTS)}") from None


def dialect_for(endpoint: Endpoint) -> Dialect:
    """DSQL for a ``dsql`` target, PostgreSQL for the local stand-in or a PostgreSQL target."""
    return DIALECTS["dsql"] if isinstance(endpoint, DsqlEndpoint) else DIALECTS["postgres"]
