-- DSQL guards for the local target stand-in.
--
-- Installed by reconcile.local.guards.install() into every database of the target server
-- (template1 included, so databases created later inherit them). They make a plain PostgreSQL
-- server refuse what Aurora DSQL refuses, with DSQL's SQLSTATE and message, whether the SQL comes
-- from reconcile or from psql:
--   * an event trigger refuses unsupported DDL (triggers, procedural functions, extensions,
--     CREATE TYPE, temporary/unlogged/partitioned tables, SERIAL, arrays, non-C collations,
--     materialized views, rules, sequences with a forbidden CACHE), DDL mixed with DML and two
--     DDL statements in one transaction, and rewrites a bare `numeric` column to numeric(18,6)
--     as DSQL does silently;
--   * statement-level guard triggers, installed automatically on every user table, count the rows
--     and bytes a transaction modifies (3,000 rows / 10 MiB, 54000) and refuse TRUNCATE (0A000);
--   * plpgsql loses its inline handler, so `DO` fails with 0A000;
--   * capture triggers feed the CDC stand-in's log (dsql_guard.cdc_log) when dsql_guard.cdc = on.
-- Settings (database-level GUCs, changeable per session too):
--   dsql_guard.enabled (on), dsql_guard.max_rows (3000), dsql_guard.max_bytes (10485760),
--   dsql_guard.count_index_tuples (off), dsql_guard.cdc (off).
-- Differences from DSQL that cannot be emulated without a server extension are listed in
-- reconcile/local/guards.py.

CREATE SCHEMA IF NOT EXISTS dsql_guard;

CREATE OR REPLACE FUNCTION dsql_guard.setting(name text, fallback text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('dsql_guard.' || name, true), ''), fallback)
$$;

CREATE OR REPLACE FUNCTION dsql_guard.active() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT dsql_guard.setting('enabled', 'on') <> 'off'
       AND dsql_guard.setting('internal', 'off') <> 'on'
$$;

-- Statement-level AFTER trigger: accumulate rows and bytes modified by this transaction.
-- One trigger per event (INSERT/UPDATE/DELETE) because a trigger with transition tables may
-- only have one event. COPY FROM and INSERT ... ON CONFLICT fire them too.
CREATE OR REPLACE FUNCTION dsql_guard.count_modified() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    n bigint;
    bytes bigint;
    extra bigint;
    idx_count int := 0;
    cols text;
    total_rows bigint;
    total_bytes bigint;
BEGIN
    IF NOT dsql_guard.active() THEN
        RETURN NULL;
    END IF;
    IF current_setting('transaction_isolation') <> 'repeatable read' THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('unsupported isolation level: %s', current_setting('transaction_isolation')),
            HINT = 'Aurora DSQL runs every transaction at REPEATABLE READ.';
    END IF;
    IF dsql_guard.setting('ddl_in_txn', 'off') = 'on' THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = 'ddl and dml are not supported in the same transaction';
    END IF;
    PERFORM set_config('dsql_guard.dml_in_txn', 'on', true);

    IF TG_OP = 'DELETE' THEN
        SELECT count(*), coalesce(sum(octet_length(r::text)), 0) INTO n, bytes FROM guard_old_rows r;
    ELSE
        SELECT count(*), coalesce(sum(octet_length(r::text)), 0) INTO n, bytes FROM guard_new_rows r;
    END IF;
    IF n = 0 THEN
        RETURN NULL;
    END IF;

    -- Sizes are raw (uncompressed) bytes, measured as the text form of each row: DSQL's 10 MiB
    -- counts data as written, not as PostgreSQL would compress it.
    -- Secondary-index entries: their key bytes add to the size; they add to the row count only
    -- when dsql_guard.count_index_tuples is on (AWS has not settled whether they count).
    FOR cols IN
        SELECT string_agg(CASE WHEN k.attnum = 0 THEN NULL ELSE quote_ident(a.attname) END, ', '
                          ORDER BY k.ord)
        FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
        LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = TG_RELID AND NOT i.indisprimary
        GROUP BY i.indexrelid
    LOOP
        idx_count := idx_count + 1;
        IF TG_OP <> 'DELETE' AND cols IS NOT NULL THEN
            EXECUTE format('SELECT coalesce(sum(octet_length(ROW(%s)::text)), 0) FROM guard_new_rows', cols)
                INTO extra;
            bytes := bytes + extra;
        END IF;
    END LOOP;
    IF dsql_guard.setting('count_index_tuples', 'off') = 'on' THEN
        n := n * (1 + idx_count);
    END IF;

    total_rows := coalesce(nullif(current_setting('dsql_guard.txn_rows', true), '')::bigint, 0) + n;
    total_bytes := coalesce(nullif(current_setting('dsql_guard.txn_bytes', true), '')::bigint, 0) + bytes;
    PERFORM set_config('dsql_guard.txn_rows', total_rows::text, true);
    PERFORM set_config('dsql_guard.txn_bytes', total_bytes::text, true);

    IF total_rows > dsql_guard.setting('max_rows', '3000')::bigint THEN
        RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = 'transaction row limit exceeded';
    END IF;
    IF total_bytes > dsql_guard.setting('max_bytes', '10485760')::bigint THEN
        RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = 'transaction size limit 10mb exceeded';
    END IF;
    RETURN NULL;
