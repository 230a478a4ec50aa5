//! This node's side of the cluster: what it exchanges with its peers over the bus, and what
//! it does when membership changes.
//!
//! * [`links::PeerLinks`] (outward): interest announcements from the hub's room events,
//!   broadcasts forwarded to interested peers only, presence deltas to every peer.
//! * [`Peers`] (inward, the bus handler): validates every frame ([`wire`]) and hands it to the
//!   service it is for: broadcasts to the broadcaster (local fan-out only), presence deltas to
//!   the tracker, tenant changes to the tenant registry, change-stream frames to
//!   [`changes::ChangeRouter`]; answers presence anti-entropy requests.
//! * Tasks: membership → bus peers, ring and presence (`replica_down` for nodes that left);
//!   periodic presence anti-entropy; local tenant changes → peers.
//!
//! Nothing here runs for a cluster of one (no `DNS_NODES` or `CLUSTER_SEEDS`).

pub(crate) mod changes;
pub(crate) mod links;
pub(crate) mod wire;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use realtime_proto::bus::{Frame, NodeRun, Request, Response};
use tokio::sync::mpsc;

use crate::broadcast::Broadcaster;
use crate::bus::{Bus, BusHandler};
use crate::cluster::{Membership, MembershipEvent};
use crate::metrics::{NodeMetrics, Snapshot};
use crate::presence::Presence;
use crate::ring::RingOwnership;
use crate::tasks::Owner;
use crate::tenants::{EventOrigin, TenantEvent, Tenants};
use crate::types::{NodeId, NodeIncarnation};

use changes::ChangeRouter;
use links::PeerLinks;

/// Period of presence anti-entropy with every linked peer.
const PRESENCE_SYNC_PERIOD: Duration = Duration::from_secs(1);
/// Tenant changes from peers waiting to be applied.
const TENANT_QUEUE: usize = 1024;

/// The inward side of this node's peers: the bus handler. Shared behind an `Arc`.
pub(crate) struct Peers {
    me: NodeIncarnation,
    links: Arc<PeerLinks>,
    broadcaster: Arc<Broadcaster>,
    presence: Arc<Presence>,
    changes: Arc<ChangeRouter>,
    ring: Arc<RingOwnership>,
    /// This node's metrics, for peers' `Request::Metrics`.
    metrics: Arc<NodeMetrics>,
    /// Tenant changes from peers, applied in order by one task.
    tenant_tx: mpsc::Sender<TenantEvent>,
    /// Peers to run anti-entropy with now (a link just came up).
    sync_tx: mpsc::UnboundedSender<String>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

/// What [`Peers::new`] needs.
pub(crate) struct PeersParts {
    /// This node's run.
    pub(crate) me: NodeIncarnation,
    /// The outward side (already the broadcaster's and tracker's peer sink).
    pub(crate) links: Arc<PeerLinks>,
    /// Local fan-out of peers' broadcasts.
    pub(crate) broadcaster: Arc<Broadcaster>,
    /// The presence tracker.
    pub(crate) presence: Arc<Presence>,
    /// Change-stream ownership and forwarding.
    pub(crate) changes: Arc<ChangeRouter>,
    /// Stream ownership from the live members.
    pub(crate) ring: Arc<RingOwnership>,
    /// The tenant registry.
    pub(crate) tenants: Tenants,
    /// This node's metrics (answers peers' `Request::Metrics`).
    pub(crate) metrics: Arc<NodeMetrics>,
}

impl Peers {
    /// Builds the handler and starts its tasks (tenant changes in and out, anti-entropy) under
    /// `owner`. Membership is followed once [`Peers::follow`] is called with the running bus.
    pub(crate) fn new(parts: PeersParts, owner: &Owner) -> Arc<Peers> {
        let (tenant_tx, tenant_rx) = mpsc::channel(TENANT_QUEUE);
        let (sync_tx, sync_rx) = mpsc::unbounded_channel();
        let peers = Arc::new(Peers {
            me: parts.me,
            links: parts.links,
            broadcaster: parts.broadcaster,
            presence: parts.presence,
            changes: parts.changes,
            ring: parts.ring,
            metrics: parts.metrics,
            tenant_tx,
            sync_tx,
        });
        owner.spawn(
            "peers: tenant changes from peers",
            apply_peer_tenant_changes(parts.tenants.clone(), tenant_rx),
        );
        owner.spawn(
            "peers: local tenant changes to peers",
            forward_local_tenant_changes(parts.tenants, peers.links.clone()),
        );
        owner.spawn(
            "peers: presence anti-entropy",
            presence_anti_entropy(peers.clone(), sync_rx),
        );
        peers
    }

