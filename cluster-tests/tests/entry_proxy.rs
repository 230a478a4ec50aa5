//! The entry proxy of `scripts/cluster`: new connections go round-robin over the backends, a
//! dead backend is skipped, bytes flow both ways (WebSockets included).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use cluster_tests::proxy::EntryProxy;
use cluster_tests::{Client, Nodes, join_config};
use serde_json::json;

fn proxy_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_entry_proxy"))
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A backend that answers every connection with its name, then echoes one line back.
fn named_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind(any_port()).expect("a backend listener");
    let addr = listener.local_addr().expect("its address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let _ = writeln!(stream, "{name}");
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().expect("a clone"));
            if reader.read_line(&mut line).is_ok() {
                let _ = stream.write_all(line.as_bytes());
            }
        }
    });
    addr
}

/// Connects through the proxy; returns the backend's name and checks the echo.
fn ask(proxy: SocketAddr, n: usize) -> String {
    ask_from(proxy, n).0
}

/// [`ask`], also returning the client socket's local address.
fn ask_from(proxy: SocketAddr, n: usize) -> (String, SocketAddr) {
    let mut stream = TcpStream::connect(proxy).expect("connect to the proxy");
    let local = stream.local_addr().expect("a local address");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("a clone"));
    let mut name = String::new();
    reader.read_line(&mut name).expect("the backend's name");
    writeln!(stream, "ping {n}").expect("write");
    let mut echo = String::new();
    reader.read_line(&mut echo).expect("the echo");
    assert_eq!(echo.trim(), format!("ping {n}"));
    (name.trim().to_string(), local)
}

#[test]
fn connections_go_round_robin_and_skip_a_dead_backend() {
    let a = named_backend("a");
    let b = named_backend("b");
    let dead = {
        let l = TcpListener::bind(any_port()).expect("a port");
        l.local_addr().expect("its address")
    };
    let proxy = EntryProxy::start(proxy_bin(), any_port(), &[a, dead, b]);
    let names: Vec<String> = (0..6).map(|n| ask(proxy.addr(), n)).collect();
    // Turns: a, dead→b, b, a, dead→b, b.
    assert_eq!(names, ["a", "b", "b", "a", "b", "b"]);
}

/// A backend like [`named_backend`] that can be stopped (its listener closed, so connections to
/// its port are refused) and started again on the same port.
struct Restartable {
    name: &'static str,
    addr: SocketAddr,
    running: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Restartable {
    fn start(name: &'static str, addr: SocketAddr) -> Restartable {
        let listener = TcpListener::bind(addr).expect("a backend listener");
        let addr = listener.local_addr().expect("its address");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { break };
                let _ = writeln!(stream, "{name}");
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().expect("a clone"));
                if reader.read_line(&mut line).is_ok() {
                    let _ = stream.write_all(line.as_bytes());
                }
            }
        });
        Restartable {
            name,
            addr,
            running: Some((stop, thread)),
        }
    }

    /// Closes the listener and waits until it is gone.
    fn stop(&mut self) {
        let (flag, thread) = self.running.take().expect("running");
        flag.store(true, Ordering::SeqCst);
        // Wakes the blocking accept; the thread then drops the listener.
        let _ = TcpStream::connect(self.addr);
        thread.join().expect("the backend thread");
    }

    fn restart(&mut self) {
        *self = Restartable::start(self.name, self.addr);
    }
}

/// What a rolling restart does to the proxy: while one backend is down every connection goes
/// to the others (a refused connect is skipped, never handed to the client), the route log says
/// which backend each client got, and once it is back the rotation includes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_is_skipped_until_it_is_back() {
    let mut backends = [
        Restartable::start("a", any_port()),
        Restartable::start("b", any_port()),
        Restartable::start("c", any_port()),
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let proxy = EntryProxy::start(proxy_bin(), any_port(), &addrs);
    let routes = proxy.routes();
    // Asks `count` times; checks that each route line names the backend that answered.
    let round = |count: usize| {
        let routes = routes.clone();
        let addrs = addrs.clone();
        let proxy = proxy.addr();
        async move {
            let mut names = Vec::new();
            for n in 0..count {
                let (name, local) = ask_from(proxy, n);
                let backend = routes
                    .backend_of(local, Duration::from_secs(2))
                    .await
                    .unwrap_or_else(|| panic!("no route line for {local}"));
                let index = ["a", "b", "c"].iter().position(|b| *b == name);
                assert_eq!(Some(backend), index.map(|i| addrs[i]), "{name}'s route");
                names.push(name);
            }
            names
        }
    };
    assert_eq!(round(3).await, ["a", "b", "c"]);
    backends[1].stop();
    // Turns 3..7: a, b (refused) → c, c, a.
    assert_eq!(round(4).await, ["a", "c", "c", "a"]);
    backends[1].restart();
    // Turns 7..10: b, c, a.
    assert_eq!(round(3).await, ["b", "c", "a"]);
}

#[test]
fn with_no_live_backend_the_client_is_closed() {
    let dead = {
        let l = TcpListener::bind(any_port()).expect("a port");
        l.local_addr().expect("its address")
    };
    let proxy = EntryProxy::start(proxy_bin(), any_port(), &[dead]);
    let stream = TcpStream::connect(proxy.addr()).expect("the proxy accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    let mut line = String::new();
    let n = BufReader::new(stream)
        .read_line(&mut line)
        .expect("a clean close");
    assert_eq!(n, 0, "closed without data");
}

const ROOM: &str = "proxy-room";

async fn tracked_via(proxy: SocketAddr, key: &str) -> Client {
    let mut c = Client::connect(proxy, key).await;
    c.join(ROOM, join_config(false, Some(key), json!([]))).await;
    c.track(ROOM, json!({})).await;
    c
}

/// Two independent nodes (clusters of one, so presence stays where it was tracked) behind the
/// proxy: clients through it land on both; after one node is killed, new clients land on the
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_through_the_proxy_land_on_both_nodes_and_skip_a_dead_one() {
    let mut nodes = Nodes::builder(2).standalone().start().await;
    let proxy = EntryProxy::start(proxy_bin(), any_port(), &[nodes.addr(0), nodes.addr(1)]);
    let _v0 = tracked_via(proxy.addr(), "via-0").await;
    let _v1 = tracked_via(proxy.addr(), "via-1").await;

    let mut direct = Vec::new();
    for i in 0..2 {
        let mut c = nodes.client(i, "direct").await;
        c.join(ROOM, join_config(false, Some("direct"), json!([])))
            .await;
        direct.push(c);
    }
    let seen: Vec<_> = direct
        .iter()
        .map(|c| {
            let mut keys = c.presence(ROOM).key_set();
            keys.remove("direct");
            keys
        })
        .collect();
    assert_eq!(seen[0].len(), 1, "node-1 got one proxied client: {seen:?}");
    assert_eq!(seen[1].len(), 1, "node-2 got one proxied client: {seen:?}");
    assert_ne!(seen[0], seen[1]);

    nodes.kill(0);
    let _v2 = tracked_via(proxy.addr(), "via-2").await;
    let _v3 = tracked_via(proxy.addr(), "via-3").await;
    direct[1]
        .expect_until(Duration::from_secs(5), "via-2 and via-3 on node-2", |c| {
            let view = c.presence(ROOM);
            view.has("via-2") && view.has("via-3")
        })
        .await;
}
