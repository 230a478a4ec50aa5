//! The join pipeline over real sockets against a real Postgres: a join waiting for the metadata
//! database runs beside the socket loop, delayed refusals are bounded per socket, topic-less
//! joins count toward the joins rate, and a client's close frame is answered.

mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use common::ws::{Ws, close_code, connect_as, recv_json, send_json as send, start_seeded};

const TENANT: &str = common::ws::SELF_HOST;

fn token() -> String {
    common::ws::client_token(common::API_SECRET, 3600)
}

fn config(ack: bool) -> Value {
    json!({"broadcast": {"ack": ack, "self": false}, "presence": {"key": "", "enabled": false},
           "postgres_changes": [], "private": false})
}

fn join_frame(topic: &str, join_ref: &str, ack: bool) -> Value {
    json!([join_ref, join_ref, topic, "phx_join", {"config": config(ack)}])
}

async fn connect(app: &realtime::app::RunningApp) -> Ws {
    connect_as(app, TENANT, &token(), "2.0.0").await
}

/// The database name of a running app is not exposed; the test keeps it from `start_app`.
async fn start_with_db(extra: &[(&str, &str)]) -> (realtime::app::RunningApp, String) {
    let mut vars = vec![
        ("SEED_SELF_HOST", "true"),
        ("CHANNEL_ERROR_BACKOFF_MS", "20"),
        ("CONNECT_ERROR_BACKOFF_MS", "10"),
    ];
    vars.extend_from_slice(extra);
    common::start_app(&vars).await
}

/// A join whose tenant reload is held up by a lock on `_realtime.tenants` waits beside the
/// socket loop: the same socket keeps answering heartbeats and receiving fan-out, and frames
/// for the pending channel wait for its reply.
#[tokio::test]
async fn a_join_waiting_for_the_tenant_lookup_does_not_stop_heartbeats_or_deliveries() {
    let (app, db) = start_with_db(&[("TENANT_CACHE_EXPIRATION_IN_MS", "300")]).await;
    let mut ws = connect(&app).await;
    let mut sender = connect(&app).await;
    send(&mut ws, join_frame("realtime:a", "1", false)).await;
    assert_eq!(recv_json(&mut ws).await[4]["status"], "ok");
    send(&mut sender, join_frame("realtime:a", "1", false)).await;
    assert_eq!(recv_json(&mut sender).await[4]["status"], "ok");

    // Hold every read of the tenants table, then let the cached record expire.
    let locker = common::connect(&db).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE _realtime.tenants IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    send(&mut ws, join_frame("realtime:b", "2", true)).await;
    // A push on the pending channel must wait for the join reply.
    send(&mut ws, json!(["2", "3", "realtime:b", "broadcast", {"type": "broadcast", "event": "e", "payload": {}}])).await;
    send(&mut ws, json!([null, "4", "phoenix", "heartbeat", {}])).await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!([null, "4", "phoenix", "phx_reply", {"status": "ok", "response": {}}]),
        "the heartbeat is answered while the join waits"
    );
    send(&mut sender, json!(["1", "2", "realtime:a", "broadcast", {"type": "broadcast", "event": "note", "payload": {"n": 1}}])).await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!([null, null, "realtime:a", "broadcast", {"type": "broadcast", "event": "note", "payload": {"n": 1}}]),
        "fan-out is delivered while the join waits"
    );

    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        recv_json(&mut ws).await,
        json!(["2", "2", "realtime:b", "phx_reply", {"status": "ok", "response": {"postgres_changes": []}}])
    );
    assert_eq!(
        recv_json(&mut ws).await,
        json!(["2", "3", "realtime:b", "phx_reply", {"status": "ok", "response": {}}]),
        "the push sent during the join is handled after it"
    );
    app.shutdown().await.unwrap();
}

/// Refusals wait `CHANNEL_ERROR_BACKOFF_MS` in one bounded per-socket queue: past 256 pending
/// refusals, further refused joins get no reply, and the socket keeps working.
#[tokio::test]
async fn delayed_join_refusals_are_bounded_per_socket() {
    let app = start_seeded(&[("CHANNEL_ERROR_BACKOFF_MS", "1500")]).await;
    let mut ws = connect(&app).await;
    for i in 0..300 {
        let r = i.to_string();
        send(&mut ws, json!([r, r, "realtime:", "phx_join", {}])).await;
    }
    send(&mut ws, json!([null, "hb", "phoenix", "heartbeat", {}])).await;
    assert_eq!(recv_json(&mut ws).await[1], "hb");
    let mut refusals = 0;
    loop {
        match tokio::time::timeout(Duration::from_millis(2500), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let v: Value = serde_json::from_str(text.as_str()).unwrap();
                assert_eq!(
                    v[4]["response"]["reason"],
                    "TopicNameRequired: You must provide a topic name"
                );
                refusals += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    assert_eq!(refusals, 256);
    send(&mut ws, join_frame("realtime:ok", "x", false)).await;
    assert_eq!(recv_json(&mut ws).await[4]["status"], "ok");
    app.shutdown().await.unwrap();
}

/// Joins on the bare `realtime:` topic count toward `max_joins_per_second`, so a loop of them
/// trips the limit: the next join is refused with `ClientJoinRateLimitReached` and the socket
/// closes with 1001.
#[tokio::test]
async fn topic_less_joins_count_toward_the_joins_rate() {
    let app = start_seeded(&[("TENANT_MAX_JOINS_PER_SECOND", "1")]).await;
    let mut ws = connect(&app).await;
    for i in 0..100 {
        let r = i.to_string();
        send(&mut ws, json!([r, r, "realtime:", "phx_join", {}])).await;
    }
    for _ in 0..100 {
        recv_json(&mut ws).await;
    }
    // The rolling average moves at the 5 s ticks (PROTOCOL.md 12.1).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(16);
    let mut n = 0;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the joins rate never tripped"
        );
        n += 1;
        send(
            &mut ws,
            join_frame(&format!("realtime:r{n}"), &n.to_string(), false),
        )
        .await;
        let reply = recv_json(&mut ws).await;
        if reply[4]["status"] == "error" {
            assert_eq!(
                reply[4]["response"]["reason"],
                "ClientJoinRateLimitReached: Too many joins per second"
            );
            break;
        }
        // Slow enough that these joins alone never trip a limit of 1 per second.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(close_code(&mut ws).await, 1001);
    app.shutdown().await.unwrap();
}

/// A close frame from the client is answered with a close frame carrying its code.
#[tokio::test]
async fn a_client_close_frame_is_answered_with_a_close_frame() {
    let app = start_seeded(&[]).await;
    let mut ws = connect(&app).await;
    send(&mut ws, join_frame("realtime:a", "1", false)).await;
    recv_json(&mut ws).await;
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4100),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an answer within 5 s");
    match answer {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4100),
        other => panic!("expected a close frame, got {other:?}"),
    }
    app.shutdown().await.unwrap();
}
