//! kill -9 of a node: its presences leave every other node within a bounded time (the failure
//! detector's, a few seconds), and the clients of the other nodes keep receiving broadcasts.

use std::time::{Duration, Instant};

use cluster_tests::{Client, Nodes, join_config, until_delivered};
use serde_json::json;

const ROOM: &str = "failure-room";
const CONVERGE: Duration = Duration::from_secs(20);
/// The bound of the scenario (the target is 5 s; this is the generous test bound).
const LEAVE_BOUND: Duration = Duration::from_secs(10);

/// A broadcast from `from` reaches `to` exactly once.
async fn one_way(from: &mut Client, to: &mut Client, n: u32) {
    let payload = json!({"after_kill": n});
    from.broadcast(ROOM, "msg", payload.clone()).await;
    to.expect_until(Duration::from_secs(5), "a broadcast after the kill", |c| {
        c.count_broadcast(ROOM, "msg", &payload) >= 1
    })
    .await;
    to.settle(Duration::from_millis(500)).await;
    assert_eq!(to.count_broadcast(ROOM, "msg", &payload), 1, "{}", to.label);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_presences_leave_everywhere_and_broadcasts_go_on() {
    let mut nodes = Nodes::start(3, &[]).await;
    nodes.wait_converged(CONVERGE).await;

    let keys = ["user-1", "user-2", "user-3"];
    let mut clients = nodes.tracked_clients(ROOM, &keys, CONVERGE).await;
    let mut survivors: Vec<Client> = clients.drain(..2).collect();

    let killed = Instant::now();
    nodes.kill(2);
    let waits = survivors.iter_mut().map(|c| async move {
        c.expect_until(LEAVE_BOUND, "leave of user-3", |c| {
            c.presence_is(ROOM, &["user-1", "user-2"])
        })
        .await;
        c.presence(ROOM)
            .left_at("user-3")
            .map(|t| t.duration_since(killed))
    });
    let times = futures::future::join_all(waits).await;
    eprintln!("user-3 (on the killed node) left after {times:?}");
    for t in &times {
        assert!(t.is_some(), "a leave diff for user-3");
    }

    // The survivors still talk to each other, both ways, once per message.
    nodes.wait_converged(LEAVE_BOUND).await;
    let (first, second) = survivors.split_at_mut(1);
    one_way(&mut first[0], &mut second[0], 1).await;
    one_way(&mut second[0], &mut first[0], 2).await;
    // And a room created after the kill works too.
    for c in survivors.iter_mut() {
        c.join("after-room", join_config(false, None, json!([])))
            .await;
    }
    let (first, second) = survivors.split_at_mut(1);
    until_delivered(&mut first[0], "after-room", &mut [&mut second[0]], CONVERGE).await;
}
