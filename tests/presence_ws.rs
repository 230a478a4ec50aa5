//! Presence over real WebSockets against a real node and Postgres: exact `presence_state` and
//! `presence_diff` frames (PROTOCOL.md 5), updates in place, leaves on leave and on socket close,
//! generated keys, v1 framing, and the presence error replies and limits.

mod common;

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use common::ws::{SELF_HOST, Ws, connect_as, recv_json as recv, send_json as send, silent};

const TOPIC: &str = "realtime:room1";

fn token(secret: &str) -> String {
    common::ws::client_token(secret, 3600)
}

async fn start(extra: &[(&str, &str)]) -> realtime::app::RunningApp {
    common::ws::start_seeded(extra).await
}

async fn connect_to(app: &realtime::app::RunningApp, tenant: &str, secret: &str, vsn: &str) -> Ws {
    connect_as(app, tenant, &token(secret), vsn).await
}

async fn connect(app: &realtime::app::RunningApp) -> Ws {
    connect_to(app, SELF_HOST, common::API_SECRET, "2.0.0").await
}

fn config(key: &str, enabled: bool) -> Value {
    json!({"config": {"broadcast": {"ack": false, "self": false},
        "presence": {"key": key, "enabled": enabled}, "postgres_changes": [], "private": false}})
}

/// Joins `TOPIC` with `join_ref` and returns the frames after the reply when presence is
/// enabled (the `presence_state`), checking the reply itself.
async fn join(ws: &mut Ws, join_ref: &str, key: &str, enabled: bool) -> Option<Value> {
    send(
        ws,
        json!([join_ref, join_ref, TOPIC, "phx_join", config(key, enabled)]),
    )
    .await;
    assert_eq!(
        recv(ws).await,
        json!([join_ref, join_ref, TOPIC, "phx_reply",
            {"status": "ok", "response": {"postgres_changes": []}}])
    );
    if enabled {
        let state = recv(ws).await;
        assert_eq!(
            state[0], join_ref,
            "presence_state carries the channel join_ref"
        );
        assert_eq!(state[1], Value::Null, "presence_state has a null ref");
        assert_eq!(state[2], TOPIC);
        assert_eq!(state[3], "presence_state");
        Some(state[4].clone())
    } else {
        None
    }
}

async fn push_presence(ws: &mut Ws, join_ref: &str, reference: &str, payload: Value) {
    send(ws, json!([join_ref, reference, TOPIC, "presence", payload])).await;
}

async fn track(ws: &mut Ws, join_ref: &str, reference: &str, meta: Value) {
    push_presence(
        ws,
        join_ref,
        reference,
        json!({"type": "presence", "event": "track", "payload": meta}),
    )
    .await;
    assert_eq!(
        recv(ws).await,
        json!([join_ref, reference, TOPIC, "phx_reply", {"status": "ok", "response": {}}])
    );
}

/// Receives a `presence_diff` fan-out frame and returns its payload.
async fn diff(ws: &mut Ws) -> Value {
    let frame = recv(ws).await;
    assert_eq!(
        (&frame[0], &frame[1], &frame[2], &frame[3]),
        (
            &Value::Null,
            &Value::Null,
            &json!(TOPIC),
            &json!("presence_diff")
        ),
        "a fan-out presence_diff, got {frame}"
    );
    frame[4].clone()
}

fn phx_ref(metas_holder: &Value) -> String {
    metas_holder["metas"][0]["phx_ref"]
        .as_str()
        .expect("a phx_ref string")
        .to_owned()
}

