//! The janitor against real Postgres (PROTOCOL.md 9.4): one run makes the missing upcoming day
//! partitions of `realtime.messages` and drops those dated before the retention cutoff, keeping
//! the recent rows and every table that is not a day partition of `realtime.messages`; a tenant
//! whose database is down or locked is logged with `JanitorFailedToDeleteOldMessages` and the
//! others are still cleaned; tenants another node owns are left alone; and a node started with
//! `RUN_JANITOR=true` runs it on its schedule.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use serde_json::{Value, json};

use realtime::config::JanitorConfig;
use realtime::db::{Db, TenantDbs, run_tenant_migrations};
use realtime::error::{ErrorCode, OperationalError};
use realtime::janitor::Janitor;
use realtime::tasks::Owner;
use realtime::tenants::{Cipher, Tenants};
use realtime::types::TenantId;

/// Everything logged in this test process, as text (one global subscriber).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buffer
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged_lines(needle: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    text.lines()
        .filter(|line| line.contains(needle))
        .map(str::to_string)
        .collect()
}

/// A registry on a fresh metadata database, its pools, and the metadata database's name.
async fn registry() -> (Tenants, TenantDbs, String) {
    logs();
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
    let dbs = TenantDbs::new(tenants.clone(), config.tenant_db.clone()).unwrap();
    (tenants, dbs, meta)
}

fn janitor_config(meta: &str, extra: &[(&str, &str)]) -> JanitorConfig {
    common::config(meta, extra).janitor
}

/// An upsert body for tenant `id` whose database is `dbname` on 127.0.0.1:`port`.
fn body(id: &str, port: u16, dbname: &str) -> Value {
    json!({"tenant": {
        "external_id": id,
        "jwt_secret": "tenant-jwt-secret-tenant-jwt-secret-000",
        "extensions": [{"type": "postgres_cdc_rls", "settings": {
            "region": "local", "db_host": "127.0.0.1", "db_port": port.to_string(),
            "db_name": dbname, "db_user": "postgres", "db_password": "postgres",
            "ssl_enforced": false,
        }}],
    }})
}

/// A tenant on a fresh, migrated database; returns a connection to it.
async fn tenant(tenants: &Tenants, id: &str) -> tokio_postgres::Client {
    let dbname = common::fresh_database().await;
    let mut client = common::connect(&dbname).await;
    run_tenant_migrations(&mut client, &TenantId::from(id))
        .await
        .expect("migrations");
    tenants
        .upsert(None, &body(id, common::pg().port, &dbname))
        .await
        .unwrap();
    client
}

/// Opens the tenant's pool (as a running node has it), so the janitor's run does not start
/// with the migrations' own partition pass.
async fn open_pool(tenants: &Tenants, dbs: &TenantDbs, id: &str) -> realtime::db::TenantPool {
    let record = tenants.get(&TenantId::from(id)).await.unwrap().unwrap();
    dbs.get(&record).await.expect("the pool opens")
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn today(client: &tokio_postgres::Client) -> NaiveDate {
    client
        .query_one("SELECT (now() AT TIME ZONE 'utc')::date", &[])
        .await
        .unwrap()
        .get(0)
}

fn name(day: NaiveDate) -> String {
    format!("messages_{}", day.format("%Y_%m_%d"))
}

fn days(today: NaiveDate, offsets: impl IntoIterator<Item = i64>) -> Vec<String> {
    offsets
        .into_iter()
        .map(|d| name(today + chrono::Duration::days(d)))
        .collect()
}

/// Every partition of `realtime.messages`, as `schema.name`, sorted.
async fn partitions(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT n.nspname || '.' || c.relname FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE i.inhparent = 'realtime.messages'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn in_realtime(names: &[String]) -> Vec<String> {
    names.iter().map(|n| format!("realtime.{n}")).collect()
}

/// Makes the day partition `today + offset` (outside the range the server makes) with `rows`
/// messages at noon of that day.
async fn old_partition(client: &tokio_postgres::Client, today: NaiveDate, offset: i64, rows: i64) {
    let day = today + chrono::Duration::days(offset);
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS realtime.{} PARTITION OF realtime.messages
               FOR VALUES FROM ('{day} 00:00:00') TO ('{} 00:00:00')",
            name(day),
            day + chrono::Duration::days(1)
        ))
        .await
        .unwrap();
    insert_rows(client, &format!("{day} 12:00:00"), rows).await;
}

