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
//!
//! Versions 3-5 make the `realtime` objects users' SQL relies on (PROTOCOL.md 9.1, 11.2):
//! `realtime.messages` (only when missing), its day partitions, and `realtime.topic`, `send`,
//! `send_binary`, `broadcast_changes` (only when missing or ours, see [`OUR_FUNCTION`]). After
//! the versions, every run makes sure the partitions of yesterday to three days ahead exist, so
//! a node works without the janitor.

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
    TenantMigration {
        version: 3,
        name: "realtime.messages, partitioned by day",
        sql: MESSAGES_TABLE,
    },
    TenantMigration {
        version: 4,
        name: "rs_ensure_messages_partitions: day partitions of realtime.messages",
        sql: PARTITIONS_FUNCTION,
    },
    TenantMigration {
        version: 5,
        name: "realtime.topic, send, send_binary, broadcast_changes",
        sql: BROADCAST_FUNCTIONS,
    },
];

/// Creates today's partitions and a few days around it, on every run (not a version: the
/// days move). Never fails the run: a database where our user may not create partitions of a
/// `realtime.messages` it does not own gets a warning, and authorization reports
/// `MissingPartition` (PROTOCOL.md 9.4).
const ENSURE_PARTITIONS: &str = r#"
DO $rs$
DECLARE
    today date := (pg_catalog.now() AT TIME ZONE 'utc')::date;
BEGIN
    PERFORM realtime.rs_ensure_messages_partitions(today - 1, today + 3);
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'realtime-rs: cannot create the partitions of realtime.messages: %', SQLERRM;
END
$rs$;
"#;

/// `realtime.messages` (PROTOCOL.md 11.2), when missing: range-partitioned by `inserted_at`
/// (one partition per UTC day, `inserted_at` defaults to the UTC time so the day is the UTC
/// day whatever the session's time zone), RLS enabled without policies, the replay index, and
/// the API roles' grants (for the roles that exist). A table that exists (the Supabase image
/// or the original made it) is left exactly as it is.
const MESSAGES_TABLE: &str = r#"
DO $rs$
DECLARE
    api_role text;
BEGIN
    IF to_regclass('realtime.messages') IS NOT NULL THEN
        RETURN;
    END IF;
    CREATE TABLE IF NOT EXISTS realtime.messages (
        topic text NOT NULL,
        extension text NOT NULL,
        payload jsonb,
        event text,
        private boolean DEFAULT false,
        updated_at timestamp without time zone NOT NULL DEFAULT timezone('utc', now()),
        inserted_at timestamp without time zone NOT NULL DEFAULT timezone('utc', now()),
        id uuid NOT NULL DEFAULT gen_random_uuid(),
        binary_payload bytea,
        CONSTRAINT messages_one_payload CHECK (payload IS NULL OR binary_payload IS NULL),
        CONSTRAINT messages_pkey PRIMARY KEY (id, inserted_at)
    ) PARTITION BY RANGE (inserted_at);
    ALTER TABLE realtime.messages ENABLE ROW LEVEL SECURITY;
    CREATE INDEX IF NOT EXISTS messages_inserted_at_topic_index
        ON realtime.messages (inserted_at DESC, topic)
        WHERE extension = 'broadcast' AND private IS TRUE;
    FOR api_role IN
        SELECT rolname FROM pg_catalog.pg_roles
         WHERE rolname IN ('anon', 'authenticated', 'service_role')
    LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA realtime TO %I', api_role);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON realtime.messages TO %I', api_role);
    END LOOP;
END
$rs$;
"#;

/// `realtime.rs_ensure_messages_partitions(first_day, last_day)`: creates the missing day
/// partitions `realtime.messages_YYYY_MM_DD` of that range and returns how many it made.
/// Security definer, so `realtime.send` can make today's partition on demand whoever calls it;
/// hence bounded to yesterday .. a week ahead. Does nothing when `realtime.messages` is not
/// range-partitioned. A partition made meanwhile by someone else, or one of another name
/// covering the day, counts as present.
const PARTITIONS_FUNCTION: &str = r#"
create or replace function realtime.rs_ensure_messages_partitions(first_day date, last_day date)
returns integer
language plpgsql volatile security definer
set search_path = ''
as $fn$
declare
  today date := (pg_catalog.now() at time zone 'utc')::date;
  day date := first_day;
  part text;
  made integer := 0;
