//! Settings of the metadata database connections, read by `db`.

use std::num::NonZeroU32;
use std::time::Duration;

use super::vars::{Vars, boolean, millis, non_zero, port_number};
use super::{ConfigError, Secret};

/// IP family forced for outgoing database connections (`DB_IP_VERSION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    /// `ipv4`
    V4,
    /// `ipv6`
    V6,
}

/// The metadata database (`_realtime` schema) connection settings.
#[derive(Clone, Debug)]
pub struct DbConfig {
    /// `DB_HOST`. Default `127.0.0.1`.
    pub host: String,
    /// `DB_PORT`. Default 5432.
    pub port: u16,
    /// `DB_USER`. Default `supabase_admin`.
    pub user: String,
    /// `DB_PASSWORD`. Default `postgres`.
    pub password: Secret,
    /// `DB_NAME`. Default `postgres`.
    pub name: String,
    /// `DB_AFTER_CONNECT_QUERY`: SQL run on every new metadata connection. Default none.
    pub after_connect_query: Option<String>,
    /// `DB_IP_VERSION`: `ipv4` or `ipv6`; unset lets the resolver decide.
    pub ip_version: Option<IpVersion>,
    /// `DB_POOL_SIZE`: metadata connections kept. Default 5.
    pub pool_size: NonZeroU32,
    /// `DB_QUEUE_TARGET`: longest wait for a pooled connection before the request fails,
    /// milliseconds. Default 5000.
    pub queue_target: Duration,
    /// `DB_QUEUE_INTERVAL`: accepted for compatibility (Ecto's queue sampling window),
    /// milliseconds. Default 5000.
    pub queue_interval: Duration,
    /// `DB_QUERY_TIMEOUT_MS` (ours): longest a metadata statement may run, lock waits
    /// included, before the server cancels it (Postgres `statement_timeout` on every metadata
    /// connection; the original's Ecto `timeout`). Default 5000. Migrations are not bounded.
    pub query_timeout: Duration,
    /// `DB_SSL`: require TLS to the metadata database. Default false. Only `false` is supported.
    pub ssl: bool,
}

impl DbConfig {
    pub(super) fn parse(env: &Vars) -> Result<DbConfig, ConfigError> {
        let db = DbConfig {
            host: env.text_or("DB_HOST", "127.0.0.1"),
            port: env.parse_or("DB_PORT", 5432, port_number)?,
            user: env.text_or("DB_USER", "supabase_admin"),
            password: Secret::new(env.text_or("DB_PASSWORD", "postgres")),
            name: env.text_or("DB_NAME", "postgres"),
            after_connect_query: env.non_empty("DB_AFTER_CONNECT_QUERY"),
            ip_version: env.parse_opt("DB_IP_VERSION", ip_version)?,
            pool_size: env.parse_or("DB_POOL_SIZE", NonZeroU32::MIN.saturating_add(4), non_zero)?,
            queue_target: env.parse_or("DB_QUEUE_TARGET", Duration::from_millis(5000), millis)?,
            queue_interval: env.parse_or(
                "DB_QUEUE_INTERVAL",
                Duration::from_millis(5000),
                millis,
            )?,
            query_timeout: env.parse_or(
                "DB_QUERY_TIMEOUT_MS",
                Duration::from_millis(5000),
                positive_millis,
            )?,
            ssl: env.parse_or("DB_SSL", false, boolean)?,
        };
        if db.ssl {
            return Err(ConfigError::Invalid {
                var: "DB_SSL",
                problem: "TLS to the metadata database is not supported yet; use `false`".into(),
            });
        }
        Ok(db)
    }
}

fn positive_millis(raw: &str) -> Result<Duration, String> {
    match millis(raw)? {
        d if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

fn ip_version(raw: &str) -> Result<IpVersion, String> {
    match raw {
        "ipv4" => Ok(IpVersion::V4),
        "ipv6" => Ok(IpVersion::V6),
        _ => Err("is not an IP version (ipv4 or ipv6)".into()),
    }
}
