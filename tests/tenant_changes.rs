//! Tenant updates reach open sockets: only key and admission changes (`jwt_secret`, `jwt_jwks`,
//! `private_only`, `suspend`) close them with 1012 (PROTOCOL.md 1.7); other updates, and
//! changes applied from a peer, switch open sockets to the new record without a reconnect.

mod common;

use std::time::Duration;

use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use common::ws::{Ws, close_code, connect_as, recv_json, send_json as send};
use realtime::app::RunningApp;
use realtime::tenants::{EventOrigin, TenantChange, TenantEvent};
use realtime::types::TenantId;

const TENANT: &str = common::ws::SELF_HOST;

async fn connect(app: &RunningApp) -> Ws {
    let token = common::ws::client_token(common::API_SECRET, 3600);
    connect_as(app, TENANT, &token, "2.0.0").await
}

async fn join(ws: &mut Ws, topic: &str, join_ref: &str) -> Value {
    let config = json!({"broadcast": {"ack": true, "self": false}, "presence": {"key": "", "enabled": false},
                        "postgres_changes": [], "private": false});
    send(
        ws,
        json!([join_ref, join_ref, topic, "phx_join", {"config": config}]),
    )
    .await;
    recv_json(ws).await
}

/// Sends `body` to the tenants API for the seeded tenant (`POST /api/tenants`).
async fn post_tenant(app: &RunningApp, fields: Value) {
    let mut tenant = json!({"external_id": TENANT});
    tenant
        .as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/tenants", app.local_addr()))
        .bearer_auth(common::api_token())
        .json(&json!({ "tenant": tenant }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

/// Sends a 2 kB broadcast with ack on the joined `realtime:r` and returns the reply's status.
async fn big_broadcast_status(ws: &mut Ws, reference: &str) -> Value {
    let payload = json!({"type": "broadcast", "event": "e", "payload": {"x": "a".repeat(2000)}});
    ws.send(Message::text(
        json!(["1", reference, "realtime:r", "broadcast", payload]).to_string(),
    ))
    .await
    .unwrap();
    let reply = recv_json(ws).await;
    assert_eq!(reply[3], "phx_reply", "{reply}");
    reply[4].clone()
}

/// Repeats the big broadcast until it is refused (the update reaches the socket through the
/// tenant event, shortly after the API answered), under a deadline.
async fn wait_for_payload_refusal(ws: &mut Ws) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut n = 10;
    loop {
        n += 1;
        let reply = big_broadcast_status(ws, &n.to_string()).await;
        if reply["status"] == "error" || tokio::time::Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn heartbeat_ok(ws: &mut Ws) {
    send(ws, json!([null, "hb", "phoenix", "heartbeat", {}])).await;
    let reply = recv_json(ws).await;
    assert_eq!(reply[1], "hb", "{reply}");
    assert_eq!(reply[4]["status"], "ok", "{reply}");
}

#[tokio::test]
async fn updates_without_key_changes_keep_sockets_open_and_apply_the_new_limits() {
    let app = common::ws::start_seeded(&[]).await;
    let mut ws = connect(&app).await;
    assert_eq!(join(&mut ws, "realtime:r", "1").await[4]["status"], "ok");
    assert_eq!(big_broadcast_status(&mut ws, "2").await["status"], "ok");

    // A provisioning script posting the same record again.
    post_tenant(&app, json!({"jwt_secret": common::API_SECRET})).await;
    heartbeat_ok(&mut ws).await;
    assert_eq!(big_broadcast_status(&mut ws, "3").await["status"], "ok");

    // A lower payload limit applies to the open socket.
    post_tenant(&app, json!({"max_payload_size_in_kb": 1})).await;
    assert_eq!(
        wait_for_payload_refusal(&mut ws).await,
        json!({"status": "error", "response": "payload_size_exceeded"})
    );

    // A lower channel limit applies to the next join on the same socket.
    post_tenant(&app, json!({"max_channels_per_client": 1})).await;
    let refused = join(&mut ws, "realtime:other", "5").await;
    assert_eq!(refused[4]["status"], "error", "{refused}");
    assert_eq!(
        refused[4]["response"]["reason"],
        "ChannelRateLimitReached: Too many channels"
    );
    heartbeat_ok(&mut ws).await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn suspend_and_jwt_secret_changes_close_sockets_with_1012() {
    let app = common::ws::start_seeded(&[]).await;
    let disconnect = json!([null, null, "realtime:r", "system",
        {"extension": "system", "status": "ok", "message": "Server requested disconnect"}]);

    let mut ws = connect(&app).await;
    join(&mut ws, "realtime:r", "1").await;
    post_tenant(&app, json!({"suspend": true})).await;
    assert_eq!(recv_json(&mut ws).await, disconnect);
    assert_eq!(close_code(&mut ws).await, 1012);

    post_tenant(&app, json!({"suspend": false})).await;
    let mut ws = connect(&app).await;
    join(&mut ws, "realtime:r", "1").await;
    post_tenant(
        &app,
        json!({"jwt_secret": "a-new-tenant-jwt-secret-with-32-chars-or-more"}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await, disconnect);
    assert_eq!(close_code(&mut ws).await, 1012);
    app.shutdown().await.unwrap();
}

/// A change made on another node (here: written straight to the metadata database) is applied
/// with `apply_remote`: the cache is refreshed at once, local subscribers hear it marked as
/// coming from a peer, and open sockets switch to the new record.
#[tokio::test]
async fn a_peer_change_refreshes_the_cache_and_reaches_open_sockets() {
    let db = common::fresh_database().await;
    let app = realtime::app::start(common::config(
        &db,
        &[
            ("SEED_SELF_HOST", "true"),
            ("CHANNEL_ERROR_BACKOFF_MS", "20"),
            ("CONNECT_ERROR_BACKOFF_MS", "10"),
        ],
    ))
    .await
    .unwrap();
    let id = TenantId::from(TENANT);
    let mut ws = connect(&app).await;
    join(&mut ws, "realtime:r", "1").await;
    assert_eq!(
        app.tenants()
            .get(&id)
            .await
            .unwrap()
            .unwrap()
            .limits
            .max_payload_size_in_kb,
        3000
    );

    common::connect(&db)
        .await
        .batch_execute(
            "UPDATE _realtime.tenants SET max_payload_size_in_kb = 1 WHERE external_id = 'realtime-dev'",
        )
        .await
        .unwrap();
    let mut events = app.tenants().subscribe();
    app.tenants()
        .apply_remote(TenantEvent {
            tenant: id.clone(),
            change: TenantChange::Updated,
            disconnect: false,
            record: None,
            origin: EventOrigin::Local,
        })
        .await
        .unwrap();
    let event = events.recv().await.unwrap();
    assert_eq!(event.origin, EventOrigin::Peer, "never forwarded again");
    assert!(!event.disconnect);
    assert_eq!(event.record.unwrap().limits.max_payload_size_in_kb, 1);
    assert_eq!(
        app.tenants()
            .get(&id)
            .await
            .unwrap()
            .unwrap()
            .limits
            .max_payload_size_in_kb,
        1,
        "the cached record was replaced"
    );
    assert_eq!(
        wait_for_payload_refusal(&mut ws).await,
        json!({"status": "error", "response": "payload_size_exceeded"})
    );
    app.shutdown().await.unwrap();
}

/// A draining node (SIGTERM: `RunningApp::shutdown`) tells each joined channel with the same
/// `system` message as a tenant-wide disconnect, then closes with 1012, so realtime-js
/// reconnects (to another node, behind a load balancer) and rejoins.
#[tokio::test]
async fn a_draining_node_tells_every_channel_then_closes_with_1012() {
    let app = common::ws::start_seeded(&[]).await;
    let mut ws = connect(&app).await;
    join(&mut ws, "realtime:a", "1").await;
    join(&mut ws, "realtime:b", "2").await;
    let stopping = tokio::spawn(app.shutdown());
    let mut topics = Vec::new();
    for _ in 0..2 {
        let frame = recv_json(&mut ws).await;
        let topic = frame[2].as_str().unwrap().to_string();
        assert_eq!(
            frame,
            json!([null, null, topic, "system",
                {"extension": "system", "status": "ok", "message": "Server requested disconnect"}])
        );
        topics.push(topic);
    }
    topics.sort();
    assert_eq!(topics, ["realtime:a", "realtime:b"]);
    assert_eq!(close_code(&mut ws).await, 1012);
    stopping.await.unwrap().unwrap();
}
