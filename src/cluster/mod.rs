//! Cluster membership: which nodes are live, where to reach them, and when one joins or leaves.
//!
//! Nodes gossip over UDP with chitchat (scuttlebutt reconciliation, phi-accrual failure
//! detection); this module is the only one that knows chitchat. Each node publishes its bus
//! address, HTTP address, region and version as gossip keys ([`KEY_BUS`] …) under a chitchat id
//! of (node name, generation = the [`NodeIncarnation`]'s number, gossip address), so a restarted
//! node is a new member and its previous run leaves. Outward it speaks our types only: a
//! [`MembershipView`] (live members, this node included, each validated: gossip values are
//! untrusted input) behind a `watch`, and a stream of [`MembershipEvent`]s (`Joined`, `Left`)
//! that presence turns into `replica_down` and the ring into a new owner map.
//!
//! Seeds are the resolved `DNS_NODES` (every A/AAAA record) and `CLUSTER_SEEDS`; a task of this
//! module re-resolves them every `DNS_NODES_REFRESH_MS` and gossips to addresses it does not
//! know yet, so pods that appear later are found. With neither variable set the node is a
//! cluster of one: [`Membership::start`] opens no socket and the view is this node alone.
//!
//! What it must not do: carry presence, broadcasts or any bulk traffic (gossip is UDP, kept to
//! small per-node metadata; the bus carries the rest); block on a peer.

mod seeds;
mod view;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chitchat::transport::UdpTransport;
use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
    ProtocolVersion, spawn_chitchat,
};
use tokio::sync::{Mutex, broadcast, watch};

use crate::config::ClusterConfig;
use crate::error::{ErrorCode, OperationalError};
use crate::tasks::Owner;
use crate::types::NodeIncarnation;

pub(crate) use view::{Member, MembershipEvent, MembershipView};

use seeds::{SeedSpec, resolve, seed_specs};
use view::{Candidate, Tracker};

/// Gossip key: the node's bus (QUIC) address, `ip:port`.
pub(crate) const KEY_BUS: &str = "bus_addr";
/// Gossip key: the node's HTTP/WebSocket address, `ip:port`.
pub(crate) const KEY_HTTP: &str = "http_addr";
/// Gossip key: the node's `REGION`; absent when it has none.
pub(crate) const KEY_REGION: &str = "region";
/// Gossip key: the node's software version.
pub(crate) const KEY_VERSION: &str = "version";
/// Gossip key set by [`Membership::leave`]: the node is leaving ([`LEAVING_VALUE`]).
pub(crate) const KEY_LEAVING: &str = "leaving";
/// The value of [`KEY_LEAVING`] that announces a leave.
pub(crate) const LEAVING_VALUE: &str = "1";

/// The cluster id that chitchat puts in every gossip message and that a receiver must match:
/// `CLUSTER_ID`, then a tag keyed by `CLUSTER_SECRET` (the first 8 bytes of
/// HMAC-SHA256(secret, "realtime gossip v1" ‖ cluster id), hex). A process without the secret
/// cannot produce the tag, so its gossip is ignored and it never enters the view or the ring.
/// Gossip is plain UDP: someone who can read the traffic can copy the tag, but still cannot
/// join the bus, which proves the secret itself.
fn gossip_cluster_id(config: &ClusterConfig) -> String {
    let Some(secret) = &config.secret else {
        return config.cluster_id.clone();
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose().as_bytes());
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(b"realtime gossip v1\0");
    context.update(config.cluster_id.as_bytes());
    let tag = context.sign();
    let hex: String = tag.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}/{hex}", config.cluster_id)
}

/// A node that finds no peer is ready anyway after this many `DNS_NODES_REFRESH_MS` periods
/// (each one re-resolves the seeds and gossips to new addresses).
pub(crate) const JOIN_WAIT_REFRESHES: u32 = 2;

/// How long [`Membership::leave`] announces the leave at most.
const LEAVE_ANNOUNCE_FOR: Duration = Duration::from_millis(500);
/// Rounds of direct gossip to every live peer during a leave (one per gossip period).
const LEAVE_ROUNDS: u32 = 3;
/// A dead node's state is forgotten this long after its death.
const DEAD_NODE_GRACE: Duration = Duration::from_secs(600);
/// Heartbeat intervals the failure detector remembers per node.
const SAMPLING_WINDOW: usize = 1000;
/// Events kept for a slow subscriber before it sees `Lagged` (it then re-reads the view).
const EVENTS_CAPACITY: usize = 1024;
/// How long `shutdown` waits for this module's own tasks.
const TASKS_GRACE: Duration = Duration::from_secs(2);