END
$fn$;

-- CDC stand-in capture (reconcile.local.cdc). With dsql_guard.cdc = on (a database-level GUC, off by
-- default) every row change of a user table is logged, inside the writing transaction, into
-- dsql_guard.cdc_log: per statement, the rows present before it ('-', deletes and the old side of
-- updates) and after it ('+', inserts and the new side of updates). The log is transactional, so a
-- rolled-back transaction leaves nothing and a committed one appears whole. The publisher
-- (reconcile.local.cdc) pairs '-'/'+' by primary key, compacts per transaction, renders DSQL's JSON
-- and deletes what it has put into Kinesis. With cdc off the triggers return at once.
CREATE TABLE IF NOT EXISTS dsql_guard.cdc_log (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    relid oid NOT NULL,
    stmt integer NOT NULL,
    op "char" NOT NULL,
    row_data json NOT NULL
);

CREATE OR REPLACE FUNCTION dsql_guard.cdc_capture() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    stmt integer;
BEGIN
    IF dsql_guard.setting('cdc', 'off') <> 'on' OR dsql_guard.setting('internal', 'off') = 'on' THEN
        RETURN NULL;
    END IF;
    stmt := coalesce(nullif(current_setting('dsql_guard.cdc_stmt', true), '')::integer, 0) + 1;
    PERFORM set_config('dsql_guard.cdc_stmt', stmt::text, true);
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO dsql_guard.cdc_log (relid, stmt, op, row_data)
        SELECT TG_RELID, stmt, '-', row_to_json(o) FROM cdc_old_rows o;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO dsql_guard.cdc_log (relid, stmt, op, row_data)
        SELECT TG_RELID, stmt, '+', row_to_json(n) FROM cdc_new_rows n;
    END IF;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION dsql_guard.refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF dsql_guard.active() THEN
        RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = 'TRUNCATE is not supported',
            HINT = 'Use DELETE in batches of at most 3,000 rows.';
    END IF;
    RETURN NULL;
END
$fn$;

-- Install the guard triggers on one table (idempotent).
CREATE OR REPLACE FUNCTION dsql_guard.protect(rel regclass) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    prev text := dsql_guard.setting('internal', 'off');
BEGIN
    PERFORM set_config('dsql_guard.internal', 'on', true);
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = 'dsql_guard_ins') THEN
        EXECUTE format('CREATE TRIGGER dsql_guard_ins AFTER INSERT ON %s REFERENCING NEW TABLE AS guard_new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION dsql_guard.count_modified()', rel);
        EXECUTE format('CREATE TRIGGER dsql_guard_upd AFTER UPDATE ON %s REFERENCING NEW TABLE AS guard_new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION dsql_guard.count_modified()', rel);
        EXECUTE format('CREATE TRIGGER dsql_guard_del AFTER DELETE ON %s REFERENCING OLD TABLE AS guard_old_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION dsql_guard.count_modified()', rel);
        EXECUTE format('CREATE TRIGGER dsql_guard_trunc BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION dsql_guard.refuse_truncate()', rel);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = 'dsql_guard_cdc_ins') THEN
        EXECUTE format('CREATE TRIGGER dsql_guard_cdc_ins AFTER INSERT ON %s REFERENCING NEW TABLE AS cdc_new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION dsql_guard.cdc_capture()', rel);
        EXECUTE format('CREATE TRIGGER dsql_guard_cdc_upd AFTER UPDATE ON %s '
                       'REFERENCING OLD TABLE AS cdc_old_rows NEW TABLE AS cdc_new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION dsql_guard.cdc_capture()', rel);
        EXECUTE format('CREATE TRIGGER dsql_guard_cdc_del AFTER DELETE ON %s REFERENCING OLD TABLE AS cdc_old_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION dsql_guard.cdc_capture()', rel);
    END IF;
    PERFORM set_config('dsql_guard.internal', prev, true);
