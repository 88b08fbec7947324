"""The demo's workspace: a config file for the local stack, the report folder, and a clean slate.

Everything the demo makes lives under one folder (default ``.reconcile/``): ``local/`` holds the two
embedded servers, ``demo/reconcile.toml`` the settings every step (and every Airflow task) reads,
``demo/reports/<run>/`` the reports, ``demo/airflow/`` Airflow's home when the DAGs run. A demo run
starts from a clean slate (the previous run's slot, publication, target tables and control state are
dropped), so running it twice gives the same result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

# Demo-friendly gate criteria: one green reconciliation run is enough evidence on a laptop.
_DEMO_TOML = """\
# Written by `reconcile demo`: the local stack as source and target, demo-friendly gate criteria.
{endpoints}

[local]
data_dir = "{data_dir}"

{stages}
"""
_LOCAL = {"kind": "local"}


@dataclass(frozen=True)
class Workspace:
    """Paths of one demo workspace."""

    data_dir: Path
    """The embedded servers' folder (``reconcile local``)."""
    root: Path
    """The demo's own folder: config, reports, Airflow home."""

    @property
    def config_path(self) -> Path:
        return self.root / "reconcile.toml"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    def write_config(self, stages: dict[str, dict[str, object]]) -> Path:
        """Write the demo's reconcile.toml (idempotent) and return its path.

        ``stages`` maps sections to their settings; ``source`` and ``target`` among them replace the
        local servers (``kind = "local"``) as the endpoints.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        stages = dict(stages)
        endpoints = {side: stages.pop(side, None) or _LOCAL for side in ("source", "target")}
        text = _DEMO_TOML.format(endpoints=_blocks(endpoints), data_dir=_escape(str(self.data_dir)),
                                 stages=_blocks(stages))
        if not self.config_path.exists() or self.config_path.read_text() != text:
            self.config_path.write_text(text)
        return self.config_path


def _blocks(sections: dict[str, dict[str, object]]) -> str:
    blocks = []
    for section, values in sections.items():
        if values:
            blocks.append("\n".join([f"[{section}]"] + [f"{k} = {_toml(v)}" for k, v in values.items()]))
    return "\n\n".join(blocks)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return f'"{_escape(str(value))}"'


def reset(source_url: str, target_url: str, *, slot_name: str, publication: str,
          target_schemas: tuple[str, ...]) -> list[str]:
    """Drop what a previous demo left: the replication slot and publication on the source (and the reverse
    replay's state, from a `--journey`), the replicated schemas and the control schema on the target, whose
    CDC capture is switched off. Returns what was dropped.

    The target is the DSQL stand-in; this bypasses its guards (``dsql_guard.internal``) because it is
    the local stack's own housekeeping, not pipeline code (on DSQL you would drop tables one by one).
    """
    dropped: list[str] = []
    with psycopg.connect(source_url, autocommit=True) as conn:
        for (name, active_pid) in conn.execute(
                "SELECT slot_name, active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot_name,)).fetchall():
            if active_pid:
                conn.execute("SELECT pg_terminate_backend(%s)", (active_pid,))
            conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            dropped.append(f"slot {name}")
        if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone():
            conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(publication)))
            dropped.append(f"publication {publication}")
        from reconcile.reverse.source_state import SCHEMA as REVERSE_SCHEMA

        if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (REVERSE_SCHEMA,)).fetchone():
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(REVERSE_SCHEMA)))
            dropped.append(f"source schema {REVERSE_SCHEMA}")
    with psycopg.connect(target_url, autocommit=True) as conn:
        conn.execute("SET dsql_guard.internal = on")
        if conn.execute("SELECT current_setting('dsql_guard.cdc', true)").fetchone()[0] == "on":
            from reconcile.local import guards

            guards.configure(target_url, cdc=False)
            conn.execute("TRUNCATE dsql_guard.cdc_log")
            dropped.append("target CDC capture (switched off)")
        for schema in target_schemas:
            if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone():
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
                dropped.append(f"target schema {schema}")
    return dropped
