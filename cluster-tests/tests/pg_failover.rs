//! Ownership failover of a Postgres Changes stream: the owner of the self-host tenant's stream
//! (found through `/api/cluster` `streams`) is killed while rows are being inserted, and the
//! subscribers on the surviving nodes still get every committed change (duplicates allowed,
//! gaps not). The tenant's database is the metadata database of the test, with a publication
//! `supabase_realtime` of one table; every node uses the same slot name.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cluster_tests::{Client, Nodes, inserted_ids, join_config, publish_items_table};
use serde_json::json;

const ROOM: &str = "changes";
const CONVERGE: Duration = Duration::from_secs(20);
/// Rows inserted, one per transaction, and after which one the owner is killed.
const ROWS: i64 = 150;
const KILL_AFTER: i64 = 50;

fn ids(client: &Client) -> Vec<i64> {
    inserted_ids(client, ROOM)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_owner_loses_no_committed_change() {
    // One slot name for every node (the stream moves between them), unique to this process.
    let suffix = format!("ct{}", std::process::id());
    let mut nodes = Nodes::start(3, &[("SLOT_NAME_SUFFIX", &suffix)]).await;
    publish_items_table(&nodes.db).await;
    let db = testkit::connect(&nodes.db).await;
    nodes.wait_converged(CONVERGE).await;

    let binding = json!([{"event": "INSERT", "schema": "public", "table": "items"}]);
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = nodes.client(i, "sub").await;
        c.join(ROOM, join_config(false, None, binding.clone()))
            .await;
        c.expect_until(Duration::from_secs(20), "Subscribed to PostgreSQL", |c| {
            c.system(ROOM)
                .iter()
                .any(|s| s["status"] == "ok" && s["message"] == "Subscribed to PostgreSQL")
        })
        .await;
        clients.push(c);
    }
    let owner = nodes
        .wait_stream_owner(testkit::SELF_HOST, Duration::from_secs(15))
        .await;
    eprintln!("{} owns the stream", nodes.name(owner));
    let mut survivors: Vec<Client> = clients
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != owner)
        .map(|(_, c)| c)
        .collect();

    let mut killed_at = None;
    let writer = async {
        let mut committed = Vec::new();
        for id in 1..=ROWS {
            let row = db
                .execute(
                    "insert into public.items (id, note) values ($1, 'x')",
                    &[&id],
                )
                .await;
            if row.is_ok() {
                committed.push(id);
            }
            if id == KILL_AFTER {
                nodes.kill(owner);
                killed_at = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        committed
    };
    let all: BTreeSet<i64> = (1..=ROWS).collect();
    let readers = futures::future::join_all(survivors.iter_mut().map(|c| {
        let all = &all;
        async move {
            c.wait_until(Duration::from_secs(45), |c| {
                ids(c).into_iter().collect::<BTreeSet<_>>().is_superset(all)
            })
            .await
        }
    }));
    let (committed, _) = tokio::join!(writer, readers);
    assert_eq!(committed.len() as i64, ROWS, "every insert committed");
    let killed_at = killed_at.expect("the owner was killed");

    for c in &survivors {
        let got = ids(c);
        let unique: BTreeSet<i64> = got.iter().copied().collect();
        let missing: Vec<i64> = committed
            .iter()
            .filter(|id| !unique.contains(id))
            .copied()
            .collect();
        eprintln!(
            "{}: {} changes, {} duplicates, {} missing",
            c.label,
            got.len(),
            got.len() - unique.len(),
            missing.len()
        );
        assert!(missing.is_empty(), "{}: missing ids {missing:?}", c.label);
        if let Some(first_after) = c
            .changes(ROOM)
            .iter()
            .zip(c.frames().iter().filter(|f| f.event == "postgres_changes"))
            .find(|(d, _)| d["record"]["id"].as_i64() > Some(KILL_AFTER))
            .map(|(_, f)| f.at)
        {
            eprintln!(
                "{}: first change after the kill arrived {:?} after it",
                c.label,
                first_after.saturating_duration_since(killed_at)
            );
        }
    }

    // A survivor took the stream over.
    let new_owner = nodes
        .wait_stream_owner(testkit::SELF_HOST, Duration::from_secs(15))
        .await;
    assert_ne!(new_owner, owner);
}
