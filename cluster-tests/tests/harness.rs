//! The harness itself, on what works without the cluster: kill, stop and restart on the same
//! ports; and the scenario client's view of broadcast, presence and Postgres Changes on a single
//! node (a cluster of one), so the cluster scenarios rest on a checked client.

use std::time::Duration;

use cluster_tests::{Nodes, inserted_ids, join_config, publish_items_table};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_stop_and_restart_keep_name_and_ports() {
    let mut nodes = Nodes::start(2, &[]).await;
    let addrs = [nodes.addr(0), nodes.addr(1)];
    let pid = nodes[0].pid();

    nodes.kill(0);
    assert!(!nodes.is_running(0));
    assert_eq!(nodes.running(), [1]);
    nodes.restart(0).await;
    assert_ne!(nodes[0].pid(), pid, "a new process");
    assert_eq!(nodes.addr(0), addrs[0], "on the same port");
    assert!(nodes[0].log_text().contains("node-1"));

    // SIGTERM makes it exit by itself (not killed after the timeout). Its exit code is the
    // graceful_stop scenario's business: the server's shutdown can still fail under load.
    let status = nodes.stop(1).await;
    assert!(status.code().is_some(), "exited by itself: {status}");
    nodes.restart(1).await;
    assert_eq!(nodes.addr(1), addrs[1]);

    for i in 0..2 {
        let mut c = nodes.client(i, "probe").await;
        c.join("room", join_config(false, None, json!([]))).await;
    }
    let extra = nodes
        .add_node(&[("CLUSTER_SECRET", "another-secret-of-the-cluster")])
        .await;
    assert_eq!(nodes.name(extra), "node-3");
    assert!(nodes.alive(extra));
    let ports: Vec<_> = (0..3).map(|i| nodes.ports(i)).collect();
    assert!(ports[2] != ports[0] && ports[2] != ports[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_sees_broadcast_presence_and_changes_on_one_node() {
    let nodes = Nodes::builder(1)
        .standalone()
        .vars(&[("SLOT_NAME_SUFFIX", &format!("h{}", std::process::id()))])
        .start()
        .await;
    publish_items_table(&nodes.db).await;

    // Broadcast: self false / true, and the HTTP API.
    let mut quiet = nodes.client(0, "quiet").await;
    let mut loud = nodes.client(0, "loud").await;
    quiet.join("b", join_config(false, None, json!([]))).await;
    loud.join("b", join_config(true, None, json!([]))).await;
    quiet.broadcast("b", "msg", json!({"n": 1})).await;
    loud.broadcast("b", "msg", json!({"n": 2})).await;
    assert_eq!(
        nodes
            .http_broadcast(
                0,
                json!([{"topic": "b", "event": "msg", "payload": {"n": 3}}])
            )
            .await,
        202
    );
    for c in [&mut quiet, &mut loud] {
        c.expect_until(Duration::from_secs(5), "n=3", |c| {
            c.count_broadcast("b", "msg", &json!({"n": 3})) == 1
        })
        .await;
        c.settle(Duration::from_millis(300)).await;
    }
    // Order holds per publisher only: the three come from three publishers (two sockets and
    // the HTTP API), so they are compared as sets.
    let sorted = |mut got: Vec<serde_json::Value>| {
        got.sort_by_key(|v| v["n"].as_i64());
        got
    };
    assert_eq!(
        sorted(quiet.broadcasts("b", "msg")),
        [json!({"n": 2}), json!({"n": 3})]
    );
    assert_eq!(
        sorted(loud.broadcasts("b", "msg")),
        [json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]
    );

    // Presence: two trackers, a leave on close.
    let mut p1 = nodes.client(0, "p1").await;
    let mut p2 = nodes.client(0, "p2").await;
    p1.join("p", join_config(false, Some("k1"), json!([])))
        .await;
    p1.track("p", json!({"x": 1})).await;
    p2.join("p", join_config(false, Some("k2"), json!([])))
        .await;
    assert!(p2.presence_is("p", &["k1"]), "the state shows k1");
    p2.track("p", json!({"x": 2})).await;
    p1.expect_until(Duration::from_secs(5), "k1 and k2", |c| {
        c.presence_is("p", &["k1", "k2"])
    })
    .await;
    drop(p2);
    p1.expect_until(Duration::from_secs(5), "the leave of k2", |c| {
        c.presence_is("p", &["k1"])
    })
    .await;
    assert!(p1.presence("p").left_at("k2").is_some());

    // Postgres Changes on the self-host tenant's database.
    let mut sub = nodes.client(0, "sub").await;
    sub.join(
        "changes",
        join_config(
            false,
            None,
            json!([{"event": "INSERT", "schema": "public", "table": "items"}]),
        ),
    )
    .await;
    sub.expect_until(Duration::from_secs(20), "Subscribed to PostgreSQL", |c| {
        c.system("changes")
            .iter()
            .any(|s| s["message"] == "Subscribed to PostgreSQL")
    })
    .await;
    let db = testkit::connect(&nodes.db).await;
    for id in 1..=20i64 {
        db.execute(
            "insert into public.items (id, note) values ($1, 'x')",
            &[&id],
        )
        .await
        .expect("insert");
    }
    sub.expect_until(Duration::from_secs(10), "20 changes", |c| {
        inserted_ids(c, "changes").len() >= 20
    })
    .await;
    assert_eq!(inserted_ids(&sub, "changes"), (1..=20).collect::<Vec<_>>());
}
