"""Session fixtures: one real local stack (two embedded PostgreSQL servers) for the whole run.

Every test that needs a database gets a fresh one on the server it needs (`source_db`,
`target_db`), created from template1 (which carries the DSQL guards on the target), and dropped
afterwards, so tests never see each other's tables.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest

from reconcile.local import stack


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory) -> dict[str, str]:
    """Both servers up under a temporary data folder; yields {'source': url, 'target': url}."""
    data_dir = Path(os.environ.get("RECONCILE_TEST_STACK_DIR") or tmp_path_factory.mktemp("stack"))
    stack.up(data_dir)
    yield {role: stack.url(role, data_dir) for role in stack.ROLES} | {"data_dir": str(data_dir)}
    if not os.environ.get("RECONCILE_TEST_STACK_DIR"):
        stack.down(data_dir)


def _fresh_db(server_url: str, prefix: str):
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template1')
    url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
    try:
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def target_db(local_stack) -> str:
    """Conninfo of a fresh database on the DSQL stand-in (guards installed)."""
    yield from _fresh_db(local_stack["target"], "t")


@pytest.fixture
def source_db(local_stack) -> str:
    """Conninfo of a fresh database on the source (en_US.UTF-8, wal_level=logical)."""
    yield from _fresh_db(local_stack["source"], "s")


@pytest.fixture(scope="session")
def kinesis_url():
    """moto's Kinesis server in a thread of the test process (the DSQL CDC stand-in's stream)."""
    from reconcile.local.kinesis import LocalKinesis

    server = LocalKinesis().start()
    yield server.url
    server.stop()
