"""Settings for every stage: typed, frozen and validated when built.

Where a value comes from, highest precedence first:

1. the environment, ``RECONCILE__<SECTION>__<KEY>`` (e.g. ``RECONCILE__TARGET__ENDPOINT``);
   ``RECONCILE_LOCAL_DIR`` (shared with ``reconcile local``) also sets ``[local] data_dir``;
2. the TOML file (``--config PATH``, else ``./reconcile.toml`` when it exists);
3. the defaults below (local source and target, the demo ledger tables).

String values in the file may reference ``${VAR}``; a missing ``VAR`` is an error, never "".
Secrets never go in the file: the source password is read at connect time from the variable
named by ``password_env``, and DSQL passwords are IAM tokens minted per connection. Unknown keys,
wrong types and impossible values raise :class:`~reconcile.errors.ConfigError` with one sentence
that names the dotted key, where it came from, and the fix.

>>> cfg = load_config(None, environ={})  # doctest: +SKIP
>>> cfg.target.kind, [t.name for t in cfg.tables]  # doctest: +SKIP
('local', ['ledger.accounts', 'ledger.journal', 'ledger.entries'])
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeAlias
from urllib.parse import quote

from reconcile.db.names import NameError_, canonical, split_name
from reconcile.errors import ConfigError
from reconcile.settings_schema import Bounds, Fix, check_fields, from_env, specs, validate
from reconcile.settings_schema import show as _show
from reconcile.settings_schema import type_name as _type_name

__all__ = [
    "DEFAULT_FILE",
    "DEMO_STAGE_SETTINGS",
    "DEMO_TABLES",
    "ENV_PREFIX",
    "LOCAL_DIR_ENV",
    "OPTIONAL_ROLE_COLUMNS",
    "ROLE_COLUMNS",
    "SECRET_FIX",
    "BudgetSettings",
    "Config",
    "DsqlEndpoint",
    "Endpoint",
    "InvalidSetting",
    "LocalEndpoint",
    "LocalSettings",
    "PostgresEndpoint",
    "RetrySettings",
    "TableSpec",
    "load_config",
    "conninfo_secrets",
    "mask_conninfo",
    "one_line",
    "redact",
]

DEFAULT_FILE = "reconcile.toml"
ENV_PREFIX = "RECONCILE__"
LOCAL_DIR_ENV = "RECONCILE_LOCAL_DIR"
"""Also sets [local] data_dir (below RECONCILE__LOCAL__DATA_DIR, above the file), as for `local up`."""
SECRET_FIX = "secrets never go in the file; set password_env and export the variable"

Side = Literal["source", "target"]
Role = Literal["accounts", "transactions", "entries"]

# Role -> the role's column settings -> an example name (for error messages only: there are no
# defaults, a ledger's column names are never guessed). Every column of a table's role must be
# named in its [[tables]] entry; those in OPTIONAL_ROLE_COLUMNS may be "" when the ledger has no
# such column (a single-currency ledger, accounts without a stored balance, entries not linked to
# a journal transaction): the checks that need it are then reported "not applicable".
ROLE_COLUMNS: dict[str, dict[str, str]] = {
    "accounts": {
        "account_column": "account_id",
        "balance_column": "balance",
        "currency_column": "currency",
    },
    "transactions": {"transaction_column": "txn_id"},
    "entries": {
        "account_column": "account_id",
        "amount_column": "amount",
        "currency_column": "currency",
        "transaction_column": "txn_id",
    },
}
OPTIONAL_ROLE_COLUMNS: dict[str, frozenset[str]] = {
    "accounts": frozenset({"balance_column", "currency_column"}),
    "transactions": frozenset(),
    "entries": frozenset({"currency_column", "transaction_column"}),
}
"""Role columns that may be "" (the ledger has none)."""
_ROLE_COLUMN_MEANING = {
    "account_column": "the column identifying the account",
    "balance_column": "the stored balance column",
    "currency_column": "the currency column",
    "amount_column": "the signed amount column",
    "transaction_column": "the journal transaction id column",
}
_OPTIONAL_MEANING = {
    "balance_column": "the accounts keep no stored balance",
    "currency_column": "the ledger has a single currency",
    "transaction_column": "entries are not linked to journal transactions",
}
_ALL_ROLE_COLUMNS = ("balance_column", "amount_column", "currency_column", "account_column",
                     "transaction_column")


# --------------------------------------------------------------------------------------------
# Secrets: detection and masking (also used by reconcile.connections on driver errors)

_SECRET_KEY = re.compile(r"pass(?:word|wd)?|pwd|token|secret|credential|api_?key", re.IGNORECASE)
_NOT_SECRET_KEYS = frozenset({"password_env", "token_expires_in"})
# libpq stops the URI userinfo at the first '@' or '/', so a password cannot hold either.
_URI_PASSWORD = re.compile(r"(://[^:@/\s]*:)([^@/]+)(@)")
# key=value (conninfo) or key=value& (URL query) whose key names a secret: password, sslpassword, any
# *token*, *secret*, *credential*, *api_key* (libpq's secret-bearing keys and whatever a driver error quotes).
_SECRET_WORD = r"[A-Za-z_]*(?:pass(?:word|wd)|pwd|token|secret|credential|api_?key)[A-Za-z_]*"
_KV_PASSWORD = re.compile(rf"(\b{_SECRET_WORD}\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]+)", re.IGNORECASE)
_CONNINFO_SECRET_KEYS = ("password", "sslpassword")
"""libpq connection keys whose value is a secret."""
# Pieces of a presigned DSQL IAM token that must never be shown.
_AWS_SIGNED = re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token)=)([^&\s\"']+)")


def _looks_secret(key: str) -> bool:
    return key not in _NOT_SECRET_KEYS and bool(_SECRET_KEY.search(key))


def mask_conninfo(text: str) -> str:
    """Replace any password in a libpq conninfo string or URL (or text quoting one) by ``***``.

    >>> mask_conninfo("postgresql://app:hunter2@db/ledger")
    'postgresql://app:***@db/ledger'
    >>> mask_conninfo("host=db password='a b' dbname=ledger")
    'host=db password=*** dbname=ledger'
    >>> mask_conninfo("postgresql://app@db/ledger?sslkey=/k.pem&sslpassword=s3cret&sslmode=require")
    'postgresql://app@db/ledger?sslkey=/k.pem&sslpassword=***&sslmode=require'
    """
    text = _URI_PASSWORD.sub(r"\1***\3", text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    return _AWS_SIGNED.sub(r"\1***", text)


def conninfo_secrets(conninfo: str) -> list[str]:
    """The secret values a libpq conninfo string or URL carries (``password``, ``sslpassword``), for :func:`redact`.

    >>> conninfo_secrets("host=db sslpassword=k3y password=pw dbname=x")
    ['pw', 'k3y']
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(conninfo) if conninfo else {}
    except psycopg.Error:
        return []
    return [str(params[k]) for k in _CONNINFO_SECRET_KEYS if params.get(k)]


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove every known secret (raw, URL-encoded or libpq-quoted) and any conninfo password.

    Args:
        text: Any message, typically a driver error.
        secrets: Values that must not appear (passwords, tokens); ``None``/empty are ignored.

    Returns:
        The text with each secret and password replaced by ``***``.
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote(secret),
                     secret.replace("\\", "\\\\").replace("'", "\\'")}:
            text = text.replace(form, "***")
    return mask_conninfo(text)