#[tokio::test]
async fn track_update_untrack_reach_every_subscriber_including_the_tracker() {
    let app = start(&[]).await;
    let mut alice = connect(&app).await;
    let mut bob = connect(&app).await;
    assert_eq!(join(&mut alice, "1", "alice", true).await, Some(json!({})));
    assert_eq!(join(&mut bob, "7", "bob", true).await, Some(json!({})));

    track(
        &mut alice,
        "1",
        "2",
        json!({"user": "alice", "online_at": 1}),
    )
    .await;
    let joined = diff(&mut alice).await;
    let first = phx_ref(&joined["joins"]["alice"]);
    assert_eq!(
        joined,
        json!({"joins": {"alice": {"metas": [{"phx_ref": first, "user": "alice", "online_at": 1}]}},
               "leaves": {}})
    );
    assert_eq!(diff(&mut bob).await, joined, "the same diff for everyone");

    // A late joiner gets the state.
    let mut carol = connect(&app).await;
    assert_eq!(
        join(&mut carol, "3", "carol", true).await,
        Some(json!({"alice": {"metas": [{"phx_ref": first, "user": "alice", "online_at": 1}]}}))
    );

    // Same meta again: ok, nothing fans out.
    track(
        &mut alice,
        "1",
        "3",
        json!({"user": "alice", "online_at": 1}),
    )
    .await;
    silent(&mut bob, 200).await;

    // New meta: update in place, one diff with the new join and the old leave.
    track(
        &mut alice,
        "1",
        "4",
        json!({"user": "alice", "status": "away"}),
    )
    .await;
    let updated = diff(&mut bob).await;
    let second = phx_ref(&updated["joins"]["alice"]);
    assert_ne!(first, second);
    assert_eq!(
        updated,
        json!({"joins": {"alice": {"metas": [{"phx_ref": second, "phx_ref_prev": first,
                    "user": "alice", "status": "away"}]}},
               "leaves": {"alice": {"metas": [{"phx_ref": first, "user": "alice", "online_at": 1}]}}})
    );
    assert_eq!(diff(&mut alice).await, updated);
    assert_eq!(diff(&mut carol).await, updated);

    // Untrack.
    push_presence(
        &mut alice,
        "1",
        "5",
        json!({"type": "presence", "event": "UNTRACK"}),
    )
    .await;
    assert_eq!(
        recv(&mut alice).await,
        json!(["1", "5", TOPIC, "phx_reply", {"status": "ok", "response": {}}])
    );
    let left = diff(&mut bob).await;
    assert_eq!(left["joins"], json!({}));
    assert_eq!(phx_ref(&left["leaves"]["alice"]), second);
    assert_eq!(diff(&mut alice).await, left);
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn leaving_or_dropping_the_socket_takes_the_presences_along() {
    let app = start(&[]).await;
    let mut watcher = connect(&app).await;
    join(&mut watcher, "1", "watcher", true).await;

    // Leave.
    let mut leaver = connect(&app).await;
    join(&mut leaver, "1", "leaver", true).await;
    track(&mut leaver, "1", "2", json!({})).await;
    assert!(diff(&mut watcher).await["joins"]["leaver"].is_object());
    send(&mut leaver, json!(["1", "3", TOPIC, "phx_leave", {}])).await;
    let left = diff(&mut watcher).await;
    assert_eq!(left["joins"], json!({}));
    assert_eq!(
        left["leaves"]["leaver"]["metas"][0]
            .as_object()
            .map(|m| m.len()),
        Some(1),
        "only phx_ref for an empty meta"
    );

    // A socket tracking on two rooms closes without leaving: every presence leaves (the
    // watcher sees the one on its room).
    let mut dropper = connect(&app).await;
    join(&mut dropper, "1", "d1", true).await;
    track(&mut dropper, "1", "2", json!({"tab": 1})).await;
    assert!(diff(&mut watcher).await["joins"]["d1"].is_object());
    let other = "realtime:room2";
    send(
        &mut dropper,
        json!(["4", "4", other, "phx_join", config("d2", false)]),
    )
    .await;
    recv(&mut dropper).await;
    send(
        &mut dropper,
        json!(["4", "5", other, "presence", {"type": "presence", "event": "track", "payload": {}}]),
    )
    .await;
    recv(&mut dropper).await;
    drop(dropper);
    let left = diff(&mut watcher).await;
    assert_eq!(left["joins"], json!({}));
    assert_eq!(left["leaves"]["d1"]["metas"][0]["tab"], 1);
    silent(&mut watcher, 200).await;
    // The watcher's own join shows an empty room again.
    let mut late = connect(&app).await;
    assert_eq!(join(&mut late, "9", "late", true).await, Some(json!({})));
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn keys_are_generated_per_join_and_diffs_reach_channels_without_presence_enabled() {
    let app = start(&[]).await;
    let mut quiet = connect(&app).await;
    assert_eq!(join(&mut quiet, "1", "", false).await, None);
    silent(&mut quiet, 200).await;
    let mut tracker = connect(&app).await;
    join(&mut tracker, "1", "", true).await;
    track(&mut tracker, "1", "2", json!({"a": true})).await;
    let joined = diff(&mut quiet).await;
    let keys: Vec<&String> = joined["joins"].as_object().expect("joins").keys().collect();
    assert_eq!(keys.len(), 1);
    assert!(
        uuid::Uuid::parse_str(keys[0]).is_ok(),
        "generated key {} is a UUID",
        keys[0]
    );
    assert_eq!(diff(&mut tracker).await, joined);
    // Rejoining the topic replaces the channel: the old channel's presence leaves.
    send(
        &mut tracker,
        json!(["5", "5", TOPIC, "phx_join", config("", true)]),
    )
    .await;
    let mut saw = Vec::new();
    for _ in 0..3 {
        saw.push(recv(&mut tracker).await);
    }
    let events: Vec<&str> = saw.iter().filter_map(|f| f[3].as_str()).collect();
    assert_eq!(events, vec!["phx_close", "phx_reply", "presence_state"]);
    assert_eq!(saw[2][4], json!({}), "the old presence is already gone");
    let left = diff(&mut quiet).await;
    assert!(left["leaves"][keys[0]].is_object());
    // A new track gets a new generated key.
    track(&mut tracker, "5", "6", json!({"a": true})).await;
    let rejoined = diff(&mut quiet).await;
    let new_keys: Vec<&String> = rejoined["joins"]
        .as_object()
        .expect("joins")
        .keys()
        .collect();
    assert_eq!(new_keys.len(), 1);
    assert_ne!(new_keys[0], keys[0]);
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn v1_sockets_get_object_frames() {
    let app = start(&[]).await;
    let mut v1 = connect_to(&app, SELF_HOST, common::API_SECRET, "1.0.0").await;
    send(
        &mut v1,
        json!({"topic": TOPIC, "event": "phx_join", "payload": config("k", true), "ref": "1", "join_ref": "1"}),
    )
    .await;
    assert_eq!(recv(&mut v1).await["event"], "phx_reply");
    assert_eq!(
        recv(&mut v1).await,
        json!({"topic": TOPIC, "event": "presence_state", "payload": {}, "ref": null})
    );
    send(
        &mut v1,
        json!({"topic": TOPIC, "event": "presence", "ref": "2", "join_ref": "1",
               "payload": {"type": "presence", "event": "track", "payload": {"n": 1}}}),
    )
    .await;
    assert_eq!(
        recv(&mut v1).await,
        json!({"topic": TOPIC, "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": "2"})
    );
    let frame = recv(&mut v1).await;
    assert_eq!(frame["event"], "presence_diff");
    assert_eq!(frame["ref"], Value::Null);
    assert_eq!(frame["payload"]["joins"]["k"]["metas"][0]["n"], 1);
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn bad_presence_pushes_get_the_documented_replies() {
    let app = start(&[]).await;
    let mut ws = connect(&app).await;
    join(&mut ws, "1", "k", true).await;
    // Not a map.
    push_presence(
        &mut ws,
        "1",
        "2",
        json!({"type": "presence", "event": "track", "payload": [1, 2]}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!(["1", "2", TOPIC, "phx_reply", {"status": "error",
            "response": {"reason": "Presence track payload must be a map"}}])
    );
    // Unknown event.
    push_presence(
        &mut ws,
        "1",
        "3",
        json!({"type": "presence", "event": "wave"}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!(["1", "3", TOPIC, "phx_reply", {"status": "error", "response": {}}])
    );
    // No event: ok, nothing happens (and the window does not count it).
    push_presence(&mut ws, "1", "4", json!({"type": "presence"})).await;
    assert_eq!(
        recv(&mut ws).await,
        json!(["1", "4", TOPIC, "phx_reply", {"status": "ok", "response": {}}])
    );
    silent(&mut ws, 200).await;
    app.shutdown().await.expect("clean shutdown");
}

async fn expect_shutdown(ws: &mut Ws, join_ref: &str, message: &str) {
    assert_eq!(
        recv(ws).await,
        json!([join_ref, null, TOPIC, "system", {"extension": "system", "status": "error",
            "message": message, "channel": "room1"}])
    );
    assert_eq!(
        recv(ws).await,
        json!([join_ref, join_ref, TOPIC, "phx_close", {}])
    );
}

#[tokio::test]
async fn the_client_presence_window_shuts_the_channel_down() {
    let app = start(&[("CLIENT_PRESENCE_MAX_CALLS", "2")]).await;
    let mut ws = connect(&app).await;
    let mut watcher = connect(&app).await;
    join(&mut watcher, "1", "w", true).await;
    join(&mut ws, "1", "k", true).await;
    track(&mut ws, "1", "2", json!({"n": 1})).await;
    diff(&mut ws).await;
    track(&mut ws, "1", "3", json!({"n": 2})).await;
    diff(&mut ws).await;
    assert_eq!(diff(&mut watcher).await["joins"]["k"]["metas"][0]["n"], 1);
    assert_eq!(diff(&mut watcher).await["joins"]["k"]["metas"][0]["n"], 2);
    push_presence(
        &mut ws,
        "1",
        "4",
        json!({"type": "presence", "event": "untrack"}),
    )
    .await;
    expect_shutdown(&mut ws, "1", "Client presence rate limit exceeded").await;
    // The shut-down channel's presence leaves.
    assert_eq!(diff(&mut watcher).await["leaves"]["k"]["metas"][0]["n"], 2);
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_track_larger_than_the_tenant_payload_limit_shuts_the_channel_down() {
    let app = start(&[]).await;
    let mut body = common::tenant_body("small");
    body["tenant"]["max_payload_size_in_kb"] = json!(1);
    app.tenants()
        .upsert(None, &body)
        .await
        .expect("tenant created");
    let secret = body["tenant"]["jwt_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let mut ws = connect_to(&app, "small", &secret, "2.0.0").await;
    join(&mut ws, "1", "k", true).await;
    track(&mut ws, "1", "2", json!({"small": "x".repeat(100)})).await;
    diff(&mut ws).await;
    push_presence(
        &mut ws,
        "1",
        "3",
        json!({"type": "presence", "event": "track", "payload": {"big": "x".repeat(1200)}}),
    )
    .await;
    expect_shutdown(&mut ws, "1", "Track message size exceeded").await;
    // The shut-down channel's presence is gone.
    let mut other = connect_to(&app, "small", &secret, "2.0.0").await;
    assert_eq!(join(&mut other, "1", "o", true).await, Some(json!({})));
    app.shutdown().await.expect("clean shutdown");
}

/// Runs against the real 5 s rate-counter period: the first bucket must complete before the
/// average exists.
#[tokio::test]
async fn the_tenant_presence_rate_shuts_down_tracks_and_state_syncs() {
    let app = start(&[("CLIENT_PRESENCE_MAX_CALLS", "100")]).await;
    let mut body = common::tenant_body("busy");
    body["tenant"]["max_presence_events_per_second"] = json!(1);
    app.tenants()
        .upsert(None, &body)
        .await
        .expect("tenant created");
    let secret = body["tenant"]["jwt_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let mut ws = connect_to(&app, "busy", &secret, "2.0.0").await;
    join(&mut ws, "1", "k", true).await;
    // 1 state sync + 6 tracks + 6 deliveries: 13 events in the first 5 s bucket.
    for n in 0..6 {
        track(&mut ws, "1", &format!("r{n}"), json!({"n": n})).await;
        diff(&mut ws).await;
    }
    tokio::time::sleep(Duration::from_millis(5_300)).await;
    push_presence(
        &mut ws,
        "1",
        "x",
        json!({"type": "presence", "event": "track", "payload": {"n": 99}}),
    )
    .await;
    expect_shutdown(&mut ws, "1", "Too many presence messages per second").await;
    // A presence-enabled join while tripped: the join succeeds, the state sync shuts it down.
    send(
        &mut ws,
        json!(["2", "2", TOPIC, "phx_join", config("k", true)]),
    )
    .await;
    assert_eq!(recv(&mut ws).await[3], "phx_reply");
    expect_shutdown(&mut ws, "2", "Too many presence messages per second").await;
    app.shutdown().await.expect("clean shutdown");
}

/// Reads every frame that arrives within `ms` (pings and pongs skipped).
async fn drain(ws: &mut Ws, ms: u64) -> Vec<Value> {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            frames.push(serde_json::from_str(t.as_str()).expect("JSON text frame"));
        }
    }
    frames
}

/// PROTOCOL.md 12.2: only broadcast deliveries trip `max_events_per_second`; presence diffs
/// count in the presence counter only. With the tenant's events limit tripped by broadcasts in
/// one room, the broadcast receiver is shut down while channels receiving presence diffs in
/// another room keep working. Runs against the real 5 s rate-counter period.
#[tokio::test]
async fn presence_diffs_never_trip_the_events_per_second_shutdown() {
    let app = start(&[("CLIENT_PRESENCE_MAX_CALLS", "10000")]).await;
    let mut body = common::tenant_body("chatty");
    body["tenant"]["max_events_per_second"] = json!(1);
    body["tenant"]["max_presence_events_per_second"] = json!(10000);
    app.tenants()
        .upsert(None, &body)
        .await
        .expect("tenant created");
    let secret = body["tenant"]["jwt_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let (mut tracker, mut watcher) = (
        connect_to(&app, "chatty", &secret, "2.0.0").await,
        connect_to(&app, "chatty", &secret, "2.0.0").await,
    );
    join(&mut tracker, "1", "t", true).await;
    join(&mut watcher, "1", "w", true).await;
    const OTHER: &str = "realtime:other";
    let (mut sender, mut receiver) = (
        connect_to(&app, "chatty", &secret, "2.0.0").await,
        connect_to(&app, "chatty", &secret, "2.0.0").await,
    );
    for ws in [&mut sender, &mut receiver] {
        send(ws, json!(["1", "1", OTHER, "phx_join", config("b", false)])).await;
        assert_eq!(recv(ws).await[3], "phx_reply");
    }
    let broadcast = |n: u32| {
        json!(["1", n.to_string(), OTHER, "broadcast",
            {"type": "broadcast", "event": "e", "payload": {"n": n}}])
    };
    let track = |n: u32| {
        json!(["1", format!("p{n}"), TOPIC, "presence",
            {"type": "presence", "event": "track", "payload": {"n": n}}])
    };
    let is_system = |f: &Value| f[3] == "system" || f[3] == "phx_close";
    // Broadcasts and presence updates side by side until the events limit shuts the broadcast
    // receiver down (the average moves at the 5 s ticks).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    let mut n = 0;
    let shut = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broadcast receiver was never shut down"
        );
        n += 1;
        send(&mut sender, broadcast(n)).await;
        send(&mut tracker, track(n)).await;
        let got = drain(&mut receiver, 20).await;
        for ws in [&mut tracker, &mut watcher] {
            let frames = drain(ws, 0).await;
            assert!(
                !frames.iter().any(is_system),
                "a presence channel was shut down: {frames:?}"
            );
        }
        if let Some(system) = got.into_iter().find(|f| f[3] == "system") {
            break system;
        }
    };
    assert_eq!(shut[4]["message"], "Too many messages per second");
    // The limit is tripped now: presence keeps flowing, well past the events-limit check
    // interval, and no presence channel is shut down.
    let mut diffs = 0;
    for m in n + 1..n + 20 {
        send(&mut tracker, track(m)).await;
        let frames = drain(&mut watcher, 50).await;
        assert!(
            !frames.iter().any(is_system),
            "the watcher was shut down: {frames:?}"
        );
        diffs += frames.iter().filter(|f| f[3] == "presence_diff").count();
        let frames = drain(&mut tracker, 0).await;
        assert!(
            !frames.iter().any(is_system),
            "the tracker was shut down: {frames:?}"
        );
    }
    assert!(diffs >= 19, "every update reached the watcher ({diffs})");
    app.shutdown().await.expect("clean shutdown");
}
