//! Links and the tasks that make and run them.
//!
//! A [`Link`] is one authenticated connection to a peer run: its bounded send queue, its pending
//! requests and counters. [`run_link`] announces it (`peer_up`, after a replaced link's
//! `peer_down`), spawns its writer and reads its frames until it stops, the peer finishes or the
//! connection fails, then unregisters it, fails its pending requests and announces `peer_down`.
//! [`dial_loop`] dials one listed peer with backoff; [`accept_loop`] takes inbound connections
//! and runs the acceptor's handshake for each in a task of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, Incoming, SendStream};
use realtime_proto::bus::{Frame, NodeRun, Response};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::framing::{Batch, FrameReader, FramingError};
use super::handshake::{
    self, CLOSE_INVALID_MESSAGE, CLOSE_NORMAL, HandshakeError, Refusal, Verified,
};
use super::{
    Bus, HANDSHAKE_TIMEOUT, LISTING_WAIT, MAX_FRAME_BYTES, PeerStats, REFUSAL_LOGS_PER_SECOND,
    Shared, Totals, lock,
};
use crate::error::{ErrorCode, OperationalError};

/// First dial retry delay; doubles per failure.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest dial retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A writer stops adding queued frames to one write at this many bytes.
const MAX_BATCH_BYTES: u64 = 256 * 1024;
/// How long a new link waits for the run it replaces to deliver its `peer_down`.
const REPLACE_WAIT: Duration = Duration::from_secs(1);
/// A repeated dial failure of the same kind is logged again after this long.
const DIAL_LOG_REPEAT: Duration = Duration::from_secs(30);
/// Drops on one link are logged at most this often.
const DROP_LOG_EVERY: Duration = Duration::from_secs(1);

/// One authenticated connection to a peer run.
pub(super) struct Link {
    pub(super) id: u64,
    pub(super) run: NodeRun,
    pub(super) conn: Connection,
    queue: mpsc::Sender<Bytes>,
    capacity: usize,
    /// Stops the link now (unlisted, replaced, shut down, writer failed).
    pub(super) stop: CancellationToken,
    /// Asks the writer to write what is queued and finish its stream.
    pub(super) flush: CancellationToken,
    /// Cancelled when the writer is done (flushed, stopped or failed).
    pub(super) flushed: CancellationToken,
    /// Cancelled when the link is down and its `peer_down` was delivered.
    pub(super) ended: CancellationToken,
    /// Requests sent on this link that await a reply. A std mutex: short sections, no await.
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    next_request: AtomicU64,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    frames_dropped: AtomicU64,
    /// When drops were last logged, and how many since. A std mutex: short sections.
    drop_log: Mutex<(Option<Instant>, u64)>,
}

impl Link {
    fn new(
        id: u64,
        run: NodeRun,
        conn: Connection,
        queue: mpsc::Sender<Bytes>,
        capacity: usize,
    ) -> Link {
        Link {
            id,
            run,
            conn,
            queue,
            capacity,
            stop: CancellationToken::new(),
            flush: CancellationToken::new(),
            flushed: CancellationToken::new(),
            ended: CancellationToken::new(),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            frames_sent: AtomicU64::new(0),
            frames_received: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            drop_log: Mutex::new((None, 0)),
        }
    }

    /// Queues a frame; false when the queue is full (dropped, counted) or the link is closing.
    pub(super) fn enqueue(&self, frame: Bytes, totals: &Totals) -> bool {
        match self.queue.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.frames_dropped.fetch_add(1, Ordering::Relaxed);
                totals.frames_dropped.fetch_add(1, Ordering::Relaxed);
                self.log_drop();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn log_drop(&self) {
        let mut log = lock(&self.drop_log);
        log.1 += 1;
        let now = Instant::now();
        if log
            .0
            .is_none_or(|at| now.duration_since(at) >= DROP_LOG_EVERY)
        {
            tracing::warn!(
                peer = %self.run.name,
                incarnation = self.run.incarnation,
                dropped = log.1,
                queue_frames = self.capacity,
                error_code = %ErrorCode::SlowConsumer,
                "bus send queue full: frames dropped"
            );
            *log = (Some(now), 0);
        }
    }

    /// Registers a request; returns its id and where its reply will arrive.
    pub(super) fn start_request(&self) -> (u64, oneshot::Receiver<Response>) {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        (id, rx)
    }

    /// Hands a reply to its request; false when none waits for it (timed out, or never sent).
    fn complete(&self, id: u64, response: Response) -> bool {
        match lock(&self.pending).remove(&id) {
            Some(waiter) => waiter.send(response).is_ok(),
            None => false,
        }
    }

    /// Returns this link's counters.
    pub(super) fn stats(&self) -> PeerStats {
        PeerStats {
            peer: self.run.clone(),
            queue_depth: self.capacity - self.queue.capacity(),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            frames_received: self.frames_received.load(Ordering::Relaxed),
            frames_dropped: self.frames_dropped.load(Ordering::Relaxed),
        }
    }
}

/// Removes a pending request when [`Bus::request`] ends, however it ends.
pub(super) struct PendingRequest<'a> {
    link: &'a Link,
    id: u64,
}

