//! The WebSocket handshake: `vsn`, tenant from the Host header, connection JWT, limits.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Transport;
use super::socket::{SocketParams, run_socket};
use crate::auth::{TenantKeys, TokenError, verify_client_token};
use crate::error::{ErrorCode, OperationalError};
use crate::hub::outbox;
use crate::limits::LimitExceeded;
use crate::phoenix::Vsn;
use crate::tenants::Tenant;
use crate::types::ConnId;

/// Initial read buffer of a socket; it grows for larger frames. Small, because idle sockets
/// dominate memory.
const READ_BUFFER_BYTES: usize = 1024;
/// Bytes of queued frames after which a write goes out even before the flush.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// A refused upgrade: status, `{"error": text}`, log code.
struct Refusal {
    status: StatusCode,
    text: &'static str,
    owned: Option<String>,
    code: ErrorCode,
}

impl Refusal {
    fn new(status: StatusCode, text: &'static str, code: ErrorCode) -> Refusal {
        Refusal {
            status,
            text,
            owned: None,
            code,
        }
    }

    fn into_response(self) -> Response {
        let text = self.owned.as_deref().unwrap_or(self.text);
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            json!({ "error": text }).to_string(),
        )
            .into_response()
    }
}

async fn resolve_tenant(
    transport: &Transport,
    headers: &HeaderMap,
) -> Result<Arc<Tenant>, Refusal> {
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
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error connecting to Realtime",
                ErrorCode::ErrorConnectingToWebsocket,
            )
        })?;
    if let Some(tenant) = found {
        return Ok(tenant);
    }
    Err(Refusal::new(
        StatusCode::NOT_FOUND,
        "Tenant not found",
        ErrorCode::TenantNotFound,
    ))
}

fn token_refusal(err: &TokenError) -> Refusal {
    let status = StatusCode::UNAUTHORIZED;
    match err {
        TokenError::Missing => Refusal::new(status, "API key is missing", ErrorCode::MissingAPIKey),
        TokenError::Malformed => Refusal::new(
            status,
            "The token provided is not a valid JWT",
            ErrorCode::MalformedJWT,
        ),
        TokenError::Signature => Refusal::new(
            status,
            "Failed to validate JWT signature",
            ErrorCode::ErrorConnectingToWebsocket,
        ),
        TokenError::Signer { .. } => Refusal {
            owned: Some(err.client_message()),
            ..Refusal::new(status, "", ErrorCode::JwtSignerError)
        },
        TokenError::Expired { .. } => {
            Refusal::new(status, "Token has expired", ErrorCode::InvalidJWTToken)
        }
        TokenError::MissingClaims => Refusal::new(
            status,
            "Fields `role` and `exp` are required in JWT",
            ErrorCode::InvalidJWTToken,
        ),
        TokenError::InvalidClaim { .. } => Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error connecting to Realtime",
            ErrorCode::ErrorConnectingToWebsocket,
        ),
    }
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
    // An unsupported serializer version is refused at once, with an empty body.
    if headers
        .values()
        .any(|v| v.len() > transport.max_header_length)
    {
        return (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            [(header::CONTENT_TYPE, "application/json")],
            json!({ "error": format!("a request header is longer than {} bytes", transport.max_header_length) })
                .to_string(),
        )
            .into_response();
    }
    let Some(vsn) = Vsn::from_query(query.vsn.as_deref()) else {
        return StatusCode::FORBIDDEN.into_response();
    };
    match admit(&transport, &query, &headers).await {
        Ok(admitted) => {
            let config = &transport.config;
            let max = config.max_frame_bytes;
            // Small starting buffers keep idle sockets light; tungstenite requires the write
            // buffer cap to exceed the write buffer size.
            ws.read_buffer_size(READ_BUFFER_BYTES)
                .write_buffer_size(WRITE_BUFFER_BYTES)
                .max_write_buffer_size(WRITE_BUFFER_BYTES + max.saturating_mul(2))
                .max_message_size(max)
                .max_frame_size(max)
                .on_upgrade(move |socket| async move {
                    let (outbox, rx, signals) = outbox(transport.config.outbox_capacity);
                    let conn = ConnId::next();
                    let registration = transport.channels.hub.register_connection(
                        admitted.tenant.external_id.clone(),
                        conn,
                        outbox.clone(),
                    );
                    let session = crate::channel::Session::new(
                        transport.channels.clone(),
                        crate::channel::AdmittedSocket {
                            tenant: admitted.tenant,
                            limiter: admitted.limiter,
                            conn,
                            vsn,
                            outbox,
                            token: admitted.token,
                            claims: admitted.claims,
                        },
                    );
                    transport.open_sockets.fetch_add(1, Ordering::Relaxed);
                    run_socket(SocketParams {
                        socket,
                        session,
                        rx,
                        signals,
                        vsn,
                        transport: transport.clone(),
                    })
                    .await;
                    transport.open_sockets.fetch_sub(1, Ordering::Relaxed);
                    drop(registration);
                })
        }
        Err(refusal) => {
            tracing::info!(error_code = %refusal.code, status = refusal.status.as_u16(), "websocket upgrade refused");
            tokio::time::sleep(transport.connect_error_backoff).await;
            refusal.into_response()
        }
    }
}

struct Admitted {
    tenant: Arc<Tenant>,
    token: String,
    claims: crate::auth::Claims,
    limiter: crate::limits::TenantLimiter,
}

async fn admit(
    transport: &Transport,
    query: &HandshakeQuery,
    headers: &HeaderMap,
) -> Result<Admitted, Refusal> {
    if transport.open_sockets.load(Ordering::Relaxed) >= transport.max_connections {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many connections on this node",
            ErrorCode::ErrorConnectingToWebsocket,
        ));
    }
    let tenant = resolve_tenant(transport, headers).await?;
    if tenant.suspend {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "Realtime was disabled for this tenant",
            ErrorCode::RealtimeDisabledForTenant,
        ));
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
    let claims = verify_client_token(&token, keys, &transport.channels.claim_validators, now)
        .map_err(|e| token_refusal(&e))?;
    let limiter = transport
        .limits
        .check_handshake(
            &tenant.external_id,
            &tenant.limits,
            std::time::Instant::now(),
        )
        .map_err(|err| {
            let text = match err {
                LimitExceeded::ConcurrentUsers { .. } => "Too many connected users",
                _ => "Too many joins per second",
            };
            Refusal::new(StatusCode::TOO_MANY_REQUESTS, text, err.code())
        })?;
    Ok(Admitted {
        tenant,
        token,
        claims,
        limiter,
    })
}
