//! Tenant databases against real Postgres: one pool per tenant opened once for concurrent
//! callers, pools closed by the tenant changes that need it and kept otherwise, fast typed
//! errors for unreachable databases, TLS, idempotent migrations that leave a Supabase `realtime`
//! schema alone, and the catalog queries on awkward names.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use realtime::db::catalog::{self, ReplicaIdentity, TableRef};
use realtime::db::{
    APPLICATION_NAME, Db, TENANT_MIGRATIONS, TenantDbError, TenantDbs, TenantPool,
    run_tenant_migrations,
};
use realtime::error::{ErrorCode, OperationalError};
use realtime::tenants::{Cipher, Tenant, TenantChange, Tenants};
use realtime::types::TenantId;

/// The advisory lock key the tenant migrations take ("rt-tnmig").
const MIGRATION_LOCK_KEY: i64 = i64::from_be_bytes(*b"rt-tnmig");

/// A tenant registry on a fresh metadata database, and the variables it was built from.
async fn registry() -> (Tenants, String) {
    let meta = common::fresh_database().await;
    let config = common::config(&meta, &[]);
    let db = Db::connect(&config.db).await.unwrap();
    db.migrate().await.unwrap();
    let tenants = Tenants::new(
        db,
        Cipher::new(&config.encryption).unwrap(),
        config.limits.clone(),
        &config.tenants,
    );
    (tenants, meta)
}

fn manager(tenants: &Tenants, meta: &str, extra: &[(&str, &str)]) -> TenantDbs {
    TenantDbs::new(tenants.clone(), common::config(meta, extra).tenant_db).unwrap()
}

/// An upsert body for tenant `id` whose database is `dbname` on 127.0.0.1:`port`.
fn body(id: &str, port: u16, dbname: &str, extra: Value) -> Value {
    let mut settings = json!({
        "region": "local", "db_host": "127.0.0.1", "db_port": port.to_string(),
        "db_name": dbname, "db_user": "postgres", "db_password": "postgres",
        "ssl_enforced": false,
    });
    if let (Some(settings), Some(extra)) = (settings.as_object_mut(), extra.as_object()) {
        settings.extend(extra.clone());
    }
    json!({"tenant": {
        "external_id": id,
        "jwt_secret": "tenant-jwt-secret-tenant-jwt-secret-000",
        "extensions": [{"type": "postgres_cdc_rls", "settings": settings}],
    }})
}

async fn create(tenants: &Tenants, body: Value) -> Arc<Tenant> {
    tenants.upsert(None, &body).await.unwrap().0
}

/// The tenant database of the shared cluster, a fresh one.
async fn tenant_with_db(tenants: &Tenants, id: &str, extra: Value) -> (Arc<Tenant>, String) {
    let dbname = common::fresh_database().await;
    let tenant = create(tenants, body(id, common::pg().port, &dbname, extra)).await;
    (tenant, dbname)
}

async fn our_connections(observer: &tokio_postgres::Client, dbname: &str) -> i64 {
    observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            &[&dbname, &APPLICATION_NAME],
        )
        .await
        .unwrap()
        .get(0)
}

async fn advisory_lock_waiters(observer: &tokio_postgres::Client, dbname: &str) -> i64 {
    observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = $2 AND wait_event = 'advisory'",
            &[&dbname, &APPLICATION_NAME],
        )
        .await
        .unwrap()
        .get(0)
}

async fn wait_closed(pool: &TenantPool) {
    tokio::time::timeout(Duration::from_secs(5), pool.closed())
        .await
        .expect("the pool was closed");
}

