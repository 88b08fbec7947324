"""The source's catalog, read once into plain immutable values.

Both the audit (what will not survive DSQL) and the schema plan (the target DDL) work from a
:class:`Catalog`, never from the live connection, so their logic is testable and the two always
see the same schema. Everything is read in one REPEATABLE READ, READ ONLY transaction with an
empty ``search_path``, so every name the server prints (defaults, constraints, index
expressions) comes out schema-qualified and the snapshot is consistent.

Works on PostgreSQL 13 and later (Aurora PostgreSQL).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import psycopg

from reconcile.db.names import qualify
from reconcile.errors import NotFound

__all__ = [
    "C_COLLATIONS",
    "MONITORING_EXTENSIONS",
    "Catalog",
    "Column",
    "Constraint",
    "Extension",
    "Function",
    "Index",
    "Relation",
    "Rule",
    "Sequence_",
    "Table",
    "Trigger",
    "read_catalog",
]

C_COLLATIONS = frozenset({"c", "posix", "c.utf8", "c.utf-8", "ucs_basic", "pg_c_utf8"})
"""Collation names that order text by byte/code point, as DSQL's C collation does (lower-case)."""

MONITORING_EXTENSIONS = frozenset({"pg_stat_statements", "pg_buffercache", "pg_prewarm", "pgstattuple",
                                   "pg_freespacemap", "pg_visibility", "pageinspect", "amcheck",
                                   "pg_walinspect", "pg_logicalinspect", "pgrowlocks"})
"""Extensions that only observe the server: nothing to migrate (and the audit may create one)."""


def is_c_collation(name: str | None) -> bool:
    return name is None or name.lower() in C_COLLATIONS


@dataclass(frozen=True)
class Column:
    name: str
    type_sql: str
    """``format_type`` of the column: ``numeric``, ``character varying(20)``, ``legacy.status``..."""
    type_name: str
    """pg_type.typname (``numeric``, ``int8``, ``_text`` for text[], ``status``)."""
    type_schema: str
    type_kind: str
    """pg_type.typtype: b base, e enum, d domain, c composite, r range, m multirange, p pseudo."""
    category: str
    """pg_type.typcategory: A array, N numeric, S string, U user..."""
    typmod: int
    not_null: bool
    default: str | None
    identity: str = ""
    """'a' GENERATED ALWAYS, 'd' BY DEFAULT, '' none."""
    generated: str = ""
    """'s' stored generated column, '' none."""
    collation: str | None = None
    """Explicit collation name when not the database default; None for the default or no collation."""
    collatable: bool = False
    element_type: str | None = None
    """typname of an array's element type."""
    base_type_sql: str | None = None
    """A domain's base type (format_type)."""
    base_type_name: str | None = None
    base_category: str | None = None
    domain_checks: tuple[str, ...] = ()
    enum_labels: tuple[str, ...] = ()
    type_extension: str | None = None
    """The extension owning the column's type (citext, hstore...), if any."""
    default_sequences: tuple[str, ...] = ()
    """Sequences the default reads (``schema.seq``): SERIAL or DEFAULT nextval(...)."""
    default_functions: tuple[str, ...] = ()
    """User-defined functions (outside pg_catalog) the default calls (``schema.fn``)."""
    identity_sequence: str | None = None

    @property
    def is_plain_numeric(self) -> bool:
        """``numeric`` declared without precision (or a domain over it)."""
        if self.type_name == "numeric" and self.typmod == -1:
            return True
        return self.type_kind == "d" and self.base_type_sql == "numeric"

    @property
    def numeric_precision_scale(self) -> tuple[int, int] | None:
        if self.type_name != "numeric" or self.typmod < 4:
            return None
        mod = self.typmod - 4
        return (mod >> 16) & 0xFFFF, mod & 0xFFFF


@dataclass(frozen=True)
class Constraint:
    name: str
    kind: str
    """pg_constraint.contype: p primary key, u unique, f foreign key, c check, x exclusion, n not null."""
    definition: str
    columns: tuple[str, ...]
    ref_table: str | None = None
    ref_columns: tuple[str, ...] = ()
    validated: bool = True
    inherited: bool = False
    """Inherited from a partitioned parent or a parent table."""


