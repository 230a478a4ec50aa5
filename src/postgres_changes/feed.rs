//! Where a tenant's changes come from on this node: a *feed* per tenant with subscribers here
//! (or peers that want the tenant from this node).
//!
//! A feed has one consumer for its whole life and one source at a time:
//!
//! * **Local** (this node owns the tenant): the tenant's replication stream, pumped into the
//!   feed's channel by a pump task that also forwards every event to the peers that want the
//!   tenant from this node (the *sinks*). A commit is confirmed to Postgres once the local
//!   consumer dispatched it and every sink acknowledged it, and never during the first
//!   [`TAKEOVER_HOLD`] of a stream, so that peers switching to this node after an ownership
//!   move catch up from events this node still holds (replayed to a sink that joins with a
//!   position, from a buffer kept during the hold).
//! * **Remote** (another node owns it): events arrive over the bus from the owner; the consumer
//!   acknowledges each dispatched commit to the owner. Until the owner answers, the want is
//!   repeated every [`WANT_RETRY`] (the owner may not know yet that it owns the tenant).
//!
//! When the ring moves a tenant, [`Feeds::reassign`] switches each feed's source in place; the
//! consumer skips commits at or below the position it already dispatched, so a switch may
//! repeat changes but does not lose committed ones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use realtime_proto::bus as wire;
use tokio::sync::mpsc;

use super::replication::{
    Ensured, LossReason, Lsn, ReplicationError, ReplicationTarget, StreamEvent, StreamHandle,
    StreamManager, StreamOwnership,
};
use crate::tasks::Owner;
use crate::types::{NodeId, TenantId};

/// How long a new stream holds back confirmations (and keeps a replay buffer).
pub(crate) const TAKEOVER_HOLD: Duration = Duration::from_secs(3);
/// How often an unanswered want is repeated.
pub(crate) const WANT_RETRY: Duration = Duration::from_secs(1);
/// Events kept for replay during the hold; beyond it the buffer is dropped (and a later sink
/// with a position gets a restarted stream instead).
const REPLAY_BUFFER_EVENTS: usize = 200_000;

/// The bus, as the feeds use it (implemented by the cluster's peers).
pub(crate) trait ChangePeers: Send + Sync + 'static {
    /// Asks `owner` for (or releases) `tenant`'s changes; `since` is the last commit end this
    /// node dispatched (0 for a new feed).
    fn want(&self, owner: &NodeId, tenant: &TenantId, wanted: bool, since: u64);
    /// Tells `owner` that this node dispatched `tenant`'s changes up to `end_lsn`.
    fn ack(&self, owner: &NodeId, tenant: &TenantId, end_lsn: u64);
    /// Sends stream events of `tenant` (owned here) to one peer.
    fn forward(&self, peer: &str, tenant: &TenantId, events: Vec<wire::StreamEvent>);
}

/// No peers: every feed is local.
#[derive(Debug, Default)]
pub(crate) struct NoChangePeers;

impl ChangePeers for NoChangePeers {
    fn want(&self, _owner: &NodeId, _tenant: &TenantId, _wanted: bool, _since: u64) {}
    fn ack(&self, _owner: &NodeId, _tenant: &TenantId, _end_lsn: u64) {}
    fn forward(&self, _peer: &str, _tenant: &TenantId, _events: Vec<wire::StreamEvent>) {}
}

/// Converts a stream event to its wire form.
pub(crate) fn event_to_wire(event: &StreamEvent) -> Option<wire::StreamEvent> {
    Some(match event {
        StreamEvent::Connected { .. } => wire::StreamEvent::Connected,
        StreamEvent::Begin {
            final_lsn,
            xid,
            commit_ts,
        } => wire::StreamEvent::Begin {
            final_lsn: final_lsn.0,
            commit_micros: commit_ts.timestamp_micros(),
            xid: *xid,
        },
        StreamEvent::Data { lsn, bytes } => wire::StreamEvent::Data {
            lsn: lsn.0,
            bytes: bytes.to_vec(),
        },
        StreamEvent::Commit { lsn, end_lsn, .. } => wire::StreamEvent::Commit {
            lsn: lsn.0,
            end_lsn: end_lsn.0,
        },
        StreamEvent::Lost { reason } => wire::StreamEvent::Lost(reason.to_string()),
        StreamEvent::Disconnected { error } => wire::StreamEvent::Disconnected(error.to_string()),
        StreamEvent::Message { .. } => return None,
    })
}

