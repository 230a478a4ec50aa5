//! The consumer of one tenant's change stream: reads the stream's events in WAL order, keeps the
//! relations the stream described, collects committed transactions into batches, dispatches each
//! batch (`dispatch`, with one RLS statement per table per batch) and confirms the batch's last
//! commit once every delivery is queued.
//!
//! Batches grow by themselves under load: everything the stream has already handed over is taken
//! before a batch is dispatched (up to [`MAX_BATCH_CHANGES`]), so the RLS cost per change falls as
//! the rate rises. Replays after a reconnect (commits at or below the confirmed position) are
//! skipped; an unfinished transaction is dropped at `Disconnected` and comes again whole.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::dispatch::{self, PendingChange};
use super::feed::FeedCursor;
use super::pgoutput::{self, Message, Relation, RelationCache};
use super::replication::{Lsn, StreamEvent};
use super::rls::{self, Visibility};
use super::service::{Shared, notice_frame, notify_subscribed};
use crate::db::{TenantDbError, TenantPool};
use crate::error::OperationalError;
use crate::hub::{FanoutKind, Outbound};
use crate::types::TenantId;

/// Most changes dispatched in one batch.
pub(crate) const MAX_BATCH_CHANGES: usize = 4096;
/// How long a new stream's consumer waits after the subscription that started it registered,
/// for the other subscribers of a restart to register too.
pub(crate) const RESUME_GRACE: Duration = Duration::from_millis(500);
/// Longest wait for that registration.
const GATE_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts of a batch's RLS checks before its checked deliveries become error payloads.
const RLS_ATTEMPTS: u32 = 3;

/// Counters of every consumer of this node (exported by the metrics step).
#[derive(Debug, Default)]
pub(crate) struct ConsumerStats {
    /// Row changes read from streams.
    pub changes: AtomicU64,
    /// Frames queued to channels.
    pub delivered: AtomicU64,
    /// Frames refused by full or closed connection queues (those connections are closed).
    pub refused: AtomicU64,
    /// RLS statements run.
    pub rls_queries: AtomicU64,
    /// Batches dispatched.
    pub batches: AtomicU64,
    /// Loss notices sent (a slot was recreated).
    pub losses: AtomicU64,
}

