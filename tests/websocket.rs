//! The WebSocket core over real sockets against a real Postgres: handshake refusals, the join
//! pipeline, exact v1/v2 frames, broadcast (`self`, `ack`, binary), HTTP broadcast, bad input,
//! limits, token expiry and tenant-wide disconnects.

mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use common::ws::{
    Ws, close_code, connect_as, now, recv_binary, recv_json, send_json as send, silent, try_connect,
};

const TENANT: &str = common::ws::SELF_HOST;

fn token(exp_in: i64) -> String {
    common::ws::client_token(common::API_SECRET, exp_in)
}

async fn start(extra: &[(&str, &str)]) -> realtime::app::RunningApp {
    common::ws::start_seeded(extra).await
}

async fn connect(app: &realtime::app::RunningApp, vsn: &str) -> Ws {
    connect_as(app, TENANT, &token(3600), vsn).await
}

fn join_payload(config: Value) -> Value {
    json!({"config": config})
}

fn default_config() -> Value {
    json!({"broadcast": {"ack": false, "self": false}, "presence": {"key": "", "enabled": false},
           "postgres_changes": [], "private": false})
}

async fn join(ws: &mut Ws, topic: &str, join_ref: &str, config: Value) -> Value {
    send(
        ws,
        json!([join_ref, join_ref, topic, "phx_join", join_payload(config)]),
    )
    .await;
    recv_json(ws).await
}

fn kind3(
    join_ref: &str,
    reference: &str,
    topic: &str,
    event: &str,
    payload: &[u8],
    json_encoding: bool,
) -> Message {
    let mut frame = vec![
        3,
        join_ref.len() as u8,
        reference.len() as u8,
        topic.len() as u8,
        event.len() as u8,
        0,
        u8::from(json_encoding),
    ];
    for part in [
        join_ref.as_bytes(),
        reference.as_bytes(),
        topic.as_bytes(),
        event.as_bytes(),
        payload,
    ] {
        frame.extend_from_slice(part);
    }
    Message::binary(frame)
}

