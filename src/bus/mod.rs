//! The inter-node bus: authenticated QUIC links to peer nodes, carrying [`Frame`]s in order.
//!
//! One QUIC connection per pair of nodes (quinn 0.11, rustls with ring). Which side dials is
//! fixed so both agree: the node whose name sorts lower dials, the other accepts. The bus links
//! to the runs [`Bus::set_peers`] lists (membership decides who they are): the dialer retries with
//! exponential backoff (100 ms doubling to 5 s, reset by a link that came up) while the run is
//! listed; links to runs no longer listed close; a newer incarnation of a node replaces its older
//! link (the old link's `peer_down` is delivered before the new one's `peer_up`).
//!
//! A connection becomes a link after the handshake of [`handshake`] (TLS with a throwaway
//! self-signed certificate and ALPN [`realtime_proto::bus::ALPN`], then hellos and HMAC proofs
//! over the cluster secret bound to the TLS exporter). The acceptor also waits up to
//! [`LISTING_WAIT`] for its own membership to list the dialer's run before it welcomes it, so
//! both ends only link runs they list. Nothing from a peer reaches the [`BusHandler`] before the
//! handshake succeeded.
//!
//! After the handshake each side opens one unidirectional stream and sends all its frames on it,
//! each prefixed with its length (`u32` big endian, at most [`MAX_FRAME_BYTES`], checked before
//! anything is allocated), so the frames of one sender arrive in the order it queued them.
//! Requests share that stream: [`Bus::request`] sends `Frame::Request { id, .. }` with an id
//! unique per link, the peer's reader calls [`BusHandler::request`] inline (it must be quick)
//! and queues `Frame::Reply { id, .. }` on its own stream, behind the frames it queued before.
//! A reply that comes after its request timed out is ignored. Every frame is untrusted input:
//! bytes that do not decode close that link (logged with `InvalidPeerMessage`) and nothing else.
//!
//! Each link has a bounded send queue (`queue_frames`). [`Bus::send`] never waits: when the
//! queue is full (the peer reads too slowly and QUIC flow control holds our writer) the frame is
//! dropped, counted and logged at most once a second per link (`SlowConsumer`). A writer task
//! per link drains the queue in batches (small frames copied into one buffer, large ones passed
//! through) and one reader per link dispatches what arrives. [`Bus::shutdown`] flushes every
//! queue (at most [`FLUSH_GRACE`]), then closes the links and the endpoint; every task of the
//! bus belongs to a child of the owner given to [`Bus::start`].
//!
//! What it must not do: interpret frames beyond requests and replies (the handler does), block a
//! caller of `send`, or log the secret.

mod framing;
mod handshake;
mod peer;
mod tls;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use realtime_proto::bus::{Frame, NodeRun, Request, Response};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::error::{ErrorCode, OperationalError};
use crate::tasks::Owner;
use crate::types::{NodeId, NodeIncarnation};

use handshake::{CLOSE_NORMAL, Identity};
use peer::Link;

/// The largest frame accepted or sent, in bytes (the codec's limit).
pub(crate) const MAX_FRAME_BYTES: usize = realtime_proto::MAX_MESSAGE_BYTES;
/// How long the acceptor's part of a handshake (TLS, hellos, proof) may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an acceptor waits for its membership to list a dialer that proved itself.
pub(crate) const LISTING_WAIT: Duration = Duration::from_secs(1);
/// How long [`Bus::shutdown`] lets the writers flush their queues.
pub(crate) const FLUSH_GRACE: Duration = Duration::from_secs(1);
/// Handshakes in progress at once; further connection attempts are refused.
const MAX_PENDING_HANDSHAKES: usize = 64;
/// How long `shutdown` waits for the bus's own tasks once the links are closed.
const TASKS_GRACE: Duration = Duration::from_secs(2);
/// Inbound refusals logged per second at most (the rest are counted).
const REFUSAL_LOGS_PER_SECOND: u32 = 10;

/// Settings of the bus.
#[derive(Debug)]
pub(crate) struct BusConfig {
    /// UDP address to listen on (`0.0.0.0:BUS_PORT`; tests use `127.0.0.1:0`).
    pub(crate) bind: SocketAddr,
    /// Peers with another cluster id are refused.
    pub(crate) cluster_id: String,
    /// The cluster secret (`CLUSTER_SECRET`) that keys the handshake proofs; must not be empty.
    pub(crate) secret: crate::config::Secret,
    /// Bound of each peer's send queue, in frames (default 16384).
    pub(crate) queue_frames: usize,
    /// How long [`Bus::request`] waits for a reply (default 5 s).
    pub(crate) request_timeout: Duration,
}

