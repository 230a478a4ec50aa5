//! Broadcast from the database (PROTOCOL.md 9): rows inserted into `realtime.messages` reach
//! the topic's subscribers, and the replay of stored messages at join (4.6).
//!
//! One stream per tenant, on the node that owns the tenant ([`StreamOwnership`], the ring:
//! the same seam as Postgres Changes), while the tenant has sockets on this node or rooms on a
//! peer ([`TenantInterest`]). The stream is the project's replication stream
//! ([`TenantStream`]) on a **temporary** pgoutput slot
//! `supabase_realtime_messages_replication_slot_<SLOT_NAME_SUFFIX>` and the publication
//! `supabase_realtime_messages_publication` (exactly `realtime.messages`, recreated when it is
//! anything else). Each inserted broadcast row is checked against the tenant's payload size
//! and events rate and published through the [`Broadcaster`] like any local publish, so peers
//! with subscribers get it over the bus.

pub mod row;
mod sql;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

pub use row::{DbMessage, MessageRelations};
pub use sql::PUBLICATION;

use crate::broadcast::Broadcaster;
use crate::config::ReplicationConfig;
use crate::db::TenantDbs;
use crate::error::{ErrorCode, OperationalError};
use crate::hub::{FanoutMessage, Hub, RoomKey};
use crate::limits::{Limits, TenantLimiter};
use crate::postgres_changes::pgoutput;
use crate::postgres_changes::replication::{
    ReplicationError, ReplicationStats, ReplicationTarget, SlotName, StreamEvent, StreamHandle,
    StreamOwnership, StreamStatus, TenantStream,
};
use crate::tasks::Owner;
use crate::tenants::{Tenant, Tenants};
use crate::types::TenantId;

/// The slot's name before `SLOT_NAME_SUFFIX` (with no suffix the name ends with `_`).
pub const SLOT_PREFIX: &str = "supabase_realtime_messages_replication_slot_";
/// How often the set of streams is compared with the tenants that want one.
const RECONCILE_EVERY: Duration = Duration::from_millis(200);
/// The first wait before a tenant whose stream could not be set up is tried again; it doubles
/// with every failure in a row, up to [`START_RETRY_MAX`].
const START_RETRY: Duration = Duration::from_secs(2);
/// The longest wait between set-up attempts.
const START_RETRY_MAX: Duration = Duration::from_secs(60);
/// Bound of every wait on the tenant database (pool, connection, statement) here.
const DB_TIMEOUT: Duration = Duration::from_secs(8);
/// How often a running consumer re-reads its tenant record (limits).
const TENANT_REFRESH: Duration = Duration::from_secs(1);
/// At most one warning per this interval per stream for dropped messages.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// The tenants that should have a database-broadcast stream somewhere: those with subscribers
/// on this node or on a peer. Called every [`RECONCILE_EVERY`]; must not wait.
pub trait TenantInterest: Send + Sync + 'static {
    /// The tenants, in any order, duplicates allowed.
    fn tenants(&self) -> Vec<TenantId>;
}

/// This node's tenants with sockets, plus the tenants the peers have rooms for.
pub struct NodeInterest {
    hub: Arc<Hub>,
    peers: Option<Arc<dyn TenantInterest>>,
}

impl NodeInterest {
    /// Interest of this node's hub, and of the peers when clustered.
    pub fn new(hub: Arc<Hub>, peers: Option<Arc<dyn TenantInterest>>) -> NodeInterest {
        NodeInterest { hub, peers }
    }
}

impl TenantInterest for NodeInterest {
    fn tenants(&self) -> Vec<TenantId> {
        let mut tenants = self.hub.tenants();
        if let Some(peers) = &self.peers {
            tenants.extend(peers.tenants());
        }
        tenants
    }
}

