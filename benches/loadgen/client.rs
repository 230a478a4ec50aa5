//! The generator's connections: one task per WebSocket that connects, joins one topic, sends
//! heartbeats, publishes on an open-loop schedule when it is a publisher, and records every
//! delivery it reads.
//!
//! Timing: a stamp's `sent_ns` is taken just before the frame is queued with `feed()`; latency is
//! read just after the delivery is decoded, so it covers the generator's write, both kernel hops,
//! the server, and the generator's read queue (which grows when the generator itself saturates).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::HOST;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::stats::Histogram;
use super::wire::{self, Stamp, Vsn};

/// Step index carried by warm-up messages; they are delivered but not counted.
pub const WARMUP_STEP: u32 = u32::MAX;
const JOIN_REF: &str = "1";
/// Longest sleep between two publishing wake-ups; batches messages at high rates.
const MIN_PUBLISH_GAP: Duration = Duration::from_millis(1);
/// Most messages one publisher sends per wake-up, so a stalled generator cannot burst forever.
const MAX_BURST: u64 = 5_000;

static START: OnceLock<Instant> = OnceLock::new();

/// Returns nanoseconds since the generator's start `Instant` (shared by every task).
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Where and how the connections dial.
pub struct ClientConfig {
    /// WebSocket URL without query (`ws://127.0.0.1:4000/socket/websocket`).
    pub url: String,
    /// `Host` header value (`<tenant>.localhost`).
    pub host: String,
    /// JWT sent as `apikey` and as the join's `access_token`.
    pub token: String,
    /// Join private channels (`config.private`: the server checks RLS policies at join).
    pub private: bool,
    /// Serializer version.
    pub vsn: Vsn,
    /// User payload size, bytes.
    pub payload: usize,
    /// Local source addresses, used round-robin; empty means the kernel's choice.
    pub source_ips: Vec<IpAddr>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Other nodes of a cluster (`--spread-urls`): subscribers dial them round-robin, the
    /// publishers stay on `url`. Empty: everyone dials `url`.
    pub spread_urls: Vec<String>,
}

/// One connection's part in a scenario.
#[derive(Clone, Debug)]
pub struct ConnRole {
    /// Topic joined, `realtime:<name>`.
    pub topic: Arc<str>,
    /// Publisher index (0..publishers) if this connection publishes.
    pub publisher: Option<usize>,
    /// Deliveries expected per published message (topic members minus the sender).
    pub fanout: u64,
}

/// What publishers do now; changed by the orchestrator through a `watch`.
#[derive(Clone, Copy, Debug)]
pub struct Phase {
    /// Whether publishers send at all.
    pub active: bool,
    /// Step index stamped into messages (`WARMUP_STEP` to discard).
    pub step: u32,
    /// Messages per second for each publisher.
    pub rate_per_pub: f64,
    /// Schedule origin.
    pub epoch: Instant,
    /// Number of publishers, to spread their schedules evenly over one period.
    pub publishers: usize,
}

impl Phase {
    /// Returns the idle phase.
    pub fn idle() -> Self {
        Self {
            active: false,
            step: WARMUP_STEP,
            rate_per_pub: 0.0,
            epoch: Instant::now(),
            publishers: 1,
        }
    }
}

/// Counters of one measured step.
#[derive(Default)]
pub struct StepStats {
    /// Delivery latency, nanoseconds.
    pub latency: Histogram,
    /// Messages published.
    pub published: AtomicU64,
    /// Deliveries expected (published × fan-out).
    pub expected: AtomicU64,
    /// Deliveries seen.
    pub delivered: AtomicU64,
}

/// State shared by every connection task of one run.
pub struct Shared {
    /// One slot per measured step (including repeats).
    pub steps: Box<[StepStats]>,
    /// Connections that completed the join.
    pub joined: AtomicU64,
    /// Joins refused by the server.
    pub join_failed: AtomicU64,
    /// TCP or WebSocket handshake failures.
    pub connect_failed: AtomicU64,
    /// Connections the server closed (or that failed) after joining, before the stop.
    pub dropped: AtomicU64,
    /// Time from TCP connect start to the join's `ok` reply, nanoseconds.
    pub join_latency: Histogram,
    /// `now_ns()` of the latest join acknowledgement.
    pub last_join_ns: AtomicU64,
    /// Heartbeat replies seen.
    pub heartbeats_ok: AtomicU64,
    /// Deliveries whose stamp names no step (warm-up or garbled).
    pub unstepped: AtomicU64,
    /// Most milliseconds a publisher fell behind its schedule.
    pub publish_lag_max_ms: AtomicU64,
    /// First join error text, for the report.
    pub first_error: std::sync::Mutex<Option<String>>,
}