/// What the bus hands upward; `app` registers one. Calls come from the bus's tasks: none may
/// block or wait, and each may call back into the [`Bus`].
pub(crate) trait BusHandler: Send + Sync + 'static {
    /// A frame from an authenticated peer, in the order that peer sent it. Must not block.
    fn frame(&self, from: &NodeRun, frame: Frame);
    /// Answers a request of a peer (sync; it must be quick).
    fn request(&self, from: &NodeRun, request: Request) -> Response;
    /// An authenticated connection to `peer` is up (either direction).
    fn peer_up(&self, peer: &NodeRun);
    /// The connection to `peer` ended.
    fn peer_down(&self, peer: &NodeRun);
}

/// The bus could not start, or a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BusError {
    /// A setting is unusable.
    #[error("invalid bus setting {what}: {problem}")]
    Invalid {
        /// Which setting.
        what: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The UDP socket could not be bound.
    #[error("cannot bind the bus to {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The TLS certificate or configuration could not be made.
    #[error("bus tls setup failed: {0}")]
    Tls(String),
    /// A frame exceeds [`MAX_FRAME_BYTES`].
    #[error("frame cannot be encoded: {0}")]
    Unencodable(String),
}

impl OperationalError for BusError {
    fn code(&self) -> ErrorCode {
        match self {
            BusError::Invalid { .. } | BusError::Bind { .. } | BusError::Tls(_) => {
                ErrorCode::InvalidConfiguration
            }
            BusError::Unencodable(_) => ErrorCode::PayloadSizeExceeded,
        }
    }

    fn client_message(&self) -> String {
        match self {
            BusError::Invalid { .. } | BusError::Bind { .. } | BusError::Tls(_) => {
                "cluster bus is unavailable".to_string()
            }
            BusError::Unencodable(_) => "message is too large for the cluster bus".to_string(),
        }
    }
}

/// A request to a peer failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RpcError {
    /// No reply within the request timeout.
    #[error("rpc call timed out")]
    Timeout,
    /// The peer answered `Response::Error`, the link was lost, or the request could not be
    /// queued, with the reason.
    #[error("rpc call failed: {0}")]
    Failed(String),
    /// The peer is not linked.
    #[error("peer not linked")]
    NotLinked,
}

impl OperationalError for RpcError {
    fn code(&self) -> ErrorCode {
        match self {
            RpcError::Timeout => ErrorCode::TimeoutOnRpcCall,
            RpcError::Failed(_) => ErrorCode::ErrorOnRpcCall,
            RpcError::NotLinked => ErrorCode::RealtimeNodeDisconnected,
        }
    }

    fn client_message(&self) -> String {
        match self {
            RpcError::Timeout => "rpc call to a cluster node timed out",
            RpcError::Failed(_) => "rpc call to a cluster node failed",
            RpcError::NotLinked => "cluster node not connected",
        }
        .to_string()
    }
}

/// Counters of the bus since start, and each linked peer's now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BusStats {
    /// Frames written to peers' streams.
    pub(crate) frames_sent: u64,
    /// Bytes written to peers' streams, length prefixes included.
    pub(crate) bytes_sent: u64,
    /// Frames read from peers' streams.
    pub(crate) frames_received: u64,
    /// Bytes read from peers' streams, length prefixes included.
    pub(crate) bytes_received: u64,
    /// Frames dropped because a peer's send queue was full.
    pub(crate) frames_dropped: u64,
    /// Handshakes refused, by either side.
    pub(crate) handshakes_refused: u64,
    /// Links closed because the peer sent an invalid frame.
    pub(crate) invalid_frames: u64,
    /// Every linked peer, sorted by name.
    pub(crate) peers: Vec<PeerStats>,
}

/// One link's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerStats {
    /// The linked run.
    pub(crate) peer: NodeRun,
    /// Frames queued and not yet written.
    pub(crate) queue_depth: usize,
    /// Frames written on this link.
    pub(crate) frames_sent: u64,
    /// Frames read on this link.
    pub(crate) frames_received: u64,
    /// Frames dropped on this link's full queue.
    pub(crate) frames_dropped: u64,
}