/// A failure of Broadcast from the database.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DbBroadcastError {
    /// The tenant record is gone.
    #[error("tenant `{0}` not found")]
    TenantNotFound(String),
    /// The tenant database could not be reached (its code: pool, connection, ...).
    #[error("tenant database: {message}")]
    Database {
        /// The pool's code.
        code: ErrorCode,
        /// What happened.
        message: String,
    },
    /// A statement failed.
    #[error("query failed: {0}")]
    Query(String),
    /// The slot name is not valid.
    #[error(transparent)]
    Replication(ReplicationError),
    /// A wait on the tenant database took longer than its bound.
    #[error("the tenant database did not answer in time")]
    Timeout,
}

impl OperationalError for DbBroadcastError {
    fn code(&self) -> ErrorCode {
        match self {
            DbBroadcastError::TenantNotFound(_) => ErrorCode::TenantNotFound,
            DbBroadcastError::Database { code, .. } => *code,
            DbBroadcastError::Query(_) => ErrorCode::UnableToBroadcastChanges,
            DbBroadcastError::Replication(err) => err.code(),
            DbBroadcastError::Timeout => ErrorCode::QueryCanceled,
        }
    }

    fn client_message(&self) -> String {
        "Realtime was unable to replay messages".into()
    }
}

impl From<crate::db::TenantDbError> for DbBroadcastError {
    fn from(err: crate::db::TenantDbError) -> DbBroadcastError {
        DbBroadcastError::Database {
            code: err.code(),
            message: err.to_string(),
        }
    }
}

enum Entry {
    /// Being set up (tenant record, pool, publication).
    Starting,
    /// Set-up failed `failures` times in a row; tried again after `until`.
    Failed { until: Instant, failures: u32 },
    /// Being set up again after `failures` failures.
    Retrying { failures: u32 },
    Running {
        handle: StreamHandle,
        /// Since when nobody wants the stream.
        idle_since: Option<Instant>,
        /// The last time the publication was ensured again for a stream that lost it.
        ensured_at: Instant,
    },
}

struct Inner {
    tenants: Tenants,
    dbs: TenantDbs,
    broadcaster: Arc<Broadcaster>,
    limits: Arc<Limits>,
    ownership: Arc<dyn StreamOwnership>,
    interest: Arc<dyn TenantInterest>,
    config: ReplicationConfig,
    owner: Owner,
    streams: Mutex<HashMap<TenantId, Entry>>,
    stats: Arc<ReplicationStats>,
    published: AtomicU64,
    dropped: AtomicU64,
    /// Set by [`DbBroadcast::shutdown`]: nothing starts any more.
    closing: std::sync::atomic::AtomicBool,
}

/// Broadcast from the database: the streams of the tenants this node owns, and replay.
/// Cheap to clone.
#[derive(Clone)]
pub struct DbBroadcast {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DbBroadcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbBroadcast")
            .field("running", &self.running())
            .field("published_dropped", &self.counters())
            .finish_non_exhaustive()
    }
}

/// What [`DbBroadcast::new`] needs.
pub struct DbBroadcastDeps {
    /// Tenant records (limits, database settings).
    pub tenants: Tenants,
    /// Tenant database pools (publication, replay).
    pub dbs: TenantDbs,
    /// The publish seam.
    pub broadcaster: Arc<Broadcaster>,
    /// Tenant counters (events rate).
    pub limits: Arc<Limits>,
    /// Which tenants this node streams.
    pub ownership: Arc<dyn StreamOwnership>,
    /// Which tenants want a stream.
    pub interest: Arc<dyn TenantInterest>,
    /// Stream settings (`SLOT_NAME_SUFFIX`, idle timeout, backoff, status interval).
    pub config: ReplicationConfig,
}

