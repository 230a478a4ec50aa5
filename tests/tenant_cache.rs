//! The tenant cache against a real metadata database: one query for concurrent misses, cached
//! "not found" answers that expire, and a query timeout that ends in a typed error.

mod common;

use std::time::Duration;

use realtime::db::Db;
use realtime::error::{ErrorCode, OperationalError};
use realtime::tenants::{Cipher, Tenants};
use realtime::types::TenantId;

async fn tenants_for(db_name: &str, extra: &[(&str, &str)]) -> Tenants {
    let config = common::config(db_name, extra);
    let db = Db::connect(&config.db).await.unwrap();
    db.migrate().await.unwrap();
    Tenants::new(
        db,
        Cipher::new(&config.encryption).unwrap(),
        config.limits.clone(),
        &config.tenants,
    )
}

/// Backends of database `db` waiting for a lock (the loads queued behind `LOCK TABLE`).
async fn lock_waiters(observer: &tokio_postgres::Client, db: &str) -> i64 {
    observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = $1 AND wait_event_type = 'Lock'",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

/// Many concurrent lookups of an uncached tenant send one query: while the table is locked,
/// exactly one backend waits for it, and the cache counts one load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_query() {
    let name = common::fresh_database().await;
    let writer = tenants_for(&name, &[]).await;
    writer
        .upsert(None, &common::tenant_body("t1"))
        .await
        .unwrap();
    let tenants = tenants_for(&name, &[]).await;
    let mut locker = common::connect(&name).await;
    let observer = common::connect("postgres").await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE _realtime.tenants IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let id = TenantId::from("t1");
    let lookups: Vec<_> = (0..16)
        .map(|_| {
            let (tenants, id) = (tenants.clone(), id.clone());
            tokio::spawn(async move { tenants.get(&id).await })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while lock_waiters(&observer, &name).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no lookup reached the database"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give the other lookups every chance to send their own query (the pool has 3 connections).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(lock_waiters(&observer, &name).await, 1);
    lock.rollback().await.unwrap();
    for lookup in lookups {
        let tenant = lookup.await.unwrap().unwrap().expect("t1 exists");
        assert_eq!(tenant.external_id, id);
    }
    assert_eq!(tenants.cache_loads(), 1);
}

/// An unknown id is answered from the cache until its short lifetime ends; a tenant created on
/// another node (here: another registry) is then found.
#[tokio::test]
async fn not_found_answers_are_cached_briefly() {
    let name = common::fresh_database().await;
    let tenants = tenants_for(&name, &[("TENANT_NOT_FOUND_CACHE_IN_MS", "300")]).await;
    let elsewhere = tenants_for(&name, &[]).await;
    let id = TenantId::from("late");
    for _ in 0..5 {
        assert!(tenants.get(&id).await.unwrap().is_none());
    }
    assert_eq!(tenants.cache_loads(), 1, "repeated misses cost one query");

    elsewhere
        .upsert(None, &common::tenant_body("late"))
        .await
        .unwrap();
    assert!(
        tenants.get(&id).await.unwrap().is_none(),
        "still the cached answer"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tenants.get(&id).await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the negative entry never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tenants.cache_loads(), 2);

    // A write on this node replaces a negative entry at once.
    let fresh = TenantId::from("fresh");
    assert!(tenants.get(&fresh).await.unwrap().is_none());
    tenants
        .upsert(None, &common::tenant_body("fresh"))
        .await
        .unwrap();
    assert!(tenants.get(&fresh).await.unwrap().is_some());
}

/// A lookup or write stuck behind a lock is cancelled after `DB_QUERY_TIMEOUT_MS` and reports
/// `QueryCanceled`; the connection stays usable.
#[tokio::test]
async fn a_query_held_up_by_a_lock_times_out_with_a_typed_error() {
    let name = common::fresh_database().await;
    let tenants = tenants_for(&name, &[("DB_QUERY_TIMEOUT_MS", "300")]).await;
    tenants
        .upsert(None, &common::tenant_body("t1"))
        .await
        .unwrap();
    let mut locker = common::connect(&name).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE _realtime.tenants IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let err = tenants.get(&TenantId::from("other")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::QueryCanceled, "{err}");
    assert_eq!(err.client_message(), "metadata database query timed out");
    let err = tenants
        .upsert(None, &common::tenant_body("t1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::QueryCanceled, "{err}");

    lock.rollback().await.unwrap();
    assert!(tenants.get(&TenantId::from("t1")).await.unwrap().is_some());
}