/// Where peers reach this node, besides gossip, and what it tells them about itself. An
/// unspecified IP (a listener on all interfaces) is advertised as the gossip address's IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeAddresses {
    /// Address of this node's QUIC bus endpoint as peers reach it.
    pub(crate) bus: SocketAddr,
    /// Address of this node's HTTP listener as peers reach it.
    pub(crate) http: SocketAddr,
    /// `REGION`, if set.
    pub(crate) region: Option<String>,
    /// Software version.
    pub(crate) version: String,
}

/// Membership could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    /// A value this node would gossip is one peers would refuse.
    #[error("invalid advertised {what}: {problem}")]
    InvalidAdvertised {
        /// Which value.
        what: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// `GOSSIP_PORT` is 0 while clustering: peers need a fixed port to reach.
    #[error("gossip port 0 cannot be advertised to peers")]
    NoGossipPort,
    /// The gossip socket could not be opened.
    #[error("cannot start gossip on {addr}: {reason}")]
    Start {
        /// The listen address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

impl OperationalError for ClusterError {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidConfiguration
    }

    fn client_message(&self) -> String {
        "cluster membership is unavailable".to_string()
    }
}

/// This node's membership of the cluster: the live view, its changes, and leaving.
///
/// Cheap to share behind an `Arc`; every method takes `&self`.
pub(crate) struct Membership {
    me: Member,
    view_tx: watch::Sender<Arc<MembershipView>>,
    events_tx: broadcast::Sender<MembershipEvent>,
    /// `None` for a cluster of one.
    gossip: Option<Gossip>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("me", &self.me.node)
            .field("gossip", &self.gossip.is_some())
            .finish_non_exhaustive()
    }
}

/// The running gossip layer.
struct Gossip {
    /// The chitchat server; taken out by `shutdown`. A tokio mutex: `leave` and the seed task
    /// hold it across chitchat's own (async) lock.
    handle: Arc<Mutex<Option<ChitchatHandle>>>,
    /// This module's tasks (live-set watcher, seed refresh).
    owner: Owner,
    gossip_addr: SocketAddr,
    interval: Duration,
    /// Seed addresses other than this node's own, at the last resolution (readiness).
    other_seeds: Arc<AtomicUsize>,
    /// When gossip started, and how long [`Membership::joined`] waits for a first peer.
    started: Instant,
    join_wait: Duration,
}

/// Whether a node has joined its cluster (readiness): it sees a live peer, or its seeds name no
/// address but its own (the first node of a new cluster), or it has looked for `join_wait`
/// without finding one: a node whose peers are all down still serves its clients.
fn has_joined(
    live_peers: usize,
    other_seeds: usize,
    waited: Duration,
    join_wait: Duration,
) -> bool {
    live_peers > 0 || other_seeds == 0 || waited >= join_wait
}

