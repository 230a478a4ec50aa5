//! Two node processes of the built binary against one PostgreSQL, started by the harness with
//! the cluster variables: each answers a heartbeat and a join, whether or not they have linked.

use cluster_tests::Nodes;
use serde_json::json;
use testkit::ws::{Ws, connect_as, recv_json, send_json};
use testkit::{API_SECRET, SELF_HOST, client_token};

async fn heartbeat_and_join(ws: &mut Ws) {
    send_json(ws, json!([null, "1", "phoenix", "heartbeat", {}])).await;
    assert_eq!(
        recv_json(ws).await,
        json!([null, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );

    let config = json!({"broadcast": {"ack": false, "self": false},
                        "presence": {"key": "", "enabled": false},
                        "postgres_changes": [], "private": false});
    send_json(
        ws,
        json!(["2", "2", "realtime:smoke", "phx_join", {"config": config}]),
    )
    .await;
    let reply = recv_json(ws).await;
    assert_eq!(reply[0], "2", "{reply}");
    assert_eq!(reply[1], "2", "{reply}");
    assert_eq!(reply[2], "realtime:smoke", "{reply}");
    assert_eq!(reply[3], "phx_reply", "{reply}");
    assert_eq!(reply[4]["status"], "ok", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_processes_on_one_database_each_serve_a_client() {
    let nodes = Nodes::start(2, &[]).await;
    assert_ne!(nodes[0].addr(), nodes[1].addr());

    let token = client_token(API_SECRET, 3600);
    for i in 0..nodes.len() {
        let mut ws = connect_as(&nodes[i], SELF_HOST, &token, "2.0.0").await;
        heartbeat_and_join(&mut ws).await;
        let log = nodes[i].log_text();
        assert!(log.contains(nodes.name(i)), "{log}");
    }
}
