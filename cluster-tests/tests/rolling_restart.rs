//! A rolling restart of a 3-node cluster (the graceful drain): every client is away for one
//! reconnect per stop of its node, no longer.
//!
//! 30 clients connect through the entry proxy (round-robin, so 10 per node) and join one room
//! with presence; 10 of them track, one publishes a numbered broadcast every 50 ms. Nodes 1, 2
//! and 3 are then restarted in turn: SIGTERM, exit status 0, started again under the same name
//! and ports, converged. A client whose node stops gets the `system` disconnect message on the
//! room and a close with 1012, reconnects through the proxy (which skips the stopped node: it
//! refuses connections from the first step of its drain) and rejoins (and tracks again).
//!
//! The reconnect is made at once, not after the 1 s realtime-js waits first
//! (`reconnectAfterMs(1)`): that is the strict case. It can only succeed on the first attempt if
//! the draining node no longer accepts when it tells its clients to go, and the away times then
//! show what the drain and a reconnect cost; realtime-js adds its fixed second on top
//! (`tests/js/test/cluster.test.mjs` runs that real timer).
//!
//! Asserted: each client reconnected exactly once per stop of its node (not at all for the
//! other steps), with the `system` message and 1012, its first attempt succeeded, on another
//! node, and its rejoin was answered ok; no client missed a broadcast except those published
//! during its own away window (from the SIGTERM of its node until its rejoin's reply) or the
//! publisher's; none came twice; presence converges to the 10 keys (one meta each) on every
//! client after each step; the restarted node is back with a new incarnation, in every node's
//! view and ring, and a client that joins it directly gets the full presence state and the
//! broadcasts. The away times (system message → rejoin reply) are printed per step.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::client::topic;
use cluster_tests::proxy::{EntryProxy, Routes};
use cluster_tests::{Client, Nodes, join_config};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const ROOM: &str = "rolling-room";
const CLIENTS: usize = 30;
const NODES: usize = 3;
const CONVERGE: Duration = Duration::from_secs(20);
const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// How long a client waits after its socket closed before it reconnects (see the module doc).
const RECONNECT_DELAY: Duration = Duration::ZERO;
/// Attempts before a client gives up (the test wants 1; more show how far off it was).
const MAX_ATTEMPTS: usize = 5;

/// What a draining node sends each joined channel before it closes the socket.
fn disconnect_message() -> Value {
    json!({"extension": "system", "status": "ok", "message": "Server requested disconnect"})
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Publisher,
    Tracker,
    Listener,
}

/// One reconnect of a client.
#[derive(Clone, Debug)]
struct Away {
    /// The step (1-based, node `step` stopping) during which the socket closed; 0 outside.
    step: usize,
    /// The node it was on, and the one it landed on.
    from: Option<usize>,
    to: Option<usize>,
    /// The `system` pushes on the room over the closed connection.
    system: Vec<Value>,
    system_at: Option<Instant>,
    code: Option<u16>,
    attempts: usize,
    /// When the rejoin (and the track, for a tracker) was answered ok.
    rejoined_at: Instant,
}

/// What a client task shows the test while it runs.
#[derive(Clone, Debug, Default)]
struct Status {
    node: Option<usize>,
    synced: bool,
    /// Presence key → number of metas.
    presence: BTreeMap<String, usize>,
    /// The sequence numbers received, in arrival order.
    received: Vec<u64>,
    /// Broadcasts after this sequence number are owed to this client (set once its path is
    /// known open).
    owed_after: Option<u64>,
    aways: Vec<Away>,
}

/// What every client task shares.
struct Shared {
    proxy: SocketAddr,
    routes: Routes,
    node_addrs: Vec<SocketAddr>,
    /// The running step (1-based), 0 between steps.
    step: AtomicUsize,
    /// Sequence number → when the publisher sent it.
    published: Mutex<Vec<(u64, Instant)>>,
    stop_publishing: CancellationToken,
    stop: CancellationToken,
}

