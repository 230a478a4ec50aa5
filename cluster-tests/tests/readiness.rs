//! `GET /healthcheck/ready` (the Kubernetes readiness probe, k8s/base/statefulset.yaml): a node
//! whose seeds name a peer it has not found answers 503 while `/healthcheck` (liveness) already
//! answers 200; both answer 200 once the peer is up and they have joined.

use std::time::{Duration, Instant};

use cluster_tests::Nodes;

const CONVERGE: Duration = Duration::from_secs(20);
/// Seeds are re-resolved this rarely, so the give-up wait (two periods) never ends in this test.
const REFRESH_MS: &str = "60000";

async fn status(nodes: &Nodes, i: usize, path: &str) -> u16 {
    let url = format!("http://{}{path}", nodes.addr(i));
    reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_ready_once_it_has_joined_its_peers() {
    let mut nodes = Nodes::start(2, &[("DNS_NODES_REFRESH_MS", REFRESH_MS)]).await;
    nodes.wait_converged(CONVERGE).await;
    for i in 0..2 {
        assert_eq!(status(&nodes, i, "/healthcheck/ready").await, 200);
        assert_eq!(
            status(&nodes, i, "/realtime/v1/healthcheck/ready").await,
            200
        );
    }

    // node-2 comes back alone: its seeds name node-1, which is down.
    nodes.kill(0);
    nodes.kill(1);
    nodes.restart(1).await;
    assert_eq!(status(&nodes, 1, "/healthcheck").await, 200, "alive");
    for _ in 0..5 {
        assert_eq!(
            status(&nodes, 1, "/healthcheck/ready").await,
            503,
            "not joined"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    nodes.restart(0).await;
    let started = Instant::now();
    loop {
        let ready = [
            status(&nodes, 0, "/healthcheck/ready").await,
            status(&nodes, 1, "/healthcheck/ready").await,
        ];
        if ready == [200, 200] {
            break;
        }
        assert!(started.elapsed() < CONVERGE, "not both ready: {ready:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("both ready {:?} after node-1 restarted", started.elapsed());
}
