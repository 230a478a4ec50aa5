//! Tenant databases: one small connection pool per tenant, opened on first use from the tenant's
//! `postgres_cdc_rls` extension, migrated once per open, and dropped when the tenant changes.
//!
//! * [`TenantDbs::get`] returns the tenant's [`TenantPool`], opening it when missing. Concurrent
//!   callers share one open (single flight): it runs in a task of the manager's
//!   [`Owner`](crate::tasks::Owner), so a caller that goes away does not cancel it. An open
//!   builds the pool, checks out one connection (proving the database reachable) and runs the
//!   tenant migrations on it (`tenant_migrations`). A failed open is not remembered: the next
//!   call tries again.
//! * Connections: `application_name=realtime_rs`, `statement_timeout` =
//!   `TENANT_DB_QUERY_TIMEOUT_MS`, connect timeout `TENANT_DB_CONNECT_TIMEOUT_MS` (TCP, TLS and
//!   authentication together), checkout wait `TENANT_DB_QUEUE_TIMEOUT_MS`. Pool size: the
//!   extension's `db_pool` (a number or numeric string), else `TENANT_DB_POOL_SIZE`, at most
//!   `TENANT_DB_MAX_POOL_SIZE`.
//! * TLS (rustls, ring provider): `ssl_enforced=false` is libpq's `sslmode=prefer` (TLS when the
//!   server offers it, plain otherwise); `ssl_enforced=true` is `sslmode=require` (no TLS, no
//!   connection). As with libpq's `prefer`/`require`, the server certificate is not verified:
//!   the connection is encrypted, not authenticated. Verifying would need a CA setting per
//!   tenant, which the extension does not have.
//! * Bounded: at most `TENANT_DB_MAX_POOLS` tenants keep a pool here; opening one more forgets
//!   the least recently used (closed if unused: nothing checked out and no [`TenantPool`] held
//!   outside the manager). A sweeper closes pools unused for `TENANT_DB_IDLE_TIMEOUT_MS` and the
//!   connections idle that long of the others. A held pool (a running stream) is never idle.
//! * Tenant changes ([`Tenants::subscribe`]): `Deleted`, `Reloaded` and `Shutdown` close the
//!   tenant's pool; `Created`/`Updated` close it only when the decrypted extension settings (or
//!   the pool size) changed. A missed event (lag) closes every pool. A closed pool refuses
//!   checkouts ([`TenantDbError::Closed`]) and fires [`TenantPool::closed`], so holders (the
//!   change stream) let go and call [`TenantDbs::get`] again.
//! * [`TenantDbs::shutdown`] closes every pool and stops the manager's tasks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use serde_json::{Map, Value};
use tokio::sync::{broadcast, watch};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::PgError;
use super::tenant_migrations::run_tenant_migrations;
use crate::config::TenantDbConfig;
use crate::error::{ErrorCode, OperationalError};
use crate::tasks::Owner;
use crate::tenants::{
    Extension, POSTGRES_CDC_RLS, Tenant, TenantChange, TenantDbSettings, TenantEvent, Tenants,
    TenantsError,
};
use crate::types::TenantId;

/// A tenant database connection checked out of its pool; returned to the pool on drop.
pub type TenantClient = deadpool_postgres::Object;

/// `application_name` of every tenant connection.
pub const APPLICATION_NAME: &str = "realtime_rs";
/// Opens a caller starts over when the tenant's settings changed during the open.
const OPEN_ATTEMPTS: usize = 3;