def one_line(text: str, secrets: Iterable[str | None] = (), *, limit: int = 500) -> str:
    """``text`` redacted (:func:`redact`), on one line, at most ``limit`` characters."""
    text = " ".join(redact(text, secrets).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Validation helpers


class InvalidSetting(ConfigError):
    """A setting has a wrong type or value; the message names the dotted key and the fix."""

    def __init__(self, section: str, key: str, problem: str, fix: str, origin: str = "") -> None:
        self.section, self.key, self.problem, self.fix, self.origin = (
            section, key, problem, fix, origin)
        dotted = f"{section}.{key}" if key else section
        where = f" {origin}" if origin else ""
        super().__init__(f"{dotted}{where} {problem}; {fix}")

    def __reduce__(self):
        return (self.__class__, (self.section, self.key, self.problem, self.fix, self.origin))

    def located(self, origin: str, section: str | None = None) -> InvalidSetting:
        """The same problem, saying where the value came from (file or environment variable)."""
        return InvalidSetting(section or self.section, self.key, self.problem, self.fix, origin)


def _check_optional_str(section: str, key: str, value: str | None) -> None:
    if value is not None and not value.strip():
        raise InvalidSetting(section, key, "is empty", f"give a value or remove {key}")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PASSWORD_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_DSQL_HOST = re.compile(
    r"(?P<id>[a-z0-9]+)\.dsql(?:-[a-z0-9-]+)?\.(?P<region>[a-z]{2}(?:-[a-z0-9]+)+)\.on\.aws")
_REGION = re.compile(r"[a-z]{2}(?:-[a-z0-9]+)+")


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class LocalEndpoint:
    """A server of the embedded local stack (``reconcile local up``)."""

    side: Side
    """Which end of the migration this is: "source" or "target"."""
    data_dir: Path
    """Folder of the embedded stack; the server for ``side`` lives under it."""
    kind: ClassVar[str] = "local"

    def __post_init__(self) -> None:
        _check_side(self.side)
        object.__setattr__(self, "data_dir", Path(self.data_dir))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "data_dir": str(self.data_dir)}


