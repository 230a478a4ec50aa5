//! A node with the right cluster id and seeds but another cluster secret is refused: its gossip
//! carries another keyed tag, so it never enters the others' membership (nor the ring), it never
//! gets a bus link to them, and no broadcast crosses between it and them.

use std::time::{Duration, Instant};

use cluster_tests::{Nodes, join_config, until_delivered};
use serde_json::json;

const ROOM: &str = "secret-room";
const CONVERGE: Duration = Duration::from_secs(20);
/// How long the intruder is watched (the good pair links in well under a second).
const WATCH: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_wrong_secret_is_refused() {
    let mut nodes = Nodes::start(2, &[]).await;
    nodes.wait_converged(CONVERGE).await;
    let bad = nodes
        .add_node(&[(
            "CLUSTER_SECRET",
            "not-the-secret-of-this-cluster-0123456789abcdef",
        )])
        .await;

    let mut g1 = nodes.client(0, "g1").await;
    let mut g2 = nodes.client(1, "g2").await;
    let mut intruder = nodes.client(bad, "intruder").await;
    for c in [&mut g1, &mut g2, &mut intruder] {
        c.join(ROOM, join_config(false, None, json!([]))).await;
    }
    // The good pair works.
    until_delivered(&mut g1, ROOM, &mut [&mut g2], CONVERGE).await;

    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < WATCH {
        n += 1;
        g1.broadcast(ROOM, "msg", json!({"from": "g1", "n": n}))
            .await;
        intruder
            .broadcast(ROOM, "msg", json!({"from": "intruder", "n": n}))
            .await;
        for i in 0..nodes.len() {
            let info = nodes.cluster_info(i).await.expect("a view");
            let linked = info.linked_set();
            if i == bad {
                assert!(linked.is_empty(), "the intruder is linked to {linked:?}");
                assert_eq!(info.member_names().len(), 1, "the intruder sees others");
            } else {
                assert!(
                    !info.member_names().contains(nodes.name(bad)),
                    "{} has the intruder as a member",
                    nodes.name(i)
                );
                assert!(
                    !linked.contains(nodes.name(bad)),
                    "{} linked the intruder",
                    nodes.name(i)
                );
            }
        }
        for c in [&mut g1, &mut g2, &mut intruder] {
            c.settle(Duration::from_millis(100)).await;
        }
    }
    assert!(nodes.alive(bad), "the intruder keeps running");
    let from = |c: &cluster_tests::Client, who: &str| {
        c.broadcasts(ROOM, "msg")
            .iter()
            .filter(|p| p["from"] == who)
            .count()
    };
    assert!(from(&g2, "g1") > 0, "g2 got g1's broadcasts");
    assert_eq!(from(&intruder, "g1"), 0, "the intruder got g1's broadcasts");
    assert_eq!(from(&g1, "intruder"), 0, "g1 got the intruder's broadcasts");
    assert_eq!(from(&g2, "intruder"), 0, "g2 got the intruder's broadcasts");
    // And the good pair is still whole.
    nodes.wait_converged_among(&[0, 1], CONVERGE).await;
}