END
$fn$;

CREATE OR REPLACE FUNCTION dsql_guard.refuse(code text, msg text, hint text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    IF hint IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = code, MESSAGE = msg;
    END IF;
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = msg, HINT = hint;
END
$fn$;

-- ddl_command_start: transaction shape and statements refused outright.
CREATE OR REPLACE FUNCTION dsql_guard.on_ddl_start() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NOT dsql_guard.active() THEN
        RETURN;
    END IF;
    IF tg_tag IN ('CREATE TRIGGER', 'ALTER TRIGGER', 'CREATE EXTENSION', 'ALTER EXTENSION',
                  'CREATE TYPE', 'ALTER TYPE', 'CREATE MATERIALIZED VIEW', 'REFRESH MATERIALIZED VIEW',
                  'CREATE PROCEDURE', 'CREATE RULE', 'CREATE LANGUAGE', 'CREATE EVENT TRIGGER',
                  'CREATE PUBLICATION', 'CREATE TABLESPACE', 'CREATE FOREIGN TABLE', 'IMPORT FOREIGN SCHEMA',
                  'CREATE SERVER', 'CREATE FOREIGN DATA WRAPPER', 'CREATE AGGREGATE', 'CREATE OPERATOR',
                  'CREATE CAST', 'CREATE COLLATION', 'CREATE CONVERSION', 'CREATE STATISTICS',
                  'CREATE TEXT SEARCH CONFIGURATION', 'CREATE TEXT SEARCH DICTIONARY') THEN
        PERFORM dsql_guard.refuse('0A000', format('%s is not supported', tg_tag));
    END IF;
    IF current_setting('transaction_isolation') <> 'repeatable read' THEN
        PERFORM dsql_guard.refuse('0A000',
            format('unsupported isolation level: %s', current_setting('transaction_isolation')));
    END IF;
    IF dsql_guard.setting('dml_in_txn', 'off') = 'on' THEN
        PERFORM dsql_guard.refuse('0A000', 'ddl and dml are not supported in the same transaction');
    END IF;
    IF dsql_guard.setting('ddl_in_txn', 'off') = 'on' THEN
        PERFORM dsql_guard.refuse('0A000', 'multiple ddl statements not supported in a transaction');
    END IF;
    PERFORM set_config('dsql_guard.ddl_in_txn', 'on', true);
END
$fn$;

-- ddl_command_end: what only the finished command shows (columns, persistence, languages).
CREATE OR REPLACE FUNCTION dsql_guard.on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    cmd record;
    col record;
    rel record;
BEGIN
    IF NOT dsql_guard.active() THEN
        RETURN;
    END IF;
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        IF cmd.schema_name = 'dsql_guard' THEN
            CONTINUE;
        END IF;
        IF cmd.classid = 'pg_proc'::regclass THEN
            IF EXISTS (SELECT 1 FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
                       WHERE p.oid = cmd.objid AND l.lanname NOT IN ('sql', 'internal')) THEN
                PERFORM dsql_guard.refuse('0A000',
                    format('%s with a language other than SQL is not supported', cmd.command_tag),
                    'Use LANGUAGE sql, or move the logic into the application.');
            END IF;
        ELSIF cmd.classid = 'pg_class'::regclass AND cmd.object_type = 'sequence' THEN
            IF EXISTS (SELECT 1 FROM pg_sequence s WHERE s.seqrelid = cmd.objid
                       AND s.seqcache <> 1 AND s.seqcache < 65536) THEN
                PERFORM dsql_guard.refuse('0A000',
                    'CREATE SEQUENCE is not supported without an explicit cache size. '
                    'please define CACHE greater than or equal to 65536 or equal to 1');
            END IF;
        ELSIF cmd.classid = 'pg_class'::regclass AND cmd.object_type = 'table' THEN
            SELECT c.oid, c.relpersistence, c.relkind INTO rel FROM pg_class c WHERE c.oid = cmd.objid;
            IF rel.relpersistence = 't' THEN
                PERFORM dsql_guard.refuse('0A000', 'temporary tables are not supported');
            ELSIF rel.relpersistence = 'u' THEN
                PERFORM dsql_guard.refuse('0A000', 'unlogged tables are not supported');
            ELSIF rel.relkind = 'p' THEN
                PERFORM dsql_guard.refuse('0A000', 'partitioned tables are not supported');
            END IF;
            FOR col IN
                SELECT a.attname, a.attnum, t.typname, t.typcategory, a.atttypmod, a.attcollation,
                       a.atttypid, pg_get_expr(d.adbin, d.adrelid) AS default_expr,
                       (SELECT count(*) FROM pg_depend dep
                         WHERE dep.refobjid = a.attrelid AND dep.refobjsubid = a.attnum
                           AND dep.classid = 'pg_class'::regclass AND dep.deptype = 'a'
                           AND EXISTS (SELECT 1 FROM pg_class s WHERE s.oid = dep.objid AND s.relkind = 'S')
                       ) AS owned_serial
                FROM pg_attribute a
                JOIN pg_type t ON t.oid = a.atttypid
                LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                WHERE a.attrelid = cmd.objid AND a.attnum > 0 AND NOT a.attisdropped
            LOOP
                IF col.owned_serial > 0 AND col.default_expr LIKE 'nextval(%' THEN
                    -- Observed on DSQL: SERIAL/BIGSERIAL fail at parse time as an unknown type.
                    PERFORM dsql_guard.refuse('42704', 'type "serial" does not exist',
                        'Use BIGINT GENERATED BY DEFAULT AS IDENTITY (CACHE 1) or a plain BIGINT.');
                END IF;
                IF col.typcategory = 'A' THEN
                    PERFORM dsql_guard.refuse('0A000',
                        format('array types are not supported as column types (column "%s")', col.attname));
                END IF;
                IF col.attcollation <> 0 AND col.attcollation NOT IN
                       (SELECT oid FROM pg_collation WHERE collname IN ('C', 'POSIX', 'default', 'ucs_basic')) THEN
                    PERFORM dsql_guard.refuse('0A000',
                        format('collation "%s" is not supported (column "%s"); only C is supported',
                               (SELECT collname FROM pg_collation WHERE oid = col.attcollation), col.attname));
                END IF;
                IF col.atttypid = 'numeric'::regtype AND col.atttypmod = -1 THEN
                    -- DSQL silently turns a bare numeric into numeric(18,6): do the same, so code
                    -- that relies on unbounded numeric breaks here first.
                    PERFORM set_config('dsql_guard.internal', 'on', true);
                    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE numeric(18,6)',
                                   cmd.objid::regclass, col.attname);
                    PERFORM set_config('dsql_guard.internal', 'off', true);
                END IF;
            END LOOP;
            IF cmd.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO') THEN
                PERFORM dsql_guard.protect(cmd.objid::regclass);
            END IF;
        ELSIF cmd.classid = 'pg_class'::regclass AND cmd.object_type = 'index' THEN
            SELECT c.indrelid INTO rel FROM pg_index c WHERE c.indexrelid = cmd.objid;
            IF (SELECT count(*) FROM pg_index WHERE indrelid = rel.indrelid) > 24 THEN
                PERFORM dsql_guard.refuse('54000', 'too many indexes on table: at most 24 are allowed');
            END IF;
            IF (SELECT indnkeyatts FROM pg_index WHERE indexrelid = cmd.objid) > 8 THEN
                PERFORM dsql_guard.refuse('54000', 'too many key columns in index: at most 8 are allowed');
            END IF;
        END IF;
    END LOOP;
END
$fn$;

DROP EVENT TRIGGER IF EXISTS dsql_guard_ddl_start;
CREATE EVENT TRIGGER dsql_guard_ddl_start ON ddl_command_start EXECUTE FUNCTION dsql_guard.on_ddl_start();
DROP EVENT TRIGGER IF EXISTS dsql_guard_ddl_end;
CREATE EVENT TRIGGER dsql_guard_ddl_end ON ddl_command_end EXECUTE FUNCTION dsql_guard.on_ddl_end();

-- DO runs through the language's inline handler: without one, DO fails with 0A000 as on DSQL.
UPDATE pg_language SET laninline = 0 WHERE lanname = 'plpgsql';

-- Tables that existed before the guards (idempotent).
SELECT dsql_guard.protect(c.oid::regclass)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'dsql_guard') AND n.nspname NOT LIKE 'pg_%';