begin
  if first_day is null or last_day is null or first_day > last_day
     or first_day < today - 1 or last_day > today + 7 then
    raise exception 'rs_ensure_messages_partitions: % .. % is not within yesterday .. a week ahead',
      first_day, last_day;
  end if;
  if not exists (select 1 from pg_catalog.pg_partitioned_table p
                  where p.partrelid = pg_catalog.to_regclass('realtime.messages')
                    and p.partstrat = 'r') then
    return 0;
  end if;
  while day <= last_day loop
    part := 'messages_' || pg_catalog.to_char(day, 'YYYY_MM_DD');
    if pg_catalog.to_regclass(pg_catalog.format('realtime.%I', part)) is null then
      begin
        execute pg_catalog.format(
          'create table if not exists realtime.%I partition of realtime.messages for values from (%L) to (%L)',
          part, day::timestamp, (day + 1)::timestamp);
        made := made + 1;
      exception
        -- Made concurrently (janitor, on-demand creation), or another partition covers the day.
        when duplicate_table or unique_violation or invalid_object_definition then null;
      end;
    end if;
    day := day + 1;
  end loop;
  return made;
end
$fn$;
"#;

/// The SQL API of broadcast from the database (PROTOCOL.md 9.1), each function created only
/// when missing or made by us (marked by the comment [`OUR_FUNCTION`]): a function the
/// Supabase image or the original made is kept as it is. `rs_define_function` is the helper
/// that applies that rule, for this and later versions.
const BROADCAST_FUNCTIONS: &str = r#"
create or replace function realtime.rs_define_function(signature text, definition text)
returns boolean
language plpgsql volatile
set search_path = ''
as $fn$
declare
  existing regprocedure := pg_catalog.to_regprocedure(signature);
begin
  if existing is not null
     and pg_catalog.obj_description(existing, 'pg_proc') is distinct from 'realtime-rs' then
    return false;
  end if;
  execute definition;
  execute pg_catalog.format('comment on function %s is %L',
                            pg_catalog.to_regprocedure(signature), 'realtime-rs');
  return true;
end
$fn$;

select realtime.rs_define_function('realtime.topic()', $def$
create or replace function realtime.topic()
returns text
language sql stable
as $fn$ select nullif(pg_catalog.current_setting('realtime.topic', true), '') $fn$
$def$);

select realtime.rs_define_function('realtime.send(jsonb, text, text, boolean)', $def$
create or replace function realtime.send(payload jsonb, event text, topic text, private boolean default true)
returns void
language plpgsql volatile
set search_path = ''
as $fn$
declare
  message_id uuid := pg_catalog.gen_random_uuid();
  body jsonb := send.payload;
  attempt integer := 0;
begin
  -- The row id is what subscribers get as meta.id; the payload carries it too unless the
  -- caller chose its own id.
  if pg_catalog.jsonb_typeof(body) = 'object' and not body ? 'id' then
    body := body || pg_catalog.jsonb_build_object('id', message_id);
  end if;
  loop
    begin
      perform pg_catalog.set_config('realtime.topic', send.topic, true);
      insert into realtime.messages (id, payload, event, topic, private, extension)
      values (message_id, body, send.event, send.topic, send.private, 'broadcast');
      return;
    exception when others then
      -- No partition for today yet: make it once and try again.
      if attempt = 0 and sqlstate = '23514' and sqlerrm like 'no partition%' then
        attempt := 1;
        begin
          perform realtime.rs_ensure_messages_partitions(
            (pg_catalog.now() at time zone 'utc')::date, (pg_catalog.now() at time zone 'utc')::date);
        exception when others then
          raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
          return;
        end;
      else
        -- Never abort the caller's transaction over a broadcast.
        raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
        return;
      end if;
    end;
  end loop;
end
$fn$
$def$);