@dataclass(frozen=True)
class PostgresEndpoint:
    """A PostgreSQL server (Aurora PostgreSQL, or any PostgreSQL for a dry run)."""

    side: Side
    """Which end of the migration this is: "source" or "target"."""
    conninfo: str
    """libpq connection string or URL, without a password (e.g. ``host=db dbname=ledger``)."""
    password_env: str | None = None
    """Name of the environment variable holding the password, read at connect time."""
    kind: ClassVar[str] = "postgres"

    def __post_init__(self) -> None:
        _check_side(self.side)
        check_fields(self, self.side)
        if not self.conninfo.strip():
            raise InvalidSetting(self.side, "conninfo", "is empty",
                                 "give a libpq string such as host=db.example.com dbname=ledger")
        params = _parse_conninfo(self.side, self.conninfo)
        if self.password_env is not None:
            # A name is upper-case by convention (or names a variable that is set); anything else may be the
            # password itself, typed in the wrong place: it is never echoed.
            if not (_PASSWORD_ENV_NAME.fullmatch(self.password_env)
                    or (_ENV_NAME.fullmatch(self.password_env) and self.password_env in os.environ)):
                raise InvalidSetting(
                    self.side, "password_env",
                    "must be the name of an environment variable (upper-case letters, digits and _), "
                    "which looks like a value instead (not shown)",
                    "write the variable's name, e.g. password_env = \"LEDGER_PGPASSWORD\", and export the "
                    "password in it")
            if params.get("password"):
                raise InvalidSetting(self.side, "conninfo",
                                     "carries a password and password_env is also set",
                                     "remove the password from conninfo and keep password_env")

    def password(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The password from ``$password_env`` (None when ``password_env`` is unset).

        Raises:
            ConfigError: ``password_env`` names a variable that is not set.
        """
        if self.password_env is None:
            return None
        env = os.environ if environ is None else environ
        value = env.get(self.password_env)
        if value is None:
            raise ConfigError(
                f"{self.side}.password_env names {self.password_env}, which is not set; "
                f"export {self.password_env} with the {self.side} password before running")
        return value

    def describe(self) -> dict[str, Any]:
        if self.password_env is None:
            password = "from conninfo (masked)" if "***" in mask_conninfo(self.conninfo) \
                else "none (libpq defaults: PGPASSWORD, ~/.pgpass)"
        elif self.password_env in os.environ:
            password = f"*** (from ${self.password_env})"
        else:
            password = f"${self.password_env} is not set"
        return {"kind": self.kind, "conninfo": mask_conninfo(self.conninfo),
                "password_env": self.password_env, "password": password}


@dataclass(frozen=True)
class DsqlEndpoint:
    """An Aurora DSQL cluster; the password is an IAM token minted for each new connection."""

    side: Side
    """Always "target": DSQL is never the source."""
    endpoint: str
    """Cluster endpoint, ``<cluster-id>.dsql.<region>.on.aws``."""
    region: str = ""
    """AWS region; derived from ``endpoint`` when empty."""
    user: str = "admin"
    """Database role; "admin" uses ``dsql:DbConnectAdmin``, others ``dsql:DbConnect``."""
    profile: str | None = None
    """AWS profile used to sign tokens; None uses the default credential chain."""
    token_expires_in: Annotated[int, Bounds(ge=1, le=604_800)] = 900
    """Lifetime of each IAM token in seconds (only needs to cover the connection handshake)."""
    sslrootcert: str | None = None
    """CA bundle for ``sslmode=verify-full``; None means the system store (``sslrootcert=system``)."""
    port: Annotated[int, Bounds(ge=1, le=65_535)] = 5432
    """TCP port of the endpoint."""
    hostaddr: str | None = None
    """IP address to dial instead of resolving ``endpoint`` (a tunnel); TLS still verifies the name."""
    kind: ClassVar[str] = "dsql"

    def __post_init__(self) -> None:
        _check_side(self.side)
        if self.side == "source":
            raise InvalidSetting("source", "kind", "cannot be 'dsql' (the source is Aurora PostgreSQL)",
                                 "use kind = \"postgres\" (or \"local\") for the source")
        check_fields(self, self.side)
        endpoint = self.endpoint.strip().lower()
        match = _DSQL_HOST.fullmatch(endpoint)
        if not match:
            raise InvalidSetting(self.side, "endpoint",
                                 f"must look like <cluster-id>.dsql.<region>.on.aws, got {_show(self.endpoint)}",
                                 "copy the endpoint from the DSQL console or `aws dsql get-cluster`, "
                                 "without scheme or port")
        object.__setattr__(self, "endpoint", endpoint)
        if not self.region:
            object.__setattr__(self, "region", match["region"])
        elif not _REGION.fullmatch(self.region) or self.region != match["region"]:
            raise InvalidSetting(self.side, "region",
                                 f"is {_show(self.region)} but the endpoint is in {match['region']}",
                                 "remove region to derive it from the endpoint, or fix the endpoint")
        if not self.user.strip():
            raise InvalidSetting(self.side, "user", "is empty", 'use user = "admin" or an IAM-mapped role')
        _check_optional_str(self.side, "profile", self.profile)
        _check_optional_str(self.side, "sslrootcert", self.sslrootcert)
        if self.sslrootcert not in (None, "system") and not Path(self.sslrootcert).is_file():
            raise InvalidSetting(self.side, "sslrootcert",
                                 f"points to {self.sslrootcert}, which does not exist",
                                 "download the Amazon root CA there, or remove sslrootcert to use "
                                 "the system store")
        _check_optional_str(self.side, "hostaddr", self.hostaddr)
        if self.hostaddr is not None:
            try:
                ipaddress.ip_address(self.hostaddr)
            except ValueError:
                raise InvalidSetting(self.side, "hostaddr",
                                     f"must be an IP address, got {_show(self.hostaddr)}",
                                     "give the tunnel's IP (e.g. 127.0.0.1) or remove hostaddr") from None

    @property
    def cluster_id(self) -> str:
        """The cluster identifier, the first label of the endpoint."""
        return self.endpoint.split(".", 1)[0]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "endpoint": self.endpoint, "region": self.region,
                "user": self.user, "profile": self.profile, "port": self.port,
                "hostaddr": self.hostaddr, "token_expires_in": self.token_expires_in,
                "sslmode": "verify-full", "sslrootcert": self.sslrootcert or "system",
                "password": "IAM token minted per connection (never stored)"}


Endpoint: TypeAlias = LocalEndpoint | PostgresEndpoint | DsqlEndpoint


def _check_side(side: str) -> None:
    if side not in ("source", "target"):
        raise InvalidSetting("endpoint", "side", f"must be 'source' or 'target', got {_show(side)}",
                             "build endpoints through load_config()")


def _parse_conninfo(side: str, conninfo: str) -> dict[str, Any]:
    import psycopg  # deferred: config stays importable (and fast) without touching the driver
    from psycopg.conninfo import conninfo_to_dict

    try:
        return dict(conninfo_to_dict(conninfo))
    except psycopg.Error as exc:
        reason = redact(" ".join(str(exc).split()))
        raise InvalidSetting(side, "conninfo",
                             f"is not a valid libpq connection string or URL ({reason})",
                             "write key=value pairs (host=... dbname=...) or a "
                             "postgresql://user@host/db URL") from None


_DEFAULT_DATA_DIR = Path(".reconcile/local")


@dataclass(frozen=True)
class LocalSettings:
    """The embedded local stack (``reconcile local up``)."""

    data_dir: Path = _DEFAULT_DATA_DIR
    """Folder of the embedded servers; relative paths start at the config file's folder."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))


@dataclass(frozen=True)
class BudgetSettings:
    """How much of DSQL's per-transaction limits one write transaction may use."""

    fraction: Annotated[float, Bounds(gt=0, le=1, fix="use a value such as 0.5")] = 0.5
    """Safety fraction applied to every limit below."""
    max_rows: Annotated[int, Bounds(ge=1, le=3000)] = 3000
    """Rows one transaction may modify (DSQL: 3,000)."""
    max_bytes: Annotated[int, Bounds(ge=1, le=10 * 1024 * 1024)] = 10 * 1024 * 1024
    """Bytes one transaction may write, checked at COMMIT (DSQL: 10 MiB)."""
    count_index_tuples: bool = False
    """Count secondary-index tuples toward ``max_rows`` (AWS guidance is unsettled)."""
    txn_seconds: Annotated[int, Bounds(ge=1, le=300)] = 300
    """Age a transaction may reach (DSQL: 300 s)."""

    def __post_init__(self) -> None:
        check_fields(self, "budget")

    @property
    def rows_per_txn(self) -> int:
        """Rows (index tuples included when ``count_index_tuples``) one transaction may write."""
        return max(1, int(self.max_rows * self.fraction))

    @property
    def bytes_per_txn(self) -> int:
        """Bytes one transaction may write."""
        return max(1, int(self.max_bytes * self.fraction))

    @property
    def seconds_per_txn(self) -> float:
        """Seconds one transaction may stay open."""
        return self.txn_seconds * self.fraction


@dataclass(frozen=True)
class RetrySettings:
    """Capped exponential backoff with full jitter for retryable errors (40001 OCC, 08xxx...)."""

    max_attempts: Annotated[int, Bounds(ge=1, le=100)] = 8
    """Attempts in all, the first included."""
    base_delay: Annotated[float, Bounds(gt=0, le=60)] = 0.05
    """Upper bound of the first backoff, seconds."""
    max_delay: Annotated[float, Bounds(gt=0, le=3600)] = 5.0
    """Cap of any backoff, seconds."""

    def __post_init__(self) -> None:
        check_fields(self, "retry")
        if self.max_delay < self.base_delay:
            raise InvalidSetting("retry", "max_delay",
                                 f"({self.max_delay}) is smaller than base_delay ({self.base_delay})",
                                 "raise max_delay or lower base_delay")


@dataclass(frozen=True)
class TableSpec:
    """One table to migrate and reconcile; ``role`` says which ledger invariants apply to it."""

    name: str
    """Qualified name, ``schema.table``."""
    key: tuple[str, ...]
    """Primary-key columns, in key order (chunks are ranges of this key)."""
    role: Annotated[Role | None, Fix("fix the spelling or remove role for a plain table")] = None
    """"accounts", "transactions", "entries", or None for a plain table."""
    balance_column: str | None = None
    """accounts: the stored balance column ("" when the accounts keep none)."""
    amount_column: str | None = None
    """entries: the signed amount column."""
    currency_column: str | None = None
    """accounts, entries: the currency column ("" for a single-currency ledger)."""
    account_column: str | None = None
    """accounts, entries: the account id column."""
    transaction_column: str | None = None
    """transactions: the journal transaction id; entries: the column naming it ("" when entries have none)."""

    def __post_init__(self) -> None:
        _must_be("name", self.name, str, 'write it in quotes, e.g. name = "ledger.accounts"')
        try:
            object.__setattr__(self, "name", canonical(self.name))
        except NameError_ as exc:
            fix = ('qualify it with its schema, e.g. name = "ledger.accounts"' if exc.problem == "is not schema.table"
                   else "write a part that holds a space, a dot or a double quote in double quotes (a quote inside "
                        "doubled), e.g. name = 'ledger.\"my table\"'")
            raise InvalidSetting("tables", "name", f"must be schema.table, got {_show(self.name)}, which "
                                 f"{exc.problem}", fix) from None
        _must_be("key", self.key, (list, tuple), 'write a list of column names, e.g. key = ["account_id"]', str)
        key = tuple(self.key)
        if not key or not all(c.strip() for c in key):
            raise InvalidSetting("tables", "key", f"must list at least one column, got {list(key)}",
                                 'name the primary-key columns, e.g. key = ["account_id"]')
        if len(set(key)) != len(key):
            raise InvalidSetting("tables", "key", f"repeats a column: {list(key)}",
                                 "list each key column once")
        object.__setattr__(self, "key", key)
        if self.role is not None and self.role not in ROLE_COLUMNS:
            raise InvalidSetting("tables", "role",
                                 f"must be one of {', '.join(ROLE_COLUMNS)}, got {_show(self.role)}",
                                 "fix the spelling or remove role for a plain table")
        allowed = ROLE_COLUMNS.get(self.role or "", {})
        optional = OPTIONAL_ROLE_COLUMNS.get(self.role or "", frozenset())
        missing = [c for c in allowed if getattr(self, c) is None]
        if missing:
            offs = [f'{c} = "" when {_OPTIONAL_MEANING[c]}' for c in missing if c in optional]
            raise InvalidSetting(
                "tables", missing[0] if len(missing) == 1 else "",
                f"{'is missing' if len(missing) == 1 else 'lacks ' + ', '.join(missing)} (role {self.role} needs "
                f"{_ROLE_COLUMN_MEANING[missing[0]] if len(missing) == 1 else 'each'}; no column name is assumed)",
                "name " + ("it" if len(missing) == 1 else "them") + ", e.g. "
                + ", ".join(f'{c} = "{allowed[c]}"' for c in missing) + (f" (or {', '.join(offs)})" if offs else ""))
        for column in _ALL_ROLE_COLUMNS:
            value = getattr(self, column)
            if value is None:
                continue
            if column not in allowed:
                roles = [r for r, cols in ROLE_COLUMNS.items() if column in cols]
                raise InvalidSetting("tables", column,
                                     f"only applies to role {' or '.join(roles)}"
                                     f" (this table's role is {self.role or 'unset'})",
                                     f"remove {column} or set the role")
            _must_be(column, value, str, f'write it in quotes, e.g. {column} = "{allowed[column]}"')
            if value != value.strip() or (not value and column not in optional):
                raise InvalidSetting("tables", column, f"is {_show(value)}",
                                     f'name the column, e.g. {column} = "{allowed[column]}"')

    def column(self, setting: str) -> str | None:
        """The column a role setting names (``"currency_column"`` -> ``"currency"``), or None when this
        table has none (the role does not use it, or it is "")."""
        return getattr(self, setting) or None

    @property
    def schema(self) -> str:
        """The schema, unquoted (``"my schema"."t"`` -> ``my schema``)."""
        return split_name(self.name)[0]

    @property
    def table(self) -> str:
        """The table, unquoted."""
        return split_name(self.name)[1]

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "key": list(self.key), "role": self.role}
        out.update({c: getattr(self, c) for c in _ALL_ROLE_COLUMNS if getattr(self, c) is not None})
        return out


