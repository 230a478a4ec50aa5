//! Presence across nodes: a client on each of 3 nodes tracks, and every client ends with all
//! three; a client joining afterwards gets the whole cluster's view in its `presence_state`.

use std::time::Duration;

use cluster_tests::{Client, Nodes, join_config};
use serde_json::json;

const ROOM: &str = "presence-room";
const CONVERGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_converges_across_three_nodes() {
    let nodes = Nodes::start(3, &[]).await;
    nodes.wait_converged(CONVERGE).await;

    let keys = ["user-1", "user-2", "user-3"];
    let mut clients: Vec<Client> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let mut c = nodes.client(i, key).await;
        c.join(ROOM, join_config(false, Some(key), json!([]))).await;
        c.track(ROOM, json!({"node": nodes.name(i), "user": key}))
            .await;
        clients.push(c);
    }
    let start = std::time::Instant::now();
    for c in &mut clients {
        c.expect_until(Duration::from_secs(10), "all three presences", |c| {
            c.presence_is(ROOM, &keys)
        })
        .await;
    }
    eprintln!("presence converged on 3 nodes within {:?}", start.elapsed());

    // Each key has one meta, carrying what its client tracked.
    for c in &clients {
        let view = c.presence(ROOM);
        for (i, key) in keys.iter().enumerate() {
            let metas = &view.keys[*key];
            assert_eq!(metas.len(), 1, "{}: {key}: {metas:?}", c.label);
            assert_eq!(metas[0]["node"], nodes.name(i), "{}: {metas:?}", c.label);
            assert!(metas[0]["phx_ref"].is_string());
        }
    }

    // A join on node 1 after convergence: the time until every node's client has its diff
    // (measured on the frames' read times, so polling adds nothing).
    let mut joiner = nodes.client(0, "user-4").await;
    joiner
        .join(ROOM, join_config(false, Some("user-4"), json!([])))
        .await;
    let tracked_at = std::time::Instant::now();
    joiner
        .track(ROOM, json!({"node": nodes.name(0), "user": "user-4"}))
        .await;
    let with_joiner = ["user-1", "user-2", "user-3", "user-4"];
    let mut seen_after = Vec::new();
    for c in &mut clients {
        c.expect_until(Duration::from_secs(10), "the joiner's presence", |c| {
            c.presence_is(ROOM, &with_joiner)
        })
        .await;
        let diff = c
            .frames()
            .iter()
            .find(|f| f.event == "presence_diff" && f.payload["joins"].get("user-4").is_some())
            .expect("the join came as a presence_diff");
        seen_after.push(diff.at.saturating_duration_since(tracked_at));
    }
    eprintln!("presence: a join on node 1 reached every node's client after {seen_after:?}");

    // A late joiner on any node gets the whole cluster in its presence_state.
    for i in 0..3 {
        let mut late = nodes.client(i, "late").await;
        late.join(ROOM, join_config(false, Some("late"), json!([])))
            .await;
        assert!(
            late.presence_is(ROOM, &with_joiner),
            "{}: the presence_state shows {:?}",
            late.label,
            late.presence(ROOM).key_set()
        );
    }
}
