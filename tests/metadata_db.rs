//! Migrations of the `_realtime` schema and reading values written by the original server.

mod common;

use realtime::db::{Db, MIGRATIONS};
use realtime::tenants::{Cipher, Tenants};
use realtime::types::TenantId;

async fn db_for(name: &str) -> Db {
    Db::connect(&common::config(name, &[]).db)
        .await
        .expect("connect")
}

async fn columns(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = '_realtime' AND table_name = $1 ORDER BY column_name",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn migrations_create_the_schema_once() {
    let name = common::fresh_database().await;
    let db = db_for(&name).await;
    let all: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(db.migrate().await.unwrap(), all);
    assert!(
        db.migrate().await.unwrap().is_empty(),
        "second run is a no-op"
    );

    let client = common::connect(&name).await;
    let tenant_columns = columns(&client, "tenants").await;
    for column in [
        "id",
        "external_id",
        "jwt_secret",
        "jwt_jwks",
        "max_joins_per_second",
        "max_payload_size_in_kb",
        "client_presence_window_ms",
        "private_only",
        "suspend",
        "migrations_ran",
        "broadcast_adapter",
        "feature_flags",
        "gcm_migrated_at",
    ] {
        assert!(tenant_columns.contains(&column.to_string()), "{column}");
    }
    let ext_columns = columns(&client, "extensions").await;
    assert!(ext_columns.contains(&"tenant_external_id".to_string()));
    let versions: i64 = client
        .query_one("SELECT count(*) FROM _realtime.realtime_rs_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, MIGRATIONS.len() as i64);
    // The check constraint refuses a tenant without jwt_secret and jwt_jwks.
    let err = client
        .execute(
            "INSERT INTO _realtime.tenants (id, external_id, name) VALUES (gen_random_uuid(), 'x', 'x')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION),
        "{err:?}"
    );
}

/// Two nodes starting at once both succeed and the schema is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_both_succeed() {
    let name = common::fresh_database().await;
    let (a, b) = (db_for(&name).await, db_for(&name).await);
    let (ra, rb) = tokio::join!(
        tokio::spawn(async move { a.migrate().await }),
        tokio::spawn(async move { b.migrate().await })
    );
    let (ra, rb) = (ra.unwrap().unwrap(), rb.unwrap().unwrap());
    assert_eq!(
        ra.len() + rb.len(),
        MIGRATIONS.len(),
        "each version applied by exactly one: {ra:?} {rb:?}"
    );
    let client = common::connect(&name).await;
    let count: i64 = client
        .query_one("SELECT count(*) FROM _realtime.realtime_rs_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, MIGRATIONS.len() as i64);
}

/// A schema as the original server's Ecto migrations leave it (older column set, its own
/// constraint and index names, a tenant row with values encrypted by the original scheme)
/// survives our migrations, and its secrets decrypt.
#[tokio::test]
async fn existing_ecto_schema_is_kept_and_readable() {
    let name = common::fresh_database().await;
    let client = common::connect(&name).await;
    // Ciphertexts computed with
    // `printf %s TEXT | openssl enc -aes-128-ecb -K 73757061626173657265616c74696d65 -base64`
    // (key "supabaserealtime", the original's AES-128-ECB/PKCS#7 scheme).
    let jwt = openssl_ecb("legacy-jwt-secret-from-elixir");
    let host = openssl_ecb("127.0.0.1");
    let port = openssl_ecb("5432");
    let pass = openssl_ecb("s3cret");
    client
        .batch_execute(&format!(
            r#"
CREATE SCHEMA _realtime;
CREATE TABLE _realtime.schema_migrations (version bigint PRIMARY KEY, inserted_at timestamp(0));
INSERT INTO _realtime.schema_migrations VALUES (20210706140551, now());
CREATE TABLE _realtime.tenants (
    id uuid PRIMARY KEY, name text, external_id text, jwt_secret text,
    max_concurrent_users integer NOT NULL DEFAULT 10000,
    inserted_at timestamp(0) NOT NULL, updated_at timestamp(0) NOT NULL);
CREATE UNIQUE INDEX tenants_external_id_index ON _realtime.tenants (external_id);
CREATE TABLE _realtime.extensions (
    id uuid PRIMARY KEY, type text, settings jsonb,
    tenant_external_id text REFERENCES _realtime.tenants (external_id) ON DELETE CASCADE,
    inserted_at timestamp(0) NOT NULL, updated_at timestamp(0) NOT NULL);
CREATE UNIQUE INDEX extensions_tenant_external_id_type_index
    ON _realtime.extensions (tenant_external_id, type);
INSERT INTO _realtime.tenants VALUES
    ('6f1c2d0e-0000-4000-8000-000000000001', 'Legacy', 'legacy', '{jwt}', 321, now(), now());
INSERT INTO _realtime.extensions VALUES
    ('6f1c2d0e-0000-4000-8000-000000000002', 'postgres_cdc_rls',
     '{{"region":"us-east-1","db_host":"{host}","db_port":"{port}","db_name":"{host}",
        "db_user":"{host}","db_password":"{pass}","publication":"supabase_realtime",
        "slot_name":"supabase_realtime_replication_slot"}}',
     'legacy', now(), now());
"#
        ))
        .await
        .unwrap();

    let db = db_for(&name).await;
    db.migrate().await.unwrap();
    db.migrate().await.unwrap();
    let ecto_versions: i64 = client
        .query_one("SELECT count(*) FROM _realtime.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ecto_versions, 1, "Ecto's table untouched");

    let config = common::config(&name, &[]);
    let tenants = Tenants::new(
        db,
        Cipher::new(&config.encryption).unwrap(),
        config.limits.clone(),
        &config.tenants,
    );
    let tenant = tenants
        .get(&TenantId::from("legacy"))
        .await
        .unwrap()
        .expect("legacy tenant still there");
    assert_eq!(tenant.name, "Legacy");
    assert_eq!(tenant.limits.max_concurrent_users, 321);
    assert_eq!(
        tenant.limits.max_joins_per_second, 500,
        "new column default"
    );
    assert_eq!(
        tenant.jwt_secret.as_ref().unwrap().expose(),
        "legacy-jwt-secret-from-elixir"
    );
    let settings = tenants.db_settings(&tenant, &tenant.extensions[0]).unwrap();
    assert_eq!(settings.host, "127.0.0.1");
    assert_eq!(settings.port, 5432);
    assert_eq!(settings.password.expose(), "s3cret");
    assert!(settings.ssl_enforced);
}