impl<'a> PendingRequest<'a> {
    /// Guards request `id` of `link`.
    pub(super) fn new(link: &'a Link, id: u64) -> PendingRequest<'a> {
        PendingRequest { link, id }
    }
}

impl Drop for PendingRequest<'_> {
    fn drop(&mut self) {
        lock(&self.link.pending).remove(&self.id);
    }
}

/// A link just registered, not yet running.
pub(super) struct Registered {
    link: Arc<Link>,
    queue: mpsc::Receiver<Bytes>,
    /// The link of the same node it replaced, if any (already told to stop).
    replaced: Option<Arc<Link>>,
}

impl Shared {
    /// Makes `conn` the link to `run`, replacing an older link of the same node.
    ///
    /// # Errors
    /// [`HandshakeError::Refused`]: `ShuttingDown`, `NotListed` (membership changed meanwhile),
    /// or `Superseded` (a newer run is linked).
    fn register(&self, run: &NodeRun, conn: &Connection) -> Result<Registered, HandshakeError> {
        let mut state = lock(&self.state);
        if state.closing {
            return Err(HandshakeError::refused(
                Refusal::ShuttingDown,
                "bus closing",
            ));
        }
        if state.listed.get(&run.name).map(|(listed, _)| listed) != Some(run) {
            return Err(HandshakeError::refused(
                Refusal::NotListed,
                format!("{}@{} is not listed", run.name, run.incarnation),
            ));
        }
        if let Some(existing) = state.links.get(&run.name)
            && existing.run.incarnation > run.incarnation
        {
            return Err(HandshakeError::refused(
                Refusal::Superseded,
                format!("{}@{} is linked", run.name, existing.run.incarnation),
            ));
        }
        let (tx, queue) = mpsc::channel(self.queue_frames);
        let id = self.next_link_id.fetch_add(1, Ordering::Relaxed);
        let link = Arc::new(Link::new(
            id,
            run.clone(),
            conn.clone(),
            tx,
            self.queue_frames,
        ));
        let replaced = state.links.insert(run.name.clone(), link.clone());
        if let Some(old) = &replaced {
            old.stop.cancel();
        }
        Ok(Registered {
            link,
            queue,
            replaced,
        })
    }

    /// Removes `link` from the table unless another link replaced it already.
    fn unregister(&self, link: &Link) {
        let mut state = lock(&self.state);
        if state
            .links
            .get(&link.run.name)
            .is_some_and(|current| current.id == link.id)
        {
            state.links.remove(&link.run.name);
        }
    }