/// Returns the wire form of a node run.
pub(crate) fn node_run(incarnation: &NodeIncarnation) -> NodeRun {
    NodeRun {
        name: incarnation.node.as_str().to_string(),
        incarnation: incarnation.incarnation,
    }
}

/// Returns the node run of a wire form.
pub(crate) fn node_incarnation(run: &NodeRun) -> NodeIncarnation {
    NodeIncarnation {
        node: NodeId::new(run.name.as_str()),
        incarnation: run.incarnation,
    }
}

/// The bus of this node: its endpoint, links and tasks. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Bus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("me", &self.shared.me)
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

/// Everything the bus's tasks share.
struct Shared {
    me: NodeRun,
    identity: Identity,
    queue_frames: usize,
    request_timeout: Duration,
    handler: Arc<dyn BusHandler>,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    local_addr: SocketAddr,
    owner: Owner,
    /// A std mutex: every section is short and none awaits.
    state: Mutex<State>,
    /// Bumped by every `set_peers`, for acceptors waiting for a dialer to be listed.
    listing: watch::Sender<u64>,
    handshakes: Arc<Semaphore>,
    next_link_id: AtomicU64,
    totals: Totals,
    refusal_logs: Mutex<LogBudget>,
}

/// Links, listed peers and dialers.
#[derive(Default)]
struct State {
    /// The runs to link with, by name (this node excluded).
    listed: HashMap<String, (NodeRun, SocketAddr)>,
    /// Authenticated links, by peer name.
    links: HashMap<String, Arc<Link>>,
    /// Running dial loops, by peer name (only peers whose name sorts higher than ours).
    dialers: HashMap<String, Dialer>,
    /// `shutdown` began: nothing new is linked or dialed.
    closing: bool,
}

/// A running dial loop.
struct Dialer {
    target: NodeRun,
    addr: SocketAddr,
    stop: CancellationToken,
}

/// Bus-wide counters.
#[derive(Default)]
struct Totals {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    frames_dropped: AtomicU64,
    handshakes_refused: AtomicU64,
    invalid_frames: AtomicU64,
}