/// Errors of tenant database connections.
#[derive(Debug, thiserror::Error)]
pub enum TenantDbError {
    /// The tenant has no `postgres_cdc_rls` extension: no database to connect to.
    #[error("tenant {0} has no postgres_cdc_rls extension")]
    NoDatabase(TenantId),
    /// The extension's settings could not be decrypted or are unusable.
    #[error("database settings of tenant {tenant}: {source}")]
    Settings {
        /// The tenant.
        tenant: TenantId,
        /// Why.
        source: TenantsError,
    },
    /// The pool could not be built, or TLS could not be set up.
    #[error("cannot build the connection pool of tenant {tenant}: {reason}")]
    Build {
        /// The tenant.
        tenant: TenantId,
        /// Why.
        reason: String,
    },
    /// A connection could not be opened: refused, unresolvable host, TLS required but not
    /// offered, authentication failed, database missing.
    #[error("cannot connect to the database of tenant {tenant}: {source}")]
    Unreachable {
        /// The tenant.
        tenant: TenantId,
        /// The connection error.
        source: PgError,
    },
    /// Opening a connection took longer than `TENANT_DB_CONNECT_TIMEOUT_MS`.
    #[error("connecting to the database of tenant {tenant} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The tenant.
        tenant: TenantId,
        /// The limit.
        timeout: Duration,
    },
    /// The database refused a new connection because it has no slots left.
    #[error("the database of tenant {tenant} accepts no more connections: {source}")]
    LackOfConnections {
        /// The tenant.
        tenant: TenantId,
        /// The refusal.
        source: PgError,
    },
    /// Every connection of the pool stayed busy for `TENANT_DB_QUEUE_TIMEOUT_MS`.
    #[error(
        "no free connection to the database of tenant {tenant} within {timeout:?} (pool of {size})"
    )]
    PoolExhausted {
        /// The tenant.
        tenant: TenantId,
        /// The wait limit.
        timeout: Duration,
        /// The pool's size.
        size: usize,
    },
    /// The pool was closed (tenant changed, evicted, or the node is stopping).
    #[error("the connection pool of tenant {0} was closed")]
    Closed(TenantId),
    /// The tenant's settings changed while its pool was being opened, every time.
    #[error("the settings of tenant {0} kept changing while its pool was opened")]
    Superseded(TenantId),
    /// A tenant migration failed; nothing of the run was kept.
    #[error(
        "tenant migration {version} ({name}) failed on the database of tenant {tenant}: {source}"
    )]
    Migration {
        /// The tenant.
        tenant: TenantId,
        /// The failing version (0: the bookkeeping around the versions).
        version: i64,
        /// Its name.
        name: &'static str,
        /// The Postgres error.
        source: PgError,
    },
    /// A statement ran longer than `TENANT_DB_QUERY_TIMEOUT_MS` and the server cancelled it.
    #[error("tenant database query cancelled after the query timeout: {0}")]
    Timeout(PgError),
    /// A statement failed.
    #[error("tenant database query failed: {0}")]
    Query(PgError),
    /// The manager was shut down.
    #[error("tenant database connections are shut down")]
    ShuttingDown,
    /// The failed open this caller waited for (shared by every caller of that open).
    #[error("{0}")]
    Open(Arc<TenantDbError>),
}

impl From<PgError> for TenantDbError {
    /// Sorts a statement error: a cancelled statement (`statement_timeout`) is a timeout.
    fn from(err: PgError) -> Self {
        if err.code() == Some(&SqlState::QUERY_CANCELED) {
            TenantDbError::Timeout(err)
        } else {
            TenantDbError::Query(err)
        }
    }
}

impl TenantDbError {
    /// Returns the error itself, looking through [`TenantDbError::Open`].
    pub fn root(&self) -> &TenantDbError {
        match self {
            TenantDbError::Open(inner) => inner.root(),
            other => other,
        }
    }
}

impl OperationalError for TenantDbError {
    /// The logged code. A join refused for it shows `UnableToConnectToProject` where this says
    /// `UnableToConnectToTenantDatabase` (PROTOCOL.md 12.3); the other codes are shown as they
    /// are (3.4).
    fn code(&self) -> ErrorCode {
        match self {
            TenantDbError::NoDatabase(_) | TenantDbError::Build { .. } => {
                ErrorCode::InvalidConfiguration
            }
            TenantDbError::Settings { source, .. } => source.code(),
            TenantDbError::Unreachable { .. }
            | TenantDbError::ConnectTimeout { .. }
            | TenantDbError::Closed(_)
            | TenantDbError::Superseded(_) => ErrorCode::UnableToConnectToTenantDatabase,
            TenantDbError::LackOfConnections { .. } => ErrorCode::DatabaseLackOfConnections,
            TenantDbError::PoolExhausted { .. } => ErrorCode::IncreaseConnectionPool,
            TenantDbError::Migration { .. } => ErrorCode::TenantMigrationsFailed,
            TenantDbError::Timeout(_) => ErrorCode::QueryCanceled,
            TenantDbError::Query(_) => ErrorCode::TenantDatabaseError,
            TenantDbError::ShuttingDown => ErrorCode::RealtimeRestarting,
            TenantDbError::Open(inner) => inner.code(),
        }
    }