    fn count_refusal(&self, error: &HandshakeError) {
        if error.refusal().is_some() {
            self.totals
                .handshakes_refused
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How a link ended.
enum LinkEnd {
    /// Stopped by this node.
    Stopped,
    /// The peer finished its frame stream (it is shutting down).
    PeerFinished,
    /// The connection or stream failed.
    Lost(String),
    /// The peer sent something that is not a valid frame.
    Invalid(String),
}

/// Announces a registered link, runs it until it ends, and announces its end.
async fn run_link(shared: Arc<Shared>, registered: Registered, side: &'static str) {
    let Registered {
        link,
        queue,
        replaced,
    } = registered;
    if let Some(old) = replaced {
        // The replaced run's peer_down comes before this run's peer_up.
        let _ = tokio::time::timeout(REPLACE_WAIT, old.ended.cancelled()).await;
    }
    shared.handler.peer_up(&link.run);
    tracing::info!(
        peer = %link.run.name,
        incarnation = link.run.incarnation,
        remote = %link.conn.remote_address(),
        side,
        "bus link up"
    );
    shared.owner.spawn(
        "bus link writer",
        write_frames(shared.clone(), link.clone(), queue),
    );
    let end = tokio::select! {
        () = link.stop.cancelled() => LinkEnd::Stopped,
        end = read_frames(&shared, &link) => end,
        end = unexpected_streams(&link.conn) => end,
    };
    shared.unregister(&link);
    link.stop.cancel();
    // Dropping the waiters fails every pending request of this link.
    lock(&link.pending).clear();
    let reason = match &end {
        LinkEnd::Stopped => {
            link.conn.close(CLOSE_NORMAL, b"link closed");
            "closed by this node".to_string()
        }
        LinkEnd::PeerFinished => {
            link.conn.close(CLOSE_NORMAL, b"link closed");
            "the peer closed it".to_string()
        }
        LinkEnd::Lost(reason) => format!("lost: {reason}"),
        LinkEnd::Invalid(reason) => {
            shared.totals.invalid_frames.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                peer = %link.run.name,
                incarnation = link.run.incarnation,
                error_code = %ErrorCode::InvalidPeerMessage,
                reason = %reason,
                "invalid frame from bus peer: closing the link"
            );
            link.conn.close(CLOSE_INVALID_MESSAGE, b"invalid frame");
            format!("invalid frame: {reason}")
        }
    };
    shared.handler.peer_down(&link.run);
    tracing::info!(
        peer = %link.run.name,
        incarnation = link.run.incarnation,
        reason = %reason,
        "bus link down"
    );
    link.ended.cancel();
}

/// Reads and dispatches the peer's frames until the stream ends or fails.
async fn read_frames(shared: &Shared, link: &Link) -> LinkEnd {
    let recv = match link.conn.accept_uni().await {
        Ok(recv) => recv,
        Err(error) => return LinkEnd::Lost(error.to_string()),
    };
    let mut reader = FrameReader::new(recv, MAX_FRAME_BYTES);
    loop {
        let bytes = match reader.next().await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return LinkEnd::PeerFinished,
            Err(FramingError::Read(error)) => return LinkEnd::Lost(error.to_string()),
            Err(error) => return LinkEnd::Invalid(error.to_string()),
        };
        link.frames_received.fetch_add(1, Ordering::Relaxed);
        shared
            .totals
            .frames_received
            .fetch_add(1, Ordering::Relaxed);
        shared.totals.bytes_received.fetch_add(
            (bytes.len() + super::framing::PREFIX_BYTES) as u64,
            Ordering::Relaxed,
        );
        let frame = match realtime_proto::decode::<Frame>(&bytes) {
            Ok(frame) => frame,
            Err(error) => return LinkEnd::Invalid(error.to_string()),
        };
        match frame {
            Frame::Request { id, request } => {
                let response = shared.handler.request(&link.run, request);
                let reply = match Bus::encode(&Frame::Reply { id, response }) {
                    Ok(reply) => reply,
                    Err(error) => {
                        tracing::warn!(peer = %link.run.name, error = %error, error_code = %error.code(), "bus reply cannot be encoded");
                        let failed = Frame::Reply {
                            id,
                            response: Response::Error("reply too large".to_string()),
                        };
                        match Bus::encode(&failed) {
                            Ok(reply) => reply,
                            Err(_) => continue,
                        }
                    }
                };
                if !link.enqueue(reply, &shared.totals) {
                    tracing::debug!(peer = %link.run.name, id, "bus reply not queued");
                }
            }
            Frame::Reply { id, response } => {
                if !link.complete(id, response) {
                    tracing::debug!(peer = %link.run.name, id, "bus reply for no pending request (late)");
                }
            }
            frame => shared.handler.frame(&link.run, frame),
        }
    }
}

/// Resolves when the peer opens a stream the protocol has no use for (a bidirectional stream
/// after the handshake); never when the connection just ends (the reader reports that).
async fn unexpected_streams(conn: &Connection) -> LinkEnd {
    match conn.accept_bi().await {
        Ok(_) => LinkEnd::Invalid("unexpected bidirectional stream".to_string()),
        Err(_) => std::future::pending().await,
    }
}

/// Opens this side's frame stream and writes queued frames in batches until the link stops;
/// on `flush`, writes what is queued, finishes the stream and waits for the peer's
/// acknowledgement (the caller bounds that with `stop`).
async fn write_frames(shared: Arc<Shared>, link: Arc<Link>, mut queue: mpsc::Receiver<Bytes>) {
    let opened = tokio::select! {
        () = link.stop.cancelled() => None,
        opened = link.conn.open_uni() => opened.ok(),
    };
    let Some(mut send) = opened else {
        link.stop.cancel();
        link.flushed.cancel();
        return;
    };
    let mut batch = Batch::default();
    loop {
        let first = tokio::select! {
            biased;
            () = link.stop.cancelled() => break,
            () = link.flush.cancelled() => {
                flush_queue(&shared, &link, &mut queue, &mut send, &mut batch).await;
                break;
            }
            frame = queue.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
        };
        batch.push(first);
        while batch.bytes() < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(frame) => batch.push(frame),
                Err(_) => break,
            }
        }
        if !write_batch(&shared, &link, &mut send, &mut batch).await {
            link.stop.cancel();
            break;
        }
    }
    link.flushed.cancel();
}

