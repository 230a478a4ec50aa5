//! Broadcast across nodes: a message published on one node (WebSocket push or the HTTP API)
//! reaches every subscriber on every node exactly once, `self` is honoured across nodes, and the
//! order per publisher is kept.

use std::time::Duration;

use cluster_tests::{Client, Nodes, join_config, until_delivered};
use serde_json::json;

const ROOM: &str = "bc-room";
const CONVERGE: Duration = Duration::from_secs(20);
const DELIVER: Duration = Duration::from_secs(5);
/// Long enough for a duplicate to show up after the first copy.
const QUIET: Duration = Duration::from_millis(800);

async fn joined(nodes: &Nodes, i: usize, label: &str, self_broadcast: bool) -> Client {
    let mut client = nodes.client(i, label).await;
    client
        .join(ROOM, join_config(self_broadcast, None, json!([])))
        .await;
    client
}

/// Waits until every client expected to get `payload` (event `msg`) has it, lets duplicates
/// arrive, and checks each client's count of it against `expect`.
async fn counts(clients: &mut [&mut Client], payload: &serde_json::Value, expect: &[usize]) {
    for (c, &n) in clients.iter_mut().zip(expect) {
        if n > 0 {
            let p = payload.clone();
            c.expect_until(DELIVER, &format!("broadcast {p}"), |c| {
                c.count_broadcast(ROOM, "msg", &p) >= 1
            })
            .await;
        }
    }
    // Let duplicates arrive, then read what came meanwhile.
    tokio::time::sleep(QUIET).await;
    for c in clients.iter_mut() {
        c.settle(Duration::from_millis(50)).await;
    }
    let got: Vec<usize> = clients
        .iter()
        .map(|c| c.count_broadcast(ROOM, "msg", payload))
        .collect();
    let labels: Vec<&str> = clients.iter().map(|c| c.label.as_str()).collect();
    assert_eq!(got, expect, "copies of {payload} received by {labels:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_every_node_once_and_self_is_honoured() {
    let nodes = Nodes::start(3, &[]).await;
    nodes.wait_converged(CONVERGE).await;

    let mut quiet = joined(&nodes, 0, "quiet", false).await;
    let mut loud = joined(&nodes, 0, "loud", true).await;
    let mut local = joined(&nodes, 0, "local", false).await;
    let mut b = joined(&nodes, 1, "b", false).await;
    let mut c = joined(&nodes, 2, "c", false).await;
    let took = until_delivered(
        &mut quiet,
        ROOM,
        &mut [&mut b, &mut c, &mut local],
        CONVERGE,
    )
    .await;
    eprintln!("interest in {ROOM} reached the other nodes after {took:?}");

    // self:false on node 1: everyone but the sender, once each.
    let one = json!({"n": 1});
    quiet.broadcast(ROOM, "msg", one.clone()).await;
    counts(
        &mut [&mut quiet, &mut loud, &mut local, &mut b, &mut c],
        &one,
        &[0, 1, 1, 1, 1],
    )
    .await;

    // self:true: the sender too, once.
    let two = json!({"n": 2});
    loud.broadcast(ROOM, "msg", two.clone()).await;
    counts(
        &mut [&mut quiet, &mut loud, &mut local, &mut b, &mut c],
        &two,
        &[1, 1, 1, 1, 1],
    )
    .await;

    // From a subscriber on node 3.
    let three = json!({"n": 3});
    c.broadcast(ROOM, "msg", three.clone()).await;
    counts(
        &mut [&mut quiet, &mut loud, &mut local, &mut b, &mut c],
        &three,
        &[1, 1, 1, 1, 0],
    )
    .await;

    // The HTTP API on node 2 reaches every subscriber, node 2's own included, once.
    let four = json!({"n": 4});
    let status = nodes
        .http_broadcast(1, json!([{"topic": ROOM, "event": "msg", "payload": four}]))
        .await;
    assert_eq!(status, 202);
    counts(
        &mut [&mut quiet, &mut loud, &mut local, &mut b, &mut c],
        &four,
        &[1, 1, 1, 1, 1],
    )
    .await;

    // Order per (publisher, room) is kept on every node.
    for seq in 0..30 {
        quiet.broadcast(ROOM, "seq", json!({"seq": seq})).await;
    }
    let want: Vec<serde_json::Value> = (0..30).map(|seq| json!({"seq": seq})).collect();
    for client in [&mut local, &mut b, &mut c] {
        client
            .expect_until(DELIVER, "30 ordered broadcasts", |c| {
                c.broadcasts(ROOM, "seq").len() >= 30
            })
            .await;
        client.settle(QUIET).await;
        assert_eq!(client.broadcasts(ROOM, "seq"), want, "{}", client.label);
    }
}
