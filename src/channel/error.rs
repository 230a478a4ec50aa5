//! `JoinError`: why a `phx_join` was refused (PROTOCOL.md 3.4), and `ShutdownReason`: why the
//! server ended a joined channel (PROTOCOL.md 3.5, 12.2). Each carries the operational code,
//! the text the client sees and, for joins, whether the socket closes after the reply.

use crate::auth::TokenError;
use crate::authorization::AuthorizationError;
use crate::close_code::CloseCode;
use crate::error::{ErrorCode, OperationalError};
use crate::limits::LimitExceeded;

/// A refused join. The client sees `{"reason":"<Code>: <message>"}` after
/// `CHANNEL_ERROR_BACKOFF_MS`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum JoinError {
    /// The topic is exactly `realtime:`.
    #[error("join topic has no sub topic")]
    TopicNameRequired,
    /// The node is draining.
    #[error("node is draining")]
    Restarting,
    /// The socket's tenant no longer exists (the socket closes with 1001).
    #[error("tenant not found at join")]
    TenantNotFound,
    /// The tenant record could not be loaded (the cause is logged where it happened).
    #[error("tenant record could not be loaded at join")]
    TenantUnavailable,
    /// The tenant is suspended.
    #[error("realtime disabled for the tenant")]
    TenantSuspended,
    /// A public join on a `private_only` tenant.
    #[error("tenant allows private channels only")]
    PrivateOnly,
    /// A tenant limit: concurrent users, or joins per second (the socket closes with 1001).
    #[error("join refused by a tenant limit")]
    Limit(#[source] LimitExceeded),
    /// The socket has `max_channels_per_client` channels.
    #[error("socket has too many channels")]
    TooManyChannels {
        /// `max_channels_per_client`.
        limit: u32,
    },
    /// The channel JWT was refused.
    #[error("channel token refused")]
    Token(#[source] TokenError),
    /// A private channel without read permission, or whose policies failed (PROTOCOL.md 8).
    #[error("no read permission on a private channel")]
    Unauthorized {
        /// The channel name without `realtime:`.
        sub_topic: String,
    },
    /// The read check of a private channel could not run: the tenant database, its pool, a
    /// missing partition, a timeout.
    #[error("authorization check failed at join")]
    Authorization(#[source] AuthorizationError),
    /// `config.broadcast.replay` on a public channel.
    #[error("replay requested on a public channel")]
    ReplayOnPublicChannel,
    /// `config.broadcast.replay` without an integer `since` (or with a bad `limit`).
    #[error("replay parameters are not valid")]
    ReplayParamsInvalid,
    /// The replay query failed (PROTOCOL.md 4.6).
    #[error("replay query failed: {0}")]
    ReplayFailed(String),
}

impl JoinError {
    /// Returns the close code the socket closes with after the reply, if it does (PROTOCOL.md
    /// 1.7, 3.4: `TenantNotFound` and `ClientJoinRateLimitReached`).
    pub fn closes_socket(&self) -> Option<CloseCode> {
        match self {
            JoinError::TenantNotFound | JoinError::Limit(LimitExceeded::Joins { .. }) => {
                Some(CloseCode::GoingAway)
            }
            _ => None,
        }
    }
}

impl OperationalError for JoinError {
    fn code(&self) -> ErrorCode {
        match self {
            JoinError::TopicNameRequired => ErrorCode::TopicNameRequired,
            JoinError::Restarting => ErrorCode::RealtimeRestarting,
            JoinError::TenantNotFound => ErrorCode::TenantNotFound,
            JoinError::TenantUnavailable => ErrorCode::UnknownErrorOnChannel,
            JoinError::TenantSuspended => ErrorCode::RealtimeDisabledForTenant,
            JoinError::PrivateOnly => ErrorCode::PrivateOnly,
            JoinError::Limit(err) => err.code(),
            JoinError::TooManyChannels { .. } => ErrorCode::ChannelRateLimitReached,
            JoinError::Token(err) => err.code(),
            JoinError::Unauthorized { .. } => ErrorCode::Unauthorized,
            JoinError::Authorization(err) => err.code(),
            JoinError::ReplayOnPublicChannel
            | JoinError::ReplayParamsInvalid
            | JoinError::ReplayFailed(_) => ErrorCode::UnableToReplayMessages,
        }
    }

    fn client_message(&self) -> String {
        match self {
            JoinError::TopicNameRequired => "You must provide a topic name".into(),
            JoinError::Restarting => "Realtime is restarting, please standby".into(),
            JoinError::TenantNotFound => "Tenant with the given ID does not exist".into(),
            JoinError::TenantUnavailable => "Unable to load the tenant".into(),
            JoinError::TenantSuspended => "Realtime disabled for this tenant".into(),
            JoinError::PrivateOnly => "This project only allows private channels".into(),
            JoinError::Limit(err) => err.client_text().into(),
            JoinError::TooManyChannels { .. } => "Too many channels".into(),
            JoinError::Token(err) => err.client_message(),
            JoinError::Unauthorized { sub_topic } => {
                format!("You do not have permissions to read from this Channel topic: {sub_topic}")
            }
            JoinError::Authorization(err) => err.client_message(),
            JoinError::ReplayOnPublicChannel => "Replay is not allowed for public channels".into(),
            JoinError::ReplayParamsInvalid => "Replay params are not valid".into(),
            JoinError::ReplayFailed(_) => "Realtime was unable to replay messages".into(),
        }
    }

    fn client_reason(&self) -> String {
        match self {
            JoinError::Authorization(err) => err.client_reason(),
            _ => format!("{}: {}", self.code(), self.client_message()),
        }
    }
}

/// Why the server ends a joined channel: a `system` error with the client text, then
/// `phx_close`; the socket and its other channels stay up (PROTOCOL.md 12.2).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ShutdownReason {
    /// A rate limit: tenant events or presence events per second, the client presence window.
    #[error("channel shut down by a limit")]
    Limit(#[source] LimitExceeded),
    /// A presence `track` payload over `max_payload_size_in_kb`.
    #[error("presence track payload too large")]
    TrackTooLarge,
    /// The channel's token expired, or a refreshed token was refused.
    #[error("channel token expired or refused")]
    Token(#[source] TokenError),
    /// A token refresh took away a read permission of a private channel.
    #[error("read permission revoked by a token refresh")]
    ReadRevoked {
        /// The channel name without `realtime:`.
        sub_topic: String,
    },
    /// The read check after a token refresh could not run.
    #[error("authorization check failed after a token refresh")]
    Authorization(#[source] AuthorizationError),
}

impl OperationalError for ShutdownReason {
    fn code(&self) -> ErrorCode {
        match self {
            ShutdownReason::Limit(err) => err.code(),
            ShutdownReason::TrackTooLarge => ErrorCode::PayloadSizeExceeded,
            ShutdownReason::Token(err) => err.code(),
            ShutdownReason::ReadRevoked { .. } => ErrorCode::Unauthorized,
            ShutdownReason::Authorization(err) => err.code(),
        }
    }

    fn client_message(&self) -> String {
        match self {
            ShutdownReason::Limit(err) => err.client_text().into(),
            ShutdownReason::TrackTooLarge => "Track message size exceeded".into(),
            ShutdownReason::Token(err) => err.client_message(),
            ShutdownReason::ReadRevoked { sub_topic } => format!(
                "You no longer have permission to read from this Channel topic: {sub_topic}"
            ),
            ShutdownReason::Authorization(err) => err.client_message(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refusal against the `reason` column and side effect of PROTOCOL.md 3.4 / 12.2.
    #[test]
    fn join_errors_match_the_protocol_table() {
        let going_away = Some(CloseCode::GoingAway);
        let cases = [
            (
                JoinError::TopicNameRequired,
                "TopicNameRequired: You must provide a topic name",
                None,
            ),
            (
                JoinError::Restarting,
                "RealtimeRestarting: Realtime is restarting, please standby",
                None,
            ),
            (
                JoinError::TenantNotFound,
                "TenantNotFound: Tenant with the given ID does not exist",
                going_away,
            ),
            (
                JoinError::TenantUnavailable,
                "UnknownErrorOnChannel: Unable to load the tenant",
                None,
            ),
            (
                JoinError::TenantSuspended,
                "RealtimeDisabledForTenant: Realtime disabled for this tenant",
                None,
            ),
            (
                JoinError::PrivateOnly,
                "PrivateOnly: This project only allows private channels",
                None,
            ),
            (
                JoinError::Limit(LimitExceeded::ConcurrentUsers { limit: 1 }),
                "ConnectionRateLimitReached: Too many connected users",
                None,
            ),
            (
                JoinError::Limit(LimitExceeded::Joins { limit: 1, avg: 1.0 }),
                "ClientJoinRateLimitReached: Too many joins per second",
                going_away,
            ),
            (
                JoinError::TooManyChannels { limit: 100 },
                "ChannelRateLimitReached: Too many channels",
                None,
            ),
            (
                JoinError::Token(TokenError::Expired { seconds_ago: 30 }),
                "InvalidJWTToken: Token has expired 30 seconds ago",
                None,
            ),
            (
                JoinError::Token(TokenError::MissingClaims),
                "InvalidJWTToken: Fields `role` and `exp` are required in JWT",
                None,
            ),
            (
                JoinError::Token(TokenError::Malformed),
                "MalformedJWT: The token provided is not a valid JWT",
                None,
            ),
            (
                JoinError::Token(TokenError::Signature),
                "JwtSignatureError: Failed to validate JWT signature",
                None,
            ),
            (
                JoinError::Token(TokenError::Signer { kid: None }),
                "JwtSignerError: Failed to generate JWT signer, check your JWT secret or JWKS configuration",
                None,
            ),
            (
                JoinError::Unauthorized {
                    sub_topic: "secret-room".into(),
                },
                "Unauthorized: You do not have permissions to read from this Channel topic: secret-room",
                None,
            ),
            (
                JoinError::ReplayOnPublicChannel,
                "UnableToReplayMessages: Replay is not allowed for public channels",
                None,
            ),
            (
                JoinError::ReplayParamsInvalid,
                "UnableToReplayMessages: Replay params are not valid",
                None,
            ),
            (
                JoinError::ReplayFailed("relation does not exist".into()),
                "UnableToReplayMessages: Realtime was unable to replay messages",
                None,
            ),
            (
                JoinError::Authorization(AuthorizationError::MissingPartition("t".into())),
                "MissingPartition: Realtime was unable to find the expected messages partition",
                None,
            ),
            (
                JoinError::Authorization(AuthorizationError::Overloaded {
                    tenant: "t".into(),
                    why: crate::authorization::Overload::QueueFull,
                }),
                "IncreaseConnectionPool: Please increase your connection pool size",
                None,
            ),
            (
                JoinError::Authorization(AuthorizationError::Query("boom".into())),
                "Realtime was unable to connect to the project database",
                None,
            ),
        ];
        for (error, reason, close) in cases {
            assert_eq!(error.client_reason(), reason, "{error:?}");
            assert_eq!(error.closes_socket(), close, "{error:?}");
        }
    }

    /// Every shutdown against the `system` message texts of PROTOCOL.md 3.5 / 12.2.
    #[test]
    fn shutdown_reasons_match_the_protocol_table() {
        let cases = [
            (
                ShutdownReason::Limit(LimitExceeded::ChannelEvents { limit: 1, avg: 2.0 }),
                ErrorCode::MessagePerSecondRateLimitReached,
                "Too many messages per second",
            ),
            (
                ShutdownReason::Limit(LimitExceeded::PresenceEvents { limit: 1, avg: 2.0 }),
                ErrorCode::PresenceRateLimitReached,
                "Too many presence messages per second",
            ),
            (
                ShutdownReason::Limit(LimitExceeded::ClientPresence {
                    max_calls: 5,
                    window_ms: 30_000,
                }),
                ErrorCode::ClientPresenceRateLimitReached,
                "Client presence rate limit exceeded",
            ),
            (
                ShutdownReason::TrackTooLarge,
                ErrorCode::PayloadSizeExceeded,
                "Track message size exceeded",
            ),
            (
                ShutdownReason::Token(TokenError::Expired { seconds_ago: 0 }),
                ErrorCode::InvalidJWTToken,
                "Token has expired 0 seconds ago",
            ),
            (
                ShutdownReason::Token(TokenError::Malformed),
                ErrorCode::MalformedJWT,
                "The token provided is not a valid JWT",
            ),
            (
                ShutdownReason::ReadRevoked {
                    sub_topic: "room1".into(),
                },
                ErrorCode::Unauthorized,
                "You no longer have permission to read from this Channel topic: room1",
            ),
            (
                ShutdownReason::Authorization(AuthorizationError::Query("x".into())),
                ErrorCode::UnableToSetPolicies,
                "Realtime was unable to connect to the project database",
            ),
        ];
        for (reason, code, message) in cases {
            assert_eq!(reason.code(), code, "{reason:?}");
            assert_eq!(reason.client_message(), message, "{reason:?}");
        }
    }

    #[test]
    fn log_text_is_lowercase_without_a_trailing_period() {
        let texts = [
            JoinError::TenantNotFound.to_string(),
            JoinError::Token(TokenError::Signature).to_string(),
            ShutdownReason::TrackTooLarge.to_string(),
        ];
        for text in texts {
            assert_eq!(text, text.to_lowercase());
            assert!(!text.ends_with('.'));
        }
    }
}
