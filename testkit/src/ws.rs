//! A raw WebSocket client: connect with a Host header and a query, send JSON and binary frames,
//! read frames under a deadline, assert silence, read the close code.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Bytes, Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client socket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Something with an HTTP listener to connect to: an address or a node process.
pub trait Endpoint {
    /// The listener's address.
    fn addr(&self) -> SocketAddr;
}

impl Endpoint for SocketAddr {
    fn addr(&self) -> SocketAddr {
        *self
    }
}

impl<T: Endpoint + ?Sized> Endpoint for &T {
    fn addr(&self) -> SocketAddr {
        (**self).addr()
    }
}

/// Opens `/socket/websocket?<query>` on `server` with `Host: <host>`.
pub async fn try_connect(server: impl Endpoint, host: &str, query: &str) -> Result<Ws, Error> {
    let url = format!("ws://{}/socket/websocket?{query}", server.addr());
    let mut request = url.into_client_request().expect("a websocket request");
    request
        .headers_mut()
        .insert("host", HeaderValue::from_str(host).expect("a header value"));
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

/// Connects to `tenant` (Host `<tenant>.localhost`) with `token` and serializer `vsn`
/// (e.g. `2.0.0`).
pub async fn connect_as(server: impl Endpoint, tenant: &str, token: &str, vsn: &str) -> Ws {
    try_connect(
        server,
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

/// Sends a binary frame.
pub async fn send_binary(ws: &mut Ws, bytes: impl Into<Bytes>) {
    ws.send(Message::Binary(bytes.into()))
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