/// At most a few log lines per second; the rest are counted and reported with the next line.
struct LogBudget {
    window: Instant,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    fn new() -> LogBudget {
        LogBudget {
            window: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }

    /// Returns `Some(suppressed since the last allowed line)` when a line may be logged now.
    fn allow(&mut self, per_second: u32) -> Option<u64> {
        let now = Instant::now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.used = 0;
        }
        if self.used < per_second {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Bus {
    /// Binds the endpoint (a fresh self-signed certificate) and starts accepting peers; tasks run
    /// under a child of `owner`. No peer is dialed before [`Bus::set_peers`].
    ///
    /// # Errors
    /// [`BusError`]: an empty secret or cluster id, a zero queue bound or timeout, an invalid node
    /// name, an address that cannot be bound, or a TLS setup failure.
    pub(crate) async fn start(
        config: BusConfig,
        me: NodeRun,
        handler: Arc<dyn BusHandler>,
        owner: &Owner,
    ) -> Result<Bus, BusError> {
        let invalid = |what, problem: &str| BusError::Invalid {
            what,
            problem: problem.to_string(),
        };
        if config.secret.expose().is_empty() {
            return Err(invalid("CLUSTER_SECRET", "must not be empty"));
        }
        if config.cluster_id.is_empty() || config.cluster_id.len() > handshake::MAX_NAME_BYTES {
            return Err(invalid("CLUSTER_ID", "must have 1-255 bytes"));
        }
        if config.queue_frames == 0 {
            return Err(invalid("queue_frames", "must be positive"));
        }
        if config.request_timeout.is_zero() {
            return Err(invalid("request_timeout", "must be positive"));
        }
        handshake::valid_name(&me.name).map_err(|problem| invalid("NODE_NAME", &problem))?;

        let endpoint =
            quinn::Endpoint::server(tls::server_config()?, config.bind).map_err(|e| {
                BusError::Bind {
                    addr: config.bind,
                    reason: e.to_string(),
                }
            })?;
        let local_addr = endpoint.local_addr().map_err(|e| BusError::Bind {
            addr: config.bind,
            reason: e.to_string(),
        })?;
        let shared = Arc::new(Shared {
            identity: Identity::new(
                config.cluster_id.clone(),
                me.clone(),
                config.secret.expose().as_bytes(),
            ),
            me,
            queue_frames: config.queue_frames,
            request_timeout: config.request_timeout,
            handler,
            endpoint,
            client_config: tls::client_config()?,
            local_addr,
            owner: owner.child(),
            state: Mutex::new(State::default()),
            listing: watch::channel(0).0,
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
            next_link_id: AtomicU64::new(1),
            totals: Totals::default(),
            refusal_logs: Mutex::new(LogBudget::new()),
        });
        shared
            .owner
            .spawn("bus accept", peer::accept_loop(shared.clone()));
        tracing::info!(
            node = %shared.me.name,
            incarnation = shared.me.incarnation,
            %local_addr,
            cluster_id = %config.cluster_id,
            "bus listening"
        );
        Ok(Bus { shared })
    }

    /// Returns the UDP address the endpoint is bound to.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Sets the peers this node should be linked with (from membership). Links to runs not
    /// listed close; listed runs whose name sorts higher than ours are dialed (with backoff,
    /// retried while listed); the others are expected to dial us. Entries with this node's
    /// name are ignored; of several runs of one name the highest incarnation counts.
    pub(crate) fn set_peers(&self, peers: &[(NodeRun, SocketAddr)]) {
        let shared = &self.shared;
        let mut listed: HashMap<String, (NodeRun, SocketAddr)> = HashMap::new();
        for (run, addr) in peers {
            if run.name == shared.me.name {
                continue;
            }
            match listed.get(&run.name) {
                Some((known, _)) if known.incarnation >= run.incarnation => {}
                _ => {
                    listed.insert(run.name.clone(), (run.clone(), *addr));
                }
            }
        }
        let mut spawn = Vec::new();
        {
            let mut state = lock(&shared.state);
            if state.closing {
                return;
            }
            for link in state.links.values() {
                if listed.get(&link.run.name).map(|(run, _)| run) != Some(&link.run) {
                    tracing::info!(peer = %link.run.name, incarnation = link.run.incarnation, "bus peer no longer listed: closing its link");
                    link.stop.cancel();
                }
            }
            state.dialers.retain(|name, dialer| {
                let keep = listed
                    .get(name)
                    .is_some_and(|(run, addr)| *run == dialer.target && *addr == dialer.addr);
                if !keep {
                    dialer.stop.cancel();
                }
                keep
            });
            for (name, (run, addr)) in &listed {
                if shared.me.name < *name && !state.dialers.contains_key(name) {
                    let stop = CancellationToken::new();
                    state.dialers.insert(
                        name.clone(),
                        Dialer {
                            target: run.clone(),
                            addr: *addr,
                            stop: stop.clone(),
                        },
                    );
                    spawn.push((run.clone(), *addr, stop));
                }
            }
            state.listed = listed;
        }
        for (run, addr, stop) in spawn {
            shared.owner.spawn(
                "bus dialer",
                peer::dial_loop(shared.clone(), run, addr, stop),
            );
        }
        shared.listing.send_modify(|generation| *generation += 1);
    }

    /// Encodes a frame once, for sending to several peers.
    ///
    /// # Errors
    /// [`BusError::Unencodable`] when it exceeds [`MAX_FRAME_BYTES`].
    pub(crate) fn encode(frame: &Frame) -> Result<Bytes, BusError> {
        realtime_proto::encode(frame)
            .map(Bytes::from)
            .map_err(|e| BusError::Unencodable(e.to_string()))
    }

    /// Queues an encoded frame for one peer (by node name). Returns false when the peer is not
    /// linked, the frame is over [`MAX_FRAME_BYTES`], or the queue is full (then the frame is
    /// dropped and counted). Never blocks, never awaits.
    pub(crate) fn send(&self, peer: &str, frame: Bytes) -> bool {
        if frame.len() > MAX_FRAME_BYTES {
            tracing::warn!(
                peer,
                bytes = frame.len(),
                error_code = %ErrorCode::PayloadSizeExceeded,
                "bus frame over the size limit not sent"
            );
            return false;
        }
        match self.shared.link(peer) {
            Some(link) => link.enqueue(frame, &self.shared.totals),
            None => false,
        }
    }

    /// Sends a request to a peer and waits for its reply, at most the request timeout.
    ///
    /// # Errors
    /// [`RpcError::Timeout`] when no reply came in time; [`RpcError::Failed`] for a
    /// `Response::Error`, a lost link or a full queue; [`RpcError::NotLinked`].
    pub(crate) async fn request(&self, peer: &str, request: Request) -> Result<Response, RpcError> {
        let link = self.shared.link(peer).ok_or(RpcError::NotLinked)?;
        let (id, reply) = link.start_request();
        // Forgets the pending entry however this future ends (timeout, drop).
        let _pending = peer::PendingRequest::new(&link, id);
        let frame = Bus::encode(&Frame::Request { id, request })
            .map_err(|e| RpcError::Failed(e.to_string()))?;
        if !link.enqueue(frame, &self.shared.totals) {
            return Err(RpcError::Failed(
                "the send queue to the peer is full or closed".to_string(),
            ));
        }
        match tokio::time::timeout(self.shared.request_timeout, reply).await {
            Err(_) => Err(RpcError::Timeout),
            Ok(Err(_)) => Err(RpcError::Failed(
                "the link to the peer was lost".to_string(),
            )),
            Ok(Ok(Response::Error(reason))) => Err(RpcError::Failed(reason)),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Returns the linked (authenticated) peers now, sorted.
    pub(crate) fn linked(&self) -> Vec<NodeRun> {
        let mut runs: Vec<NodeRun> = lock(&self.shared.state)
            .links
            .values()
            .map(|link| link.run.clone())
            .collect();
        runs.sort();
        runs
    }

    /// Returns the counters.
    pub(crate) fn stats(&self) -> BusStats {
        let totals = &self.shared.totals;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut peers: Vec<PeerStats> = lock(&self.shared.state)
            .links
            .values()
            .map(|link| link.stats())
            .collect();
        peers.sort_by(|a, b| a.peer.cmp(&b.peer));
        BusStats {
            frames_sent: get(&totals.frames_sent),
            bytes_sent: get(&totals.bytes_sent),
            frames_received: get(&totals.frames_received),
            bytes_received: get(&totals.bytes_received),
            frames_dropped: get(&totals.frames_dropped),
            handshakes_refused: get(&totals.handshakes_refused),
            invalid_frames: get(&totals.invalid_frames),
            peers,
        }
    }

    /// Stops dialing, flushes every link's queue (at most [`FLUSH_GRACE`]), closes the links
    /// (each `peer_down` is delivered) and the endpoint, and waits for the bus's tasks.
    pub(crate) async fn shutdown(&self) {
        let shared = &self.shared;
        let links: Vec<Arc<Link>> = {
            let mut state = lock(&shared.state);
            state.closing = true;
            state.listed.clear();
            for (_, dialer) in state.dialers.drain() {
                dialer.stop.cancel();
            }
            state.links.values().cloned().collect()
        };
        shared.listing.send_modify(|generation| *generation += 1);
        for link in &links {
            link.flush.cancel();
        }
        let flushed_by = tokio::time::Instant::now() + FLUSH_GRACE;
        for link in &links {
            let _ = tokio::time::timeout_at(flushed_by, link.flushed.cancelled()).await;
        }
        for link in &links {
            link.stop.cancel();
        }
        let ended_by = tokio::time::Instant::now() + FLUSH_GRACE;
        for link in &links {
            let _ = tokio::time::timeout_at(ended_by, link.ended.cancelled()).await;
        }
        shared.endpoint.close(CLOSE_NORMAL, b"shutdown");
        let _ = tokio::time::timeout(Duration::from_millis(500), shared.endpoint.wait_idle()).await;
        if !shared.owner.shutdown(TASKS_GRACE).await {
            tracing::warn!("bus tasks still running after shutdown");
        }
        tracing::info!(node = %shared.me.name, "bus stopped");
    }
}

impl Shared {
    /// Returns the link to a peer, by name.
    fn link(&self, peer: &str) -> Option<Arc<Link>> {
        lock(&self.state).links.get(peer).cloned()
    }

    /// Returns true when `run` is listed (and the bus is not closing).
    fn is_listed(&self, run: &NodeRun) -> bool {
        let state = lock(&self.state);
        !state.closing && state.listed.get(&run.name).map(|(listed, _)| listed) == Some(run)
    }

    /// Waits until `run` is listed, at most `within`.
    async fn wait_listed(&self, run: &NodeRun, within: Duration) -> bool {
        let mut changes = self.listing.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.is_listed(run) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }
}