impl Membership {
    /// Joins the cluster, or makes a cluster of one when `DNS_NODES` and `CLUSTER_SEEDS` are both
    /// empty (then no socket is opened and nothing runs).
    ///
    /// Otherwise gossip listens on UDP `GOSSIP_PORT` (all interfaces) and advertises
    /// `ADVERTISE_ADDR:GOSSIP_PORT`; without `ADVERTISE_ADDR`, the local address of the route
    /// to the first seed, else the first address of the node name, else 127.0.0.1 (logged).
    /// Tasks run under a child of `owner`.
    ///
    /// # Errors
    /// [`ClusterError`]: an advertised value peers would refuse, port 0, or a socket that
    /// cannot be bound.
    pub(crate) async fn start(
        config: &ClusterConfig,
        me: NodeIncarnation,
        advertised: NodeAddresses,
        owner: &Owner,
    ) -> Result<Membership, ClusterError> {
        let (events_tx, _) = broadcast::channel(EVENTS_CAPACITY);
        let specs = seed_specs(config);
        if specs.is_empty() {
            let me = own_member(me, advertised, false)?;
            let (view_tx, _) = watch::channel(Arc::new(Tracker::new(me.clone()).view()));
            tracing::info!(node = %me.node, "no DNS_NODES or CLUSTER_SEEDS: a cluster of one");
            return Ok(Membership {
                me,
                view_tx,
                events_tx,
                gossip: None,
            });
        }
        if config.gossip_port == 0 {
            return Err(ClusterError::NoGossipPort);
        }

        let seed_addrs = resolve(&specs).await;
        let started = Instant::now();
        let advertise_ip = match config.advertise_ip {
            Some(ip) => ip,
            None => default_advertise_ip(&seed_addrs, &config.node_name).await,
        };
        // Listeners bound to all interfaces are advertised at the gossip address's IP.
        let mut advertised = advertised;
        for addr in [&mut advertised.bus, &mut advertised.http] {
            if addr.ip().is_unspecified() {
                addr.set_ip(advertise_ip);
            }
        }
        let me = own_member(me, advertised, true)?;
        let (view_tx, _) = watch::channel(Arc::new(Tracker::new(me.clone()).view()));
        let gossip_addr = SocketAddr::new(advertise_ip, config.gossip_port);
        view::check_peer_addr(gossip_addr).map_err(|problem| ClusterError::InvalidAdvertised {
            what: "gossip address",
            problem,
        })?;
        let unspecified = match advertise_ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let listen_addr = SocketAddr::new(unspecified, config.gossip_port);
        let tuning = &config.gossip;
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(me.node.node.as_str(), me.node.incarnation, gossip_addr),
            cluster_id: gossip_cluster_id(config),
            gossip_interval: tuning.interval,
            listen_addr,
            // Addresses only: chitchat then starts no resolver of its own (our task re-resolves).
            seed_nodes: seed_addrs
                .iter()
                .filter(|addr| **addr != gossip_addr)
                .map(SocketAddr::to_string)
                .collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: tuning.phi_threshold,
                sampling_window_size: SAMPLING_WINDOW,
                max_interval: tuning.max_interval,
                initial_interval: tuning.initial_interval,
                dead_node_grace_period: DEAD_NODE_GRACE,
            },
            marked_for_deletion_grace_period: DEAD_NODE_GRACE,
            catchup_callback: None,
            extra_liveness_predicate: None,
            // Every node runs this build, so all decode V1 (compressed digests); a reply
            // echoes the version of the message it answers.
            protocol_version: ProtocolVersion::V1,
        };
        let handle = spawn_chitchat(chitchat_config, own_key_values(&me), &UdpTransport)
            .await
            .map_err(|error| ClusterError::Start {
                addr: listen_addr,
                reason: format!("{error:#}"),
            })?;
        let live = handle
            .with_chitchat(|chitchat| chitchat.live_nodes_watcher())
            .await;
        tracing::info!(
            node = %me.node,
            %gossip_addr,
            cluster_id = %config.cluster_id,
            seeds = seed_addrs.len(),
            "gossip started"
        );

        let handle = Arc::new(Mutex::new(Some(handle)));
        let other_seeds = Arc::new(AtomicUsize::new(
            seed_addrs.iter().filter(|a| **a != gossip_addr).count(),
        ));
        let owner = owner.child();
        owner.spawn(
            "membership live set",
            watch_live_set(
                live,
                Tracker::new(me.clone()),
                view_tx.clone(),
                events_tx.clone(),
            ),
        );
        owner.spawn(
            "membership seed refresh",
            refresh_seeds(
                specs,
                config.seed_refresh,
                gossip_addr,
                handle.clone(),
                other_seeds.clone(),
            ),
        );
        Ok(Membership {
            me,
            view_tx,
            events_tx,
            gossip: Some(Gossip {
                handle,
                owner,
                gossip_addr,
                interval: tuning.interval,
                other_seeds,
                started,
                join_wait: JOIN_WAIT_REFRESHES * config.seed_refresh,
            }),
        })
    }

    /// Returns this node as peers see it.
    #[cfg_attr(not(test), expect(dead_code, reason = "used by the membership tests"))]
    pub(crate) fn me(&self) -> &Member {
        &self.me
    }

    /// Returns the live members, this node included, sorted by node name.
    pub(crate) fn members(&self) -> Vec<Member> {
        self.view_tx.borrow().members().to_vec()
    }

    /// Whether this node has joined its cluster, for `GET /healthcheck/ready`: a cluster of
    /// one always has; otherwise it sees a live peer, or its seeds resolve to no address but its
    /// own, or it has waited [`JOIN_WAIT_REFRESHES`] seed refresh periods since gossip started.
    pub(crate) fn joined(&self) -> bool {
        let Some(gossip) = &self.gossip else {
            return true;
        };
        let peers = self.view_tx.borrow().members().len().saturating_sub(1);
        has_joined(
            peers,
            gossip.other_seeds.load(Ordering::Relaxed),
            gossip.started.elapsed(),
            gossip.join_wait,
        )
    }

    /// Returns the view; it changes whenever the live set does.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<MembershipView>> {
        self.view_tx.subscribe()
    }

    /// Returns the stream of joins and leaves from now on. The view is updated before each event
    /// is sent; a receiver that lags (`RecvError::Lagged`) re-reads the view.
    pub(crate) fn events(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events_tx.subscribe()
    }

    /// Returns the gossip address this node advertises; `None` for a cluster of one.
    #[cfg_attr(not(test), expect(dead_code, reason = "used by the membership tests"))]
    pub(crate) fn gossip_addr(&self) -> Option<SocketAddr> {
        self.gossip.as_ref().map(|g| g.gossip_addr)
    }

    /// Announces that this node is leaving: sets [`KEY_LEAVING`] and gossips it directly to
    /// every live peer, a few rounds within 500 ms, so peers report `Left { graceful: true }`
    /// at once instead of waiting for the failure detector. Call [`Membership::shutdown`] next.
    pub(crate) async fn leave(&self) {
        let Some(gossip) = &self.gossip else { return };
        let guard = gossip.handle.lock().await;
        let Some(handle) = guard.as_ref() else { return };
        let peers: Vec<SocketAddr> = handle
            .with_chitchat(|chitchat| {
                chitchat.self_node_state().set(KEY_LEAVING, LEAVING_VALUE);
                live_peer_addrs(chitchat)
            })
            .await;
        tracing::info!(node = %self.me.node, peers = peers.len(), "leaving the cluster");
        let deadline = tokio::time::Instant::now() + LEAVE_ANNOUNCE_FOR;
        for round in 1..=LEAVE_ROUNDS {
            for peer in &peers {
                // A peer answering this SYN gets the leave in the ACK that follows.
                if handle.gossip(*peer).is_err() {
                    return;
                }
            }
            let next = tokio::time::Instant::now() + gossip.interval;
            if round == LEAVE_ROUNDS || next > deadline {
                break;
            }
            tokio::time::sleep_until(next).await;
        }
    }

    /// Stops gossip (peers that were not told of a leave detect this node dead) and this
    /// module's tasks. Idempotent; a cluster of one has nothing to stop.
    pub(crate) async fn shutdown(&self) {
        let Some(gossip) = &self.gossip else { return };
        let handle = gossip.handle.lock().await.take();
        if let Some(handle) = handle
            && let Err(error) = handle.shutdown().await
        {
            tracing::warn!(error = %format!("{error:#}"), "gossip stopped with an error");
        }
        if !gossip.owner.shutdown(TASKS_GRACE).await {
            tracing::warn!("membership tasks still running after shutdown");
        }
    }
}