select realtime.rs_define_function('realtime.send_binary(bytea, text, text, boolean)', $def$
create or replace function realtime.send_binary(payload bytea, event text, topic text, private boolean default true)
returns void
language plpgsql volatile
set search_path = ''
as $fn$
declare
  attempt integer := 0;
begin
  loop
    begin
      perform pg_catalog.set_config('realtime.topic', send_binary.topic, true);
      insert into realtime.messages (binary_payload, event, topic, private, extension)
      values (send_binary.payload, send_binary.event, send_binary.topic, send_binary.private,
              'broadcast');
      return;
    exception when others then
      if attempt = 0 and sqlstate = '23514' and sqlerrm like 'no partition%' then
        attempt := 1;
        begin
          perform realtime.rs_ensure_messages_partitions(
            (pg_catalog.now() at time zone 'utc')::date, (pg_catalog.now() at time zone 'utc')::date);
        exception when others then
          raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
          return;
        end;
      else
        raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
        return;
      end if;
    end;
  end loop;
end
$fn$
$def$);

select realtime.rs_define_function(
  'realtime.broadcast_changes(text, text, text, text, text, record, record, text)', $def$
create or replace function realtime.broadcast_changes(
  topic_name text, event_name text, operation text, table_name text, table_schema text,
  new record, old record, level text default 'ROW')
returns void
language plpgsql volatile
set search_path = ''
as $fn$
declare
  change jsonb;
begin
  if level is distinct from 'ROW' then
    raise exception 'broadcast_changes: only row-level triggers are supported, not %', level;
  end if;
  if operation is null or operation not in ('INSERT', 'UPDATE', 'DELETE') then
    raise exception 'broadcast_changes: unknown operation %', operation;
  end if;
  change := pg_catalog.jsonb_build_object(
    'old_record', pg_catalog.to_jsonb(old),
    'record', pg_catalog.to_jsonb(new),
    'operation', operation,
    'table', table_name,
    'schema', table_schema);
  perform realtime.send(change, event_name, topic_name);
end
$fn$
$def$);
"#;

/// The comment that marks the functions this server defined (and may redefine).
pub const OUR_FUNCTION: &str = "realtime-rs";

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
    tx.batch_execute(ENSURE_PARTITIONS)
        .await
        .map_err(failed(0, "partitions"))?;
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
    fn our_functions_carry_the_marker() {
        assert_eq!(
            BROADCAST_FUNCTIONS
                .matches(&format!("'{OUR_FUNCTION}'"))
                .count(),
            2,
            "checked and set by rs_define_function"
        );
    }

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
        // The one alteration: RLS on the `realtime.messages` this run has just created.
        const OWN_ALTER: &str = "ALTER TABLE REALTIME.MESSAGES ENABLE ROW LEVEL SECURITY;";
        for sql in TENANT_MIGRATIONS
            .iter()
            .map(|m| m.sql)
            .chain([BOOTSTRAP, ENSURE_PARTITIONS])
        {
            let upper = sql.to_ascii_uppercase().replace(OWN_ALTER, "");
            for word in ["DROP ", "ALTER ", "TRUNCATE ", "DELETE ", "PUBLICATION"] {
                assert!(!upper.contains(word), "{word} in {sql}");
            }
            assert!(!sql.contains("realtime.schema_migrations"), "{sql}");
            if sql.contains("ENABLE ROW LEVEL SECURITY") {
                assert!(sql.contains("IF to_regclass('realtime.messages') IS NOT NULL THEN"));
            }
            for line in upper.lines().map(str::trim) {
                if line.starts_with("CREATE TABLE") || line.starts_with("CREATE SCHEMA") {
                    assert!(line.contains("IF NOT EXISTS"), "{line}");
                }
            }
        }
    }
}
