//! The Postgres Changes service: subscriptions made at join (PROTOCOL.md 6.1), the tenant's
//! change stream started with its first subscriber, and one consumer task per stream that
//! dispatches its changes (`consumer`).
//!
//! A join's subscription runs in two halves, like the join itself. [`PostgresChanges::prepare`]
//! does every wait beside the socket loop: the tenant database pool, the publication's tables,
//! each table's columns and the role's column privileges, filter compilation, and the start of
//! the tenant's stream. [`PreparedSubscription::register`] then runs on the socket loop, in the
//! same turn as the join reply: from that moment on every committed change reaches the channel.
//! `Subscribed to PostgreSQL` is sent once the stream is streaming from its slot, so a change
//! committed after the client saw it is never missed (the slot keeps it until it is delivered).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::value::RawValue;

use super::binding::{BindingError, BindingSpec};
use super::feed::{Acquired, Feeds};
use super::filter::ColumnInfo as FilterColumn;
use super::registry::{
    ChannelKey, ColumnView, Registry, SubscriberAuth, Subscription, TableBinding, TableMeta,
    TableName,
};
use super::replication::{ReplicationError, ReplicationTarget, SlotName, StreamManager};
use crate::config::ReplicationConfig;
use crate::db::{TenantDbError, TenantDbs, TenantPool, catalog};
use crate::error::{ErrorCode, OperationalError};
use crate::hub::{ChannelSlot, Frame, Outbound, Outbox};
use crate::phoenix::{self, Vsn};
use crate::tasks::Owner;
use crate::tenants::{POSTGRES_CDC_RLS, Tenant, Tenants};
use crate::types::{ConnId, TenantId};

/// Longest a join waits for its subscription to be prepared before it is answered with an
/// error notice.
pub(crate) const PREPARE_TIMEOUT: Duration = Duration::from_secs(8);
/// The notice of a registered subscription (PROTOCOL.md 3.5).
pub(crate) const SUBSCRIBED: &str = "Subscribed to PostgreSQL";