    fn client_message(&self) -> String {
        match self {
            TenantDbError::NoDatabase(_)
            | TenantDbError::Build { .. }
            | TenantDbError::Settings { .. } => "invalid tenant extension settings".into(),
            TenantDbError::Unreachable { .. }
            | TenantDbError::ConnectTimeout { .. }
            | TenantDbError::Closed(_)
            | TenantDbError::Superseded(_) => {
                "Realtime was unable to connect to the project database".into()
            }
            TenantDbError::LackOfConnections { .. } => {
                "Database can't accept more connections, Realtime won't connect".into()
            }
            TenantDbError::PoolExhausted { .. } => {
                "Please increase your connection pool size".into()
            }
            TenantDbError::Migration { .. } => {
                "Realtime was unable to migrate the project database".into()
            }
            TenantDbError::Timeout(_) => "canceling statement due to statement timeout".into(),
            TenantDbError::Query(_) => "Realtime was unable to query the project database".into(),
            TenantDbError::ShuttingDown => "Realtime is restarting, please standby".into(),
            TenantDbError::Open(inner) => inner.client_message(),
        }
    }
}

/// What a tenant's pool is opened from: the extension as stored, its decrypted settings and the
/// pool size.
#[derive(Clone, Debug)]
struct Wanted {
    stored: Map<String, Value>,
    settings: TenantDbSettings,
    size: usize,
    record_time: NaiveDateTime,
}

/// One tenant's connection pool. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct TenantPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    tenant: TenantId,
    wanted: Wanted,
    pool: Pool,
    connect_timeout: Duration,
    queue_timeout: Duration,
    /// Milliseconds since the manager's epoch of the last checkout or lookup.
    last_used: AtomicU64,
    epoch: Instant,
    closed: CancellationToken,
}

impl std::fmt::Debug for TenantPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.inner.pool.status();
        f.debug_struct("TenantPool")
            .field("tenant", &self.inner.tenant)
            .field("max_size", &status.max_size)
            .field("size", &status.size)
            .field("available", &status.available)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl TenantPool {
    /// Returns the tenant.
    pub fn tenant(&self) -> &TenantId {
        &self.inner.tenant
    }

    /// Returns the decrypted settings the pool was opened with (publication and slot name
    /// included).
    pub fn settings(&self) -> &TenantDbSettings {
        &self.inner.wanted.settings
    }

    /// Returns the most connections the pool keeps.
    pub fn max_size(&self) -> usize {
        self.inner.wanted.size
    }

    /// Returns the number of connections open now (idle and checked out).
    pub fn size(&self) -> usize {
        self.inner.pool.status().size
    }

    /// Checks out a connection, opening one when none is idle and the pool is not full.
    ///
    /// # Errors
    /// [`TenantDbError::PoolExhausted`] after `TENANT_DB_QUEUE_TIMEOUT_MS`,
    /// [`TenantDbError::Closed`], or the connection errors of a new connection.
    pub async fn get(&self) -> Result<TenantClient, TenantDbError> {
        self.touch();
        self.inner
            .pool
            .get()
            .await
            .map_err(|err| self.pool_error(err))
    }

    /// Returns true once the manager closed the pool.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Resolves when the manager closes the pool (tenant changed, evicted, shutdown).
    pub fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.inner.closed.cancelled()
    }

    /// Returns whether both handles are the same pool.
    pub fn same_pool(&self, other: &TenantPool) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn touch(&self) {
        let now = self.inner.epoch.elapsed().as_millis() as u64;
        self.inner.last_used.fetch_max(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.inner.last_used.load(Ordering::Relaxed));
        self.inner.epoch.elapsed().saturating_sub(last)
    }

    /// Whether someone besides the manager holds this pool (a stream, a subscription): such a
    /// pool is never idle, and is not closed when given up.
    fn held_elsewhere(&self) -> bool {
        Arc::strong_count(&self.inner) > 1
    }

    /// Whether nothing uses the pool: no holder but the manager, no connection checked out.
    fn unused(&self) -> bool {
        !self.held_elsewhere() && self.in_use() == 0
    }

    fn in_use(&self) -> usize {
        let status = self.inner.pool.status();
        status.size.saturating_sub(status.available)
    }

    fn close(&self) {
        self.inner.closed.cancel();
        self.inner.pool.close();
    }

    fn pool_error(&self, err: PoolError) -> TenantDbError {
        let tenant = self.inner.tenant.clone();
        match err {
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                TenantDbError::PoolExhausted {
                    tenant,
                    timeout: self.inner.queue_timeout,
                    size: self.inner.wanted.size,
                }
            }
            PoolError::Timeout(_) => TenantDbError::ConnectTimeout {
                tenant,
                timeout: self.inner.connect_timeout,
            },
            PoolError::Backend(source)
                if source.code() == Some(&SqlState::TOO_MANY_CONNECTIONS) =>
            {
                TenantDbError::LackOfConnections { tenant, source }
            }
            PoolError::Backend(source) => TenantDbError::Unreachable { tenant, source },
            PoolError::Closed => TenantDbError::Closed(tenant),
            PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => TenantDbError::Build {
                tenant,
                reason: err.to_string(),
            },
        }
    }
}