/// Writes every frame still queued, finishes the stream and waits until the peer acknowledged
/// it (or the link stops).
async fn flush_queue(
    shared: &Shared,
    link: &Link,
    queue: &mut mpsc::Receiver<Bytes>,
    send: &mut SendStream,
    batch: &mut Batch,
) {
    loop {
        while batch.bytes() < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(frame) => batch.push(frame),
                Err(_) => break,
            }
        }
        if batch.frames() == 0 {
            break;
        }
        if !write_batch(shared, link, send, batch).await {
            return;
        }
    }
    if send.finish().is_ok() {
        tokio::select! {
            () = link.stop.cancelled() => {}
            _ = send.stopped() => {}
        }
    }
}

/// Writes one batch; false when the stream failed or the link stopped meanwhile.
async fn write_batch(
    shared: &Shared,
    link: &Link,
    send: &mut SendStream,
    batch: &mut Batch,
) -> bool {
    let (frames, bytes) = (batch.frames(), batch.bytes());
    let mut chunks = batch.take_chunks();
    let written = tokio::select! {
        biased;
        () = link.stop.cancelled() => false,
        written = send.write_all_chunks(&mut chunks) => written.is_ok(),
    };
    if written {
        link.frames_sent.fetch_add(frames, Ordering::Relaxed);
        shared
            .totals
            .frames_sent
            .fetch_add(frames, Ordering::Relaxed);
        shared.totals.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    }
    written
}

/// Exponential backoff with a little jitter.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }

    /// Returns the delay before the next attempt (±10 %) and doubles it, up to the maximum.
    fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        base.mul_f64(rand::random_range(0.9..1.1))
    }
}

/// Logs dial failures: each new kind of failure once, the same kind again after
/// [`DIAL_LOG_REPEAT`], the rest at debug level.
#[derive(Default)]
struct DialLog {
    last: Option<(Option<Refusal>, Instant)>,
    failures: u64,
}

impl DialLog {
    fn failure(&mut self, target: &NodeRun, addr: SocketAddr, error: &HandshakeError) {
        self.failures += 1;
        let kind = error.refusal();
        let now = Instant::now();
        let due = self
            .last
            .is_none_or(|(last, at)| last != kind || now.duration_since(at) >= DIAL_LOG_REPEAT);
        if !due {
            tracing::debug!(peer = %target.name, %addr, failures = self.failures, error = %error, "bus dial failed");
            return;
        }
        self.last = Some((kind, now));
        if error.is_alarming() {
            tracing::warn!(
                peer = %target.name,
                incarnation = target.incarnation,
                %addr,
                failures = self.failures,
                error = %error,
                error_code = %error.code(),
                "bus dial refused"
            );
        } else {
            tracing::info!(
                peer = %target.name,
                incarnation = target.incarnation,
                %addr,
                failures = self.failures,
                error = %error,
                error_code = %error.code(),
                "bus dial failed; retrying"
            );
        }
    }
}

/// Dials `target` at `addr` until `stop`: after a failure or a link that ended, waits the
/// backoff and dials again.
pub(super) async fn dial_loop(
    shared: Arc<Shared>,
    target: NodeRun,
    addr: SocketAddr,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new();
    let mut log = DialLog::default();
    loop {
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            attempt = dial_once(&shared, &target, addr) => attempt,
        };
        match attempt {
            Ok(registered) => {
                backoff.reset();
                log = DialLog::default();
                run_link(shared.clone(), registered, "dialer").await;
            }
            Err(error) => {
                shared.count_refusal(&error);
                log.failure(&target, addr, &error);
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff.delay()) => {}
        }
    }
}

/// One connection attempt: TLS, the dialer's handshake, registration.
async fn dial_once(
    shared: &Shared,
    target: &NodeRun,
    addr: SocketAddr,
) -> Result<Registered, HandshakeError> {
    let connecting = shared
        .endpoint
        .connect_with(shared.client_config.clone(), addr, super::tls::SERVER_NAME)
        .map_err(|e| HandshakeError::Connection(e.to_string()))?;
    // A peer that does not answer TLS is down or unreachable: a connection failure, not a
    // refusal.
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => return Err(HandshakeError::Connection(error.to_string())),
        Err(_) => return Err(HandshakeError::Connection("no answer".to_string())),
    };
    // The acceptor may wait for its membership before it answers.
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT + LISTING_WAIT,
        handshake::dial(&shared.identity, &conn, target),
    )
    .await
    .unwrap_or_else(|_| {
        Err(HandshakeError::refused(
            Refusal::Timeout,
            "the peer did not finish the handshake in time",
        ))
    });
    handshake
        .and_then(|()| shared.register(target, &conn))
        .inspect_err(|error| error.close(&conn))
}

