"""Key checks against the data: the configured key of a table without a primary key (reconcile.keyrule).

The catalog checks note a table without a primary key (``no_primary_key``); whether its configured key is
unique and not null on the source is a fact about the data, proven here by the catalog when it can (NOT
NULL columns under a unique index) and otherwise by the data check of :mod:`reconcile.keyrule` (one
aggregate per such table). A key that fails is a blocker, ``key_not_unique``, in the same words the schema
plan, replay init and the backfill use when they refuse it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import psycopg

from reconcile.audit.catalog import Catalog
from reconcile.audit.findings import Finding, make
from reconcile.keyrule import key_problem, read_key_facts, verify_key, violation_message

__all__ = ["key_findings"]


def key_findings(conn: psycopg.Connection, catalog: Catalog, keys: Mapping[str, Sequence[str]],
                 findings: Sequence[Finding]) -> tuple[list[Finding], list[Finding]]:
    """Check the configured key of every audited table that has no primary key.

    Args:
        conn: an autocommit connection to the source.
        catalog: the audited catalog.
        keys: configured key columns per ``schema.table``.
        findings: the catalog findings; each table's ``no_primary_key`` finding gets the outcome.

    Returns:
        (the findings with the outcome added to ``no_primary_key`` details, new ``key_not_unique`` findings).
    """
    out = list(findings)
    new: list[Finding] = []
    for table in catalog.tables:
        key = tuple(keys.get(table.qualified) or ())
        if table.primary_key is not None or table.partition_of or not key:
            continue
        if not all(any(c.name == k for c in table.columns) for k in key):
            continue  # reported by no_primary_key as "no configured key"
        facts = read_key_facts(conn, table.qualified, key)
        problem = key_problem(facts)
        if problem:
            new.append(make("key_not_unique", table.qualified, problem, level="data", key=list(key)))
            continue
        how, counts = verify_key(conn, facts)
        evidence = {"key": list(key), "proven_by": how}
        if counts is not None:
            evidence.update(rows=counts.rows, duplicate_values=counts.duplicate_values,
                            duplicate_rows=counts.duplicate_rows, null_rows=counts.null_rows)
        if counts is not None and not counts.ok:
            new.append(make("key_not_unique", table.qualified, violation_message(table.qualified, key, counts),
                            level="data", **evidence))
            continue
        for i, f in enumerate(out):
            if f.code == "no_primary_key" and f.object == table.qualified:
                out[i] = f.with_details(key_check=evidence)
    return out, new
