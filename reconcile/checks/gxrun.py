"""Run :class:`~reconcile.checks.spec.Check` lists through Great Expectations 1.x.

* One ephemeral GX context per run (nothing written but the Data Docs), analytics off, progress
  bars off; Data Docs go to ``<report_dir>/data_docs`` when a report folder is given.
* Databases are reached through SQLAlchemy: ``postgresql+psycopg`` for the source and a PostgreSQL
  target, the ``auroradsql+psycopg`` dialect (``aurora-dsql-sqlalchemy``) for a DSQL target. The URL
  GX stores carries no password: every connection is opened by a ``creator`` that calls
  :func:`reconcile.connections.connect` (the password read from ``$password_env`` at connect time, a
  DSQL IAM token minted per connection, secrets scrubbed from driver errors). A socket directory as
  host becomes ``localhost`` with ``?host=<dir>`` (GX's URL check refuses an empty host).
* SQLAlchemy's psycopg dialect looks hstore up in a SAVEPOINT on its first connection: refused by
  DSQL, so ``use_native_hstore=False`` (what the aurora-dsql dialect does).
* Column types SQLAlchemy does not know (``xml``, an extension's type) are kept by their names
  (:mod:`reconcile.checks.sqla_types`): GX compiles every column's type of a table before it runs any
  expectation on it, and one unknown type used to fail them all.
* ``create_temp_table=False``: GX's SQL path then only runs read-only SELECTs (DSQL has no temporary
  tables; the local stand-in's guards would refuse one).
* Facts computed in Python (replay lag) run as a pandas batch.
* No table is read whole in one statement when it is bigger than ``[checks] chunk_rows``: each check's
  batch is split into key ranges (:mod:`reconcile.checks.chunks`, boundaries from the balance diff's
  ``key_ranges``), one GX batch per range, and the chunks' results are combined exactly (counts summed,
  unexpected values kept up to ``result_rows``, a row count judged on the sum); ``result["chunking"]``
  says on which column and in how many chunks, or why a batch ran whole. Data Docs show one validation
  per chunk. The chunk batches run in waves of ``WAVE`` validations, one GX checkpoint each; without Data
  Docs a finished wave's GX objects and stored results are dropped, and of each chunk only the counts
  and the unexpected values are kept, so memory follows the number of chunks (a few KiB each), not rows.

Each result is mapped back to its check through the expectation's ``meta``; exception texts are
redacted; the Data Docs are scrubbed of anything that looks like a password after they are built.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from reconcile.checks.spec import Check, Chunking, substitute_chunk, suite_key
from reconcile.config import Config, DsqlEndpoint, Endpoint, LocalEndpoint, mask_conninfo, one_line, redact

log = logging.getLogger(__name__)

__all__ = ["Outcome", "engine_url", "import_gx", "run_gx"]


@dataclass
class Outcome:
    """The result of one check on one side (JSON-able through :meth:`to_dict`)."""

    side: str
    check: Check
    success: bool
    observed: Any = None
    result: dict[str, Any] = field(default_factory=dict)
    exception: str | None = None

    @property
    def suite(self) -> str:
        return suite_key(self.check.suite, self.side)

    @property
    def not_applicable(self) -> str | None:
        """Why the check was not run (it does not apply to this ledger), or None."""
        return self.check.not_applicable

    @property
    def status(self) -> str:
        """``passed``, ``failed``, ``error`` (it could not be evaluated) or ``not_applicable``."""
        if self.not_applicable is not None:
            return "not_applicable"
        if self.exception:
            return "error"
        return "passed" if self.success else "failed"

    def to_dict(self) -> dict[str, Any]:
        out = {"side": self.side, "suite": self.check.suite, "name": self.check.name,
               "expectation": self.check.expectation, "asset": self.check.asset, "success": self.success,
               "status": self.status, "observed": self.observed, "description": self.check.description}
        if self.exception:
            out["exception"] = self.exception
        if self.not_applicable is not None:
            out["not_applicable"] = self.not_applicable
        return out


def import_gx():
    """``great_expectations``, imported on first use with analytics off (it is slow: ~2.5 s)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    # Before the import: importing GX logs ~200 INFO lines ("Skipping registering function ...") from
    # its public-API decorators, which would fill a task log; its other INFO lines are set-up chatter.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import great_expectations as gx
    return gx


