//! The per-tenant replication stream against a real PostgreSQL 15: a permanent pgoutput slot,
//! transactions in commit order, confirmation and re-delivery, slot contention, the WAL lag
//! bound, the idle/retain lifecycle, a database that is down at start, and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use realtime::config::{ReplicationConfig, Secret};
use realtime::postgres_changes::replication::{
    Ensured, LocalOwnership, LossReason, Lsn, ReplicationError, ReplicationStats,
    ReplicationTarget, SlotName, StreamEvent, StreamHandle, StreamManager, StreamOwnership,
    StreamStatus, TenantStream,
};
use realtime::tasks::Owner;
use realtime::types::TenantId;
use testkit::Pg;
use tokio::sync::mpsc::Receiver;

const PUBLICATION: &str = "rt_pub";
const WAIT: Duration = Duration::from_secs(15);

static SLOTS: AtomicU32 = AtomicU32::new(0);

fn unique_slot(test: &str) -> SlotName {
    let n = SLOTS.fetch_add(1, Ordering::Relaxed);
    SlotName::for_tenant(
        &format!("rt_{test}"),
        Some(&format!("{}_{n}", std::process::id())),
    )
    .expect("a valid slot name")
}

fn config() -> ReplicationConfig {
    ReplicationConfig {
        idle_timeout: Duration::from_millis(200),
        slot_retain: Duration::from_millis(800),
        lag_check_interval: Duration::from_millis(200),
        status_interval: Duration::from_millis(200),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..ReplicationConfig::default()
    }
}

fn target(pg: &Pg, db: &str, slot: &SlotName) -> ReplicationTarget {
    ReplicationTarget {
        host: "127.0.0.1".into(),
        port: pg.port,
        user: "postgres".into(),
        password: Secret::new("postgres"),
        dbname: db.into(),
        tls: false,
        slot: slot.clone(),
        publication: PUBLICATION.into(),
        temporary_slot: false,
    }
}

/// A fresh database with a published table `items` and an unpublished one `other`.
async fn database(pg: &Pg) -> (String, tokio_postgres::Client) {
    let db = pg.create_database().await;
    let client = pg.connect(&db).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE items (id serial PRIMARY KEY, body text NOT NULL);
             CREATE TABLE other (id serial PRIMARY KEY, body text NOT NULL);
             CREATE PUBLICATION {PUBLICATION} FOR TABLE items;"
        ))
        .await
        .expect("schema");
    (db, client)
}

async fn insert(client: &tokio_postgres::Client, bodies: &[&str]) {
    let tx = format!(
        "BEGIN; {} COMMIT;",
        bodies
            .iter()
            .map(|b| format!("INSERT INTO items (body) VALUES ('{b}');"))
            .collect::<String>()
    );
    client.batch_execute(&tx).await.expect("insert");
}

async fn next(events: &mut Receiver<StreamEvent>) -> StreamEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("the stream is open")
}

/// One committed transaction as the consumer sees it.
#[derive(Debug)]
struct Txn {
    data: Vec<Bytes>,
    end_lsn: Lsn,
}

impl Txn {
    fn contains(&self, body: &str) -> bool {
        self.data
            .iter()
            .any(|d| d.windows(body.len()).any(|w| w == body.as_bytes()))
    }
}

/// Reads up to the next commit, skipping status events; a `Disconnected` discards the
/// transaction in progress (as a real consumer must).
async fn next_txn(events: &mut Receiver<StreamEvent>) -> Txn {
    let mut data = Vec::new();
    let mut in_txn = false;
    loop {
        match next(events).await {
            StreamEvent::Begin { .. } => {
                assert!(!in_txn, "Begin inside a transaction");
                in_txn = true;
            }
            StreamEvent::Data { bytes, .. } => {
                assert!(in_txn, "Data outside a transaction");
                data.push(bytes);
            }
            StreamEvent::Commit { end_lsn, .. } => {
                assert!(in_txn, "Commit without Begin");
                return Txn { data, end_lsn };
            }
            StreamEvent::Disconnected { .. } => {
                in_txn = false;
                data.clear();
            }
            StreamEvent::Connected { .. } | StreamEvent::Message { .. } => {}
            StreamEvent::Lost { reason } => panic!("unexpected loss: {reason}"),
        }
    }
}

