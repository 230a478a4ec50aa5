//! `HandshakeError`: why a WebSocket upgrade was refused, with the HTTP status, the
//! `{"error": text}` body and the operational code of PROTOCOL.md 1.6.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::TokenError;
use crate::error::{ErrorCode, OperationalError};
use crate::limits::LimitExceeded;

/// A refused upgrade, in the order the checks run (PROTOCOL.md 1.6).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// `vsn` is not a serializer version this server speaks: 403 with an empty body, at once.
    #[error("unsupported vsn")]
    UnsupportedVsn,
    /// A request header is longer than `MAX_HEADER_LENGTH`.
    #[error("a request header is longer than {max} bytes")]
    HeaderTooLong {
        /// `MAX_HEADER_LENGTH`.
        max: usize,
    },
    /// The node already holds `MAX_CONNECTIONS` sockets.
    #[error("Too many connections on this node")]
    NodeFull,
    /// No tenant for the Host.
    #[error("Tenant not found")]
    TenantNotFound,
    /// The tenant could not be read; the cause is logged where it happened.
    #[error("tenant lookup failed ({0})")]
    TenantLookup(ErrorCode),
    /// The tenant is suspended.
    #[error("Realtime was disabled for this tenant")]
    Suspended,
    /// The connection JWT was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A tenant limit refused the connection (concurrent users, joins per second).
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
}

/// The body every failure whose cause is not the client's gets.
const GENERIC: &str = "Error connecting to Realtime";

impl HandshakeError {
    /// Returns the HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::UnsupportedVsn | HandshakeError::Suspended => StatusCode::FORBIDDEN,
            HandshakeError::HeaderTooLong { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HandshakeError::NodeFull => StatusCode::SERVICE_UNAVAILABLE,
            HandshakeError::TenantNotFound => StatusCode::NOT_FOUND,
            HandshakeError::TenantLookup(_) => StatusCode::INTERNAL_SERVER_ERROR,
            HandshakeError::Token(TokenError::InvalidClaim { .. }) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            HandshakeError::Token(_) => StatusCode::UNAUTHORIZED,
            HandshakeError::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Returns the `error` text of the body, or `None` for an empty body.
    pub fn body_text(&self) -> Option<String> {
        Some(match self {
            HandshakeError::UnsupportedVsn => return None,
            HandshakeError::TenantLookup(_)
            | HandshakeError::Token(TokenError::InvalidClaim { .. }) => GENERIC.to_string(),
            // The handshake says only that the token expired, not when.
            HandshakeError::Token(TokenError::Expired { .. }) => "Token has expired".to_string(),
            HandshakeError::Token(err) => err.client_message(),
            HandshakeError::Limit(LimitExceeded::ConcurrentUsers { .. }) => {
                "Too many connected users".to_string()
            }
            HandshakeError::Limit(_) => "Too many joins per second".to_string(),
            other => other.to_string(),
        })
    }

    /// Returns true when the answer waits `CONNECT_ERROR_BACKOFF_MS` first (every refusal but a
    /// bad `vsn` and an oversized header, which are answered at once).
    pub fn delayed(&self) -> bool {
        !matches!(
            self,
            HandshakeError::UnsupportedVsn | HandshakeError::HeaderTooLong { .. }
        )
    }
}

impl OperationalError for HandshakeError {
    fn code(&self) -> ErrorCode {
        match self {
            HandshakeError::UnsupportedVsn
            | HandshakeError::HeaderTooLong { .. }
            | HandshakeError::NodeFull
            | HandshakeError::Token(TokenError::Signature | TokenError::InvalidClaim { .. }) => {
                ErrorCode::ErrorConnectingToWebsocket
            }
            HandshakeError::TenantNotFound => ErrorCode::TenantNotFound,
            HandshakeError::TenantLookup(code) => *code,
            HandshakeError::Suspended => ErrorCode::RealtimeDisabledForTenant,
            HandshakeError::Token(err) => err.code(),
            HandshakeError::Limit(err) => err.code(),
        }
    }

    fn client_message(&self) -> String {
        self.body_text().unwrap_or_default()
    }
}

impl IntoResponse for HandshakeError {
    fn into_response(self) -> Response {
        match self.body_text() {
            None => self.status().into_response(),
            Some(text) => (
                self.status(),
                [(header::CONTENT_TYPE, "application/json")],
                json!({ "error": text }).to_string(),
            )
                .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PROTOCOL.md 1.6, row by row: status, body text, log code.
    #[test]
    fn every_refusal_matches_the_handshake_table() {
        let signer = TokenError::Signer { kid: None };
        let signer_text = signer.client_message();
        let rows: Vec<(HandshakeError, u16, Option<&str>, ErrorCode)> = vec![
            (
                HandshakeError::TenantNotFound,
                404,
                Some("Tenant not found"),
                ErrorCode::TenantNotFound,
            ),
            (
                HandshakeError::Suspended,
                403,
                Some("Realtime was disabled for this tenant"),
                ErrorCode::RealtimeDisabledForTenant,
            ),
            (
                TokenError::Missing.into(),
                401,
                Some("API key is missing"),
                ErrorCode::MissingAPIKey,
            ),
            (
                TokenError::Malformed.into(),
                401,
                Some("The token provided is not a valid JWT"),
                ErrorCode::MalformedJWT,
            ),
            (
                TokenError::Signature.into(),
                401,
                Some("Failed to validate JWT signature"),
                ErrorCode::ErrorConnectingToWebsocket,
            ),
            (
                signer.into(),
                401,
                Some(signer_text.as_str()),
                ErrorCode::JwtSignerError,
            ),
            (
                TokenError::Expired { seconds_ago: 5 }.into(),
                401,
                Some("Token has expired"),
                ErrorCode::InvalidJWTToken,
            ),
            (
                TokenError::MissingClaims.into(),
                401,
                Some("Fields `role` and `exp` are required in JWT"),
                ErrorCode::InvalidJWTToken,
            ),
            (
                LimitExceeded::ConcurrentUsers { limit: 1 }.into(),
                429,
                Some("Too many connected users"),
                ErrorCode::ConnectionRateLimitReached,
            ),
            (
                LimitExceeded::HandshakeJoins { limit: 1, avg: 2.0 }.into(),
                429,
                Some("Too many joins per second"),
                ErrorCode::JoinsRateLimitReached,
            ),
            (
                HandshakeError::TenantLookup(ErrorCode::MetadataDatabaseError),
                500,
                Some("Error connecting to Realtime"),
                ErrorCode::MetadataDatabaseError,
            ),
            (
                TokenError::InvalidClaim {
                    claim: "iss".into(),
                }
                .into(),
                500,
                Some("Error connecting to Realtime"),
                ErrorCode::ErrorConnectingToWebsocket,
            ),
            (
                HandshakeError::UnsupportedVsn,
                403,
                None,
                ErrorCode::ErrorConnectingToWebsocket,
            ),
        ];
        for (err, status, text, code) in rows {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            assert_eq!(err.body_text().as_deref(), text, "{err:?}");
            assert_eq!(err.code(), code, "{err:?}");
        }
    }

    #[test]
    fn only_a_bad_vsn_and_an_oversized_header_skip_the_backoff() {
        assert!(!HandshakeError::UnsupportedVsn.delayed());
        assert!(!HandshakeError::HeaderTooLong { max: 10 }.delayed());
        assert!(HandshakeError::TenantNotFound.delayed());
        assert!(HandshakeError::NodeFull.delayed());
        assert!(HandshakeError::from(TokenError::Missing).delayed());
    }
}