def _must_be(key: str, value: Any, kind: type | tuple[type, ...], fix: str, item: type | None = None) -> None:
    """A table entry's type, checked without pydantic (the demo tables are built when this module loads)."""
    if not isinstance(value, kind) or isinstance(value, bool) or (
            item is not None and not all(isinstance(v, item) for v in value)):
        what = "a list of strings" if item is not None else "a string"
        raise InvalidSetting("tables", key, f"must be {what}, got {_show(value)} ({_type_name(value)})", fix)


DEMO_TABLES: tuple[TableSpec, ...] = (
    TableSpec("ledger.accounts", ("account_id",), "accounts", balance_column="balance",
              currency_column="currency", account_column="account_id"),
    TableSpec("ledger.journal", ("txn_id",), "transactions", transaction_column="txn_id"),
    TableSpec("ledger.entries", ("entry_id",), "entries", amount_column="amount", currency_column="currency",
              account_column="account_id", transaction_column="txn_id"),
)
"""The demo ledger (``reconcile.workload``): the tables used when no ``[[tables]]`` is configured."""

DEMO_STAGE_SETTINGS: dict[str, dict[str, Any]] = {
    "checks": {"idempotency_column": "idempotency_key", "negative_balance_exempt_column": "kind",
               "negative_balance_exempt_values": ["equity"]},
    "diff": {"date_column": "posted_at"},
}
"""The demo ledger's optional roles in ``[checks]`` and ``[diff]`` (unset by default: another ledger's
columns are never guessed); ``reconcile demo`` writes them into its reconcile.toml."""