@dataclass(frozen=True)
class Index:
    name: str
    method: str
    unique: bool
    primary: bool
    exclusion: bool
    backs_constraint: str | None
    """contype of the constraint this index implements (p, u, x), or None."""
    key_count: int
    keys: tuple[str, ...]
    """Each key column's name or expression (pg_get_indexdef per column)."""
    key_is_expression: tuple[bool, ...]
    key_columns: tuple[str | None, ...]
    """The column of each key (None for an expression)."""
    include: tuple[str, ...]
    options: tuple[int, ...]
    """pg_index.indoption per key: bit 1 DESC, bit 2 NULLS FIRST."""
    predicate: str | None
    definition: str
    inherited: bool = False


@dataclass(frozen=True)
class Trigger:
    name: str
    function: str
    """``schema.function``."""
    language: str
    body: str
    definition: str
    timing: str
    """BEFORE, AFTER or INSTEAD OF."""
    events: tuple[str, ...]
    row_level: bool
    enabled: bool
    internal: bool = False


@dataclass(frozen=True)
class Rule:
    name: str
    definition: str


@dataclass(frozen=True)
class Relation:
    """A view or materialized view."""

    schema: str
    name: str
    kind: str
    """'v' view, 'm' materialized view."""
    definition: str

    @property
    def qualified(self) -> str:
        return qualify(self.schema, self.name)


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    kind: str
    """'r' ordinary, 'p' partitioned."""
    persistence: str
    """'p' permanent, 'u' unlogged, 't' temporary."""
    columns: tuple[Column, ...]
    constraints: tuple[Constraint, ...] = ()
    indexes: tuple[Index, ...] = ()
    triggers: tuple[Trigger, ...] = ()
    rules: tuple[Rule, ...] = ()
    partition_of: str | None = None
    """Parent (``schema.table``) when this table is a partition."""
    partition_key: str | None = None
    inherits: tuple[str, ...] = ()
    """Parents by plain inheritance (not partitioning)."""
    estimated_rows: int = 0
    bytes: int = 0

    @property
    def qualified(self) -> str:
        return qualify(self.schema, self.name)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise NotFound(f"{self.qualified} has no column {name!r}; its columns are "
                       f"{', '.join(c.name for c in self.columns)}")

    @property
    def primary_key(self) -> Constraint | None:
        return next((c for c in self.constraints if c.kind == "p"), None)


@dataclass(frozen=True)
class Sequence_:
    schema: str
    name: str
    data_type: str
    start: int
    increment: int
    min_value: int
    max_value: int
    cache: int
    cycle: bool
    last_value: int | None
    owned_by: str | None = None
    """``schema.table.column`` for a SERIAL's (or OWNED BY) sequence."""
    identity: bool = False

    @property
    def qualified(self) -> str:
        return qualify(self.schema, self.name)


@dataclass(frozen=True)
class Function:
    schema: str
    name: str
    arguments: str
    kind: str
    """pg_proc.prokind: f function, p procedure, a aggregate, w window."""
    language: str
    returns: str | None
    body: str

    @property
    def qualified(self) -> str:
        return qualify(self.schema, self.name)

    @property
    def signature(self) -> str:
        return f"{self.schema}.{self.name}({self.arguments})"


@dataclass(frozen=True)
class Extension:
    name: str
    version: str
    schema: str