/// Accepts inbound connections until the endpoint closes; each handshake runs in its own task.
pub(super) async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
            tracing::debug!(remote = %incoming.remote_address(), "too many bus handshakes in progress: refused");
            incoming.refuse();
            continue;
        };
        shared
            .owner
            .spawn("bus inbound", inbound(shared.clone(), incoming, permit));
    }
}

/// Logs an inbound handshake failure (rate limited: a port open to the network must not flood
/// the log).
fn log_inbound_failure(shared: &Shared, remote: SocketAddr, error: &HandshakeError) {
    shared.count_refusal(error);
    if !error.is_alarming() {
        tracing::info!(%remote, error = %error, error_code = %error.code(), "bus peer not linked");
        return;
    }
    if let Some(suppressed) = lock(&shared.refusal_logs).allow(REFUSAL_LOGS_PER_SECOND) {
        tracing::warn!(
            %remote,
            error = %error,
            error_code = %error.code(),
            suppressed,
            "bus handshake refused"
        );
    }
}

/// The acceptor's side of one connection: TLS and handshake under [`HANDSHAKE_TIMEOUT`], the
/// listing wait, registration, `Welcome`, then the link.
async fn inbound(shared: Arc<Shared>, incoming: Incoming, permit: OwnedSemaphorePermit) {
    let remote = incoming.remote_address();
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(error) => {
            tracing::debug!(%remote, error = %error, "bus connection not accepted");
            return;
        }
    };
    let conn = match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            tracing::info!(%remote, error = %error, "bus tls handshake failed");
            return;
        }
        Err(_) => {
            let error = HandshakeError::refused(Refusal::Timeout, "tls handshake not finished");
            log_inbound_failure(&shared, remote, &error);
            return;
        }
    };
    let verified: Verified =
        match tokio::time::timeout_at(deadline, handshake::accept(&shared.identity, &conn)).await {
            Ok(Ok(verified)) => verified,
            Ok(Err(error)) => {
                log_inbound_failure(&shared, remote, &error);
                error.close(&conn);
                return;
            }
            Err(_) => {
                let error = HandshakeError::refused(
                    Refusal::Timeout,
                    format!("no valid hello and proof within {HANDSHAKE_TIMEOUT:?}"),
                );
                log_inbound_failure(&shared, remote, &error);
                error.close(&conn);
                return;
            }
        };
    let peer = verified.peer().clone();
    let registered = if shared.wait_listed(&peer, LISTING_WAIT).await {
        shared.register(&peer, &conn)
    } else {
        Err(HandshakeError::refused(
            Refusal::NotListed,
            format!("{}@{} is not listed", peer.name, peer.incarnation),
        ))
    };
    let registered = match registered {
        Ok(registered) => registered,
        Err(error) => {
            log_inbound_failure(&shared, remote, &error);
            if let Some(refusal) = error.refusal() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), verified.refuse(refusal)).await;
            }
            error.close(&conn);
            return;
        }
    };
    drop(permit);
    let welcomed =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, verified.welcome(&shared.identity)).await;
    if !matches!(welcomed, Ok(Ok(()))) {
        tracing::info!(peer = %peer.name, %remote, "bus peer left during the handshake");
        shared.unregister(&registered.link);
        registered.link.stop.cancel();
        registered.link.flushed.cancel();
        registered.link.ended.cancel();
        conn.close(CLOSE_NORMAL, b"handshake failed");
        return;
    }
    run_link(shared, registered, "acceptor").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_maximum_and_resets() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.delay()).collect();
        let near = |d: Duration, base: Duration| d >= base.mul_f64(0.9) && d <= base.mul_f64(1.1);
        assert!(near(delays[0], BACKOFF_INITIAL));
        assert!(near(delays[1], BACKOFF_INITIAL * 2));
        assert!(near(delays[2], BACKOFF_INITIAL * 4));
        assert!(near(delays[7], BACKOFF_MAX));
        backoff.reset();
        assert!(near(backoff.delay(), BACKOFF_INITIAL));
    }
}