/// Builds and checks this node's own member: what peers would refuse, we refuse to send.
/// This node as a member; `gossiped` checks the addresses too (a cluster of one advertises
/// them to nobody, so its bus port may be 0 and its listeners unspecified).
fn own_member(
    me: NodeIncarnation,
    advertised: NodeAddresses,
    gossiped: bool,
) -> Result<Member, ClusterError> {
    let invalid = |what| move |problem| ClusterError::InvalidAdvertised { what, problem };
    view::validate_node_name(me.node.as_str()).map_err(invalid("node name"))?;
    if gossiped {
        view::check_peer_addr(advertised.bus).map_err(invalid("bus address"))?;
        view::check_peer_addr(advertised.http).map_err(invalid("http address"))?;
    }
    let region = view::parse_region(advertised.region.as_deref()).map_err(invalid("region"))?;
    view::validate_version(&advertised.version).map_err(invalid("version"))?;
    Ok(Member {
        node: me,
        bus: advertised.bus,
        http: advertised.http,
        region,
        version: advertised.version,
    })
}

/// The gossip keys this node starts with.
fn own_key_values(me: &Member) -> Vec<(String, String)> {
    let mut kvs = vec![
        (KEY_BUS.to_string(), me.bus.to_string()),
        (KEY_HTTP.to_string(), me.http.to_string()),
        (KEY_VERSION.to_string(), me.version.clone()),
    ];
    if let Some(region) = &me.region {
        kvs.push((KEY_REGION.to_string(), region.clone()));
    }
    kvs
}