/// The answer of one open, shared by everyone who waited for it.
type OpenResult = Result<TenantPool, Arc<TenantDbError>>;

enum Slot {
    /// An open in progress: its number, what it opens, and where its answer will appear.
    Opening {
        id: u64,
        wanted: Box<Wanted>,
        answer: watch::Receiver<Option<OpenResult>>,
    },
    Ready(TenantPool),
}

#[derive(Default)]
struct State {
    slots: HashMap<TenantId, Slot>,
    next_open: u64,
    shut: bool,
}

/// The tenant database pools of this node. Cheap to clone: clones share the pools.
#[derive(Clone)]
pub struct TenantDbs {
    inner: Arc<Inner>,
}

struct Inner {
    tenants: Tenants,
    config: TenantDbConfig,
    tls: MakeRustlsConnect,
    owner: Owner,
    epoch: Instant,
    // std Mutex: every section is a short map operation with no `.await` inside.
    state: Mutex<State>,
    opens: AtomicU64,
}

impl std::fmt::Debug for TenantDbs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantDbs")
            .field("pools", &self.open_pools())
            .field("opens", &self.opens())
            .finish()
    }
}

/// Why a pool is being closed (for the log).
#[derive(Clone, Copy, Debug)]
enum DropReason {
    Deleted,
    Reloaded,
    Shutdown,
    SettingsChanged,
    MissedEvents,
    Evicted,
    Idle,
}

impl TenantDbs {
    /// Builds a manager whose tasks (tenant-change listener, idle sweeper, opens) run under an
    /// owner of its own; [`TenantDbs::shutdown`] stops them.
    ///
    /// # Errors
    /// [`TenantDbError::Build`] when TLS cannot be set up.
    pub fn new(tenants: Tenants, config: TenantDbConfig) -> Result<TenantDbs, TenantDbError> {
        TenantDbs::with_owner(tenants, config, Owner::new())
    }

