//! Settings of the tenant database connections (Postgres Changes), read by `db::tenant`.
//!
//! All of them are ours: the original sizes its tenant connections from the extension settings
//! alone. The extension's `db_pool` still picks a tenant's pool size; these bound it.

use std::time::Duration;

use super::ConfigError;
use super::vars::{Vars, millis, positive_u32, positive_usize};

/// How the node connects to tenant databases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantDbConfig {
    /// `TENANT_DB_POOL_SIZE` (ours): connections per tenant when the extension has no
    /// `db_pool` setting. Default 2.
    pub pool_size: u32,
    /// `TENANT_DB_MAX_POOL_SIZE` (ours): upper bound of any tenant's pool, `db_pool` included.
    /// Default 10.
    pub max_pool_size: u32,
    /// `TENANT_DB_MAX_POOLS` (ours): tenants whose pools are kept open at once; opening one more
    /// closes the least recently used. Default 500.
    pub max_pools: usize,
    /// `TENANT_DB_CONNECT_TIMEOUT_MS` (ours): longest a new connection may take (TCP, TLS,
    /// authentication). Default 5000.
    pub connect_timeout: Duration,
    /// `TENANT_DB_QUEUE_TIMEOUT_MS` (ours): longest wait for a free pooled connection. Default
    /// 5000.
    pub queue_timeout: Duration,
    /// `TENANT_DB_QUERY_TIMEOUT_MS` (ours): `statement_timeout` of every tenant connection.
    /// Default 5000.
    pub query_timeout: Duration,
    /// `TENANT_DB_IDLE_TIMEOUT_MS` (ours): a pool unused this long is closed, and so is any
    /// connection of a pool left idle this long. Default 600000 (10 min).
    pub idle_timeout: Duration,
}

impl Default for TenantDbConfig {
    fn default() -> Self {
        TenantDbConfig {
            pool_size: 2,
            max_pool_size: 10,
            max_pools: 500,
            connect_timeout: Duration::from_millis(5000),
            queue_timeout: Duration::from_millis(5000),
            query_timeout: Duration::from_millis(5000),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

impl TenantDbConfig {
    pub(super) fn parse(env: &Vars) -> Result<TenantDbConfig, ConfigError> {
        let d = TenantDbConfig::default();
        let config = TenantDbConfig {
            pool_size: env.parse_or("TENANT_DB_POOL_SIZE", d.pool_size, positive_u32)?,
            max_pool_size: env.parse_or(
                "TENANT_DB_MAX_POOL_SIZE",
                d.max_pool_size,
                positive_u32,
            )?,
            max_pools: env.parse_or("TENANT_DB_MAX_POOLS", d.max_pools, positive_usize)?,
            connect_timeout: env.parse_or(
                "TENANT_DB_CONNECT_TIMEOUT_MS",
                d.connect_timeout,
                positive_millis,
            )?,
            queue_timeout: env.parse_or(
                "TENANT_DB_QUEUE_TIMEOUT_MS",
                d.queue_timeout,
                positive_millis,
            )?,
            query_timeout: env.parse_or(
                "TENANT_DB_QUERY_TIMEOUT_MS",
                d.query_timeout,
                positive_millis,
            )?,
            idle_timeout: env.parse_or(
                "TENANT_DB_IDLE_TIMEOUT_MS",
                d.idle_timeout,
                positive_millis,
            )?,
        };
        if config.pool_size > config.max_pool_size {
            return Err(ConfigError::Invalid {
                var: "TENANT_DB_POOL_SIZE",
                problem: format!(
                    "`{}` is larger than TENANT_DB_MAX_POOL_SIZE ({})",
                    config.pool_size, config.max_pool_size
                ),
            });
        }
        Ok(config)
    }
}

fn positive_millis(raw: &str) -> Result<Duration, String> {
    match millis(raw)? {
        d if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}
