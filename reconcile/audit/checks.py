"""Catalog-level checks: what the source's catalog shows that will not survive Aurora DSQL.

Pure functions over a :class:`~reconcile.audit.catalog.Catalog` (no connection): the data-level
evidence (numeric profiles, key ordering) is passed in by the caller when it has it.
"""

from __future__ import annotations

import json

from collections.abc import Mapping

from reconcile.audit.catalog import MONITORING_EXTENSIONS, Catalog, Table, is_c_collation
from reconcile.audit.findings import Finding, make
from reconcile.audit.translate import (
    IdStrategy,
    NumericProfile,
    planned_numeric,
    translate_column,
)
from reconcile.audit.triggers import Invariant, describe_trigger_body
from reconcile.keyrule import rule_sentence

__all__ = ["MONITORING_EXTENSIONS", "QUOTAS", "catalog_findings", "trigger_findings"]

QUOTAS = {"columns": 255, "indexes": 24, "key_columns": 8, "key_bytes": 1024}
"""DSQL per-table and per-index quotas (../shared/dsql.md)."""


# Bytes a declared type can take in an index key at most (None: unbounded or unknown).
_FIXED_KEY_BYTES = {"bool": 1, "int2": 2, "int4": 4, "int8": 8, "float4": 4, "float8": 8, "date": 4,
                    "time": 8, "timetz": 12, "timestamp": 8, "timestamptz": 8, "interval": 16, "uuid": 16}


def _declared_key_bytes(table: Table, column: str | None) -> int | None:
    if column is None:
        return None
    col = table.column(column)
    if col.type_name in _FIXED_KEY_BYTES:
        return _FIXED_KEY_BYTES[col.type_name]
    if col.type_name in ("varchar", "bpchar") and col.typmod >= 4:
        return (col.typmod - 4) * 4  # up to 4 UTF-8 bytes a character
    ps = col.numeric_precision_scale
    if ps:
        return ps[0] // 2 + 8
    return None


