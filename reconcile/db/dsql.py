"""`DsqlConnection`: a psycopg connection that refuses, client-side, what DSQL refuses and no
server-side guard on the local stand-in can see.

Modelled on psycopg's ``CrdbConnection``: a subclass, not flags. Every target connection handed
out by :mod:`reconcile.connections` is one, on real DSQL and on the stand-in alike, so code that
would open a SAVEPOINT (psycopg does so for a nested ``conn.transaction()``), LOCK a table or
LISTEN breaks in our tests before it reaches DSQL.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator

import psycopg
from psycopg import errors, sql
from psycopg.pq import TransactionStatus

_REFUSED = re.compile(r"^\s*(SAVEPOINT|RELEASE\s+SAVEPOINT|ROLLBACK\s+TO|LOCK|LISTEN|NOTIFY|UNLISTEN)\b",
                      re.IGNORECASE)


class DsqlConnection(psycopg.Connection):
    """A target connection with DSQL's client-visible restrictions."""

    @contextmanager
    def transaction(self, savepoint_name: str | None = None,
                    force_rollback: bool = False) -> Iterator[psycopg.Transaction]:
        if savepoint_name is not None or self.pgconn.transaction_status != TransactionStatus.IDLE:
            raise errors.FeatureNotSupported(
                "SAVEPOINT is not supported: Aurora DSQL has no nested transactions; open each "
                "transaction on an idle autocommit connection")
        with super().transaction(force_rollback=force_rollback) as tx:
            yield tx

    def execute(self, query: Any, params: Any = None, **kwargs: Any):  # type: ignore[override]
        _refuse_unsupported(query, self)
        return super().execute(query, params, **kwargs)


def _refuse_unsupported(query: Any, conn: psycopg.Connection) -> None:
    if isinstance(query, bytes):
        text = query.decode(errors="replace")
    elif isinstance(query, str):
        text = query
    elif isinstance(query, sql.Composable):
        try:
            text = query.as_string(conn)
        except Exception:
            return
    else:
        return
    m = _REFUSED.match(text)
    if m:
        raise errors.FeatureNotSupported(f"{m.group(1).upper()} is not supported on Aurora DSQL")
