"""A small client for Airflow 3's REST API (v2): a JWT from ``POST /auth/token``, then JSON calls.

Used by ``reconcile airflow up|status`` (connections, health, edge workers) and by the tests that
drive the multi-worker setup (trigger runs, read task instances). Standard library only.

>>> AirflowRest("http://127.0.0.1:8080/", "admin", "pw").url("/api/v2/dags")
'http://127.0.0.1:8080/api/v2/dags'
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

from reconcile.errors import ReconcileError

__all__ = ["AirflowRest", "AirflowRestError"]


class AirflowRestError(ReconcileError):
    """The Airflow API answered with an error (or not at all); the message names the call and the status."""

    def __init__(self, method: str, path: str, status: int | None, detail: str) -> None:
        self.method, self.path, self.status, self.detail = method, path, status, detail
        shown = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"Airflow API {method} {path} failed ({shown}: {detail[:300]}); check that "
                         "`reconcile airflow status` shows the API server healthy")

    def __reduce__(self):
        return (self.__class__, (self.method, self.path, self.status, self.detail))


class AirflowRest:
    """JSON calls against one Airflow API server, authenticated as a simple-auth-manager user."""

    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.username, self._password, self.timeout = username, password, timeout
        self._token: str | None = None
        self._token_at = 0.0

    def url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    def _raw(self, method: str, path: str, body: Any = None, *, auth: bool = True,
             query: dict[str, Any] | None = None) -> tuple[int, Any]:
        url = self.url(path) + (f"?{urlencode(query, doseq=True)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read().decode()
                return response.status, json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                payload = json.loads(text)
            except ValueError:
                payload = text
            return exc.code, payload
        except (urllib.error.URLError, OSError) as exc:
            raise AirflowRestError(method, path, None, str(getattr(exc, "reason", exc))) from None

    def token(self) -> str:
        """A JWT for the user (fetched again after 10 minutes; Airflow's default lifetime is longer)."""
        if self._token is None or time.monotonic() - self._token_at > 600:
            status, payload = self._raw("POST", "/auth/token", {"username": self.username,
                                                                "password": self._password}, auth=False)
            if status not in (200, 201) or not isinstance(payload, dict) or "access_token" not in payload:
                raise AirflowRestError("POST", "/auth/token", status, "no token (wrong user or password?)")
            self._token, self._token_at = payload["access_token"], time.monotonic()
        return self._token

    def call(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201, 204),
             query: dict[str, Any] | None = None, auth: bool = True) -> Any:
        """One call; returns the decoded JSON body. Raises :class:`AirflowRestError` on another status."""
        status, payload = self._raw(method, path, body, auth=auth, query=query)
        if status not in ok:
            detail = payload.get("detail") if isinstance(payload, dict) else payload
            raise AirflowRestError(method, path, status, json.dumps(detail) if not isinstance(detail, str)
                                   else detail)
        return payload

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path, query=query or None)

    # -- what the setup and its tests need --------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``/api/v2/monitor/health`` (no authentication needed)."""
        return self.call("GET", "/api/v2/monitor/health", auth=False)

    def upsert_connection(self, conn: dict[str, Any]) -> None:
        """Create the connection, or replace it when it exists (``conn`` as REST v2 takes it)."""
        status, _ = self._raw("POST", "/api/v2/connections", conn)
        if status == 409:
            self.call("PATCH", f"/api/v2/connections/{quote(conn['connection_id'], safe='')}", conn)
        elif status not in (200, 201):
            raise AirflowRestError("POST", "/api/v2/connections", status, f"connection {conn['connection_id']}")

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.call("PATCH", f"/api/v2/dags/{quote(dag_id, safe='')}", {"is_paused": paused})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
        """Trigger a run now (``logical_date`` null: several manual runs never collide)."""
        return self.call("POST", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns",
                         {"logical_date": None, "conf": conf or {}})

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of a run (mapped ones included, one row per map index)."""
        out: list[dict[str, Any]] = []
        while True:
            page = self.get(f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances",
                            limit=100, offset=len(out))
            out += page["task_instances"]
            if not page["task_instances"] or len(out) >= page["total_entries"]:
                return out

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        path = (f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
                f"{quote(task_id, safe='')}/xcomEntries/return_value")
        return self.get(path, map_index=map_index, deserialize=True).get("value")

    def edge_workers(self) -> list[dict[str, Any]]:
        """The edge workers the API server knows, with their state (``idle``, ``running``, ``offline``...)."""
        return self.get("/edge_worker/ui/worker").get("workers", [])