def engine_url(endpoint: Endpoint, conninfo: str | None = None) -> str:
    """The SQLAlchemy URL GX is given: dialect, user, host, port, database; never a password.

    >>> from reconcile.config import PostgresEndpoint
    >>> engine_url(PostgresEndpoint("source", "host=/run/pg dbname=ledger user=app password=x"))
    'postgresql+psycopg://app@localhost/ledger?host=%2Frun%2Fpg'
    """
    if isinstance(endpoint, DsqlEndpoint):
        return f"auroradsql+psycopg://{quote(endpoint.user, safe='')}@{endpoint.endpoint}:{endpoint.port}/postgres"
    from psycopg.conninfo import conninfo_to_dict

    if conninfo is None:
        conninfo = endpoint.conninfo if not isinstance(endpoint, LocalEndpoint) else ""
    params = conninfo_to_dict(conninfo) if conninfo else {}
    user = quote(str(params.get("user") or "postgres"), safe="")
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    query = ""
    if host.startswith("/") or "," in host:
        query, host = f"?host={quote(host, safe='')}", "localhost"
    port = f":{params['port']}" if params.get("port") and "," not in str(params["port"]) else ""
    db = quote(str(params.get("dbname") or "postgres"), safe="")
    return f"postgresql+psycopg://{user}@{host}{port}/{db}{query}"


def _creator(endpoint: Endpoint, local_url: Callable[[str], str] | None) -> Callable[[], Any]:
    from reconcile.connections import connect

    def create():
        # Not autocommit: SQLAlchemy scopes each GX query in a transaction it rolls back (read-only).
        return connect(endpoint, local_url=local_url, autocommit=False, application_name="reconcile-checks")

    return create


def _add_datasource(context, name: str, endpoint: Endpoint, local_url: Callable[[str], str] | None, *,
                    side: str | None = None):
    side = side or name
    conninfo = local_url(side) if isinstance(endpoint, LocalEndpoint) and local_url else None
    if isinstance(endpoint, LocalEndpoint) and conninfo is None:
        from reconcile.local import stack

        conninfo = stack.url(side, endpoint.data_dir)
    url = engine_url(endpoint, conninfo)
    from reconcile.checks.sqla_types import register

    # plugins: a column type SQLAlchemy does not know (xml, an extension's type) must not fail its table's checks
    kwargs: dict[str, Any] = {"creator": _creator(endpoint, local_url), "pool_pre_ping": True,
                              "plugins": [register()]}
    if isinstance(endpoint, DsqlEndpoint):
        kwargs["pool_recycle"] = 3300  # under DSQL's 60-minute connection lifetime
        return context.data_sources.add_sql(name, connection_string=url, kwargs=kwargs, create_temp_table=False)
    # SQLAlchemy's psycopg dialect looks up hstore on its first connection inside a SAVEPOINT, which
    # DSQL (and our DsqlConnection) refuses; the aurora-dsql dialect turns it off the same way.
    kwargs["use_native_hstore"] = False
    return context.data_sources.add_postgres(name, connection_string=url, kwargs=kwargs, create_temp_table=False)


def table_query(name: str) -> str:
    """The query a table's expectations read: every row of the quoted table, ``:`` escaped for SQLAlchemy.

    >>> table_query('ledger2."Sel :ect"')
    'SELECT * FROM "ledger2"."Sel \\\\:ect"'
    """
    from psycopg import sql

    from reconcile.checks.spec import _BIND
    from reconcile.db.names import split_name

    return _BIND.sub(r"\\:", sql.SQL("SELECT * FROM {}").format(sql.Identifier(*split_name(name))).as_string())