@dataclass(frozen=True)
class Catalog:
    """The source schema as plain values (see the module docstring)."""

    schemas: tuple[str, ...]
    database: str
    collation: str
    """The database's default collation (datcollate, or the ICU/builtin locale)."""
    server_version: int
    system_identifier: str
    tables: tuple[Table, ...] = ()
    sequences: tuple[Sequence_, ...] = ()
    functions: tuple[Function, ...] = ()
    relations: tuple[Relation, ...] = ()
    extensions: tuple[Extension, ...] = ()
    enums: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    """Enum types in the audited schemas, ``schema.type`` -> labels."""
    custom_types: dict[str, str] = field(default_factory=dict, compare=False)
    """Other user types in the audited schemas (composite, range, domain), ``schema.type`` -> kind."""

    @property
    def c_collated(self) -> bool:
        return is_c_collation(self.collation)

    def table(self, qualified: str) -> Table:
        for t in self.tables:
            if t.qualified == qualified:
                return t
        raise NotFound(f"no table {qualified} in the audited schemas ({', '.join(self.schemas)}); check the name "
                       "(schema.table) or audit its schema too")

    def has_table(self, qualified: str) -> bool:
        return any(t.qualified == qualified for t in self.tables)

    def sequence(self, qualified: str) -> Sequence_ | None:
        return next((s for s in self.sequences if s.qualified == qualified), None)

    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the server identity and the schema (not the data, not sequence values).

        The same schema on the same server gives the same fingerprint; any DDL change gives a new one.
        """
        material = {
            "system_identifier": self.system_identifier,
            "database": self.database,
            "collation": self.collation,
            "tables": [asdict(t) | {"estimated_rows": 0, "bytes": 0} for t in self.tables],
            "sequences": [asdict(s) | {"last_value": None} for s in self.sequences],
            "functions": [asdict(f) for f in self.functions],
            "relations": [asdict(r) for r in self.relations],
            "extensions": [asdict(e) for e in self.extensions if e.name not in MONITORING_EXTENSIONS],
        }
        digest = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
        return f"sha256:{digest}"


# ------------------------------------------------------------------------------------------
# Reading

_TABLES = """
SELECT c.oid, n.nspname, c.relname, c.relkind::text, c.relpersistence::text, c.relispartition,
       (SELECT {q(pn.nspname, pc.relname)} FROM pg_catalog.pg_inherits i
          JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent
          JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
         WHERE i.inhrelid = c.oid AND c.relispartition) AS parent,
       ARRAY(SELECT {q(pn.nspname, pc.relname)} FROM pg_catalog.pg_inherits i
               JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent
               JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
              WHERE i.inhrelid = c.oid AND NOT c.relispartition ORDER BY i.inhseqno) AS inherits,
       CASE WHEN c.relkind = 'p' THEN pg_catalog.pg_get_partkeydef(c.oid) END,
       greatest(c.reltuples, 0)::bigint, pg_catalog.pg_total_relation_size(c.oid)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p')
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""

_COLUMNS = """
SELECT a.attrelid, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), t.typname, tn.nspname,
       t.typtype::text, t.typcategory::text, a.atttypmod, a.attnotnull,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, a.attgenerated::text,
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN co.collname
            WHEN a.attcollation <> 0 AND a.attcollation <> 100 THEN co.collname END,
       a.attcollation <> 0,
       et.typname,
       CASE WHEN t.typtype = 'd' THEN pg_catalog.format_type(t.typbasetype, t.typtypmod) END,
       bt.typname, bt.typcategory::text,
       ARRAY(SELECT pg_catalog.pg_get_constraintdef(dc.oid, true) FROM pg_catalog.pg_constraint dc
              WHERE dc.contypid = t.oid AND dc.contype = 'c' ORDER BY dc.conname),
       ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e
              WHERE e.enumtypid = coalesce(nullif(t.typbasetype, 0), t.oid) ORDER BY e.enumsortorder),
       (SELECT x.extname FROM pg_catalog.pg_depend dep JOIN pg_catalog.pg_extension x ON x.oid = dep.refobjid
         WHERE dep.classid = 'pg_catalog.pg_type'::regclass AND dep.deptype = 'e'
           AND dep.objid IN (t.oid, t.typelem, t.typbasetype) LIMIT 1),
       ARRAY(SELECT {q(sn.nspname, s.relname)} FROM pg_catalog.pg_depend dep
               JOIN pg_catalog.pg_class s ON s.oid = dep.refobjid AND s.relkind = 'S'
               JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
              WHERE dep.classid = 'pg_catalog.pg_attrdef'::regclass AND dep.objid = d.oid
                AND dep.refclassid = 'pg_catalog.pg_class'::regclass ORDER BY 1),
       ARRAY(SELECT pn.nspname || '.' || p.proname FROM pg_catalog.pg_depend dep
               JOIN pg_catalog.pg_proc p ON p.oid = dep.refobjid
               JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
              WHERE dep.classid = 'pg_catalog.pg_attrdef'::regclass AND dep.objid = d.oid
                AND dep.refclassid = 'pg_catalog.pg_proc'::regclass
                AND pn.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1),
       CASE WHEN a.attidentity <> '' THEN pg_catalog.pg_get_serial_sequence(
            pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), a.attname) END
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
LEFT JOIN pg_catalog.pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
LEFT JOIN pg_catalog.pg_type bt ON bt.oid = t.typbasetype AND t.typtype = 'd'
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
WHERE a.attrelid = ANY(%(oids)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

_CONSTRAINTS = """
SELECT con.conrelid, con.conname, con.contype::text, pg_catalog.pg_get_constraintdef(con.oid, true),
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
              ORDER BY k.ord),
       CASE WHEN con.confrelid <> 0 THEN
            (SELECT {q(rn.nspname, rc.relname)} FROM pg_catalog.pg_class rc
               JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace WHERE rc.oid = con.confrelid) END,
       ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(attnum, ord)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
              ORDER BY k.ord),
       con.convalidated, (con.conparentid <> 0 OR NOT con.conislocal)
