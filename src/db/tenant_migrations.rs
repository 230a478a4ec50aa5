//! Versioned, idempotent migrations of a tenant database: only what this server needs there.
//!
//! Run once per pool open (`db::tenant`), in one transaction holding a transaction-scoped
//! advisory lock (advisory locks are per database), so nodes opening the same tenant together
//! apply each version once and the others wait, then find it applied. Applied versions go to our
//! own table [`TENANT_MIGRATIONS_TABLE`]; Supabase's `realtime.schema_migrations` and every
//! other object of a `realtime` schema made by the original or the Supabase image are never
//! altered or dropped. The publication (`supabase_realtime` by default) belongs to the user and
//! is never created or altered here (PROTOCOL.md 6.6).
//!
//! Every step checks before it creates, so a user lacking a privilege it does not need (the
//! schema already exists) is not refused, and it tolerates a concurrent creator: a role is
//! cluster-wide, so two tenants on one cluster race for it under different advisory locks.
//! A new version is one more entry in [`TENANT_MIGRATIONS`].

use super::tenant::TenantDbError;
use crate::types::TenantId;

/// Our table of applied versions (Supabase's `realtime.schema_migrations` is left alone).
pub const TENANT_MIGRATIONS_TABLE: &str = "realtime.rs_schema_migrations";

/// Advisory lock key of a tenant migration run: the ASCII bytes of "rt-tnmig" as a big-endian
/// i64 (distinct from the metadata migrations' key, in case both share a database).
const TENANT_MIGRATION_LOCK_KEY: i64 = i64::from_be_bytes(*b"rt-tnmig");

/// Longest a migration run may take, waiting for another node's lock included.
const MIGRATION_TIMEOUT: &str = "60s";

/// One migration step: a version (never reused), a name and its SQL.
#[derive(Debug)]
pub struct TenantMigration {
    /// Version; applied in ascending order.
    pub version: i64,
    /// Short name for logs and errors.
    pub name: &'static str,
    /// The SQL, run as one batch inside the run's transaction.
    pub sql: &'static str,
}

/// Creates the schema and our version table when missing (before the lock's work, not a
/// version itself).
const BOOTSTRAP: &str = r#"
DO $rs$
BEGIN
    IF to_regnamespace('realtime') IS NULL THEN
        CREATE SCHEMA IF NOT EXISTS realtime;
    END IF;
    IF to_regclass('realtime.rs_schema_migrations') IS NULL THEN
        CREATE TABLE IF NOT EXISTS realtime.rs_schema_migrations (
            version bigint PRIMARY KEY,
            name text NOT NULL,
            inserted_at timestamptz NOT NULL DEFAULT now()
        );
    END IF;
END
$rs$;
"#;

/// Every tenant migration, in order.
pub const TENANT_MIGRATIONS: &[TenantMigration] = &[
    TenantMigration {
        version: 1,
        name: "supabase_realtime_admin role",
        sql: r#"
DO $rs$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'supabase_realtime_admin') THEN
        BEGIN
            CREATE ROLE supabase_realtime_admin WITH NOINHERIT NOLOGIN NOREPLICATION;
        EXCEPTION
            -- Another database of the same cluster created it meanwhile.
            WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
END
$rs$;
"#,
    },
    TenantMigration {
        version: 2,
        name: "rs_probe_sql: the RLS probe of Postgres Changes",
        sql: PROBE_SQL_FUNCTION,
    },
];

/// `realtime.rs_probe_sql(rel, key_columns)`: the text of the statement that returns which of
/// a list of primary keys of `rel` the current role and claims can see: `$1` is a `jsonb` array of
/// keys, each an array of text values in `key_columns` order; the answer is one `text[]` key per
/// visible row. Identifiers are quoted with `format('%I')` and types come from the catalog, so
/// the text is safe to prepare; values are always bound. Used by `postgres_changes::rls`.
const PROBE_SQL_FUNCTION: &str = r#"
create or replace function realtime.rs_probe_sql(rel regclass, key_columns text[])
returns text
language plpgsql stable
set search_path = ''
as $fn$
declare
  found integer;
  wanted_cols text;
  key_cols text;
  key_casts text;
  single_type text;