impl Shared {
    /// Creates the shared state with `slots` step slots.
    pub fn new(slots: usize) -> Self {
        Self {
            steps: (0..slots).map(|_| StepStats::default()).collect(),
            joined: AtomicU64::new(0),
            join_failed: AtomicU64::new(0),
            connect_failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            join_latency: Histogram::new(),
            last_join_ns: AtomicU64::new(0),
            heartbeats_ok: AtomicU64::new(0),
            unstepped: AtomicU64::new(0),
            publish_lag_max_ms: AtomicU64::new(0),
            first_error: std::sync::Mutex::new(None),
        }
    }

    fn note_error(&self, text: String) {
        // std Mutex: set once, never held across an await.
        let mut slot = self.first_error.lock().expect("error slot poisoned");
        if slot.is_none() {
            *slot = Some(text);
        }
    }

    fn record_delivery(&self, stamp: Stamp) {
        match self.steps.get(stamp.step as usize) {
            Some(step) => {
                step.latency.record(now_ns().saturating_sub(stamp.sent_ns));
                step.delivered.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.unstepped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The running connections of one scenario against one server.
pub struct Fleet {
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
    /// Publisher schedule.
    pub phase: watch::Sender<Phase>,
    /// Counters.
    pub shared: Arc<Shared>,
    /// Seconds from the first connect to the last join acknowledgement.
    pub open_secs: f64,
    /// Connections requested.
    pub requested: usize,
}

/// How fast connections are opened.
#[derive(Clone, Copy, Debug)]
pub struct ConnectPace {
    /// Connections started per second; 0 = as fast as `in_flight` allows.
    pub rate: f64,
    /// Connections started together at each pacing tick.
    pub batch: usize,
    /// Most handshakes + joins in progress at once.
    pub in_flight: usize,
    /// Give up waiting for joins after this long.
    pub timeout: Duration,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens every connection in `roles`, paced by `pace`, and waits until each has joined or
/// failed (or `pace.timeout` passes).
pub async fn open_fleet(
    cfg: Arc<ClientConfig>,
    roles: Vec<ConnRole>,
    slots: usize,
    pace: ConnectPace,
) -> Fleet {
    let shared = Arc::new(Shared::new(slots));
    let (stop, stop_rx) = watch::channel(false);
    let (phase, phase_rx) = watch::channel(Phase::idle());
    let gate = Arc::new(Semaphore::new(pace.in_flight.max(1)));
    let mut tasks = JoinSet::new();
    let requested = roles.len();
    let start = Instant::now();
    let start_ns = now_ns();
    let batch = pace.batch.max(1);
    for (i, role) in roles.into_iter().enumerate() {
        if pace.rate > 0.0 && i % batch == 0 {
            let at = start + Duration::from_secs_f64(i as f64 / pace.rate);
            sleep_until(at.into()).await;
        }
        // Closed only if the semaphore is dropped, which this function never does.
        let permit = gate.clone().acquire_owned().await.expect("gate closed");
        let source = (!cfg.source_ips.is_empty()).then(|| cfg.source_ips[i % cfg.source_ips.len()]);
        let url = match (&role.publisher, cfg.spread_urls.len()) {
            (None, n) if n > 0 => cfg.spread_urls[i % n].clone(),
            _ => cfg.url.clone(),
        };
        tasks.spawn(run_connection(
            cfg.clone(),
            shared.clone(),
            role,
            (url, source),
            phase_rx.clone(),
            stop_rx.clone(),
            permit,
        ));
    }
    let deadline = Instant::now() + pace.timeout;
    loop {
        let done = shared.joined.load(Ordering::Relaxed)
            + shared.join_failed.load(Ordering::Relaxed)
            + shared.connect_failed.load(Ordering::Relaxed);
        if done >= requested as u64 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = shared.last_join_ns.load(Ordering::Relaxed);
    let open_secs = if last > start_ns {
        (last - start_ns) as f64 / 1e9
    } else {
        start.elapsed().as_secs_f64()
    };
    Fleet {
        tasks,
        stop,
        phase,
        shared,
        open_secs,
        requested,
    }
}

impl Fleet {
    /// Stops every connection (close frame, then drop) and waits for the tasks, at most 15 s.
    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(15), all)
            .await
            .is_err()
        {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

/// Connects one WebSocket to `cfg.url` with the tenant's Host header, from `source` if given.
pub async fn dial(cfg: &ClientConfig, source: Option<IpAddr>) -> Result<Ws, String> {
    dial_url(cfg, &cfg.url, source).await
}

/// Connects one WebSocket to `url` (`cfg`'s tenant, token and version).
async fn dial_url(cfg: &ClientConfig, url: &str, source: Option<IpAddr>) -> Result<Ws, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("only ws:// URLs are supported: {url}"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| format!("resolve {authority}: {e}"))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| format!("no IPv4 address for {authority}"))?;
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = source.filter(|ip| *ip != IpAddr::V4(Ipv4Addr::LOCALHOST)) {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!(
        "{}{sep}apikey={}&vsn={}",
        url,
        cfg.token,
        cfg.vsn.query_value()
    );
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    let host = HeaderValue::from_str(&cfg.host).map_err(|e| format!("host header: {e}"))?;
    request.headers_mut().insert(HOST, host);
    // Small read buffers keep thousands of generator sockets cheap.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(16 * 1024);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        request,
        MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await
    .map_err(|e| format!("websocket handshake: {e}"))?;
    Ok(ws)
}

/// The publisher half of a connection: which messages are due under the current phase.
struct Schedule {
    phase: Phase,
    sent: u64,
    seq: u64,
    index: usize,
    not_before: Instant,
}

impl Schedule {
    /// Fraction of a period by which this publisher's schedule is shifted.
    fn offset(&self) -> f64 {
        self.index as f64 / self.phase.publishers.max(1) as f64
    }

    /// Messages due by `now` (cumulative since the phase began).
    fn due(&self, now: Instant) -> u64 {
        let elapsed = now
            .saturating_duration_since(self.phase.epoch)
            .as_secs_f64();
        (elapsed * self.phase.rate_per_pub + self.offset()).floor() as u64
    }

    /// When the next message is due, if publishing.
    fn next_at(&self) -> Option<Instant> {
        if !self.phase.active || self.phase.rate_per_pub <= 0.0 {
            return None;
        }
        let secs = ((self.sent + 1) as f64 - self.offset()).max(0.0) / self.phase.rate_per_pub;
        Some(self.phase.epoch + Duration::from_secs_f64(secs))
    }

    /// When to wake next: the next due message, but not before `not_before`.
    fn wake_at(&self) -> Option<Instant> {
        self.next_at().map(|at| at.max(self.not_before))
    }
}

fn publish_frame(cfg: &ClientConfig, topic: &str, seq: u64, step: u32) -> Message {
    let stamp = Stamp {
        sent_ns: now_ns(),
        seq,
        step,
    };
    let payload = wire::encode_payload(stamp, cfg.payload);
    let msg_ref = seq.to_string();
    match cfg.vsn {
        Vsn::V2 => Message::Binary(Bytes::from(wire::encode_kind3(
            JOIN_REF,
            &msg_ref,
            topic,
            wire::USER_EVENT,
            wire::ENCODING_JSON,
            payload.as_bytes(),
        ))),
        Vsn::V1 => Message::Text(Utf8Bytes::from(wire::broadcast_text_frame(
            Vsn::V1,
            topic,
            JOIN_REF,
            &msg_ref,
            &payload,
        ))),
    }
}

async fn run_connection(
    cfg: Arc<ClientConfig>,
    shared: Arc<Shared>,
    role: ConnRole,
    (url, source): (String, Option<IpAddr>),
    mut phase_rx: watch::Receiver<Phase>,
    mut stop: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let started_ns = now_ns();
    let mut ws = match dial_url(&cfg, &url, source).await {
        Ok(ws) => ws,
        Err(err) => {
            shared.connect_failed.fetch_add(1, Ordering::Relaxed);
            shared.note_error(err);
            return;
        }
    };
    let join = wire::join_frame(cfg.vsn, &role.topic, JOIN_REF, &cfg.token, cfg.private);
    if ws.send(Message::Text(Utf8Bytes::from(join))).await.is_err() {
        shared.connect_failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut permit = Some(permit);
    let mut joined = false;
    let mut hb_ref: u64 = 1_000_000;
    let mut next_heartbeat = Instant::now() + cfg.heartbeat;
    let mut schedule = role.publisher.map(|index| Schedule {
        phase: *phase_rx.borrow_and_update(),
        sent: 0,
        seq: 0,
        index,
        not_before: Instant::now(),
    });
    let stopped = loop {
        let next_publish = schedule
            .as_ref()
            .filter(|_| joined)
            .and_then(Schedule::wake_at);
        tokio::select! {
            biased;
            _ = stop.changed() => break true,
            _ = phase_rx.changed() => {
                if let Some(s) = schedule.as_mut() {
                    s.phase = *phase_rx.borrow_and_update();
                    s.sent = 0;
                }
            }
            msg = ws.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    _ => break false,
                };
                match msg {
                    Message::Binary(frame) => {
                        if let Some(stamp) = wire::decode_kind4(&frame).and_then(|b| wire::find_stamp(b.payload)) {
                            shared.record_delivery(stamp);
                        }
                    }
                    Message::Text(text) => {
                        if let Some(stamp) = wire::find_stamp(text.as_bytes()) {
                            shared.record_delivery(stamp);
                        } else if let Some(env) = wire::decode_text(cfg.vsn, &text) {
                            if env.event != "phx_reply" {
                                continue;
                            }
                            let ok = wire::reply_status(&env.payload) == Some("ok");
                            if env.topic == wire::PHOENIX_TOPIC {
                                if ok {
                                    shared.heartbeats_ok.fetch_add(1, Ordering::Relaxed);
                                }
                            } else if !joined && *env.topic == *role.topic && env.msg_ref.as_deref() == Some(JOIN_REF) {
                                if ok {
                                    joined = true;
                                    let now = now_ns();
                                    shared.join_latency.record(now.saturating_sub(started_ns));
                                    shared.last_join_ns.fetch_max(now, Ordering::Relaxed);
                                    shared.joined.fetch_add(1, Ordering::Relaxed);
                                    permit = None;
                                } else {
                                    shared.join_failed.fetch_add(1, Ordering::Relaxed);
                                    shared.note_error(format!("join refused: {}", env.payload));
                                    break false;
                                }
                            }
                        }
                    }
                    Message::Close(frame) => {
                        if !joined {
                            shared.note_error(format!("closed before join: {frame:?}"));
                        }
                        break false;
                    }
                    _ => {}
                }
            }
            _ = sleep_until(next_heartbeat.into()) => {
                hb_ref += 1;
                let hb = wire::heartbeat_frame(cfg.vsn, &hb_ref.to_string());
                if ws.send(Message::Text(Utf8Bytes::from(hb))).await.is_err() {
                    break false;
                }
                next_heartbeat = Instant::now() + cfg.heartbeat;
            }
            _ = sleep_until(next_publish.unwrap_or_else(Instant::now).into()), if next_publish.is_some() => {
                let Some(s) = schedule.as_mut() else { continue };
                let now = Instant::now();
                let due = s.due(now);
                let n = due.saturating_sub(s.sent).min(MAX_BURST);
                if let Some(at) = s.next_at() {
                    let lag = now.saturating_duration_since(at).as_millis() as u64;
                    shared.publish_lag_max_ms.fetch_max(lag, Ordering::Relaxed);
                }
                let mut failed = false;
                for _ in 0..n {
                    s.seq += 1;
                    if ws.feed(publish_frame(&cfg, &role.topic, s.seq, s.phase.step)).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed || ws.flush().await.is_err() {
                    break false;
                }
                // Messages that could not be sent in this burst are skipped, not queued up.
                s.sent = due.max(s.sent + n);
                if let Some(step) = shared.steps.get(s.phase.step as usize) {
                    step.published.fetch_add(n, Ordering::Relaxed);
                    step.expected.fetch_add(n * role.fanout, Ordering::Relaxed);
                }
                // Wake at most once per MIN_PUBLISH_GAP; later messages go out in the next batch.
                s.not_before = Instant::now() + MIN_PUBLISH_GAP;
            }
        }
    };
    drop(permit);
    if stopped {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    } else if joined {
        shared.dropped.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.connect_failed.fetch_add(1, Ordering::Relaxed);
    }
}

// The bench target is compiled with `cfg(test)` but without a harness, so the `#[test]`
// functions vanish there and their helpers look unused; `tests/loadgen.rs` runs them.
#[cfg(test)]
#[allow(dead_code, unused_imports)]
mod tests {
    use super::*;

    fn schedule(rate: f64, index: usize, publishers: usize, epoch: Instant) -> Schedule {
        Schedule {
            phase: Phase {
                active: true,
                step: 0,
                rate_per_pub: rate,
                epoch,
                publishers,
            },
            sent: 0,
            seq: 0,
            index,
            not_before: epoch,
        }
    }

    #[test]
    fn schedule_is_open_loop_and_staggered() {
        let epoch = Instant::now();
        let s = schedule(10.0, 0, 2, epoch);
        assert_eq!(s.due(epoch + Duration::from_millis(1000)), 10);
        assert_eq!(s.next_at(), Some(epoch + Duration::from_millis(100)));
        // The second of two publishers runs half a period ahead.
        let s2 = schedule(10.0, 1, 2, epoch);
        assert_eq!(s2.due(epoch), 0);
        assert_eq!(s2.due(epoch + Duration::from_millis(60)), 1);
        assert_eq!(s2.next_at(), Some(epoch + Duration::from_millis(50)));
    }

    #[test]
    fn inactive_schedule_never_fires() {
        let mut s = schedule(10.0, 0, 1, Instant::now());
        s.phase.active = false;
        assert_eq!(s.next_at(), None);
    }
}
