//! The WebSocket edge: upgrade at `/socket/websocket` and `/realtime/v1/websocket`, the
//! handshake checks of PROTOCOL.md 1.6, and one task per socket (heartbeat/idle timeout,
//! bounded outbound queue, close codes).
//!
//! The close codes and when each is sent: [`crate::close_code::CloseCode`].

mod error;
mod handshake;
mod socket;
mod sockets;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;

use crate::channel::ChannelContext;
use crate::config::TransportConfig;
use crate::limits::Limits;
use crate::tasks::Owner;
use crate::types::TenantId;

pub use sockets::OpenSockets;

/// What the WebSocket edge needs.
pub struct Transport {
    /// Services of channel sessions.
    pub channels: Arc<ChannelContext>,
    /// Tenant limits.
    pub limits: Arc<Limits>,
    /// Transport settings.
    pub config: TransportConfig,
    /// `FALLBACK_TENANT`: the tenant of a Host that names none.
    pub fallback_tenant: Option<TenantId>,
    /// `CONNECT_ERROR_BACKOFF_MS`.
    pub connect_error_backoff: Duration,
    /// `NO_CHANNEL_TIMEOUT_IN_MS`.
    pub no_channel_timeout: Duration,
    /// `MAX_HEADER_LENGTH`: longest header value, bytes (checked here: the WebSocket routes skip
    /// the API's middleware stack).
    pub max_header_length: usize,
    /// Open sockets, capped at `MAX_CONNECTIONS`.
    pub sockets: Arc<OpenSockets>,
    /// Owns every socket task: cancelling it drains the sockets (`system` disconnect, close 1012).
    pub owner: Owner,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("sockets", &self.sockets)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Drains every socket of this node (a `system` disconnect to each channel, then close
    /// 1012) and waits up to `grace` for their tasks to end. Returns false when some were still open.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.owner.shutdown(grace).await
    }
}

/// Returns the router of the WebSocket endpoints.
pub fn router(transport: Arc<Transport>) -> Router {
    Router::new()
        .route("/socket/websocket", get(handshake::upgrade))
        .route("/realtime/v1/websocket", get(handshake::upgrade))
        .with_state(transport)
}