async fn expect_connected(events: &mut Receiver<StreamEvent>) -> Lsn {
    match next(events).await {
        StreamEvent::Connected { start_lsn } => start_lsn,
        other => panic!("expected Connected, got {other:?}"),
    }
}

/// `(temporary, plugin, active, confirmed_flush_lsn)` of a slot, if it exists.
async fn slot_row(
    client: &tokio_postgres::Client,
    slot: &SlotName,
) -> Option<(bool, String, bool, Lsn)> {
    client
        .query_opt(
            "SELECT temporary, plugin::text, active, confirmed_flush_lsn::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot.as_str()],
        )
        .await
        .expect("slot query")
        .map(|r| {
            let lsn: String = r.get(3);
            (r.get(0), r.get(1), r.get(2), Lsn::parse(&lsn).unwrap())
        })
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn confirmed_flush(client: &tokio_postgres::Client, slot: &SlotName) -> Lsn {
    slot_row(client, slot).await.expect("the slot exists").3
}

async fn drop_slot(client: &tokio_postgres::Client, slot: &SlotName) {
    let _ = client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1 AND NOT active",
            &[&slot.as_str()],
        )
        .await;
}

fn spawn(owner: &Owner, target: ReplicationTarget) -> (StreamHandle, Receiver<StreamEvent>) {
    TenantStream::spawn(
        owner,
        target,
        &config(),
        Arc::new(ReplicationStats::default()),
    )
}

