//! Settings of channel sessions (the join pipeline), read by `channel`.

use std::time::Duration;

use super::ConfigError;
use super::vars::{Vars, millis};

/// Settings of channel sessions.
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// `CHANNEL_ERROR_BACKOFF_MS`: delay before a join error reply. Default 5000.
    pub join_error_backoff: Duration,
}

impl ChannelConfig {
    pub(super) fn parse(env: &Vars) -> Result<ChannelConfig, ConfigError> {
        Ok(ChannelConfig {
            join_error_backoff: env.parse_or(
                "CHANNEL_ERROR_BACKOFF_MS",
                Duration::from_millis(5000),
                millis,
            )?,
        })
    }
}
