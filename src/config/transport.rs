//! Settings of the WebSocket edge (handshake and socket task), read by `transport`.

use std::time::Duration;

use super::ConfigError;
use super::vars::{Vars, millis, positive_u32, positive_usize};

/// WebSocket transport settings.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// `CONNECT_ERROR_BACKOFF_MS`: delay before a refused WebSocket upgrade. Default 2000.
    pub connect_error_backoff: Duration,
    /// `NO_CHANNEL_TIMEOUT_IN_MS`: a socket without channels is closed after this. Default 10 min.
    pub no_channel_timeout: Duration,
    /// `WS_MAX_FRAME_BYTES` (ours): largest accepted WebSocket message, bytes. Default 5000000
    /// (the original's limit); larger frames close the socket with 1009.
    pub max_frame_bytes: usize,
    /// `WS_OUTBOX_CAPACITY` (ours): messages queued for one socket before it is closed as a slow
    /// consumer. Default 1024.
    pub outbox_capacity: usize,
    /// `WS_IDLE_TIMEOUT_MS` (ours): a socket with no inbound frame for this long is closed.
    /// Default 60000.
    pub idle_timeout: Duration,
    /// `WS_WRITE_TIMEOUT_MS` (ours): a write that cannot complete for this long closes the
    /// socket. Default 10000.
    pub write_timeout: Duration,
    /// `WS_MAX_FRAMES_PER_SECOND` (ours): inbound frames one socket may send per second (burst
    /// twice that); excess frames are dropped. Default 10000.
    pub max_frames_per_second: u32,
}

impl TransportConfig {
    pub(super) fn parse(env: &Vars) -> Result<TransportConfig, ConfigError> {
        Ok(TransportConfig {
            connect_error_backoff: env.parse_or(
                "CONNECT_ERROR_BACKOFF_MS",
                Duration::from_millis(2000),
                millis,
            )?,
            no_channel_timeout: env.parse_or(
                "NO_CHANNEL_TIMEOUT_IN_MS",
                Duration::from_secs(600),
                millis,
            )?,
            max_frame_bytes: env.parse_or("WS_MAX_FRAME_BYTES", 5_000_000, positive_usize)?,
            outbox_capacity: env.parse_or("WS_OUTBOX_CAPACITY", 1024, positive_usize)?,
            idle_timeout: env.parse_or("WS_IDLE_TIMEOUT_MS", Duration::from_secs(60), millis)?,
            write_timeout: env.parse_or("WS_WRITE_TIMEOUT_MS", Duration::from_secs(10), millis)?,
            max_frames_per_second: env.parse_or(
                "WS_MAX_FRAMES_PER_SECOND",
                10_000,
                positive_u32,
            )?,
        })
    }
}