    /// Follows membership: links to the live members, moves stream ownership with the ring,
    /// and removes the presences of nodes that left.
    pub(crate) fn follow(self: &Arc<Peers>, membership: Arc<Membership>, bus: Bus, owner: &Owner) {
        owner.spawn(
            "peers: membership",
            follow_membership(self.clone(), membership, bus),
        );
    }

    /// What `GET /api/cluster` shows.
    pub(crate) fn status(&self, membership: &Membership) -> serde_json::Value {
        let members: Vec<serde_json::Value> = membership
            .members()
            .iter()
            .map(|m| {
                serde_json::json!({
                    "node": m.node.node.as_str(),
                    "incarnation": m.node.incarnation,
                    "http_addr": m.http.to_string(),
                    "bus_addr": m.bus.to_string(),
                    "region": m.region,
                    "version": m.version,
                })
            })
            .collect();
        let linked: Vec<String> = self.links.linked().into_iter().map(|r| r.name).collect();
        let stats = &self.links.stats;
        let bus = self.links.bus().map(|bus| {
            let s = bus.stats();
            serde_json::json!({
                "linked": bus.linked().into_iter().map(|r| r.name).collect::<Vec<_>>(),
                "frames_sent": s.frames_sent,
                "bytes_sent": s.bytes_sent,
                "frames_received": s.frames_received,
                "bytes_received": s.bytes_received,
                "frames_dropped": s.frames_dropped,
                "handshakes_refused": s.handshakes_refused,
                "invalid_frames": s.invalid_frames,
                "peers": s.peers.iter().map(|p| serde_json::json!({
                    "node": p.peer.name,
                    "queue_depth": p.queue_depth,
                    "frames_sent": p.frames_sent,
                    "frames_received": p.frames_received,
                    "frames_dropped": p.frames_dropped,
                })).collect::<Vec<_>>(),
            })
        });
        serde_json::json!({
            "node": self.me.node.as_str(),
            "incarnation": self.me.incarnation,
            "members": members,
            "linked": linked,
            "ring": self.ring.ring().members().iter().map(NodeId::as_str).collect::<Vec<_>>(),
            "streams": self.changes.owned_streams(),
            "bus": bus,
            "peers": {
                "broadcasts_out": stats.broadcasts_out.load(Ordering::Relaxed),
                "broadcasts_in": stats.broadcasts_in.load(Ordering::Relaxed),
                "presence_out": stats.presence_out.load(Ordering::Relaxed),
                "not_queued": stats.not_queued.load(Ordering::Relaxed),
                "invalid_in": stats.invalid_in.load(Ordering::Relaxed),
            },
        })
    }

    fn refuse(&self, from: &NodeRun, what: &str, error: &dyn std::fmt::Display) {
        self.links.stats.invalid_in.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %from.name, error_code = "InvalidPeerMessage", %error, "refused a {what} from a peer");
    }

    fn merge_presence(&self, from: &NodeRun, bytes: &[u8]) {
        match crate::presence::decode_delta(bytes) {
            Ok(delta) => {
                self.presence.merge_from_peer(&delta);
            }
            Err(err) => self.refuse(from, "presence delta", &err),
        }
    }
}