    /// Builds the manager with its tasks under `owner` (a child owner given to it alone, so that
    /// the node's parent owner also stops them).
    ///
    /// # Errors
    /// [`TenantDbError::Build`] when TLS cannot be set up.
    pub(crate) fn with_owner(
        tenants: Tenants,
        config: TenantDbConfig,
        owner: Owner,
    ) -> Result<TenantDbs, TenantDbError> {
        let tls = tls_connector().map_err(|reason| TenantDbError::Build {
            tenant: TenantId::from(""),
            reason,
        })?;
        // Subscribed before anything can open a pool, so no change is missed.
        let events = tenants.subscribe();
        let sweep_every =
            (config.idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let dbs = TenantDbs {
            inner: Arc::new(Inner {
                tenants,
                config,
                tls,
                owner,
                epoch: Instant::now(),
                state: Mutex::new(State::default()),
                opens: AtomicU64::new(0),
            }),
        };
        let weak = Arc::downgrade(&dbs.inner);
        dbs.inner.owner.spawn(
            "tenant changes → tenant db pools",
            watch_tenant_changes(weak.clone(), events),
        );
        dbs.inner
            .owner
            .spawn("tenant db idle sweeper", sweep_idle(weak, sweep_every));
        Ok(dbs)
    }

    /// Returns the tenant's pool, opening it (and migrating the database) when there is none or
    /// its settings are older than `tenant`'s.
    ///
    /// `tenant` should be a current record ([`Tenants::get`]): a record not newer than the
    /// pool's (`updated_at`, whole seconds) is answered with the pool as it is; the tenant
    /// change events are what close pools whose settings changed.
    ///
    /// # Errors
    /// [`TenantDbError::NoDatabase`], [`TenantDbError::Settings`], or
    /// [`TenantDbError::Open`] wrapping the error of the failed open (connection, timeout,
    /// migrations), shared by every caller that waited for it; [`TenantDbError::ShuttingDown`].
    pub async fn get(&self, tenant: &Tenant) -> Result<TenantPool, TenantDbError> {
        // After an open was superseded (the settings changed meanwhile), the caller's record is
        // older than the change: start over from the current record.
        let mut fresher: Option<Arc<Tenant>> = None;
        for _ in 0..OPEN_ATTEMPTS {
            let record = fresher.as_deref().unwrap_or(tenant);
            match self.get_once(record).await {
                Err(TenantDbError::Superseded(id)) => {
                    let current = self.inner.tenants.get(&id).await.map_err(|source| {
                        TenantDbError::Settings {
                            tenant: id.clone(),
                            source,
                        }
                    })?;
                    fresher = Some(current.ok_or(TenantDbError::NoDatabase(id))?);
                }
                other => return other,
            }
        }
        Err(TenantDbError::Superseded(tenant.external_id.clone()))
    }

    /// One attempt of [`TenantDbs::get`]: the open pool, or the open in progress, or a new open.
    async fn get_once(&self, tenant: &Tenant) -> Result<TenantPool, TenantDbError> {
        let id = &tenant.external_id;
        let extension = extension_of(tenant)?;
        let mut wanted: Option<Wanted> = None;
        let answer = {
            let mut state = self.lock();
            if state.shut {
                return Err(TenantDbError::ShuttingDown);
            }
            let follow = match state.slots.get(id) {
                Some(Slot::Ready(pool)) if !pool.is_closed() => {
                    if self.same_settings(&pool.inner.wanted, tenant, extension, &mut wanted)?
                        || tenant.updated_at <= pool.inner.wanted.record_time
                    {
                        pool.touch();
                        return Ok(pool.clone());
                    }
                    let pool = pool.clone();
                    state.slots.remove(id);
                    close(&pool, DropReason::SettingsChanged);
                    None
                }
                Some(Slot::Opening {
                    wanted: opening,
                    answer,
                    ..
                }) => {
                    let answer = answer.clone();
                    let opening = opening.clone();
                    if self.same_settings(&opening, tenant, extension, &mut wanted)?
                        || tenant.updated_at <= opening.record_time
                    {
                        Some(answer)
                    } else {
                        // The open in progress has older settings: it finds its slot gone and
                        // tells its waiters to start over.
                        state.slots.remove(id);
                        None
                    }
                }
                Some(Slot::Ready(_)) => {
                    state.slots.remove(id);
                    None
                }
                None => None,
            };
            match follow {
                Some(answer) => answer,
                None => {
                    let wanted = match wanted.take() {
                        Some(w) => w,
                        None => self.wanted(tenant, extension)?,
                    };
                    self.start_open(&mut state, id.clone(), wanted)
                }
            }
        };
        wait_for(answer).await.map_err(|err| match &*err {
            TenantDbError::Superseded(id) => TenantDbError::Superseded(id.clone()),
            TenantDbError::ShuttingDown => TenantDbError::ShuttingDown,
            _ => TenantDbError::Open(err),
        })
    }

    /// Returns the tenant's pool if one is open, without opening one.
    pub fn pool_of(&self, tenant: &TenantId) -> Option<TenantPool> {
        match self.lock().slots.get(tenant) {
            Some(Slot::Ready(pool)) if !pool.is_closed() => Some(pool.clone()),
            _ => None,
        }
    }

    /// Returns the number of tenants with an open pool.
    pub fn open_pools(&self) -> usize {
        self.lock()
            .slots
            .values()
            .filter(|slot| matches!(slot, Slot::Ready(_)))
            .count()
    }

    /// Returns how many pools this manager has opened successfully so far.
    pub fn opens(&self) -> u64 {
        self.inner.opens.load(Ordering::Relaxed)
    }

    /// Closes every pool, refuses further [`TenantDbs::get`] calls and stops the manager's
    /// tasks, waiting up to `grace` for them. Returns false when some were still running then.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        let slots: Vec<Slot> = {
            let mut state = self.lock();
            state.shut = true;
            state.slots.drain().map(|(_, slot)| slot).collect()
        };
        for slot in slots {
            if let Slot::Ready(pool) = slot {
                pool.close();
            }
        }
        self.inner.owner.shutdown(grace).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.inner)
    }

    /// Whether `current` was opened from the settings `tenant` asks for: the stored extension
    /// settings are equal, or (re-encrypted values differ) their decryption is.
    fn same_settings(
        &self,
        current: &Wanted,
        tenant: &Tenant,
        extension: &Extension,
        wanted: &mut Option<Wanted>,
    ) -> Result<bool, TenantDbError> {
        if current.stored == extension.settings {
            return Ok(true);
        }
        let wanted = match wanted {
            Some(w) => w,
            None => wanted.insert(self.wanted(tenant, extension)?),
        };
        Ok(wanted.settings == current.settings && wanted.size == current.size)
    }

    fn wanted(&self, tenant: &Tenant, extension: &Extension) -> Result<Wanted, TenantDbError> {
        wanted(&self.inner, tenant, extension)
    }

    /// Puts an `Opening` slot in place and starts the open in a task of the manager.
    fn start_open(
        &self,
        state: &mut State,
        tenant: TenantId,
        wanted: Wanted,
    ) -> watch::Receiver<Option<OpenResult>> {
        let id = state.next_open;
        state.next_open += 1;
        let (tell, answer) = watch::channel(None);
        state.slots.insert(
            tenant.clone(),
            Slot::Opening {
                id,
                wanted: Box::new(wanted.clone()),
                answer: answer.clone(),
            },
        );
        let dbs = self.clone();
        self.inner.owner.spawn("tenant db pool open", async move {
            let result = dbs.open(&tenant, wanted).await;
            dbs.install(id, &tenant, result, &tell);
        });
        answer
    }

    /// Builds the pool, proves a connection and migrates the database.
    async fn open(&self, tenant: &TenantId, wanted: Wanted) -> Result<TenantPool, TenantDbError> {
        let config = &self.inner.config;
        let settings = &wanted.settings;
        let mut pg = tokio_postgres::Config::new();
        pg.host(&settings.host)
            .port(settings.port)
            .dbname(&settings.name)
            .user(&settings.user)
            .password(settings.password.expose())
            .application_name(APPLICATION_NAME)
            // Server-side, so a cancelled statement leaves the connection usable.
            .options(format!(
                "-c statement_timeout={}",
                config.query_timeout.as_millis()
            ))
            .connect_timeout(config.connect_timeout)
            .ssl_mode(if settings.ssl_enforced {
                SslMode::Require
            } else {
                SslMode::Prefer
            });
        let manager = Manager::from_config(
            pg,
            self.inner.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(wanted.size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.queue_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|err| TenantDbError::Build {
                tenant: tenant.clone(),
                reason: err.to_string(),
            })?;
        let pool = TenantPool {
            inner: Arc::new(PoolInner {
                tenant: tenant.clone(),
                wanted,
                pool,
                connect_timeout: config.connect_timeout,
                queue_timeout: config.queue_timeout,
                last_used: AtomicU64::new(0),
                epoch: self.inner.epoch,
                closed: CancellationToken::new(),
            }),
        };
        let mut client = pool.get().await?;
        run_tenant_migrations(&mut client, tenant).await?;
        drop(client);
        Ok(pool)
    }

    /// Publishes the open's result, if its slot is still the one it opened for.
    fn install(
        &self,
        id: u64,
        tenant: &TenantId,
        result: Result<TenantPool, TenantDbError>,
        tell: &watch::Sender<Option<OpenResult>>,
    ) {
        let mut state = self.lock();
        let current =
            matches!(state.slots.get(tenant), Some(Slot::Opening { id: open, .. }) if *open == id);
        let answer = if state.shut || !current {
            if let Ok(pool) = &result {
                pool.close();
            }
            Err(Arc::new(if state.shut {
                TenantDbError::ShuttingDown
            } else {
                TenantDbError::Superseded(tenant.clone())
            }))
        } else {
            match result {
                Ok(pool) => {
                    self.evict_for_one_more(&mut state);
                    state
                        .slots
                        .insert(tenant.clone(), Slot::Ready(pool.clone()));
                    self.inner.opens.fetch_add(1, Ordering::Relaxed);
                    pool.touch();
                    tracing::info!(
                        tenant = %tenant,
                        size = pool.max_size(),
                        ssl_enforced = pool.settings().ssl_enforced,
                        "tenant database pool opened"
                    );
                    Ok(pool)
                }
                Err(err) => {
                    state.slots.remove(tenant);
                    tracing::warn!(
                        tenant = %tenant,
                        error_code = %err.code(),
                        error = %err,
                        "cannot open the tenant database pool"
                    );
                    Err(Arc::new(err))
                }
            }
        };
        // Err only means every caller went away.
        let _ = tell.send(Some(answer));
    }

    /// Makes room for one more pool under `TENANT_DB_MAX_POOLS`: forgets the least recently
    /// used pool, preferring an unused one (which is also closed).
    fn evict_for_one_more(&self, state: &mut State) {
        loop {
            let ready: Vec<(&TenantId, &TenantPool)> = state
                .slots
                .iter()
                .filter_map(|(id, slot)| match slot {
                    Slot::Ready(pool) => Some((id, pool)),
                    Slot::Opening { .. } => None,
                })
                .collect();
            if ready.len() < self.inner.config.max_pools {
                return;
            }
            let victim = ready
                .iter()
                .filter(|(_, pool)| pool.unused())
                .max_by_key(|(_, pool)| pool.idle_for())
                .or_else(|| ready.iter().max_by_key(|(_, pool)| pool.idle_for()))
                .map(|(id, _)| (*id).clone());
            let Some(victim) = victim else { return };
            if let Some(Slot::Ready(pool)) = state.slots.remove(&victim) {
                if pool.unused() {
                    close(&pool, DropReason::Evicted);
                } else {
                    // Its holders keep it; it closes when the last of them lets go.
                    tracing::info!(tenant = %victim, "tenant database pool forgotten (pool limit)");
                }
            }
        }
    }
}

