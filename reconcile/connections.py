"""The one place that hands out psycopg 3 connections and pools for the source and the target.

- ``local``: the conninfo comes from the embedded stack (``reconcile.local.stack.url``).
- ``postgres``: the configured conninfo, the password read from ``$password_env`` at connect time.
- ``dsql``: through the official connector (``aurora_dsql_psycopg``), which mints a fresh IAM
  token for every new connection; ``sslmode=verify-full``; pools recycle connections after
  55 minutes, under DSQL's 60-minute connection lifetime.

Every target connection is a :class:`reconcile.db.dsql.DsqlConnection` (it refuses SAVEPOINT,
LOCK, LISTEN client-side, on real DSQL and on the stand-in alike). Sessions keep the server's
isolation level: REPEATABLE READ on DSQL (its only level) and on our stand-in target; nothing
here sets another one.

Every failure to connect becomes one sentence naming the side, the server and the fix:
:class:`~reconcile.errors.ConnectionFailed` when the server could not be reached or refused us,
:class:`~reconcile.errors.ConfigError` when the settings themselves are wrong. Passwords and
tokens are stripped from driver messages before they are re-raised or logged, and the original
driver exception is not chained (its text may hold them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from reconcile.config import DsqlEndpoint, Endpoint, LocalEndpoint, PostgresEndpoint, conninfo_secrets, redact
from reconcile.db.dsql import DsqlConnection
from reconcile.errors import ConfigError, ConnectionFailed, LocalStackError

__all__ = [
    "APPLICATION_NAME",
    "CONNECT_TIMEOUT",
    "DSQL_MAX_LIFETIME",
    "connect",
    "pool",
]


APPLICATION_NAME = "reconcile"
CONNECT_TIMEOUT = 10
"""Seconds libpq waits for a server before giving up (its own default is unbounded)."""
DSQL_MAX_LIFETIME = 3300.0
"""Pool connection lifetime on DSQL, seconds: 55 minutes, under the 60-minute server cap."""
DEFAULT_MAX_LIFETIME = 3600.0


def connect(
    endpoint: Endpoint,
    *,
    local_url: Callable[[str], str] | None = None,
    autocommit: bool = True,
    application_name: str = APPLICATION_NAME,
    connect_timeout: int = CONNECT_TIMEOUT,
) -> psycopg.Connection:
    """Open one connection to the source or the target.

    Args:
        endpoint: ``config.source`` or ``config.target``.
        local_url: For ``local`` endpoints, ``role -> conninfo``; None asks the embedded stack
            (``reconcile.local.stack.url(role, data_dir)``).
        autocommit: Keep True and scope work with ``with conn.transaction():`` (a transaction
            opened implicitly would turn that block into a SAVEPOINT, which DSQL rejects).
        application_name: Shown in ``pg_stat_activity``; on DSQL the connector appends its own
            identifier (``reconcile:aurora-dsql-python-psycopg/<version>``).
        connect_timeout: Seconds to wait for the server.

    Returns:
        An open psycopg connection.

    Raises:
        ConnectionFailed: the server could not be reached or refused the login.
        ConfigError: the settings are wrong (bad conninfo, unset ``password_env``, no AWS
            credentials).
        LocalStackError: the embedded stack is not available.
    """
    plan = _plan(endpoint, local_url=local_url, autocommit=autocommit,
                 application_name=application_name, connect_timeout=connect_timeout)
    return plan.open()


def pool(
    endpoint: Endpoint,
    *,
    local_url: Callable[[str], str] | None = None,
    autocommit: bool = True,
    application_name: str = APPLICATION_NAME,
    min_size: int = 1,
    max_size: int | None = None,
    max_lifetime: float | None = None,
    timeout: float = 30.0,
    name: str | None = None,
    connect_timeout: int = CONNECT_TIMEOUT,
    open: bool = True,
) -> ConnectionPool:
    """A connection pool for the source or the target.

    With ``open=True`` (the default) one probe connection is made first, so a wrong host or
    password fails at once with :class:`ConnectionFailed` instead of as a pool timeout; then
    the pool is opened. With ``open=False`` the pool is returned unopened (use ``with pool:``).
    Connections are checked on checkout, so ones dropped by the server are replaced.

    Args:
        endpoint: ``config.source`` or ``config.target``.
        local_url: As for :func:`connect`.
        autocommit: As for :func:`connect`.
        application_name: As for :func:`connect`.
        min_size: Connections kept open.
        max_size: Upper bound (default ``min_size``).
        max_lifetime: Seconds before a connection is recycled; default 3300 on DSQL, 3600 else.
        timeout: Seconds ``pool.connection()`` waits for a free connection.
        name: Pool name in logs (default ``reconcile-<side>``).
        connect_timeout: As for :func:`connect`.
        open: Probe and open now.

    Returns:
        A ``psycopg_pool.ConnectionPool`` (an ``AuroraDSQLPool`` for DSQL).

    Raises:
        ConnectionFailed, ConfigError, LocalStackError: as for :func:`connect`, when ``open``.
    """
    plan = _plan(endpoint, local_url=local_url, autocommit=autocommit,
                 application_name=application_name, connect_timeout=connect_timeout)
    options: dict[str, Any] = dict(
        connection_class=plan.connection_class,
        kwargs=plan.kwargs,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=timeout,
        name=name or f"reconcile-{endpoint.side}",
        check=ConnectionPool.check_connection,
    )
    if isinstance(endpoint, DsqlEndpoint):
        import aurora_dsql_psycopg

        options["max_lifetime"] = DSQL_MAX_LIFETIME if max_lifetime is None else max_lifetime
        result: ConnectionPool = aurora_dsql_psycopg.create_pool(plan.conninfo, **options)
    else:
        options["max_lifetime"] = DEFAULT_MAX_LIFETIME if max_lifetime is None else max_lifetime
        result = ConnectionPool(plan.conninfo, **options)
    if open:
        plan.open().close()  # fail fast and clearly, before background workers start retrying
        result.open()
    return result


# --------------------------------------------------------------------------------------------


class _ScrubbedConnect(psycopg.Connection):
    """Re-raises connect errors with every password and token removed from the text.

    It sits right above ``psycopg.Connection`` in the MRO, so for DSQL it sees the keyword
    arguments after the connector has minted the token into ``password``.
    """

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any):  # type: ignore[override]
        try:
            return super().connect(conninfo, **kwargs)
        except psycopg.Error as exc:
            secrets = [kwargs.get("password"), kwargs.get("sslpassword"), *conninfo_secrets(conninfo)]
            clean = type(exc)(redact(str(exc), secrets))
        # Raised outside the except block: the original (unscrubbed) error is not chained.
        raise clean


class _SourceConnection(_ScrubbedConnect):
    """Source connection (local or postgres endpoint)."""


class _TargetConnection(DsqlConnection, _ScrubbedConnect):
    """Target connection on a PostgreSQL stand-in: DSQL's client-side restrictions apply."""