#[tokio::test]
async fn join_heartbeat_and_leave_frames_are_exact_in_v2() {
    let app = start(&[]).await;
    let mut ws = connect(&app, "2.0.0").await;
    let mut config = default_config();
    config["postgres_changes"] = json!([{"event": "*", "schema": "public", "table": "todos", "filter": "id=eq.1"},
                                        {"event": "INSERT", "schema": "public"}]);
    let reply = join(&mut ws, "realtime:room1", "1", config).await;
    assert_eq!(reply[0], "1");
    assert_eq!(reply[1], "1");
    assert_eq!(reply[2], "realtime:room1");
    assert_eq!(reply[3], "phx_reply");
    assert_eq!(reply[4]["status"], "ok");
    let echoed = reply[4]["response"]["postgres_changes"].as_array().unwrap();
    assert_eq!(echoed.len(), 2);
    assert_eq!(echoed[0]["filter"], "id=eq.1");
    assert_eq!(echoed[1]["event"], "INSERT");
    assert!(
        echoed
            .iter()
            .all(|e| e["id"].as_u64().is_some_and(|id| id > 0))
    );
    // The test database publishes no `todos`: the join stands and the channel is told
    // (PROTOCOL.md 3.5), with the channel's join_ref and no ref.
    assert_eq!(
        recv_json(&mut ws).await,
        json!(["1", null, "realtime:room1", "system", {
            "extension": "postgres_changes", "status": "error", "channel": "room1",
            "message": "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [event: *, schema: public, table: todos, filters: [id=eq.1], select: nil]"
        }])
    );

    send(&mut ws, json!([null, "7", "phoenix", "heartbeat", {}])).await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!([null, "7", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );

    send(
        &mut ws,
        json!(["1", "8", "realtime:room1", "phx_leave", {}]),
    )
    .await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!(["1", "8", "realtime:room1", "phx_reply", {"status": "ok", "response": {}}])
    );
    assert_eq!(
        recv_json(&mut ws).await,
        json!(["1", "1", "realtime:room1", "phx_close", {}])
    );

    // Pushes to a topic that is not joined.
    send(&mut ws, json!(["1", "9", "realtime:room1", "broadcast", {"type": "broadcast", "event": "e", "payload": {}}])).await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!([null, "9", "realtime:room1", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
    send(&mut ws, json!(["2", "10", "other:x", "phx_join", {}])).await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!([null, "10", "other:x", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn v1_frames_are_objects_without_join_ref() {
    let app = start(&[]).await;
    let mut ws = connect(&app, "1.0.0").await;
    send(&mut ws, json!({"topic": "realtime:r", "event": "phx_join", "payload": {"config": default_config()}, "ref": "1", "join_ref": "1"})).await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"topic": "realtime:r", "event": "phx_reply", "payload": {"status": "ok", "response": {"postgres_changes": []}}, "ref": "1"})
    );
    send(
        &mut ws,
        json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "2"}),
    )
    .await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"topic": "phoenix", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": "2"})
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn broadcast_honours_self_ack_binary_and_formats() {
    let app = start(&[]).await;
    let mut sender = connect(&app, "2.0.0").await;
    let mut other = connect(&app, "2.0.0").await;
    let mut old = connect(&app, "1.0.0").await;
    let mut config = default_config();
    config["broadcast"] = json!({"ack": true, "self": false});
    join(&mut sender, "realtime:room", "1", config).await;
    join(&mut other, "realtime:room", "1", default_config()).await;
    send(&mut old, json!({"topic": "realtime:room", "event": "phx_join", "payload": {"config": default_config()}, "ref": "1"})).await;
    recv_json(&mut old).await;

    // A kind-3 JSON push: v2 gets kind 4, v1 gets a JSON broadcast, the sender only its ack.
    sender
        .send(kind3(
            "1",
            "2",
            "realtime:room",
            "cursor",
            br#"{"x":1}"#,
            true,
        ))
        .await
        .unwrap();
    assert_eq!(
        recv_json(&mut sender).await,
        json!(["1", "2", "realtime:room", "phx_reply", {"status": "ok", "response": {}}])
    );
    let mut expected = vec![4, 13, 6, 0, 1];
    expected.extend_from_slice(b"realtime:roomcursor{\"x\":1}");
    assert_eq!(&recv_binary(&mut other).await[..], &expected[..]);
    assert_eq!(
        recv_json(&mut old).await,
        json!({"topic": "realtime:room", "event": "broadcast", "payload": {"type": "broadcast", "event": "cursor", "payload": {"x": 1}}, "ref": null})
    );

    // A binary payload reaches v2 only.
    sender
        .send(kind3("1", "3", "realtime:room", "bin", &[0, 255, 7], false))
        .await
        .unwrap();
    recv_json(&mut sender).await;
    let frame = recv_binary(&mut other).await;
    assert_eq!(frame[4], 0, "binary encoding");
    assert_eq!(&frame[frame.len() - 3..], &[0, 255, 7]);
    silent(&mut old, 200).await;

    // A JSON text push is forwarded verbatim as text to both formats.
    send(&mut sender, json!(["1", "4", "realtime:room", "broadcast", {"type": "broadcast", "event": "note", "payload": {"t": "hi"}, "extra": 1}])).await;
    recv_json(&mut sender).await;
    assert_eq!(
        recv_json(&mut other).await,
        json!([null, null, "realtime:room", "broadcast", {"type": "broadcast", "event": "note", "payload": {"t": "hi"}, "extra": 1}])
    );
    assert_eq!(recv_json(&mut old).await["payload"]["extra"], 1);
    silent(&mut sender, 200).await;

    // self: true gets its own message back, without ack no reply.
    let mut me = connect(&app, "2.0.0").await;
    let mut config = default_config();
    config["broadcast"] = json!({"self": true});
    join(&mut me, "realtime:room", "5", config).await;
    me.send(kind3("5", "6", "realtime:room", "echo", b"{}", true))
        .await
        .unwrap();
    assert_eq!(recv_binary(&mut me).await[0], 4);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn public_and_private_rooms_of_one_name_are_apart() {
    let app = start(&[]).await;
    let mut public = connect(&app, "2.0.0").await;
    let mut private = connect(&app, "2.0.0").await;
    join(&mut public, "realtime:room", "1", default_config()).await;
    let mut config = default_config();
    config["private"] = json!(true);
    let reply = join(&mut private, "realtime:room", "1", config).await;
    assert_eq!(
        reply[4]["response"]["reason"],
        "Unauthorized: You do not have permissions to read from this Channel topic: room"
    );
    let http = reqwest::Client::new();
    let status = http
        .post(format!(
            "http://{}/api/broadcast/room/events/e?private=true",
            app.local_addr()
        ))
        .header("host", format!("{TENANT}.localhost"))
        .header("apikey", token(60))
        .json(&json!({"a": 1}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 403);
    silent(&mut public, 200).await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn http_broadcasts_reach_websocket_subscribers() {
    let app = start(&[]).await;
    let mut v2 = connect(&app, "2.0.0").await;
    let mut v1 = connect(&app, "1.0.0").await;
    join(&mut v2, "realtime:a/b", "1", default_config()).await;
    send(&mut v1, json!({"topic": "realtime:a/b", "event": "phx_join", "payload": {"config": default_config()}, "ref": "1"})).await;
    recv_json(&mut v1).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", app.local_addr());
    let post = |path: String| {
        http.post(format!("{base}{path}"))
            .header("host", format!("{TENANT}.localhost"))
            .header("authorization", format!("Bearer {}", token(60)))
    };
    let r = post("/realtime/v1/api/broadcast/a%2Fb/events/cursor?apikey=x&vsn=2.0.0".into())
        .json(&json!({"x": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["x-rate-limit"], "100");
    let frame = recv_binary(&mut v2).await;
    assert!(frame.ends_with(b"cursor{\"x\":2}"), "{frame:?}");
    assert_eq!(
        recv_json(&mut v1).await["payload"],
        json!({"type": "broadcast", "event": "cursor", "payload": {"x": 2}})
    );

    let id = "3f1c2f5e-7a4b-4f6e-9d2a-1b2c3d4e5f60";
    let r = post("/api/broadcast".into())
        .json(&json!({"messages": [{"topic": "a/b", "event": "note", "payload": {"t": 1}, "id": id}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        recv_json(&mut v2).await,
        json!([null, null, "realtime:a/b", "broadcast", {"type": "broadcast", "event": "note", "payload": {"t": 1}, "meta": {"id": id}}])
    );
    recv_json(&mut v1).await;

    let r = post("/api/broadcast".into())
        .json(&json!({"messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = post("/api/broadcast/a/events/e".into())
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = http
        .post(format!("{base}/api/broadcast"))
        .header("host", format!("{TENANT}.localhost"))
        .header("apikey", "not-a-jwt")
        .json(&json!({"messages": [{"topic": "a", "event": "e", "payload": {}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "Unauthorized"})
    );
    let unnamed = |host: &'static str| {
        http.post(format!("{base}/api/broadcast"))
            .header("host", host)
            .header("apikey", token(60))
            .json(&json!({"messages": []}))
    };
    // A multi-label Host whose first label names no tenant is refused (no fallback)...
    let r = unnamed("nobody.localhost").send().await.unwrap();
    assert_eq!(r.status(), 401);
    // ...while a single label falls back to the seeded tenant, whose validation then refuses.
    let r = unnamed("localhost").send().await.unwrap();
    assert_eq!(r.status(), 422);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn handshake_refusals_have_the_documented_status_and_body() {
    let app = start(&[("FALLBACK_TENANT", "none")]).await;
    let host = format!("{TENANT}.localhost");
    let refused = |r: Result<Ws, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or_default();
            (response.status().as_u16(), body)
        }
        other => panic!("expected an HTTP refusal, got {:?}", other.map(|_| ())),
    };
    assert_eq!(
        refused(try_connect(&app, &host, "vsn=3.0.0").await),
        (403, String::new())
    );
    assert_eq!(
        refused(try_connect(&app, &host, "vsn=2.0.0").await),
        (401, r#"{"error":"API key is missing"}"#.into())
    );
    assert_eq!(
        refused(try_connect(&app, &host, "apikey=abc&vsn=2.0.0").await),
        (
            401,
            r#"{"error":"The token provided is not a valid JWT"}"#.into()
        )
    );
    assert_eq!(
        refused(try_connect(&app, &host, &format!("apikey={}", token(-10))).await),
        (401, r#"{"error":"Token has expired"}"#.into())
    );
    let wrong_secret = common::sign(
        &json!({"role": "anon", "exp": now() + 60}),
        "another-secret-another-secret-another-secret",
    );
    assert_eq!(
        refused(try_connect(&app, &host, &format!("apikey={wrong_secret}")).await),
        (
            401,
            r#"{"error":"Failed to validate JWT signature"}"#.into()
        )
    );
    let roleless = common::sign(&json!({"exp": now() + 60}), common::API_SECRET);
    assert_eq!(
        refused(try_connect(&app, &host, &format!("apikey={roleless}")).await),
        (
            401,
            r#"{"error":"Fields `role` and `exp` are required in JWT"}"#.into()
        )
    );
    assert_eq!(
        refused(try_connect(&app, "nobody.localhost", &format!("apikey={}", token(60))).await),
        (404, r#"{"error":"Tenant not found"}"#.into())
    );
    // x-api-key wins over the query parameter.
    let url = format!(
        "ws://{}/realtime/v1/websocket?apikey=bad&vsn=2.0.0",
        app.local_addr()
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("host", HeaderValue::from_str(&host).unwrap());
    request
        .headers_mut()
        .insert("x-api-key", HeaderValue::from_str(&token(60)).unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());
    app.shutdown().await.unwrap();
}

/// Joins `realtime:a` with `access_token` = `token` and returns the reply.
async fn join_with_token(ws: &mut Ws, join_ref: &str, token: &str) -> Value {
    let mut payload = join_payload(default_config());
    payload["access_token"] = json!(token);
    send(
        ws,
        json!([join_ref, join_ref, "realtime:a", "phx_join", payload]),
    )
    .await;
    recv_json(ws).await
}

#[tokio::test]
async fn join_refusals_carry_code_prefixed_reasons() {
    let app = start(&[("TENANT_MAX_CHANNELS_PER_CLIENT", "2")]).await;
    let mut ws = connect(&app, "2.0.0").await;
    let reason = |reply: Value| reply[4]["response"]["reason"].as_str().unwrap().to_string();
    assert_eq!(
        reason(join(&mut ws, "realtime:", "1", default_config()).await),
        "TopicNameRequired: You must provide a topic name"
    );
    let r = reason(join_with_token(&mut ws, "2", &token(-30)).await);
    assert!(r.starts_with("InvalidJWTToken: Token has expired "), "{r}");
    let roleless = common::sign(&json!({"exp": now() + 60}), common::API_SECRET);
    assert_eq!(
        reason(join_with_token(&mut ws, "3", &roleless).await),
        "InvalidJWTToken: Fields `role` and `exp` are required in JWT"
    );
    let bad_sig = common::sign(
        &json!({"role": "anon", "exp": now() + 60}),
        "x-another-secret-another-secret-another",
    );
    assert_eq!(
        reason(join_with_token(&mut ws, "4", &bad_sig).await),
        "JwtSignatureError: Failed to validate JWT signature"
    );
    // An sb_ key falls back to the connection token.
    let mut sb = join_payload(default_config());
    sb["access_token"] = json!("sb_publishable_abc");
    send(&mut ws, json!(["5", "5", "realtime:a", "phx_join", sb])).await;
    assert_eq!(recv_json(&mut ws).await[4]["status"], "ok");
    assert_eq!(
        join(&mut ws, "realtime:b", "6", default_config()).await[4]["status"],
        "ok"
    );
    assert_eq!(
        reason(join(&mut ws, "realtime:c", "7", default_config()).await),
        "ChannelRateLimitReached: Too many channels"
    );
    // Rejoining a joined topic closes the old join first.
    send(
        &mut ws,
        json!([
            "8",
            "8",
            "realtime:b",
            "phx_join",
            join_payload(default_config())
        ]),
    )
    .await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!(["6", "6", "realtime:b", "phx_close", {}])
    );
    assert_eq!(recv_json(&mut ws).await[4]["status"], "ok");
    let mut replay = default_config();
    replay["broadcast"] = json!({"replay": {"since": 1}});
    send(
        &mut ws,
        json!(["9", "9", "realtime:b", "phx_join", join_payload(replay)]),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await[3], "phx_close");
    assert_eq!(
        reason(recv_json(&mut ws).await),
        "UnableToReplayMessages: Replay is not allowed for public channels"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_frames_are_dropped_and_the_socket_stays_up() {
    let app = start(&[("WS_MAX_FRAME_BYTES", "4096")]).await;
    let mut ws = connect(&app, "2.0.0").await;
    join(&mut ws, "realtime:r", "1", default_config()).await;
    for bad in ["not json", "{}", "[1,2,3]", "null", r#"["1","2",3,"e",{}]"#] {
        ws.send(Message::text(bad)).await.unwrap();
    }
    for bad in [
        vec![9u8, 0, 0],
        vec![3, 200, 0, 0, 0, 0, 1, b'x'],
        vec![3, 0, 0, 1, 1, 0, 1, 0xff, b'e', b'{'],
        vec![],
    ] {
        ws.send(Message::binary(bad)).await.unwrap();
    }
    ws.send(Message::binary(vec![0xff, 0xfe, 0xfd]))
        .await
        .unwrap();
    send(
        &mut ws,
        json!(["1", "2", "realtime:r", "no_such_event", {}]),
    )
    .await;
    send(&mut ws, json!([null, "3", "phoenix", "heartbeat", {}])).await;
    assert_eq!(
        recv_json(&mut ws).await[1],
        "3",
        "only the heartbeat is answered"
    );
    // A frame over the limit closes the socket with 1009.
    ws.send(Message::text("x".repeat(10_000))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1009);
    // The node is fine.
    let mut again = connect(&app, "2.0.0").await;
    assert_eq!(
        join(&mut again, "realtime:r", "1", default_config()).await[4]["status"],
        "ok"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_expiring_token_ends_the_channel_with_system_then_close() {
    let app = start(&[]).await;
    let mut ws = connect(&app, "2.0.0").await;
    let mut payload = join_payload(default_config());
    payload["access_token"] = json!(token(2));
    send(
        &mut ws,
        json!(["1", "1", "realtime:r", "phx_join", payload]),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await[4]["status"], "ok");
    let system = recv_json(&mut ws).await;
    assert_eq!(system[0], "1");
    assert_eq!(system[1], Value::Null);
    assert_eq!(system[3], "system");
    assert_eq!(system[4]["extension"], "system");
    assert_eq!(system[4]["status"], "error");
    assert_eq!(system[4]["channel"], "r");
    assert!(
        system[4]["message"]
            .as_str()
            .unwrap()
            .starts_with("Token has expired "),
        "{system}"
    );
    assert_eq!(
        recv_json(&mut ws).await,
        json!(["1", "1", "realtime:r", "phx_close", {}])
    );
    // A refreshed token keeps a channel alive; a bad refresh shuts it down.
    let mut payload = join_payload(default_config());
    payload["access_token"] = json!(token(2));
    send(
        &mut ws,
        json!(["2", "2", "realtime:s", "phx_join", payload]),
    )
    .await;
    recv_json(&mut ws).await;
    send(
        &mut ws,
        json!(["2", "3", "realtime:s", "access_token", {"access_token": token(3600)}]),
    )
    .await;
    silent(&mut ws, 2500).await;
    send(
        &mut ws,
        json!(["2", "4", "realtime:s", "access_token", {"access_token": "garbage"}]),
    )
    .await;
    let system = recv_json(&mut ws).await;
    assert_eq!(
        system[4]["message"],
        "The token provided is not a valid JWT"
    );
    assert_eq!(recv_json(&mut ws).await[3], "phx_close");
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn payload_size_limit_with_ack_replies_payload_size_exceeded() {
    let app = start(&[]).await;
    let http = reqwest::Client::new();
    let body = json!({"tenant": {"external_id": TENANT, "max_payload_size_in_kb": 1}});
    let r = http
        .put(format!("http://{}/api/tenants/{TENANT}", app.local_addr()))
        .bearer_auth(common::api_token())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let mut ws = connect(&app, "2.0.0").await;
    let mut config = default_config();
    config["broadcast"] = json!({"ack": true});
    join(&mut ws, "realtime:r", "1", config).await;
    let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(2000));
    ws.send(kind3("1", "2", "realtime:r", "e", big.as_bytes(), true))
        .await
        .unwrap();
    assert_eq!(
        recv_json(&mut ws).await,
        json!(["1", "2", "realtime:r", "phx_reply", {"status": "error", "response": "payload_size_exceeded"}])
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn events_per_second_limit_shuts_the_channel_down() {
    let app = start(&[]).await;
    let http = reqwest::Client::new();
    let r = http
        .put(format!("http://{}/api/tenants/{TENANT}", app.local_addr()))
        .bearer_auth(common::api_token())
        .json(&json!({"tenant": {"external_id": TENANT, "max_events_per_second": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut a = connect(&app, "2.0.0").await;
    let mut b = connect(&app, "2.0.0").await;
    join(&mut a, "realtime:r", "1", default_config()).await;
    join(&mut b, "realtime:r", "1", default_config()).await;
    // The rolling average moves at 5 s ticks (PROTOCOL.md 12.1): send enough, then keep sending
    // until the receiver is shut down.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut shut = None;
    let mut n = 0;
    while tokio::time::Instant::now() < deadline && shut.is_none() {
        n += 1;
        a.send(kind3("1", &n.to_string(), "realtime:r", "e", b"{}", true))
            .await
            .unwrap();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(20), b.next()).await
        {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v[3] == "system" {
                    shut = Some(v);
                    break;
                }
            }
        }
    }
    let system = shut.expect("the receiving channel is shut down");
    assert_eq!(system[4]["message"], "Too many messages per second");
    assert_eq!(recv_json(&mut b).await[3], "phx_close");
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn tenant_changes_disconnect_its_sockets() {
    let app = start(&[]).await;
    let mut ws = connect(&app, "2.0.0").await;
    join(&mut ws, "realtime:r", "1", default_config()).await;
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/api/tenants/{TENANT}/reload",
            app.local_addr()
        ))
        .bearer_auth(common::api_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        recv_json(&mut ws).await,
        json!([null, null, "realtime:r", "system", {"extension": "system", "status": "ok", "message": "Server requested disconnect"}])
    );
    assert_eq!(close_code(&mut ws).await, 1012);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_does_not_read_is_disconnected() {
    let app = start(&[
        ("WS_OUTBOX_CAPACITY", "8"),
        ("WS_WRITE_TIMEOUT_MS", "300"),
        ("TENANT_MAX_EVENTS_PER_SECOND", "1000000"),
    ])
    .await;
    let mut reader = connect(&app, "2.0.0").await;
    join(&mut reader, "realtime:r", "1", default_config()).await;
    let http = reqwest::Client::new();
    let payload = json!({"blob": "z".repeat(60_000)});
    // Loopback buffers hold a few MB; publish well past that without reading.
    for _ in 0..400 {
        let r = http
            .post(format!(
                "http://{}/api/broadcast/r/events/e",
                app.local_addr()
            ))
            .header("host", format!("{TENANT}.localhost"))
            .header("apikey", token(60))
            .json(&payload)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        if app
            .hub()
            .connection_count(&realtime::types::TenantId::from(TENANT))
            == 0
        {
            break;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app
        .hub()
        .connection_count(&realtime::types::TenantId::from(TENANT))
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow socket is closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(reader);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn max_connections_and_max_header_length_are_honoured() {
    let app = start(&[("MAX_CONNECTIONS", "1"), ("MAX_HEADER_LENGTH", "2000")]).await;
    let _first = connect(&app, "2.0.0").await;
    let host = format!("{TENANT}.localhost");
    match try_connect(&app, &host, &format!("apikey={}&vsn=2.0.0", token(60))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    let r = reqwest::Client::new()
        .get(format!("http://{}/healthcheck", app.local_addr()))
        .header("x-long", "v".repeat(3000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let url = format!(
        "ws://{}/socket/websocket?apikey={}&vsn=2.0.0",
        app.local_addr(),
        token(60)
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("host", HeaderValue::from_str(&host).unwrap());
    request
        .headers_mut()
        .insert("x-long", HeaderValue::from_str(&"v".repeat(3000)).unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 431)
        }
        other => panic!("expected 431, got {:?}", other.map(|_| ())),
    }
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let app = start(&[]).await;
    let mut ws = connect(&app, "2.0.0").await;
    join(&mut ws, "realtime:r", "1", default_config()).await;
    let frame = Frame::message(vec![b'[', 0xff, 0xfe, b']'], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1007);
    app.shutdown().await.unwrap();
}