@dataclass(frozen=True)
class Config:
    """Everything a stage needs to know, resolved from environment, file and defaults."""

    source: LocalEndpoint | PostgresEndpoint
    """Where the ledger lives today (Aurora PostgreSQL)."""
    target: Endpoint
    """Where it moves to (Aurora DSQL, or a stand-in)."""
    local: LocalSettings = field(default_factory=LocalSettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    tables: tuple[TableSpec, ...] = DEMO_TABLES
    """Tables to migrate, in dependency order (parents first)."""
    path: Path | None = None
    """The file the settings came from, or None for defaults and environment only."""
    env_overrides: tuple[str, ...] = ()
    """Names of the ``RECONCILE__*`` variables that overrode the file or defaults."""
    stages: Mapping[str, Any] = field(default_factory=dict)
    """Each stage's own settings section (``[replay]``, ``[diff]``, ``[checks]``, ``[gates]``), built by
    the dataclass :data:`STAGE_SECTIONS` names; a section absent from the file gets its defaults."""

    def stage(self, section: str) -> Any:
        """The settings of one stage section (see :data:`STAGE_SECTIONS`), defaults when not set."""
        if section not in STAGE_SECTIONS:
            raise ValueError(f"unknown stage section {section!r}; valid: {', '.join(STAGE_SECTIONS)}")
        if section not in self.stages:
            return _stage_class(section)()
        return self.stages[section]

    @property
    def replay(self) -> Any:
        """``[replay]`` settings (:class:`reconcile.replay.settings.ReplaySettings`)."""
        return self.stage("replay")

    @property
    def diff(self) -> Any:
        """``[diff]`` settings (:class:`reconcile.diff.settings.DiffSettings`)."""
        return self.stage("diff")

    @property
    def checks(self) -> Any:
        """``[checks]`` settings (:class:`reconcile.checks.settings.CheckSettings`)."""
        return self.stage("checks")

    @property
    def gates(self) -> Any:
        """``[gates]`` settings (:class:`reconcile.gates.settings.GateSettings`)."""
        return self.stage("gates")

    @property
    def repair(self) -> Any:
        """``[repair]`` settings (:class:`reconcile.repair.settings.RepairSettings`)."""
        return self.stage("repair")

    def __post_init__(self) -> None:
        if self.source.side != "source" or self.target.side != "target":
            raise InvalidSetting("config", "", "has its endpoints swapped (side does not match)",
                                 "build source with side='source' and target with side='target'")
        tables = tuple(self.tables)
        if not tables:
            raise InvalidSetting("tables", "", "is empty",
                                 "add at least one [[tables]] entry, or remove tables to use the demo ledger")
        seen: dict[str, int] = {}
        for i, table in enumerate(tables):
            if table.name in seen:
                raise InvalidSetting(f"tables[{i}]", "name",
                                     f"{table.name!r} repeats tables[{seen[table.name]}]",
                                     "list each table once")
            seen[table.name] = i
        object.__setattr__(self, "tables", tables)

    def secrets(self) -> list[str]:
        """The secret values this config can reach (the source and target passwords), for :func:`redact`."""
        out: list[str] = []
        for endpoint in (self.source, self.target):
            if isinstance(endpoint, PostgresEndpoint):
                out += conninfo_secrets(endpoint.conninfo)
            if isinstance(endpoint, PostgresEndpoint) and endpoint.password_env:
                try:
                    value = endpoint.password()
                except ConfigError:
                    continue
                if value:
                    out.append(value)
        return out

    def safe_message(self, exc: BaseException, *, limit: int = 500) -> str:
        """``exc`` as one line fit for a log, a report or a control table: no secret, no conninfo password.

        A :class:`~reconcile.errors.ReconcileError` keeps its sentence; any other error is prefixed by its type.
        """
        from reconcile.errors import ReconcileError

        text = str(exc) if isinstance(exc, ReconcileError) else f"{type(exc).__name__}: {exc}"
        return one_line(text, self.secrets(), limit=limit)

    def table(self, name: str) -> TableSpec:
        """The table called ``name`` (schema.table, in any form :mod:`reconcile.db.names` reads).

        Raises:
            ConfigError: no such table is configured.
        """
        try:
            name = canonical(name)
        except NameError_:
            pass
        for table in self.tables:
            if table.name == name:
                return table
        raise ConfigError(f"no table named {name!r} is configured; add it as a [[tables]] entry "
                          f"or use one of {', '.join(t.name for t in self.tables)}")

    def tables_with_role(self, role: Role) -> tuple[TableSpec, ...]:
        """The tables playing ``role``, in configured order."""
        return tuple(t for t in self.tables if t.role == role)

    def describe(self) -> dict[str, Any]:
        """Resolved settings as plain data, secrets masked (safe to print or log)."""
        budget = {f.name: getattr(self.budget, f.name) for f in fields(self.budget)}
        budget.update(rows_per_txn=self.budget.rows_per_txn, bytes_per_txn=self.budget.bytes_per_txn,
                      seconds_per_txn=self.budget.seconds_per_txn)
        return {
            "config_file": str(self.path) if self.path else None,
            "env_overrides": list(self.env_overrides),
            "source": self.source.describe(),
            "target": self.target.describe(),
            "local": {"data_dir": str(self.local.data_dir)},
            "budget": budget,
            "retry": {f.name: getattr(self.retry, f.name) for f in fields(self.retry)},
            "tables": [t.describe() for t in self.tables],
            **{name: _describe_stage(self.stage(name)) for name in STAGE_SECTIONS},
        }


# --------------------------------------------------------------------------------------------
# Stage sections: each stage owns a frozen dataclass of its settings in its own package. The keys,
# their types and the ranges of numbers come from its fields (see reconcile.settings_schema: a number
# without declared bounds is finite, 0 or more and at most DEFAULT_MAX); its __post_init__ checks what
# relates fields and raises InvalidSetting.

STAGE_SECTIONS: dict[str, str] = {
    "replay": "reconcile.replay.settings:ReplaySettings",
    "diff": "reconcile.diff.settings:DiffSettings",
    "checks": "reconcile.checks.settings:CheckSettings",
    "gates": "reconcile.gates.settings:GateSettings",
    "migration": "reconcile.identity:MigrationSettings",
    "metrics": "reconcile.metrics:MetricsSettings",
    "reverse": "reconcile.reverse.settings:ReverseSettings",
    "repair": "reconcile.repair.settings:RepairSettings",
}


def _stage_class(section: str) -> type:
    import importlib

    module, _, name = STAGE_SECTIONS[section].partition(":")
    return getattr(importlib.import_module(module), name)


def _describe_stage(settings: Any) -> dict[str, Any]:
    out = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else (
            str(value) if isinstance(value, Path) else value)
    return out


# --------------------------------------------------------------------------------------------
# Loading

# The settings class of each endpoint kind; its fields (but side) are the section's keys, after kind.
_ENDPOINT_CLASSES: dict[str, type] = {"local": LocalEndpoint, "postgres": PostgresEndpoint, "dsql": DsqlEndpoint}
_NOT_KEYS = ("side", "data_dir")  # an endpoint's side is its section; a local endpoint's folder is [local]'s
_SECTION_CLASSES: dict[str, type] = {"local": LocalSettings, "budget": BudgetSettings, "retry": RetrySettings}
_TOP_KEYS = ("source", "target", "local", "budget", "retry", "tables", *STAGE_SECTIONS)
_ENV_SECTIONS = ("source", "target", "local", "budget", "retry", *STAGE_SECTIONS)
_VAR_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")


def load_config(path: Path | str | None = None, *,
                environ: Mapping[str, str] | None = None) -> Config:
    """Resolve settings from the environment, a TOML file and the defaults.

    Args:
        path: The TOML file; None looks for ``./reconcile.toml`` and otherwise uses defaults.
        environ: Environment to read overrides and ``${VAR}`` from (default ``os.environ``).

    Returns:
        The validated, frozen settings.

    Raises:
        ConfigError: the file is missing or invalid, or a value is wrong (one sentence with the fix).
    """
    env = os.environ if environ is None else environ
    if path is None:
        candidate = Path.cwd() / DEFAULT_FILE
        file = candidate if candidate.is_file() else None
        display = DEFAULT_FILE
    else:
        file = Path(path)
        display = str(path)
        if not file.is_file():
            raise ConfigError(f"config file {display} does not exist; pass an existing file with "
                              f"--config, or omit --config to use ./{DEFAULT_FILE} or the defaults")
    raw = _read_toml(file, display) if file else {}
    base_dir = file.resolve().parent if file else Path.cwd()
    return _Loader(raw, display, base_dir, env, file.resolve() if file else None).build()


def _read_toml(file: Path, display: str) -> dict[str, Any]:
    try:
        with file.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{display} is not valid TOML ({exc}); fix the syntax there") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{display} is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {display} ({exc.strerror}); check the path and its "
                          "permissions") from None