/// Converts a peer's stream event (bytes are checked by the pgoutput decoder later).
pub(crate) fn event_from_wire(event: wire::StreamEvent) -> Option<StreamEvent> {
    Some(match event {
        wire::StreamEvent::Connected => StreamEvent::Connected { start_lsn: Lsn(0) },
        wire::StreamEvent::Begin {
            final_lsn,
            commit_micros,
            xid,
        } => StreamEvent::Begin {
            final_lsn: Lsn(final_lsn),
            xid,
            commit_ts: chrono::DateTime::from_timestamp_micros(commit_micros)?,
        },
        wire::StreamEvent::Data { lsn, bytes } => StreamEvent::Data {
            lsn: Lsn(lsn),
            bytes: Bytes::from(bytes),
        },
        wire::StreamEvent::Commit { lsn, end_lsn } => StreamEvent::Commit {
            lsn: Lsn(lsn),
            end_lsn: Lsn(end_lsn),
            commit_ts: chrono::DateTime::UNIX_EPOCH,
        },
        wire::StreamEvent::Lost(reason) => StreamEvent::Lost {
            reason: LossReason::AtOwner(reason),
        },
        wire::StreamEvent::Disconnected(message) => StreamEvent::Disconnected {
            error: ReplicationError::Stream { message },
        },
    })
}

/// The owner side of a local feed: its stream and the peers it forwards to.
struct Tee {
    handle: StreamHandle,
    started: Instant,
    /// Peers that want the tenant from this node → the commit end each acknowledged.
    sinks: HashMap<Arc<str>, u64>,
    /// Raw Relation messages of the current stream session, by relation id, for sinks that
    /// join mid-session.
    relations: HashMap<u32, Bytes>,
    /// Whether the stream is connected now.
    connected: bool,
    /// Events since the stream started, kept during the hold for sinks that switch over.
    replay: Option<Vec<wire::StreamEvent>>,
    /// The highest commit end pumped to the consumer and the sinks.
    pumped: u64,
}

/// The consumer's view of its position, whatever the source.
#[derive(Debug)]
pub(crate) struct FeedCursor {
    done: AtomicU64,
    feeds: std::sync::Weak<FeedsInner>,
    tenant: TenantId,
}

impl FeedCursor {
    /// The highest commit end this node's consumer dispatched.
    pub(crate) fn confirmed(&self) -> Lsn {
        Lsn(self.done.load(Ordering::Acquire))
    }

    /// The consumer dispatched everything up to `lsn`.
    pub(crate) fn confirm(&self, lsn: Lsn) {
        self.done.fetch_max(lsn.0, Ordering::AcqRel);
        if let Some(feeds) = self.feeds.upgrade() {
            feeds.dispatched(&self.tenant, lsn.0);
        }
    }
}

enum Source {
    Local {
        tee: Arc<Mutex<Tee>>,
        /// The pump task.
        pump: Owner,
    },
    Remote {
        owner: NodeId,
        /// A frame of the owner arrived since the last want.
        answered: Arc<AtomicBool>,
    },
}

struct Feed {
    /// Local subscriptions holding the feed.
    subscribers: usize,
    /// Raised by every acquire and release, so that an idle countdown knows it is stale.
    generation: u64,
    /// Into the consumer.
    tx: mpsc::Sender<StreamEvent>,
    cursor: Arc<FeedCursor>,
    target: ReplicationTarget,
    source: Source,
}

