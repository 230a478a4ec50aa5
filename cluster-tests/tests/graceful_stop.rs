//! A graceful stop (SIGTERM) announces the node's departure: its presences leave the other
//! nodes at once. The failure detector is made very slow here (phi 500: a silent node would be
//! declared dead only after minutes), so only the announced leave can make it in time.

use std::time::{Duration, Instant};

use cluster_tests::{Client, Nodes};

const ROOM: &str = "stop-room";
const CONVERGE: Duration = Duration::from_secs(20);
/// Far below what the slowed failure detector needs, and below the kill test's bound.
const LEAVE_BOUND: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_nodes_presences_leave_at_once() {
    let mut nodes = Nodes::start(3, &[("GOSSIP_PHI_THRESHOLD", "500")]).await;
    nodes.wait_converged(CONVERGE).await;

    let keys = ["user-1", "user-2", "user-3"];
    let mut clients = nodes.tracked_clients(ROOM, &keys, CONVERGE).await;
    let mut survivors: Vec<Client> = clients.drain(..2).collect();

    let stopped = Instant::now();
    let waits = futures::future::join_all(survivors.iter_mut().map(|c| async move {
        c.expect_until(LEAVE_BOUND, "leave of user-3", |c| {
            c.presence_is(ROOM, &["user-1", "user-2"])
        })
        .await;
        c.presence(ROOM)
            .left_at("user-3")
            .map(|t| t.duration_since(stopped))
    }));
    let (status, times) = tokio::join!(nodes.stop(2), waits);
    eprintln!("user-3 left after {times:?} of the SIGTERM; the node exited with {status}");
    assert!(status.success(), "a graceful stop exits with 0: {status}");
    for t in &times {
        assert!(t.is_some(), "a leave diff for user-3");
    }
    // The membership views drop it as fast (no failure detection involved).
    nodes.wait_converged(LEAVE_BOUND).await;
}