def catalog_findings(
    catalog: Catalog,
    *,
    keys: Mapping[str, tuple[str, ...]] | None = None,
    numeric: Mapping[str, NumericProfile] | None = None,
    id_strategy: IdStrategy = "bigint",
) -> tuple[list[Finding], list[Invariant]]:
    """Every catalog-level finding, and the invariants recognised in triggers.

    Args:
        catalog: the source catalog.
        keys: configured key columns per ``schema.table`` (used where a table has no primary key).
        numeric: observed profiles of plain numeric columns (``schema.table.column``), when scanned.
        id_strategy: as for :func:`~reconcile.audit.translate.translate_column`.
    """
    keys = keys or {}
    numeric = numeric or {}
    out: list[Finding] = []
    invariants: list[Invariant] = []

    if not catalog.c_collated:
        out.append(make("database_collation", catalog.database,
                        f"database {catalog.database} sorts text with {catalog.collation}; DSQL uses C",
                        collation=catalog.collation))

    for ext in catalog.extensions:
        used_by = [f"{t.qualified}.{c.name}" for t in catalog.tables for c in t.columns
                   if c.type_extension == ext.name]
        code = "monitoring_extension" if ext.name in MONITORING_EXTENSIONS and not used_by else "extension"
        msg = f"extension {ext.name} {ext.version} (schema {ext.schema})"
        if used_by:
            msg += f"; its types are used by {', '.join(used_by)}"
        out.append(make(code, ext.name, msg, used_by=used_by))

    enum_columns: dict[str, list[str]] = {}
    domain_columns: dict[str, list[str]] = {}
    for table in catalog.tables:
        out.extend(_table_findings(table, catalog, keys.get(table.qualified)))
        found, invs = trigger_findings(table, catalog)
        out.extend(found)
        invariants.extend(invs)
        if table.partition_of:
            continue  # columns come from the parent: reported there
        for col in table.columns:
            obj = f"{table.qualified}.{col.name}"
            tr = translate_column(col, table, catalog, numeric=numeric.get(obj), id_strategy=id_strategy)
            for code, target in tr.answers:
                if code == "enum":
                    enum_columns.setdefault(target, []).append(obj)
                elif code == "domain":
                    domain_columns.setdefault(target, []).append(obj)
                else:
                    out.append(_column_finding(code, target, col, tr.target_type, catalog, numeric.get(obj)))

    for enum, labels in catalog.enums.items():
        cols = enum_columns.get(enum, [])
        out.append(make("enum", enum, f"enum {enum} ({', '.join(labels)})"
                        + (f" used by {', '.join(cols)}" if cols else ", not used by any table"),
                        labels=list(labels), columns=cols))
    for domain, cols in domain_columns.items():
        out.append(make("domain", domain, f"domain {domain} used by {', '.join(cols)}", columns=cols))
    for name, kind in catalog.custom_types.items():
        if kind != "domain" and name not in catalog.enums:
            out.append(make("custom_type", name, f"{kind} type {name}", level="catalog"))

    for seq in catalog.sequences:
        if seq.owned_by or seq.identity or _used_by_default(catalog, seq.qualified):
            continue  # reported with its column (serial / identity)
        problems = []
        if seq.data_type != "bigint":
            problems.append(f"type {seq.data_type}")
        if seq.cache != 1 and seq.cache < 65536:
            problems.append(f"CACHE {seq.cache}")
        used = f"last value {seq.last_value:,}" if seq.last_value is not None else "never used yet"
        msg = f"sequence {seq.qualified} ({used})"
        if problems:
            msg += ": " + ", ".join(problems) + " not allowed on DSQL"
        out.append(make("sequence", seq.qualified, msg, last_value=seq.last_value))

    callers: dict[str, list[str]] = {}
    for table in catalog.tables:
        for t in table.triggers:
            callers.setdefault(t.function, []).append(f"{table.qualified}.{t.name}")
    for fn in catalog.functions:
        if fn.qualified in callers and fn.language not in ("sql", "internal"):
            # Its own finding (the plan lists it as left out), besides the finding of each trigger calling it.
            # When every trigger calling it has the same replacement invariant, so does the function: what
            # retires the trigger on evidence retires its body too.
            replaced = {json.dumps(f.details.get("invariant"), sort_keys=True) for f in out
                        if f.code == "trigger_balance" and f.object in callers[fn.qualified]}
            calling = [f for f in out if f.object in callers[fn.qualified] and f.code in ("trigger", "trigger_balance")]
            shared = (json.loads(next(iter(replaced))) if len(replaced) == 1 and calling
                      and all(f.code == "trigger_balance" for f in calling) else None)
            extra = {"invariant": shared} if shared else {}
            out.append(make("procedural_function", fn.signature,
                            f"trigger function {fn.signature} in LANGUAGE {fn.language}, called by trigger(s) "
                            f"{', '.join(callers[fn.qualified])}", language=fn.language,
                            triggers=callers[fn.qualified],
                            fix="Move what it does into the application, with the trigger that calls it (a "
                                "finding of its own); the plan leaves both out."
                                + (f" The invariant '{shared.get('name')}' it kept true is checked on the target "
                                   "instead (its replacement)." if shared else ""), **extra))
            continue
        if fn.kind == "p":
            out.append(make("procedure", fn.signature, f"procedure {fn.signature} (LANGUAGE {fn.language})",
                            language=fn.language))
        elif fn.language in ("sql", "internal"):
            out.append(make("sql_function", fn.signature, f"function {fn.signature} (LANGUAGE sql)"))
        elif fn.kind in ("f", "w", "a"):
            out.append(make("procedural_function", fn.signature,
                            f"function {fn.signature} in LANGUAGE {fn.language}", language=fn.language))

    for rel in catalog.relations:
        if rel.kind == "m":
            out.append(make("materialized_view", rel.qualified, f"materialized view {rel.qualified}"))
        else:
            out.append(make("view", rel.qualified, f"view {rel.qualified}"))
    return out, invariants


def _used_by_default(catalog: Catalog, seq: str) -> bool:
    return any(seq in c.default_sequences for t in catalog.tables for c in t.columns)