impl BusHandler for Peers {
    fn frame(&self, from: &NodeRun, frame: Frame) {
        match frame {
            Frame::Broadcast { room, message } => {
                match (wire::room_from_wire(room), wire::message_from_wire(message)) {
                    (Ok(room), Ok(message)) => {
                        self.links
                            .stats
                            .broadcasts_in
                            .fetch_add(1, Ordering::Relaxed);
                        self.broadcaster.deliver_from_peer(&room, &message);
                    }
                    (Err(err), _) | (_, Err(err)) => self.refuse(from, "broadcast", &err),
                }
            }
            Frame::Interest {
                reset,
                added,
                removed,
            } => {
                let added: Result<Vec<_>, _> =
                    added.into_iter().map(wire::room_from_wire).collect();
                let removed: Result<Vec<_>, _> =
                    removed.into_iter().map(wire::room_from_wire).collect();
                match (added, removed) {
                    (Ok(added), Ok(removed)) => {
                        self.links.apply_interest(&from.name, reset, added, removed);
                    }
                    (Err(err), _) | (_, Err(err)) => self.refuse(from, "interest", &err),
                }
            }
            Frame::Presence(bytes) => self.merge_presence(from, &bytes),
            Frame::TenantChanged {
                tenant,
                change,
                disconnect,
            } => match (
                wire::tenant_from_wire(tenant),
                wire::change_from_wire(change),
            ) {
                (Ok(tenant), Ok(change)) => {
                    let event = TenantEvent {
                        tenant,
                        change,
                        disconnect,
                        record: None,
                        origin: EventOrigin::Peer,
                    };
                    if self.tenant_tx.try_send(event).is_err() {
                        tracing::warn!(peer = %from.name, "tenant changes from peers are queued too deep; one is dropped (the cache TTL applies)");
                    }
                }
                (Err(err), _) | (_, Err(err)) => self.refuse(from, "tenant change", &err),
            },
            Frame::ChangesInterest {
                tenant,
                wanted,
                since,
            } => match wire::tenant_from_wire(tenant) {
                Ok(tenant) => self
                    .changes
                    .peer_interest(&from.name, tenant, wanted, since),
                Err(err) => self.refuse(from, "changes interest", &err),
            },
            Frame::Changes { tenant, events } => match wire::tenant_from_wire(tenant) {
                Ok(tenant) => self.changes.owner_events(&from.name, &tenant, events),
                Err(err) => self.refuse(from, "change events", &err),
            },
            Frame::ChangesAck { tenant, end_lsn } => match wire::tenant_from_wire(tenant) {
                Ok(tenant) => self.changes.peer_ack(&from.name, &tenant, end_lsn),
                Err(err) => self.refuse(from, "changes ack", &err),
            },
            // The bus answers requests through `request` and matches replies itself.
            Frame::Request { .. } | Frame::Reply { .. } => {}
        }
    }

    fn request(&self, from: &NodeRun, request: Request) -> Response {
        match request {
            Request::Ping => Response::Pong,
            Request::Metrics => Response::Metrics(self.metrics.render()),
            Request::PresenceSync(digest) => match wire::digest_from_wire(digest) {
                Ok(digest) => match self.presence.delta_for(&digest) {
                    None => Response::PresenceSync(None),
                    Some(delta) => match crate::presence::encode_delta(&delta) {
                        Ok(bytes) => Response::PresenceSync(Some(bytes)),
                        Err(err) => Response::Error(err.to_string()),
                    },
                },
                Err(err) => {
                    self.refuse(from, "presence digest", &err);
                    Response::Error(err.to_string())
                }
            },
        }
    }

    fn peer_up(&self, peer: &NodeRun) {
        tracing::info!(peer = %peer.name, incarnation = peer.incarnation, "bus link up");
        self.links.peer_up(peer);
        let _ = self.sync_tx.send(peer.name.clone());
    }

    fn peer_down(&self, peer: &NodeRun) {
        tracing::info!(peer = %peer.name, incarnation = peer.incarnation, "bus link down");
        self.links.peer_down(peer);
        self.changes.peer_down(&peer.name);
    }
}

/// Applies peers' tenant changes in order: the cache entry goes, the record is read again,
/// and the local event reaches sockets and pools (never forwarded again).
async fn apply_peer_tenant_changes(tenants: Tenants, mut rx: mpsc::Receiver<TenantEvent>) {
    while let Some(event) = rx.recv().await {
        let tenant = event.tenant.clone();
        if let Err(err) = tenants.apply_remote(event).await {
            tracing::warn!(%tenant, error_code = %crate::error::OperationalError::code(&err), error = %err,
                "a peer's tenant change could not be applied; the cached record was dropped");
        }
    }
}

