//! Settings of the per-tenant logical replication streams, read by
//! `postgres_changes::replication`.

use std::num::NonZeroUsize;
use std::time::Duration;

use super::ConfigError;
use super::vars::{Vars, millis, positive_usize};

/// The replication streams of Postgres Changes: slot naming, lifecycle, WAL lag bound,
/// reconnects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// `SLOT_NAME_SUFFIX`: appended to slot names as `_<suffix>` (PROTOCOL.md 6.6). Default none.
    pub slot_name_suffix: Option<String>,
    /// `REPLICATION_IDLE_TIMEOUT_MS`: how long a stream runs on after its tenant's last
    /// subscriber left. Default 10 s.
    pub idle_timeout: Duration,
    /// `REPLICATION_SLOT_RETAIN_MS`: how long the slot of a stopped stream is kept, so a
    /// resubscribing client (or a restarted node) gets the changes made meanwhile; it is dropped
    /// afterwards. Default 10 min.
    pub slot_retain: Duration,
    /// `REPLICATION_MAX_LAG_BYTES`: WAL a slot may hold back before it is dropped and recreated
    /// (subscribers are told that changes were lost). Default 1 GiB.
    pub max_lag_bytes: u64,
    /// `REPLICATION_LAG_CHECK_INTERVAL_MS`: period of the WAL lag check while streaming.
    /// Default 30 s.
    pub lag_check_interval: Duration,
    /// `REPLICATION_STATUS_INTERVAL_MS`: period of standby status updates. Default 1 s.
    pub status_interval: Duration,
    /// `REPLICATION_BACKOFF_MIN_MS`: first reconnect delay. Default 100 ms.
    pub backoff_min: Duration,
    /// `REPLICATION_BACKOFF_MAX_MS`: largest reconnect delay. Default 10 s.
    pub backoff_max: Duration,
    /// `REPLICATION_CHANNEL_CAPACITY`: events buffered between a stream and its consumer;
    /// when full the stream waits. Default 1024.
    pub channel_capacity: NonZeroUsize,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            slot_name_suffix: None,
            idle_timeout: Duration::from_secs(10),
            slot_retain: Duration::from_secs(600),
            max_lag_bytes: 1 << 30,
            lag_check_interval: Duration::from_secs(30),
            status_interval: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            channel_capacity: NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

impl ReplicationConfig {
    pub(super) fn parse(env: &Vars) -> Result<ReplicationConfig, ConfigError> {
        let d = ReplicationConfig::default();
        let backoff_min =
            env.parse_or("REPLICATION_BACKOFF_MIN_MS", d.backoff_min, positive_millis)?;
        let backoff_max =
            env.parse_or("REPLICATION_BACKOFF_MAX_MS", d.backoff_max, positive_millis)?;
        if backoff_max < backoff_min {
            return Err(ConfigError::Invalid {
                var: "REPLICATION_BACKOFF_MAX_MS",
                problem: format!(
                    "`{}` is below REPLICATION_BACKOFF_MIN_MS ({} ms)",
                    backoff_max.as_millis(),
                    backoff_min.as_millis()
                ),
            });
        }
        Ok(ReplicationConfig {
            slot_name_suffix: env.non_empty("SLOT_NAME_SUFFIX"),
            idle_timeout: env.parse_or("REPLICATION_IDLE_TIMEOUT_MS", d.idle_timeout, millis)?,
            slot_retain: env.parse_or("REPLICATION_SLOT_RETAIN_MS", d.slot_retain, millis)?,
            max_lag_bytes: env.parse_or(
                "REPLICATION_MAX_LAG_BYTES",
                d.max_lag_bytes,
                positive_u64,
            )?,
            lag_check_interval: env.parse_or(
                "REPLICATION_LAG_CHECK_INTERVAL_MS",
                d.lag_check_interval,
                positive_millis,
            )?,
            status_interval: env.parse_or(
                "REPLICATION_STATUS_INTERVAL_MS",
                d.status_interval,
                positive_millis,
            )?,
            backoff_min,
            backoff_max,
            channel_capacity: env
                .parse_or(
                    "REPLICATION_CHANNEL_CAPACITY",
                    d.channel_capacity.get(),
                    positive_usize,
                )
                .map(|n| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN))?,
        })
    }
}

fn positive_u64(raw: &str) -> Result<u64, String> {
    match raw.parse::<u64>() {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("is not a positive whole number".into()),
    }
}

fn positive_millis(raw: &str) -> Result<Duration, String> {
    match millis(raw)? {
        d if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<ReplicationConfig, ConfigError> {
        ReplicationConfig::parse(&Vars(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        ))
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(parse(&[]).unwrap(), ReplicationConfig::default());
        let c = parse(&[
            ("SLOT_NAME_SUFFIX", "node1"),
            ("REPLICATION_IDLE_TIMEOUT_MS", "0"),
            ("REPLICATION_SLOT_RETAIN_MS", "250"),
            ("REPLICATION_MAX_LAG_BYTES", "65536"),
            ("REPLICATION_CHANNEL_CAPACITY", "8"),
        ])
        .unwrap();
        assert_eq!(c.slot_name_suffix.as_deref(), Some("node1"));
        assert_eq!(c.idle_timeout, Duration::ZERO);
        assert_eq!(c.slot_retain, Duration::from_millis(250));
        assert_eq!(c.max_lag_bytes, 65536);
        assert_eq!(c.channel_capacity.get(), 8);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let var = |pairs: &[(&str, &str)]| parse(pairs).unwrap_err().variable();
        assert_eq!(
            var(&[("REPLICATION_MAX_LAG_BYTES", "0")]),
            "REPLICATION_MAX_LAG_BYTES"
        );
        assert_eq!(
            var(&[("REPLICATION_STATUS_INTERVAL_MS", "0")]),
            "REPLICATION_STATUS_INTERVAL_MS"
        );
        assert_eq!(
            var(&[
                ("REPLICATION_BACKOFF_MIN_MS", "500"),
                ("REPLICATION_BACKOFF_MAX_MS", "100")
            ]),
            "REPLICATION_BACKOFF_MAX_MS"
        );
    }
}