fn lock(inner: &Inner) -> std::sync::MutexGuard<'_, State> {
    // A panic under the lock leaves plain map data behind, still consistent.
    inner.state.lock().unwrap_or_else(|e| e.into_inner())
}

fn close(pool: &TenantPool, reason: DropReason) {
    pool.close();
    tracing::info!(tenant = %pool.tenant(), reason = ?reason, "tenant database pool closed");
}

fn extension_of(tenant: &Tenant) -> Result<&Extension, TenantDbError> {
    tenant
        .extensions
        .iter()
        .find(|e| e.kind == POSTGRES_CDC_RLS)
        .ok_or_else(|| TenantDbError::NoDatabase(tenant.external_id.clone()))
}

fn wanted(inner: &Inner, tenant: &Tenant, extension: &Extension) -> Result<Wanted, TenantDbError> {
    let settings = inner
        .tenants
        .db_settings(tenant, extension)
        .map_err(|source| TenantDbError::Settings {
            tenant: tenant.external_id.clone(),
            source,
        })?;
    Ok(Wanted {
        stored: extension.settings.clone(),
        settings,
        size: pool_size(&extension.settings, &inner.config),
        record_time: tenant.updated_at,
    })
}

/// The extension's `db_pool` (a positive number or numeric string), else the default; at most
/// the cap.
fn pool_size(settings: &Map<String, Value>, config: &TenantDbConfig) -> usize {
    let asked = match settings.get("db_pool") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .filter(|n| *n > 0);
    let size = asked.unwrap_or(u64::from(config.pool_size));
    size.min(u64::from(config.max_pool_size)) as usize
}

