//! The WebSocket handshake: `vsn`, tenant from the Host header, connection JWT, limits.

use std::sync::Arc;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::Transport;
use super::error::HandshakeError;
use super::socket::{SocketParams, run_socket};
use super::sockets::SocketPermit;
use crate::auth::TenantKeys;
use crate::error::OperationalError;
use crate::hub::outbox;
use crate::phoenix::Vsn;
use crate::tenants::Tenant;
use crate::types::ConnId;

/// Initial read buffer of a socket; it grows for larger frames. Small, because idle sockets
/// dominate memory.
const READ_BUFFER_BYTES: usize = 1024;
/// Bytes of queued frames after which a write goes out even before the flush.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

async fn resolve_tenant(
    transport: &Transport,
    headers: &HeaderMap,
) -> Result<Arc<Tenant>, HandshakeError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let found = transport
        .channels
        .tenants
        .resolve_host(host, transport.fallback_tenant.as_ref())
        .await
        .map_err(|err| {
            tracing::error!(error_code = %err.code(), error = %err, "tenant lookup failed at handshake");
            HandshakeError::TenantLookup(err.code())
        })?;
    found.ok_or(HandshakeError::TenantNotFound)
}

/// The query parameters the handshake reads (others, like `log_level`, are ignored).
#[derive(serde::Deserialize)]
pub(super) struct HandshakeQuery {
    vsn: Option<String>,
    apikey: Option<String>,
}

/// `GET /socket/websocket` and `GET /realtime/v1/websocket`.
pub(super) async fn upgrade(
    State(transport): State<Arc<Transport>>,
    Query(query): Query<HandshakeQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let admitted = match admit(&transport, &query, &headers).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            tracing::info!(error_code = %refusal.code(), status = refusal.status().as_u16(), reason = %refusal, "websocket upgrade refused");
            if refusal.delayed() {
                tokio::time::sleep(transport.connect_error_backoff).await;
            }
            return refusal.into_response();
        }
    };
    // The `request.headers` of private channels' authorization checks (PROTOCOL.md 8).
    let x_headers: Arc<str> = crate::channel::x_headers_json(
        headers
            .iter()
            .filter_map(|(name, value)| value.to_str().ok().map(|v| (name.as_str(), v))),
    )
    .into();
    let config = &transport.config;
    let max = config.max_frame_bytes;
    // Small starting buffers keep idle sockets light; tungstenite requires the write buffer cap
    // to exceed the write buffer size.
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WRITE_BUFFER_BYTES + max.saturating_mul(2))
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            // axum runs this in a task of its own; the transport's owner counts it, so the
            // node's shutdown waits for the close frame.
            let owner = transport.owner.clone();
            owner.track(run_admitted(transport, admitted, x_headers, socket))
        })
}

/// Runs an upgraded socket: registers it with its tenant, then serves it until it closes. The
/// socket's place (`MAX_CONNECTIONS`) and its registration are released when this ends.
async fn run_admitted(
    transport: Arc<Transport>,
    admitted: Admitted,
    headers: Arc<str>,
    socket: WebSocket,
) {
    let Admitted {
        tenant,
        token,
        claims,
        limiter,
        vsn,
        permit,
    } = admitted;
    let tally = crate::metrics::SocketTally::new(tenant.external_id.as_str());
    let (outbox, rx, signals) = outbox(transport.config.outbox_capacity);
    let conn = ConnId::next();
    let registration = transport.channels.hub.register_connection(
        tenant.external_id.clone(),
        conn,
        outbox.clone(),
    );
    let session = crate::channel::Session::new(
        transport.channels.clone(),
        crate::channel::AdmittedSocket {
            tenant,
            limiter,
            conn,
            vsn,
            outbox,
            token,
            claims,
            headers,
        },
    );
    run_socket(SocketParams {
        socket,
        session,
        rx,
        signals,
        vsn,
        transport: transport.clone(),
        tally,
    })
    .await;
    drop(registration);
    drop(permit);
}

struct Admitted {
    tenant: Arc<Tenant>,
    token: String,
    claims: crate::auth::Claims,
    limiter: crate::limits::TenantLimiter,
    vsn: Vsn,
    permit: SocketPermit,
}

/// The checks of PROTOCOL.md 1.6, in order (a bad `vsn` first, then the node's own caps).
async fn admit(
    transport: &Transport,
    query: &HandshakeQuery,
    headers: &HeaderMap,
) -> Result<Admitted, HandshakeError> {
    if headers
        .values()
        .any(|v| v.len() > transport.max_header_length)
    {
        return Err(HandshakeError::HeaderTooLong {
            max: transport.max_header_length,
        });
    }
    let vsn = Vsn::from_query(query.vsn.as_deref()).ok_or(HandshakeError::UnsupportedVsn)?;
    let permit = transport
        .sockets
        .try_admit()
        .ok_or(HandshakeError::NodeFull)?;
    let tenant = resolve_tenant(transport, headers).await?;
    if tenant.suspend {
        return Err(HandshakeError::Suspended);
    }
    let token = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query.apikey.clone())
        .unwrap_or_default();
    let keys = TenantKeys {
        jwt_secret: tenant.jwt_secret.as_ref(),
        jwks: tenant.jwt_jwks.as_ref(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claims = transport.channels.tokens.verify(
        &token,
        keys,
        &transport.channels.claim_validators,
        now,
    )?;
    let limiter = transport.limits.check_handshake(
        &tenant.external_id,
        &tenant.limits,
        std::time::Instant::now(),
    )?;
    Ok(Admitted {
        tenant,
        token,
        claims,
        limiter,
        vsn,
        permit,
    })
}