/// A null limit column (a hand-edited or older schema) reads as the node's configured default,
/// the same value an API write fills in: joins/s is 100 (PROTOCOL.md 10.2), not the column's 500.
#[tokio::test]
async fn null_limit_columns_read_as_the_configured_defaults() {
    let name = common::fresh_database().await;
    let db = db_for(&name).await;
    db.migrate().await.unwrap();
    let open = |extra: &'static [(&'static str, &'static str)]| {
        let config = common::config(&name, extra);
        let db = db.clone();
        Tenants::new(
            db,
            Cipher::new(&config.encryption).unwrap(),
            config.limits.clone(),
            &config.tenants,
        )
    };
    open(&[])
        .upsert(None, &common::tenant_body("nulls"))
        .await
        .unwrap();
    common::connect(&name)
        .await
        .batch_execute(
            "ALTER TABLE _realtime.tenants ALTER COLUMN max_joins_per_second DROP NOT NULL,
                 ALTER COLUMN max_payload_size_in_kb DROP NOT NULL;
             UPDATE _realtime.tenants
                SET max_joins_per_second = NULL, max_payload_size_in_kb = NULL",
        )
        .await
        .unwrap();
    let id = TenantId::from("nulls");
    let tenant = open(&[]).get(&id).await.unwrap().unwrap();
    assert_eq!(tenant.limits.max_joins_per_second, 100);
    assert_eq!(tenant.limits.max_payload_size_in_kb, 3000);
    let tenant = open(&[("TENANT_MAX_JOINS_PER_SECOND", "77")])
        .get(&id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tenant.limits.max_joins_per_second, 77);
}

fn openssl_ecb(text: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args([
            "enc",
            "-aes-128-ecb",
            "-K",
            "73757061626173657265616c74696d65",
            "-base64",
            "-A",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `DB_AFTER_CONNECT_QUERY` runs on every new connection; `DB_IP_VERSION` resolves the host.
#[tokio::test]
async fn after_connect_query_and_ip_version_are_honoured() {
    let name = common::fresh_database().await;
    let config = common::config(
        &name,
        &[
            ("DB_HOST", "localhost"),
            ("DB_IP_VERSION", "ipv4"),
            ("DB_AFTER_CONNECT_QUERY", "SET search_path TO _realtime"),
        ],
    );
    let db = Db::connect(&config.db).await.unwrap();
    let client = db.client().await.unwrap();
    let path: String = client
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(path, "_realtime");
    let addr: Option<String> = client
        .query_one("SELECT host(inet_client_addr())", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(addr.as_deref(), Some("127.0.0.1"));
}