/// Why a channel's Postgres changes could not be subscribed; `Display` is the `system` error
/// text the client gets.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubscribeError {
    /// An entry of `config.postgres_changes` was refused (6.1, 6.2).
    #[error(transparent)]
    Binding(#[from] BindingError),
    /// No published table matches an entry.
    #[error(
        "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [{0}]"
    )]
    NoTable(String),
    /// The tenant has no `postgres_cdc_rls` extension.
    #[error("Postgres Changes are not enabled for this tenant")]
    NotEnabled,
    /// The tenant database could not be reached or queried.
    #[error("Unable to connect to the project database")]
    Database(#[from] TenantDbError),
    /// A catalog statement failed.
    #[error("Unable to read the tables of the publication")]
    Catalog(#[source] tokio_postgres::Error),
    /// The change stream could not be started here.
    #[error("Unable to start the change stream: {0}")]
    Stream(#[from] ReplicationError),
    /// Preparing took longer than [`PREPARE_TIMEOUT`].
    #[error("Timed out subscribing to PostgreSQL")]
    Timeout,
    /// The tenant's connection settings could not be read.
    #[error("Invalid database settings for this tenant")]
    Settings(#[source] crate::tenants::TenantsError),
}

impl OperationalError for SubscribeError {
    fn code(&self) -> ErrorCode {
        match self {
            SubscribeError::Binding(e) => e.code(),
            SubscribeError::Database(e) => e.code(),
            SubscribeError::Stream(e) => e.code(),
            SubscribeError::NotEnabled => ErrorCode::RealtimeDisabledForConfiguration,
            SubscribeError::Settings(e) => e.code(),
            SubscribeError::NoTable(_) | SubscribeError::Catalog(_) | SubscribeError::Timeout => {
                ErrorCode::UnableToSubscribeToPostgres
            }
        }
    }

    fn client_message(&self) -> String {
        self.to_string()
    }
}

/// Encodes a `postgres_changes` `system` notice for a channel (PROTOCOL.md 3.5).
pub(crate) fn notice_frame(
    vsn: Vsn,
    join_ref: Option<&str>,
    topic: &str,
    ok: bool,
    message: &str,
) -> Frame {
    let sub_topic = topic.strip_prefix("realtime:").unwrap_or(topic);
    let payload = serde_json::json!({
        "extension": "postgres_changes",
        "status": if ok { "ok" } else { "error" },
        "message": message,
        "channel": sub_topic,
    })
    .to_string();
    Frame::text(phoenix::encode_message(
        vsn,
        join_ref,
        None,
        topic,
        phoenix::EVENT_SYSTEM,
        &payload,
    ))
}

/// One channel's interest in one table, before it has a channel.
#[derive(Debug)]
struct PreparedTable {
    name: TableName,
    meta: Arc<TableMeta>,
    bindings: Vec<TableBinding>,
    view: Arc<ColumnView>,
}

/// A stream this subscription holds a share of; released on drop.
#[derive(Debug)]
struct StreamLease {
    streams: Arc<Streams>,
    tenant: TenantId,
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        self.streams.feeds.release(&self.tenant);
    }
}

/// Holds a new stream's consumer until the subscription that started it is registered (or
/// given up), so changes the slot kept while nobody listened (a node restart) reach it.
#[derive(Debug)]
pub(crate) struct StartGate {
    open: tokio::sync::watch::Sender<bool>,
}

impl StartGate {
    fn new() -> (Arc<StartGate>, tokio::sync::watch::Receiver<bool>) {
        let (open, rx) = tokio::sync::watch::channel(false);
        (Arc::new(StartGate { open }), rx)
    }

    fn open(&self) {
        self.open.send_replace(true);
    }
}

/// A subscription ready to be registered by the socket loop.
#[derive(Debug)]
pub(crate) struct PreparedSubscription {
    service: Arc<Shared>,
    tenant: TenantId,
    auth: Arc<SubscriberAuth>,
    tables: Vec<PreparedTable>,
    /// Moves to the [`Registration`]; released with this value when it is never registered.
    lease: Option<StreamLease>,
    /// Set when this subscription started the tenant's stream.
    gate: Option<Arc<StartGate>>,
}

impl Drop for PreparedSubscription {
    fn drop(&mut self) {
        // Registered or abandoned: either way the consumer may go on.
        if let Some(gate) = &self.gate {
            gate.open();
        }
    }
}

/// A channel's registered subscriptions; dropping it (leave, close, rejoin) removes them.
#[derive(Debug)]
pub(crate) struct Registration {
    service: Arc<Shared>,
    tenant: TenantId,
    channel: ChannelKey,
    _lease: Option<StreamLease>,
}

impl Registration {
    /// A token refresh: later changes are checked with these claims.
    pub(crate) fn refresh(&self, role: &str, claims: &serde_json::Map<String, serde_json::Value>) {
        let auth = Arc::new(SubscriberAuth {
            role: role.to_string(),
            claims: serde_json::Value::Object(claims.clone()).to_string(),
        });
        self.service
            .registry
            .refresh_auth(&self.tenant, &self.channel, auth);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.service.registry.remove(&self.tenant, &self.channel);
    }
}

impl PreparedSubscription {
    /// Registers the subscription for a channel; returns the registration and whether the
    /// stream is already streaming (then `Subscribed to PostgreSQL` may be sent at once;
    /// otherwise the consumer sends it when the stream connects).
    pub(crate) fn register(
        mut self,
        conn: ConnId,
        slot: ChannelSlot,
        outbox: Outbox,
        vsn: Vsn,
        topic: &str,
        join_ref: Option<&str>,
    ) -> (Registration, bool) {
        let channel = ChannelKey { conn, slot };
        let notified = Arc::new(AtomicBool::new(false));
        let topic: Arc<str> = topic.into();
        let join_ref: Option<Arc<str>> = join_ref.map(Into::into);
        let subs = std::mem::take(&mut self.tables)
            .into_iter()
            .map(|t| {
                let sub = Arc::new(Subscription {
                    channel: channel.clone(),
                    outbox: outbox.clone(),
                    vsn,
                    topic: topic.clone(),
                    join_ref: join_ref.clone(),
                    bindings: t.bindings,
                    auth: RwLock::new(self.auth.clone()),
                    view: t.view,
                    notified: notified.clone(),
                });
                (t.name, t.meta, sub)
            })
            .collect();
        self.service.registry.insert(&self.tenant, subs);
        // After the insert: either this sees the stream streaming, or the consumer's notice
        // (sent when it connects) sees this subscription; `notified` makes it exactly once.
        let streaming = self.service.streams.is_streaming(&self.tenant)
            && !notified.swap(true, Ordering::AcqRel);
        // The lease moves to the registration; `self`, dropped here, opens the gate.
        (
            Registration {
                service: self.service.clone(),
                tenant: self.tenant.clone(),
                channel,
                _lease: self.lease.take(),
            },
            streaming,
        )
    }
}

/// The tenants' streams and their consumers.
#[derive(Debug)]
pub(crate) struct Streams {
    pub(crate) manager: StreamManager,
    /// Where each tenant's changes come from on this node (its stream, or its owner).
    pub(crate) feeds: Feeds,
    config: ReplicationConfig,
    /// Tenants whose stream is streaming now (set by their consumer).
    streaming: RwLock<HashMap<TenantId, bool>>,
}

impl Streams {
    pub(crate) fn is_streaming(&self, tenant: &TenantId) -> bool {
        self.streaming
            .read()
            .expect("streaming lock")
            .get(tenant)
            .copied()
            .unwrap_or(false)
    }

    pub(crate) fn set_streaming(&self, tenant: &TenantId, streaming: bool) {
        let mut map = self.streaming.write().expect("streaming lock");
        if streaming {
            map.insert(tenant.clone(), true);
        } else {
            map.remove(tenant);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) registry: Arc<Registry>,
    pub(crate) dbs: TenantDbs,
    pub(crate) tenants: Tenants,
    pub(crate) streams: Arc<Streams>,
    pub(crate) owner: Owner,
    pub(crate) stats: Arc<super::consumer::ConsumerStats>,
}

/// The Postgres Changes service of this node. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct PostgresChanges {
    shared: Arc<Shared>,
}

impl PostgresChanges {
    /// Creates the service; its consumers run under `owner`.
    pub(crate) fn new(
        tenants: Tenants,
        dbs: TenantDbs,
        config: ReplicationConfig,
        ownership: Arc<dyn super::replication::StreamOwnership>,
        owner: &Owner,
    ) -> PostgresChanges {
        let manager = StreamManager::new(owner, config.clone(), ownership.clone());
        let service_owner = owner.child();
        let feeds = Feeds::new(
            manager.clone(),
            ownership,
            config.channel_capacity.get(),
            config.idle_timeout,
            &service_owner,
        );
        let keeper = feeds.clone();
        service_owner.spawn("postgres changes feed keeper", async move {
            let mut tick = tokio::time::interval(super::feed::WANT_RETRY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                keeper.keep();
            }
        });
        // A deleted tenant's stream stops and its slot goes at once.
        let mut events = tenants.subscribe();
        let forget = manager.clone();
        service_owner.spawn("postgres changes tenant events", async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(event) if event.change == crate::tenants::TenantChange::Deleted => {
                        forget.forget(&event.tenant).await;
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        });
        PostgresChanges {
            shared: Arc::new(Shared {
                registry: Arc::new(Registry::new()),
                dbs,
                tenants,
                streams: Arc::new(Streams {
                    manager,
                    feeds,
                    config,
                    streaming: RwLock::new(HashMap::new()),
                }),
                owner: service_owner,
                stats: Arc::default(),
            }),
        }
    }

    /// The tenants whose change stream runs on this node, by external id.
    pub(crate) fn running_streams(&self) -> Vec<String> {
        self.shared.streams.feeds.local_tenants()
    }

    /// The replication lag in bytes of each stream this node runs.
    pub(crate) fn replication_lags(&self) -> Vec<(TenantId, u64)> {
        self.shared.streams.manager.lags()
    }

    /// The counters of this node's replication streams.
    pub(crate) fn replication_stats(
        &self,
    ) -> &crate::postgres_changes::replication::ReplicationStats {
        self.shared.streams.manager.stats()
    }

    /// Stops the consumers and the streams (positions confirmed, slots kept).
    pub(crate) async fn shutdown(&self, grace: Duration) {
        self.shared.streams.manager.shutdown().await;
        self.shared.owner.shutdown(grace).await;
    }

    /// Prepares the subscriptions of one join: `entries` are its `config.postgres_changes`,
    /// `role` and `claims` the channel JWT's.
    pub(crate) async fn prepare(
        &self,
        tenant: &Tenant,
        entries: &[Box<RawValue>],
        role: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<PreparedSubscription, SubscribeError> {
        match tokio::time::timeout(
            PREPARE_TIMEOUT,
            self.prepare_inner(tenant, entries, role, claims),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(SubscribeError::Timeout),
        }
    }

    async fn prepare_inner(
        &self,
        tenant: &Tenant,
        entries: &[Box<RawValue>],
        role: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<PreparedSubscription, SubscribeError> {
        let mut specs = Vec::with_capacity(entries.len());
        for entry in entries {
            specs.push((
                crate::channel::join::postgres_changes_id(entry),
                BindingSpec::parse(entry)?,
            ));
        }
        let extension = tenant
            .extensions
            .iter()
            .find(|e| e.kind == POSTGRES_CDC_RLS)
            .ok_or(SubscribeError::NotEnabled)?;
        let settings = self
            .shared
            .tenants
            .db_settings(tenant, extension)
            .map_err(SubscribeError::Settings)?;
        let pool: TenantPool = self.shared.dbs.get(tenant).await?;
        let client = pool.get().await?;
        let published = catalog::publication_tables(&**client, &settings.publication)
            .await
            .map_err(SubscribeError::Catalog)?;
        // Every published table some entry covers, with the entries that cover it.
        let mut per_table: Vec<(catalog::PublishedTable, Vec<usize>)> = Vec::new();
        for (i, (_, spec)) in specs.iter().enumerate() {
            let mut found = false;
            for table in &published.tables {
                if spec.matches_table(&table.schema, &table.table) {
                    found = true;
                    match per_table.iter_mut().find(|(t, _)| t.oid == table.oid) {
                        Some((_, list)) => list.push(i),
                        None => per_table.push((table.clone(), vec![i])),
                    }
                }
            }
            if !found {
                return Err(SubscribeError::NoTable(describe(spec)));
            }
        }
        let mut tables = Vec::with_capacity(per_table.len());
        for (published, covering) in per_table {
            let Some(info) = catalog::table_info(&**client, catalog::TableRef::Oid(published.oid))
                .await
                .map_err(SubscribeError::Catalog)?
            else {
                continue;
            };
            let readable: BTreeSet<String> =
                catalog::selectable_columns(&**client, role, published.oid)
                    .await
                    .map_err(SubscribeError::Catalog)?
                    .into_iter()
                    .collect();
            let columns: Vec<FilterColumn> = info
                .columns
                .iter()
                .map(|c| FilterColumn {
                    name: c.name.clone(),
                    type_name: c.type_name.clone(),
                    selectable: readable.contains(&c.name),
                })
                .collect();
            let primary_key: Vec<String> = info
                .columns
                .iter()
                .filter(|c| c.is_pkey)
                .map(|c| c.name.clone())
                .collect();
            let mut bindings = Vec::with_capacity(covering.len());
            let mut selected: Option<BTreeSet<String>> = Some(BTreeSet::new());
            for i in covering {
                let (id, spec) = &specs[i];
                spec.check_select(&columns)?;
                let filter = match &spec.filter {
                    Some(filter) => Some(filter.compile(&columns).map_err(BindingError::from)?),
                    None => None,
                };
                match (&spec.select, &mut selected) {
                    (Some(names), Some(set)) => set.extend(names.iter().cloned()),
                    (None, _) => selected = None,
                    (Some(_), None) => {}
                }
                bindings.push(TableBinding {
                    id: *id,
                    event: spec.event,
                    filter,
                });
            }
            let only = selected.map(|mut set| {
                set.extend(primary_key.iter().cloned());
                set.into_iter().collect::<Vec<_>>()
            });
            let hidden: Vec<String> = {
                let mut h: Vec<String> = info
                    .columns
                    .iter()
                    .filter(|c| !readable.contains(&c.name))
                    .map(|c| c.name.clone())
                    .collect();
                h.sort();
                h
            };
            tables.push(PreparedTable {
                name: TableName {
                    schema: info.schema.as_str().into(),
                    table: info.name.as_str().into(),
                },
                meta: Arc::new(TableMeta {
                    oid: info.oid,
                    rls_enabled: info.rls_enabled,
                    primary_key,
                }),
                bindings,
                view: Arc::new(ColumnView { hidden, only }),
            });
        }
        drop(client);
        let (lease, gate) = self.start_stream(tenant, &settings, pool)?;
        Ok(PreparedSubscription {
            service: self.shared.clone(),
            tenant: tenant.external_id.clone(),
            auth: Arc::new(SubscriberAuth {
                role: role.to_string(),
                claims: serde_json::Value::Object(claims.clone()).to_string(),
            }),
            tables,
            lease: Some(lease),
            gate,
        })
    }

    fn start_stream(
        &self,
        tenant: &Tenant,
        settings: &crate::tenants::TenantDbSettings,
        pool: TenantPool,
    ) -> Result<(StreamLease, Option<Arc<StartGate>>), SubscribeError> {
        let streams = &self.shared.streams;
        let target = self.target(settings)?;
        let id = tenant.external_id.clone();
        let acquired = streams.feeds.acquire(&id, target)?;
        let lease = StreamLease {
            streams: streams.clone(),
            tenant: id.clone(),
        };
        let mut gate = None;
        if let Acquired::New { events, cursor } = acquired {
            let (start_gate, opened) = StartGate::new();
            self.spawn_consumer(tenant, cursor, events, pool, opened);
            gate = Some(start_gate);
        }
        Ok((lease, gate))
    }

    fn target(
        &self,
        settings: &crate::tenants::TenantDbSettings,
    ) -> Result<ReplicationTarget, SubscribeError> {
        let slot = SlotName::for_tenant(
            &settings.slot_name,
            self.shared.streams.config.slot_name_suffix.as_deref(),
        )?;
        Ok(ReplicationTarget {
            host: settings.host.clone(),
            port: settings.port,
            user: settings.user.clone(),
            password: settings.password.clone(),
            dbname: settings.name.clone(),
            tls: settings.ssl_enforced,
            slot,
            publication: settings.publication.clone(),
            temporary_slot: false,
        })
    }

    fn spawn_consumer(
        &self,
        tenant: &Tenant,
        cursor: Arc<super::feed::FeedCursor>,
        events: tokio::sync::mpsc::Receiver<super::replication::StreamEvent>,
        pool: TenantPool,
        opened: tokio::sync::watch::Receiver<bool>,
    ) {
        let consumer = super::consumer::Consumer::new(
            tenant.external_id.clone(),
            self.shared.clone(),
            cursor,
            events,
            pool,
            max_record_bytes(tenant),
        );
        self.shared
            .owner
            .spawn("postgres changes consumer", consumer.run(opened));
    }

    /// Gives the feeds the bus (a cluster).
    pub(crate) fn set_peers(&self, peers: Arc<dyn super::feed::ChangePeers>) {
        self.shared.streams.feeds.set_peers(peers);
    }

    /// Re-reads the ring for every feed (the live members changed).
    pub(crate) fn reassign(&self) {
        self.shared.streams.feeds.reassign();
    }

    /// A peer wants (or no longer wants) `tenant`'s changes from this node.
    pub(crate) async fn peer_wants(&self, peer: &str, tenant: &TenantId, wanted: bool, since: u64) {
        let feeds = &self.shared.streams.feeds;
        if !wanted {
            feeds.peer_gone(peer, Some(tenant));
            return;
        }
        let prepared = async {
            let record = self
                .shared
                .tenants
                .get(tenant)
                .await
                .map_err(SubscribeError::Settings)?
                .ok_or(SubscribeError::NotEnabled)?;
            let extension = record
                .extensions
                .iter()
                .find(|e| e.kind == POSTGRES_CDC_RLS)
                .ok_or(SubscribeError::NotEnabled)?;
            let settings = self
                .shared
                .tenants
                .db_settings(&record, extension)
                .map_err(SubscribeError::Settings)?;
            let target = self.target(&settings)?;
            let pool: TenantPool = self.shared.dbs.get(&record).await?;
            Ok::<_, SubscribeError>((record, target, pool))
        }
        .await;
        match prepared {
            Ok((record, target, pool)) => {
                if let Some((events, cursor)) = feeds.peer_wants(peer, tenant, target, since) {
                    let (gate, opened) = StartGate::new();
                    gate.open();
                    self.spawn_consumer(&record, cursor, events, pool, opened);
                }
            }
            Err(error) => {
                tracing::warn!(%tenant, %peer, error_code = %error.code(), %error, "cannot serve a peer's want of a tenant's changes");
            }
        }
    }

    /// A peer's link ended: it wants nothing from this node any more.
    pub(crate) fn peer_down(&self, peer: &str) {
        self.shared.streams.feeds.peer_gone(peer, None);
    }

    /// A peer acknowledged `tenant`'s changes up to `end_lsn`.
    pub(crate) fn peer_ack(&self, peer: &str, tenant: &TenantId, end_lsn: u64) {
        self.shared.streams.feeds.peer_ack(peer, tenant, end_lsn);
    }

    /// Stream events from the owner of `tenant`.
    pub(crate) fn owner_events(
        &self,
        peer: &str,
        tenant: &TenantId,
        events: Vec<realtime_proto::bus::StreamEvent>,
    ) {
        let events: Vec<_> = events
            .into_iter()
            .filter_map(super::feed::event_from_wire)
            .collect();
        self.shared.streams.feeds.owner_events(peer, tenant, events);
    }
}

/// The tenant's `poll_max_record_bytes` (default 1 MiB).
fn max_record_bytes(tenant: &Tenant) -> usize {
    tenant
        .extensions
        .iter()
        .find(|e| e.kind == POSTGRES_CDC_RLS)
        .and_then(|e| e.settings.get("poll_max_record_bytes"))
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(1 << 20)
}

/// The original's description of a binding in the "Unable to subscribe" error.
fn describe(spec: &BindingSpec) -> String {
    let filters = spec
        .filter
        .as_ref()
        .map(|f| f.to_string())
        .unwrap_or_default();
    let select = spec
        .select
        .as_ref()
        .map_or_else(|| "nil".to_string(), |s| format!("{s:?}"));
    format!(
        "event: {}, schema: {}, table: {}, filters: [{}], select: {}",
        spec.event.as_str(),
        spec.schema.as_str(),
        spec.table.as_str(),
        filters,
        select
    )
}

/// Marks every not-yet-notified subscription of `tenant` as notified and queues its
/// `Subscribed to PostgreSQL` (the stream connected).
pub(crate) fn notify_subscribed(registry: &Registry, tenant: &TenantId) {
    for sub in registry.channels(tenant) {
        if !sub.notified.swap(true, Ordering::AcqRel) {
            let frame = notice_frame(
                sub.vsn,
                sub.join_ref.as_deref(),
                &sub.topic,
                true,
                SUBSCRIBED,
            );
            sub.outbox.push(Outbound::Fanout {
                slot: sub.channel.slot,
                kind: crate::hub::FanoutKind::PostgresChanges,
                frame,
            });
        }
    }
}
