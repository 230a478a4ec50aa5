//! Logging set-up: a `tracing` subscriber filtered by `LOG_LEVEL` (or `RUST_LOG`).
//!
//! Errors are logged with their operational code as the structured field `error_code`, e.g.
//! `tracing::warn!(error_code = %code, "...")`. Those events are also counted by code into
//! the metrics (`metrics::log_codes`), whatever the log level.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::Config;

/// Installs the global `tracing` subscriber; a second call (as in tests) is a no-op.
pub fn init_logging(config: &Config) {
    let directive = config
        .log_filter
        .clone()
        .unwrap_or_else(|| config.log_level.as_directive().to_string());
    let filter = EnvFilter::try_new(&directive)
        .unwrap_or_else(|_| EnvFilter::new(config.log_level.as_directive()));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(true)
                .with_filter(filter),
        )
        .with(
            crate::metrics::log_codes::CodeCounter.with_filter(crate::metrics::log_codes::HasCode),
        )
        .try_init();
}
