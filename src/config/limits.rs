//! Defaults of the per-tenant limits, read by `tenants` (fills unset limits on writes and
//! null columns on reads) and `limits` (client presence window).
//!
//! This file is the one place these numbers live (PROTOCOL.md 10.2, 11.1, 12.2). The
//! `_realtime.tenants` column default of `max_joins_per_second` is 500, but every tenant written
//! through the API takes `TENANT_MAX_JOINS_PER_SECOND` (100) instead, and so does a row read with
//! a null limit: the node never mixes two defaults for one limit.

use std::time::Duration;

use super::ConfigError;
use super::vars::{Vars, millis, positive_u32};

/// Defaults of the per-tenant limits, used when a tenant record leaves one unset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitDefaults {
    /// `TENANT_MAX_BYTES_PER_SECOND`. Default 100000.
    pub max_bytes_per_second: u32,
    /// `TENANT_MAX_CHANNELS_PER_CLIENT`. Default 100.
    pub max_channels_per_client: u32,
    /// `TENANT_MAX_CONCURRENT_USERS`. Default 200.
    pub max_concurrent_users: u32,
    /// `TENANT_MAX_EVENTS_PER_SECOND`. Default 100.
    pub max_events_per_second: u32,
    /// `TENANT_MAX_JOINS_PER_SECOND`. Default 100.
    pub max_joins_per_second: u32,
    /// `max_presence_events_per_second` of a tenant that sets none (no variable; the column
    /// default). 1000.
    pub max_presence_events_per_second: u32,
    /// `max_payload_size_in_kb` of a tenant that sets none (no variable; the column default).
    /// 3000.
    pub max_payload_size_in_kb: u32,
    /// `CLIENT_PRESENCE_MAX_CALLS`: presence pushes per client window when the tenant's
    /// `max_client_presence_events_per_window` is null. Default 5.
    pub client_presence_max_calls: u32,
    /// `CLIENT_PRESENCE_WINDOW_MS`: the client presence window when the tenant's
    /// `client_presence_window_ms` is null. Default 30000.
    pub client_presence_window: Duration,
}

impl Default for LimitDefaults {
    /// Returns the documented defaults (what an empty environment gives).
    fn default() -> Self {
        LimitDefaults {
            max_bytes_per_second: 100_000,
            max_channels_per_client: 100,
            max_concurrent_users: 200,
            max_events_per_second: 100,
            max_joins_per_second: 100,
            max_presence_events_per_second: 1000,
            max_payload_size_in_kb: 3000,
            client_presence_max_calls: 5,
            client_presence_window: Duration::from_millis(30_000),
        }
    }
}

impl LimitDefaults {
    pub(super) fn parse(env: &Vars) -> Result<LimitDefaults, ConfigError> {
        let d = LimitDefaults::default();
        Ok(LimitDefaults {
            max_bytes_per_second: env.parse_or(
                "TENANT_MAX_BYTES_PER_SECOND",
                d.max_bytes_per_second,
                positive_u32,
            )?,
            max_channels_per_client: env.parse_or(
                "TENANT_MAX_CHANNELS_PER_CLIENT",
                d.max_channels_per_client,
                positive_u32,
            )?,
            max_concurrent_users: env.parse_or(
                "TENANT_MAX_CONCURRENT_USERS",
                d.max_concurrent_users,
                positive_u32,
            )?,
            max_events_per_second: env.parse_or(
                "TENANT_MAX_EVENTS_PER_SECOND",
                d.max_events_per_second,
                positive_u32,
            )?,
            max_joins_per_second: env.parse_or(
                "TENANT_MAX_JOINS_PER_SECOND",
                d.max_joins_per_second,
                positive_u32,
            )?,
            max_presence_events_per_second: d.max_presence_events_per_second,
            max_payload_size_in_kb: d.max_payload_size_in_kb,
            client_presence_max_calls: env.parse_or(
                "CLIENT_PRESENCE_MAX_CALLS",
                d.client_presence_max_calls,
                positive_u32,
            )?,
            client_presence_window: env.parse_or(
                "CLIENT_PRESENCE_WINDOW_MS",
                d.client_presence_window,
                millis,
            )?,
        })
    }
}
