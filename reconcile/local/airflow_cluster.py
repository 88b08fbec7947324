"""A real multi-worker Airflow on this machine: ``reconcile airflow up | down | status``.

What runs (every process daemonised in its own session, tracked by a pid file under ``run/``):

* ``metadb``: Airflow's metadata database, a third embedded PostgreSQL server (never SQLite: the
  scheduler, the API server and the DAG processor share it as they would in production);
* ``moto``: moto's server mode on 127.0.0.1, playing S3 (the shared report storage) and CloudWatch
  (the metrics), unless ``storage`` is not ``s3`` and metrics are off;
* ``api-server``, ``scheduler``, ``dag-processor`` (and ``triggerer`` on request: the cutover DAG's
  approval defers to it), sharing ``home/`` as their ``AIRFLOW_HOME``;
* ``worker-1`` ... ``worker-N``: Edge executor workers (``airflow edge worker``), each in its own
  working directory and ``AIRFLOW_HOME`` under ``workers/<name>/`` as a separate host would be. A
  worker has no database connection: it fetches jobs from the API server over HTTP, runs each task
  in a subprocess that talks to the Execution API, and pushes the task log back. No broker.

Why Edge rather than Celery: Celery needs a broker (Redis or RabbitMQ), which is one more server to
install and run; the Edge executor's workers reach the API server over HTTP, which is also how a
worker on another network (a separate host, a container, an on-premises machine) joins.

The tasks find their settings the way the DAGs expect (``dags/reconcile_common.py``):
``$RECONCILE_CONFIG`` (the config file, when there is one) and the Airflow Connections
``reconcile_source`` / ``reconcile_target``, registered through the REST API from the config's
endpoints (local ones from the embedded stack, whose folder a worker must not need). Reports go to
shared storage, never a worker's disk: S3 on the local moto server (``[diff] s3_uri``), or with
``storage="path"`` an absolute shared folder (``[diff] report_dir``).

Secrets (the JWT signing key, the API secret key, the Fernet key, the admin password) are made
once, kept in ``secrets/`` (mode 0700), and never printed.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import secrets as _secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from reconcile.errors import LocalStackError

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_DIR", "DIR_ENV", "Cluster", "ClusterStatus", "ProcessStatus", "memory_of_tree"]

DEFAULT_DIR = Path(".reconcile/airflow")
DIR_ENV = "RECONCILE_AIRFLOW_DIR"
USER = "admin"
BUCKET = "reconcile-reports"
REGION = "us-east-1"
EXECUTOR = "airflow.providers.edge3.executors.EdgeExecutor"
STORAGE_MODES = ("s3", "path", "config")
CENTRAL = ("api-server", "scheduler", "dag-processor", "triggerer")
DAG_IDS = ("reconcile_backfill", "reconcile_cutover", "reconcile_reconcile", "reconcile_reverse_replay",
           "reconcile_shadow_replay")
_MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": REGION}


def resolve_dir(path: Path | str | None = None) -> Path:
    """The setup's folder: explicit, else ``$RECONCILE_AIRFLOW_DIR``, else ``.reconcile/airflow``."""
    return Path(path or os.environ.get(DIR_ENV) or DEFAULT_DIR).expanduser().resolve()


def default_dags_folder() -> Path:
    """This checkout's ``dags/`` (next to the ``reconcile`` package)."""
    return Path(__file__).resolve().parents[2] / "dags"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(what: str, check: Callable[[], Any], deadline: float, *, every: float = 0.5,
          on_timeout: Callable[[], str] = lambda: "") -> Any:
    """Poll ``check`` until it returns something truthy; past ``deadline`` raise with ``what``."""
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            hint = on_timeout()
            raise LocalStackError(f"{what} did not happen in time{'; ' + hint if hint else ''}; see the logs "
                                  "under the setup's log/ folder, then `reconcile airflow down` and up again")
        time.sleep(every)


# --------------------------------------------------------------------------------------------
# Processes: pid files with the start time (a reused pid is never mistaken for ours), memory


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _smaps_rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes, from /proc/<pid>/smaps_rollup (0, 0 when it is gone)."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "Rss":
                rss = int(value.split()[0]) * 1024
            elif key == "Pss":
                pss = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return rss, pss


