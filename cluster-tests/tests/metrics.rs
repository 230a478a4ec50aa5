//! `GET /metrics` across the cluster: the scraped node merges every live member's series (asked
//! over the bus) into one text, each series labelled with its node; `/metrics/{region}` keeps
//! the nodes of that region only.

use std::net::SocketAddr;
use std::time::Duration;

use cluster_tests::Nodes;
use serde_json::json;

const SECRET: &str = "cluster-metrics-secret-cluster-metrics-secret";
const CONVERGE: Duration = Duration::from_secs(20);

async fn scrape(addr: SocketAddr, path: &str, token: &str) -> String {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("metrics request");
    assert_eq!(r.status(), 200, "{path}");
    r.text().await.unwrap()
}

/// The value of the one sample of `name` whose labels include `node="<node>"`.
fn sample(text: &str, name: &str, node: &str) -> Option<f64> {
    let label = format!("node=\"{node}\"");
    text.lines()
        .find(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().expect("a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_every_member_are_merged_and_regions_filter_them() {
    let mut nodes = Nodes::start(2, &[("METRICS_JWT_SECRET", SECRET), ("REGION", "r1")]).await;
    let other = nodes.add_node(&[("REGION", "r2")]).await;
    nodes.wait_converged(CONVERGE).await;
    let token = testkit::sign(&json!({"role": "metrics"}), SECRET);
    let names: Vec<String> = (0..nodes.len())
        .map(|i| nodes.name(i).to_string())
        .collect();

    let all = scrape(nodes.addr(0), "/metrics", &token).await;
    for name in &names {
        assert_eq!(
            sample(&all, "realtime_bus_peers", name),
            Some(2.0),
            "{name} answers and is linked to both others:\n{all}"
        );
        assert_eq!(sample(&all, "realtime_ring_members", name), Some(3.0));
    }
    assert_eq!(
        all.matches("# TYPE realtime_bus_peers gauge\n").count(),
        1,
        "one family header for all nodes"
    );

    let r1 = scrape(nodes.addr(other), "/metrics/r1", &token).await;
    assert!(
        sample(&r1, "realtime_connections", &names[0]).is_some(),
        "{r1}"
    );
    assert!(
        sample(&r1, "realtime_connections", &names[1]).is_some(),
        "{r1}"
    );
    assert_eq!(sample(&r1, "realtime_connections", &names[other]), None);
    let r2 = scrape(nodes.addr(0), "/metrics/r2", &token).await;
    assert!(
        sample(&r2, "realtime_connections", &names[other]).is_some(),
        "{r2}"
    );
    assert_eq!(sample(&r2, "realtime_connections", &names[0]), None);

    // A stopped member is no longer asked; the others still answer.
    nodes.stop(1).await;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let all = scrape(nodes.addr(0), "/metrics", &token).await;
        if sample(&all, "realtime_connections", &names[1]).is_none() {
            assert!(sample(&all, "realtime_connections", &names[other]).is_some());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stopped node still listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
