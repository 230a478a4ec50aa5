//! The metadata database: a pool of connections to the Postgres that holds `_realtime`, and the
//! versioned migrations of that schema.
//!
//! `db::Db` is the only owner of metadata connections. It speaks tokio-postgres; callers (today
//! `tenants::store`) run their SQL on a checked-out [`PooledClient`] inside a transaction. It does
//! not know what a tenant is.
//!
//! Tenant databases (Postgres Changes) have their own pools, one per tenant, in `tenant`
//! ([`TenantDbs`]), their own small migrations (`tenant_migrations`) and the catalog queries the
//! change stream and the subscriptions run there ([`catalog`]).

pub mod catalog;
mod migrations;
mod tenant;
mod tenant_migrations;

use std::net::IpAddr;
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::{DbConfig, IpVersion};
use crate::error::{ErrorCode, OperationalError};

pub use migrations::{MIGRATIONS, MIGRATIONS_TABLE};
pub use tenant::{APPLICATION_NAME, TenantClient, TenantDbError, TenantDbs, TenantPool};
pub use tenant_migrations::{
    OUR_FUNCTION, TENANT_MIGRATIONS, TENANT_MIGRATIONS_TABLE, TenantMigration,
    run_tenant_migrations,
};

/// A metadata connection checked out of the pool; returned to the pool on drop.
pub type PooledClient = deadpool_postgres::Object;
/// A transaction on a [`PooledClient`].
pub type Transaction<'a> = deadpool_postgres::Transaction<'a>;
/// One result row.
pub type Row = tokio_postgres::Row;
/// A Postgres error (kept as the cause of [`DbError`] variants of callers).
pub type PgError = tokio_postgres::Error;
/// JSON column values (`json`/`jsonb`).
pub use tokio_postgres::types::{Json, ToSql};

/// Errors of the metadata database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `DB_HOST` could not be resolved to an address of the family `DB_IP_VERSION` asks for.
    #[error("cannot resolve metadata database host {host} to an {family} address")]
    Resolve {
        /// The host name.
        host: String,
        /// `ipv4` or `ipv6`.
        family: &'static str,
    },
    /// The pool could not be built (bad settings).
    #[error("cannot build the metadata connection pool: {0}")]
    Build(String),
    /// No connection could be checked out (database unreachable, or the queue wait timed out).
    #[error("no metadata database connection available: {0}")]
    Checkout(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("metadata database query failed: {0}")]
    Query(tokio_postgres::Error),
    /// A statement ran longer than `DB_QUERY_TIMEOUT_MS` (waiting for a lock, or a stalled
    /// database) and the server cancelled it; the transaction is rolled back.
    #[error("metadata database query cancelled after the query timeout: {0}")]
    Timeout(tokio_postgres::Error),
    /// A migration of the `_realtime` schema failed; nothing of it was applied.
    #[error("migration {version} ({name}) of the _realtime schema failed: {source}")]
    Migration {
        /// Version of the failing migration.
        version: i64,
        /// Its name.
        name: &'static str,
        /// The Postgres error.
        source: tokio_postgres::Error,
    },
}

impl From<tokio_postgres::Error> for DbError {
    /// Sorts a statement error: a cancelled statement (`statement_timeout`) is a timeout.
    fn from(err: tokio_postgres::Error) -> Self {
        if err.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) {
            DbError::Timeout(err)
        } else {
            DbError::Query(err)
        }
    }
}

impl OperationalError for DbError {
    fn code(&self) -> ErrorCode {
        match self {
            DbError::Migration { .. } => ErrorCode::MigrationsFailed,
            DbError::Timeout(_) => ErrorCode::QueryCanceled,
            _ => ErrorCode::MetadataDatabaseError,
        }
    }

    fn client_message(&self) -> String {
        match self {
            DbError::Migration { .. } => "metadata database migrations failed".into(),
            DbError::Timeout(_) => "metadata database query timed out".into(),
            _ => "metadata database unavailable".into(),
        }
    }
}

/// The pool of metadata database connections.
///
/// Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("Db")
            .field("size", &status.size)
            .field("available", &status.available)
            .finish()
    }
}

impl Db {
    /// Builds the pool and opens one connection to prove the database is reachable.
    ///
    /// Every statement is bounded by `DB_QUERY_TIMEOUT_MS` (`statement_timeout`). Keeps at most
    /// `DB_POOL_SIZE` connections; a checkout waits at most `DB_QUEUE_TARGET`; every
    /// new connection first runs `DB_AFTER_CONNECT_QUERY`; with `DB_IP_VERSION` the host is
    /// resolved once here to an address of that family.
    ///
    /// # Errors
    /// [`DbError::Resolve`], [`DbError::Build`], or [`DbError::Checkout`] when the first connection
    /// cannot be opened.
    pub async fn connect(config: &DbConfig) -> Result<Db, DbError> {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&config.host)
            .port(config.port)
            .user(&config.user)
            .password(config.password.expose())
            .dbname(&config.name)
            .application_name("realtime")
            // Server-side, so a cancelled statement leaves the connection usable.
            .options(format!(
                "-c statement_timeout={}",
                config.query_timeout.as_millis()
            ))
            .connect_timeout(config.queue_target.max(Duration::from_secs(1)));
        if let Some(version) = config.ip_version {
            pg.hostaddr(resolve_host(&config.host, config.port, version).await?);
        }
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let mut builder = Pool::builder(manager)
            .max_size(config.pool_size.get() as usize)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.queue_target))
            .create_timeout(Some(config.queue_target.max(Duration::from_secs(1))))
            .recycle_timeout(Some(config.queue_target));
        if let Some(query) = config.after_connect_query.clone() {
            builder = builder.post_create(Hook::async_fn(move |client, _| {
                let query = query.clone();
                Box::pin(async move {
                    client
                        .batch_execute(&query)
                        .await
                        .map_err(HookError::Backend)
                })
            }));
        }
        let pool = builder
            .build()
            .map_err(|err| DbError::Build(err.to_string()))?;
        let db = Db { pool };
        // Fail at start-up, not on the first request, when the database is unreachable.
        drop(db.client().await?);
        Ok(db)
    }

    /// Checks out a connection, waiting at most `DB_QUEUE_TARGET`.
    ///
    /// # Errors
    /// [`DbError::Checkout`] when none is free in time or a new one cannot be opened.
    pub async fn client(&self) -> Result<PooledClient, DbError> {
        Ok(self.pool.get().await?)
    }

    /// Brings the `_realtime` schema up to date; safe to call from several nodes at once.
    ///
    /// # Errors
    /// [`DbError::Migration`] naming the failing step (the whole run is rolled back), or a
    /// connection error.
    pub async fn migrate(&self) -> Result<Vec<i64>, DbError> {
        let mut client = self.client().await?;
        migrations::run(&mut client).await
    }

    /// Closes the pool: checked-out connections close when returned.
    pub fn close(&self) {
        self.pool.close();
    }
}

async fn resolve_host(host: &str, port: u16, version: IpVersion) -> Result<IpAddr, DbError> {
    let family = match version {
        IpVersion::V4 => "ipv4",
        IpVersion::V6 => "ipv6",
    };
    let wanted = |ip: &IpAddr| match version {
        IpVersion::V4 => ip.is_ipv4(),
        IpVersion::V6 => ip.is_ipv6(),
    };
    let unresolved = || DbError::Resolve {
        host: host.to_string(),
        family,
    };
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| unresolved())?;
    addrs
        .map(|addr| addr.ip())
        .find(wanted)
        .ok_or_else(unresolved)
}