async fn insert_rows(client: &tokio_postgres::Client, at: &str, rows: i64) {
    client
        .execute(
            "INSERT INTO realtime.messages (topic, extension, event, payload, inserted_at)
             SELECT 'room', 'broadcast', 'e', jsonb_build_object('n', g), $1::text::timestamp
               FROM generate_series(1, $2::bigint) g",
            &[&at, &rows],
        )
        .await
        .unwrap();
}

async fn drop_partitions(client: &tokio_postgres::Client, names: &[String]) {
    for n in names {
        client
            .batch_execute(&format!("DROP TABLE realtime.{n}"))
            .await
            .unwrap();
    }
}

/// Rows per partition, `schema.name` → count, sorted by name.
async fn rows(client: &tokio_postgres::Client) -> Vec<(String, i64)> {
    client
        .query(
            "SELECT tableoid::regclass::text, count(*) FROM realtime.messages GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// One run on a tenant with expired partitions (with rows), kept ones, decoys that are not day
/// partitions of `realtime.messages`, and the upcoming partitions missing: the upcoming ones are
/// made, exactly the expired ones dropped (the cutoff is the date 72 hours ago: today-3 stays,
/// today-4 goes), today's rows and the decoys stay. A second run has nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_makes_the_upcoming_partitions_and_drops_the_expired_ones() {
    let (tenants, dbs, meta) = registry().await;
    let client = tenant(&tenants, "clean-me").await;
    let _pool = open_pool(&tenants, &dbs, "clean-me").await;
    let today = today(&client).await;
    drop_partitions(&client, &days(today, 1..=3)).await;
    for offset in [-10, -5, -4, -3, -2] {
        old_partition(&client, today, offset, 2).await;
    }
    insert_rows(&client, &format!("{today} 00:00:01"), 3).await;
    client
        .batch_execute(
            "CREATE TABLE realtime.messages_2000_01_01 (x int);
             CREATE TABLE public.messages_2000_01_02 PARTITION OF realtime.messages
               FOR VALUES FROM ('2000-01-02') TO ('2000-01-03');
             CREATE TABLE realtime.messages_archive PARTITION OF realtime.messages
               FOR VALUES FROM ('2000-01-03') TO ('2000-01-04');
             CREATE TABLE realtime.messages_2000_01_05 PARTITION OF realtime.messages DEFAULT;
             CREATE TABLE public.messages_2000_01_06 (x int);",
        )
        .await
        .unwrap();
    insert_rows(&client, "2000-01-02 10:00:00", 1).await;
    insert_rows(&client, "2000-01-03 10:00:00", 1).await;

    let janitor = Janitor::new(
        tenants.clone(),
        dbs.clone(),
        janitor_config(&meta, &[]),
        |_| true,
    );
    let owner = Owner::new();
    let report = janitor.run(&owner).await.expect("the run");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let cleaned = report.cleaned("clean-me").expect("cleaned");
    assert_eq!(cleaned.created, 3, "today+1 .. today+3");
    assert_eq!(cleaned.dropped, days(today, [-10, -5, -4]));

    let mut expected = in_realtime(&days(today, -3..=3));
    expected.extend([
        "public.messages_2000_01_02".to_string(),
        "realtime.messages_2000_01_05".to_string(),
        "realtime.messages_archive".to_string(),
    ]);
    expected.sort();
    assert_eq!(partitions(&client).await, expected);
    let mut expected_rows: Vec<(String, i64)> = in_realtime(&days(today, [-3, -2]))
        .into_iter()
        .map(|n| (n, 2))
        .chain([
            (format!("realtime.{}", name(today)), 3),
            ("messages_2000_01_02".to_string(), 1),
            ("realtime.messages_archive".to_string(), 1),
        ])
        .collect();
    expected_rows.sort();
    let mut found_rows = rows(&client).await;
    // `public` is on the search path, so regclass prints that partition without its schema.
    found_rows.sort();
    assert_eq!(found_rows, expected_rows);
    for table in ["realtime.messages_2000_01_01", "public.messages_2000_01_06"] {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .unwrap()
            .get(0);
        assert!(exists, "{table} is not a partition and stays");
    }

    let again = janitor.run(&owner).await.expect("the second run");
    let cleaned = again.cleaned("clean-me").expect("cleaned again");
    assert_eq!((cleaned.created, cleaned.dropped.len()), (0, 0));
    assert_eq!(partitions(&client).await, expected);
    assert!(owner.shutdown(Duration::from_secs(5)).await);
    dbs.shutdown(Duration::from_secs(5)).await;
}

/// A tenant whose database refuses connections fails alone: it is logged with
/// `JanitorFailedToDeleteOldMessages`, and the tenants before and after it (one at a time, so
/// the run really goes on past the failure) are cleaned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_tenant_is_logged_and_the_others_are_cleaned() {
    let (tenants, dbs, meta) = registry().await;
    let first = tenant(&tenants, "before-unreachable").await;
    tenants
        .upsert(None, &body("unreachable-db", closed_port(), "nowhere"))
        .await
        .unwrap();
    let last = tenant(&tenants, "after-unreachable").await;
    let today = today(&first).await;
    for client in [&first, &last] {
        old_partition(client, today, -6, 1).await;
    }

    let config = janitor_config(
        &meta,
        &[
            ("JANITOR_CHUNK_SIZE", "2"),
            ("JANITOR_CLEANUP_MAX_CHILDREN", "1"),
        ],
    );
    let janitor = Janitor::new(tenants.clone(), dbs.clone(), config, |_| true);
    let owner = Owner::new();
    let report = janitor.run(&owner).await.expect("the run");
    assert_eq!(report.tenants, 3);
    let failure = report.failure("unreachable-db").expect("it failed");
    assert_eq!(failure.code(), ErrorCode::JanitorFailedToDeleteOldMessages);
    for (id, client) in [("before-unreachable", &first), ("after-unreachable", &last)] {
        let cleaned = report.cleaned(id).expect("cleaned");
        assert_eq!(cleaned.dropped, days(today, [-6]), "{id}");
        assert_eq!(
            partitions(client).await,
            in_realtime(&days(today, -1..=3)),
            "{id}"
        );
    }
    let lines = logged_lines("tenant=unreachable-db");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ERROR")
                && l.contains("error_code=JanitorFailedToDeleteOldMessages")),
        "{lines:#?}"
    );
    assert!(owner.shutdown(Duration::from_secs(5)).await);
    dbs.shutdown(Duration::from_secs(5)).await;
}

