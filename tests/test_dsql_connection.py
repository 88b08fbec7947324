"""Client-side DSQL restrictions the server-side guards cannot see."""

from __future__ import annotations

import pytest
from psycopg import errors

from reconcile.db.dsql import DsqlConnection


def test_nested_transaction_would_be_a_savepoint(target_db):
    with DsqlConnection.connect(target_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        with pytest.raises(errors.FeatureNotSupported, match="SAVEPOINT"):
            with conn.transaction():
                conn.execute("INSERT INTO t VALUES (1)")
                with conn.transaction():
                    conn.execute("INSERT INTO t VALUES (2)")
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0  # outer rolled back too
        with conn.transaction():
            conn.execute("INSERT INTO t VALUES (3)")
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1


@pytest.mark.parametrize("stmt", ["SAVEPOINT a", "lock table t", "LISTEN x", "NOTIFY x", "ROLLBACK TO a"])
def test_statements_dsql_lacks(target_db, stmt):
    with DsqlConnection.connect(target_db, autocommit=True) as conn:
        with pytest.raises(errors.FeatureNotSupported):
            conn.execute(stmt)
