//! Several memberships in one process, gossiping over real UDP sockets on 127.0.0.1.
//!
//! Detection times are printed (`cargo test --lib cluster -- --nocapture`) and bounded loosely
//! (the machine is shared); docs/ARCHITECTURE.md ("Membership") records measured values.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::time::{Duration, Instant};

use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use tokio::sync::broadcast::error::RecvError;

use super::*;
use crate::config::GossipTuning;
use crate::types::NodeId;

const CONVERGE_BOUND: Duration = Duration::from_secs(5);

/// Returns `n` distinct free UDP ports (all held until every one is chosen).
fn free_ports<const N: usize>() -> [u16; N] {
    let sockets: Vec<StdUdpSocket> = (0..N)
        .map(|_| StdUdpSocket::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| sockets[i].local_addr().expect("local addr").port())
}

fn incarnation(name: &str, incarnation: u64) -> NodeIncarnation {
    NodeIncarnation {
        node: NodeId::new(name),
        incarnation,
    }
}

/// Addresses of node number `i` (gossip values only: nothing listens there).
fn addresses(i: u16) -> NodeAddresses {
    NodeAddresses {
        bus: SocketAddr::from(([127, 0, 0, 1], 17_000 + i)),
        http: SocketAddr::from(([127, 0, 0, 1], 14_000 + i)),
        region: i.is_multiple_of(2).then(|| format!("region-{i}")),
        version: format!("0.1.{i}"),
    }
}

fn expected_member(name: &str, generation: u64, i: u16) -> Member {
    let a = addresses(i);
    Member {
        node: incarnation(name, generation),
        bus: a.bus,
        http: a.http,
        region: a.region,
        version: a.version,
    }
}

fn config(name: &str, port: u16, seeds: &[u16], cluster_id: &str) -> ClusterConfig {
    config_with_secret(name, port, seeds, cluster_id, "a-test-cluster-secret")
}

fn config_with_secret(
    name: &str,
    port: u16,
    seeds: &[u16],
    cluster_id: &str,
    secret: &str,
) -> ClusterConfig {
    let seeds = seeds
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let port = port.to_string();
    ClusterConfig::for_test(&[
        ("NODE_NAME", name),
        ("CLUSTER_ID", cluster_id),
        ("CLUSTER_SEEDS", seeds.as_str()),
        ("CLUSTER_SECRET", secret),
        ("GOSSIP_PORT", port.as_str()),
        ("BUS_PORT", "1"),
        ("ADVERTISE_ADDR", "127.0.0.1"),
    ])
}

async fn start(
    name: &str,
    generation: u64,
    i: u16,
    port: u16,
    seeds: &[u16],
    cluster_id: &str,
) -> Membership {
    Membership::start(
        &config(name, port, seeds, cluster_id),
        incarnation(name, generation),
        addresses(i),
        &Owner::new(),
    )
    .await
    .expect("membership starts")
}

fn names(m: &Membership) -> Vec<String> {
    m.members().iter().map(|m| m.node.to_string()).collect()
}

