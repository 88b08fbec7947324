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

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeAlias
from urllib.parse import quote

from reconcile.errors import ConfigError

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
_URI_PASSWORD = re.compile(r"(://[^:@/\s]*:)([^@/]*)(@)")
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]+)", re.IGNORECASE)
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
    """
    text = _URI_PASSWORD.sub(r"\1***\3", text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    return _AWS_SIGNED.sub(r"\1***", text)


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


_STR, _INT, _NUM, _BOOL, _STRLIST = "string", "integer", "number", "boolean", "list of strings"
_ARTICLE = {_STR: "a string", _INT: "an integer", _NUM: "a number", _BOOL: "true or false",
            _STRLIST: "a list of strings"}


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", tuple: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_fix(key: str, kind: str, example: Any) -> str:
    if kind == _STR:
        return f'write it in quotes, e.g. {key} = "{example}"'
    if kind == _INT:
        return f"write a whole number without quotes, e.g. {key} = {example}"
    if kind == _NUM:
        return f"write a number without quotes, e.g. {key} = {example}"
    if kind == _BOOL:
        return f"write {key} = true or {key} = false, without quotes"
    return f'write a list of column names, e.g. {key} = ["{example}"]'


def _check_type(section: str, key: str, value: Any, kind: str, example: Any = "...") -> None:
    ok = {
        _STR: isinstance(value, str),
        _INT: isinstance(value, int) and not isinstance(value, bool),
        _NUM: isinstance(value, (int, float)) and not isinstance(value, bool),
        _BOOL: isinstance(value, bool),
        _STRLIST: isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
    }[kind]
    if not ok:
        raise InvalidSetting(section, key,
                             f"must be {_ARTICLE[kind]}, got {_show(value)} ({_type_name(value)})",
                             _type_fix(key, kind, example))


def _check_optional_str(section: str, key: str, value: Any, example: str) -> None:
    if value is not None:
        _check_type(section, key, value, _STR, example)
        if not value.strip():
            raise InvalidSetting(section, key, "is empty", f"give a value or remove {key}")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DSQL_HOST = re.compile(
    r"(?P<id>[a-z0-9]+)\.dsql(?:-[a-z0-9-]+)?\.(?P<region>[a-z]{2}(?:-[a-z0-9]+)+)\.on\.aws")
_REGION = re.compile(r"[a-z]{2}(?:-[a-z0-9]+)+")
_TABLE_NAME = re.compile(r"[^.\s\"]+\.[^.\s\"]+")


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
        _check_type(self.side, "conninfo", self.conninfo, _STR, "host=db.example.com dbname=ledger")
        if not self.conninfo.strip():
            raise InvalidSetting(self.side, "conninfo", "is empty",
                                 "give a libpq string such as host=db.example.com dbname=ledger")
        params = _parse_conninfo(self.side, self.conninfo)
        if self.password_env is not None:
            _check_type(self.side, "password_env", self.password_env, _STR, "PGPASSWORD_LEDGER")
            if not _ENV_NAME.fullmatch(self.password_env):
                raise InvalidSetting(
                    self.side, "password_env",
                    f"must be the name of an environment variable, got {_show(self.password_env)}",
                    "write the variable's name (letters, digits, _), not its value")
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
    token_expires_in: int = 900
    """Lifetime of each IAM token in seconds (only needs to cover the connection handshake)."""
    sslrootcert: str | None = None
    """CA bundle for ``sslmode=verify-full``; None means the system store (``sslrootcert=system``)."""
    port: int = 5432
    """TCP port of the endpoint."""
    hostaddr: str | None = None
    """IP address to dial instead of resolving ``endpoint`` (a tunnel); TLS still verifies the name."""
    kind: ClassVar[str] = "dsql"

    def __post_init__(self) -> None:
        _check_side(self.side)
        if self.side == "source":
            raise InvalidSetting("source", "kind", "cannot be 'dsql' (the source is Aurora PostgreSQL)",
                                 "use kind = \"postgres\" (or \"local\") for the source")
        example = "abc123.dsql.us-east-1.on.aws"
        _check_type(self.side, "endpoint", self.endpoint, _STR, example)
        endpoint = self.endpoint.strip().lower()
        match = _DSQL_HOST.fullmatch(endpoint)
        if not match:
            raise InvalidSetting(self.side, "endpoint",
                                 f"must look like <cluster-id>.dsql.<region>.on.aws, got {_show(self.endpoint)}",
                                 "copy the endpoint from the DSQL console or `aws dsql get-cluster`, "
                                 "without scheme or port")
        object.__setattr__(self, "endpoint", endpoint)
        _check_type(self.side, "region", self.region, _STR, match["region"])
        if not self.region:
            object.__setattr__(self, "region", match["region"])
        elif not _REGION.fullmatch(self.region) or self.region != match["region"]:
            raise InvalidSetting(self.side, "region",
                                 f"is {_show(self.region)} but the endpoint is in {match['region']}",
                                 "remove region to derive it from the endpoint, or fix the endpoint")
        _check_type(self.side, "user", self.user, _STR, "admin")
        if not self.user.strip():
            raise InvalidSetting(self.side, "user", "is empty", 'use user = "admin" or an IAM-mapped role')
        _check_optional_str(self.side, "profile", self.profile, "ledger-migration")
        _check_type(self.side, "token_expires_in", self.token_expires_in, _INT, 900)
        if not 1 <= self.token_expires_in <= 604800:
            raise InvalidSetting(self.side, "token_expires_in",
                                 f"must be between 1 and 604800 seconds, got {self.token_expires_in}",
                                 "use the default 900")
        _check_optional_str(self.side, "sslrootcert", self.sslrootcert, "/etc/ssl/AmazonRootCA1.pem")
        if self.sslrootcert not in (None, "system") and not Path(self.sslrootcert).is_file():
            raise InvalidSetting(self.side, "sslrootcert",
                                 f"points to {self.sslrootcert}, which does not exist",
                                 "download the Amazon root CA there, or remove sslrootcert to use "
                                 "the system store")
        _check_type(self.side, "port", self.port, _INT, 5432)
        if not 1 <= self.port <= 65535:
            raise InvalidSetting(self.side, "port", f"must be between 1 and 65535, got {self.port}",
                                 "use the default 5432")
        _check_optional_str(self.side, "hostaddr", self.hostaddr, "127.0.0.1")
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

    fraction: float = 0.5
    """Safety fraction applied to every limit below (0 < fraction <= 1)."""
    max_rows: int = 3000
    """Rows one transaction may modify (DSQL: 3,000)."""
    max_bytes: int = 10 * 1024 * 1024
    """Bytes one transaction may write, checked at COMMIT (DSQL: 10 MiB)."""
    count_index_tuples: bool = False
    """Count secondary-index tuples toward ``max_rows`` (AWS guidance is unsettled)."""
    txn_seconds: int = 300
    """Age a transaction may reach (DSQL: 300 s)."""

    def __post_init__(self) -> None:
        _check_type("budget", "fraction", self.fraction, _NUM, 0.5)
        if not 0 < self.fraction <= 1:
            raise InvalidSetting("budget", "fraction",
                                 f"must be greater than 0 and at most 1, got {self.fraction}",
                                 "use a value such as 0.5")
        object.__setattr__(self, "fraction", float(self.fraction))
        for name, default in (("max_rows", 3000), ("max_bytes", 10 * 1024 * 1024),
                              ("txn_seconds", 300)):
            value = getattr(self, name)
            _check_type("budget", name, value, _INT, default)
            if value <= 0:
                raise InvalidSetting("budget", name, f"must be positive, got {value}",
                                     f"use the default {default}")
        _check_type("budget", "count_index_tuples", self.count_index_tuples, _BOOL)

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

    max_attempts: int = 8
    """Attempts in all, the first included."""
    base_delay: float = 0.05
    """Upper bound of the first backoff, seconds."""
    max_delay: float = 5.0
    """Cap of any backoff, seconds."""

    def __post_init__(self) -> None:
        _check_type("retry", "max_attempts", self.max_attempts, _INT, 8)
        if self.max_attempts < 1:
            raise InvalidSetting("retry", "max_attempts", f"must be at least 1, got {self.max_attempts}",
                                 "use the default 8")
        for name, default in (("base_delay", 0.05), ("max_delay", 5.0)):
            value = getattr(self, name)
            _check_type("retry", name, value, _NUM, default)
            if value <= 0:
                raise InvalidSetting("retry", name, f"must be positive, got {value}",
                                     f"use the default {default}")
            object.__setattr__(self, name, float(value))
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
    role: Role | None = None
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
        _check_type("tables", "name", self.name, _STR, "ledger.accounts")
        if not _TABLE_NAME.fullmatch(self.name):
            raise InvalidSetting("tables", "name", f"must be schema.table, got {_show(self.name)}",
                                 'qualify it with its schema, e.g. name = "ledger.accounts"')
        _check_type("tables", "key", self.key, _STRLIST, "account_id")
        key = tuple(self.key)
        if not key or not all(c.strip() for c in key):
            raise InvalidSetting("tables", "key", f"must list at least one column, got {list(key)}",
                                 'name the primary-key columns, e.g. key = ["account_id"]')
        if len(set(key)) != len(key):
            raise InvalidSetting("tables", "key", f"repeats a column: {list(key)}",
                                 "list each key column once")
        object.__setattr__(self, "key", key)
        if self.role is not None:
            _check_type("tables", "role", self.role, _STR, "accounts")
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
            _check_type("tables", column, value, _STR, allowed[column])
            if value != value.strip() or (not value and column not in optional):
                raise InvalidSetting("tables", column, f"is {_show(value)}",
                                     f'name the column, e.g. {column} = "{allowed[column]}"')

    def column(self, setting: str) -> str | None:
        """The column a role setting names (``"currency_column"`` -> ``"currency"``), or None when this
        table has none (the role does not use it, or it is "")."""
        return getattr(self, setting) or None

    @property
    def schema(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def table(self) -> str:
        return self.name.split(".", 1)[1]

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "key": list(self.key), "role": self.role}
        out.update({c: getattr(self, c) for c in _ALL_ROLE_COLUMNS if getattr(self, c) is not None})
        return out


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
        """The table called ``name`` (schema.table).

        Raises:
            ConfigError: no such table is configured.
        """
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
# Stage sections: each stage owns a frozen dataclass of its settings in its own package; its
# __post_init__ validates values and raises InvalidSetting. The keys and their types come from the
# dataclass fields (int, float, bool, str, str | None, tuple[str, ...]).

STAGE_SECTIONS: dict[str, str] = {
    "replay": "reconcile.replay.settings:ReplaySettings",
    "diff": "reconcile.diff.settings:DiffSettings",
    "checks": "reconcile.checks.settings:CheckSettings",
    "gates": "reconcile.gates.settings:GateSettings",
    "repair": "reconcile.repair.settings:RepairSettings",
}


def _stage_class(section: str) -> type:
    import importlib

    module, _, name = STAGE_SECTIONS[section].partition(":")
    return getattr(importlib.import_module(module), name)


def _stage_schema(cls: type) -> dict[str, str]:
    import typing

    hints = typing.get_type_hints(cls)
    kinds: dict[str, str] = {}
    for f in fields(cls):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType) and len(args) == 1 \
            else hint
        if typing.get_origin(base) is tuple:
            kinds[f.name] = _STRLIST
        else:
            kinds[f.name] = {bool: _BOOL, int: _INT, float: _NUM, str: _STR}.get(base, _STR)
    return kinds


def _describe_stage(settings: Any) -> dict[str, Any]:
    out = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else (
            str(value) if isinstance(value, Path) else value)
    return out


# --------------------------------------------------------------------------------------------
# Loading

# Valid keys and their types, in the order they are listed in error messages.
_ENDPOINT_KEYS: dict[str, dict[str, str]] = {
    "local": {"kind": _STR},
    "postgres": {"kind": _STR, "conninfo": _STR, "password_env": _STR},
    "dsql": {"kind": _STR, "endpoint": _STR, "region": _STR, "user": _STR, "profile": _STR,
             "token_expires_in": _INT, "sslrootcert": _STR, "port": _INT, "hostaddr": _STR},
}
_REQUIRED = {"local": (), "postgres": ("conninfo",), "dsql": ("endpoint",)}
_SECTION_KEYS: dict[str, dict[str, str]] = {
    "local": {"data_dir": _STR},
    "budget": {"fraction": _NUM, "max_rows": _INT, "max_bytes": _INT, "count_index_tuples": _BOOL,
               "txn_seconds": _INT},
    "retry": {"max_attempts": _INT, "base_delay": _NUM, "max_delay": _NUM},
}
_TABLE_KEYS: dict[str, str] = {"name": _STR, "key": _STRLIST, "role": _STR,
                               **{c: _STR for c in _ALL_ROLE_COLUMNS}}
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
        stages = {name: self._stage(name) for name in STAGE_SECTIONS}
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

    def _merged(self, section: str, schema: dict[str, str], qualifier: str = "") -> dict[str, Any]:
        """File values checked against ``schema``, then env values coerced and laid over them."""
        for key, (_, origin) in self.values[section].items():
            if key not in schema:
                raise _unknown(f"{section}.{key}", origin, schema, qualifier)
        for key, (_, var) in self.env_raw[section].items():
            if key not in schema:
                raise _unknown(f"{section}.{key}", f"from environment variable {var}", schema,
                               qualifier)
        merged = {k: v for k, (v, _) in self.values[section].items()}
        for key, (text, var) in self.env_raw[section].items():
            merged[key] = _coerce_env(section, key, text, schema[key], var)
            self.values[section][key] = (merged[key], f"from {var}")
        return merged

    def _origin(self, exc: InvalidSetting, section: str) -> str:
        entry = self.values.get(section, {}).get(exc.key)
        return entry[1] if entry else ""

    def _local(self) -> LocalSettings:
        merged = self._merged("local", _SECTION_KEYS["local"])
        alias = self.env.get(LOCAL_DIR_ENV)
        if alias and "data_dir" not in self.env_raw["local"]:
            # `reconcile local up --data-dir` reads the same variable: both must find one stack.
            merged["data_dir"] = alias
            self.values["local"]["data_dir"] = (alias, f"from {LOCAL_DIR_ENV}")
            self.aliases.append(LOCAL_DIR_ENV)
        if "data_dir" not in merged:
            return LocalSettings(self.base_dir / _DEFAULT_DATA_DIR)
        try:
            _check_type("local", "data_dir", merged["data_dir"], _STR, ".reconcile/local")
        except InvalidSetting as exc:
            raise exc.located(self._origin(exc, "local")) from None
        return LocalSettings(self._path(merged["data_dir"]))

    def _path(self, text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def _endpoint(self, side: Side, local: LocalSettings) -> Endpoint:
        kind_value, kind_origin = self.values[side].get("kind", ("local", ""))
        if "kind" in self.env_raw[side]:
            kind_value, var = self.env_raw[side]["kind"]
            kind_origin = f"from {var}"
        if not isinstance(kind_value, str) or kind_value not in _ENDPOINT_KEYS:
            fix = ('use "postgres" (or "local") for the source' if side == "source"
                   else 'use "dsql", "postgres" or "local"')
            raise InvalidSetting(side, "kind", f"must be one of local, postgres, dsql, got "
                                 f"{_show(kind_value)}", fix, kind_origin)
        if side == "source" and kind_value == "dsql":
            raise InvalidSetting("source", "kind", "cannot be 'dsql' (the source is Aurora "
                                 "PostgreSQL)", 'use kind = "postgres" (or "local")', kind_origin)
        merged = self._merged(side, _ENDPOINT_KEYS[kind_value], f" for kind '{kind_value}'")
        merged.pop("kind", None)
        for key in _REQUIRED[kind_value]:
            if key not in merged:
                tried = [f"environment variable {ENV_PREFIX}{side.upper()}__{key.upper()}"]
                if self.file:
                    tried.append(f"{key} under [{side}] in {self.display}")
                raise ConfigError(f"{side}.{key} is missing for kind '{kind_value}'; looked for "
                                  f"{' and '.join(tried)} — set one of them")
        if kind_value == "postgres" and self.values[side]["conninfo"][1] == self.in_file:
            conninfo = merged["conninfo"]
            if isinstance(conninfo, str) and _conninfo_has_password(conninfo):
                raise ConfigError(f"{side}.conninfo {self.in_file} contains a password; {SECRET_FIX}")
        if kind_value == "dsql" and isinstance(merged.get("sslrootcert"), str) \
                and merged["sslrootcert"] not in ("", "system"):
            merged["sslrootcert"] = str(self._path(merged["sslrootcert"]))
        try:
            if kind_value == "local":
                return LocalEndpoint(side, local.data_dir)
            if kind_value == "postgres":
                return PostgresEndpoint(side, **merged)
            return DsqlEndpoint(side, **merged)
        except InvalidSetting as exc:
            raise exc.located(self._origin(exc, side)) from None

    def _section(self, section: str, cls: type) -> Any:
        merged = self._merged(section, _SECTION_KEYS[section])
        try:
            return cls(**merged)
        except InvalidSetting as exc:
            raise exc.located(self._origin(exc, section)) from None

    def _stage(self, section: str) -> Any:
        cls = _stage_class(section)
        schema = _stage_schema(cls)
        merged = self._merged(section, schema)
        for key, value in merged.items():
            try:
                _check_type(section, key, value, schema[key])
            except InvalidSetting as exc:
                raise exc.located(self._origin(exc, section)) from None
            if schema[key] == _STRLIST:
                merged[key] = tuple(value)
            elif schema[key] == _NUM:
                merged[key] = float(value)
        try:
            return cls(**merged)
        except InvalidSetting as exc:
            raise exc.located(self._origin(exc, section)) from None

    def _tables(self, raw_tables: list[dict[str, Any]] | None) -> tuple[TableSpec, ...]:
        if raw_tables is None:
            return DEMO_TABLES
        tables = []
        for i, entry in enumerate(raw_tables):
            where = f"tables[{i}]"
            for key in entry:
                if key not in _TABLE_KEYS:
                    raise _unknown(f"{where}.{key}", self.in_file, _TABLE_KEYS)
            for key in ("name", "key"):
                if key not in entry:
                    raise ConfigError(f"{where}.{key} is missing {self.in_file}; every [[tables]] "
                                      "entry needs name (schema.table) and key (list of columns)")
            try:
                tables.append(TableSpec(**entry))
            except InvalidSetting as exc:
                raise exc.located(self.in_file, section=where) from None
        return tuple(tables)


def _conninfo_has_password(conninfo: str) -> bool:
    return mask_conninfo(conninfo) != conninfo


def _coerce_env(section: str, key: str, text: str, kind: str, var: str) -> Any:
    value = text.strip()
    try:
        if kind == _STR:
            return text
        if kind == _STRLIST:
            return [part.strip() for part in text.split(",") if part.strip()]
        if kind == _INT:
            return int(value)
        if kind == _NUM:
            return float(value)
        if kind == _BOOL:
            lowered = value.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
    except ValueError:
        pass
    example = {_INT: "3000", _NUM: "0.5", _BOOL: "true"}.get(kind, "...")
    raise InvalidSetting(section, key, f"must be {_ARTICLE[kind]}, got {_show(text)}",
                         f"export it as e.g. {var}={example}", f"from {var}")
