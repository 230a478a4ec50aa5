//! Wiring: builds every subsystem from `Config`, starts them in order and owns shutdown.

use std::process::ExitCode;

use crate::config::Config;

/// Entry point of the `realtime` binary: reads the configuration, starts logging and runs.
pub fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("realtime: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init_logging(&config);
    ExitCode::SUCCESS
}
