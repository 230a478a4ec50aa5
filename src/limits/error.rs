//! `LimitExceeded`: which limit refused an operation, with the code and client text of
//! PROTOCOL.md 12.2.

use crate::error::{ErrorCode, OperationalError};

/// A tenant or client limit refused an operation.
///
/// Rate variants carry the limit and the rolling average (events per second) that tripped it,
/// for logs and the HTTP `x-rate-*` headers. Cheap to build: no allocation.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LimitExceeded {
    /// `max_concurrent_users` reached: handshake refused with 429, or a join refused.
    #[error("tenant concurrent users reached the limit")]
    ConcurrentUsers {
        /// `max_concurrent_users`.
        limit: u32,
    },
    /// `max_joins_per_second` tripped, seen at the WebSocket handshake (HTTP 429).
    #[error("tenant joins per second tripped at handshake")]
    HandshakeJoins {
        /// `max_joins_per_second`.
        limit: u32,
        /// Rolling average that tripped it.
        avg: f64,
    },
    /// `max_joins_per_second` tripped, seen at a `phx_join` (join error, socket closed).
    #[error("tenant joins per second tripped")]
    Joins {
        /// `max_joins_per_second`.
        limit: u32,
        /// Rolling average that tripped it.
        avg: f64,
    },
    /// `max_events_per_second` tripped on the channel events counter (channel shutdown).
    #[error("tenant channel events per second tripped")]
    ChannelEvents {
        /// `max_events_per_second`.
        limit: u32,
        /// Rolling average that tripped it.
        avg: f64,
    },
    /// `max_events_per_second` tripped on the Postgres changes counter (changes dropped).
    #[error("tenant postgres changes per second tripped")]
    DbEvents {
        /// `max_events_per_second`.
        limit: u32,
        /// Rolling average that tripped it.
        avg: f64,
    },
    /// `max_presence_events_per_second` exceeded (channel shutdown).
    #[error("tenant presence events per second exceeded")]
    PresenceEvents {
        /// `max_presence_events_per_second`.
        limit: u32,
        /// Rolling average that exceeded it.
        avg: f64,
    },
    /// The client presence window is full (channel shutdown).
    #[error("client presence window full")]
    ClientPresence {
        /// Calls allowed per window.
        max_calls: u32,
        /// Window length in milliseconds.
        window_ms: u64,
    },
    /// `max_events_per_second` tripped on the HTTP requests counter (429 before the controller).
    #[error("tenant http requests per second tripped")]
    HttpRequests {
        /// `max_events_per_second`.
        limit: u32,
        /// Rolling average that tripped it.
        avg: f64,
    },
    /// HTTP broadcast refused: the channel events average is already above the limit (429).
    #[error("tenant events per second above the limit for http broadcast")]
    BroadcastRate {
        /// `max_events_per_second`.
        limit: u32,
        /// Rolling average of the channel events counter.
        avg: f64,
    },
    /// HTTP broadcast refused: the average plus the batch would pass the limit (429).
    #[error("http broadcast batch would pass the tenant events per second limit")]
    BroadcastBatch {
        /// `max_events_per_second`.
        limit: u32,
        /// Rolling average of the channel events counter.
        avg: f64,
        /// Messages in the refused batch.
        batch: u64,
    },
}

impl OperationalError for LimitExceeded {
    fn code(&self) -> ErrorCode {
        match self {
            LimitExceeded::ConcurrentUsers { .. } => ErrorCode::ConnectionRateLimitReached,
            LimitExceeded::HandshakeJoins { .. } => ErrorCode::JoinsRateLimitReached,
            LimitExceeded::Joins { .. } => ErrorCode::ClientJoinRateLimitReached,
            LimitExceeded::ChannelEvents { .. }
            | LimitExceeded::DbEvents { .. }
            | LimitExceeded::HttpRequests { .. }
            | LimitExceeded::BroadcastRate { .. }
            | LimitExceeded::BroadcastBatch { .. } => ErrorCode::MessagePerSecondRateLimitReached,
            LimitExceeded::PresenceEvents { .. } => ErrorCode::PresenceRateLimitReached,
            LimitExceeded::ClientPresence { .. } => ErrorCode::ClientPresenceRateLimitReached,
        }
    }

    fn client_message(&self) -> String {
        self.client_text().to_owned()
    }
}

impl LimitExceeded {
    /// Returns the exact text the original shows the client (PROTOCOL.md 1.6, 4.5, 12.2).
    pub fn client_text(&self) -> &'static str {
        match self {
            LimitExceeded::ConcurrentUsers { .. } => "Too many connected users",
            LimitExceeded::HandshakeJoins { .. } | LimitExceeded::Joins { .. } => {
                "Too many joins per second"
            }
            LimitExceeded::ChannelEvents { .. } => "Too many messages per second",
            LimitExceeded::DbEvents { .. } => "Too many postgres changes messages per second",
            LimitExceeded::PresenceEvents { .. } => "Too many presence messages per second",
            LimitExceeded::ClientPresence { .. } => "Client presence rate limit exceeded",
            LimitExceeded::HttpRequests { .. } => "Too many requests",
            LimitExceeded::BroadcastRate { .. } => "You have exceeded your rate limit",
            LimitExceeded::BroadcastBatch { .. } => {
                "Too many messages to broadcast, please reduce the batch size"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_texts_match_the_protocol_table() {
        let cases = [
            (
                LimitExceeded::ConcurrentUsers { limit: 1 },
                "ConnectionRateLimitReached: Too many connected users",
            ),
            (
                LimitExceeded::HandshakeJoins { limit: 1, avg: 1.0 },
                "JoinsRateLimitReached: Too many joins per second",
            ),
            (
                LimitExceeded::Joins { limit: 1, avg: 1.0 },
                "ClientJoinRateLimitReached: Too many joins per second",
            ),
            (
                LimitExceeded::ChannelEvents { limit: 1, avg: 1.0 },
                "MessagePerSecondRateLimitReached: Too many messages per second",
            ),
            (
                LimitExceeded::PresenceEvents { limit: 1, avg: 2.0 },
                "PresenceRateLimitReached: Too many presence messages per second",
            ),
            (
                LimitExceeded::ClientPresence {
                    max_calls: 5,
                    window_ms: 30_000,
                },
                "ClientPresenceRateLimitReached: Client presence rate limit exceeded",
            ),
            (
                LimitExceeded::HttpRequests { limit: 1, avg: 1.0 },
                "MessagePerSecondRateLimitReached: Too many requests",
            ),
        ];
        for (error, reason) in cases {
            assert_eq!(error.client_reason(), reason);
            assert_eq!(error.client_message(), error.client_text());
        }
    }

    #[test]
    fn log_text_is_lowercase_without_a_trailing_period() {
        let error = LimitExceeded::BroadcastBatch {
            limit: 10,
            avg: 4.0,
            batch: 7,
        };
        let text = error.to_string();
        assert_eq!(text, text.to_lowercase());
        assert!(!text.ends_with('.'));
    }
}