/// A tenant whose `realtime.messages` another session holds locked fails within its budget
/// (lock and statement timeouts, then the child timeout), logged; nothing of the janitor keeps
/// waiting on the server, and the other tenant is cleaned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_tenant_fails_within_its_budget_and_the_other_is_cleaned() {
    let (tenants, dbs, meta) = registry().await;
    let mut locked = tenant(&tenants, "locked-db").await;
    let free = tenant(&tenants, "free-db").await;
    // Open before the lock: this test is about the janitor's statements, not the migrations
    // of a first open.
    let _pool = open_pool(&tenants, &dbs, "locked-db").await;
    let today = today(&free).await;
    old_partition(&free, today, -7, 1).await;
    // Something to create, so the run needs the lock.
    drop_partitions(&locked, &days(today, [3])).await;
    let dbname: String = locked
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    let holder = locked.transaction().await.unwrap();
    holder
        .batch_execute("LOCK TABLE realtime.messages IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let config = janitor_config(
        &meta,
        &[
            ("JANITOR_CLEANUP_CHILDREN_TIMEOUT", "3000"),
            ("JANITOR_CLEANUP_MAX_CHILDREN", "2"),
        ],
    );
    let janitor = Janitor::new(tenants.clone(), dbs.clone(), config, |_| true);
    let owner = Owner::new();
    let report = janitor.run(&owner).await.expect("the run");
    let failure = report.failure("locked-db").expect("it failed");
    assert_eq!(failure.code(), ErrorCode::JanitorFailedToDeleteOldMessages);
    assert_eq!(
        report.cleaned("free-db").expect("cleaned").dropped,
        days(today, [-7])
    );
    assert!(
        !logged_lines("tenant=locked-db").is_empty(),
        "the failure is logged"
    );

    // The server stops the janitor's statement itself (lock_timeout): no session of ours is
    // left queued behind the lock, where it would hold up every later insert.
    let observer = common::connect("postgres").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = $1 AND application_name = 'realtime_rs'
                    AND wait_event_type = 'Lock'",
                &[&dbname],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "a janitor statement still waits");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder.rollback().await.unwrap();
    // Once the lock is gone the next run succeeds.
    let report = janitor.run(&owner).await.expect("the second run");
    assert_eq!(
        report.cleaned("locked-db").expect("cleaned").created,
        1,
        "today+3"
    );
    assert!(owner.shutdown(Duration::from_secs(5)).await);
    dbs.shutdown(Duration::from_secs(5)).await;
}

