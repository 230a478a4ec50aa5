//! A node killed and restarted under the same name and ports rejoins as a new incarnation: its
//! old presences leave and never come back, and presences tracked on the new run reach everyone.

use std::time::{Duration, Instant};

use cluster_tests::{Nodes, join_config};
use serde_json::json;

const ROOM: &str = "restart-room";
const CONVERGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_without_its_old_presences() {
    let mut nodes = Nodes::start(3, &[]).await;
    nodes.wait_converged(CONVERGE).await;

    let keys = ["user-1", "old-2", "user-3"];
    let mut clients = nodes.tracked_clients(ROOM, &keys, CONVERGE).await;
    let old = nodes.cluster_info(1).await.expect("node-2's view");
    // Its socket stays open until the kill: old-2 must not leave by an untrack first.
    let on_killed = clients.remove(1);

    nodes.kill(1);
    drop(on_killed);
    let restarted = Instant::now();
    nodes.restart(1).await;
    nodes.wait_converged(CONVERGE).await;
    let new = nodes.cluster_info(1).await.expect("node-2's view");
    assert_eq!(new.node, "node-2");
    assert_ne!(new.incarnation, old.incarnation, "a new incarnation");

    for c in &mut clients {
        c.expect_until(Duration::from_secs(10), "the leave of old-2", |c| {
            c.presence_is(ROOM, &["user-1", "user-3"])
        })
        .await;
    }

    let mut fresh = nodes.client(1, "new-2").await;
    fresh
        .join(ROOM, join_config(false, Some("new-2"), json!([])))
        .await;
    fresh.track(ROOM, json!({"node": "node-2"})).await;
    let all = ["user-1", "new-2", "user-3"];
    fresh
        .expect_until(CONVERGE, "the other nodes' presences", |c| {
            c.presence_is(ROOM, &all)
        })
        .await;
    for c in &mut clients {
        c.expect_until(CONVERGE, "new-2", |c| c.presence_is(ROOM, &all))
            .await;
    }

    // Anti-entropy rounds pass; the old run's entry stays gone everywhere.
    for c in clients.iter_mut().chain(std::iter::once(&mut fresh)) {
        c.settle(Duration::from_secs(2)).await;
        assert!(
            c.presence_is(ROOM, &all),
            "{}: {:?}",
            c.label,
            c.presence(ROOM).key_set()
        );
        let view = c.presence(ROOM);
        let came_back = match view.left_at("old-2") {
            Some(left) => view.joined_since("old-2", left),
            None => view.joined_since("old-2", restarted),
        };
        assert!(!came_back, "{}: old-2 came back", c.label);
    }
}