/// Sends this node's own tenant changes (API writes, reloads) to every linked peer.
async fn forward_local_tenant_changes(tenants: Tenants, links: Arc<PeerLinks>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut events = tenants.subscribe();
    loop {
        match events.recv().await {
            Ok(event) if event.origin == EventOrigin::Local => {
                links.send_all(&Frame::TenantChanged {
                    tenant: event.tenant.as_str().to_string(),
                    change: wire::change_to_wire(event.change),
                    disconnect: event.disconnect,
                });
            }
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "tenant changes were not forwarded to peers (their cache TTL applies)"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Asks every linked peer, every [`PRESENCE_SYNC_PERIOD`] and whenever a link comes up, for
/// the presence this node misses, and merges the answers.
async fn presence_anti_entropy(peers: Arc<Peers>, mut now: mpsc::UnboundedReceiver<String>) {
    let mut tick = tokio::time::interval(PRESENCE_SYNC_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let targets: Vec<String> = tokio::select! {
            _ = tick.tick() => peers.links.linked().into_iter().map(|r| r.name).collect(),
            Some(peer) = now.recv() => vec![peer],
        };
        let Some(bus) = peers.links.bus().cloned() else {
            continue;
        };
        for peer in targets {
            let digest = wire::digest_to_wire(&peers.presence.digest());
            match bus.request(&peer, Request::PresenceSync(digest)).await {
                Ok(Response::PresenceSync(Some(bytes))) => {
                    let run = NodeRun {
                        name: peer.clone(),
                        incarnation: 0,
                    };
                    peers.merge_presence(&run, &bytes);
                }
                Ok(Response::PresenceSync(None)) => {}
                Ok(other) => {
                    tracing::debug!(%peer, answer = ?other, "unexpected answer to a presence sync");
                }
                Err(err) => {
                    tracing::debug!(%peer, error_code = %crate::error::OperationalError::code(&err), error = %err, "presence sync failed");
                }
            }
        }
    }
}

/// Keeps the bus links, the ring and presence in line with the live members.
async fn follow_membership(peers: Arc<Peers>, membership: Arc<Membership>, bus: Bus) {
    use tokio::sync::broadcast::error::RecvError;
    let mut view = membership.subscribe();
    let mut events = membership.events();
    let apply_view = |view: &crate::cluster::MembershipView| {
        let others: Vec<(NodeRun, std::net::SocketAddr)> = view
            .members()
            .iter()
            .filter(|m| m.node.node != peers.me.node)
            .map(|m| (crate::bus::node_run(&m.node), m.bus))
            .collect();
        bus.set_peers(&others);
        let change = peers
            .ring
            .set_members(view.members().iter().map(|m| m.node.node.clone()));
        if !change.is_unchanged() {
            tracing::info!(
                members = view.members().len(),
                "ring changed; moving change streams"
            );
            peers.changes.ring_changed(&change);
        }
    };
    apply_view(&view.borrow_and_update());
    loop {
        tokio::select! {
            changed = view.changed() => {
                if changed.is_err() {
                    return;
                }
                let current = view.borrow_and_update().clone();
                apply_view(&current);
            }
            event = events.recv() => match event {
                Ok(MembershipEvent::Left { node, graceful }) => {
                    let left = peers.presence.replica_down(&node);
                    tracing::info!(node = %node.node, incarnation = node.incarnation, graceful, deliveries = left, "a node left; its presences left");
                }
                Ok(MembershipEvent::Joined(member)) => {
                    tracing::info!(node = %member.node.node, incarnation = member.node.incarnation, "a node joined");
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "membership events were missed; presence anti-entropy repairs");
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// `GET /api/cluster` over this node's membership and peers.
#[derive(Debug)]
pub(crate) struct ClusterStatusView {
    /// This node's peers.
    pub(crate) peers: Arc<Peers>,
    /// This node's membership.
    pub(crate) membership: Arc<Membership>,
}

/// `GET /metrics[/:region]` across the cluster: this node's text and each live member's,
/// asked over the bus (`Request::Metrics`), merged family by family.
#[derive(Debug)]
pub(crate) struct ClusterMetricsView {
    /// This node's peers (and through them the bus, when clustered).
    pub(crate) peers: Arc<Peers>,
    /// This node's membership.
    pub(crate) membership: Arc<Membership>,
}

impl crate::api::ClusterMetrics for ClusterMetricsView {
    fn gather(&self, region: Option<String>) -> futures::future::BoxFuture<'static, String> {
        let peers = self.peers.clone();
        let membership = self.membership.clone();
        Box::pin(async move {
            let in_region = |r: Option<&str>| region.is_none() || region.as_deref() == r;
            let mut texts = Vec::new();
            if in_region(peers.metrics.region()) {
                texts.push(peers.metrics.render());
            }
            let Some(bus) = peers.links.bus().cloned() else {
                return crate::metrics::merge_expositions(&texts);
            };
            let asked = membership
                .members()
                .into_iter()
                .filter(|m| m.node.node != peers.me.node && in_region(m.region.as_deref()));
            let answers = futures::future::join_all(asked.map(|member| {
                let bus = bus.clone();
                async move {
                    let name = member.node.node.as_str().to_string();
                    (bus.request(&name, Request::Metrics).await, name)
                }
            }))
            .await;
            for (answer, node) in answers {
                match answer {
                    Ok(Response::Metrics(text)) => texts.push(text),
                    Ok(other) => {
                        tracing::warn!(error_code = %crate::error::ErrorCode::ErrorOnRpcCall, %node, answer = ?other,
                            "a peer answered the metrics request with something else; its series are left out");
                    }
                    Err(err) => {
                        tracing::warn!(error_code = %crate::error::OperationalError::code(&err), %node, error = %err,
                            "a peer's metrics could not be fetched; its series are left out");
                    }
                }
            }
            crate::metrics::merge_expositions(&texts)
        })
    }
}

impl Peers {
    /// Samples the bus links, their queues and the peer traffic counters for `/metrics`.
    pub(crate) fn sample(&self, s: &mut Snapshot) {
        let stats = &self.links.stats;
        let counters = [
            (
                "realtime_peer_broadcasts_out_total",
                "Broadcasts forwarded to peers",
                &stats.broadcasts_out,
            ),
            (
                "realtime_peer_broadcasts_in_total",
                "Broadcasts received from peers",
                &stats.broadcasts_in,
            ),
            (
                "realtime_peer_presence_out_total",
                "Presence deltas sent to peers",
                &stats.presence_out,
            ),
            (
                "realtime_peer_not_queued_total",
                "Frames for peers that could not be queued",
                &stats.not_queued,
            ),
            (
                "realtime_peer_invalid_in_total",
                "Frames from peers refused as invalid",
                &stats.invalid_in,
            ),
        ];
        for (name, help, value) in counters {
            s.counter(name, help, &[], value.load(Ordering::Relaxed));
        }
        let Some(bus) = self.links.bus() else {
            s.gauge("realtime_bus_peers", "Peers linked over the bus", &[], 0.0);
            return;
        };
        let b = bus.stats();
        s.gauge(
            "realtime_bus_peers",
            "Peers linked over the bus",
            &[],
            b.peers.len() as f64,
        );
        s.counter(
            "realtime_bus_frames_sent_total",
            "Frames written to peers",
            &[],
            b.frames_sent,
        );
        s.counter(
            "realtime_bus_sent_bytes_total",
            "Bytes written to peers",
            &[],
            b.bytes_sent,
        );
        s.counter(
            "realtime_bus_frames_received_total",
            "Frames read from peers",
            &[],
            b.frames_received,
        );
        s.counter(
            "realtime_bus_received_bytes_total",
            "Bytes read from peers",
            &[],
            b.bytes_received,
        );
        s.counter(
            "realtime_bus_frames_dropped_total",
            "Frames dropped on a full peer queue",
            &[],
            b.frames_dropped,
        );
        s.counter(
            "realtime_bus_handshakes_refused_total",
            "Bus handshakes refused by either side",
            &[],
            b.handshakes_refused,
        );
        s.counter(
            "realtime_bus_invalid_frames_total",
            "Bus links closed for an invalid frame",
            &[],
            b.invalid_frames,
        );
        for p in &b.peers {
            let peer = [("peer", p.peer.name.as_str())];
            s.gauge(
                "realtime_bus_peer_queue_depth",
                "Frames queued for a peer and not yet written",
                &peer,
                p.queue_depth as f64,
            );
            s.counter(
                "realtime_bus_peer_frames_sent_total",
                "Frames written to one peer",
                &peer,
                p.frames_sent,
            );
            s.counter(
                "realtime_bus_peer_frames_received_total",
                "Frames read from one peer",
                &peer,
                p.frames_received,
            );
            s.counter(
                "realtime_bus_peer_frames_dropped_total",
                "Frames dropped on one peer's full queue",
                &peer,
                p.frames_dropped,
            );
        }
        let ring = self.ring.ring();
        s.gauge(
            "realtime_ring_members",
            "Members of the stream-ownership ring",
            &[],
            ring.members().len() as f64,
        );
    }
}

impl crate::api::ClusterStatus for ClusterStatusView {
    fn status(&self) -> serde_json::Value {
        self.peers.status(&self.membership)
    }

    fn joined(&self) -> bool {
        self.membership.joined()
    }
}
