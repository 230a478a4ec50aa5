//! Bus tests over real QUIC sockets on 127.0.0.1 (port 0). Raw quinn peers built from the bus's
//! own TLS settings and handshake pieces play misbehaving nodes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use quinn::VarInt;
use realtime_proto::bus::{Hello, Message, PresenceDigest, Proof, Room, Welcome};

use super::handshake::{CLOSE_INVALID_MESSAGE, HandshakeStream, Identity, Refusal};
use super::*;
use crate::config::Secret;

const SECRET: &str = "test cluster secret";
const CLUSTER: &str = "test-cluster";
/// Deadline of every wait for an observed condition.
const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq)]
enum Event {
    Up(NodeRun),
    Down(NodeRun),
    Frame(NodeRun, Frame),
}

/// A handler that records everything; Ping can be made slow, frames can be held at a gate.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    slow_ping: Mutex<Option<Duration>>,
    /// While true, `frame` blocks (a stalled reader).
    gate_closed: Mutex<bool>,
    gate: Condvar,
}

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn frames_from(&self, name: &str) -> Vec<Frame> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Frame(from, frame) if from.name == name => Some(frame),
                _ => None,
            })
            .collect()
    }

    fn ups(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e, Event::Up(_)))
            .count()
    }

    fn set_gate(&self, closed: bool) {
        *self.gate_closed.lock().unwrap() = closed;
        self.gate.notify_all();
    }
}

impl BusHandler for Recorder {
    fn frame(&self, from: &NodeRun, frame: Frame) {
        let mut closed = self.gate_closed.lock().unwrap();
        while *closed {
            closed = self.gate.wait(closed).unwrap();
        }
        drop(closed);
        self.events
            .lock()
            .unwrap()
            .push(Event::Frame(from.clone(), frame));
    }

    fn request(&self, _from: &NodeRun, request: Request) -> Response {
        match request {
            Request::Ping => {
                if let Some(delay) = *self.slow_ping.lock().unwrap() {
                    std::thread::sleep(delay);
                }
                Response::Pong
            }
            Request::Metrics => Response::Metrics(String::new()),
            Request::PresenceSync(digest) => {
                if digest.floors.iter().any(|(node, _)| node == "fail") {
                    Response::Error("asked to fail".to_string())
                } else {
                    Response::PresenceSync(Some(vec![u8::try_from(digest.floors.len()).unwrap()]))
                }
            }
        }
    }

    fn peer_up(&self, peer: &NodeRun) {
        self.events.lock().unwrap().push(Event::Up(peer.clone()));
    }

    fn peer_down(&self, peer: &NodeRun) {
        self.events.lock().unwrap().push(Event::Down(peer.clone()));
    }
}

struct Node {
    bus: Bus,
    handler: Arc<Recorder>,
    run: NodeRun,
}

impl Node {
    fn addr(&self) -> SocketAddr {
        self.bus.local_addr()
    }

    fn entry(&self) -> (NodeRun, SocketAddr) {
        (self.run.clone(), self.addr())
    }
}

fn run(name: &str, incarnation: u64) -> NodeRun {
    NodeRun {
        name: name.to_string(),
        incarnation,
    }
}

fn config(secret: &str, cluster: &str) -> BusConfig {
    BusConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        cluster_id: cluster.to_string(),
        secret: Secret::new(secret),
        queue_frames: 16384,
        request_timeout: Duration::from_secs(5),
    }
}

/// Shows the bus's log lines with `RUST_LOG=realtime=debug` (captured per test).
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn start_with(me: NodeRun, config: BusConfig, owner: &Owner) -> Node {
    init_logs();
    let handler = Arc::new(Recorder::default());
    let bus = Bus::start(config, me.clone(), handler.clone(), owner)
        .await
        .expect("bus starts");
    Node {
        bus,
        handler,
        run: me,
    }
}

async fn start(name: &str, owner: &Owner) -> Node {
    start_with(run(name, 1), config(SECRET, CLUSTER), owner).await
}

/// Lists the two nodes to each other.
fn list_each_other(a: &Node, b: &Node) {
    a.bus.set_peers(&[b.entry()]);
    b.bus.set_peers(&[a.entry()]);
}

/// Waits until `check` holds, at most [`WAIT`].
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn linked(a: &Node, b: &Node) {
    eventually("the link", || {
        a.bus.linked().contains(&b.run)
            && b.bus.linked().contains(&a.run)
            && a.handler.events().contains(&Event::Up(b.run.clone()))
            && b.handler.events().contains(&Event::Up(a.run.clone()))
    })
    .await;
}

