//! A raw WebSocket client for the integration tests: connect with a Host header, send JSON
//! frames, read frames under a deadline, assert silence, read the close code.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use realtime::app::RunningApp;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Bytes, Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client socket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The self-host tenant that `start_seeded` creates.
pub const SELF_HOST: &str = "realtime-dev";

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A client token with role `anon` expiring in `exp_in` seconds, signed with `secret`.
pub fn client_token(secret: &str, exp_in: i64) -> String {
    super::sign(&json!({"role": "anon", "exp": now() + exp_in}), secret)
}

/// A node with the self-host tenant seeded and short error back-offs, plus `extra` variables.
pub async fn start_seeded(extra: &[(&str, &str)]) -> RunningApp {
    let mut vars = vec![
        ("SEED_SELF_HOST", "true"),
        ("CHANNEL_ERROR_BACKOFF_MS", "20"),
        ("CONNECT_ERROR_BACKOFF_MS", "10"),
    ];
    vars.extend_from_slice(extra);
    super::start_app(&vars).await.0
}

/// Opens `/socket/websocket?<query>` with `Host: <host>`.
pub async fn try_connect(app: &RunningApp, host: &str, query: &str) -> Result<Ws, Error> {
    let url = format!("ws://{}/socket/websocket?{query}", app.local_addr());
    let mut request = url.into_client_request().expect("a websocket request");
    request
        .headers_mut()
        .insert("host", HeaderValue::from_str(host).expect("a header value"));
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

/// Connects to `tenant` with `token` and serializer `vsn` (e.g. `2.0.0`).
pub async fn connect_as(app: &RunningApp, tenant: &str, token: &str, vsn: &str) -> Ws {
    try_connect(
        app,
        &format!("{tenant}.localhost"),
        &format!("apikey={token}&vsn={vsn}"),
    )
    .await
    .expect("websocket connects")
}

/// Sends a JSON text frame.
pub async fn send_json(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("frame sent");
}

/// Returns the next data or close frame within 5 s, skipping pings and pongs.
pub async fn next_message(ws: &mut Ws) -> Message {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("socket open")
            .expect("a valid frame");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

/// Returns the next frame, which must be JSON text.
pub async fn recv_json(ws: &mut Ws) -> Value {
    match next_message(ws).await {
        Message::Text(text) => serde_json::from_str(text.as_str()).expect("JSON text frame"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Returns the next frame, which must be binary.
pub async fn recv_binary(ws: &mut Ws) -> Bytes {
    match next_message(ws).await {
        Message::Binary(bytes) => bytes,
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

/// Asserts that no frame arrives within `ms`.
pub async fn silent(ws: &mut Ws, ms: u64) {
    if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(ms), ws.next()).await {
        panic!("expected no frame, got {m:?}");
    }
}

/// Reads until the server closes the socket (within 10 s) and returns the close code (1005 for
/// a close without code, 1006 for a dropped connection).
pub async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("closed within 10 s")
        {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(Message::Close(None))) | None => return 1005,
            Some(Err(_)) => return 1006,
            Some(Ok(_)) => {}
        }
    }
}