/// Waits until `cond` holds, polling; panics after `bound`. Returns the time it took.
async fn wait_for(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for the `Left` event of `node`; returns whether it was graceful and when it came.
async fn next_left(
    events: &mut broadcast::Receiver<MembershipEvent>,
    node: &NodeIncarnation,
    since: Instant,
    bound: Duration,
) -> (bool, Duration) {
    loop {
        let event = tokio::time::timeout_at((since + bound).into(), events.recv())
            .await
            .unwrap_or_else(|_| panic!("no Left for {node} within {bound:?}"));
        match event {
            Ok(MembershipEvent::Left {
                node: left,
                graceful,
            }) if left == *node => {
                return (graceful, since.elapsed());
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => panic!("lagged by {n} events"),
            Err(RecvError::Closed) => panic!("events closed"),
        }
    }
}

/// Starts a, b, c (b and c seeded with a) and waits until all three see all three.
async fn three_nodes(ports: [u16; 3]) -> (Membership, Membership, Membership, Duration) {
    let started = Instant::now();
    let a = start("a", 1, 0, ports[0], &[ports[0]], "test").await;
    let b = start("b", 1, 1, ports[1], &[ports[0]], "test").await;
    let c = start("c", 1, 2, ports[2], &[ports[0]], "test").await;
    wait_for("three nodes converge", CONVERGE_BOUND, || {
        [&a, &b, &c].iter().all(|m| m.members().len() == 3)
    })
    .await;
    (a, b, c, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_with_each_others_addresses() {
    let ports = free_ports::<3>();
    let (a, b, c, took) = three_nodes(ports).await;
    println!("membership: 3 nodes converged in {took:?}");
    let expected = vec![
        expected_member("a", 1, 0),
        expected_member("b", 1, 1),
        expected_member("c", 1, 2),
    ];
    for m in [&a, &b, &c] {
        assert_eq!(m.members(), expected);
        assert_eq!(*m.subscribe().borrow().members(), expected[..]);
        assert!(m.subscribe().borrow().contains(&m.me().node));
    }
    assert_eq!(
        a.gossip_addr(),
        Some(SocketAddr::from(([127, 0, 0, 1], ports[0])))
    );
    for m in [a, b, c] {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_reported_dead_within_seconds() {
    let (a, b, c, _) = three_nodes(free_ports::<3>()).await;
    let mut a_events = a.events();
    let mut b_events = b.events();
    let mut view = a.subscribe();
    let killed = Instant::now();
    c.shutdown().await;
    let c_id = incarnation("c", 1);
    let bound = Duration::from_secs(5);
    let (graceful_a, at_a) = next_left(&mut a_events, &c_id, killed, bound).await;
    let (graceful_b, at_b) = next_left(&mut b_events, &c_id, killed, bound).await;
    println!("membership: killed node reported dead after {at_a:?} (a) and {at_b:?} (b)");
    assert!(!graceful_a && !graceful_b, "a kill is not a graceful leave");
    assert!(view.has_changed().unwrap());
    assert_eq!(view.borrow_and_update().len(), 2);
    assert_eq!(names(&a), ["a@1", "b@1"]);
    assert_eq!(names(&b), ["a@1", "b@1"]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_is_seen_at_once() {
    let (a, b, c, _) = three_nodes(free_ports::<3>()).await;
    let mut a_events = a.events();
    let mut b_events = b.events();
    let c_id = incarnation("c", 1);
    let bound = Duration::from_secs(1);
    let leaving = Instant::now();
    // Peers are watched while the leave is still being announced.
    let (announced, (graceful_a, at_a), (graceful_b, at_b)) = tokio::join!(
        async {
            c.leave().await;
            leaving.elapsed()
        },
        next_left(&mut a_events, &c_id, leaving, bound),
        next_left(&mut b_events, &c_id, leaving, bound),
    );
    c.shutdown().await;
    println!(
        "membership: graceful leave (announced for {announced:?}) seen after {at_a:?} (a) and {at_b:?} (b)"
    );
    assert!(graceful_a && graceful_b);
    assert!(announced <= LEAVE_ANNOUNCE_FOR + Duration::from_millis(200));
    assert_eq!(names(&a), ["a@1", "b@1"]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_is_a_new_member_and_its_old_run_leaves() {
    let ports = free_ports::<2>();
    let a = start("a", 1, 0, ports[0], &[ports[0]], "test").await;
    let b = start("b", 1, 1, ports[1], &[ports[0]], "test").await;
    wait_for("two nodes converge", CONVERGE_BOUND, || {
        a.members().len() == 2 && b.members().len() == 2
    })
    .await;
    let mut events = a.events();
    // b dies without a word and comes back at once, same name and port, next incarnation.
    b.shutdown().await;
    let restarted = Instant::now();
    let b2 = start("b", 2, 1, ports[1], &[ports[0]], "test").await;
    let mut left = None;
    let mut joined = None;
    while left.is_none() || joined.is_none() {
        let event = tokio::time::timeout(CONVERGE_BOUND, events.recv())
            .await
            .expect("restart seen")
            .expect("event");
        match event {
            MembershipEvent::Left { node, graceful } => {
                assert_eq!(node, incarnation("b", 1));
                assert!(
                    joined.is_none(),
                    "the old run leaves before the new one joins"
                );
                left = Some((graceful, restarted.elapsed()));
            }
            MembershipEvent::Joined(member) => {
                assert_eq!(member, expected_member("b", 2, 1));
                joined = Some(restarted.elapsed());
            }
        }
    }
    println!("membership: restart seen after {joined:?} (old run left: {left:?})");
    assert_eq!(left.map(|l| l.0), Some(false));
    assert_eq!(names(&a), ["a@1", "b@2"]);
    wait_for("restarted node sees a", CONVERGE_BOUND, || {
        names(&b2) == ["a@1", "b@2"]
    })
    .await;
    // The old run never comes back while its heartbeats age out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(names(&a), ["a@1", "b@2"]);
    a.shutdown().await;
    b2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_another_cluster_or_without_the_secret_never_appear() {
    let ports = free_ports::<4>();
    // a even lists the strangers as seeds, and the strangers are seeded with a.
    let a = start("a", 1, 0, ports[0], &[ports[0], ports[2], ports[3]], "test").await;
    let b = start("b", 1, 1, ports[1], &[ports[0]], "test").await;
    let x = start("x", 1, 2, ports[2], &[ports[0]], "other").await;
    // The same cluster id with another secret: its gossip carries another tag.
    let y = Membership::start(
        &config_with_secret("y", ports[3], &[ports[0]], "test", "another-cluster-secret"),
        incarnation("y", 1),
        addresses(3),
        &Owner::new(),
    )
    .await
    .expect("membership starts");
    wait_for("a and b converge", CONVERGE_BOUND, || {
        a.members().len() == 2 && b.members().len() == 2
    })
    .await;
    // Let a few hundred gossip rounds pass between all three.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(names(&a), ["a@1", "b@1"]);
    assert_eq!(names(&b), ["a@1", "b@1"]);
    assert_eq!(names(&x), ["x@1"]);
    assert_eq!(names(&y), ["y@1"]);
    let known = known_node_names(&a).await;
    assert!(!known.contains(&"x".to_string()), "{known:?}");
    assert!(!known.contains(&"y".to_string()), "{known:?}");
    for m in [a, b, x, y] {
        m.shutdown().await;
    }
}

/// Names of every node a's chitchat knows, live or dead.
async fn known_node_names(m: &Membership) -> Vec<String> {
    let gossip = m.gossip.as_ref().expect("clustered");
    let guard = gossip.handle.lock().await;
    let handle = guard.as_ref().expect("running");
    handle
        .with_chitchat(|c| {
            c.node_states()
                .keys()
                .map(|id| id.node_id.to_string())
                .collect()
        })
        .await
}

/// Names of the nodes a's failure detector holds live.
async fn live_node_names(m: &Membership) -> Vec<String> {
    let gossip = m.gossip.as_ref().expect("clustered");
    let guard = gossip.handle.lock().await;
    let handle = guard.as_ref().expect("running");
    handle
        .with_chitchat(|c| c.live_nodes().map(|id| id.node_id.to_string()).collect())
        .await
}

/// A chitchat node that is not a `Membership`: it gossips whatever keys it is given.
async fn raw_node(name: &str, port: u16, seed: u16, kvs: &[(&str, &str)]) -> ChitchatHandle {
    let tuning = GossipTuning::default();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(name, 1, addr),
        // What a Membership of cluster "test" with the tests' secret gossips under.
        cluster_id: gossip_cluster_id(&config(name, port, &[seed], "test")),
        gossip_interval: tuning.interval,
        listen_addr: addr,
        seed_nodes: vec![format!("127.0.0.1:{seed}")],
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
        protocol_version: ProtocolVersion::V1,
    };
    let kvs = kvs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spawn_chitchat(config, kvs, &UdpTransport)
        .await
        .expect("raw chitchat starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_bad_gossip_values_are_skipped() {
    let ports = free_ports::<4>();
    let a = start("a", 1, 0, ports[0], &[ports[0]], "test").await;
    let good = raw_node(
        "good",
        ports[1],
        ports[0],
        &[
            (KEY_BUS, "127.0.0.1:7001"),
            (KEY_HTTP, "127.0.0.1:4001"),
            (KEY_VERSION, "9.9.9"),
        ],
    )
    .await;
    let bad = raw_node(
        "bad",
        ports[2],
        ports[0],
        &[
            (KEY_BUS, "0.0.0.0:7002"),
            (KEY_HTTP, "not an address"),
            (KEY_VERSION, "9.9.9"),
            (KEY_REGION, "eu\u{0}west"),
        ],
    )
    .await;
    let incomplete = raw_node(
        "incomplete",
        ports[3],
        ports[0],
        &[(KEY_BUS, "127.0.0.1:7003")],
    )
    .await;
    wait_for("the well-formed raw node joins", CONVERGE_BOUND, || {
        names(&a).contains(&"good@1".to_string())
    })
    .await;
    let mut live = Vec::new();
    for _ in 0..200 {
        live = live_node_names(&a).await;
        if live.contains(&"bad".to_string()) && live.contains(&"incomplete".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        live.contains(&"bad".to_string()) && live.contains(&"incomplete".to_string()),
        "the malformed nodes reach the failure detector: {live:?}"
    );
    assert_eq!(names(&a), ["a@1", "good@1"]);
    let good_member = a
        .subscribe()
        .borrow()
        .get(&NodeId::new("good"))
        .cloned()
        .expect("good is a member");
    assert_eq!(good_member.bus, SocketAddr::from(([127, 0, 0, 1], 7001)));
    assert_eq!(good_member.region, None);
    for handle in [good, bad, incomplete] {
        handle.shutdown().await.expect("raw chitchat stops");
    }
    a.shutdown().await;
}

/// Readiness: a node whose seeds name a peer that is down has not joined until that peer is up;
/// a node seeded only with its own address has joined at once (the first node of a cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_has_joined_once_it_sees_a_peer_or_has_none_to_find() {
    let [pa, pb, pc] = free_ports::<3>();
    let first = start("first", 1, 2, pc, &[pc], "join-first").await;
    assert!(first.joined(), "its seeds name only itself");

    // The default DNS_NODES_REFRESH_MS (10 s) keeps the give-up wait far beyond this test.
    let b = start("b", 1, 1, pb, &[pa, pb], "join").await;
    assert!(!b.joined(), "its peer is not up yet");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!b.joined(), "still no peer after a few gossip rounds");
    let a = start("a", 1, 0, pa, &[pa, pb], "join").await;
    let took = wait_for("both have joined", CONVERGE_BOUND, || {
        a.joined() && b.joined()
    })
    .await;
    println!("joined {took:?} after the peer started");
    for m in [&first, &a, &b] {
        m.shutdown().await;
    }
}

#[test]
fn joining_waits_for_a_peer_at_most_the_join_wait() {
    let wait = Duration::from_secs(20);
    assert!(!has_joined(0, 2, Duration::from_secs(19), wait));
    assert!(has_joined(1, 2, Duration::ZERO, wait), "a live peer");
    assert!(has_joined(0, 0, Duration::ZERO, wait), "no other seed");
    assert!(has_joined(0, 2, wait, wait), "gave up waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_one_opens_no_socket() {
    let [port] = free_ports::<1>();
    // Someone else holds the gossip port: a node that opened it would fail to start.
    let holder = StdUdpSocket::bind(("0.0.0.0", port)).expect("hold the port");
    let port = port.to_string();
    let alone = ClusterConfig::for_test(&[
        ("NODE_NAME", "solo"),
        ("GOSSIP_PORT", port.as_str()),
        ("BUS_PORT", "1"),
    ]);
    let owner = Owner::new();
    let solo = Membership::start(&alone, incarnation("solo", 7), addresses(0), &owner)
        .await
        .expect("a cluster of one starts");
    assert_eq!(solo.members(), [expected_member("solo", 7, 0)]);
    assert_eq!(solo.gossip_addr(), None);
    assert!(!solo.subscribe().borrow().is_empty());
    assert!(solo.joined(), "a cluster of one is ready at once");
    solo.leave().await;
    solo.shutdown().await;
    assert!(owner.is_empty(), "nothing runs");

    // The same settings with a seed do open the port, which is taken.
    let seeded = ClusterConfig::for_test(&[
        ("NODE_NAME", "solo"),
        ("GOSSIP_PORT", port.as_str()),
        ("BUS_PORT", "1"),
        ("ADVERTISE_ADDR", "127.0.0.1"),
        ("CLUSTER_SEEDS", "127.0.0.1:1"),
        ("CLUSTER_SECRET", "a-test-cluster-secret"),
    ]);
    let error = Membership::start(&seeded, incarnation("solo", 8), addresses(0), &owner)
        .await
        .expect_err("the gossip port is taken");
    assert!(matches!(error, ClusterError::Start { .. }), "{error}");
    assert_eq!(error.code(), ErrorCode::InvalidConfiguration);
    drop(holder);
}

#[tokio::test]
async fn values_peers_would_refuse_are_refused_at_start() {
    let alone = ClusterConfig::for_test(&[("NODE_NAME", "solo")]);
    let owner = Owner::new();
    // Alone, addresses are advertised to nobody: a bus on port 0 is fine.
    let no_bus = NodeAddresses {
        bus: SocketAddr::from(([0, 0, 0, 0], 0)),
        ..addresses(0)
    };
    Membership::start(&alone, incarnation("solo", 1), no_bus.clone(), &owner)
        .await
        .expect("a cluster of one advertises nothing");
    let seeded = ClusterConfig::for_test(&[
        ("NODE_NAME", "solo"),
        ("GOSSIP_PORT", "7"),
        ("ADVERTISE_ADDR", "127.0.0.1"),
        ("CLUSTER_SEEDS", "127.0.0.1:9"),
        ("CLUSTER_SECRET", "a-test-cluster-secret"),
    ]);
    let error = Membership::start(&seeded, incarnation("solo", 1), no_bus, &owner)
        .await
        .expect_err("a bus on port 0 refused when clustering");
    assert!(
        matches!(
            error,
            ClusterError::InvalidAdvertised {
                what: "bus address",
                ..
            }
        ),
        "{error}"
    );
    let spaced = NodeAddresses {
        version: "1 0".into(),
        ..addresses(0)
    };
    assert!(
        Membership::start(&alone, incarnation("solo", 1), spaced, &owner)
            .await
            .is_err()
    );
    let port_zero = ClusterConfig::for_test(&[
        ("NODE_NAME", "solo"),
        ("GOSSIP_PORT", "0"),
        ("CLUSTER_SEEDS", "127.0.0.1:9"),
        ("CLUSTER_SECRET", "a-test-cluster-secret"),
    ]);
    let error = Membership::start(&port_zero, incarnation("solo", 1), addresses(0), &owner)
        .await
        .expect_err("port 0 refused when clustering");
    assert!(matches!(error, ClusterError::NoGossipPort));
    assert_eq!(error.client_message(), "cluster membership is unavailable");
}