/// What a feed lease is released into.
pub(crate) struct FeedsInner {
    manager: StreamManager,
    ownership: Arc<dyn StreamOwnership>,
    peers: std::sync::OnceLock<Arc<dyn ChangePeers>>,
    owner: Owner,
    capacity: usize,
    /// A feed without subscribers ends this long after the last one left.
    idle: Duration,
    feeds: Mutex<HashMap<TenantId, Feed>>,
}

impl std::fmt::Debug for FeedsInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeds").finish_non_exhaustive()
    }
}

/// Every feed of this node. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Feeds {
    inner: Arc<FeedsInner>,
}

/// What [`Feeds::acquire`] found.
pub(crate) enum Acquired {
    /// A new feed: spawn its consumer over these.
    New {
        /// The consumer's events.
        events: mpsc::Receiver<StreamEvent>,
        /// The consumer's position.
        cursor: Arc<FeedCursor>,
    },
    /// The tenant's feed exists; its consumer runs.
    Existing,
}

impl FeedsInner {
    fn lock(&self) -> MutexGuard<'_, HashMap<TenantId, Feed>> {
        self.feeds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn peers(&self) -> Arc<dyn ChangePeers> {
        self.peers
            .get()
            .cloned()
            .unwrap_or_else(|| Arc::new(NoChangePeers))
    }

    /// The consumer of `tenant` dispatched up to `lsn`.
    fn dispatched(&self, tenant: &TenantId, lsn: u64) {
        let feeds = self.lock();
        let Some(feed) = feeds.get(tenant) else {
            return;
        };
        match &feed.source {
            Source::Local { tee, .. } => confirm_local(&tee_lock(tee), lsn),
            Source::Remote { owner, .. } => self.peers().ack(owner, tenant, lsn),
        }
    }
}

fn tee_lock(tee: &Mutex<Tee>) -> MutexGuard<'_, Tee> {
    tee.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Confirms to Postgres what the local consumer (`local`) and every sink dispatched, unless the
/// stream is still in its hold.
fn confirm_local(tee: &Tee, local: u64) {
    if tee.started.elapsed() < TAKEOVER_HOLD {
        return;
    }
    let lowest = tee.sinks.values().copied().fold(local, u64::min);
    if lowest > 0 {
        tee.handle.confirm(Lsn(lowest));
    }
}