def _column_finding(code: str, obj: str, col, target_type: str, catalog: Catalog,
                    profile: NumericProfile | None) -> Finding:
    if code == "serial":
        seq = catalog.sequence(col.default_sequences[0])
        kind = {"int4": "SERIAL", "int8": "BIGSERIAL", "int2": "SMALLSERIAL"}.get(col.type_name, col.type_sql)
        owned = seq is not None and seq.owned_by == obj
        serial_name = seq is not None and seq.qualified == f"{obj.rsplit('.', 1)[0]}_{col.name}_seq"
        if owned and serial_name:
            what = kind
        elif owned:
            what = f"{col.type_sql} DEFAULT nextval('{col.default_sequences[0]}'), sequence owned by the column"
        else:
            what = f"{col.type_sql} DEFAULT nextval('{col.default_sequences[0]}')"
        last = seq.last_value if seq else None
        used = f"last value {last:,}" if last is not None else "never used yet"
        return make(code, obj, f"{obj} is {what} (sequence {col.default_sequences[0]}, {used})",
                    sequence=col.default_sequences[0], last_value=last, target_type=target_type)
    if code == "identity":
        mode = "ALWAYS" if col.identity == "a" else "BY DEFAULT"
        return make(code, obj, f"{obj} is {col.type_sql} GENERATED {mode} AS IDENTITY",
                    sequence=col.identity_sequence, target_type=target_type)
    if code == "plain_numeric":
        p, s = planned_numeric(profile)
        msg = f"{obj} is a plain numeric (DSQL would make it numeric(18,6))"
        if profile is not None and profile.rows:
            msg += (f"; observed up to {profile.max_integer_digits} integer digits and scale "
                    f"{profile.max_scale}{' (sample)' if profile.sampled else ''}")
        fix = (f"The plan declares numeric({p},{s}), large enough for every value seen"
               if profile is not None else
               "The plan declares an explicit numeric(P,S) sized from the data when it is generated "
               f"(at least numeric({p},{s}))")
        return make(code, obj, msg, fix=fix + ".", planned_type=f"numeric({p},{s})",
                    profile=profile.__dict__ if profile else None)
    if code == "column_collation":
        return make(code, obj, f'{obj} has COLLATE "{col.collation}"', collation=col.collation)
    if code == "array_column":
        return make(code, obj, f"{obj} is an array ({col.type_sql})", target_type=target_type)
    if code == "jsonb_column":
        return make(code, obj, f"{obj} is jsonb", target_type=target_type)
    if code == "money_column":
        return make(code, obj, f"{obj} is money", target_type=target_type)
    if code == "custom_type":
        extra = f" from extension {col.type_extension}" if col.type_extension else ""
        why = None
        if col.type_name == "citext":
            why = ("Aurora DSQL has no citext: as text, comparisons and UNIQUE become case-sensitive.")
        return make(code, obj, f"{obj} is {col.type_sql}{extra}", why=why, target_type=target_type)
    if code == "generated_column":
        return make(code, obj, f"{obj} is GENERATED ALWAYS AS ({col.default}) STORED")
    if code == "default_function":
        return make(code, obj, f"{obj} defaults to {col.default}", functions=list(col.default_functions))
    raise ValueError(f"no column finding for code {code!r}")


def _table_findings(table: Table, catalog: Catalog, key: tuple[str, ...] | None) -> list[Finding]:
    out: list[Finding] = []
    q = table.qualified
    if table.persistence == "u":
        out.append(make("unlogged_table", q, f"{q} is UNLOGGED"))
    elif table.persistence == "t":
        out.append(make("temp_table", q, f"{q} is TEMPORARY"))
    if table.kind == "p":
        out.append(make("partitioned_table", q, f"{q} is partitioned ({table.partition_key})",
                        partition_key=table.partition_key,
                        partitions=[t.qualified for t in catalog.tables if t.partition_of == q],
                        indexes=[f"{t.schema}.{i.name}" for t in catalog.tables
                                 if t.qualified == q or t.partition_of == q for i in t.indexes]))
    if table.partition_of:
        out.append(make("partition", q, f"{q} is a partition of {table.partition_of}", parent=table.partition_of))
        return out
    if table.inherits:
        out.append(make("inherited_table", q, f"{q} inherits from {', '.join(table.inherits)}"))

    # quotas
    if len(table.columns) > QUOTAS["columns"]:
        out.append(make("quota_columns", q, f"{q} has {len(table.columns)} columns (DSQL: at most 255)"))
    own_indexes = [i for i in table.indexes if not i.exclusion]
    if len(own_indexes) > QUOTAS["indexes"]:
        out.append(make("quota_indexes", q, f"{q} has {len(own_indexes)} indexes (DSQL: at most 24)"))
    for idx in table.indexes:
        iq = f"{table.schema}.{idx.name}"
        if idx.exclusion:
            continue
        if idx.key_count > QUOTAS["key_columns"]:
            out.append(make("quota_key_columns", iq, f"index {iq} on {q} has {idx.key_count} key columns "
                                                    "(DSQL: at most 8)", table=q))
        widths = [_declared_key_bytes(table, c) for c in idx.key_columns]
        if all(w is not None for w in widths) and sum(widths) > QUOTAS["key_bytes"]:  # type: ignore[arg-type]
            most = sum(widths)  # type: ignore[arg-type]
            out.append(make("quota_key_size", iq, f"index {iq} on {q} can hold keys of up to {most} bytes "
                                                  "(DSQL: 1 KiB)", table=q))
        if idx.method not in ("btree",):
            what = "becomes a btree index" if idx.method == "hash" else "is left out of the plan"
            out.append(make("index_method", iq, f"index {iq} on {q} uses {idx.method}: {what}",
                            table=q, method=idx.method))
        elif any(o & 3 for o in idx.options):
            out.append(make("index_order", iq, f"index {iq} on {q} has DESC or NULLS FIRST keys", table=q))
        if idx.backs_constraint is None and not idx.primary and idx.method in ("btree", "hash") \
                and idx.key_count <= QUOTAS["key_columns"]:
            out.append(make("index_async", iq, f"index {iq} on {q} is built synchronously on the source",
                            table=q, definition=idx.definition))

    # keys
    if table.primary_key is None:
        usable = bool(key) and all(any(c.name == k for c in table.columns) for k in key or ())
        if usable:
            fix = (f"The plan declares the configured key ({', '.join(key or ())}) as the target's primary key "
                   f"(pre-load, inline in CREATE TABLE); {rule_sentence(q, key or ())}. The audit checks that on "
                   "the data (key_not_unique when it fails); replay init needs --replica-identity-full for it.")
            out.append(make("no_primary_key", q, f"{q} has no primary key", fix=fix, key=list(key or ())))
        else:
            out.append(make("no_primary_key", q, f"{q} has no primary key and no configured key"))

    for con in table.constraints:
        cq = f"{q}.{con.name}"
        if con.inherited:
            continue
        if con.kind == "x":
            out.append(make("exclusion_constraint", cq, f"{q} has exclusion constraint {con.name}: {con.definition}",
                            table=q, definition=con.definition))
        elif con.kind == "f":
            inside = catalog.has_table(con.ref_table or "")
            if inside:
                out.append(make("foreign_key", cq,
                                f"{q}({', '.join(con.columns)}) references {con.ref_table}"
                                f"({', '.join(con.ref_columns)})", table=q, references=con.ref_table,
                                definition=con.definition))
            else:
                out.append(make("foreign_key_outside", cq, f"{q} references {con.ref_table}, outside the "
                                                           "audited schemas", table=q,
                                references=con.ref_table))
        elif con.kind == "c" and not con.validated:
            out.append(make("check_not_valid", cq, f"{q} has NOT VALID check {con.name}: {con.definition}"))

    for rule in table.rules:
        rq = f"{q}.{rule.name}"
        out.append(make("rule", rq, f"rule {rule.name} on {q}: {rule.definition.strip()}", table=q))

    # collation of text keys: the ordering evidence is added by the data scan when possible
    return out