fn room() -> Room {
    Room {
        tenant: "tenant".to_string(),
        private: false,
        sub_topic: "room:1".to_string(),
    }
}

/// A broadcast of about 200 bytes encoded, numbered `n`.
fn numbered(n: u64) -> Frame {
    Frame::Broadcast {
        room: room(),
        message: Message::Json {
            kind: 0,
            event: n.to_string(),
            payload: "x".repeat(160),
        },
    }
}

fn number_of(frame: &Frame) -> u64 {
    match frame {
        Frame::Broadcast {
            message: Message::Json { event, .. },
            ..
        } => event.parse().unwrap(),
        other => panic!("unexpected frame {other:?}"),
    }
}

fn numbers(frames: &[Frame]) -> Vec<u64> {
    frames.iter().map(number_of).collect()
}

/// A raw quinn client endpoint with the bus's TLS settings.
fn raw_client() -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(tls::client_config().unwrap());
    endpoint
}

async fn raw_connect(endpoint: &quinn::Endpoint, addr: SocketAddr) -> quinn::Connection {
    endpoint
        .connect(addr, tls::SERVER_NAME)
        .unwrap()
        .await
        .expect("tls handshake")
}

/// Returns the refusal a connection was closed with by the other side, waiting for the close.
async fn closed_with(conn: &quinn::Connection) -> Option<VarInt> {
    match tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("connection closes")
    {
        quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arrive_in_order_across_ten_thousand_frames() {
    let owner = Owner::new();
    let a = start("a", &owner).await;
    let b = start("b", &owner).await;
    list_each_other(&a, &b);
    linked(&a, &b).await;

    for n in 0..10_000 {
        assert!(a.bus.send("b", Bus::encode(&numbered(n)).unwrap()));
    }
    for n in 0..100 {
        assert!(b.bus.send("a", Bus::encode(&numbered(n)).unwrap()));
    }
    eventually("10k frames at b", || {
        b.handler.frames_from("a").len() == 10_000
    })
    .await;
    eventually("100 frames at a", || {
        a.handler.frames_from("b").len() == 100
    })
    .await;
    assert_eq!(
        numbers(&b.handler.frames_from("a")),
        (0..10_000).collect::<Vec<_>>()
    );
    assert_eq!(
        numbers(&a.handler.frames_from("b")),
        (0..100).collect::<Vec<_>>()
    );
    let (sent, received) = (a.bus.stats(), b.bus.stats());
    assert_eq!(sent.frames_sent, 10_000);
    assert_eq!(received.frames_received, 10_000);
    assert_eq!(sent.bytes_sent, received.bytes_received);
    assert_eq!(sent.frames_dropped, 0);
    assert_eq!(sent.peers.len(), 1);
    assert_eq!(sent.peers[0].peer, b.run);
    assert_eq!(sent.peers[0].queue_depth, 0);
    assert!(!a.bus.send("nobody", Bus::encode(&numbered(0)).unwrap()));
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_their_responses_both_ways() {
    let owner = Owner::new();
    let a = start("a", &owner).await;
    let b = start("b", &owner).await;
    list_each_other(&a, &b);
    linked(&a, &b).await;

    assert_eq!(a.bus.request("b", Request::Ping).await, Ok(Response::Pong));
    assert_eq!(b.bus.request("a", Request::Ping).await, Ok(Response::Pong));
    let digest = |names: &[&str]| {
        Request::PresenceSync(PresenceDigest {
            floors: names.iter().map(|n| (n.to_string(), 1)).collect(),
            clocks: Vec::new(),
        })
    };
    let answers =
        futures::future::join_all((0..50).map(|n| a.bus.request("b", digest(&vec!["x"; n % 7]))))
            .await;
    for (n, answer) in answers.into_iter().enumerate() {
        assert_eq!(
            answer,
            Ok(Response::PresenceSync(Some(vec![(n % 7) as u8]))),
            "request {n} got its own answer"
        );
    }
    assert_eq!(
        a.bus.request("b", digest(&["fail"])).await,
        Err(RpcError::Failed("asked to fail".to_string()))
    );
    assert_eq!(
        a.bus.request("nobody", Request::Ping).await,
        Err(RpcError::NotLinked)
    );
    assert!(
        a.bus.linked().contains(&b.run),
        "an error reply keeps the link"
    );
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_times_out_when_the_handler_is_slow_and_fails_when_the_peer_goes() {
    let owner = Owner::new();
    let mut fast = config(SECRET, CLUSTER);
    fast.request_timeout = Duration::from_millis(100);
    let a = start_with(run("a", 1), fast, &owner).await;
    let b = start("b", &owner).await;
    list_each_other(&a, &b);
    linked(&a, &b).await;

    *b.handler.slow_ping.lock().unwrap() = Some(Duration::from_millis(400));
    let error = a.bus.request("b", Request::Ping).await.unwrap_err();
    assert_eq!(error, RpcError::Timeout);
    assert_eq!(error.code(), ErrorCode::TimeoutOnRpcCall);
    *b.handler.slow_ping.lock().unwrap() = None;
    // The late Pong is ignored; the next request gets its own answer.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(a.bus.request("b", Request::Ping).await, Ok(Response::Pong));

    // A request in flight when the peer goes fails without waiting for its timeout.
    let c_owner = Owner::new();
    let mut patient = config(SECRET, CLUSTER);
    patient.request_timeout = Duration::from_secs(30);
    let c = start_with(run("c", 1), patient, &c_owner).await;
    let d = start("d", &c_owner).await;
    list_each_other(&c, &d);
    linked(&c, &d).await;
    *d.handler.slow_ping.lock().unwrap() = Some(Duration::from_millis(300));
    let started = Instant::now();
    let (answer, ()) = tokio::join!(c.bus.request("d", Request::Ping), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        d.bus.shutdown().await;
    });
    match answer {
        Err(RpcError::Failed(reason)) => assert!(reason.contains("lost"), "{reason}"),
        other => panic!("expected a lost link, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        c.bus.request("d", Request::Ping).await,
        Err(RpcError::NotLinked)
    );
    owner.shutdown(Duration::from_secs(5)).await;
    c_owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_different_secrets_or_clusters_never_link() {
    let owner = Owner::new();
    let a = start("a", &owner).await;
    let b = start_with(run("b", 1), config("another secret", CLUSTER), &owner).await;
    let c = start_with(run("c", 1), config(SECRET, "another-cluster"), &owner).await;
    a.bus.set_peers(&[b.entry(), c.entry()]);
    b.bus.set_peers(&[a.entry()]);
    c.bus.set_peers(&[a.entry()]);
    eventually("refusals on every side", || {
        a.bus.stats().handshakes_refused >= 4
            && b.bus.stats().handshakes_refused >= 2
            && c.bus.stats().handshakes_refused >= 2
    })
    .await;
    for node in [&a, &b, &c] {
        assert!(node.bus.linked().is_empty());
        assert!(node.handler.events().is_empty(), "no peer_up, no frame");
    }
    assert!(!a.bus.send("b", Bus::encode(&numbered(0)).unwrap()));
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acceptor_that_cannot_prove_the_secret_gets_no_link_and_no_frame() {
    // A fake acceptor answers with a good hello, but its proof is made with another secret.
    let owner = Owner::new();
    let a = start("a", &owner).await;
    let fake = quinn::Endpoint::server(
        tls::server_config().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let fake_run = run("b", 1);
    a.bus
        .set_peers(&[(fake_run.clone(), fake.local_addr().unwrap())]);
    let impostor = Identity::new(CLUSTER.to_string(), fake_run, b"guessed secret");
    let incoming = tokio::time::timeout(WAIT, fake.accept())
        .await
        .unwrap()
        .unwrap();
    let conn = incoming.await.unwrap();
    let mut stream = HandshakeStream::accept(&conn).await.unwrap();
    let (_hello, dialer_hello) = stream.read::<Hello>().await.unwrap();
    let acceptor_hello = stream.write(&impostor.hello()).await.unwrap();
    let _proof = stream.read::<Proof>().await.unwrap();
    let transcript = handshake::Transcript {
        dialer_hello,
        acceptor_hello,
        exporter: handshake::exporter(&conn).unwrap(),
    };
    stream.write(&Welcome::Accepted).await.unwrap();
    stream
        .write(&impostor.proof(&transcript, handshake::Side::Acceptor))
        .await
        .unwrap();
    if let Ok(mut frames) = conn.open_uni().await {
        let _ = frames
            .write_all(&framing::prefixed(&Bus::encode(&numbered(1)).unwrap()))
            .await;
    }
    assert_eq!(
        closed_with(&conn).await,
        Some(Refusal::WrongSecret.close_code())
    );
    assert!(a.handler.events().is_empty(), "no peer_up, no frame");
    assert!(a.bus.linked().is_empty());
    assert!(a.bus.stats().handshakes_refused >= 1);
    fake.close(VarInt::from_u32(0), b"");
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_of_another_version_is_refused() {
    let owner = Owner::new();
    let b = start("b", &owner).await;
    b.bus
        .set_peers(&[(run("a", 1), "127.0.0.1:9".parse().unwrap())]);
    let client = raw_client();
    let conn = raw_connect(&client, b.addr()).await;
    let mut stream = HandshakeStream::open(&conn).await.unwrap();
    let mut hello = Identity::new(CLUSTER.to_string(), run("a", 1), SECRET.as_bytes()).hello();
    hello.version = realtime_proto::PROTOCOL_VERSION + 1;
    stream.write(&hello).await.unwrap();
    assert_eq!(
        closed_with(&conn).await,
        Some(Refusal::Version.close_code())
    );
    assert!(b.handler.events().is_empty());
    assert_eq!(b.bus.stats().handshakes_refused, 1);
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_missing_handshakes_are_refused() {
    let owner = Owner::new();
    let b = start("b", &owner).await;
    b.bus
        .set_peers(&[(run("a", 1), "127.0.0.1:9".parse().unwrap())]);
    let client = raw_client();

    let garbage = raw_connect(&client, b.addr()).await;
    let (mut send, _recv) = garbage.open_bi().await.unwrap();
    send.write_all(&framing::prefixed(b"\xff\xff\xff garbage"))
        .await
        .unwrap();
    assert_eq!(
        closed_with(&garbage).await,
        Some(Refusal::Malformed.close_code())
    );

    let oversized = raw_connect(&client, b.addr()).await;
    let (mut send, _recv) = oversized.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert_eq!(
        closed_with(&oversized).await,
        Some(Refusal::Malformed.close_code())
    );

    // The lower name dials: a higher name that dials is refused.
    let wrong_side = raw_connect(&client, b.addr()).await;
    let mut stream = HandshakeStream::open(&wrong_side).await.unwrap();
    let hello = Identity::new(CLUSTER.to_string(), run("c", 1), SECRET.as_bytes()).hello();
    stream.write(&hello).await.unwrap();
    assert_eq!(
        closed_with(&wrong_side).await,
        Some(Refusal::DialRule.close_code())
    );

    // A connection that never says hello is closed after the handshake timeout.
    let silent = raw_connect(&client, b.addr()).await;
    assert_eq!(
        closed_with(&silent).await,
        Some(Refusal::Timeout.close_code())
    );
    assert!(b.handler.events().is_empty());
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_a_valid_handshake_closes_only_that_link() {
    let owner = Owner::new();
    let m = start("m", &owner).await;
    let z = start("z", &owner).await;
    let raw_run = run("a", 1);
    m.bus
        .set_peers(&[(raw_run.clone(), "127.0.0.1:9".parse().unwrap()), z.entry()]);
    z.bus.set_peers(&[m.entry()]);
    linked(&m, &z).await;

    let client = raw_client();
    let raw = Identity::new(CLUSTER.to_string(), raw_run.clone(), SECRET.as_bytes());
    for garbage in [
        framing::prefixed(b"\x7f not a frame"),
        bytes::Bytes::copy_from_slice(&u32::MAX.to_be_bytes()),
    ] {
        let conn = raw_connect(&client, m.addr()).await;
        handshake::dial(&raw, &conn, &m.run)
            .await
            .expect("valid handshake");
        let mut frames = conn.open_uni().await.unwrap();
        frames
            .write_all(&framing::prefixed(&Bus::encode(&numbered(7)).unwrap()))
            .await
            .unwrap();
        frames.write_all(&garbage).await.unwrap();
        assert_eq!(closed_with(&conn).await, Some(CLOSE_INVALID_MESSAGE));
    }
    eventually("both raw links down", || {
        m.handler
            .events()
            .iter()
            .filter(|e| **e == Event::Down(raw_run.clone()))
            .count()
            == 2
    })
    .await;
    assert_eq!(
        numbers(&m.handler.frames_from("a")),
        [7, 7],
        "the valid frame before the garbage was delivered"
    );
    assert_eq!(m.bus.stats().invalid_frames, 2);

    // The bus keeps serving its other peer.
    assert!(z.bus.send("m", Bus::encode(&numbered(1)).unwrap()));
    assert!(m.bus.send("z", Bus::encode(&numbered(2)).unwrap()));
    eventually("frames both ways", || {
        m.handler.frames_from("z").len() == 1 && z.handler.frames_from("m").len() == 1
    })
    .await;
    assert_eq!(m.bus.request("z", Request::Ping).await, Ok(Response::Pong));
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_silent_peer_times_out() {
    let owner = Owner::new();
    let mut fast = config(SECRET, CLUSTER);
    fast.request_timeout = Duration::from_millis(200);
    let m = start_with(run("m", 1), fast, &owner).await;
    let raw_run = run("a", 1);
    m.bus
        .set_peers(&[(raw_run.clone(), "127.0.0.1:9".parse().unwrap())]);
    let client = raw_client();
    let conn = raw_connect(&client, m.addr()).await;
    let raw = Identity::new(CLUSTER.to_string(), raw_run.clone(), SECRET.as_bytes());
    handshake::dial(&raw, &conn, &m.run)
        .await
        .expect("valid handshake");
    eventually("the raw link", || m.bus.linked().contains(&raw_run)).await;
    assert_eq!(
        m.bus.request("a", Request::Ping).await,
        Err(RpcError::Timeout)
    );
    drop(conn);
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_relinks_with_its_new_incarnation() {
    let owner = Owner::new();
    let a = start("a", &owner).await;

    // The acceptor restarts.
    let b_owner = Owner::new();
    let b1 = start("b", &b_owner).await;
    list_each_other(&a, &b1);
    linked(&a, &b1).await;
    b1.bus.shutdown().await;
    eventually("b@1 down at a", || {
        a.handler.events().contains(&Event::Down(b1.run.clone()))
    })
    .await;
    let b2 = start_with(run("b", 2), config(SECRET, CLUSTER), &b_owner).await;
    list_each_other(&a, &b2);
    linked(&a, &b2).await;
    assert!(a.bus.send("b", Bus::encode(&numbered(1)).unwrap()));
    eventually("a frame at b@2", || b2.handler.frames_from("a").len() == 1).await;
    assert_eq!(a.bus.linked(), vec![b2.run.clone()]);

    // The dialer restarts: b@2 lists a@2 (its old link closes), and a@2 dials in.
    let a2_owner = Owner::new();
    let a2 = start_with(run("a", 2), config(SECRET, CLUSTER), &a2_owner).await;
    list_each_other(&a2, &b2);
    linked(&a2, &b2).await;
    let events = b2.handler.events();
    let down = events.iter().position(|e| *e == Event::Down(a.run.clone()));
    let up = events.iter().position(|e| *e == Event::Up(a2.run.clone()));
    assert!(
        down.is_some() && down < up,
        "peer_down(a@1) before peer_up(a@2): {events:?}"
    );
    assert_eq!(b2.bus.linked(), vec![a2.run.clone()]);
    assert!(b2.bus.send("a", Bus::encode(&numbered(2)).unwrap()));
    eventually("a frame at a@2", || a2.handler.frames_from("b").len() == 1).await;
    assert!(a.handler.frames_from("b").is_empty());
    owner.shutdown(Duration::from_secs(5)).await;
    b_owner.shutdown(Duration::from_secs(5)).await;
    a2_owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_runs_link_and_unlisting_closes_the_link() {
    let owner = Owner::new();
    let a = start("a", &owner).await;
    let b = start("b", &owner).await;
    a.bus.set_peers(&[b.entry()]);
    eventually("b refusing the unlisted a", || {
        b.bus.stats().handshakes_refused >= 1
    })
    .await;
    assert!(a.bus.linked().is_empty() && b.bus.linked().is_empty());
    b.bus.set_peers(&[a.entry()]);
    linked(&a, &b).await;

    b.bus.set_peers(&[]);
    eventually("the link down on both sides", || {
        a.handler.events().contains(&Event::Down(b.run.clone()))
            && b.handler.events().contains(&Event::Down(a.run.clone()))
    })
    .await;
    assert!(b.bus.linked().is_empty());
    assert_eq!(b.handler.ups(), 1);
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_reader_makes_frames_drop_without_blocking_send() {
    let owner = Owner::new();
    let mut small = config(SECRET, CLUSTER);
    small.queue_frames = 64;
    let a = start_with(run("a", 1), small, &owner).await;
    let b = start("b", &owner).await;
    list_each_other(&a, &b);
    linked(&a, &b).await;

    b.handler.set_gate(true);
    let payload = "y".repeat(10_000);
    let frame = |n: u64| Frame::Broadcast {
        room: room(),
        message: Message::Json {
            kind: 0,
            event: n.to_string(),
            payload: payload.clone(),
        },
    };
    let started = Instant::now();
    let mut accepted = Vec::new();
    for n in 0..3_000 {
        if a.bus.send("b", Bus::encode(&frame(n)).unwrap()) {
            accepted.push(n);
        }
        if n % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let elapsed = started.elapsed();
    let dropped = 3_000 - accepted.len() as u64;
    assert!(dropped > 0, "a stalled reader makes the queue fill");
    assert_eq!(a.bus.stats().frames_dropped, dropped);
    assert!(
        elapsed < Duration::from_secs(5),
        "send never waits ({elapsed:?} for 3000 sends)"
    );

    b.handler.set_gate(false);
    eventually("every accepted frame", || {
        b.handler.frames_from("a").len() == accepted.len()
    })
    .await;
    assert_eq!(numbers(&b.handler.frames_from("a")), accepted);
    assert!(a.bus.linked().contains(&b.run), "drops keep the link");
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_queued_frames_and_ends_every_task() {
    let owner = Owner::new();
    let a = start("a", &owner).await;
    let b = start("b", &owner).await;
    list_each_other(&a, &b);
    linked(&a, &b).await;

    for n in 0..1_000 {
        assert!(a.bus.send("b", Bus::encode(&numbered(n)).unwrap()));
    }
    a.bus.shutdown().await;
    assert!(a.bus.shared.owner.is_empty(), "every task of a ended");
    assert!(a.bus.linked().is_empty());
    assert!(!a.bus.send("b", Bus::encode(&numbered(0)).unwrap()));
    assert!(a.handler.events().contains(&Event::Down(b.run.clone())));
    eventually("b saw a leave", || {
        b.handler.events().contains(&Event::Down(a.run.clone()))
    })
    .await;
    assert_eq!(
        numbers(&b.handler.frames_from("a")),
        (0..1_000).collect::<Vec<_>>(),
        "queued frames were flushed before the link closed"
    );
    b.bus.shutdown().await;
    assert!(b.bus.shared.owner.is_empty(), "every task of b ended");
    owner.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn start_refuses_unusable_settings() {
    let owner = Owner::new();
    let handler: Arc<dyn BusHandler> = Arc::new(Recorder::default());
    let attempt = |config: BusConfig, me: NodeRun| Bus::start(config, me, handler.clone(), &owner);
    let mut empty_secret = config("", CLUSTER);
    empty_secret.secret = Secret::new("");
    assert!(matches!(
        attempt(empty_secret, run("a", 1)).await,
        Err(BusError::Invalid {
            what: "CLUSTER_SECRET",
            ..
        })
    ));
    let mut no_queue = config(SECRET, CLUSTER);
    no_queue.queue_frames = 0;
    assert!(matches!(
        attempt(no_queue, run("a", 1)).await,
        Err(BusError::Invalid { .. })
    ));
    assert!(matches!(
        attempt(config(SECRET, CLUSTER), run("", 1)).await,
        Err(BusError::Invalid {
            what: "NODE_NAME",
            ..
        })
    ));
    let taken = start("a", &owner).await;
    let mut same_port = config(SECRET, CLUSTER);
    same_port.bind = taken.addr();
    let error = attempt(same_port, run("b", 1)).await.err().unwrap();
    assert!(matches!(error, BusError::Bind { .. }));
    assert_eq!(error.code(), ErrorCode::InvalidConfiguration);
    owner.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn node_runs_convert_to_and_from_incarnations() {
    let incarnation = NodeIncarnation {
        node: NodeId::new("node-1"),
        incarnation: 42,
    };
    let wire = node_run(&incarnation);
    assert_eq!(wire, run("node-1", 42));
    assert_eq!(node_incarnation(&wire), incarnation);
}

#[test]
fn rpc_errors_carry_their_operational_codes() {
    assert_eq!(RpcError::Timeout.code(), ErrorCode::TimeoutOnRpcCall);
    assert_eq!(
        RpcError::Failed("x".into()).code(),
        ErrorCode::ErrorOnRpcCall
    );
    assert_eq!(
        RpcError::NotLinked.code(),
        ErrorCode::RealtimeNodeDisconnected
    );
    for text in [
        RpcError::Timeout.to_string(),
        RpcError::NotLinked.to_string(),
        RpcError::Failed("x".into()).client_message(),
    ] {
        assert_eq!(text, text.to_lowercase());
        assert!(!text.ends_with('.'));
    }
}

/// Counts frames and records one-hop latencies of timestamped frames.
struct Meter {
    frames: AtomicU64,
    latencies_ns: Mutex<Vec<u64>>,
    timestamped: AtomicBool,
}

fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

impl BusHandler for Meter {
    fn frame(&self, _from: &NodeRun, frame: Frame) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        if self.timestamped.load(Ordering::Relaxed)
            && let Frame::Broadcast {
                message: Message::Json { event, .. },
                ..
            } = frame
        {
            let sent: u64 = event.parse().unwrap();
            let now = clock_base().elapsed().as_nanos() as u64;
            self.latencies_ns.lock().unwrap().push(now - sent);
        }
    }

    fn request(&self, _from: &NodeRun, _request: Request) -> Response {
        Response::Pong
    }

    fn peer_up(&self, _peer: &NodeRun) {}

    fn peer_down(&self, _peer: &NodeRun) {}
}

fn percentile(sorted: &[u64], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Duration::from_nanos(sorted[index])
}

/// Prints frames/s over one loopback link (≈200-byte broadcasts, encoded once, sent as fast as
/// the queue takes them) and one-hop latency: timestamped frames sent 1 ms apart (send call to
/// the receiving handler, same process clock), and request round trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: cargo test --release --lib bus::tests::measure -- --ignored --nocapture"]
async fn measure_bus_link() {
    let owner = Owner::new();
    let meter = Arc::new(Meter {
        frames: AtomicU64::new(0),
        latencies_ns: Mutex::new(Vec::new()),
        timestamped: AtomicBool::new(false),
    });
    let a = start("a", &owner).await;
    let b_bus = Bus::start(config(SECRET, CLUSTER), run("b", 1), meter.clone(), &owner)
        .await
        .unwrap();
    a.bus.set_peers(&[(run("b", 1), b_bus.local_addr())]);
    b_bus.set_peers(&[a.entry()]);
    eventually("the link", || {
        a.bus.linked().len() == 1 && b_bus.linked().len() == 1
    })
    .await;

    let frame = Bus::encode(&numbered(123_456)).unwrap();
    println!("frame size: {} bytes (+4 prefix)", frame.len());
    const FRAMES: u64 = 1_000_000;
    let started = Instant::now();
    let mut retries = 0u64;
    for _ in 0..FRAMES {
        while !a.bus.send("b", frame.clone()) {
            retries += 1;
            tokio::task::yield_now().await;
        }
    }
    eventually("every frame", || {
        meter.frames.load(Ordering::Relaxed) == FRAMES
    })
    .await;
    let elapsed = started.elapsed();
    println!(
        "throughput: {FRAMES} frames in {elapsed:?} = {:.0} frames/s ({:.1} MB/s of frames), {retries} full-queue retries",
        FRAMES as f64 / elapsed.as_secs_f64(),
        (FRAMES * frame.len() as u64) as f64 / elapsed.as_secs_f64() / 1e6
    );

    meter.timestamped.store(true, Ordering::Relaxed);
    for _ in 0..2_000 {
        let now = clock_base().elapsed().as_nanos() as u64;
        assert!(a.bus.send("b", Bus::encode(&numbered(now)).unwrap()));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    eventually("every timestamped frame", || {
        meter.latencies_ns.lock().unwrap().len() == 2_000
    })
    .await;
    let mut latencies = meter.latencies_ns.lock().unwrap().clone();
    latencies.sort_unstable();
    println!(
        "one-hop latency (timestamped frames): p50 {:?}, p99 {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );

    let mut rtts = Vec::new();
    for _ in 0..2_000 {
        let sent = Instant::now();
        assert_eq!(a.bus.request("b", Request::Ping).await, Ok(Response::Pong));
        rtts.push(sent.elapsed().as_nanos() as u64);
    }
    rtts.sort_unstable();
    println!(
        "request round trip: p50 {:?}, p99 {:?}",
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99)
    );
    a.bus.shutdown().await;
    b_bus.shutdown().await;
    owner.shutdown(Duration::from_secs(5)).await;
}
