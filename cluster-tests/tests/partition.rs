//! A network partition heals: three nodes, each in its own network namespace on one bridge;
//! node 3 is cut off from nodes 1 and 2 (silently: frames between them are dropped), both sides
//! see the other's presences leave and keep tracking on their own side, and once the network is
//! whole again the membership and every client's presence converge to the union.
//!
//! Needs root (network namespaces); skipped with a message otherwise. PostgreSQL stays on the
//! test's loopback: the nodes reach it through an entry proxy on the bridge address.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cluster_tests::netns::NetLab;
use cluster_tests::proxy::EntryProxy;
use cluster_tests::{Nodes, join_config};
use serde_json::json;

const ROOM: &str = "partition-room";
const CONVERGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_and_presence_converges_again() {
    if let Some(why) = NetLab::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut lab = NetLab::create(3).expect("the lab network");
    let pg = testkit::pg();
    let forwarder = EntryProxy::start(
        Path::new(env!("CARGO_BIN_EXE_entry_proxy")),
        SocketAddr::new(lab.host_ip().into(), 0),
        &[SocketAddr::from(([127, 0, 0, 1], pg.port))],
    );
    let nodes = Nodes::builder(3)
        .hosts((0..3).map(|i| lab.host(i)).collect())
        .db_addr(forwarder.addr())
        .start()
        .await;
    nodes.wait_converged(CONVERGE).await;

    let keys = ["user-1", "user-2", "user-3"];
    let mut clients = nodes.tracked_clients(ROOM, &keys, CONVERGE).await;

    lab.partition(&[0, 1], &[2]).expect("partition");
    let cut = std::time::Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        let side: &[&str] = if i < 2 {
            &["user-1", "user-2"]
        } else {
            &["user-3"]
        };
        c.expect_until(CONVERGE, "the other side's leaves", |c| {
            c.presence_is(ROOM, side)
        })
        .await;
    }
    eprintln!("both sides saw the other leave within {:?}", cut.elapsed());

    // Each side goes on by itself.
    let mut d1 = nodes.client(0, "during-1").await;
    d1.join(ROOM, join_config(false, Some("during-1"), json!([])))
        .await;
    d1.track(ROOM, json!({"node": "node-1"})).await;
    let mut d3 = nodes.client(2, "during-3").await;
    d3.join(ROOM, join_config(false, Some("during-3"), json!([])))
        .await;
    d3.track(ROOM, json!({"node": "node-3"})).await;
    clients[1]
        .expect_until(CONVERGE, "during-1 on the same side", |c| {
            c.presence(ROOM).has("during-1")
        })
        .await;

    lab.heal().expect("heal");
    let healed = std::time::Instant::now();
    nodes.wait_converged(CONVERGE).await;
    let all = ["user-1", "user-2", "user-3", "during-1", "during-3"];
    clients.push(d1);
    clients.push(d3);
    for c in &mut clients {
        c.expect_until(CONVERGE, "the union of both sides", |c| {
            c.presence_is(ROOM, &all)
        })
        .await;
    }
    eprintln!("presence converged {:?} after the heal", healed.elapsed());
    drop(clients);
    drop(nodes);
    drop(forwarder);
    drop(lab);
}