/// Concurrent callers share one open (one connection reaches the database while the open waits
/// for the migration lock); each tenant gets its own pool with the documented connection
/// settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pool_per_tenant_opened_once_for_concurrent_callers() {
    let (tenants, meta) = registry().await;
    let dbs = manager(&tenants, &meta, &[("TENANT_DB_QUERY_TIMEOUT_MS", "1234")]);
    let (t1, db1) = tenant_with_db(&tenants, "t1", json!({"db_pool": 3})).await;
    let (t2, db2) = tenant_with_db(&tenants, "t2", json!({})).await;
    let observer = common::connect("postgres").await;

    // Hold the migration lock of t1's database: the open waits inside its migration run.
    let locker = common::connect(&db1).await;
    locker
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .unwrap();
    let gets: Vec<_> = (0..16)
        .map(|_| {
            let (dbs, t1) = (dbs.clone(), t1.clone());
            tokio::spawn(async move { dbs.get(&t1).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while advisory_lock_waiters(&observer, &db1).await == 0 {
        assert!(Instant::now() < deadline, "no open reached the database");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give the other callers every chance to open connections of their own.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(our_connections(&observer, &db1).await, 1);
    assert_eq!(advisory_lock_waiters(&observer, &db1).await, 1);
    assert_eq!(dbs.opens(), 0);
    locker
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .unwrap();
    let mut pools = Vec::new();
    for get in gets {
        pools.push(get.await.unwrap().expect("the pool opens"));
    }
    assert!(pools.iter().all(|p| p.same_pool(&pools[0])));
    assert_eq!(dbs.opens(), 1);
    let p1 = &pools[0];
    assert_eq!(p1.tenant().as_str(), "t1");
    assert_eq!(p1.max_size(), 3, "db_pool sizes the pool");
    assert_eq!(p1.settings().name, db1);
    assert_eq!(p1.settings().publication, "supabase_realtime");

    let client = p1.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT current_database(), current_setting('application_name'),
                    current_setting('statement_timeout'),
                    (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), db1);
    assert_eq!(row.get::<_, String>(1), "realtime_rs");
    assert_eq!(row.get::<_, String>(2), "1234ms");
    assert!(
        !row.get::<_, bool>(3),
        "ssl_enforced=false on a server without TLS: plain"
    );
    drop(client);

    let p2 = dbs.get(&t2).await.unwrap();
    assert!(!p2.same_pool(p1));
    assert_eq!(p2.max_size(), 2, "TENANT_DB_POOL_SIZE by default");
    assert_eq!(dbs.opens(), 2);
    assert_eq!(dbs.open_pools(), 2);
    assert!(dbs.get(&t1).await.unwrap().same_pool(p1), "reused");
    assert_eq!(dbs.opens(), 2);
    assert_eq!(our_connections(&observer, &db2).await, 1);

    // A statement over the query timeout is cancelled with a typed error; the connection stays.
    let client = p2.get().await.unwrap();
    let err = client
        .query_one("SELECT pg_sleep(5)", &[])
        .await
        .unwrap_err();
    let err = TenantDbError::from(err);
    assert_eq!(err.code(), ErrorCode::QueryCanceled, "{err}");
    client.query_one("SELECT 1", &[]).await.unwrap();
    drop(client);

    assert!(dbs.shutdown(Duration::from_secs(5)).await);
    assert!(p1.is_closed() && p2.is_closed());
    assert!(matches!(p1.get().await, Err(TenantDbError::Closed(_))));
    assert!(matches!(
        dbs.get(&t1).await,
        Err(TenantDbError::ShuttingDown)
    ));
}

/// Deleted, reloaded, shut down or updated in its database settings: the pool closes. Updated
/// in anything else (or with the same settings written again): the pool stays.
#[tokio::test]
async fn pools_close_on_the_tenant_changes_that_need_it() {
    let (tenants, meta) = registry().await;
    let dbs = manager(&tenants, &meta, &[]);
    let (t1, db1) = tenant_with_db(&tenants, "c1", json!({})).await;
    let (t2, _) = tenant_with_db(&tenants, "c2", json!({})).await;
    let (t3, _) = tenant_with_db(&tenants, "c3", json!({})).await;
    let p1 = dbs.get(&t1).await.unwrap();
    let p2 = dbs.get(&t2).await.unwrap();

    let c1 = TenantId::from("c1");
    tenants
        .upsert(Some(&c1), &json!({"tenant": {"max_concurrent_users": 7}}))
        .await
        .unwrap();
    // The same settings written again (re-encrypted).
    tenants
        .upsert(None, &body("c1", common::pg().port, &db1, json!({})))
        .await
        .unwrap();
    // Events are handled in order: once c2's shutdown closed its pool, c1's updates were seen.
    tenants
        .signal(&TenantId::from("c2"), TenantChange::Shutdown)
        .await
        .unwrap();
    wait_closed(&p2).await;
    assert!(
        !p1.is_closed(),
        "updates without new DB settings keep the pool"
    );
    assert!(dbs.pool_of(&c1).unwrap().same_pool(&p1));
    assert!(dbs.pool_of(&TenantId::from("c2")).is_none());
    assert!(matches!(p2.get().await, Err(TenantDbError::Closed(_))));

    // New database settings: the pool closes; the next get opens one with them.
    let updated = tenants
        .upsert(
            None,
            &body("c1", common::pg().port, &db1, json!({"db_pool": 4})),
        )
        .await
        .unwrap()
        .0;
    wait_closed(&p1).await;
    let p1b = dbs.get(&updated).await.unwrap();
    assert!(!p1b.same_pool(&p1));
    assert_eq!(p1b.max_size(), 4);
    // A caller still holding the record from before the update gets the newer pool.
    assert!(dbs.get(&t1).await.unwrap().same_pool(&p1b));

    tenants.signal(&c1, TenantChange::Reloaded).await.unwrap();
    wait_closed(&p1b).await;

    let p3 = dbs.get(&t3).await.unwrap();
    assert!(tenants.delete(&TenantId::from("c3")).await.unwrap());
    wait_closed(&p3).await;
    assert_eq!(dbs.open_pools(), 0);
    assert_eq!(dbs.opens(), 4);
}

/// Refused, silent, TLS-less (with `ssl_enforced`) and wrongly authenticated databases fail
/// fast with typed errors, and nothing is kept for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_databases_fail_fast_with_typed_errors() {
    let (tenants, meta) = registry().await;
    let dbs = manager(&tenants, &meta, &[("TENANT_DB_CONNECT_TIMEOUT_MS", "300")]);

    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let refused = create(
        &tenants,
        body("refused", closed_port, "postgres", json!({})),
    )
    .await;
    let started = Instant::now();
    let err = dbs.get(&refused).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err.root(), TenantDbError::Unreachable { .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::UnableToConnectToTenantDatabase);
    assert_eq!(
        err.client_reason(),
        "UnableToConnectToTenantDatabase: Realtime was unable to connect to the project database"
    );

    // Accepts TCP and never answers: the connect timeout ends it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let hanging = create(&tenants, body("silent", silent_port, "postgres", json!({}))).await;
    let started = Instant::now();
    let err = dbs.get(&hanging).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(
        matches!(err.root(), TenantDbError::ConnectTimeout { .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::UnableToConnectToTenantDatabase);
    holder.abort();

    // ssl_enforced against a server without TLS: no connection.
    let port = common::pg().port;
    let tls_only = create(
        &tenants,
        body("tls-only", port, "postgres", json!({"ssl_enforced": true})),
    )
    .await;
    let err = dbs.get(&tls_only).await.unwrap_err();
    assert!(
        matches!(err.root(), TenantDbError::Unreachable { .. }),
        "{err:?}"
    );

    let mut wrong = body("wrong-password", port, "postgres", json!({}));
    wrong["tenant"]["extensions"][0]["settings"]["db_password"] = json!("nope");
    let wrong = create(&tenants, wrong).await;
    let err = dbs.get(&wrong).await.unwrap_err();
    assert!(
        matches!(err.root(), TenantDbError::Unreachable { .. }),
        "{err:?}"
    );

    assert_eq!(dbs.opens(), 0);
    assert_eq!(dbs.open_pools(), 0);
    for id in ["refused", "silent", "tls-only", "wrong-password"] {
        assert!(dbs.pool_of(&TenantId::from(id)).is_none());
    }
    // No extension at all.
    let mut none = Tenant::clone(&refused);
    none.extensions.clear();
    assert!(matches!(
        dbs.get(&none).await,
        Err(TenantDbError::NoDatabase(_))
    ));
}

/// A server certificate made with openssl for an owned cluster; returns false when openssl is
/// missing.
fn enable_tls(pg: &common::Pg) -> bool {
    let data = pg.root().join("data");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(data.join("server.key"))
        .arg("-out")
        .arg(data.join("server.crt"))
        .output();
    if !made.is_ok_and(|out| out.status.success()) {
        return false;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        data.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    #[allow(unsafe_code, reason = "a libc call std does not wrap")]
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        let status = std::process::Command::new("chown")
            .arg("postgres")
            .arg(data.join("server.key"))
            .arg(data.join("server.crt"))
            .status()
            .unwrap();
        assert!(status.success());
    }
    true
}

/// With a server offering TLS, both `ssl_enforced=true` (require) and `false` (prefer) connect
/// encrypted through rustls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_used_when_the_server_offers_it() {
    let pg = common::Pg::start();
    assert!(enable_tls(&pg), "openssl is needed for this test");
    let admin = pg.connect("postgres").await;
    admin
        .batch_execute("ALTER SYSTEM SET ssl = on")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let on: String = pg
            .connect("postgres")
            .await
            .query_one("SHOW ssl", &[])
            .await
            .unwrap()
            .get(0);
        if on == "on" {
            break;
        }
        assert!(Instant::now() < deadline, "ssl never turned on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (tenants, meta) = registry().await;
    let dbs = manager(&tenants, &meta, &[]);
    for (id, enforced) in [("tls-require", true), ("tls-prefer", false)] {
        let tenant = create(
            &tenants,
            body(id, pg.port, "postgres", json!({"ssl_enforced": enforced})),
        )
        .await;
        let pool = dbs
            .get(&tenant)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let client = pool.get().await.unwrap();
        let ssl: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl, "{id} is encrypted");
    }
    dbs.shutdown(Duration::from_secs(5)).await;
}

const SUPABASE_LIKE: &str = r#"
CREATE SCHEMA realtime;
CREATE TABLE realtime.schema_migrations (version bigint PRIMARY KEY, inserted_at timestamp(0));
INSERT INTO realtime.schema_migrations VALUES (20211116024918, now()), (20240919163303, now());
CREATE TABLE realtime.subscription (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id uuid NOT NULL,
    entity regclass NOT NULL,
    claims jsonb NOT NULL,
    created_at timestamp NOT NULL DEFAULT timezone('utc', now())
);
INSERT INTO realtime.subscription (subscription_id, entity, claims)
    VALUES (gen_random_uuid(), 'pg_class'::regclass, '{"role":"anon"}');
"#;

/// Migrations run concurrently (also across two databases of one cluster racing for the role),
/// apply each version once, are no-ops the second time, and leave a Supabase `realtime` schema
/// as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_migrations_are_idempotent_and_leave_supabase_objects_alone() {
    // An owned cluster: the role `supabase_realtime_admin` does not exist there yet.
    let pg = common::Pg::start();
    let supa = pg.create_database().await;
    let fresh = pg.create_database().await;
    pg.connect(&supa)
        .await
        .batch_execute(SUPABASE_LIKE)
        .await
        .unwrap();
    let tenant = TenantId::from("m");
    let mut runs = Vec::new();
    for dbname in [&supa, &fresh, &supa, &fresh, &supa, &fresh] {
        let mut client = pg.connect(dbname).await;
        let (tenant, dbname) = (tenant.clone(), dbname.clone());
        runs.push(tokio::spawn(async move {
            let applied = run_tenant_migrations(&mut client, &tenant).await;
            (dbname, applied)
        }));
    }
    let all_versions: Vec<i64> = TENANT_MIGRATIONS.iter().map(|m| m.version).collect();
    let (mut on_supa, mut on_fresh) = (Vec::new(), Vec::new());
    for run in runs {
        let (dbname, applied) = run.await.unwrap();
        let applied = applied.unwrap_or_else(|e| panic!("{dbname}: {e}"));
        if dbname == supa {
            on_supa.extend(applied);
        } else {
            on_fresh.extend(applied);
        }
    }
    assert_eq!(on_supa, all_versions, "each version applied once");
    assert_eq!(on_fresh, all_versions, "each version applied once");

    for dbname in [&supa, &fresh] {
        let mut client = pg.connect(dbname).await;
        assert_eq!(
            run_tenant_migrations(&mut client, &tenant).await.unwrap(),
            Vec::<i64>::new(),
            "second run on {dbname}"
        );
        let recorded: Vec<i64> = client
            .query(
                "SELECT version FROM realtime.rs_schema_migrations ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(recorded, all_versions);
    }
    let client = pg.connect(&supa).await;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM realtime.subscription),
                    (SELECT array_agg(version ORDER BY version) FROM realtime.schema_migrations),
                    (SELECT count(*) FROM information_schema.columns
                     WHERE table_schema = 'realtime' AND table_name = 'schema_migrations'),
                    (SELECT rolcanlogin FROM pg_roles WHERE rolname = 'supabase_realtime_admin')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1, "subscriptions untouched");
    assert_eq!(
        row.get::<_, Vec<i64>>(1),
        vec![20211116024918, 20240919163303],
        "Supabase's schema_migrations untouched"
    );
    assert_eq!(row.get::<_, i64>(2), 2, "its columns too");
    assert!(!row.get::<_, bool>(3), "the admin role exists, NOLOGIN");
}

async fn oid_of(client: &tokio_postgres::Client, name: &str) -> u32 {
    client
        .query_one("SELECT $1::text::regclass::oid", &[&name])
        .await
        .unwrap()
        .get(0)
}

const ODD_SCHEMA: &str = r#"
CREATE SCHEMA "My Schema";
CREATE TABLE "My Schema"."Tëst ""quoted"" Table" (
    id bigint PRIMARY KEY,
    gone int,
    "Mixed Case" text,
    "ünï çødé" int[],
    doubled bigint GENERATED ALWAYS AS (id * 2) STORED
);
ALTER TABLE "My Schema"."Tëst ""quoted"" Table" DROP COLUMN gone;
ALTER TABLE "My Schema"."Tëst ""quoted"" Table" REPLICA IDENTITY FULL;
ALTER TABLE "My Schema"."Tëst ""quoted"" Table" ENABLE ROW LEVEL SECURITY;
CREATE TABLE public.plain (a int, b text);
CREATE TABLE public."Plain" (k1 int, k2 int, v text, PRIMARY KEY (k2, k1));
ALTER TABLE public."Plain" REPLICA IDENTITY NOTHING;
CREATE TABLE public.with_index (id int NOT NULL, v text);
CREATE UNIQUE INDEX with_index_id ON public.with_index (id);
ALTER TABLE public.with_index REPLICA IDENTITY USING INDEX with_index_id;
CREATE VIEW public.a_view AS SELECT 1 AS one;
CREATE PUBLICATION "Pub ""x"" ü" FOR TABLE "My Schema"."Tëst ""quoted"" Table", public."Plain";
CREATE PUBLICATION empty_pub;
CREATE ROLE "Odd Role ü" NOLOGIN;
GRANT SELECT (id, "ünï çødé") ON "My Schema"."Tëst ""quoted"" Table" TO "Odd Role ü";
GRANT SELECT ON public.plain TO "Odd Role ü";
"#;

/// Publication tables, table info and column privileges with quotes, spaces, Unicode and upper
/// case in every name, bound as parameters.
#[tokio::test]
async fn catalog_queries_handle_awkward_names() {
    let dbname = common::fresh_database().await;
    let client = common::connect(&dbname).await;
    client.batch_execute(ODD_SCHEMA).await.unwrap();
    let odd = oid_of(&client, r#""My Schema"."Tëst ""quoted"" Table""#).await;
    let upper = oid_of(&client, r#"public."Plain""#).await;
    let lower = oid_of(&client, "public.plain").await;
    assert_ne!(upper, lower);

    let publication = catalog::publication_tables(&client, "Pub \"x\" ü")
        .await
        .unwrap();
    assert!(publication.exists);
    let tables: Vec<(&str, &str, u32)> = publication
        .tables
        .iter()
        .map(|t| (t.schema.as_str(), t.table.as_str(), t.oid))
        .collect();
    assert_eq!(
        tables,
        [
            ("My Schema", "Tëst \"quoted\" Table", odd),
            ("public", "Plain", upper)
        ]
    );
    let empty = catalog::publication_tables(&client, "empty_pub")
        .await
        .unwrap();
    assert!(empty.exists && empty.tables.is_empty());
    let missing = catalog::publication_tables(&client, "supabase_realtime")
        .await
        .unwrap();
    assert!(!missing.exists && missing.tables.is_empty());
    let folded = catalog::publication_tables(&client, "pub \"x\" ü")
        .await
        .unwrap();
    assert!(!folded.exists, "names are exact, not case-folded");

    let by_name = catalog::table_info(
        &client,
        TableRef::Name {
            schema: "My Schema",
            table: "Tëst \"quoted\" Table",
        },
    )
    .await
    .unwrap()
    .expect("the table exists");
    let by_oid = catalog::table_info(&client, TableRef::Oid(odd))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_name, by_oid);
    assert_eq!(by_name.oid, odd);
    assert_eq!(by_name.schema, "My Schema");
    assert_eq!(by_name.name, "Tëst \"quoted\" Table");
    assert_eq!(by_name.replica_identity, ReplicaIdentity::Full);
    assert!(by_name.rls_enabled);
    let columns: Vec<(i16, &str, &str, bool)> = by_name
        .columns
        .iter()
        .map(|c| (c.attnum, c.name.as_str(), c.type_name.as_str(), c.is_pkey))
        .collect();
    assert_eq!(
        columns,
        [
            (1, "id", "int8", true),
            (3, "Mixed Case", "text", false),
            (4, "ünï çødé", "_int4", false),
        ],
        "dropped and generated columns are left out"
    );
    assert_eq!(by_name.columns[0].type_oid, 20);
    assert_eq!(by_name.columns[2].type_oid, 1007);

    let plain_upper = catalog::table_info(
        &client,
        TableRef::Name {
            schema: "public",
            table: "Plain",
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(plain_upper.oid, upper);
    assert_eq!(plain_upper.replica_identity, ReplicaIdentity::Nothing);
    assert!(!plain_upper.rls_enabled);
    let pkeys: Vec<(&str, bool)> = plain_upper
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.is_pkey))
        .collect();
    assert_eq!(pkeys, [("k1", true), ("k2", true), ("v", false)]);
    let plain = catalog::table_info(&client, TableRef::Oid(lower))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plain.replica_identity, ReplicaIdentity::Default);
    assert!(plain.columns.iter().all(|c| !c.is_pkey));
    let indexed = catalog::table_info(
        &client,
        TableRef::Name {
            schema: "public",
            table: "with_index",
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(indexed.replica_identity, ReplicaIdentity::Index);
    for missing in [
        TableRef::Name {
            schema: "public",
            table: "PLAIN",
        },
        TableRef::Name {
            schema: "public",
            table: "a_view",
        },
        TableRef::Name {
            schema: "public'; DROP TABLE public.plain; --",
            table: "plain",
        },
        TableRef::Oid(1),
    ] {
        assert!(
            catalog::table_info(&client, missing)
                .await
                .unwrap()
                .is_none(),
            "{missing:?}"
        );
    }

    assert!(catalog::role_exists(&client, "Odd Role ü").await.unwrap());
    assert!(!catalog::role_exists(&client, "odd role ü").await.unwrap());
    assert!(!catalog::role_exists(&client, "nobody here").await.unwrap());
    assert!(catalog::role_exists(&client, "postgres").await.unwrap());
    assert_eq!(
        catalog::selectable_columns(&client, "Odd Role ü", odd)
            .await
            .unwrap(),
        ["id", "ünï çødé"],
        "a column-level grant covers its columns only"
    );
    assert_eq!(
        catalog::selectable_columns(&client, "Odd Role ü", lower)
            .await
            .unwrap(),
        ["a", "b"],
        "a table-level grant covers every column"
    );
    assert!(
        catalog::selectable_columns(&client, "Odd Role ü", upper)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        catalog::selectable_columns(&client, "nobody here", odd)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        catalog::selectable_columns(&client, "postgres", odd)
            .await
            .unwrap(),
        ["id", "Mixed Case", "ünï çødé"]
    );
}

/// The node builds its `TenantDbs` and closes the pools on shutdown; the seeded tenant's
/// database (the metadata database itself) takes the tenant migrations beside `_realtime`.
#[tokio::test]
async fn the_node_closes_its_tenant_pools_on_shutdown() {
    let (app, dbname) = common::start_app(&[("SEED_SELF_HOST", "true")]).await;
    let tenant = app
        .tenants()
        .get(&TenantId::from(testkit::SELF_HOST))
        .await
        .unwrap()
        .expect("the seeded tenant");
    let pool = app.tenant_dbs().get(&tenant).await.unwrap();
    assert_eq!(pool.settings().name, dbname);
    let client = pool.get().await.unwrap();
    let versions: i64 = client
        .query_one("SELECT count(*) FROM realtime.rs_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, TENANT_MIGRATIONS.len() as i64);
    drop(client);
    app.shutdown().await.unwrap();
    assert!(pool.is_closed());
}

async fn wait_for_connections(observer: &tokio_postgres::Client, dbname: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while our_connections(observer, dbname).await != want {
        assert!(
            Instant::now() < deadline,
            "{dbname} never had {want} of our connections"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Past `TENANT_DB_MAX_POOLS` the least recently used unused pool is closed; a held pool is only
/// forgotten and keeps working. Unused pools close after the idle timeout; held ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_are_bounded_and_idle_ones_close() {
    let (tenants, meta) = registry().await;
    let observer = common::connect("postgres").await;
    let dbs = manager(&tenants, &meta, &[("TENANT_DB_MAX_POOLS", "1")]);
    let (b1, db1) = tenant_with_db(&tenants, "b1", json!({})).await;
    let (b2, db2) = tenant_with_db(&tenants, "b2", json!({})).await;
    let (b3, _) = tenant_with_db(&tenants, "b3", json!({})).await;
    drop(dbs.get(&b1).await.unwrap());
    assert_eq!(our_connections(&observer, &db1).await, 1);
    let held = dbs.get(&b2).await.unwrap();
    assert!(dbs.pool_of(&TenantId::from("b1")).is_none());
    wait_for_connections(&observer, &db1, 0).await;
    let p3 = dbs.get(&b3).await.unwrap();
    assert_eq!(dbs.open_pools(), 1);
    assert!(dbs.pool_of(&TenantId::from("b2")).is_none());
    assert!(!held.is_closed(), "a held pool is forgotten, not closed");
    held.get()
        .await
        .unwrap()
        .query_one("SELECT 1", &[])
        .await
        .unwrap();
    assert_eq!(our_connections(&observer, &db2).await, 1);
    drop((held, p3));
    dbs.shutdown(Duration::from_secs(5)).await;

    let dbs = manager(&tenants, &meta, &[("TENANT_DB_IDLE_TIMEOUT_MS", "1000")]);
    drop(dbs.get(&b1).await.unwrap());
    let held = dbs.get(&b2).await.unwrap();
    wait_for_connections(&observer, &db1, 1).await;
    // The sweeper runs every second: the unused pool goes, the held one stays (its idle
    // connection is closed, the pool is not).
    wait_for_connections(&observer, &db1, 0).await;
    assert!(dbs.pool_of(&TenantId::from("b1")).is_none());
    assert!(!held.is_closed());
    assert!(dbs.pool_of(&TenantId::from("b2")).unwrap().same_pool(&held));
    held.get()
        .await
        .unwrap()
        .query_one("SELECT 1", &[])
        .await
        .unwrap();
    dbs.shutdown(Duration::from_secs(5)).await;
}