async fn wait_for(mut answer: watch::Receiver<Option<OpenResult>>) -> OpenResult {
    match answer.wait_for(Option::is_some).await {
        Ok(result) => result
            .clone()
            .unwrap_or(Err(Arc::new(TenantDbError::ShuttingDown))),
        // The open's task was stopped (the manager's owner was cancelled).
        Err(_) => Err(Arc::new(TenantDbError::ShuttingDown)),
    }
}

/// Closes pools on tenant changes (see the module doc).
async fn watch_tenant_changes(inner: Weak<Inner>, mut events: broadcast::Receiver<TenantEvent>) {
    loop {
        let event = events.recv().await;
        let Some(inner) = inner.upgrade() else { return };
        match event {
            Ok(event) => apply_event(&inner, &event),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "tenant change events were missed; closing every tenant database pool"
                );
                let slots: Vec<Slot> = lock(&inner).slots.drain().map(|(_, s)| s).collect();
                for slot in slots {
                    if let Slot::Ready(pool) = slot {
                        close(&pool, DropReason::MissedEvents);
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn apply_event(inner: &Inner, event: &TenantEvent) {
    let mut state = lock(inner);
    let Some(slot) = state.slots.get(&event.tenant) else {
        return;
    };
    let current = match slot {
        Slot::Ready(pool) => &pool.inner.wanted,
        Slot::Opening { wanted, .. } => wanted,
    };
    let (close_it, reason) = match (event.change, &event.record) {
        (TenantChange::Created | TenantChange::Updated, Some(record)) => {
            let unchanged = extension_of(record).ok().is_some_and(|extension| {
                current.stored == extension.settings
                    || wanted(inner, record, extension).is_ok_and(|new| {
                        new.settings == current.settings && new.size == current.size
                    })
            });
            (!unchanged, DropReason::SettingsChanged)
        }
        (TenantChange::Deleted, _) => (true, DropReason::Deleted),
        (TenantChange::Reloaded, _) => (true, DropReason::Reloaded),
        (TenantChange::Shutdown, _) => (true, DropReason::Shutdown),
        // Created or updated without a record: nothing to compare with.
        (_, None) => (true, DropReason::SettingsChanged),
    };
    if !close_it {
        return;
    }
    // An open in progress finds its slot gone and tells its waiters to start over.
    if let Some(Slot::Ready(pool)) = state.slots.remove(&event.tenant) {
        close(&pool, reason);
    }
}

/// Closes pools unused for `TENANT_DB_IDLE_TIMEOUT_MS` (nothing checked out, nobody but the
/// manager holding them), and the connections of the others idle that long.
async fn sweep_idle(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let idle = inner.config.idle_timeout;
        let mut state = lock(&inner);
        let expired: Vec<TenantId> = state
            .slots
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Ready(pool)
                    if pool.is_closed() || (pool.idle_for() >= idle && pool.unused()) =>
                {
                    Some(id.clone())
                }
                _ => None,
            })
            .collect();
        for id in expired {
            if let Some(Slot::Ready(pool)) = state.slots.remove(&id)
                && !pool.is_closed()
            {
                close(&pool, DropReason::Idle);
            }
        }
        for slot in state.slots.values() {
            if let Slot::Ready(pool) = slot {
                pool.inner
                    .pool
                    .retain(|_, metrics| metrics.last_used() < idle);
            }
        }
    }
}

/// TLS for tenant connections: rustls with the ring provider chosen explicitly (never the
/// process default, so another crate enabling aws-lc-rs cannot make it panic), encryption
/// without certificate verification (libpq's `prefer`/`require`).
fn tls_connector() -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(EncryptOnly(provider.signature_verification_algorithms));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Accepts any server certificate, but still checks that the server holds its key (the
/// handshake signatures), as libpq's `sslmode=require` does without a root certificate.
#[derive(Debug)]
struct EncryptOnly(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn settings(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn pool_size_comes_from_db_pool_within_bounds() {
        let config = TenantDbConfig::default();
        assert_eq!(pool_size(&settings(json!({})), &config), 2);
        assert_eq!(pool_size(&settings(json!({"db_pool": 3})), &config), 3);
        assert_eq!(pool_size(&settings(json!({"db_pool": "4"})), &config), 4);
        assert_eq!(pool_size(&settings(json!({"db_pool": 500})), &config), 10);
        assert_eq!(pool_size(&settings(json!({"db_pool": 0})), &config), 2);
        assert_eq!(pool_size(&settings(json!({"db_pool": -1})), &config), 2);
        assert_eq!(pool_size(&settings(json!({"db_pool": "x"})), &config), 2);
    }

    #[test]
    fn the_tls_connector_builds_with_ring_alone() {
        assert!(tls_connector().is_ok());
    }

    #[test]
    fn codes_follow_the_protocol() {
        let tenant = TenantId::from("t");
        let cases = [
            (
                TenantDbError::ConnectTimeout {
                    tenant: tenant.clone(),
                    timeout: Duration::from_secs(1),
                },
                ErrorCode::UnableToConnectToTenantDatabase,
            ),
            (
                TenantDbError::PoolExhausted {
                    tenant: tenant.clone(),
                    timeout: Duration::from_secs(1),
                    size: 2,
                },
                ErrorCode::IncreaseConnectionPool,
            ),
            (
                TenantDbError::Closed(tenant.clone()),
                ErrorCode::UnableToConnectToTenantDatabase,
            ),
            (TenantDbError::ShuttingDown, ErrorCode::RealtimeRestarting),
            (
                TenantDbError::NoDatabase(tenant.clone()),
                ErrorCode::InvalidConfiguration,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
            let shared = TenantDbError::Open(Arc::new(err));
            assert_eq!(shared.code(), code);
            assert!(matches!(shared.root(), e if e.code() == code));
        }
        assert_eq!(
            TenantDbError::Closed(tenant).client_reason(),
            "UnableToConnectToTenantDatabase: Realtime was unable to connect to the project database"
        );
    }
}
