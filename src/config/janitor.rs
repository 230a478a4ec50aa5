//! Settings of the janitor that cleans tenant databases.

use std::time::Duration;

use super::ConfigError;
use super::vars::{Vars, boolean, millis, positive_u32};

/// The janitor that cleans tenant databases (`RUN_JANITOR` and friends).
#[derive(Clone, Debug)]
pub struct JanitorConfig {
    /// `RUN_JANITOR`. Default false.
    pub enabled: bool,
    /// `JANITOR_SCHEDULE_TIMER_IN_MS`: period between runs. Default 4 h.
    pub schedule_timer: Duration,
    /// `JANITOR_SCHEDULE_RANDOMIZE`: add jitter to the period. Default true.
    pub schedule_randomize: bool,
    /// `JANITOR_RUN_AFTER_IN_MS`: delay of the first run. Default 10 min.
    pub run_after: Duration,
    /// `JANITOR_CLEANUP_MAX_CHILDREN` (alias `JANITOR_MAX_CHILDREN`): tenants cleaned at once. Default 5.
    pub max_children: u32,
    /// `JANITOR_CLEANUP_CHILDREN_TIMEOUT` (alias `JANITOR_CHILDREN_TIMEOUT`): per-tenant timeout. Default 5000 ms.
    pub children_timeout: Duration,
    /// `JANITOR_CHUNK_SIZE`: tenants per batch. Default 10.
    pub chunk_size: u32,
}

impl JanitorConfig {
    pub(super) fn parse(env: &Vars) -> Result<JanitorConfig, ConfigError> {
        Ok(JanitorConfig {
            enabled: env.parse_or("RUN_JANITOR", false, boolean)?,
            schedule_timer: env.parse_or(
                "JANITOR_SCHEDULE_TIMER_IN_MS",
                Duration::from_secs(4 * 3600),
                millis,
            )?,
            schedule_randomize: env.parse_or("JANITOR_SCHEDULE_RANDOMIZE", true, boolean)?,
            run_after: env.parse_or("JANITOR_RUN_AFTER_IN_MS", Duration::from_secs(600), millis)?,
            max_children: env.parse_aliased_or(
                &["JANITOR_CLEANUP_MAX_CHILDREN", "JANITOR_MAX_CHILDREN"],
                5,
                positive_u32,
            )?,
            children_timeout: env.parse_aliased_or(
                &[
                    "JANITOR_CLEANUP_CHILDREN_TIMEOUT",
                    "JANITOR_CHILDREN_TIMEOUT",
                ],
                Duration::from_millis(5000),
                millis,
            )?,
            chunk_size: env.parse_or("JANITOR_CHUNK_SIZE", 10, positive_u32)?,
        })
    }
}
