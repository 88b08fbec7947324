"""Writing DSQL changes on the old source, guarded per key by the version last applied (see
:mod:`reconcile.reverse.replayer` for why this makes the reverse replay exactly-once in effect).

:meth:`SourceWriter.write` runs inside the caller's source transaction: it locks the keys' version rows
(``reconcile_reverse.versions``), keeps of each key only changes newer than its version (the newest of
them wins), decodes DSQL's JSON values into the source columns' text forms (:mod:`reconcile.reverse.decode`),
writes deletes children-first and upserts parents-first with the replay's own statement builders
(``INSERT ... SELECT casts FROM unnest(text arrays) ON CONFLICT (key) DO UPDATE``), moves the versions
(a delete leaves a tombstone) and moves sequences past every key it wrote.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from reconcile.config import TableSpec
from reconcile.replay.apply import ApplyRefused, TargetTable, delete_statement, inspect_target, upsert_statement
from reconcile.reverse import decode, source_state
from reconcile.reverse.errors import ReverseNotReady
from reconcile.reverse.records import Change


@dataclass
class SourceWriter:
    """The replicated tables as the source has them: columns (for decoding), statements, sequences."""

    tables: list[TableSpec]
    columns: dict[str, dict[str, decode.Column]]
    targets: dict[str, TargetTable]
    sequences: dict[str, list[tuple[str, str]]]
    """table → (column, sequence) of columns a sequence feeds (serial, identity, owned ``DEFAULT nextval``)."""

    @property
    def specs(self) -> dict[str, TableSpec]:
        return {t.name: t for t in self.tables}

    @property
    def writer_order(self) -> list[str]:
        return [t.name for t in self.tables]

    @classmethod
    def inspect(cls, conn: psycopg.Connection, tables: Sequence[TableSpec]) -> SourceWriter:
        """Read the source catalog; refuse tables missing or holding types DSQL's CDC cannot bring back."""
        columns: dict[str, dict[str, decode.Column]] = {}
        problems: list[str] = []
        for spec in tables:
            cols = decode.source_columns(conn, spec.name)
            if not cols:
                problems.append(f"table {spec.name} does not exist on the source")
                continue
            problems += decode.unsupported(spec.name, cols)
            columns[spec.name] = cols
        if problems:
            raise ReverseNotReady("The reverse replay cannot bring these back exactly: " + "; ".join(problems) + ".")
        sequences: dict[str, list[tuple[str, str]]] = {}
        for spec in tables:
            rows = conn.execute("SELECT a.attname::text, pg_get_serial_sequence(%s, a.attname) FROM pg_attribute a "
                                "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
                                (spec.name, spec.name)).fetchall()
            sequences[spec.name] = [(c, seq) for c, seq in rows if seq]
        return cls(list(tables), columns, inspect_target(conn, tables), sequences)

    def write(self, conn: psycopg.Connection, changes: list[Change], applied_before: int) -> dict[str, int]:
        """Apply the changes that are newer than their key's version; move the versions."""
        specs = self.specs
        keyed: list[tuple[str, str, tuple[str, ...], Change]] = []
        for c in changes:
            cols = self.columns[c.qualified]
            spec = specs[c.qualified]
            image = c.before if c.is_delete else c.after
            key = decode.key_text(cols, spec.key, image or {})
            keyed.append((c.qualified, json.dumps(key, ensure_ascii=False), key, c))
        versions: dict[tuple[str, str], int] = {}
        by_table: dict[str, list[str]] = {}
        for table, pk, _k, _c in keyed:
            by_table.setdefault(table, []).append(pk)
        for table, pks in by_table.items():
            rows = conn.execute(sql.SQL("SELECT pk, ts_ns FROM {} WHERE table_name = %s AND pk = ANY(%s) FOR UPDATE")
                                .format(source_state.ident("versions")), (table, pks)).fetchall()
            versions.update({(table, pk): ts for pk, ts in rows})
        net: dict[tuple[str, str], tuple[tuple[str, ...], Change]] = {}
        stale = late = passed = 0
        for table, pk, key, c in sorted(keyed, key=lambda x: (x[3].ts_ns, x[3].tx_id)):
            if c.ts_ns <= versions.get((table, pk), -1):
                stale += 1
                continue
            passed += 1  # applied (a newer change of the same key in this group may fold it away)
            late += c.ts_ns < applied_before
            versions[(table, pk)] = c.ts_ns
            net[(table, pk)] = (key, c)
        deletes: dict[str, list[tuple[str, ...]]] = {}
        upserts: dict[tuple[str, tuple[str, ...]], list[list[str | None]]] = {}
        seq_max: dict[tuple[str, str], int] = {}
        for (table, _pk), (key, c) in net.items():
            if c.is_delete:
                deletes.setdefault(table, []).append(key)
                continue
            cols = self.columns[table]
            names = tuple(n for n in (c.after or {}) if n not in self.targets[table].generated)
            unknown = [n for n in names if n not in cols]
            if unknown:
                raise ApplyRefused(f"column(s) {', '.join(unknown)} of {table} do not exist on the source")
            values = [decode.to_text(cols[n], (c.after or {})[n]) for n in names]
            upserts.setdefault((table, names), []).append(values)
            for col, seq in self.sequences.get(table, ()):
                v = (c.after or {}).get(col)
                if isinstance(v, int) and not isinstance(v, bool):
                    seq_max[(table, seq)] = max(seq_max.get((table, seq), v), v)
        order = self.writer_order
        for table in reversed(order):
            keys = deletes.get(table)
            if keys:
                conn.execute(delete_statement(self.targets[table]), [list(col) for col in zip(*keys)])
        for table in order:
            for (t, names), rows in upserts.items():
                if t == table:
                    conn.execute(upsert_statement(self.targets[table], names), [list(col) for col in zip(*rows)])
        if net:
            vt = [(table, pk, c.ts_ns, c.is_delete) for (table, pk), (_key, c) in net.items()]
            conn.execute(sql.SQL("""
INSERT INTO {} AS v (table_name, pk, ts_ns, deleted)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::boolean[])
ON CONFLICT (table_name, pk) DO UPDATE SET ts_ns = EXCLUDED.ts_ns, deleted = EXCLUDED.deleted
WHERE v.ts_ns < EXCLUDED.ts_ns""").format(source_state.ident("versions")), [list(col) for col in zip(*vt)])
        source_state.record_chunks(conn, [(cid, c.ts_ns) for c in changes for cid in c.chunk_ids])
        for (_table, seq), v in seq_max.items():
            conn.execute("SELECT setval(%s::regclass, %s) WHERE %s > coalesce(pg_sequence_last_value(%s::regclass), 0)",
                         (seq, v, v, seq))
        return {"applied": passed, "stale": stale, "late": late, "rows": len(net)}