FROM pg_catalog.pg_constraint con
WHERE con.conrelid = ANY(%(oids)s) AND con.contype IN ('p', 'u', 'f', 'c', 'x')
ORDER BY con.conrelid, con.contype, con.conname
"""



def _qualify_sql(nsp: str, rel: str) -> str:
    """SQL computing :func:`reconcile.db.names.qualify` of two name columns (a part quoted only when it must be)."""
    def part(x: str) -> str:
        return (f"(CASE WHEN {x} ~ '^[^.\"[:space:]]+$' THEN {x}::text "
                f"ELSE '\"' || replace({x}::text, '\"', '\"\"') || '\"' END)")
    return f"{part(nsp)} || '.' || {part(rel)}"


_QUALIFY = re.compile(r"\{q\((\w+\.\w+), (\w+\.\w+)\)\}")
_TABLES, _COLUMNS, _CONSTRAINTS = (_QUALIFY.sub(lambda m: _qualify_sql(m[1], m[2]), q)
                                   for q in (_TABLES, _COLUMNS, _CONSTRAINTS))

_INDEXES = """
SELECT i.indrelid, ic.relname, am.amname, i.indisunique, i.indisprimary, i.indisexclusion,
       (SELECT con.contype::text FROM pg_catalog.pg_constraint con
         WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x')
         LIMIT 1),
       i.indnkeyatts,
       ARRAY(SELECT pg_catalog.pg_get_indexdef(i.indexrelid, k, true) FROM generate_series(1, i.indnatts) k),
       ARRAY(SELECT i.indkey[k - 1] = 0 FROM generate_series(1, i.indnatts) k),
       ARRAY(SELECT a.attname::text FROM generate_series(1, i.indnatts) k
               LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[k - 1]
              ORDER BY k),
       ARRAY(SELECT i.indoption[k - 1]::int FROM generate_series(1, i.indnkeyatts) k),
       pg_catalog.pg_get_expr(i.indpred, i.indrelid), pg_catalog.pg_get_indexdef(i.indexrelid),
       EXISTS (SELECT 1 FROM pg_catalog.pg_inherits inh WHERE inh.inhrelid = i.indexrelid)
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
JOIN pg_catalog.pg_am am ON am.oid = ic.relam
WHERE i.indrelid = ANY(%(oids)s)
ORDER BY i.indrelid, ic.relname
"""

_TRIGGERS = """
SELECT t.tgrelid, t.tgname, pn.nspname || '.' || p.proname, l.lanname, p.prosrc,
       pg_catalog.pg_get_triggerdef(t.oid, true), t.tgtype::int, t.tgenabled::text, t.tgisinternal
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE t.tgrelid = ANY(%(oids)s) AND NOT t.tgisinternal AND t.tgparentid = 0
ORDER BY t.tgrelid, t.tgname
"""

_TRIGGERS_PG12 = _TRIGGERS.replace(" AND t.tgparentid = 0", "")

_RULES = """
SELECT r.ev_class, r.rulename, pg_catalog.pg_get_ruledef(r.oid, true)
FROM pg_catalog.pg_rewrite r
WHERE r.ev_class = ANY(%(oids)s) AND r.rulename <> '_RETURN'
ORDER BY r.ev_class, r.rulename
"""

_RELATIONS = """
SELECT n.nspname, c.relname, c.relkind::text, pg_catalog.pg_get_viewdef(c.oid, true)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('v', 'm')
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""

_SEQUENCES = """
SELECT n.nspname, c.relname, pg_catalog.format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
       s.seqmin, s.seqmax, s.seqcache, s.seqcycle, ps.last_value,
       (SELECT {q(tn.nspname, tc.relname)} || '.' || a.attname
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_class tc ON tc.oid = d.refobjid
          JOIN pg_catalog.pg_namespace tn ON tn.oid = tc.relnamespace
          JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
           AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i') LIMIT 1),
       EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass
               AND d.objid = c.oid AND d.deptype = 'i')
FROM pg_catalog.pg_sequence s
JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_sequences ps ON ps.schemaname = n.nspname AND ps.sequencename = c.relname
WHERE n.nspname = ANY(%(schemas)s)
ORDER BY n.nspname, c.relname
"""

