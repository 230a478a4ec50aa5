//! Logging set-up: a `tracing` subscriber filtered by `LOG_LEVEL` (or `RUST_LOG`).
//!
//! Errors are logged with their operational code as the structured field `error_code`, e.g.
//! `tracing::warn!(error_code = %code, "...")`. The Prometheus registry will live here too.

use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// Installs the global `tracing` subscriber; a second call (as in tests) is a no-op.
pub fn init_logging(config: &Config) {
    let directive = config
        .log_filter
        .clone()
        .unwrap_or_else(|| config.log_level.as_directive().to_string());
    let filter = EnvFilter::try_new(&directive)
        .unwrap_or_else(|_| EnvFilter::new(config.log_level.as_directive()));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .try_init();
}