begin
  -- $1 of the probe: the keys flattened into one text[] (n values per key, key order).
  select count(*),
         string_agg(format('%I::text', k.name), ', ' order by k.ord),
         string_agg(format('%I', k.name), ', ' order by k.ord),
         string_agg(format('($1::text[])[g.i * %s + %s]::%s', cardinality(key_columns), k.ord,
                           format_type(a.atttypid, a.atttypmod)), ', ' order by k.ord),
         min(format_type(a.atttypid, a.atttypmod))
    into found, wanted_cols, key_cols, key_casts, single_type
    from unnest(key_columns) with ordinality as k(name, ord)
    join pg_catalog.pg_attribute a
      on a.attrelid = rel and a.attname = k.name and a.attnum > 0 and not a.attisdropped;
  if found is distinct from cardinality(key_columns) or found = 0 then
    raise exception 'rs_probe_sql: % has no column among %', rel, key_columns;
  end if;
  if found = 1 then
    -- One key column: one index scan over the array of keys (`= any`), not a join.
    return format('select array[%s] from %s where %s = any($1::text[]::%s[])',
                  wanted_cols, rel::text, key_cols, single_type);
  end if;
  return format(
    'select array[%s] from %s where (%s) in (select %s from pg_catalog.generate_series(0, pg_catalog.cardinality($1::text[]) / %s - 1) as g(i))',
    wanted_cols, rel::text, key_cols, key_casts, found);
end
$fn$
"#;

/// Applies the missing tenant migrations in one transaction under the advisory lock; returns
/// the versions this call applied (empty when the database was already current).
///
/// # Errors
/// [`TenantDbError::Migration`] naming the failing step (nothing of the run is kept), or
/// [`TenantDbError::Query`] when the bookkeeping statements fail.
pub async fn run_tenant_migrations(
    client: &mut tokio_postgres::Client,
    tenant: &TenantId,
) -> Result<Vec<i64>, TenantDbError> {
    let failed = |version: i64, name: &'static str| {
        move |source| TenantDbError::Migration {
            tenant: tenant.clone(),
            version,
            name,
            source,
        }
    };
    let tx = client.transaction().await.map_err(failed(0, "begin"))?;
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = '{MIGRATION_TIMEOUT}'"
    ))
    .await
    .map_err(failed(0, "bootstrap"))?;
    // Held until commit or rollback: concurrent runs queue here, then find the work done.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&TENANT_MIGRATION_LOCK_KEY],
    )
    .await
    .map_err(failed(0, "bootstrap"))?;
    tx.batch_execute(BOOTSTRAP)
        .await
        .map_err(failed(0, "bootstrap"))?;
    let applied: Vec<i64> = tx
        .query(
            &format!("SELECT version FROM {TENANT_MIGRATIONS_TABLE}"),
            &[],
        )
        .await
        .map_err(failed(0, "bootstrap"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut newly_applied = Vec::new();
    for migration in TENANT_MIGRATIONS
        .iter()
        .filter(|m| !applied.contains(&m.version))
    {
        let failed = failed(migration.version, migration.name);
        tx.batch_execute(migration.sql).await.map_err(failed)?;
        tx.execute(
            &format!("INSERT INTO {TENANT_MIGRATIONS_TABLE} (version, name) VALUES ($1, $2)"),
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(failed)?;
        newly_applied.push(migration.version);
    }
    tx.commit().await.map_err(failed(0, "commit"))?;
    if !newly_applied.is_empty() {
        tracing::info!(tenant = %tenant, versions = ?newly_applied, "applied tenant migrations");
    }
    Ok(newly_applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_ascend_and_are_unique() {
        let versions: Vec<i64> = TENANT_MIGRATIONS.iter().map(|m| m.version).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(versions, sorted);
        assert!(versions.iter().all(|v| *v > 0), "0 names the bootstrap");
    }

    #[test]
    fn no_step_touches_supabase_objects_destructively() {
        for sql in TENANT_MIGRATIONS.iter().map(|m| m.sql).chain([BOOTSTRAP]) {
            let upper = sql.to_ascii_uppercase();
            for word in ["DROP ", "ALTER ", "TRUNCATE ", "DELETE ", "PUBLICATION"] {
                assert!(!upper.contains(word), "{word} in {sql}");
            }
            assert!(!sql.contains("realtime.schema_migrations"), "{sql}");
            for line in upper.lines().map(str::trim) {
                if line.starts_with("CREATE TABLE") || line.starts_with("CREATE SCHEMA") {
                    assert!(line.contains("IF NOT EXISTS"), "{line}");
                }
            }
        }
    }
}
