//! `CloseCode`: every WebSocket close code this server sends, and when (the one table of
//! README "Close codes"; PROTOCOL.md 1.7 for 1001 and 1012).
//!
//! | code | variant | when |
//! |---|---|---|
//! | 1000 | [`CloseCode::Normal`] | the socket had no channel for `NO_CHANNEL_TIMEOUT_IN_MS` |
//! | 1001 | [`CloseCode::GoingAway`] | join refused with `TenantNotFound` or `ClientJoinRateLimitReached` |
//! | 1007 | [`CloseCode::InvalidPayload`] | a text frame that is not valid UTF-8 |
//! | 1009 | [`CloseCode::TooBig`] | a frame larger than `WS_MAX_FRAME_BYTES` |
//! | 1011 | [`CloseCode::InternalError`] | a write failed or timed out (`WS_WRITE_TIMEOUT_MS`) |
//! | 1012 | [`CloseCode::ServiceRestart`] | tenant-wide disconnect (tenant deleted, reloaded, or updated in its keys, `private_only` or `suspend`); node draining (shutting down) |
//! | 4000 | [`CloseCode::IdleTimeout`] | no inbound frame for `WS_IDLE_TIMEOUT_MS` (the client stopped heartbeating) |
//! | 4008 | [`CloseCode::SlowConsumer`] | slow consumer: the outbound queue (`WS_OUTBOX_CAPACITY`) overflowed |
//!
//! A close frame from the client is answered with a close frame carrying the client's own code
//! (RFC 6455 5.5.1), which is not one of these.

use std::fmt;

/// A WebSocket close code the server chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: normal closure (no channel joined for `NO_CHANNEL_TIMEOUT_IN_MS`).
    Normal,
    /// 1001: going away (a join refusal that ends the socket; node shutdown).
    GoingAway,
    /// 1007: a text frame whose payload is not UTF-8.
    InvalidPayload,
    /// 1009: a frame too big to process.
    TooBig,
    /// 1011: internal error (a write failed or stalled).
    InternalError,
    /// 1012: service restart (tenant-wide disconnect).
    ServiceRestart,
    /// 4000: no inbound frame within the idle timeout.
    IdleTimeout,
    /// 4008: slow consumer (the outbound queue overflowed).
    SlowConsumer,
}

impl CloseCode {
    /// Every code, in table order.
    pub const ALL: [CloseCode; 8] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::InvalidPayload,
        CloseCode::TooBig,
        CloseCode::InternalError,
        CloseCode::ServiceRestart,
        CloseCode::IdleTimeout,
        CloseCode::SlowConsumer,
    ];

    /// Returns the numeric code of the close frame.
    pub const fn as_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::InvalidPayload => 1007,
            CloseCode::TooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::ServiceRestart => 1012,
            CloseCode::IdleTimeout => 4000,
            CloseCode::SlowConsumer => 4008,
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u16())
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.as_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers of the documented table; 1001 and 1012 are the ones PROTOCOL.md 1.7 names
    /// (join refusal / node drain, tenant-wide disconnect).
    #[test]
    fn codes_match_the_documented_table() {
        let table = [
            (CloseCode::Normal, 1000),
            (CloseCode::GoingAway, 1001),
            (CloseCode::InvalidPayload, 1007),
            (CloseCode::TooBig, 1009),
            (CloseCode::InternalError, 1011),
            (CloseCode::ServiceRestart, 1012),
            (CloseCode::IdleTimeout, 4000),
            (CloseCode::SlowConsumer, 4008),
        ];
        assert_eq!(table.len(), CloseCode::ALL.len());
        for ((code, number), listed) in table.into_iter().zip(CloseCode::ALL) {
            assert_eq!(code, listed);
            assert_eq!(code.as_u16(), number);
            assert_eq!(u16::from(code), number);
            assert_eq!(code.to_string(), number.to_string());
        }
    }

    #[test]
    fn the_module_and_readme_tables_list_every_code_once() {
        let module = include_str!("close_code.rs");
        let readme = include_str!("../README.md");
        for code in CloseCode::ALL {
            let row = format!("//! | {} | [`CloseCode::{:?}`] |", code.as_u16(), code);
            assert_eq!(module.matches(&row).count(), 1, "{row}");
            let row = format!("\n| {} | ", code.as_u16());
            assert_eq!(readme.matches(&row).count(), 1, "README row {code}");
        }
    }
}