_SEQUENCES = _QUALIFY.sub(lambda m: _qualify_sql(m[1], m[2]), _SEQUENCES)

_FUNCTIONS = """
SELECT n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid), p.prokind::text,
       l.lanname, CASE WHEN p.prokind <> 'p' THEN pg_catalog.pg_get_function_result(p.oid) END,
       coalesce(p.prosrc, '')
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE n.nspname = ANY(%(schemas)s)
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass
                  AND d.objid = p.oid AND d.deptype = 'e')
ORDER BY n.nspname, p.proname, 3
"""

_TYPES = """
SELECT n.nspname || '.' || t.typname, t.typtype::text,
       ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)
FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = ANY(%(schemas)s) AND t.typtype IN ('e', 'c', 'd', 'r', 'm')
  AND (t.typtype <> 'c' OR EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c'))
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_type'::regclass
                  AND d.objid = t.oid AND d.deptype = 'e')
ORDER BY 1
"""

_EXTENSIONS = """
SELECT x.extname, x.extversion, n.nspname FROM pg_catalog.pg_extension x
JOIN pg_catalog.pg_namespace n ON n.oid = x.extnamespace
WHERE x.extname <> 'plpgsql' ORDER BY x.extname
"""

_DATABASE = """
SELECT current_database(), d.datcollate, {locale},
       CASE WHEN has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')
            THEN (SELECT system_identifier::text FROM pg_catalog.pg_control_system())
            ELSE coalesce(host(inet_server_addr()), 'local') || ':' || coalesce(inet_server_port(), 0) END
FROM pg_catalog.pg_database d WHERE d.datname = current_database()
"""


def _database_sql(version: int) -> str:
    # The locale an ICU or builtin provider uses is in another column (its name moved in 17).
    if version >= 170000:
        locale = "CASE WHEN d.datlocprovider <> 'c' THEN d.datlocale END"
    elif version >= 150000:
        locale = "CASE WHEN d.datlocprovider <> 'c' THEN d.daticulocale END"
    else:
        locale = "NULL::text"
    return _DATABASE.format(locale=locale)


_EVENTS = ((4, "INSERT"), (8, "DELETE"), (16, "UPDATE"), (32, "TRUNCATE"))


def _timing(tgtype: int) -> str:
    if tgtype & 64:
        return "INSTEAD OF"
    return "BEFORE" if tgtype & 2 else "AFTER"


def read_catalog(conn: psycopg.Connection, schemas: Iterable[str]) -> Catalog:
    """Read the schemas' tables, columns, keys, indexes, triggers, rules, sequences, functions,
    views, types and the database's extensions into a :class:`Catalog`.

    Args:
        conn: an autocommit connection to the source (idle: the read opens its own transaction).
        schemas: the schemas to read (the configured tables' schemas).

    Returns:
        The catalog, read from one consistent snapshot.
    """
    schemas = tuple(dict.fromkeys(schemas))
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SELECT pg_catalog.set_config('search_path', '', true)")
        return _read(conn, schemas)