def _unknown(dotted: str, origin: str, valid: Iterable[str], qualifier: str = "") -> ConfigError:
    valid = list(valid)
    close = difflib.get_close_matches(dotted.rsplit(".", 1)[-1], valid, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return ConfigError(f"unknown key '{dotted}' {origin}; valid keys{qualifier}: {', '.join(valid)}"
                       f" — {hint}fix the spelling or remove it")


class _Loader:
    """Merges environment over file over defaults, remembering where each value came from."""

    def __init__(self, raw: dict[str, Any], display: str, base_dir: Path,
                 env: Mapping[str, str], file: Path | None) -> None:
        self.raw, self.display, self.base_dir, self.env, self.file = raw, display, base_dir, env, file
        self.in_file = f"in {display}"
        # section -> key -> (value, origin phrase)
        self.values: dict[str, dict[str, tuple[Any, str]]] = {s: {} for s in _ENV_SECTIONS}
        self.env_raw: dict[str, dict[str, tuple[str, str]]] = {s: {} for s in _ENV_SECTIONS}
        self.aliases: list[str] = []

    # -- steps ------------------------------------------------------------------------------

    def build(self) -> Config:
        self._reject_secrets(self.raw, "")
        self._check_shape()
        raw = self._expand(self.raw, "")
        for section in _ENV_SECTIONS:
            for key, value in raw.get(section, {}).items():
                self.values[section][key] = (value, self.in_file)
        self._read_env()
        local = self._local()
        source = self._endpoint("source", local)
        target = self._endpoint("target", local)
        budget = self._section("budget", BudgetSettings)
        retry = self._section("retry", RetrySettings)
        tables = self._tables(raw.get("tables"))
        stages = {name: self._section(name, _stage_class(name)) for name in STAGE_SECTIONS}
        overrides = tuple(sorted([v for s in self.env_raw.values() for _, v in s.values()]
                                 + self.aliases))
        try:
            return Config(source=source, target=target, local=local, budget=budget, retry=retry,
                          tables=tables, path=self.file, env_overrides=overrides, stages=stages)
        except InvalidSetting as exc:
            raise exc.located(self.in_file) from None

    def _reject_secrets(self, node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                dotted = f"{prefix}.{key}" if prefix else key
                if _looks_secret(key):
                    raise ConfigError(f"'{dotted}' {self.in_file} looks like a secret; {SECRET_FIX}")
                self._reject_secrets(value, dotted)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                self._reject_secrets(item, f"{prefix}[{i}]")

    def _check_shape(self) -> None:
        for key, value in self.raw.items():
            if key not in _TOP_KEYS:
                raise _unknown(key, self.in_file, _TOP_KEYS)
            if key == "tables":
                if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                    raise ConfigError(f"tables {self.in_file} must be an array of tables; write each "
                                      "table as a [[tables]] block with name and key")
            elif not isinstance(value, dict):
                raise ConfigError(f"{key} {self.in_file} must be a table, got {_type_name(value)}; "
                                  f"write its settings under a [{key}] header")

    def _expand(self, node: Any, dotted: str) -> Any:
        if isinstance(node, dict):
            return {k: self._expand(v, f"{dotted}.{k}" if dotted else k) for k, v in node.items()}
        if isinstance(node, list):
            return [self._expand(v, f"{dotted}[{i}]") for i, v in enumerate(node)]
        if not isinstance(node, str):
            return node

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name = match.group(1)
            if name is None or not _ENV_NAME.fullmatch(name):
                raise ConfigError(f"{dotted} {self.in_file} has a malformed ${{...}} reference; "
                                  "write ${NAME} with a variable name, or $${ for a literal ${")
            if name not in self.env:
                raise ConfigError(f"{dotted} {self.in_file} references ${{{name}}}, which is not set; "
                                  f"export {name} or edit the value")
            return self.env[name]

        return _VAR_REF.sub(substitute, node)

    def _read_env(self) -> None:
        for var in sorted(self.env):
            if not var.startswith(ENV_PREFIX):
                continue
            parts = var[len(ENV_PREFIX):].split("__")
            if len(parts) != 2 or not all(parts):
                raise ConfigError(f"environment variable {var} is not a valid setting name; use "
                                  f"{ENV_PREFIX}<SECTION>__<KEY>, e.g. {ENV_PREFIX}TARGET__ENDPOINT, "
                                  "or unset it")
            section, key = parts[0].lower(), parts[1].lower()
            if section == "tables":
                raise ConfigError(f"environment variable {var} cannot set tables; edit the "
                                  "[[tables]] entries in the config file and unset it")
            if section not in _ENV_SECTIONS:
                raise ConfigError(f"environment variable {var} names unknown section '{section}'; "
                                  f"valid sections: {', '.join(_ENV_SECTIONS)} — fix the spelling or "
                                  "unset it")
            if _looks_secret(key):
                raise ConfigError(f"environment variable {var} looks like a secret, which reconcile "
                                  f"does not take as a setting; set {section}.password_env to the "
                                  "name of the variable holding the password and unset it")
            self.env_raw[section][key] = (self.env[var], var)

    # -- sections ---------------------------------------------------------------------------

    def _merged(self, section: str, cls: type, qualifier: str = "", extra: tuple[str, ...] = ()) -> dict[str, Any]:
        """File values checked against ``cls``'s fields (and ``extra`` keys), env values parsed and laid over them."""
        keys = (*extra, *(k for k in specs(cls) if cls in _SECTION_CLASSES.values() or k not in _NOT_KEYS))
        for key, (_, origin) in self.values[section].items():
            if key not in keys:
                raise _unknown(f"{section}.{key}", origin, keys, qualifier)
        for key, (_, var) in self.env_raw[section].items():
            if key not in keys:
                raise _unknown(f"{section}.{key}", f"from environment variable {var}", keys, qualifier)
        merged = {k: v for k, (v, _) in self.values[section].items()}
        for key, (text, var) in self.env_raw[section].items():
            merged[key] = text if key in extra else from_env(cls, section, key, text, var)
            self.values[section][key] = (merged[key], f"from {var}")
        return merged

    def _origin(self, section: str, key: str) -> str:
        entry = self.values.get(section, {}).get(key)
        return entry[1] if entry else ""

    def _build(self, cls: type, section: str, values: dict[str, Any], *args: Any) -> Any:
        """``cls(*args, **values)`` once the values passed their types and ranges; errors say where from."""
        values = validate(cls, section, values, origin=lambda key: self._origin(section, key))
        try:
            return cls(*args, **values)
        except InvalidSetting as exc:
            raise exc.located(self._origin(section, exc.key)) from None

    def _local(self) -> LocalSettings:
        merged = self._merged("local", LocalSettings)
        alias = self.env.get(LOCAL_DIR_ENV)
        if alias and "data_dir" not in self.env_raw["local"]:
            # `reconcile local up --data-dir` reads the same variable: both must find one stack.
            merged["data_dir"] = alias
            self.values["local"]["data_dir"] = (alias, f"from {LOCAL_DIR_ENV}")
            self.aliases.append(LOCAL_DIR_ENV)
        if "data_dir" not in merged:
            return LocalSettings(self.base_dir / _DEFAULT_DATA_DIR)
        value = merged["data_dir"]
        if not isinstance(value, str):
            raise InvalidSetting("local", "data_dir", f"must be a string, got {_show(value)} ({_type_name(value)})",
                                 'write it in quotes, e.g. data_dir = ".reconcile/local"',
                                 self._origin("local", "data_dir"))
        return LocalSettings(self._path(value))

    def _path(self, text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def _endpoint(self, side: Side, local: LocalSettings) -> Endpoint:
        kind_value, kind_origin = self.values[side].get("kind", ("local", ""))
        if "kind" in self.env_raw[side]:
            kind_value, var = self.env_raw[side]["kind"]
            kind_origin = f"from {var}"
        if not isinstance(kind_value, str) or kind_value not in _ENDPOINT_CLASSES:
            fix = ('use "postgres" (or "local") for the source' if side == "source"
                   else 'use "dsql", "postgres" or "local"')
            raise InvalidSetting(side, "kind", f"must be one of local, postgres, dsql, got "
                                 f"{_show(kind_value)}", fix, kind_origin)
        if side == "source" and kind_value == "dsql":
            raise InvalidSetting("source", "kind", "cannot be 'dsql' (the source is Aurora "
                                 "PostgreSQL)", 'use kind = "postgres" (or "local")', kind_origin)
        cls = _ENDPOINT_CLASSES[kind_value]
        merged = self._merged(side, cls, f" for kind '{kind_value}'", extra=("kind",))
        merged.pop("kind", None)
        for key, spec in specs(cls).items():
            if spec.default is dataclasses.MISSING and key not in _NOT_KEYS and key not in merged:
                tried = [f"environment variable {ENV_PREFIX}{side.upper()}__{key.upper()}"]
                if self.file:
                    tried.append(f"{key} under [{side}] in {self.display}")
                raise ConfigError(f"{side}.{key} is missing for kind '{kind_value}'; looked for "
                                  f"{' and '.join(tried)} — set one of them")
        if kind_value == "postgres" and self.values[side]["conninfo"][1] == self.in_file:
            conninfo = self.raw[side]["conninfo"]  # as written: a ${VAR} may bring a password from the environment
            if isinstance(conninfo, str) and _conninfo_has_password(conninfo):
                raise ConfigError(f"{side}.conninfo {self.in_file} contains a password; {SECRET_FIX}")
        if kind_value == "dsql" and isinstance(merged.get("sslrootcert"), str) \
                and merged["sslrootcert"] not in ("", "system"):
            merged["sslrootcert"] = str(self._path(merged["sslrootcert"]))
        if kind_value == "local":
            return LocalEndpoint(side, local.data_dir)
        return self._build(cls, side, merged, side)

    def _section(self, section: str, cls: type) -> Any:
        merged = self._merged(section, cls)
        for key in getattr(cls, "PATH_FIELDS", ()):
            # A relative folder (the default too) is next to the file: the same place wherever a task runs.
            value = merged.get(key, getattr(cls, key, None))
            if isinstance(value, str) and value.strip() and "://" not in value:
                merged[key] = str(self._path(value))
        return self._build(cls, section, merged)

    def _tables(self, raw_tables: list[dict[str, Any]] | None) -> tuple[TableSpec, ...]:
        if raw_tables is None:
            return DEMO_TABLES
        tables = []
        for i, entry in enumerate(raw_tables):
            where = f"tables[{i}]"
            for key in entry:
                if key not in specs(TableSpec):
                    raise _unknown(f"{where}.{key}", self.in_file, specs(TableSpec))
            for key in ("name", "key"):
                if key not in entry:
                    raise ConfigError(f"{where}.{key} is missing {self.in_file}; every [[tables]] "
                                      "entry needs name (schema.table) and key (list of columns)")
            try:
                tables.append(TableSpec(**validate(TableSpec, where, entry, origin=self.in_file)))
            except InvalidSetting as exc:
                raise exc.located(self.in_file, section=where) from None
        return tuple(tables)


def _conninfo_has_password(conninfo: str) -> bool:
    """Whether the file's own text of a conninfo holds a secret; what a ``${VAR}`` brings is the environment's.

    >>> _conninfo_has_password("host=db password=hunter2"), _conninfo_has_password("postgresql://u:${PW}@db/x")
    (True, False)
    >>> _conninfo_has_password("${DB_URL}"), _conninfo_has_password("host=db sslpassword=k3y")
    (False, True)
    """
    literal = _VAR_REF.sub("", conninfo.replace("$${", ""))
    return bool(conninfo_secrets(literal)) or mask_conninfo(literal) != literal