def memory_of_tree(pid: int, children: Mapping[int, list[int]] | None = None) -> dict[str, int]:
    """RSS and PSS of ``pid`` and all its descendants (bytes), and how many processes that is.

    RSS counts shared pages once per process (it overstates a forked family); PSS splits each
    shared page among the processes sharing it, so PSS sums to what the tree really costs.
    """
    children = _children_map() if children is None else children
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(children.get(p, []))
    rss = pss = 0
    for p in seen:
        r, s = _smaps_rollup(p)
        rss, pss = rss + r, pss + s
    return {"rss": rss, "pss": pss, "processes": len(seen)}


@dataclasses.dataclass(frozen=True)
class ProcessStatus:
    name: str
    pid: int | None
    running: bool
    rss: int = 0
    pss: int = 0
    processes: int = 0
    log: str | None = None


@dataclasses.dataclass(frozen=True)
class ClusterStatus:
    folder: Path
    api_url: str | None
    processes: tuple[ProcessStatus, ...]
    healthy: bool
    health: dict[str, Any]
    workers: tuple[dict[str, Any], ...]
    storage: str | None
    s3_endpoint: str | None
    startup_seconds: float | None = None

    @property
    def running(self) -> bool:
        return any(p.running for p in self.processes)

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "api_url": self.api_url, "healthy": self.healthy,
                "health": self.health, "storage": self.storage, "s3_endpoint": self.s3_endpoint,
                "startup_seconds": self.startup_seconds,
                "processes": [dataclasses.asdict(p) for p in self.processes],
                "workers": [{k: w.get(k) for k in ("worker_name", "state", "jobs_active")} for w in self.workers],
                "rss_total": sum(p.rss for p in self.processes), "pss_total": sum(p.pss for p in self.processes)}


# --------------------------------------------------------------------------------------------
# The setup


