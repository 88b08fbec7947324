-- reconcile on Aurora DSQL: the pipeline's database role, mapped to its IAM role.
--
-- Run once per cluster as `admin` (IAM: dsql:DbConnectAdmin, the BootstrapRole of
-- infra/cloudformation/pipeline-iam.yaml), after replacing the example ARN below with the
-- PipelineRoleArn output of that stack:
--
--   export EP=<Endpoint output of dsql-cluster.yaml> REGION=us-east-1
--   export PGPASSWORD="$(aws dsql generate-db-connect-admin-auth-token \
--       --hostname "$EP" --region "$REGION" --expires-in 900)"
--   sed "s|arn:aws:iam::111122223333:role/reconcile-pipeline|$PIPELINE_ROLE_ARN|" \
--       infra/sql/target-roles.sql |
--     psql "host=$EP port=5432 dbname=postgres user=admin sslmode=verify-full sslrootcert=system" \
--       -v ON_ERROR_STOP=1
--
-- One statement per transaction: DSQL runs at most one DDL statement per transaction and never
-- mixes DDL with DML, so every statement below stands alone and psql's autocommit commits each
-- one by itself. Do not wrap this file in BEGIN/COMMIT or run it with `psql -1`.
-- `dsql-lint infra/sql/target-roles.sql` checks it (tests/test_infra.py runs it).
--
-- Who does what afterwards:
--   * admin (BootstrapRole) runs the schema DDL: the control-schema migrations and the ledger
--     tables (reconcile.toml [target] user = "admin"). Objects it creates are owned by admin.
--   * reconcile_pipeline (PipelineRole, IAM dsql:DbConnect) runs backfill, replay, diff and gates
--     (reconcile.toml [target] user = "reconcile_pipeline"): reads and writes rows only.
-- Re-run the last block (the table grants) after every DDL that adds a table: PostgreSQL grants
-- ON ALL TABLES cover the tables that exist when they run.

-- 1. The login role; it has no password: DSQL authenticates it with IAM tokens only.
CREATE ROLE reconcile_pipeline WITH LOGIN;

-- 2. Which IAM role may sign tokens for it (the PipelineRoleArn output; a role, not a user).
AWS IAM GRANT reconcile_pipeline TO 'arn:aws:iam::111122223333:role/reconcile-pipeline';

-- 3. The schemas: `reconcile` holds the pipeline's own state (chunks, replay watermark, dead
--    letters, gate trail); `ledger` receives the migrated tables. Repeat for every schema named
--    in reconcile.toml [[tables]] (DSQL allows at most 10 schemas per cluster).
CREATE SCHEMA IF NOT EXISTS reconcile;

CREATE SCHEMA IF NOT EXISTS ledger;

-- 4. Schema access. CREATE lets the pipeline role build tables of its own in these schemas
--    (it then owns them); drop it from the grant to keep every DDL with admin.
GRANT USAGE, CREATE ON SCHEMA reconcile TO reconcile_pipeline;

GRANT USAGE, CREATE ON SCHEMA ledger TO reconcile_pipeline;

-- 5. Row access to the tables admin created (re-run after adding tables). No TRUNCATE (DSQL has
--    none), no REFERENCES/TRIGGER: the pipeline only reads and writes rows.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA reconcile TO reconcile_pipeline;

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ledger TO reconcile_pipeline;
