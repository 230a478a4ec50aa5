//! The self-host seed, tenant cache behaviour, and the built binary's start-up failures.

mod common;

use std::process::Command;
use std::time::Duration;

use realtime::db::Db;
use realtime::tenants::{Cipher, Tenants, seed_self_host};
use realtime::types::TenantId;

async fn tenants_for(db_name: &str, extra: &[(&str, &str)]) -> (Tenants, realtime::config::Config) {
    let config = common::config(db_name, extra);
    let db = Db::connect(&config.db).await.unwrap();
    db.migrate().await.unwrap();
    let tenants = Tenants::new(
        db,
        Cipher::new(&config.encryption).unwrap(),
        config.limits.clone(),
        &config.tenants,
    );
    (tenants, config)
}

/// Restarts and simultaneous starts create the default tenant exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_is_idempotent_and_race_free() {
    let name = common::fresh_database().await;
    let seed = [
        ("SEED_SELF_HOST", "true"),
        ("SELF_HOST_TENANT_NAME", "realtime-dev"),
    ];
    let (a, config) = tenants_for(&name, &seed).await;
    let (b, _) = tenants_for(&name, &seed).await;
    let run = |tenants: Tenants, config: realtime::config::Config| async move {
        seed_self_host(&tenants, &config.seed, &config.api, &config.db).await
    };
    let (ra, rb) = tokio::join!(
        tokio::spawn(run(a.clone(), config.clone())),
        tokio::spawn(run(b.clone(), config.clone()))
    );
    let (ra, rb) = (ra.unwrap().unwrap(), rb.unwrap().unwrap());
    assert!(ra ^ rb, "exactly one creates it: {ra} {rb}");
    assert!(
        !run(a.clone(), config.clone()).await.unwrap(),
        "restart is a no-op"
    );

    let all = a.list().await.unwrap();
    assert_eq!(all.len(), 1);
    let tenant = &all[0];
    assert_eq!(tenant.external_id.as_str(), "realtime-dev");
    assert_eq!(
        tenant.jwt_secret.as_ref().unwrap().expose(),
        common::API_SECRET
    );
    let settings = a.db_settings(tenant, &tenant.extensions[0]).unwrap();
    assert_eq!(settings.host, "127.0.0.1");
    assert_eq!(settings.port, common::pg().port);
    assert_eq!(settings.user, "postgres");
    assert_eq!(settings.password.expose(), "postgres");
    assert_eq!(settings.region.as_deref(), Some("local"));
    assert!(!settings.ssl_enforced);

    // Disabled seeding creates nothing.
    let other = common::fresh_database().await;
    let (c, config) = tenants_for(&other, &[]).await;
    assert!(
        !seed_self_host(&c, &config.seed, &config.api, &config.db)
            .await
            .unwrap()
    );
    assert!(c.list().await.unwrap().is_empty());
}

/// An update through one registry is seen at once through it (explicit invalidation), and
/// through another registry only after its TTL.
#[tokio::test]
async fn cache_is_invalidated_on_write_and_expires() {
    let name = common::fresh_database().await;
    let (writer, _) = tenants_for(&name, &[]).await;
    let config = common::config(&name, &[]);
    let reader = Tenants::new(
        Db::connect(&config.db).await.unwrap(),
        Cipher::new(&config.encryption).unwrap(),
        config.limits.clone(),
        &realtime::config::TenantsConfig {
            cache_expiration: Duration::from_millis(300),
            ..config.tenants.clone()
        },
    );
    let id = TenantId::from("t1");
    writer
        .upsert(None, &common::tenant_body("t1"))
        .await
        .unwrap();
    assert_eq!(
        writer
            .get(&id)
            .await
            .unwrap()
            .unwrap()
            .limits
            .max_events_per_second,
        100
    );
    assert_eq!(
        reader
            .get(&id)
            .await
            .unwrap()
            .unwrap()
            .limits
            .max_events_per_second,
        100
    );

    let body = serde_json::json!({"tenant": {"max_events_per_second": 5}});
    writer.upsert(Some(&id), &body).await.unwrap();
    assert_eq!(
        writer
            .get(&id)
            .await
            .unwrap()
            .unwrap()
            .limits
            .max_events_per_second,
        5
    );
    assert_eq!(
        reader
            .get(&id)
            .await
            .unwrap()
            .unwrap()
            .limits
            .max_events_per_second,
        100,
        "still cached"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        reader
            .get(&id)
            .await
            .unwrap()
            .unwrap()
            .limits
            .max_events_per_second,
        5
    );

    assert!(writer.delete(&id).await.unwrap());
    assert!(writer.get(&id).await.unwrap().is_none());
    assert!(!writer.delete(&id).await.unwrap());
}

fn run_binary(vars: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_realtime"))
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .expect("run the realtime binary")
}

#[test]
fn bad_port_exits_non_zero_naming_the_variable() {
    let out = run_binary(&[("DB_ENC_KEY", common::ENC_KEY), ("PORT", "99999")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PORT") && stderr.contains("99999"),
        "{stderr}"
    );
}

#[test]
fn unreachable_database_exits_non_zero_with_a_clear_message() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let out = run_binary(&[
        ("DB_ENC_KEY", common::ENC_KEY),
        ("DB_HOST", "127.0.0.1"),
        ("DB_PORT", &port),
        ("DB_QUEUE_TARGET", "1000"),
        ("PORT", "0"),
        ("LOG_LEVEL", "error"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to the metadata database"),
        "{stderr}"
    );
    assert!(!stderr.contains(common::ENC_KEY));
}

fn healthcheck(port: u16) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_realtime"))
        .arg(realtime::probe::SUBCOMMAND)
        .env_clear()
        .env("PORT", port.to_string())
        .output()
        .expect("run realtime healthcheck")
}

/// `realtime healthcheck` (the image's HEALTHCHECK) exits 0 against a running node and 1 once
/// it has stopped, or where nothing speaks HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_subcommand_follows_the_node() {
    let (app, _db) = common::start_app(&[]).await;
    let port = app.local_addr().port();
    let out = tokio::task::spawn_blocking(move || healthcheck(port))
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    app.shutdown().await.unwrap();
    let out = tokio::task::spawn_blocking(move || healthcheck(port))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");

    // A listener that answers with something other than HTTP is unhealthy too.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut conn, b"SSH-2.0-not-http\r\n").unwrap();
    });
    let out = tokio::task::spawn_blocking(move || healthcheck(other))
        .await
        .unwrap();
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an HTTP response"));
}
