"""reconcile.connections: what each endpoint kind connects with, and errors that never leak secrets.

No database: failures come from a closed local port (refused at once), successes from a fake
``psycopg.Connection.connect`` that records its arguments. DSQL tokens are signed for real by
boto3 with fake credentials (signing is local and offline).
"""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import psycopg
import pytest
from aurora_dsql_psycopg import AuroraDSQLPool, DSQLConnection
from dsql_core.token_manager import TokenManager

from reconcile import connections
from reconcile.config import DsqlEndpoint, LocalEndpoint, PostgresEndpoint
from reconcile.db.dsql import DsqlConnection
from reconcile.errors import ConfigError, ConnectionFailed

PASSWORD = "hunter2-Pa55/w@rd"
ENDPOINT = "abc123cluster.dsql.us-east-1.on.aws"


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def aws(monkeypatch, tmp_path):
    """Fake, isolated AWS credentials: tokens get signed, nothing reaches AWS."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-key")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def minted(monkeypatch) -> list[str]:
    """Every DSQL token the connector mints, in order."""
    tokens: list[str] = []
    real = TokenManager.get_token

    def spy(cls, dsql_params):
        tokens.append(real(dsql_params))
        return tokens[-1]

    monkeypatch.setattr(TokenManager, "get_token", classmethod(spy))
    return tokens


@pytest.fixture
def fake_connect(monkeypatch):
    """Replace libpq: record (class, conninfo, kwargs) and fail with a message echoing the password,
    as a careless driver might."""
    calls: list[tuple[type, str, dict]] = []

    def fake(cls, conninfo="", **kwargs):
        calls.append((cls, conninfo, kwargs))
        raise psycopg.OperationalError(
            f"connection failed: password {kwargs.get('password')} rejected for {conninfo}")

    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(fake))
    return calls


def assert_clean(message: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in message
    assert "X-Amz-Signature=" not in message or "X-Amz-Signature=***" in message


# -- DSQL --------------------------------------------------------------------------------------


def test_dsql_token_minted_and_not_in_error(aws, minted, closed_port):
    target = DsqlEndpoint("target", ENDPOINT, hostaddr="127.0.0.1", port=closed_port)
    with pytest.raises(ConnectionFailed) as info:
        connections.connect(target)
    assert len(minted) == 1
    token = minted[0]
    assert token.startswith(f"{ENDPOINT}/?Action=DbConnectAdmin&") and "X-Amz-Signature=" in token
    message = str(info.value)
    assert message.startswith(f"could not connect to the target (dsql at {ENDPOINT}:{closed_port}/postgres")
    assert "Connection refused" in message and "check target.endpoint" in message
    assert_clean(message, token, token.split("X-Amz-Signature=")[1], "fake-secret-key")
    assert info.value.__cause__ is None and info.value.__context__ is None  # nothing chained
    assert str(pickle.loads(pickle.dumps(info.value))) == message


def test_dsql_connect_parameters_and_echoed_token_is_stripped(aws, minted, fake_connect):
    target = DsqlEndpoint("target", ENDPOINT, user="migrator", token_expires_in=120)
    with pytest.raises(ConnectionFailed) as info:
        connections.connect(target, application_name="reconcile-test")
    (cls, conninfo, kwargs), = fake_connect
    token = minted[0]
    assert token.startswith(f"{ENDPOINT}/?Action=DbConnect&")  # non-admin role
    assert "X-Amz-Expires=120" in token
    assert issubclass(cls, DSQLConnection) and issubclass(cls, DsqlConnection)
    assert kwargs["password"] == token
    assert {k: kwargs[k] for k in ("host", "port", "dbname", "user", "sslmode", "sslrootcert",
                                   "autocommit")} == {
        "host": ENDPOINT, "port": 5432, "dbname": "postgres", "user": "migrator",
        "sslmode": "verify-full", "sslrootcert": "system", "autocommit": True}
    assert kwargs["application_name"].startswith("reconcile-test:aurora-dsql-python-psycopg/")
    assert not {"region", "profile", "token_duration_secs", "isolation_level"} & set(kwargs)
    assert_clean(str(info.value), token, token.split("X-Amz-Signature=")[1])


def test_each_dsql_connection_mints_its_own_token(aws, minted, fake_connect, monkeypatch):
    target = DsqlEndpoint("target", ENDPOINT)
    for _ in range(2):
        with pytest.raises(ConnectionFailed):
            connections.connect(target)
    assert len(minted) == 2 and fake_connect[0][2]["password"] == minted[0]


def test_dsql_without_credentials_is_a_config_error(monkeypatch, tmp_path, aws):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="cannot mint a DSQL token for the target .*configure AWS credentials"):
        connections.connect(DsqlEndpoint("target", ENDPOINT, hostaddr="127.0.0.1", port=1))


def test_dsql_pool(aws):
    p = connections.pool(DsqlEndpoint("target", ENDPOINT, sslrootcert=None), open=False, max_size=3)
    assert isinstance(p, AuroraDSQLPool)
    assert p.max_lifetime == connections.DSQL_MAX_LIFETIME == 3300
    assert issubclass(p.connection_class, DSQLConnection) and issubclass(p.connection_class, DsqlConnection)
    assert p.kwargs["sslmode"] == "verify-full" and "password" not in p.kwargs  # minted per connection
    assert (p.min_size, p.max_size, p.name) == (1, 3, "reconcile-target")


# -- PostgreSQL and local ----------------------------------------------------------------------


def test_postgres_failure_names_side_and_server_without_password(monkeypatch, closed_port):
    monkeypatch.setenv("LEDGER_PW", PASSWORD)
    source = PostgresEndpoint("source", f"host=127.0.0.1 port={closed_port} dbname=ledger user=app",
                              password_env="LEDGER_PW")
    with pytest.raises(ConnectionFailed) as info:
        connections.connect(source)
    message = str(info.value)
    assert message.startswith(f"could not connect to the source (postgres at 127.0.0.1:{closed_port}/ledger)")
    assert message.endswith("check that the server is running and reachable at the host and port in "
                            "source.conninfo")
    assert "\n" not in message
    assert_clean(message, PASSWORD)


def test_password_in_failing_conninfo_is_stripped(closed_port):
    # a conninfo that carries a password (e.g. from RECONCILE__SOURCE__CONNINFO), URL-encoded
    source = PostgresEndpoint("source", f"postgresql://app:hunter2-Pa55%2Fw%40rd@127.0.0.1:{closed_port}/ledger")
    with pytest.raises(ConnectionFailed) as info:
        connections.connect(source)
    assert_clean(str(info.value), PASSWORD, "hunter2-Pa55%2Fw%40rd", "hunter2")


def test_password_echoed_by_the_driver_is_stripped(monkeypatch, fake_connect):
    monkeypatch.setenv("LEDGER_PW", PASSWORD)
    source = PostgresEndpoint("source", "host=db.internal dbname=ledger", password_env="LEDGER_PW")
    with pytest.raises(ConnectionFailed) as info:
        connections.connect(source)
    (cls, conninfo, kwargs), = fake_connect
    assert kwargs["password"] == PASSWORD and conninfo == "host=db.internal dbname=ledger"
    assert kwargs["application_name"] == "reconcile" and kwargs["autocommit"] is True
    assert "isolation_level" not in kwargs
    assert not issubclass(cls, DsqlConnection)  # the source is plain PostgreSQL
    assert "password *** rejected" in str(info.value)
    assert_clean(str(info.value), PASSWORD)


def test_malformed_conninfo_quoting_the_password(tmp_path):
    # libpq quotes the whole URI in this error, password included
    with pytest.raises(ConfigError) as info:
        connections.connect(LocalEndpoint("target", tmp_path),
                            local_url=lambda role: "postgresql://app:hunter2@[::1/db")
    assert "the target conninfo is not a valid libpq string" in str(info.value)
    assert_clean(str(info.value), "hunter2")


def test_unset_password_env(monkeypatch):
    monkeypatch.delenv("LEDGER_PW_UNSET", raising=False)
    source = PostgresEndpoint("source", "host=db", password_env="LEDGER_PW_UNSET")
    with pytest.raises(ConfigError, match="source.password_env names LEDGER_PW_UNSET, which is not set"):
        connections.connect(source)


def test_local_uses_the_stack_lazily(monkeypatch, tmp_path, closed_port):
    from reconcile.local import stack

    asked: list[tuple[str, Path]] = []

    def url(role, data_dir=None):
        asked.append((role, data_dir))
        return f"postgresql://postgres@127.0.0.1:{closed_port}/postgres"

    monkeypatch.setattr(stack, "url", url)
    with pytest.raises(ConnectionFailed) as info:
        connections.connect(LocalEndpoint("target", tmp_path))
    assert asked == [("target", tmp_path)]
    assert str(info.value).startswith(f"could not connect to the target (local at 127.0.0.1:{closed_port}/postgres)")
    assert "reconcile local up" in str(info.value)


def test_target_connections_carry_dsql_restrictions(fake_connect, tmp_path):
    for side in ("source", "target"):
        with pytest.raises(ConnectionFailed):
            connections.connect(LocalEndpoint(side, tmp_path), local_url=lambda role: f"host=h dbname={role}")
    (source_cls, source_ci, _), (target_cls, target_ci, _) = fake_connect
    assert (source_ci, target_ci) == ("host=h dbname=source", "host=h dbname=target")
    assert not issubclass(source_cls, DsqlConnection) and issubclass(target_cls, DsqlConnection)


def test_pool_fails_fast_with_connection_failed(monkeypatch, closed_port):
    monkeypatch.setenv("LEDGER_PW", PASSWORD)
    source = PostgresEndpoint("source", f"host=127.0.0.1 port={closed_port} dbname=ledger",
                              password_env="LEDGER_PW")
    with pytest.raises(ConnectionFailed) as info:
        connections.pool(source, timeout=1)
    assert_clean(str(info.value), PASSWORD)
    p = connections.pool(source, open=False, min_size=2)
    assert p.max_lifetime == 3600 and p.kwargs["password"] == PASSWORD and p.kwargs["autocommit"] is True
