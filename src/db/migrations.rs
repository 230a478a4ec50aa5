//! Versioned, idempotent migrations of the `_realtime` metadata schema.
//!
//! A run happens in one transaction holding a transaction-scoped advisory lock, so nodes that
//! start together apply each step exactly once and the others wait, then see it applied. Every
//! step is written with `IF NOT EXISTS` so that a metadata database created by the original
//! server (Ecto migrations) is completed, never altered destructively.

use super::{DbError, PooledClient};

/// Table that records applied versions (our own; Ecto's `schema_migrations` is left alone).
pub const MIGRATIONS_TABLE: &str = "_realtime.realtime_rs_migrations";

/// Advisory lock key of a migration run: the ASCII bytes of "rt-migr8" as a big-endian i64.
const MIGRATION_LOCK_KEY: i64 = i64::from_be_bytes(*b"rt-migr8");

/// One migration step: a version (never reused), a name and its SQL.
pub struct Migration {
    /// Version; applied in ascending order.
    pub version: i64,
    /// Short name for logs and errors.
    pub name: &'static str,
    /// The SQL, run as one batch inside the run's transaction.
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "tenants",
        sql: r#"
CREATE TABLE IF NOT EXISTS _realtime.tenants (
    id uuid PRIMARY KEY,
    name text,
    external_id text,
    jwt_secret text,
    inserted_at timestamp(0) without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at timestamp(0) without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);
ALTER TABLE _realtime.tenants
    ADD COLUMN IF NOT EXISTS jwt_jwks jsonb,
    ADD COLUMN IF NOT EXISTS postgres_cdc_default text DEFAULT 'postgres_cdc_rls',
    ADD COLUMN IF NOT EXISTS max_concurrent_users integer NOT NULL DEFAULT 200,
    ADD COLUMN IF NOT EXISTS max_events_per_second integer NOT NULL DEFAULT 100,
    ADD COLUMN IF NOT EXISTS max_bytes_per_second integer NOT NULL DEFAULT 100000,
    ADD COLUMN IF NOT EXISTS max_channels_per_client integer NOT NULL DEFAULT 100,
    ADD COLUMN IF NOT EXISTS max_joins_per_second integer NOT NULL DEFAULT 500,
    ADD COLUMN IF NOT EXISTS max_presence_events_per_second integer DEFAULT 1000,
    ADD COLUMN IF NOT EXISTS max_payload_size_in_kb integer DEFAULT 3000,
    ADD COLUMN IF NOT EXISTS max_client_presence_events_per_window integer,
    ADD COLUMN IF NOT EXISTS client_presence_window_ms integer,
    ADD COLUMN IF NOT EXISTS presence_enabled boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS private_only boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS suspend boolean DEFAULT false,
    ADD COLUMN IF NOT EXISTS notify_private_alpha boolean DEFAULT false,
    ADD COLUMN IF NOT EXISTS migrations_ran integer DEFAULT 0,
    ADD COLUMN IF NOT EXISTS broadcast_adapter text DEFAULT 'gen_rpc',
    ADD COLUMN IF NOT EXISTS feature_flags jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN IF NOT EXISTS gcm_migrated_at timestamp(0) without time zone;
CREATE UNIQUE INDEX IF NOT EXISTS tenants_external_id_index ON _realtime.tenants (external_id);
DO $body$
BEGIN
    -- Only when no check constraint mentions jwt_jwks yet (an Ecto-made table has its own).
    -- NOT VALID: rows written before the constraint existed are not re-checked.
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = '_realtime.tenants'::regclass
          AND contype = 'c'
          AND pg_get_constraintdef(oid) LIKE '%jwt_jwks%'
    ) THEN
        ALTER TABLE _realtime.tenants
            ADD CONSTRAINT tenants_jwt_secret_or_jwks_present
            CHECK (jwt_secret IS NOT NULL OR jwt_jwks IS NOT NULL) NOT VALID;
    END IF;
END
$body$;
"#,
    },
    Migration {
        version: 2,
        name: "extensions",
        sql: r#"
CREATE TABLE IF NOT EXISTS _realtime.extensions (
    id uuid PRIMARY KEY,
    type text,
    settings jsonb,
    tenant_external_id text REFERENCES _realtime.tenants (external_id) ON DELETE CASCADE,
    inserted_at timestamp(0) without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at timestamp(0) without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);
CREATE UNIQUE INDEX IF NOT EXISTS extensions_tenant_external_id_type_index
    ON _realtime.extensions (tenant_external_id, type);
"#,
    },
];

/// Applies the missing migrations in one transaction under the advisory lock; returns the
/// versions this call applied (empty when the schema was already current).
pub(super) async fn run(client: &mut PooledClient) -> Result<Vec<i64>, DbError> {
    let tx = client.transaction().await?;
    // Another node's run may hold the lock for longer than `DB_QUERY_TIMEOUT_MS`, and a
    // migration may take longer too: no statement timeout for this transaction.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
    // Held until commit or rollback: concurrent runs queue here, then find the work done.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS _realtime;
         CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
             version bigint PRIMARY KEY,
             name text NOT NULL,
             inserted_at timestamp(0) without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
         );"
    ))
    .await?;
    let applied: Vec<i64> = tx
        .query(&format!("SELECT version FROM {MIGRATIONS_TABLE}"), &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut newly_applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let failed = |source| DbError::Migration {
            version: migration.version,
            name: migration.name,
            source,
        };
        tx.batch_execute(migration.sql).await.map_err(failed)?;
        tx.execute(
            &format!("INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES ($1, $2)"),
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(failed)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied metadata migration"
        );
        newly_applied.push(migration.version);
    }
    tx.commit().await?;
    Ok(newly_applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_ascend_and_are_unique() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(versions, sorted);
    }

    #[test]
    fn every_statement_is_idempotent_in_form() {
        for migration in MIGRATIONS {
            for line in migration.sql.lines().map(str::trim) {
                if line.starts_with("CREATE TABLE") || line.starts_with("CREATE UNIQUE INDEX") {
                    assert!(line.contains("IF NOT EXISTS"), "{line}");
                }
                if line.starts_with("ADD COLUMN") {
                    assert!(line.contains("IF NOT EXISTS"), "{line}");
                }
            }
        }
    }
}