/// Tenants the ring gives another node are neither connected to nor cleaned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_another_node_owns_are_left_alone() {
    let (tenants, dbs, meta) = registry().await;
    let mine = tenant(&tenants, "owned-here").await;
    let theirs = tenant(&tenants, "owned-elsewhere").await;
    let today = today(&mine).await;
    for client in [&mine, &theirs] {
        old_partition(client, today, -5, 1).await;
    }
    let janitor = Janitor::new(
        tenants.clone(),
        dbs.clone(),
        janitor_config(&meta, &[]),
        |tenant: &TenantId| tenant.as_str() != "owned-elsewhere",
    );
    let owner = Owner::new();
    let report = janitor.run(&owner).await.expect("the run");
    assert_eq!(report.not_owned, vec![TenantId::from("owned-elsewhere")]);
    assert!(report.cleaned("owned-elsewhere").is_none());
    assert_eq!(
        report.cleaned("owned-here").expect("cleaned").dropped,
        days(today, [-5])
    );
    assert!(
        partitions(&theirs).await.contains(&format!(
            "realtime.{}",
            name(today - chrono::Duration::days(5))
        )),
        "the other node's tenant keeps its partition"
    );
    assert!(
        dbs.pool_of(&TenantId::from("owned-elsewhere")).is_none(),
        "no pool was opened for it"
    );
    assert!(owner.shutdown(Duration::from_secs(5)).await);
    dbs.shutdown(Duration::from_secs(5)).await;
}

/// A node started with `RUN_JANITOR=true` runs the janitor on its schedule (first run after
/// `JANITOR_RUN_AFTER_IN_MS`, then every period) and stops it at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_run_janitor_cleans_on_its_schedule() {
    logs();
    let (app, _meta) = common::start_app(&[
        ("RUN_JANITOR", "true"),
        ("JANITOR_RUN_AFTER_IN_MS", "100"),
        ("JANITOR_SCHEDULE_TIMER_IN_MS", "200"),
        ("JANITOR_SCHEDULE_RANDOMIZE", "false"),
    ])
    .await;
    let client = tenant(app.tenants(), "scheduled").await;
    let today = today(&client).await;
    old_partition(&client, today, -9, 1).await;
    let expired = format!("realtime.{}", name(today - chrono::Duration::days(9)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while partitions(&client).await.contains(&expired) {
        assert!(Instant::now() < deadline, "the janitor never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(partitions(&client).await, in_realtime(&days(today, -1..=3)));
    app.shutdown().await.expect("clean shutdown");
}