impl Feeds {
    /// Feeds over this node's stream manager; pumps run under `owner`.
    pub(crate) fn new(
        manager: StreamManager,
        ownership: Arc<dyn StreamOwnership>,
        capacity: usize,
        idle: Duration,
        owner: &Owner,
    ) -> Feeds {
        Feeds {
            inner: Arc::new(FeedsInner {
                manager,
                ownership,
                peers: std::sync::OnceLock::new(),
                owner: owner.child(),
                capacity,
                idle,
                feeds: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Gives the feeds the bus (a cluster); until then every feed is local.
    pub(crate) fn set_peers(&self, peers: Arc<dyn ChangePeers>) {
        let _ = self.inner.peers.set(peers);
    }

    /// One more local subscriber of `tenant`.
    ///
    /// # Errors
    /// The stream manager's, when this node owns the tenant and cannot start its stream.
    pub(crate) fn acquire(
        &self,
        tenant: &TenantId,
        target: ReplicationTarget,
    ) -> Result<Acquired, ReplicationError> {
        let mut feeds = self.inner.lock();
        if let Some(feed) = feeds.get_mut(tenant) {
            feed.subscribers += 1;
            feed.generation += 1;
            return Ok(Acquired::Existing);
        }
        let (feed, events, cursor) = self.open(tenant, target, 1)?;
        feeds.insert(tenant.clone(), feed);
        Ok(Acquired::New { events, cursor })
    }

    fn open(
        &self,
        tenant: &TenantId,
        target: ReplicationTarget,
        subscribers: usize,
    ) -> Result<(Feed, mpsc::Receiver<StreamEvent>, Arc<FeedCursor>), ReplicationError> {
        let (tx, rx) = mpsc::channel(self.inner.capacity);
        let cursor = Arc::new(FeedCursor {
            done: AtomicU64::new(0),
            feeds: Arc::downgrade(&self.inner),
            tenant: tenant.clone(),
        });
        let source = self.source_for(tenant, &target, &tx, 0)?;
        Ok((
            Feed {
                subscribers,
                generation: 0,
                tx,
                cursor: cursor.clone(),
                target,
                source,
            },
            rx,
            cursor,
        ))
    }

    /// The source the ring names for `tenant` now: the local stream, or the owner.
    fn source_for(
        &self,
        tenant: &TenantId,
        target: &ReplicationTarget,
        tx: &mpsc::Sender<StreamEvent>,
        since: u64,
    ) -> Result<Source, ReplicationError> {
        match self.owner_of(tenant) {
            None => self.local_source(tenant, target, tx),
            Some(owner) => {
                self.inner.peers().want(&owner, tenant, true, since);
                Ok(Source::Remote {
                    owner,
                    answered: Arc::new(AtomicBool::new(false)),
                })
            }
        }
    }

    /// `None` when this node owns `tenant`, else its owner.
    fn owner_of(&self, tenant: &TenantId) -> Option<NodeId> {
        if self.inner.ownership.owns(tenant) {
            None
        } else {
            self.inner.ownership.owner(tenant)
        }
    }

    fn local_source(
        &self,
        tenant: &TenantId,
        target: &ReplicationTarget,
        tx: &mpsc::Sender<StreamEvent>,
    ) -> Result<Source, ReplicationError> {
        let (handle, events) = match self.inner.manager.ensure_started(tenant, target.clone())? {
            Ensured::Started { handle, events } => (handle, events),
            Ensured::Running { handle } => {
                // The stream of a feed that just ended, still stopping: its events went with
                // that feed's pump. Try again once it has stopped.
                self.inner.manager.release(tenant);
                return Err(ReplicationError::SlotBeingUsed {
                    slot: handle.slot().to_string(),
                    pid: None,
                });
            }
        };
        let tee = Arc::new(Mutex::new(Tee {
            handle,
            started: Instant::now(),
            sinks: HashMap::new(),
            relations: HashMap::new(),
            connected: false,
            replay: Some(Vec::new()),
            pumped: 0,
        }));
        let pump = self.inner.owner.child();
        pump.spawn(
            "postgres changes pump",
            run_pump(
                tenant.clone(),
                events,
                tx.clone(),
                tee.clone(),
                self.inner.peers(),
            ),
        );
        Ok(Source::Local { tee, pump })
    }

    /// One local subscriber of `tenant` less; the last one ends the feed.
    pub(crate) fn release(&self, tenant: &TenantId) {
        let mut feeds = self.inner.lock();
        let Some(feed) = feeds.get_mut(tenant) else {
            return;
        };
        feed.subscribers = feed.subscribers.saturating_sub(1);
        let sinks = match &feed.source {
            Source::Local { tee, .. } => tee_lock(tee).sinks.len(),
            Source::Remote { .. } => 0,
        };
        feed.generation += 1;
        if feed.subscribers > 0 || sinks > 0 {
            return;
        }
        let (me, tenant, expected) = (self.clone(), tenant.clone(), feed.generation);
        self.inner
            .owner
            .spawn("postgres changes feed idle", async move {
                tokio::time::sleep(me.inner.idle).await;
                me.end_if_idle(&tenant, expected);
            });
    }

    fn end_if_idle(&self, tenant: &TenantId, expected: u64) {
        let mut feeds = self.inner.lock();
        let Some(feed) = feeds.get(tenant) else {
            return;
        };
        let sinks = match &feed.source {
            Source::Local { tee, .. } => tee_lock(tee).sinks.len(),
            Source::Remote { .. } => 0,
        };
        if feed.generation != expected || feed.subscribers > 0 || sinks > 0 {
            return;
        }
        if let Some(feed) = feeds.remove(tenant) {
            drop(feeds);
            self.close_source(tenant, feed.source);
        }
    }

    fn close_source(&self, tenant: &TenantId, source: Source) {
        match source {
            Source::Local { pump, .. } => {
                let inner = self.inner.clone();
                let tenant = tenant.clone();
                self.inner
                    .owner
                    .spawn("postgres changes feed end", async move {
                        pump.shutdown(Duration::from_secs(1)).await;
                        inner.manager.retire(&tenant);
                    });
            }
            Source::Remote { owner, .. } => self.inner.peers().want(&owner, tenant, false, 0),
        }
    }

    /// A peer wants `tenant` from this node (`since`: the last commit end it dispatched, 0 for
    /// a new feed). Ignored unless this node owns the tenant; the peer repeats its want.
    /// `target` is the tenant's stream target, read by the caller.
    pub(crate) fn peer_wants(
        &self,
        peer: &str,
        tenant: &TenantId,
        target: ReplicationTarget,
        since: u64,
    ) -> Option<(mpsc::Receiver<StreamEvent>, Arc<FeedCursor>)> {
        if self.owner_of(tenant).is_some() {
            return None;
        }
        let mut feeds = self.inner.lock();
        let mut new_consumer = None;
        if !feeds.contains_key(tenant) {
            match self.open(tenant, target, 0) {
                Ok((feed, events, cursor)) => {
                    feeds.insert(tenant.clone(), feed);
                    new_consumer = Some((events, cursor));
                }
                Err(error) => {
                    tracing::warn!(%tenant, %peer, error_code = %crate::error::OperationalError::code(&error), %error, "cannot start a stream a peer wants");
                    return None;
                }
            }
        }
        let feed = feeds.get_mut(tenant)?;
        let Source::Local { tee, .. } = &feed.source else {
            return new_consumer;
        };
        let mut tee = tee_lock(tee);
        let peer: Arc<str> = peer.into();
        tee.sinks.insert(peer.clone(), since);
        // What the new sink needs before live events: the session's relations, and when it
        // comes from another owner, what this stream pumped since it started.
        let mut first: Vec<wire::StreamEvent> = Vec::new();
        if since > 0
            && let Some(replay) = &tee.replay
        {
            first.extend(replay.iter().cloned());
        } else if tee.connected {
            first.push(wire::StreamEvent::Connected);
            first.extend(tee.relations.values().map(|bytes| wire::StreamEvent::Data {
                lsn: 0,
                bytes: bytes.to_vec(),
            }));
        }
        if since > 0 && tee.replay.is_none() && tee.pumped > since {
            tracing::warn!(%tenant, %peer, since, pumped = tee.pumped,
                "a peer switched to this node after its replay window; changes in between may be missing there");
        }
        if !first.is_empty() {
            self.inner.peers().forward(&peer, tenant, first);
        }
        new_consumer
    }

    /// A peer no longer wants `tenant` (or its link ended: `tenant` None = every tenant).
    pub(crate) fn peer_gone(&self, peer: &str, tenant: Option<&TenantId>) {
        let mut ended = Vec::new();
        {
            let mut feeds = self.inner.lock();
            for (t, feed) in feeds.iter_mut() {
                if tenant.is_some_and(|only| only != t) {
                    continue;
                }
                if let Source::Remote { owner, answered } = &feed.source
                    && tenant.is_none()
                    && owner.as_str() == peer
                {
                    // The owner's link ended (a restart forgets its sinks): want again.
                    answered.store(false, Ordering::Release);
                }
                if let Source::Local { tee, .. } = &feed.source {
                    let mut tee = tee_lock(tee);
                    tee.sinks.remove(peer);
                    if tee.sinks.is_empty() && feed.subscribers == 0 {
                        ended.push(t.clone());
                    }
                }
            }
            for t in &ended {
                if let Some(feed) = feeds.remove(t) {
                    self.close_source(t, feed.source);
                }
            }
        }
    }

    /// A peer acknowledged `tenant`'s changes up to `end_lsn`.
    pub(crate) fn peer_ack(&self, peer: &str, tenant: &TenantId, end_lsn: u64) {
        let feeds = self.inner.lock();
        let Some(feed) = feeds.get(tenant) else {
            return;
        };
        if let Source::Local { tee, .. } = &feed.source {
            let mut tee = tee_lock(tee);
            if let Some(acked) = tee.sinks.get_mut(peer) {
                *acked = (*acked).max(end_lsn);
                let local = feed.cursor.done.load(Ordering::Acquire);
                confirm_local(&tee, local);
            }
        }
    }

    /// Events from `peer` for `tenant`: handed to the consumer when `peer` is its owner.
    pub(crate) fn owner_events(&self, peer: &str, tenant: &TenantId, events: Vec<StreamEvent>) {
        let feeds = self.inner.lock();
        let Some(feed) = feeds.get(tenant) else {
            return;
        };
        let Source::Remote { owner, answered } = &feed.source else {
            return;
        };
        if owner.as_str() != peer {
            return;
        }
        answered.store(true, Ordering::Release);
        for event in events {
            if feed.tx.try_send(event).is_err() {
                tracing::error!(%tenant, %peer, error_code = "ReplicationSlotLagExceeded",
                    "the consumer fell behind the owner's changes; some are dropped here");
                break;
            }
        }
    }

    /// The ring changed: switch every feed whose source is no longer the one the ring names.
    pub(crate) fn reassign(&self) {
        let mut feeds = self.inner.lock();
        let tenants: Vec<TenantId> = feeds.keys().cloned().collect();
        for tenant in tenants {
            let wanted_owner = self.owner_of(&tenant);
            let Some(feed) = feeds.get_mut(&tenant) else {
                continue;
            };
            let current = match &feed.source {
                Source::Local { .. } => None,
                Source::Remote { owner, .. } => Some(owner.clone()),
            };
            if current == wanted_owner {
                continue;
            }
            if feed.subscribers == 0 {
                // Only peers held it here; they follow the ring themselves.
                if let Some(feed) = feeds.remove(&tenant) {
                    self.close_source(&tenant, feed.source);
                }
                continue;
            }
            let since = feed.cursor.done.load(Ordering::Acquire);
            tracing::info!(%tenant, from = ?current.as_ref().map(NodeId::as_str), to = ?wanted_owner.as_ref().map(NodeId::as_str),
                "the ring moved a tenant's change stream; switching its feed");
            let new_source = match self.source_for(&tenant, &feed.target, &feed.tx, since) {
                Ok(source) => source,
                Err(error) => {
                    // The old owner still holds the slot: wait for the next reassign tick.
                    tracing::debug!(%tenant, %error, "cannot switch a feed yet");
                    continue;
                }
            };
            crate::metrics::ownership_moved(match (&current, &wanted_owner) {
                (None, _) => crate::metrics::OwnershipMove::Released,
                (Some(_), None) => crate::metrics::OwnershipMove::Acquired,
                (Some(_), Some(_)) => crate::metrics::OwnershipMove::Followed,
            });
            let old = std::mem::replace(&mut feed.source, new_source);
            match old {
                Source::Local { pump, .. } => {
                    let inner = self.inner.clone();
                    let tenant = tenant.clone();
                    self.inner
                        .owner
                        .spawn("postgres changes relinquish", async move {
                            pump.shutdown(Duration::from_secs(1)).await;
                            inner.manager.relinquish(&tenant).await;
                        });
                }
                Source::Remote { owner, .. } => self.inner.peers().want(&owner, &tenant, false, 0),
            }
        }
    }

    /// Repeats the wants no owner answered yet, and retries switches that failed.
    pub(crate) fn keep(&self) {
        self.reassign();
        let feeds = self.inner.lock();
        for (tenant, feed) in feeds.iter() {
            if let Source::Remote { owner, answered } = &feed.source
                && !answered.load(Ordering::Acquire)
            {
                let since = feed.cursor.done.load(Ordering::Acquire);
                self.inner.peers().want(owner, tenant, true, since);
            }
        }
    }

    /// Tenants whose feed streams locally (this node owns them).
    pub(crate) fn local_tenants(&self) -> Vec<String> {
        let mut tenants: Vec<String> = self
            .inner
            .lock()
            .iter()
            .filter(|(_, f)| matches!(f.source, Source::Local { .. }))
            .map(|(t, _)| t.as_str().to_string())
            .collect();
        tenants.sort();
        tenants
    }
}

/// Moves a local stream's events into the feed's consumer and to the sinks, in order.
async fn run_pump(
    tenant: TenantId,
    mut events: mpsc::Receiver<StreamEvent>,
    tx: mpsc::Sender<StreamEvent>,
    tee: Arc<Mutex<Tee>>,
    peers: Arc<dyn ChangePeers>,
) {
    while let Some(event) = events.recv().await {
        let mut batch = vec![event];
        while batch.len() < 512 {
            match events.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        let wire_batch: Vec<wire::StreamEvent> = batch.iter().filter_map(event_to_wire).collect();
        let sinks: Vec<Arc<str>> = {
            let mut tee = tee_lock(&tee);
            for event in &batch {
                match event {
                    StreamEvent::Connected { .. } => {
                        tee.connected = true;
                        tee.relations.clear();
                    }
                    StreamEvent::Disconnected { .. } => tee.connected = false,
                    StreamEvent::Data { bytes, .. } if bytes.first() == Some(&b'R') => {
                        if let Some(id) = bytes.get(1..5) {
                            let id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
                            tee.relations.insert(id, bytes.clone());
                        }
                    }
                    StreamEvent::Commit { end_lsn, .. } => tee.pumped = tee.pumped.max(end_lsn.0),
                    _ => {}
                }
            }
            if tee.started.elapsed() >= TAKEOVER_HOLD {
                tee.replay = None;
            } else if let Some(replay) = &mut tee.replay {
                if replay.len() + wire_batch.len() > REPLAY_BUFFER_EVENTS {
                    tee.replay = None;
                } else {
                    replay.extend(wire_batch.iter().cloned());
                }
            }
            tee.sinks.keys().cloned().collect()
        };
        if !wire_batch.is_empty() {
            for sink in &sinks {
                peers.forward(sink, &tenant, wire_batch.clone());
            }
        }
        for event in batch {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_events_survive_the_wire() {
        let at = chrono::DateTime::from_timestamp_micros(1_733_000_000_123_456).unwrap();
        let events = [
            StreamEvent::Connected { start_lsn: Lsn(7) },
            StreamEvent::Begin {
                final_lsn: Lsn(100),
                xid: 42,
                commit_ts: at,
            },
            StreamEvent::Data {
                lsn: Lsn(90),
                bytes: Bytes::from_static(b"I\x00\x00\x40\x00N"),
            },
            StreamEvent::Commit {
                lsn: Lsn(100),
                end_lsn: Lsn(108),
                commit_ts: at,
            },
            StreamEvent::Lost {
                reason: LossReason::SlotDropped,
            },
        ];
        let back: Vec<StreamEvent> = events
            .iter()
            .map(|e| event_from_wire(event_to_wire(e).unwrap()).unwrap())
            .collect();
        // Positions, transaction ids, commit times and bytes cross; a resumed position and the
        // commit's own time are the owner's business (the consumer reads neither).
        assert_eq!(back[0], StreamEvent::Connected { start_lsn: Lsn(0) });
        assert_eq!(back[1], events[1]);
        assert_eq!(back[2], events[2]);
        assert!(matches!(
            back[3],
            StreamEvent::Commit {
                lsn: Lsn(100),
                end_lsn: Lsn(108),
                ..
            }
        ));
        assert_eq!(
            back[4],
            StreamEvent::Lost {
                reason: LossReason::AtOwner(LossReason::SlotDropped.to_string())
            }
        );
        let message = StreamEvent::Message {
            transactional: false,
            lsn: Lsn(1),
            prefix: "p".into(),
            content: Bytes::new(),
        };
        assert!(
            event_to_wire(&message).is_none(),
            "messages stay on the owner"
        );
        let bad_time = wire::StreamEvent::Begin {
            final_lsn: 1,
            commit_micros: i64::MAX,
            xid: 1,
        };
        assert!(event_from_wire(bad_time).is_none());
    }
}