def _context(gx, report_dir: Path | None):
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # In-memory stores and no default Data Docs site (the ephemeral default is a temporary folder).
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                               analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False))
    context = gx.get_context(mode="ephemeral", project_config=config)
    if report_dir is not None:
        context.add_data_docs_site("reconcile", {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              # GX refuses a relative folder in an ephemeral context (no root folder)
                              "base_directory": str((report_dir / "data_docs").absolute())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
    return context


def _expectation(gx, check: Check, chunk: Any = None, index: int = 0):
    """The GX expectation of ``check`` over one chunk (``chunk`` None: the whole table)."""
    cls = getattr(gx.expectations, check.expectation)
    kwargs = dict(check.kwargs)
    if "unexpected_rows_query" in kwargs:
        kwargs["unexpected_rows_query"] = substitute_chunk(kwargs["unexpected_rows_query"],
                                                           chunk.inner if chunk is not None else "TRUE")
    if chunk is not None and check.expectation == "ExpectTableRowCountToBeBetween":
        kwargs = {"min_value": 0}  # a chunk's count is a part: the sum is judged against the bounds (_combine)
    return cls(**kwargs, description=check.description,
               meta={"reconcile_suite": check.suite, "reconcile_check": check.name, "reconcile_chunk": index})


class _Planner:
    """Key-range chunk plans of the checked tables, one psycopg connection per side (closed after planning)."""

    def __init__(self, config: Config, local_url: Callable[[str], str] | None, rows: int) -> None:
        self.config, self.local_url, self.rows = config, local_url, rows
        self.conns: dict[str, Any] = {}
        self.keys: dict[tuple[str, str], str | None] = {}
        self.plans: dict[tuple[str, str, Any], Any] = {}

    def conn(self, side: str):
        if side not in self.conns:
            from reconcile.connections import connect

            endpoint = self.config.source if side == "source" else self.config.target
            self.conns[side] = connect(endpoint, local_url=self.local_url, application_name="reconcile-checks")
        return self.conns[side]

    def resolve(self, side: str, check: Check) -> Chunking | None:
        """The check's chunking with a row-wise split bound to the table's primary key (None: runs whole)."""
        from reconcile.checks.chunks import primary_key_column

        if check.table is None or check.chunking is None or check.chunking.column is not None:
            return check.chunking if check.table is not None else None
        if (side, check.table) not in self.keys:
            self.keys[(side, check.table)] = primary_key_column(self.conn(side), check.table)
        column = self.keys[(side, check.table)]
        return Chunking(column) if column is not None else check.chunking

    def plan(self, side: str, table: str, chunking: Chunking | None):
        from reconcile.checks.chunks import ChunkPlan, Chunk, plan_chunks

        key = (side, table, chunking)
        if key not in self.plans:
            if chunking is None:
                self.plans[key] = ChunkPlan(table, None, [Chunk(table_query(table), "TRUE")],
                                            whole_reason="the check names no key to split it on")
            else:
                self.plans[key] = plan_chunks(self.conn(side), table, chunking, self.rows)
                log.debug("checks: %s on %s split on %s into %d chunk(s)", table, side,
                          self.plans[key].column, len(self.plans[key].chunks))
        return self.plans[key]

    def close(self) -> None:
        for conn in self.conns.values():
            try:
                conn.close()
            except Exception:  # pragma: no cover - best effort
                pass
        self.conns.clear()


_SUMMED = ("element_count", "unexpected_count", "missing_count")
_KEPT = frozenset(_SUMMED) | {"partial_unexpected_list", "partial_unexpected_counts", "observed_value"}

WAVE = 64
"""Validations (one chunk of one suite each) per GX checkpoint run."""


def _forget(context, checkpoint: str, wave: list[tuple[str, str, list[Check]]], datasources: dict) -> None:
    """Drop a finished wave's GX objects and stored results (kept only for Data Docs); best effort."""
    try:
        store = context.validation_results_store
        for key in store.list_keys():
            store.remove_key(key)
        context.checkpoints.delete(checkpoint)
        for side, name, group in wave:
            context.validation_definitions.delete(name)
            context.suites.delete(name)
            datasources[(side, group[0].table)].delete_asset(name)
    except Exception as exc:  # pragma: no cover - memory only: the results are already collected
        log.debug("checks: could not drop a finished wave's GX objects: %s", type(exc).__name__)



def _combine(outcome: Outcome, results: list[tuple[int, Any]], plan: Any, secrets: Sequence[str | None],
             limit: int) -> list[Any]:
    """Fill ``outcome`` from its chunks' results (``(chunk index, Outcome)``, each filled by :func:`_fill`), exactly as one whole-table run would; returns the failed
    chunks (where :func:`_sample_unexpected_rows` looks for sample rows)."""
    if any(i < 0 for i, _ in results):
        outcome.success = False  # a chunk could not even be set up: its exception stands
        return []
    results = sorted(results, key=lambda x: x[0])
    info = {"column": plan.column, "chunks": len(plan.chunks)} if plan is not None else None
    if plan is not None and plan.whole_reason:
        info["whole_reason"] = plan.whole_reason
    if plan is None or not plan.chunked:
        part = results[0][1]
        outcome.success, outcome.exception = part.success, part.exception
        outcome.observed, outcome.result = part.observed, part.result
        if info is not None:
            outcome.result = {**outcome.result, "chunking": info}
        return [plan.chunks[0]] if plan is not None and not outcome.success else []
    parts = list(results)
    if sorted(i for i, _ in parts) != list(range(len(plan.chunks))):
        outcome.success, outcome.exception = False, (f"{len(plan.chunks) - len(parts)} of {len(plan.chunks)} "
                                                     "key-range chunks returned no result")
        return []
    errors = [p.exception for _, p in parts if p.exception]
    failed = [plan.chunks[i] for i, p in parts if not p.success]
    first = parts[0][1].result
    kind = outcome.check.expectation
    if kind == "ExpectTableRowCountToBeBetween":
        total = sum(int(p.observed or 0) for _, p in parts)
        low, high = outcome.check.kwargs.get("min_value"), outcome.check.kwargs.get("max_value")
        success = (low is None or total >= low) and (high is None or total <= high)
        observed: Any = total
        result: dict[str, Any] = {"observed_value": total}
        failed = []
    elif "unexpected_count" in first:
        result = {k: sum(int(p.result.get(k) or 0) for _, p in parts) for k in _SUMMED}
        result["partial_unexpected_list"] = [v for _, p in parts for v in p.result.get("partial_unexpected_list")
                                             or []][:limit]
        counts: dict[str, dict[str, Any]] = {}
        for _, p in parts:
            for item in p.result.get("partial_unexpected_counts") or []:
                entry = counts.setdefault(repr(item.get("value")), {"value": item.get("value"), "count": 0})
                entry["count"] += int(item.get("count") or 0)
        if counts:
            result["partial_unexpected_counts"] = sorted(counts.values(), key=lambda c: -c["count"])[:limit]
        n, bad, missing = result["element_count"], result["unexpected_count"], result["missing_count"]
        result["missing_percent"] = 100.0 * missing / n if n else None
        result["unexpected_percent_total"] = 100.0 * bad / n if n else None
        result["unexpected_percent"] = result["unexpected_percent_nonmissing"] = (
            100.0 * bad / (n - missing) if n - missing else None)
        success = not failed
        observed = {"unexpected_count": bad, "element_count": n,
                    "partial_unexpected_list": result["partial_unexpected_list"]}
    elif all(isinstance(p.observed, int) and not isinstance(p.observed, bool) for _, p in parts):
        observed = sum(p.observed for _, p in parts)  # UnexpectedRowsExpectation: rows found, summed
        result = {"observed_value": observed}
        success = not failed
    else:
        observed = [p.observed for _, p in parts]
        result = {"observed_value": observed}
        success = not failed
    outcome.success = success and not errors
    outcome.exception = errors[0] if errors else None
    outcome.observed = _jsonable(observed)
    outcome.result = _jsonable({**result, "chunking": info})
    return failed


def _gx_suite_name(check: Check, side: str) -> str:
    base = check.suite if check.asset == check.suite else f"{check.suite}:{check.asset}"
    return f"{base}@{side}"


def run_gx(config: Config, checks: dict[str, Sequence[Check]], *, report_dir: Path | None = None,
           result_rows: int = 20, local_url: Callable[[str], str] | None = None,
           secrets: Sequence[str | None] = (), chunk_rows: int | None = None) -> tuple[list[Outcome], str | None]:
    """Run every side's checks; returns the outcomes (check order kept) and the Data Docs index path.

    Args:
        config: the endpoints.
        checks: side ("source"/"target") -> the checks to run there.
        report_dir: where ``data_docs/`` goes; None builds no Data Docs.
        result_rows: unexpected values kept per failed expectation.
        local_url: for local endpoints, ``role -> conninfo`` (tests); None asks the local stack.
        secrets: values that must not appear in results or Data Docs (e.g. the source password).
        chunk_rows: rows per key-range chunk of a table's batch (default ``[checks] chunk_rows``); each
            chunk is its own batch and the chunks' results are combined exactly
            (:mod:`reconcile.checks.chunks`).
    """
    if chunk_rows is None:
        chunk_rows = config.checks.chunk_rows
    gx = import_gx()
    from great_expectations.checkpoint import UpdateDataDocsAction

    context = _context(gx, report_dir)
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": result_rows}
    actions = [UpdateDataDocsAction(name="data_docs", site_names=["reconcile"])] if report_dir else []
    outcomes: dict[tuple[str, str, str], Outcome] = {}
    order: list[tuple[str, str, str]] = []
    frame_runs: list[tuple[Any, Any]] = []
    datasources = {}
    pandas_ds = None

    planner = _Planner(config, local_url, chunk_rows)
    groups: dict[tuple[str, str, Any], list[Check]] = defaultdict(list)
    plans: dict[tuple[str, str, Any], Any] = {}
    try:
        for side, side_checks in checks.items():
            for check in side_checks:
                key = (side, check.suite, check.name)
                order.append(key)
                if check.not_applicable is not None:  # never run: it does not apply to this ledger
                    outcomes[key] = Outcome(side, check, success=False)
                    continue
                outcomes[key] = Outcome(side, check, success=False, exception="not run")
                try:
                    chunking = planner.resolve(side, check)
                except Exception as exc:  # the table is missing...
                    outcomes[key].exception = one_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                                                       secrets)
                    continue
                groups[(side, _gx_suite_name(check, side), chunking)].append(check)
        for (side, _name, chunking), group in groups.items():
            first = group[0]
            if first.table is not None:
                try:
                    plans[(side, _name, chunking)] = planner.plan(side, first.table, chunking)
                except Exception as exc:
                    message = one_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, secrets)
                    for check in group:
                        outcomes[(side, check.suite, check.name)].exception = message
    finally:
        planner.close()

    used: set[str] = set()  # suite names taken (<base>@<side>)
    per_check: dict[tuple[str, str, str], list[tuple[int, Any]]] = defaultdict(list)
    chunk_of: dict[tuple[str, str, str], Any] = {}
    sql_batches: list[tuple[str, str, int, Any, list[Check]]] = []  # (side, name, chunk index, chunk, checks)
    for (side, suite_name, chunking), group in groups.items():
        first = group[0]
        plan = plans.get((side, suite_name, chunking))
        if first.table is not None and plan is None:
            continue  # planning failed: the outcomes carry why
        base = suite_name.rsplit("@", 1)[0]
        if f"{base}@{side}" in used and plan is not None:  # the same suite and table split another way
            base = f"{base}~{plan.column}"
        n, stem = 1, base
        while f"{base}@{side}" in used:
            n += 1
            base = f"{stem}~{n}"
        used.add(f"{base}@{side}")
        for check in group:
            chunk_of[(side, check.suite, check.name)] = plan
        if first.table is None:
            name = f"{base}@{side}"
            try:
                import pandas as pd

                if pandas_ds is None:
                    pandas_ds = context.data_sources.add_pandas("facts")
                asset = pandas_ds.add_dataframe_asset(name)
                batch = asset.add_batch_definition_whole_dataframe("whole frame")
                columns = list(first.frame[0]) if first.frame else list(first.evidence.get("columns", []))
                frame = pd.DataFrame(list(first.frame), columns=columns)
                suite = context.suites.add(gx.ExpectationSuite(name=name))
                for check in group:
                    suite.add_expectation(_expectation(gx, check))
                definition = context.validation_definitions.add(
                    gx.ValidationDefinition(name=name, data=batch, suite=suite))
            except Exception as exc:
                message = one_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, secrets)
                for check in group:
                    outcomes[(side, check.suite, check.name)].exception = message
                continue
            frame_runs.append((definition, frame))
            continue
        for i, chunk in enumerate(plan.chunks):
            name = f"{base}#{i + 1}@{side}" if plan.chunked else f"{base}@{side}"
            sql_batches.append((side, name, i, chunk if plan.chunked else None, group))

    def add_batch(side: str, name: str, i: int, chunk: Any, group: list[Check]):
        """The GX objects of one chunk's batch: a query asset, its suite, a validation definition."""
        table = group[0].table
        if (side, table) not in datasources:
            endpoint = config.source if side == "source" else config.target
            datasources[(side, table)] = _add_datasource(context, f"{side}:{table}", endpoint, local_url, side=side)
        # A query asset over the quoted name: GX's table asset lower-cases an unquoted schema or table
        # ("Select" became select) and splices the name into SQL as written ("tab;le" broke the query).
        # One asset per key-range chunk (reconcile.checks.chunks).
        query = chunk.query if chunk is not None else chunk_of[(side, group[0].suite, group[0].name)].chunks[0].query
        asset = datasources[(side, table)].add_query_asset(name, query=query)
        batch = asset.add_batch_definition_whole_table("whole table")
        suite = context.suites.add(gx.ExpectationSuite(name=name))
        for check in group:
            suite.add_expectation(_expectation(gx, check, chunk, i))
        return context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))

    def collect(result) -> None:
        """Keep each expectation's result as a small Outcome (GX's result objects are dropped)."""
        for validation in result.run_results.values():
            side = validation.suite_name.rsplit("@", 1)[1]
            for r in validation.results:
                meta = r.expectation_config.meta or {}
                key = (side, meta.get("reconcile_suite"), meta.get("reconcile_check"))
                if key in outcomes:
                    part = Outcome(side, outcomes[key].check, success=False)
                    _fill(part, r, secrets)
                    plan = chunk_of.get(key)
                    if plan is not None and plan.chunked:  # only what _combine sums is kept of a chunk
                        part.result = {k: v for k, v in part.result.items() if k in _KEPT}
                    per_check[key].append((int(meta.get("reconcile_chunk") or 0), part))

    failed_chunks: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    try:
        # SQL batches in waves of WAVE validations, each wave its own checkpoint; without Data Docs a wave's
        # GX objects and stored results are dropped after it, so memory holds a wave, not every chunk.
        for w in range(0, len(sql_batches), WAVE):
            wave, definitions = [], []
            for side, name, i, chunk, group in sql_batches[w:w + WAVE]:
                try:
                    definitions.append(add_batch(side, name, i, chunk, group))
                    wave.append((side, name, group))
                except Exception as exc:  # the table is missing, the query does not parse...
                    message = one_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, secrets)
                    for check in group:
                        outcomes[(side, check.suite, check.name)].exception = message
                        per_check[(side, check.suite, check.name)].append((-1, None))  # never combined as passed
            if not definitions:
                continue
            checkpoint = context.checkpoints.add(gx.Checkpoint(
                name=f"reconcile-sql-{w // WAVE}", validation_definitions=definitions, actions=actions,
                result_format=result_format))
            collect(checkpoint.run())
            if report_dir is None:
                _forget(context, checkpoint.name, wave, datasources)
        for i, (definition, frame) in enumerate(frame_runs):
            checkpoint = context.checkpoints.add(gx.Checkpoint(
                name=f"reconcile-facts-{i}", validation_definitions=[definition], actions=actions,
                result_format=result_format))
            collect(checkpoint.run(batch_parameters={"dataframe": frame}))
        for key, results in per_check.items():
            plan = chunk_of.get(key)
            failed_chunks[key] = _combine(outcomes[key], results, plan, secrets, result_rows)
        _sample_unexpected_rows(outcomes, datasources, result_rows, secrets, failed_chunks)
    finally:
        for ds in datasources.values():
            try:
                ds.get_execution_engine().engine.dispose()
                ds.get_engine().dispose()
            except Exception:  # pragma: no cover - best effort
                pass
    docs = None
    if report_dir is not None and (report_dir / "data_docs" / "index.html").exists():
        _scrub(report_dir / "data_docs", secrets)
        docs = str(report_dir / "data_docs" / "index.html")
    return [outcomes[k] for k in order], docs