def _read(conn: psycopg.Connection, schemas: tuple[str, ...]) -> Catalog:
    version = int(conn.execute("SELECT current_setting('server_version_num')").fetchone()[0])
    database, datcollate, locale, sysid = conn.execute(_database_sql(version)).fetchone()
    collation = locale or datcollate
    params = {"schemas": list(schemas)}

    table_rows = conn.execute(_TABLES, params).fetchall()
    oids = [r[0] for r in table_rows]
    p_oids = {"oids": oids}

    columns: dict[int, list[Column]] = {o: [] for o in oids}
    for (relid, name, type_sql, typname, typschema, typtype, category, typmod, notnull, default, identity,
         generated, collation_name, collatable, elem, base_sql, base_name, base_cat, dom_checks, labels,
         ext, seqs, funcs, ident_seq) in conn.execute(_COLUMNS, p_oids):
        columns[relid].append(Column(
            name=name, type_sql=type_sql, type_name=typname, type_schema=typschema, type_kind=typtype,
            category=category, typmod=typmod, not_null=notnull, default=default, identity=identity or "",
            generated=generated or "", collation=collation_name, collatable=collatable, element_type=elem,
            base_type_sql=base_sql, base_type_name=base_name, base_category=base_cat,
            domain_checks=tuple(dom_checks or ()), enum_labels=tuple(labels or ()), type_extension=ext,
            default_sequences=tuple(seqs or ()), default_functions=tuple(funcs or ()),
            identity_sequence=ident_seq,
        ))

    constraints: dict[int, list[Constraint]] = {o: [] for o in oids}
    for relid, name, kind, definition, cols, ref, refcols, validated, inherited in conn.execute(_CONSTRAINTS, p_oids):
        constraints[relid].append(Constraint(name, kind, definition, tuple(cols), ref, tuple(refcols or ()),
                                             validated, inherited))

    indexes: dict[int, list[Index]] = {o: [] for o in oids}
    for (relid, name, method, unique, primary, exclusion, backs, nkey, keys, is_expr, key_cols, options,
         predicate, definition, inherited) in conn.execute(_INDEXES, p_oids):
        indexes[relid].append(Index(
            name=name, method=method, unique=unique, primary=primary, exclusion=exclusion,
            backs_constraint=backs, key_count=nkey, keys=tuple(keys[:nkey]),
            key_is_expression=tuple(is_expr[:nkey]), key_columns=tuple(key_cols[:nkey]),
            include=tuple(k for k in keys[nkey:]), options=tuple(options or ()), predicate=predicate,
            definition=definition, inherited=inherited))

    triggers: dict[int, list[Trigger]] = {o: [] for o in oids}
    trig_sql = _TRIGGERS if version >= 130000 else _TRIGGERS_PG12
    trigger_rows = conn.execute(trig_sql, p_oids).fetchall()
    for relid, name, function, language, body, definition, tgtype, enabled, internal in trigger_rows:
        triggers[relid].append(Trigger(
            name=name, function=function, language=language, body=body, definition=definition,
            timing=_timing(tgtype), events=tuple(e for bit, e in _EVENTS if tgtype & bit),
            row_level=bool(tgtype & 1), enabled=enabled != "D", internal=internal))

    rules: dict[int, list[Rule]] = {o: [] for o in oids}
    for relid, name, definition in conn.execute(_RULES, p_oids):
        rules[relid].append(Rule(name, definition))

    tables = tuple(
        Table(schema=schema, name=name, kind=kind, persistence=persistence,
              columns=tuple(columns[oid]), constraints=tuple(constraints[oid]), indexes=tuple(indexes[oid]),
              triggers=tuple(triggers[oid]), rules=tuple(rules[oid]), partition_of=parent,
              partition_key=partkey, inherits=tuple(inherits or ()), estimated_rows=int(est), bytes=int(size))
        for oid, schema, name, kind, persistence, _is_part, parent, inherits, partkey, est, size in table_rows
    )

    sequences = tuple(
        Sequence_(schema, name, dtype, start, inc, mn, mx, cache, cycle,
                  int(last) if last is not None else None, owned, identity)
        for schema, name, dtype, start, inc, mn, mx, cache, cycle, last, owned, identity
        in conn.execute(_SEQUENCES, params)
    )
    functions = tuple(Function(*row) for row in conn.execute(_FUNCTIONS, params))
    relations = tuple(Relation(*row) for row in conn.execute(_RELATIONS, params))
    extensions = tuple(Extension(*row) for row in conn.execute(_EXTENSIONS))
    enums: dict[str, tuple[str, ...]] = {}
    custom: dict[str, str] = {}
    for name, kind, labels in conn.execute(_TYPES, params):
        if kind == "e":
            enums[name] = tuple(labels)
        else:
            custom[name] = {"c": "composite", "d": "domain", "r": "range", "m": "multirange"}[kind]
    return Catalog(schemas=schemas, database=database, collation=collation or "C", server_version=version,
                   system_identifier=str(sysid), tables=tables, sequences=sequences, functions=functions,
                   relations=relations, extensions=extensions, enums=enums, custom_types=custom)


def qualified_schemas(names: Sequence[str]) -> tuple[str, ...]:
    """The schemas of ``schema.table`` names (:mod:`reconcile.db.names`), in first-seen order."""
    from reconcile.budget import split_table_name

    return tuple(dict.fromkeys(split_table_name(n)[0] for n in names))