def trigger_findings(table: Table, catalog: Catalog) -> tuple[list[Finding], list[Invariant]]:
    """A finding per trigger, saying what it does; the balance invariant where recognised."""
    out: list[Finding] = []
    invariants: list[Invariant] = []
    for trig in table.triggers:
        tq = f"{table.qualified}.{trig.name}"
        actions, invariant = describe_trigger_body(trig.body, table=table.qualified, events=trig.events,
                                                   trigger=tq)
        level = "row" if trig.row_level else "statement"
        when = f"{trig.timing} {' OR '.join(trig.events)} {level} trigger calling {trig.function}() ({trig.language})"
        does = "; ".join(a["text"] for a in actions) or "does something not recognised: read its body"
        details = {"table": table.qualified, "function": trig.function, "language": trig.language,
                   "timing": trig.timing, "events": list(trig.events), "row_level": trig.row_level,
                   "actions": actions, "enabled": trig.enabled}
        if invariant is not None:
            invariants.append(invariant)
            fix = (f"Post the {invariant.spec['balance_column']} update in the application, in the same "
                   f"transaction as each insert into {table.qualified}; until cutover the balance check "
                   f"'{invariant.kind}' ({invariant.spec['accounts']}.{invariant.spec['balance_column']} = "
                   f"sum({table.qualified}.{invariant.spec['amount_column']})) replaces it. "
                   "The plan leaves the trigger out.")
            out.append(make("trigger_balance", tq, f"{when}: {does}", fix=fix, invariant=invariant.to_dict(),
                            **details))
        else:
            out.append(make("trigger", tq, f"{when}: {does}", **details))
    return out, invariants


def text_key_columns(table: Table) -> list[tuple[str, str]]:
    """(column, constraint/index name) of text-like leading key columns whose order depends on collation."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for idx in table.indexes:
        if idx.exclusion or not idx.key_columns:
            continue
        for col_name in idx.key_columns:
            if col_name is None or col_name in seen:
                continue
            col = table.column(col_name)
            if col.collatable and col.category == "S":
                seen.add(col_name)
                out.append((col_name, idx.name))
    return out


def effective_collation(table: Table, column: str, catalog: Catalog) -> str:
    col = table.column(column)
    return col.collation or catalog.collation


def needs_order_check(table: Table, column: str, catalog: Catalog) -> bool:
    return not is_c_collation(effective_collation(table, column, catalog))