@functools.cache
def _dsql_connection_class() -> type[psycopg.Connection]:
    # Imported on first use: the connector pulls in boto3, which local runs never need.
    from aurora_dsql_psycopg import DSQLConnection

    class ReconcileDsqlConnection(DSQLConnection, DsqlConnection, _ScrubbedConnect):
        """DSQL connection: an IAM token minted per connect, secrets scrubbed from errors.

        MRO: the connector's ``DSQLConnection.connect`` mints the token into ``password``,
        then ``_ScrubbedConnect.connect`` guards psycopg's connect with that token known;
        ``reconcile.db.dsql.DsqlConnection`` adds the client-side checks (no SAVEPOINT...).
        """

    return ReconcileDsqlConnection


@dataclass
class _Plan:
    """What to call to connect, plus what to say when it fails."""

    endpoint: Endpoint
    connection_class: type[psycopg.Connection]
    conninfo: str
    kwargs: dict[str, Any]
    where: str
    secrets: list[str | None] = field(default_factory=list)

    def open(self) -> psycopg.Connection:
        try:
            return self.connection_class.connect(self.conninfo, **self.kwargs)
        except psycopg.OperationalError as exc:
            reason = _reason(str(exc), self.secrets)
            failure: Exception = ConnectionFailed(
                f"could not connect to the {self.endpoint.side} ({self.endpoint.kind} at "
                f"{self.where}): {reason}; {_fix(self.endpoint, reason)}")
        except psycopg.Error as exc:
            reason = _reason(str(exc), self.secrets)
            failure = ConfigError(
                f"the {self.endpoint.side} connection settings were rejected ({self.endpoint.kind} "
                f"at {self.where}): {reason}; {_settings_fix(self.endpoint)}")
        except ValueError as exc:  # the DSQL connector validating its parameters
            failure = ConfigError(
                f"the {self.endpoint.side} connection settings were rejected ({self.where}): "
                f"{_reason(str(exc), self.secrets)}; {_settings_fix(self.endpoint)}")
        except Exception as exc:
            failure = _token_failure(self.endpoint, exc)
            if failure is None:
                raise
        raise failure