/// Checks `checks` on one connection with its cached prepared statements.
async fn check_on(
    client: &crate::db::TenantClient,
    probe_sql: &str,
    checks: &[rls::RlsCheck<'_>],
) -> Result<Vec<Visibility>, rls::RlsError> {
    let statements = rls::Statements {
        set_claims: client.prepare_cached(rls::SET_CLAIMS).await?,
        probe: client.prepare_cached(probe_sql).await?,
    };
    rls::visible_rows(client, &statements, checks).await
}

/// One tenant's consumer task.
pub(crate) struct Consumer {
    tenant: TenantId,
    shared: Arc<Shared>,
    cursor: Arc<FeedCursor>,
    events: mpsc::Receiver<StreamEvent>,
    pool: TenantPool,
    max_record_bytes: usize,
    relations: RelationCache,
    described: HashMap<u32, Arc<Relation>>,
    /// Changes of committed transactions, then those of the open one (from `open_from`).
    batch: Vec<PendingChange>,
    open_from: usize,
    in_transaction: bool,
    commit_timestamp: Arc<str>,
    /// The last commit in `batch[..open_from]`: what to confirm after dispatching it.
    last_commit: Option<Lsn>,
    /// The RLS probe text of each table checked so far (prepared per connection).
    probes: HashMap<u32, String>,
}

impl Consumer {
    pub(crate) fn new(
        tenant: TenantId,
        shared: Arc<Shared>,
        cursor: Arc<FeedCursor>,
        events: mpsc::Receiver<StreamEvent>,
        pool: TenantPool,
        max_record_bytes: usize,
    ) -> Consumer {
        Consumer {
            tenant,
            shared,
            cursor,
            events,
            pool,
            max_record_bytes,
            relations: RelationCache::new(),
            described: HashMap::new(),
            batch: Vec::new(),
            open_from: 0,
            in_transaction: false,
            commit_timestamp: "".into(),
            last_commit: None,
            probes: HashMap::new(),
        }
    }

    /// Runs until the stream ends (stopped, or this node shuts down). Starts dispatching once
    /// `opened` says the subscription that started the stream is registered, and
    /// [`RESUME_GRACE`] later, so the subscribers of a restarted node that rejoin together all
    /// get the changes the slot kept meanwhile.
    pub(crate) async fn run(mut self, mut opened: tokio::sync::watch::Receiver<bool>) {
        let _ = tokio::time::timeout(GATE_TIMEOUT, opened.wait_for(|open| *open)).await;
        tokio::time::sleep(RESUME_GRACE).await;
        while let Some(event) = self.events.recv().await {
            self.apply(event);
            while self.open_from < MAX_BATCH_CHANGES {
                match self.events.try_recv() {
                    Ok(event) => self.apply(event),
                    Err(_) => break,
                }
            }
            if self.last_commit.is_some() {
                self.dispatch().await;
            }
        }
        self.shared.streams.set_streaming(&self.tenant, false);
    }

    fn apply(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Connected { .. } => {
                // A new session describes every relation again.
                self.relations = RelationCache::new();
                self.described.clear();
                self.drop_open_transaction();
                self.shared.streams.set_streaming(&self.tenant, true);
                notify_subscribed(&self.shared.registry, &self.tenant);
            }
            StreamEvent::Begin { commit_ts, .. } => {
                self.drop_open_transaction();
                self.in_transaction = true;
                self.commit_timestamp = commit_ts
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string()
                    .into();
            }
            StreamEvent::Data { bytes, .. } => self.data(bytes),
            StreamEvent::Commit { end_lsn, .. } => {
                self.in_transaction = false;
                if end_lsn <= self.cursor.confirmed() {
                    // Already delivered before a reconnect.
                    self.batch.truncate(self.open_from);
                } else {
                    self.open_from = self.batch.len();
                    self.last_commit = Some(end_lsn);
                }
            }
            StreamEvent::Lost { reason } => {
                self.shared.stats.losses.fetch_add(1, Ordering::Relaxed);
                tracing::error!(tenant = %self.tenant, %reason, error_code = "ReplicationSlotLagExceeded",
                    "changes were lost; subscribers are told");
                let message = format!("Changes were lost: {reason}");
                for sub in self.shared.registry.channels(&self.tenant) {
                    sub.outbox.push(Outbound::Fanout {
                        slot: sub.channel.slot,
                        kind: FanoutKind::PostgresChanges,
                        frame: notice_frame(
                            sub.vsn,
                            sub.join_ref.as_deref(),
                            &sub.topic,
                            false,
                            &message,
                        ),
                    });
                }
            }
            StreamEvent::Disconnected { error } => {
                tracing::warn!(tenant = %self.tenant, error_code = %error.code(), %error,
                    "change stream disconnected; it reconnects");
                self.drop_open_transaction();
                self.shared.streams.set_streaming(&self.tenant, false);
            }
            StreamEvent::Message { .. } => {}
        }
    }

    fn drop_open_transaction(&mut self) {
        self.batch.truncate(self.open_from);
        self.in_transaction = false;
    }

    fn data(&mut self, bytes: bytes::Bytes) {
        let relation = match pgoutput::decode(&bytes) {
            Ok(Message::Relation(message)) => {
                let relation = self.relations.insert_relation(&message).clone();
                self.described.insert(relation.oid, Arc::new(relation));
                return;
            }
            Ok(message @ Message::Type(_)) => {
                self.relations.apply(&message);
                return;
            }
            Ok(Message::Insert(m)) => m.relation,
            Ok(Message::Update(m)) => m.relation,
            Ok(Message::Delete(m)) => m.relation,
            Ok(_) => return,
            Err(err) => {
                tracing::error!(tenant = %self.tenant, error_code = %err.code(), error = %err,
                    "undecodable pgoutput message skipped");
                return;
            }
        };
        let Some(relation) = self.described.get(&relation) else {
            tracing::error!(tenant = %self.tenant, relation, "change of an undescribed relation skipped");
            return;
        };
        self.shared.stats.changes.fetch_add(1, Ordering::Relaxed);
        if !self.in_transaction {
            return;
        }
        self.batch.push(PendingChange {
            relation: relation.clone(),
            raw: bytes,
            commit_timestamp: self.commit_timestamp.clone(),
        });
    }

    async fn dispatch(&mut self) {
        let Some(commit) = self.last_commit.take() else {
            return;
        };
        let open: Vec<PendingChange> = self.batch.split_off(self.open_from);
        let committed = std::mem::replace(&mut self.batch, open);
        self.open_from = 0;
        if !committed.is_empty() {
            let plan = dispatch::plan(&self.tenant, &self.shared.registry, &committed);
            let answers = if plan.checks.is_empty() {
                Vec::new()
            } else {
                self.check(&plan.rls_requests()).await
            };
            let delivered = plan.deliver(&answers, self.max_record_bytes);
            let stats = &self.shared.stats;
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats
                .delivered
                .fetch_add(delivered.frames as u64, Ordering::Relaxed);
            stats
                .refused
                .fetch_add(delivered.refused as u64, Ordering::Relaxed);
        }
        self.cursor.confirm(commit);
    }

    /// Runs the batch's RLS checks, retrying a failed statement; a table whose check keeps
    /// failing gets `None` (its checked deliveries become error payloads).
    async fn check(&mut self, checks: &[dispatch::RlsRequest]) -> Vec<Option<Vec<Visibility>>> {
        let mut answers: Vec<Option<Vec<Visibility>>> = checks.iter().map(|_| None).collect();
        for attempt in 0..RLS_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << (2 * attempt))).await;
            }
            let client = match self.client().await {
                Ok(client) => client,
                Err(err) => {
                    tracing::warn!(tenant = %self.tenant, error_code = %err.code(), error = %err,
                        "no tenant connection for the RLS check");
                    continue;
                }
            };
            // A second connection when the pool has one free at once: the sets of a table are
            // split between them, so the database checks on two cores.
            let mut clients = vec![client];
            if let Ok(Ok(extra)) =
                tokio::time::timeout(Duration::from_millis(2), self.pool.get()).await
            {
                clients.push(extra);
            }
            let mut failed = false;
            for (i, table) in checks.iter().enumerate() {
                if answers[i].is_some() {
                    continue;
                }
                let sql = match self.probes.get(&table.oid) {
                    Some(sql) => Ok(sql.clone()),
                    None => rls::probe_sql(&clients[0], table.oid, &table.key_columns).await,
                };
                let all = table.as_checks();
                let per = all.len().div_ceil(clients.len()).max(1);
                let result = match sql {
                    Err(err) => Err(err),
                    Ok(sql) => {
                        self.probes.insert(table.oid, sql.clone());
                        let parts = all.chunks(per).zip(&clients).map(|(part, client)| {
                            self.shared
                                .stats
                                .rls_queries
                                .fetch_add(1, Ordering::Relaxed);
                            check_on(client, &sql, part)
                        });
                        futures::future::join_all(parts)
                            .await
                            .into_iter()
                            .collect::<Result<Vec<Vec<Visibility>>, _>>()
                            .map(|parts| parts.into_iter().flatten().collect())
                    }
                };
                match result {
                    Ok(visibility) => answers[i] = Some(visibility),
                    Err(err) => {
                        tracing::warn!(tenant = %self.tenant, error_code = %err.code(), error = %err,
                            "RLS check failed; retried");
                        // The table may have changed: write its probe again.
                        self.probes.remove(&table.oid);
                        for client in &clients {
                            client.statement_cache.clear();
                        }
                        failed = true;
                    }
                }
            }
            if !failed {
                break;
            }
        }
        answers
    }

    async fn client(&mut self) -> Result<crate::db::TenantClient, TenantDbError> {
        if self.pool.is_closed()
            && let Ok(Some(tenant)) = self.shared.tenants.get(&self.tenant).await
        {
            self.pool = self.shared.dbs.get(&tenant).await?;
        }
        self.pool.get().await
    }
}