fn live_peer_addrs(chitchat: &Chitchat) -> Vec<SocketAddr> {
    let me = chitchat.self_chitchat_id();
    chitchat
        .live_nodes()
        .filter(|id| *id != me)
        .map(|id| id.gossip_advertise_addr)
        .collect()
}

/// The address to advertise when `ADVERTISE_ADDR` is unset: the local end of the route to the
/// first seed, else the first non-loopback address of the node name, else 127.0.0.1.
async fn default_advertise_ip(
    seeds: &std::collections::BTreeSet<SocketAddr>,
    node_name: &str,
) -> IpAddr {
    for seed in seeds {
        let bind: SocketAddr = match seed {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        // Connecting a UDP socket sends nothing; it only picks the route and local address.
        if let Ok(probe) = tokio::net::UdpSocket::bind(bind).await
            && probe.connect(seed).await.is_ok()
            && let Ok(local) = probe.local_addr()
            && !local.ip().is_unspecified()
        {
            return local.ip();
        }
    }
    let by_name = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::lookup_host((node_name, 0)),
    )
    .await;
    if let Ok(Ok(mut addrs)) = by_name
        && let Some(addr) = addrs.find(|a| !a.ip().is_loopback())
    {
        return addr.ip();
    }
    tracing::warn!("no address to advertise found: using 127.0.0.1 (set ADVERTISE_ADDR)");
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// Turns every change of chitchat's live set into a new view and events.
async fn watch_live_set(
    mut live: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    mut tracker: Tracker,
    view_tx: watch::Sender<Arc<MembershipView>>,
    events_tx: broadcast::Sender<MembershipEvent>,
) {
    loop {
        // Copy our keys out under the watch's read lock; nothing awaits while it is held.
        let candidates: Vec<Candidate> = live
            .borrow_and_update()
            .iter()
            .map(|(id, state)| Candidate::read(&id.node_id, id.generation_id, |k| state.get(k)))
            .collect();
        let events = tracker.apply(&candidates);
        let next = tracker.view();
        view_tx.send_if_modified(|view| {
            if **view == next {
                return false;
            }
            *view = Arc::new(next);
            true
        });
        for event in events {
            match &event {
                MembershipEvent::Joined(member) => {
                    tracing::info!(node = %member.node, bus = %member.bus, "member joined");
                }
                MembershipEvent::Left { node, graceful } => {
                    tracing::info!(%node, graceful, "member left");
                }
            }
            // No receiver is fine: the view holds the state.
            let _ = events_tx.send(event);
        }
        if live.changed().await.is_err() {
            return;
        }
    }
}

/// Re-resolves the seeds every `period` and gossips to addresses of no known node, so nodes
/// that appeared behind `DNS_NODES` after start (or were unreachable then) are found.
async fn refresh_seeds(
    specs: Vec<SeedSpec>,
    period: Duration,
    me: SocketAddr,
    handle: Arc<Mutex<Option<ChitchatHandle>>>,
    other_seeds: Arc<AtomicUsize>,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate; start resolved already
    loop {
        ticks.tick().await;
        let addrs = resolve(&specs).await;
        other_seeds.store(
            addrs.iter().filter(|a| **a != me).count(),
            Ordering::Relaxed,
        );
        let guard = handle.lock().await;
        let Some(handle) = guard.as_ref() else { return };
        let known: HashSet<SocketAddr> = handle
            .with_chitchat(|chitchat| {
                chitchat
                    .node_states()
                    .keys()
                    .map(|id| id.gossip_advertise_addr)
                    .collect()
            })
            .await;
        for addr in addrs {
            if addr != me && !known.contains(&addr) {
                tracing::debug!(seed = %addr, "gossiping to a new seed address");
                if handle.gossip(addr).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
