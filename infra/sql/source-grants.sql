-- reconcile on the source (Aurora PostgreSQL): the user that backfills, diffs and replays.
--
-- Prerequisite: the cluster runs with infra/cloudformation/aurora-source-params.yaml attached
-- and the writer rebooted (SHOW wal_level says logical).
--
-- Run connected to the ledger database (here `ledger`; replace the name in the two GRANT ...
-- ON DATABASE lines and the schema/table names with yours):
--   * blocks 1-3 as the cluster's master user (a member of rds_superuser);
--   * block 4 as the OWNER of the ledger tables (PostgreSQL lets only a table's owner add it to a
--     publication).
--   psql "host=<writer endpoint> dbname=ledger user=<master user> sslmode=verify-full" \
--     -v ON_ERROR_STOP=1 -f infra/sql/source-grants.sql
-- Then give the user a password without it touching a file or the shell history:
--   psql ... -c '\password reconcile_replay'
-- and point reconcile.toml [source] at it (conninfo "... user=reconcile_replay ...", password_env).
-- (Or use IAM database authentication: GRANT rds_iam TO reconcile_replay; and a token as password.)

-- 1. The login role and its replication right. On RDS/Aurora the REPLICATION attribute is not
--    grantable directly: membership in rds_replication lets the user create and read logical
--    replication slots (pgoutput) and run the replication protocol.
CREATE ROLE reconcile_replay WITH LOGIN;
GRANT rds_replication TO reconcile_replay;

-- 2. Connect, and CREATE on the database so the user may create its own publication when the
--    ledger tables belong to it (CREATE PUBLICATION needs CREATE on the database AND ownership of
--    every table in it); with the owner creating the publication (block 4) it is not used.
GRANT CONNECT, CREATE ON DATABASE ledger TO reconcile_replay;

-- 3. Read access for the backfill (keyset chunks), the diff and the balance checks. Read only:
--    the pipeline never writes the source (its DBLog watermarks go to WAL through
--    pg_logical_emit_message, not into a table).
GRANT USAGE ON SCHEMA ledger TO reconcile_replay;
GRANT SELECT ON ledger.accounts, ledger.journal, ledger.entries TO reconcile_replay;

-- 4. As the tables' owner: the publication the replay's slot decodes (pgoutput). List the tables
--    of reconcile.toml [[tables]]; each needs a primary key (or REPLICA IDENTITY FULL) so that
--    UPDATE and DELETE carry the key of the row they change.
CREATE PUBLICATION reconcile_pub FOR TABLE ledger.accounts, ledger.journal, ledger.entries;

-- Slot WAL retention (read before creating the slot):
--   * A logical replication slot keeps every WAL segment its consumer has not confirmed. The slot
--     is created before the backfill starts, and the replay applies nothing until every table is
--     copied, so WAL piles up for the whole backfill; afterwards it grows whenever the replay is
--     stopped or behind. On Aurora it shows as TransactionLogsDiskUsage and is billed as storage;
--     aurora-source-params.yaml alarms on it and on OldestReplicationSlotLag.
--   * Watch it:   SELECT slot_name, active,
--                        pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)) AS retained
--                 FROM pg_replication_slots;
--   * An abandoned slot never stops growing. When a migration is abandoned or finished, drop it:
--                 SELECT pg_drop_replication_slot('<slot name>');
--                 DROP PUBLICATION reconcile_pub;
--   * Do not cap retention with max_slot_wal_keep_size where your engine version allows it: a slot
--     that exceeds the cap is invalidated, and the replay can only restart with a full backfill.