class Cluster:
    """One local multi-worker Airflow under ``folder`` (see the module docstring)."""

    def __init__(self, folder: Path | str | None = None) -> None:
        self.folder = resolve_dir(folder)
        self.run_dir = self.folder / "run"
        self.log_dir = self.folder / "log"
        self.home = self.folder / "home"
        self.secrets_dir = self.folder / "secrets"
        self.state_file = self.folder / "cluster.json"

    # -- state ------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: Mapping[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(self.state_file)

    def _secrets(self) -> dict[str, str]:
        """The setup's secrets, made on first use (0600 files in a 0700 folder)."""
        path = self.secrets_dir / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        self.secrets_dir.mkdir(parents=True, exist_ok=True)
        self.secrets_dir.chmod(0o700)
        values = {"jwt_secret": _secrets.token_urlsafe(64), "api_secret_key": _secrets.token_urlsafe(32),
                  "fernet_key": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                  "password": _secrets.token_urlsafe(16)}
        for name, payload in (("secrets.json", values), ("passwords.json", {USER: values["password"]})):
            fd = os.open(self.secrets_dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(payload, fh)
        return values

    def credentials(self) -> tuple[str, str]:
        """(user, password) of the API's admin user."""
        return USER, self._secrets()["password"]

    def rest(self):
        """An :class:`~reconcile.local.airflow_rest.AirflowRest` client for this setup's API server."""
        from reconcile.local.airflow_rest import AirflowRest

        port = self.state().get("port")
        if not port:
            raise LocalStackError(f"no Airflow setup in {self.folder}; run `reconcile airflow up`")
        user, password = self.credentials()
        return AirflowRest(f"http://127.0.0.1:{port}", user, password)

    def metadb(self):
        from reconcile.local.stack import Server

        return Server("metadb", self.folder)

    # -- pid files ------------------------------------------------------------------------------

    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        """The pid of our process ``name`` when it still runs (same pid and same start time)."""
        try:
            pid_text, ticks_text = self._pidfile(name).read_text().split()
            pid, ticks = int(pid_text), int(ticks_text)
        except (OSError, ValueError):
            return None
        return pid if _start_ticks(pid) == ticks else None

    def names(self) -> list[str]:
        """Every process this setup has a pid file for, in start order."""
        order = {"moto": 0, "api-server": 1, "scheduler": 2, "dag-processor": 3, "triggerer": 4}
        found = [p.stem for p in self.run_dir.glob("*.pid")] if self.run_dir.is_dir() else []
        return sorted(found, key=lambda n: (order.get(n, 5), int(n.rsplit("-", 1)[1]) if n.startswith("worker-")
                                            else 0, n))

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        logfile = self.log_dir / f"{name}.log"
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        ticks = _start_ticks(proc.pid)
        self._pidfile(name).write_text(f"{proc.pid} {ticks}\n")
        log.info("started %s (pid %d), log %s", name, proc.pid, logfile)
        return proc.pid

    def _stop(self, name: str, *, grace: float) -> bool:
        """SIGTERM our process ``name`` and its session, SIGKILL what is left after ``grace`` seconds."""
        pid = self.pid(name)
        self._pidfile(name).unlink(missing_ok=True)
        if pid is None:
            return False
        try:
            os.killpg(pid, signal.SIGTERM)  # the session we started (start_new_session): the process and its children
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        try:
            os.killpg(pid, signal.SIGKILL)  # what is left of the session (task processes of a worker, say)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        return True

    # -- environment ------------------------------------------------------------------------------

    def _base_env(self, state: Mapping[str, Any]) -> dict[str, str]:
        """What every Airflow process gets: the caller's environment without any Airflow setting of its
        own, the executor, the API URLs, the shared secrets, and the reconcile settings."""
        secret = self._secrets()
        port = state["port"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__"))}
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
        env.update({
            "AIRFLOW__CORE__EXECUTOR": EXECUTOR,
            "AIRFLOW__CORE__DAGS_FOLDER": state["dags_folder"],
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__FERNET_KEY": secret["fernet_key"],
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.secrets_dir / "passwords.json"),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API__SECRET_KEY": secret["api_secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": secret["jwt_secret"],
            "AIRFLOW__EDGE__API_ENABLED": "True",
            "AIRFLOW__EDGE__API_URL": f"http://127.0.0.1:{port}/edge_worker/v1/rpcapi",
            "AIRFLOW__EDGE__JOB_POLL_INTERVAL": "1",
            "AIRFLOW__EDGE__HEARTBEAT_INTERVAL": "10",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        })
        env.setdefault("RECONCILE_BACKFILL_MAX_ACTIVE_CHUNKS", str(state["workers"] * state["concurrency"]))
        if state.get("config"):
            env["RECONCILE_CONFIG"] = state["config"]
        else:
            env.pop("RECONCILE_CONFIG", None)
        env.update(state.get("reconcile_env", {}))
        return env

    def _central_env(self, state: Mapping[str, Any]) -> dict[str, str]:
        env = self._base_env(state)
        env["AIRFLOW_HOME"] = str(self.home)
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = state["sql_alchemy_conn"]
        return env

    def _worker_env(self, state: Mapping[str, Any], name: str) -> dict[str, str]:
        env = self._base_env(state)  # no database connection: a worker only talks HTTP to the API server
        env["AIRFLOW_HOME"] = str(self.folder / "workers" / name / "home")
        return env

    # -- up -----------------------------------------------------------------------------------------

    def up(self, *, workers: int = 2, concurrency: int = 2, config: Path | str | None = None,
           port: int | None = None, storage: str = "s3", metrics: bool = True, triggerer: bool = False,
           dags_folder: Path | str | None = None, timeout: float = 240.0) -> ClusterStatus:
        """Start what is not running yet and wait until the API is healthy, the DAGs are parsed and
        ``workers`` edge workers are online; returns the status (with ``startup_seconds``).

        Raises:
            LocalStackError: a process did not come up in ``timeout`` seconds, or a setting is wrong.
        """
        t0 = time.monotonic()
        deadline = t0 + timeout
        if workers < 1 or concurrency < 1:
            raise LocalStackError("--workers and --concurrency must be at least 1")
        if storage not in STORAGE_MODES:
            raise LocalStackError(f"unknown storage {storage!r}; use one of {', '.join(STORAGE_MODES)}")
        config_path = _config_path(config)
        cfg = _load(config_path)
        from reconcile.config import DsqlEndpoint

        if storage == "s3" and isinstance(cfg.target, DsqlEndpoint):
            raise LocalStackError("the local S3 (moto) signs with test credentials, which a real DSQL target "
                                  "would refuse; use --storage config (the [diff] s3_uri of your config) or "
                                  "--storage path")
        dags = Path(dags_folder).resolve() if dags_folder else default_dags_folder()
        if not (dags / "reconcile_backfill.py").is_file():
            raise LocalStackError(f"{dags} holds no reconcile DAGs; pass --dags-folder with this repository's dags/")
        previous = self.state()
        running = [n for n in self.names() if self.pid(n)]
        if running and previous.get("port") and port and port != previous["port"]:
            raise LocalStackError(f"the setup in {self.folder} runs on port {previous['port']}; run "
                                  "`reconcile airflow down` before changing --port")
        wanted = {"storage": storage, "metrics": metrics, "config": str(config_path) if config_path else None,
                  "dags_folder": str(dags), "concurrency": concurrency}
        changed = [k for k, v in wanted.items() if running and k in previous and previous[k] != v]
        if changed:  # running processes keep the environment they were started with
            raise LocalStackError(f"the setup in {self.folder} runs with another {', '.join(changed)}; run "
                                  "`reconcile airflow down` first, then up with the new settings")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._secrets()

        # 1. the metadata database
        server = self.metadb()
        server.init()
        server.start()
        metadb_url = server.url()
        _ensure_database(metadb_url, "airflow")
        sql_conn = metadb_url.replace("postgresql://", "postgresql+psycopg2://", 1).rsplit("/", 1)[0] + "/airflow"

        state: dict[str, Any] = {
            "port": previous.get("port") if running and previous.get("port") else (port or _free_port()),
            "workers": workers, "concurrency": concurrency, "storage": storage, "metrics": metrics,
            "config": str(config_path) if config_path else None, "dags_folder": str(dags),
            "sql_alchemy_conn": sql_conn, "triggerer": triggerer,
            "migrated": previous.get("migrated"), "moto_port": previous.get("moto_port"),
        }

        # 2. moto: S3 for the reports, CloudWatch for the metrics
        reconcile_env: dict[str, str] = {}
        if storage == "s3" or metrics:
            if not self.pid("moto"):
                state["moto_port"] = _free_port()
                self._spawn("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                     str(state["moto_port"])], {**os.environ, **_MOTO_CREDENTIALS}, self.folder)
            endpoint = f"http://127.0.0.1:{state['moto_port']}"
            _wait("the local S3/CloudWatch endpoint (moto) answering", lambda: _port_open(state["moto_port"]),
                  deadline, every=0.2)
            reconcile_env.update(_MOTO_CREDENTIALS)
            if storage == "s3":
                _ensure_bucket(endpoint, BUCKET)
                reconcile_env.update({"AWS_ENDPOINT_URL_S3": endpoint,
                                      "RECONCILE__DIFF__S3_URI": f"s3://{BUCKET}/diff"})
            if metrics:
                reconcile_env.update({"RECONCILE__METRICS__ENABLED": "true",
                                      "RECONCILE__METRICS__ENDPOINT_URL": endpoint,
                                      "RECONCILE__METRICS__REGION": REGION})
        else:
            self._stop("moto", grace=5)  # left from an earlier `up` that used it
        if storage == "path":
            shared = self.folder / "shared" / "reports"
            shared.mkdir(parents=True, exist_ok=True)
            reconcile_env["RECONCILE__DIFF__REPORT_DIR"] = str(shared)
        state["reconcile_env"] = reconcile_env
        self._save_state(state)

        # 3. schema of the metadata database (once per Airflow version)
        from importlib.metadata import version

        airflow_version = version("apache-airflow")  # not `import airflow`: it would set up Airflow's logging here
        central_env = self._central_env(state)
        if state["migrated"] != airflow_version:
            self.home.mkdir(parents=True, exist_ok=True)
            _run([sys.executable, "-m", "airflow", "db", "migrate"], central_env, self.home,
                 self.log_dir / "db-migrate.log", "airflow db migrate", timeout=max(60.0, deadline - time.monotonic()))
            state["migrated"] = airflow_version
            self._save_state(state)

        # 4. the central processes
        api_port = state["port"]
        commands = {
            "api-server": ["api-server", "-H", "127.0.0.1", "-p", str(api_port), "-w", "1"],
            "scheduler": ["scheduler"],
            "dag-processor": ["dag-processor"],
            "triggerer": ["triggerer"],
        }
        for name in CENTRAL:
            if name == "triggerer" and not triggerer:
                self._stop(name, grace=10)
                continue
            if not self.pid(name):
                if name == "api-server" and _port_open(api_port):
                    raise LocalStackError(f"port {api_port} is taken by another program; run `reconcile airflow "
                                          "down`, then up with another --port")
                self._spawn(name, [sys.executable, "-m", "airflow", *commands[name]], central_env, self.home)
        rest = self.rest()

        def health(parts: tuple[str, ...]):
            try:
                h = rest.health()
            except Exception:  # not listening yet
                return None
            return all((h.get(p) or {}).get("status") == "healthy" for p in parts)

        # Workers only need the API server: start them while the scheduler and DAG processor come up.
        _wait("the Airflow API server answering", lambda: health(("metadatabase",)), deadline,
              on_timeout=lambda: self._dead_hint())
        self._register_connections(rest, cfg)

        # 5. the workers, each in its own folder
        for name in self.names():
            if name.startswith("worker-") and int(name.rsplit("-", 1)[1]) > workers:
                self._stop(name, grace=30)
        for i in range(1, workers + 1):
            name = f"worker-{i}"
            if self.pid(name):
                continue
            where = self.folder / "workers" / name
            (where / "home").mkdir(parents=True, exist_ok=True)
            self._spawn(name, [sys.executable, "-m", "airflow", "edge", "worker", "-H", name, "--pid",
                               str(where / "worker.pid"), "-c", str(concurrency)],
                        self._worker_env(state, name), where)
        wanted = {f"worker-{i}" for i in range(1, workers + 1)}

        def online():
            states = {w["worker_name"]: w["state"] for w in rest.edge_workers()}
            return all(states.get(n) in ("idle", "running") for n in wanted)

        _wait(f"{workers} edge worker(s) registering with the API server", online, deadline,
              on_timeout=lambda: self._dead_hint())
        _wait("the scheduler and DAG processor reporting healthy", lambda: health(("scheduler", "dag_processor")),
              deadline, on_timeout=lambda: self._dead_hint())

        def parsed():
            found = rest.get("/api/v2/dags", dag_id_pattern="reconcile_", limit=100)
            ids = {d["dag_id"] for d in found["dags"]}
            if ids >= set(DAG_IDS):
                return True
            errors = rest.get("/api/v2/importErrors", limit=10)
            if errors.get("import_errors"):
                first = errors["import_errors"][0]
                raise LocalStackError(f"the DAG processor cannot import {first['filename']}: "
                                      f"{first['stack_trace'].strip().splitlines()[-1]}; fix the file and run up again")
            return False

        _wait("the DAG processor parsing the reconcile DAGs", parsed, deadline)
        return dataclasses.replace(self.status(), startup_seconds=round(time.monotonic() - t0, 1))

    def _dead_hint(self) -> str:
        dead = [n for n in self.names() if not self.pid(n)]
        return f"not running: {', '.join(dead)}" if dead else ""

    def _register_connections(self, rest, cfg) -> None:
        """``reconcile_source`` / ``reconcile_target`` from the config's endpoints (see :func:`connection_for`)."""
        from reconcile.pipeline.config import CONNECTION_IDS

        for side, conn_id in CONNECTION_IDS.items():
            conn = connection_for(getattr(cfg, side), conn_id)
            if conn is None:
                log.info("%s: no connection registered (the config file's endpoint is used)", conn_id)
                continue
            rest.upsert_connection(conn)

    # -- down, status ---------------------------------------------------------------------------------

    def down(self, *, keep_metadb: bool = False) -> dict[str, bool]:
        """Stop every process of the setup (workers first, so they go offline cleanly) and the
        metadata database; returns ``{name: was_running}``."""
        names = self.names()
        order = [n for n in names if n.startswith("worker-")] + [n for n in CENTRAL if n in names] + \
                [n for n in names if n not in CENTRAL and not n.startswith("worker-")]
        stopped = {name: self._stop(name, grace=20 if name.startswith("worker-") else 15) for name in order}
        if not keep_metadb:
            server = self.metadb()
            stopped["metadb"] = server.initialized and server.stop()
        return stopped

    def destroy(self) -> None:
        """Stop everything and delete the setup's folder."""
        self.down()
        shutil.rmtree(self.folder, ignore_errors=True)

    def status(self) -> ClusterStatus:
        state = self.state()
        children = _children_map()
        procs = []
        for name in self.names():
            pid = self.pid(name)
            mem = memory_of_tree(pid, children) if pid else {"rss": 0, "pss": 0, "processes": 0}
            procs.append(ProcessStatus(name, pid, pid is not None, mem["rss"], mem["pss"], mem["processes"],
                                       str(self.log_dir / f"{name}.log")))
        server = self.metadb()
        if server.initialized:
            st = server.status()
            mem = memory_of_tree(st.pid, children) if st.pid else {"rss": 0, "pss": 0, "processes": 0}
            procs.insert(0, ProcessStatus("metadb", st.pid, st.running, mem["rss"], mem["pss"], mem["processes"],
                                          str(server.logfile)))
        health: dict[str, Any] = {}
        workers: list[dict[str, Any]] = []
        api_url = f"http://127.0.0.1:{state['port']}" if state.get("port") else None
        if api_url and self.pid("api-server"):
            try:
                rest = self.rest()
                health = rest.health()
                workers = rest.edge_workers()
            except Exception as exc:  # the API is starting or gone: status says so, it does not fail
                health = {"error": str(exc)}
        healthy = bool(health) and all((health.get(p) or {}).get("status") == "healthy"
                                       for p in ("metadatabase", "scheduler", "dag_processor"))
        s3 = f"http://127.0.0.1:{state['moto_port']}" if state.get("moto_port") and self.pid("moto") else None
        return ClusterStatus(self.folder, api_url, tuple(procs), healthy, health, tuple(workers),
                             state.get("storage"), s3)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs; reaps it when it is our exited child (a long-lived caller, e.g. a test,
    started it: otherwise it would linger as a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: its parent (init, once `up` exited) reaps it
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _config_path(config: Path | str | None) -> Path | None:
    from reconcile.config import DEFAULT_FILE
    from reconcile.pipeline.config import CONFIG_ENV

    if config:
        path = Path(config).expanduser()
    elif os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV]).expanduser()
    elif (Path.cwd() / DEFAULT_FILE).is_file():
        path = Path.cwd() / DEFAULT_FILE
    else:
        return None
    if not path.is_file():
        raise LocalStackError(f"config file {path} does not exist; pass an existing reconcile.toml with --config")
    return path.resolve()


def _load(path: Path | None):
    from reconcile.config import load_config

    # The setup's own overrides (S3 URI, metrics) are applied in the workers' environment; the
    # config is read here only for its endpoints.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILE__METRICS__", "RECONCILE__DIFF__S3"))}
    return load_config(path, environ=env)


def connection_for(endpoint, conn_id: str) -> dict[str, Any] | None:
    """The Airflow Connection (REST v2 body) standing for a config endpoint, or None to leave the file's.

    * ``local``: the embedded stack's server (started when it is not running): a worker must not need
      the stack's folder to find it;
    * ``postgres`` without ``password_env``: its conninfo as host, port, login, schema and libpq extras;
    * ``postgres`` with a password, and ``dsql``: None: the config file (and the variable holding the
      password, or the IAM role) stay the source of truth; no secret is copied into Airflow.
    """
    from psycopg.conninfo import conninfo_to_dict

    from reconcile.config import LocalEndpoint, PostgresEndpoint

    if isinstance(endpoint, LocalEndpoint):
        from reconcile.local import stack

        stack.up(endpoint.data_dir)
        conninfo = stack.url(endpoint.side, endpoint.data_dir)
    elif isinstance(endpoint, PostgresEndpoint) and not endpoint.password_env:
        conninfo = endpoint.conninfo
    else:
        return None
    params = conninfo_to_dict(conninfo)
    if "password" in params or not params.get("host"):
        return None
    extra = {k: v for k, v in params.items() if k not in ("host", "port", "user", "dbname", "password")}
    return {"connection_id": conn_id, "conn_type": "postgres", "host": params["host"],
            "port": int(params["port"]) if params.get("port") else None, "login": params.get("user"),
            "schema": params.get("dbname"), "extra": json.dumps(extra) if extra else None}


def _ensure_database(server_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _ensure_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)


def _run(argv: list[str], env: Mapping[str, str], cwd: Path, logfile: Path, what: str, *, timeout: float) -> None:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as out:
        try:
            done = subprocess.run(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LocalStackError(f"{what} took longer than {timeout:.0f}s; see {logfile}") from None
    if done.returncode != 0:
        tail = logfile.read_text(errors="replace").strip().splitlines()[-3:]
        raise LocalStackError(f"{what} failed ({' / '.join(tail)[:400]}); see {logfile}")