impl Shared {
    /// The node the proxy connected `c` to.
    async fn node_of(&self, c: &Client) -> Option<usize> {
        let local = c.local_addr()?;
        let backend = self
            .routes
            .backend_of(local, Duration::from_secs(2))
            .await?;
        self.node_addrs.iter().position(|a| *a == backend)
    }

    fn last_published(&self) -> Option<u64> {
        self.published.lock().unwrap().last().map(|(n, _)| *n)
    }
}

/// Joins the room with presence (key: the label), and tracks for a tracker; panics unless both
/// are answered ok.
async fn join_room(c: &mut Client, role: Role) {
    let key = c.label.clone();
    c.join(ROOM, join_config(false, Some(&key), json!([])))
        .await;
    if role == Role::Tracker {
        c.track(ROOM, json!({"client": key})).await;
    }
}

/// Reconnects `c` (closed by the server) through the proxy and rejoins; `mark` is the number of
/// frames it had when it joined last.
async fn come_back(
    c: &mut Client,
    role: Role,
    shared: &Shared,
    from: Option<usize>,
    mark: usize,
) -> Away {
    let step = shared.step.load(Ordering::SeqCst);
    let room = topic(ROOM);
    let system: Vec<_> = c.frames()[mark..]
        .iter()
        .filter(|f| f.topic == room && f.event == "system")
        .collect();
    let system_at = system.first().map(|f| f.at);
    let system = system.into_iter().map(|f| f.payload.clone()).collect();
    let code = c.close_code();
    tokio::time::sleep(RECONNECT_DELAY).await;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match c.reconnect(shared.proxy).await {
            Ok(()) => break,
            Err(e) if attempts < MAX_ATTEMPTS => {
                eprintln!("{}: reconnect attempt {attempts} failed: {e}", c.label);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("{}: {attempts} reconnect attempts failed: {e}", c.label),
        }
    }
    let to = shared.node_of(c).await;
    join_room(c, role).await;
    Away {
        step,
        from,
        to,
        system,
        system_at,
        code,
        attempts,
        rejoined_at: Instant::now(),
    }
}

/// A client's life: publish (the publisher), read, show its state, and come back when its
/// socket is closed, until the test says stop.
async fn run(mut c: Client, role: Role, shared: Arc<Shared>, status: Arc<Mutex<Status>>) -> Client {
    let room = topic(ROOM);
    let mut mark = c.frames().len();
    let mut scanned = 0;
    let mut seq = 0u64;
    let mut next_publish = Instant::now();
    while !shared.stop.is_cancelled() {
        if role == Role::Publisher
            && !shared.stop_publishing.is_cancelled()
            && !c.is_closed()
            && Instant::now() >= next_publish
        {
            seq += 1;
            let at = Instant::now();
            // A send into a socket the node is closing is counted: it falls in the
            // publisher's own away window.
            if c.try_broadcast(ROOM, "seq", json!({"n": seq}))
                .await
                .is_ok()
            {
                shared.published.lock().unwrap().push((seq, at));
            }
            next_publish = at + PUBLISH_EVERY;
        }
        c.wait_until(Duration::from_millis(25), Client::is_closed)
            .await;
        {
            let view = c.presence(ROOM);
            let mut s = status.lock().unwrap();
            s.synced = view.synced;
            s.presence = view
                .keys
                .iter()
                .map(|(k, m)| (k.clone(), m.len()))
                .collect();
            for f in &c.frames()[scanned..] {
                if f.topic == room && f.event == "broadcast" && f.payload["event"] == "seq" {
                    s.received.extend(f.payload["payload"]["n"].as_u64());
                }
            }
            scanned = c.frames().len();
        }
        if c.is_closed() {
            let from = status.lock().unwrap().node;
            let away = come_back(&mut c, role, &shared, from, mark).await;
            mark = c.frames().len();
            let mut s = status.lock().unwrap();
            s.node = away.to;
            s.aways.push(away);
        }
    }
    c
}

/// A running client task.
struct Running {
    label: String,
    role: Role,
    status: Arc<Mutex<Status>>,
    task: tokio::task::JoinHandle<Client>,
}