impl DbBroadcast {
    /// Starts the service: a task under a child of `owner` that starts and stops streams.
    pub fn new(deps: DbBroadcastDeps, owner: &Owner) -> DbBroadcast {
        let service = DbBroadcast {
            inner: Arc::new(Inner {
                tenants: deps.tenants,
                dbs: deps.dbs,
                broadcaster: deps.broadcaster,
                limits: deps.limits,
                ownership: deps.ownership,
                interest: deps.interest,
                config: deps.config,
                owner: owner.child(),
                streams: Mutex::new(HashMap::new()),
                stats: Arc::new(ReplicationStats::default()),
                published: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                closing: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        let me = service.clone();
        service
            .inner
            .owner
            .spawn("database broadcast streams", async move {
                let mut tick = tokio::time::interval(RECONCILE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = me.inner.owner.cancelled() => break,
                        _ = tick.tick() => me.reconcile(),
                    }
                }
            });
        service
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<TenantId, Entry>> {
        self.inner
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The tenants whose database-broadcast stream runs on this node.
    pub fn running(&self) -> Vec<TenantId> {
        let mut running: Vec<TenantId> = self
            .streams()
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Running { .. }))
            .map(|(t, _)| t.clone())
            .collect();
        running.sort();
        running
    }

    /// Messages published from the database so far (and dropped by the limits).
    pub fn counters(&self) -> (u64, u64) {
        (
            self.inner.published.load(Ordering::Relaxed),
            self.inner.dropped.load(Ordering::Relaxed),
        )
    }

    /// The slot of this node's streams.
    ///
    /// # Errors
    /// [`ReplicationError::InvalidSlotName`] for a suffix Postgres refuses.
    pub fn slot_name(suffix: Option<&str>) -> Result<SlotName, ReplicationError> {
        SlotName::new(format!(
            "{SLOT_PREFIX}{}",
            suffix.map(str::trim).unwrap_or_default()
        ))
    }

    /// Compares the running streams with the tenants that want one: starts the missing ones
    /// (owned here), stops those nobody wanted for `idle_timeout` and, at once, those this
    /// node no longer owns.
    fn reconcile(&self) {
        if self.inner.closing.load(Ordering::Relaxed) {
            return;
        }
        let wanted: HashSet<TenantId> = self
            .inner
            .interest
            .tenants()
            .into_iter()
            .filter(|t| self.inner.ownership.owns(t))
            .collect();
        let now = Instant::now();
        let (mut start, mut stop, mut ensure) = (Vec::new(), Vec::new(), Vec::new());
        {
            let mut streams = self.streams();
            for tenant in &wanted {
                match streams.get_mut(tenant) {
                    None => {
                        streams.insert(tenant.clone(), Entry::Starting);
                        start.push(tenant.clone());
                    }
                    Some(entry @ Entry::Failed { .. }) => {
                        if let Entry::Failed { until, failures } = *entry
                            && now >= until
                        {
                            *entry = Entry::Retrying { failures };
                            start.push(tenant.clone());
                        }
                    }
                    Some(Entry::Running {
                        handle,
                        idle_since,
                        ensured_at,
                    }) => {
                        *idle_since = None;
                        if let StreamStatus::Retrying {
                            error: ReplicationError::PublicationNotFound { .. },
                            ..
                        } = handle.status()
                            && now.duration_since(*ensured_at) >= START_RETRY
                        {
                            *ensured_at = now;
                            ensure.push(tenant.clone());
                        }
                    }
                    Some(Entry::Starting | Entry::Retrying { .. }) => {}
                }
            }
            let idle_timeout = self.inner.config.idle_timeout;
            streams.retain(|tenant, entry| match entry {
                Entry::Running {
                    handle, idle_since, ..
                } => {
                    if handle.is_stopped() {
                        return false;
                    }
                    if wanted.contains(tenant) {
                        return true;
                    }
                    let since = *idle_since.get_or_insert(now);
                    let owned = self.inner.ownership.owns(tenant);
                    if !owned || now.duration_since(since) >= idle_timeout {
                        stop.push(handle.clone());
                        return false;
                    }
                    true
                }
                Entry::Failed { .. } => wanted.contains(tenant),
                Entry::Starting | Entry::Retrying { .. } => true,
            });
        }
        for tenant in start {
            let me = self.clone();
            self.inner
                .owner
                .spawn("database broadcast start", me.start(tenant));
        }
        for tenant in ensure {
            let me = self.clone();
            self.inner
                .owner
                .spawn("database broadcast publication", async move {
                    if let Err(err) = me.ensure_publication(&tenant).await {
                        tracing::warn!(error_code = %err.code(), tenant = %tenant, error = %err,
                            "cannot recreate the messages publication");
                    }
                });
        }
        for handle in stop {
            self.inner
                .owner
                .spawn("database broadcast stop", async move {
                    tracing::info!(slot = %handle.slot(), "stopping a database broadcast stream");
                    handle.shutdown().await;
                });
        }
    }

    async fn tenant(&self, id: &TenantId) -> Result<Arc<Tenant>, DbBroadcastError> {
        match self.inner.tenants.get(id).await {
            Ok(Some(tenant)) => Ok(tenant),
            Ok(None) => Err(DbBroadcastError::TenantNotFound(id.to_string())),
            Err(err) => Err(DbBroadcastError::Database {
                code: err.code(),
                message: err.to_string(),
            }),
        }
    }

    async fn ensure_publication(&self, id: &TenantId) -> Result<(), DbBroadcastError> {
        let tenant = self.tenant(id).await?;
        tokio::time::timeout(DB_TIMEOUT, async {
            let pool = self.inner.dbs.get(&tenant).await?;
            let client = pool.get().await?;
            sql::ensure_publication(&client).await
        })
        .await
        .map_err(|_| DbBroadcastError::Timeout)?
    }

    /// Sets up one tenant's stream: its record, the publication, the slot's name, the stream
    /// and its consumer. A failure is retried after [`START_RETRY`] while the tenant wants it.
    async fn start(self, id: TenantId) {
        let setup = async {
            self.ensure_publication(&id).await?;
            let tenant = self.tenant(&id).await?;
            let pool = tokio::time::timeout(DB_TIMEOUT, self.inner.dbs.get(&tenant))
                .await
                .map_err(|_| DbBroadcastError::Timeout)??;
            let settings = pool.settings();
            let slot = Self::slot_name(self.inner.config.slot_name_suffix.as_deref())
                .map_err(DbBroadcastError::Replication)?;
            let target = ReplicationTarget {
                host: settings.host.clone(),
                port: settings.port,
                user: settings.user.clone(),
                password: settings.password.clone(),
                dbname: settings.name.clone(),
                tls: settings.ssl_enforced,
                slot,
                publication: PUBLICATION.to_string(),
                temporary_slot: true,
            };
            Ok::<_, DbBroadcastError>((tenant, target))
        };
        let result = setup.await;
        let mut streams = self.streams();
        let failures = match streams.get(&id) {
            Some(Entry::Starting) => 0,
            Some(Entry::Retrying { failures }) => *failures,
            _ => return,
        };
        if self.inner.closing.load(Ordering::Relaxed) {
            return;
        }
        match result {
            Ok((tenant, target)) => {
                let (handle, events) = TenantStream::spawn(
                    &self.inner.owner,
                    target,
                    &self.inner.config,
                    self.inner.stats.clone(),
                );
                streams.insert(
                    id.clone(),
                    Entry::Running {
                        handle: handle.clone(),
                        idle_since: None,
                        ensured_at: Instant::now(),
                    },
                );
                drop(streams);
                tracing::info!(tenant = %id, slot = %handle.slot(), "database broadcast stream starting");
                let me = self.clone();
                self.inner
                    .owner
                    .spawn("database broadcast consumer", async move {
                        me.consume(tenant, handle, events).await;
                    });
            }
            Err(err) => {
                let delay = START_RETRY
                    .saturating_mul(1 << failures.min(10))
                    .min(START_RETRY_MAX);
                // The first failure and then every tenth: a tenant whose database is away for
                // good does not fill the log.
                if failures % 10 == 0 {
                    tracing::warn!(error_code = %err.code(), tenant = %id, error = %err,
                        failures = failures + 1, retry_in_s = delay.as_secs(),
                        "cannot start the database broadcast stream; retrying");
                }
                streams.insert(
                    id,
                    Entry::Failed {
                        until: Instant::now() + delay,
                        failures: failures + 1,
                    },
                );
            }
        }
    }

    /// Publishes every inserted broadcast row of the stream, in WAL order, and confirms each
    /// commit once its rows are queued.
    async fn consume(
        &self,
        mut tenant: Arc<Tenant>,
        handle: StreamHandle,
        mut events: mpsc::Receiver<StreamEvent>,
    ) {
        let id = tenant.external_id.clone();
        let mut relations = MessageRelations::new();
        let mut limiter = self.inner.limits.tenant(&id, Instant::now());
        let mut refreshed = Instant::now();
        let mut warned: Option<Instant> = None;
        while let Some(event) = events.recv().await {
            match event {
                StreamEvent::Connected { .. } => relations = MessageRelations::new(),
                StreamEvent::Data { bytes, .. } => {
                    let outcome = pgoutput::decode(&bytes)
                        .map_err(|e| e.to_string())
                        .and_then(|m| relations.apply(&m).map_err(|e| e.to_string()));
                    match outcome {
                        Ok(Some(message)) => {
                            if let Err(why) = self.publish(&tenant, &limiter, message) {
                                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                                    warned = Some(Instant::now());
                                    tracing::warn!(error_code = %why.0, tenant = %id, reason = why.1,
                                        "database broadcast dropped");
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(error) => {
                            tracing::warn!(error_code = %ErrorCode::UnableToBroadcastChanges,
                                tenant = %id, %error, "unreadable realtime.messages change skipped");
                        }
                    }
                }
                StreamEvent::Commit { end_lsn, .. } => handle.confirm(end_lsn),
                _ => {}
            }
            if refreshed.elapsed() >= TENANT_REFRESH {
                refreshed = Instant::now();
                if let Ok(Some(fresh)) = self.inner.tenants.get(&id).await {
                    tenant = fresh;
                }
                limiter = self.inner.limits.tenant(&id, refreshed);
            }
        }
    }

    /// One row: the payload size limit and the tenant's events rate (dropped when exceeded,
    /// PROTOCOL.md 9.2), then a local publish through the broadcaster (peers included).
    fn publish(
        &self,
        tenant: &Tenant,
        limiter: &TenantLimiter,
        message: DbMessage,
    ) -> Result<(), (ErrorCode, &'static str)> {
        let max = tenant.limits.max_payload_size_in_kb as usize * 1000;
        if message.broadcast.payload.len() > max {
            return Err((
                ErrorCode::PayloadSizeExceeded,
                "payload over the tenant limit",
            ));
        }
        let now = Instant::now();
        if limiter.check_channel_events(&tenant.limits, now).is_err() {
            return Err((
                ErrorCode::MessagePerSecondRateLimitReached,
                "tenant events rate exceeded",
            ));
        }
        let room = RoomKey {
            tenant: tenant.external_id.clone(),
            private: message.private,
            sub_topic: message.topic.into(),
        };
        let delivered =
            self.inner
                .broadcaster
                .publish(&room, &FanoutMessage::User(message.broadcast), None);
        limiter.add_channel_events(1 + delivered as u64, now);
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The stored messages a private join replays (PROTOCOL.md 4.6), oldest first, with
    /// `{"replayed":true,"id":...}` metadata.
    ///
    /// # Errors
    /// [`DbBroadcastError`] when the pool, the connection or the query fails or times out.
    pub async fn replay(
        &self,
        tenant: &Tenant,
        sub_topic: &str,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<DbMessage>, DbBroadcastError> {
        tokio::time::timeout(DB_TIMEOUT, async {
            let pool = self.inner.dbs.get(tenant).await?;
            let client = pool.get().await?;
            sql::replay(&client, sub_topic, since_ms, limit).await
        })
        .await
        .map_err(|_| DbBroadcastError::Timeout)?
    }

    /// Stops every stream (their temporary slots go with them) and the service's tasks.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.closing.store(true, Ordering::Relaxed);
        let handles: Vec<StreamHandle> = self
            .streams()
            .drain()
            .filter_map(|(_, e)| match e {
                Entry::Running { handle, .. } => Some(handle),
                _ => None,
            })
            .collect();
        futures::future::join_all(handles.iter().map(StreamHandle::shutdown)).await;
        self.inner.owner.shutdown(grace).await;
    }
}
