//! The WebSocket test client (`testkit::ws`, re-exported) plus the helpers that take an
//! in-process node.
#![allow(unused_imports)]

use realtime::app::RunningApp;
use tokio_tungstenite::tungstenite::Error;

pub use testkit::ws::{
    Endpoint, Ws, close_code, next_message, recv_binary, recv_json, send_binary, send_json, silent,
};
pub use testkit::{SELF_HOST, client_token, now};

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

/// Opens `/socket/websocket?<query>` on `app` with `Host: <host>`.
pub async fn try_connect(app: &RunningApp, host: &str, query: &str) -> Result<Ws, Error> {
    testkit::ws::try_connect(app.local_addr(), host, query).await
}

/// Connects to `tenant` with `token` and serializer `vsn` (e.g. `2.0.0`).
pub async fn connect_as(app: &RunningApp, tenant: &str, token: &str, vsn: &str) -> Ws {
    testkit::ws::connect_as(app.local_addr(), tenant, token, vsn).await
}