def _plan(endpoint: Endpoint, *, local_url: Callable[[str], str] | None, autocommit: bool,
          application_name: str, connect_timeout: int) -> _Plan:
    common: dict[str, Any] = {"autocommit": autocommit, "application_name": application_name,
                              "connect_timeout": connect_timeout}
    if isinstance(endpoint, DsqlEndpoint):
        kwargs = {
            **common,
            "host": endpoint.endpoint,
            "port": endpoint.port,
            "dbname": "postgres",
            "user": endpoint.user,
            "region": endpoint.region,
            "token_duration_secs": endpoint.token_expires_in,
            "sslmode": "verify-full",
            "sslrootcert": endpoint.sslrootcert or "system",
        }
        if endpoint.profile:
            kwargs["profile"] = endpoint.profile
        if endpoint.hostaddr:
            kwargs["hostaddr"] = endpoint.hostaddr
        via = f" via {endpoint.hostaddr}" if endpoint.hostaddr else ""
        return _Plan(endpoint, _dsql_connection_class(), "", kwargs,
                     f"{endpoint.endpoint}:{endpoint.port}/postgres{via}")

    if isinstance(endpoint, LocalEndpoint):
        conninfo = _local_conninfo(endpoint, local_url)
        password = None
    elif isinstance(endpoint, PostgresEndpoint):
        conninfo = endpoint.conninfo
        password = endpoint.password()
    else:  # pragma: no cover - Endpoint is a closed union
        raise TypeError(f"not an endpoint: {endpoint!r}")
    secrets = [password, *conninfo_secrets(conninfo)]
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise ConfigError(
            f"the {endpoint.side} conninfo is not a valid libpq string or URL "
            f"({_reason(str(exc), secrets)}); {_settings_fix(endpoint)}") from None
    kwargs = dict(common)
    if password is not None:
        kwargs["password"] = password
    cls = _TargetConnection if endpoint.side == "target" else _SourceConnection
    return _Plan(endpoint, cls, conninfo, kwargs, _where(params), secrets)


def _local_conninfo(endpoint: LocalEndpoint, local_url: Callable[[str], str] | None) -> str:
    if local_url is None:
        try:
            from reconcile.local import stack
        except ImportError as exc:
            raise LocalStackError(f"the local stack is not available ({exc}); reinstall reconcile "
                                  "or configure a postgres or dsql endpoint") from None
        return stack.url(endpoint.side, endpoint.data_dir)
    return local_url(endpoint.side)


def _where(params: dict[str, Any]) -> str:
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or "(default database)"
    return f"{host}:{port}/{dbname}"


def _reason(message: str, secrets: Iterable[str | None]) -> str:
    """The driver's message on one line, without secrets or libpq's generic hint lines."""
    lines = [ln.strip() for ln in redact(message, secrets).splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith(("Is the server running", "HINT:"))]
    text = " ".join(kept).removeprefix("connection failed: ").rstrip(".")
    return text if len(text) <= 300 else text[:297] + "..."


def _settings_fix(endpoint: Endpoint) -> str:
    if isinstance(endpoint, PostgresEndpoint):
        return f"fix {endpoint.side}.conninfo in the config file or environment"
    if isinstance(endpoint, DsqlEndpoint):
        return f"check the [{endpoint.side}] settings (endpoint, region, user, sslrootcert)"
    return "restart the local stack with `reconcile local up`"


def _fix(endpoint: Endpoint, reason: str) -> str:
    r = reason.lower()
    side = endpoint.side
    if isinstance(endpoint, LocalEndpoint):
        return "start the local stack with `reconcile local up` and retry"
    if isinstance(endpoint, DsqlEndpoint):
        if any(s in r for s in ("signature", "access denied", "unauthorized", "authentication",
                                "token", "not authorized")):
            action = "dsql:DbConnectAdmin" if endpoint.user == "admin" else "dsql:DbConnect"
            profile = f" (profile {endpoint.profile})" if endpoint.profile else ""
            return (f"check that your AWS credentials{profile} allow {action} on cluster "
                    f"{endpoint.cluster_id} and that the system clock is right, then retry")
        if any(s in r for s in ("certificate", "ssl", "tls")):
            return (f"check {side}.sslrootcert (the Amazon root CA), or remove it to use the "
                    "system store")
        return (f"check {side}.endpoint and that this host can reach port {endpoint.port}, "
                "then retry")
    assert isinstance(endpoint, PostgresEndpoint)
    if "password" in r or "authentication" in r:
        if endpoint.password_env:
            return f"check that ${endpoint.password_env} holds the password for this user"
        return f"set {side}.password_env and export the variable holding the password"
    if "does not exist" in r:
        return f"check the user and dbname in {side}.conninfo"
    return f"check that the server is running and reachable at the host and port in {side}.conninfo"


def _token_failure(endpoint: Endpoint, exc: Exception) -> Exception | None:
    """Translate boto errors raised while minting a DSQL token; None if ``exc`` is not one."""
    try:
        from botocore import exceptions as be
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return None
    if not isinstance(endpoint, DsqlEndpoint) or not isinstance(exc, (be.BotoCoreError,
                                                                       be.ClientError)):
        return None
    reason = _reason(str(exc), ())
    if isinstance(exc, (be.NoCredentialsError, be.PartialCredentialsError, be.ProfileNotFound,
                        be.NoRegionError)):
        hint = (f"create profile {endpoint.profile} or fix {endpoint.side}.profile"
                if isinstance(exc, be.ProfileNotFound) else
                "configure AWS credentials (aws configure / aws sso login, or AWS_PROFILE)")
        return ConfigError(f"cannot mint a DSQL token for the {endpoint.side} "
                           f"({endpoint.endpoint}): {reason}; {hint}")
    return ConnectionFailed(f"cannot mint a DSQL token for the {endpoint.side} "
                            f"({endpoint.endpoint}): {reason}; check your AWS credentials and "
                            "network access to AWS, then retry")
