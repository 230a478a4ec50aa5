//! Postgres Changes across the cluster: the bus side of `postgres_changes::feed`.
//!
//! The ring ([`RingOwnership`], the stream manager's `StreamOwnership`) names the one node
//! that streams a tenant's changes. A node with subscribers for a tenant it does not own
//! sends the owner `ChangesInterest { wanted: true, since }`; the owner forwards its stream's
//! events (`Frame::Changes`, in WAL order on the one bus stream) and the subscriber node
//! acknowledges what it dispatched (`ChangesAck`), which the owner folds into the position it
//! confirms to Postgres. On a membership change every feed re-reads the ring
//! ([`ChangeRouter::ring_changed`]) and switches its source in place.

use std::sync::Arc;

use realtime_proto::bus::{Frame, StreamEvent};
use tokio::sync::mpsc;

use super::links::PeerLinks;
use crate::postgres_changes::feed::ChangePeers;
use crate::postgres_changes::service::PostgresChanges;
use crate::ring::RingChange;
use crate::tasks::Owner;
use crate::types::{NodeId, TenantId};

/// Wants from peers waiting to be served, in arrival order.
const WANTS_QUEUE: usize = 4096;

/// One peer's want or release of a tenant.
struct Want {
    peer: String,
    tenant: TenantId,
    wanted: bool,
    since: u64,
}

/// The bus side of the change feeds.
pub(crate) struct ChangeRouter {
    changes: PostgresChanges,
    wants: mpsc::Sender<Want>,
}

impl std::fmt::Debug for ChangeRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeRouter").finish_non_exhaustive()
    }
}

/// The feeds' view of the bus.
struct BusChangePeers {
    links: Arc<PeerLinks>,
}

impl ChangePeers for BusChangePeers {
    fn want(&self, owner: &NodeId, tenant: &TenantId, wanted: bool, since: u64) {
        self.links.send_to(
            owner.as_str(),
            &Frame::ChangesInterest {
                tenant: tenant.as_str().to_string(),
                wanted,
                since,
            },
        );
    }

    fn ack(&self, owner: &NodeId, tenant: &TenantId, end_lsn: u64) {
        self.links.send_to(
            owner.as_str(),
            &Frame::ChangesAck {
                tenant: tenant.as_str().to_string(),
                end_lsn,
            },
        );
    }

    fn forward(&self, peer: &str, tenant: &TenantId, events: Vec<StreamEvent>) {
        self.links.send_to(
            peer,
            &Frame::Changes {
                tenant: tenant.as_str().to_string(),
                events,
            },
        );
    }
}

impl ChangeRouter {
    /// Connects the Postgres Changes service to the bus (in a cluster); wants are served by a
    /// task under `owner`.
    pub(crate) fn new(
        changes: PostgresChanges,
        links: Arc<PeerLinks>,
        clustered: bool,
        owner: &Owner,
    ) -> ChangeRouter {
        if clustered {
            changes.set_peers(Arc::new(BusChangePeers { links }));
        }
        let (wants, rx) = mpsc::channel(WANTS_QUEUE);
        owner.spawn("peers: change wants", serve_wants(changes.clone(), rx));
        ChangeRouter { changes, wants }
    }

    /// The tenants whose stream runs on this node.
    pub(crate) fn owned_streams(&self) -> Vec<String> {
        self.changes.running_streams()
    }

    /// The ring changed: every feed re-reads its owner.
    pub(crate) fn ring_changed(&self, _change: &RingChange) {
        self.changes.reassign();
    }

    /// A peer wants (or releases) a tenant's changes from this node.
    pub(crate) fn peer_interest(&self, peer: &str, tenant: TenantId, wanted: bool, since: u64) {
        let want = Want {
            peer: peer.to_string(),
            tenant,
            wanted,
            since,
        };
        if self.wants.try_send(want).is_err() {
            tracing::warn!(%peer, "too many change wants queued; one is dropped (the peer repeats it)");
        }
    }

    /// Stream events from a tenant's owner.
    pub(crate) fn owner_events(&self, peer: &str, tenant: &TenantId, events: Vec<StreamEvent>) {
        self.changes.owner_events(peer, tenant, events);
    }

    /// A peer dispatched a tenant's changes up to `end_lsn`.
    pub(crate) fn peer_ack(&self, peer: &str, tenant: &TenantId, end_lsn: u64) {
        self.changes.peer_ack(peer, tenant, end_lsn);
    }

    /// A peer's link ended.
    pub(crate) fn peer_down(&self, peer: &str) {
        self.changes.peer_down(peer);
    }
}

async fn serve_wants(changes: PostgresChanges, mut rx: mpsc::Receiver<Want>) {
    while let Some(want) = rx.recv().await {
        changes
            .peer_wants(&want.peer, &want.tenant, want.wanted, want.since)
            .await;
    }
}