def _fill(outcome: Outcome, r, secrets: Sequence[str | None]) -> None:
    info = r.exception_info or {}
    message = _exception_message(info)
    result = r.result or {}
    outcome.success = bool(r.success) and message is None
    outcome.exception = one_line(message, secrets) if message else None
    observed = result.get("observed_value")
    if observed is None and "unexpected_count" in result:
        observed = {"unexpected_count": result.get("unexpected_count"),
                    "element_count": result.get("element_count"),
                    "partial_unexpected_list": result.get("partial_unexpected_list", [])}
    outcome.observed = _jsonable(observed)
    outcome.result = _jsonable(result)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sample_unexpected_rows(outcomes: dict, datasources: dict, limit: int, secrets: Sequence[str | None],
                            failed_chunks: dict | None = None) -> None:
    """Keep up to ``limit`` of the rows a failed ``UnexpectedRowsExpectation`` found, as ``result["sample_rows"]``.

    GX's SUMMARY result format keeps only their count for this expectation (COMPLETE would keep every
    unexpected value of every column expectation), so the same read-only query runs once more, with a LIMIT,
    for the failed ones only, over the key-range chunks that failed (never the whole table when it was split).
    Best effort: a sample that cannot be read is left out, never a failure.
    """
    from sqlalchemy import text

    failed_chunks = failed_chunks or {}
    for key, o in outcomes.items():
        query = o.check.kwargs.get("unexpected_rows_query")
        if (o.success or o.exception or limit <= 0 or o.check.expectation != "UnexpectedRowsExpectation"
                or not query or not o.check.table):
            continue
        source = datasources.get((o.side, o.check.table)) or next(
            (ds for (side, _table), ds in datasources.items() if side == o.side), None)
        if source is None:
            continue
        whole = ".".join(_quote(part) for part in o.check.table.split(".", 1))
        chunks = failed_chunks.get(key) or [None]
        rows: list = []
        try:
            engine = source.get_execution_engine().engine
            with engine.connect() as conn:
                for chunk in chunks:
                    if len(rows) >= limit:
                        break
                    batch = f"({chunk.query}) AS chunk_batch" if chunk is not None else whole
                    inner = chunk.inner if chunk is not None else "TRUE"
                    body = substitute_chunk(query, inner).replace("{batch}", batch)
                    rows += conn.execute(text(f"SELECT * FROM ({body}) AS unexpected "  # noqa: S608
                                              f"LIMIT {int(limit - len(rows))}")).mappings().all()
        except Exception as exc:  # the sample is an extra: the expectation's result stands without it
            log.debug("sample rows of %s/%s on %s: %s", o.check.suite, o.check.name, o.side,
                      one_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, secrets))
            continue
        o.result = {**(o.result or {}), "sample_rows": [_jsonable(dict(r)) for r in rows]}


def _exception_message(info: dict) -> str | None:
    if info.get("raised_exception"):
        return info.get("exception_message") or "the expectation raised an error"
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return value.get("exception_message") or "a metric raised an error"
    return None


def _jsonable(value: Any) -> Any:
    import datetime as dt
    from decimal import Decimal

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)  # exact: money never becomes a float
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return str(value)


def _scrub(folder: Path, secrets: Sequence[str | None]) -> None:
    """Rewrite any Data Docs file that quotes a password or token (none should; GX holds no secret)."""
    for path in folder.rglob("*"):
        if path.suffix not in (".html", ".json", ".js") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        clean = redact(text, secrets) if any(secrets) else mask_conninfo(text)
        if clean != text:
            path.write_text(clean, encoding="utf-8")