async fn wait_status(handle: &StreamHandle, what: &str, pred: impl Fn(&StreamStatus) -> bool) {
    let mut status = handle.watch_status();
    tokio::time::timeout(WAIT, status.wait_for(|s| pred(s)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}; last {:?}", handle.status()))
        .expect("status");
}

#[tokio::test]
async fn a_permanent_slot_streams_transactions_in_commit_order_and_is_reused() {
    let pg = testkit::pg();
    let (db, client) = database(pg).await;
    let slot = unique_slot("order");
    let owner = Owner::new();
    let manager = StreamManager::new(&owner, config(), Arc::new(LocalOwnership));
    let tenant = TenantId::new("order-tenant");
    let Ensured::Started { handle, mut events } = manager
        .ensure_started(&tenant, target(pg, &db, &slot))
        .unwrap()
    else {
        panic!("a first subscriber starts the stream");
    };
    expect_connected(&mut events).await;
    let (temporary, plugin, active, _) = slot_row(&client, &slot).await.expect("slot created");
    assert!(!temporary, "the slot is permanent");
    assert_eq!(plugin, "pgoutput");
    assert!(active);
    assert_eq!(manager.stats().slots_created(), 1);

    // A second subscriber shares the running stream.
    assert!(matches!(
        manager
            .ensure_started(&tenant, target(pg, &db, &slot))
            .unwrap(),
        Ensured::Running { .. }
    ));

    insert(&client, &["tx0"]).await;
    insert(&client, &["tx1a", "tx1b"]).await;
    client
        .batch_execute("INSERT INTO other (body) VALUES ('unpublished')")
        .await
        .unwrap();
    insert(&client, &["tx2"]).await;
    insert(&client, &["tx3"]).await;
    let mut last = Lsn::ZERO;
    for expected in [&["tx0"][..], &["tx1a", "tx1b"], &["tx2"], &["tx3"]] {
        let txn = next_txn(&mut events).await;
        assert!(txn.end_lsn > last, "commits in WAL order");
        last = txn.end_lsn;
        for body in expected {
            assert!(txn.contains(body), "{body} in {txn:?}");
        }
        assert!(!txn.contains("unpublished"));
    }
    handle.confirm(last);
    eventually(
        "confirmed_flush_lsn reaches the confirmed commit",
        || async { confirmed_flush(&client, &slot).await >= last },
    )
    .await;

    // A node restart: the slot stays, a new manager resumes from it.
    manager.shutdown().await;
    assert!(handle.is_stopped());
    let (_, _, active, confirmed) = slot_row(&client, &slot).await.expect("slot kept");
    assert!(!active);
    assert!(confirmed >= last);
    insert(&client, &["while-down"]).await;

    let manager = StreamManager::new(&owner, config(), Arc::new(LocalOwnership));
    let Ensured::Started { mut events, .. } = manager
        .ensure_started(&tenant, target(pg, &db, &slot))
        .unwrap()
    else {
        panic!("a new manager starts a stream");
    };
    let start = expect_connected(&mut events).await;
    assert!(start >= last, "resumes at the confirmed position");
    let txn = next_txn(&mut events).await;
    assert!(txn.contains("while-down"), "{txn:?}");
    assert_eq!(manager.stats().slots_created(), 0, "the slot is reused");
    manager.shutdown().await;
    drop_slot(&client, &slot).await;
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn unconfirmed_transactions_are_redelivered_after_the_walsender_dies() {
    let pg = testkit::pg();
    let (db, client) = database(pg).await;
    let slot = unique_slot("redeliver");
    let owner = Owner::new();
    let (handle, mut events) = spawn(&owner, target(pg, &db, &slot));
    expect_connected(&mut events).await;

    insert(&client, &["first"]).await;
    let first = next_txn(&mut events).await;
    assert!(first.contains("first"));
    handle.confirm(first.end_lsn);
    eventually("the first commit is confirmed", || async {
        confirmed_flush(&client, &slot).await >= first.end_lsn
    })
    .await;

    insert(&client, &["second"]).await;
    let second = next_txn(&mut events).await;
    assert!(second.contains("second"));
    // Not confirmed: Postgres must not hear of it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(confirmed_flush(&client, &slot).await < second.end_lsn);

    client
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot.as_str()],
        )
        .await
        .unwrap();
    match next(&mut events).await {
        StreamEvent::Disconnected { .. } => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let start = expect_connected(&mut events).await;
    assert!(start >= first.end_lsn && start < second.end_lsn);
    let again = next_txn(&mut events).await;
    assert!(
        again.contains("second"),
        "the unconfirmed transaction is re-sent"
    );
    assert!(!again.contains("first"), "the confirmed one is not");
    assert_eq!(again.end_lsn, second.end_lsn);

    handle.confirm(again.end_lsn);
    eventually("the re-sent commit is confirmed", || async {
        confirmed_flush(&client, &slot).await >= again.end_lsn
    })
    .await;
    handle.shutdown().await;
    drop_slot(&client, &slot).await;
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_reports_the_confirmed_position() {
    let pg = testkit::pg();
    let (db, client) = database(pg).await;
    let slot = unique_slot("shutdown");
    let owner = Owner::new();
    let cfg = ReplicationConfig {
        status_interval: Duration::from_secs(3),
        ..config()
    };
    let (handle, mut events) = TenantStream::spawn(
        &owner,
        target(pg, &db, &slot),
        &cfg,
        Arc::new(ReplicationStats::default()),
    );
    expect_connected(&mut events).await;
    insert(&client, &["last words"]).await;
    let txn = next_txn(&mut events).await;
    handle.confirm(txn.end_lsn);
    handle.shutdown().await;
    assert!(handle.is_stopped());
    let (_, _, active, confirmed) = slot_row(&client, &slot).await.expect("slot kept");
    assert!(!active, "the walsender let go of the slot");
    assert!(
        confirmed >= txn.end_lsn,
        "shutdown reported {} (confirmed_flush_lsn {confirmed})",
        txn.end_lsn
    );
    drop_slot(&client, &slot).await;
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn two_managers_racing_for_one_slot_take_turns() {
    let pg = testkit::pg();
    let (db, client) = database(pg).await;
    let slot = unique_slot("race");
    let owner = Owner::new();
    let tenant = TenantId::new("race-tenant");
    let a = StreamManager::new(&owner, config(), Arc::new(LocalOwnership));
    let b = StreamManager::new(&owner, config(), Arc::new(LocalOwnership));
    let Ensured::Started {
        handle: ha,
        events: mut ea,
    } = a.ensure_started(&tenant, target(pg, &db, &slot)).unwrap()
    else {
        panic!("started");
    };
    let Ensured::Started {
        handle: hb,
        events: mut eb,
    } = b.ensure_started(&tenant, target(pg, &db, &slot)).unwrap()
    else {
        panic!("started");
    };
    let streaming = |s: &StreamStatus| matches!(s, StreamStatus::Streaming { .. });
    let (winner, loser, loser_events, loser_manager) = tokio::select! {
        _ = wait_status(&ha, "a streams", streaming) => (&ha, &hb, &mut eb, &b),
        _ = wait_status(&hb, "b streams", streaming) => (&hb, &ha, &mut ea, &a),
    };
    wait_status(loser, "the other one is refused", |s| {
        matches!(
            s,
            StreamStatus::Retrying {
                error: ReplicationError::SlotBeingUsed { .. },
                ..
            }
        )
    })
    .await;
    assert!(streaming(&winner.status()));
    assert!(loser_manager.stats().reconnects() >= 1);

    // The winner goes away: the loser's retries take the slot over.
    winner.shutdown().await;
    wait_status(loser, "the other one streams", streaming).await;
    expect_connected(loser_events).await;
    insert(&client, &["after handover"]).await;
    assert!(next_txn(loser_events).await.contains("after handover"));
    a.shutdown().await;
    b.shutdown().await;
    drop_slot(&client, &slot).await;
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_slot_over_the_lag_bound_is_recreated_and_the_loss_reported() {
    let pg = testkit::pg();
    let (db, client) = database(pg).await;
    let slot = unique_slot("lag");
    let owner = Owner::new();
    let cfg = ReplicationConfig {
        max_lag_bytes: 256 * 1024,
        ..config()
    };
    let stats = Arc::new(ReplicationStats::default());
    let (handle, mut events) =
        TenantStream::spawn(&owner, target(pg, &db, &slot), &cfg, stats.clone());
    expect_connected(&mut events).await;
    let before = confirmed_flush(&client, &slot).await;

    // ~2 MB of WAL that the consumer reads but never confirms.
    client
        .batch_execute(
            "INSERT INTO items (body) SELECT repeat('x', 1000) FROM generate_series(1, 2000)",
        )
        .await
        .unwrap();
    let reason = loop {
        match next(&mut events).await {
            StreamEvent::Lost { reason } => break reason,
            StreamEvent::Connected { .. } => panic!("reconnected without reporting the loss"),
            _ => {}
        }
    };
    match reason {
        LossReason::LagExceeded {
            retained_bytes,
            max_bytes,
        } => {
            assert_eq!(max_bytes, 256 * 1024);
            assert!(retained_bytes > max_bytes);
        }
        other => panic!("expected LagExceeded, got {other:?}"),
    }
    assert!(stats.lag_exceeded() >= 1);
    assert_eq!(stats.slots_dropped(), 1);
    assert_eq!(stats.slots_created(), 2);
    let start = expect_connected(&mut events).await;
    let recreated = confirmed_flush(&client, &slot).await;
    assert!(
        recreated > before,
        "the new slot starts at the current position"
    );
    assert!(start >= recreated);

    insert(&client, &["after the loss"]).await;
    let txn = next_txn(&mut events).await;
    assert!(txn.contains("after the loss"));
    assert_eq!(
        txn.data.len(),
        2,
        "relation + insert only: the big transaction is gone"
    );
    handle.shutdown().await;
    drop_slot(&client, &slot).await;
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_released_stream_stops_when_idle_keeps_its_slot_for_the_window_then_drops_it() {
    let pg = testkit::pg();
    let (db, client) = database(pg).await;
    let slot = unique_slot("retain");
    let owner = Owner::new();
    let tenant = TenantId::new("retain-tenant");
    let manager = StreamManager::new(&owner, config(), Arc::new(LocalOwnership));
    let Ensured::Started {
        handle, mut events, ..
    } = manager
        .ensure_started(&tenant, target(pg, &db, &slot))
        .unwrap()
    else {
        panic!("started");
    };
    expect_connected(&mut events).await;
    insert(&client, &["seen"]).await;
    let seen = next_txn(&mut events).await;
    handle.confirm(seen.end_lsn);

    // The last subscriber leaves: idle_timeout later the stream stops, the slot stays.
    manager.release(&tenant);
    assert!(
        manager.is_running(&tenant),
        "still running during idle_timeout"
    );
    eventually("the idle stream stops", || async {
        manager.is_retained(&tenant) && handle.is_stopped()
    })
    .await;
    assert!(handle.is_stopped());
    let (_, _, active, confirmed) = slot_row(&client, &slot).await.expect("retained slot");
    assert!(!active);
    assert!(confirmed >= seen.end_lsn);

    // A change while nobody listens, then a resubscription within the window: nothing lost.
    insert(&client, &["while stopped"]).await;
    let Ensured::Started { mut events, .. } = manager
        .ensure_started(&tenant, target(pg, &db, &slot))
        .unwrap()
    else {
        panic!("a retained tenant starts a new stream");
    };
    expect_connected(&mut events).await;
    assert!(next_txn(&mut events).await.contains("while stopped"));
    assert_eq!(
        manager.stats().slots_created(),
        1,
        "the retained slot is reused"
    );

    // Leave again and wait out idle_timeout + slot_retain: the slot is dropped.
    manager.release(&tenant);
    eventually("the retained slot is dropped", || async {
        slot_row(&client, &slot).await.is_none() && manager.stats().slots_dropped() == 1
    })
    .await;
    assert!(!manager.is_running(&tenant) && !manager.is_retained(&tenant));
    manager.shutdown().await;
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_at_start_is_retried_until_it_is_up() {
    let pg = Pg::start();
    let (db, client) = database(&pg).await;
    drop(client);
    let slot = unique_slot("down");
    tokio::task::block_in_place(|| pg.stop_server());
    let owner = Owner::new();
    let (handle, mut events) = spawn(&owner, target(&pg, &db, &slot));
    wait_status(&handle, "a connection error", |s| {
        matches!(
            s,
            StreamStatus::Retrying {
                error: ReplicationError::Connect { .. },
                attempt,
                ..
            } if *attempt >= 2
        )
    })
    .await;

    tokio::task::block_in_place(|| pg.start_server());
    expect_connected(&mut events).await;
    let client = pg.connect(&db).await;
    insert(&client, &["up again"]).await;
    assert!(next_txn(&mut events).await.contains("up again"));
    handle.shutdown().await;
    drop_slot(&client, &slot).await;
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_missing_publication_is_a_typed_error() {
    let pg = testkit::pg();
    let (db, client) = database(pg).await;
    let slot = unique_slot("nopub");
    let owner = Owner::new();
    let mut t = target(pg, &db, &slot);
    t.publication = "no_such_publication".into();
    let (handle, _events) = spawn(&owner, t);
    wait_status(&handle, "PublicationNotFound", |s| {
        matches!(
            s,
            StreamStatus::Retrying {
                error: ReplicationError::PublicationNotFound { publication },
                ..
            } if publication == "no_such_publication"
        )
    })
    .await;
    assert!(
        slot_row(&client, &slot).await.is_none(),
        "no slot without a publication"
    );
    handle.shutdown().await;
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_manager_starts_only_the_streams_it_owns() {
    struct Nobody;
    impl StreamOwnership for Nobody {
        fn owns(&self, _tenant: &TenantId) -> bool {
            false
        }
    }
    let owner = Owner::new();
    let manager = StreamManager::new(&owner, config(), Arc::new(Nobody));
    let slot = unique_slot("owner");
    let t = ReplicationTarget {
        host: "127.0.0.1".into(),
        port: 1,
        user: "postgres".into(),
        password: Secret::new("x"),
        dbname: "postgres".into(),
        tls: false,
        slot,
        publication: PUBLICATION.into(),
        temporary_slot: false,
    };
    let err = manager
        .ensure_started(&TenantId::new("elsewhere"), t)
        .unwrap_err();
    assert!(matches!(err, ReplicationError::NotOwner { .. }), "{err}");
    assert!(!manager.is_running(&TenantId::new("elsewhere")));
    owner.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn writes_outside_the_publication_do_not_pin_wal() {
    let pg = testkit::pg();
    let (db, client) = database(pg).await;
    let slot = unique_slot("idle");
    let owner = Owner::new();
    let (handle, mut events) = spawn(&owner, target(pg, &db, &slot));
    expect_connected(&mut events).await;
    insert(&client, &["published"]).await;
    let txn = next_txn(&mut events).await;
    handle.confirm(txn.end_lsn);
    client
        .batch_execute("INSERT INTO other (body) SELECT 'x' FROM generate_series(1, 1000)")
        .await
        .unwrap();
    let current: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let current = Lsn::parse(&current).unwrap();
    // Nothing was handed out after the confirmed commit: the server's keepalive position is
    // reported, past the unpublished transaction.
    eventually("the slot moves past unpublished writes", || async {
        confirmed_flush(&client, &slot).await >= current
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.recv())
            .await
            .is_err(),
        "no event for an unpublished table"
    );
    handle.shutdown().await;
    drop_slot(&client, &slot).await;
    owner.shutdown(Duration::from_secs(5)).await;
}

/// Turns on TLS in an owned cluster with a fresh self-signed certificate.
fn enable_ssl(pg: &Pg) {
    let data = pg.root().join("data");
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("command runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
        .args(["-subj", "/CN=localhost", "-days", "1", "-keyout"])
        .arg(data.join("server.key"))
        .arg("-out")
        .arg(data.join("server.crt")));
    #[allow(unsafe_code, reason = "a libc call std does not wrap")]
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        run(std::process::Command::new("chown")
            .arg("postgres")
            .arg(data.join("server.key"))
            .arg(data.join("server.crt")));
    }
    run(std::process::Command::new("chmod")
        .arg("600")
        .arg(data.join("server.key")));
}

#[tokio::test]
async fn a_tls_target_uses_encrypted_connections() {
    let pg = Pg::start();
    enable_ssl(&pg);
    let (db, client) = database(&pg).await;
    client
        .batch_execute("ALTER SYSTEM SET ssl = on")
        .await
        .unwrap();
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let slot = unique_slot("tls");
    let owner = Owner::new();
    let mut t = target(&pg, &db, &slot);
    t.tls = true;
    let (handle, mut events) = spawn(&owner, t);
    expect_connected(&mut events).await;
    insert(&client, &["encrypted"]).await;
    assert!(next_txn(&mut events).await.contains("encrypted"));
    let encrypted: Vec<bool> = client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'realtime_replication'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        encrypted,
        [true, true],
        "the SQL and the replication connection"
    );
    handle.shutdown().await;
    owner.shutdown(Duration::from_secs(5)).await;
}