fn spawn(c: Client, role: Role, node: Option<usize>, shared: &Arc<Shared>) -> Running {
    let status = Arc::new(Mutex::new(Status {
        node,
        ..Status::default()
    }));
    Running {
        label: c.label.clone(),
        role,
        status: status.clone(),
        task: tokio::spawn(run(c, role, shared.clone(), status)),
    }
}

/// Polls the client states until `cond` holds for every one of `clients`.
///
/// # Panics
/// After `timeout`, with the states of those for which it does not.
async fn wait_all(
    clients: &[&Running],
    timeout: Duration,
    what: &str,
    cond: impl Fn(&Status) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let failing: Vec<String> = clients
            .iter()
            .filter(|r| r.task.is_finished() || !cond(&r.status.lock().unwrap()))
            .map(|r| {
                let s = r.status.lock().unwrap();
                format!(
                    "{} (task ended: {}, node {:?}, synced {}, presence {:?}, aways {:?})",
                    r.label,
                    r.task.is_finished(),
                    s.node,
                    s.synced,
                    s.presence,
                    s.aways
                )
            })
            .collect();
        if failing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {timeout:?} on {} clients:\n  {}",
            failing.len(),
            failing.join("\n  ")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The nearest-rank percentile `p` (0..=100) of `values`, in milliseconds.
fn percentile_ms(values: &[Duration], p: usize) -> u128 {
    let mut v: Vec<u128> = values.iter().map(Duration::as_millis).collect();
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    v[((v.len() * p).div_ceil(100)).saturating_sub(1)]
}

/// One step's facts for the final checks.
struct Step {
    sigterm_at: Instant,
    /// The clients on the node when it got SIGTERM.
    moved: BTreeSet<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_keeps_each_client_away_for_one_reconnect() {
    let mut nodes = Nodes::start(NODES, &[]).await;
    nodes.wait_converged(CONVERGE).await;
    let names: BTreeSet<String> = (0..NODES).map(|i| nodes.name(i).to_string()).collect();
    let node_addrs: Vec<SocketAddr> = (0..NODES).map(|i| nodes.addr(i)).collect();
    let proxy = EntryProxy::start(
        Path::new(env!("CARGO_BIN_EXE_entry_proxy")),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &node_addrs,
    );
    let shared = Arc::new(Shared {
        proxy: proxy.addr(),
        routes: proxy.routes(),
        node_addrs,
        step: AtomicUsize::new(0),
        published: Mutex::new(Vec::new()),
        stop_publishing: CancellationToken::new(),
        stop: CancellationToken::new(),
    });

    // Client 0 publishes, every third from 1 on tracks: c01, c04, ..., c28.
    let role = |i: usize| match i {
        0 => Role::Publisher,
        i if i % 3 == 1 => Role::Tracker,
        _ => Role::Listener,
    };
    let label = |i: usize| format!("c{i:02}");
    let trackers: BTreeMap<String, usize> = (0..CLIENTS)
        .filter(|&i| role(i) == Role::Tracker)
        .map(|i| (label(i), 1))
        .collect();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut c = Client::connect(shared.proxy, label(i)).await;
        let node = shared.node_of(&c).await;
        join_room(&mut c, role(i)).await;
        clients.push(spawn(c, role(i), node, &shared));
    }
    for k in 0..NODES {
        let on_k = clients
            .iter()
            .filter(|r| r.status.lock().unwrap().node == Some(k))
            .count();
        assert_eq!(
            on_k,
            CLIENTS / NODES,
            "round-robin puts a third of the clients on node {}",
            k + 1
        );
    }
    let all: Vec<&Running> = clients.iter().collect();
    wait_all(&all, CONVERGE, "full presence", |s| {
        s.synced && s.presence == trackers
    })
    .await;
    let receivers: Vec<&Running> = clients
        .iter()
        .filter(|r| r.role != Role::Publisher)
        .collect();
    wait_all(&receivers, CONVERGE, "first broadcast", |s| {
        !s.received.is_empty()
    })
    .await;
    let baseline = shared.last_published();
    for r in &receivers {
        r.status.lock().unwrap().owed_after = baseline;
    }

    let mut watchers = Vec::new();
    let mut steps = Vec::new();
    for k in 0..NODES {
        let step = k + 1;
        let name = nodes.name(k).to_string();
        let old = nodes
            .cluster_info(k)
            .await
            .expect("the view before the stop");
        let moved: BTreeSet<String> = clients
            .iter()
            .filter(|r| r.status.lock().unwrap().node == Some(k))
            .map(|r| r.label.clone())
            .collect();
        shared.step.store(step, Ordering::SeqCst);
        let sigterm_at = Instant::now();
        let exit = nodes.stop(k).await;
        let stopped_in = sigterm_at.elapsed();
        assert!(exit.success(), "{name} exits with 0 after SIGTERM: {exit}");
        nodes.restart(k).await;
        nodes.wait_converged(CONVERGE).await;
        for i in 0..NODES {
            nodes
                .wait_for_view(i, CONVERGE, "the full ring", |v| {
                    v.ring.iter().cloned().collect::<BTreeSet<_>>() == names
                })
                .await;
        }
        let new = nodes
            .cluster_info(k)
            .await
            .expect("the view after the restart");
        assert_ne!(
            new.incarnation, old.incarnation,
            "{name} restarted as a new incarnation"
        );

        let back: Vec<&Running> = clients
            .iter()
            .filter(|r| moved.contains(&r.label))
            .collect();
        wait_all(&back, CONVERGE, "reconnect", |s| {
            s.aways.iter().any(|a| a.step == step)
        })
        .await;
        shared.step.store(0, Ordering::SeqCst);
        let everyone: Vec<&Running> = clients.iter().chain(&watchers).collect();
        wait_all(&everyone, CONVERGE, "full presence", |s| {
            s.synced && s.presence == trackers
        })
        .await;

        // A client joining the restarted node directly: the cluster's presence is there, and
        // so are the broadcasts (which also makes the node's interest in the room known before
        // the next step sends clients to it).
        let mut w = nodes.client(k, &format!("watch-{step}")).await;
        join_room(&mut w, Role::Listener).await;
        let keys: Vec<&str> = trackers.keys().map(String::as_str).collect();
        w.expect_until(CONVERGE, "the full presence state", |c| {
            c.presence_is(ROOM, &keys)
        })
        .await;
        w.expect_until(CONVERGE, "a broadcast", |c| {
            !c.broadcasts(ROOM, "seq").is_empty()
        })
        .await;
        let watcher = spawn(w, Role::Listener, Some(k), &shared);
        watcher.status.lock().unwrap().owed_after = shared.last_published();
        watchers.push(watcher);

        let (aways, gaps): (Vec<Duration>, Vec<Duration>) = back
            .iter()
            .filter_map(|r| {
                let s = r.status.lock().unwrap();
                let a = s.aways.iter().find(|a| a.step == step)?;
                let told = a.system_at?;
                Some((
                    a.rejoined_at.duration_since(told),
                    a.rejoined_at.duration_since(sigterm_at),
                ))
            })
            .unzip();
        eprintln!(
            "step {step} ({name}): SIGTERM to exit {} ms; {} clients moved; away (system message to rejoin reply) p50 {} ms, max {} ms; SIGTERM to rejoin reply p50 {} ms, max {} ms",
            stopped_in.as_millis(),
            moved.len(),
            percentile_ms(&aways, 50),
            percentile_ms(&aways, 100),
            percentile_ms(&gaps, 50),
            percentile_ms(&gaps, 100),
        );
        steps.push(Step { sigterm_at, moved });
    }

    // The last broadcast reaches everyone, then every task stops.
    shared.stop_publishing.cancel();
    tokio::time::sleep(PUBLISH_EVERY * 2).await;
    let last = shared.last_published().expect("something was published");
    let receivers: Vec<&Running> = clients
        .iter()
        .chain(&watchers)
        .filter(|r| r.role != Role::Publisher)
        .collect();
    wait_all(&receivers, CONVERGE, "last broadcast", |s| {
        s.received.contains(&last)
    })
    .await;
    shared.stop.cancel();
    let published = shared.published.lock().unwrap().clone();
    let mut finished = Vec::new();
    for r in clients.into_iter().chain(watchers) {
        let status = r.status.clone();
        r.task
            .await
            .unwrap_or_else(|e| panic!("{}'s task: {e}", r.label));
        finished.push((r.label, r.role, status.lock().unwrap().clone()));
    }

    // Reconnects: exactly one per stop of the client's node, as the drain promises.
    let mut problems = Vec::new();
    for (label, _, s) in &finished {
        for a in s.aways.iter().filter(|a| a.step == 0) {
            problems.push(format!("{label}: a disconnect outside the steps: {a:?}"));
        }
        for (k, step) in steps.iter().enumerate() {
            let these: Vec<&Away> = s.aways.iter().filter(|a| a.step == k + 1).collect();
            let want = usize::from(step.moved.contains(label));
            if these.len() != want {
                problems.push(format!(
                    "{label}: {} reconnects in step {}, not {want}: {these:?}",
                    these.len(),
                    k + 1
                ));
                continue;
            }
            let Some(a) = these.first() else { continue };
            if a.system != [disconnect_message()] || a.code != Some(1012) {
                problems.push(format!(
                    "{label}: step {}: not the system message and 1012: {a:?}",
                    k + 1
                ));
            }
            if a.attempts != 1 || a.from != Some(k) || a.to.is_none() || a.to == Some(k) {
                problems.push(format!(
                    "{label}: step {}: not one attempt to another node: {a:?}",
                    k + 1
                ));
            }
        }
    }

    // Broadcasts: only those of an away window may be missing, none twice.
    // (step, from its node's SIGTERM, until its rejoin's reply)
    let windows = |s: &Status| -> Vec<(usize, Instant, Instant)> {
        s.aways
            .iter()
            .filter(|a| a.step > 0)
            .map(|a| (a.step, steps[a.step - 1].sigterm_at, a.rejoined_at))
            .collect()
    };
    let publisher_windows = finished
        .iter()
        .find(|(_, role, _)| *role == Role::Publisher)
        .map(|(_, _, s)| windows(s))
        .expect("the publisher");
    // Per step: the most broadcasts one moved client missed.
    let mut missed_per_step = vec![0usize; steps.len()];
    for (label, role, s) in &finished {
        if *role == Role::Publisher {
            continue;
        }
        let got: BTreeSet<u64> = s.received.iter().copied().collect();
        if got.len() != s.received.len() {
            problems.push(format!("{label}: a broadcast came twice"));
        }
        let own = windows(s);
        let owed_after = s.owed_after.expect("set for every receiver");
        let mut missing = Vec::new();
        let mut missed = vec![0usize; steps.len()];
        for (n, at) in published.iter().filter(|(n, _)| *n > owed_after) {
            if got.contains(n) {
                continue;
            }
            let during = |ws: &[(usize, Instant, Instant)]| {
                ws.iter()
                    .find(|(_, from, to)| from <= at && at <= to)
                    .map(|(step, _, _)| *step)
            };
            match (during(&own), during(&publisher_windows)) {
                (Some(step), _) => missed[step - 1] += 1,
                (None, Some(_)) => {}
                (None, None) => missing.push(*n),
            }
        }
        for (max, m) in missed_per_step.iter_mut().zip(missed) {
            *max = (*max).max(m);
        }
        if !missing.is_empty() {
            problems.push(format!(
                "{label}: missed {missing:?} outside every away window"
            ));
        }
    }
    eprintln!(
        "{} broadcasts published, one every {PUBLISH_EVERY:?} while the publisher was connected; most missed by one moved client per step (all inside its away window): {missed_per_step:?}",
        published.len()
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}
