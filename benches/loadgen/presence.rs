//! Scenario `e | presence`: `--conns` N clients on one topic, each tracking one presence.
//!
//! Against the real server only (the baseline fan-out server has no presence); the baseline of
//! this scenario is the same fan-out done with broadcasts on the same server in the same run.
//! Steps, with every client joined (presence enabled, key `u<i>`, `broadcast.self`):
//!
//! 1. **broadcast round** (baseline): every client sends one JSON broadcast at once; the timer
//!    runs from the first send until every client has received all N.
//! 2. **presence sync**: every client tracks at once; the timer runs from the first track until
//!    every client's view (its `presence_state` plus the `presence_diff`s applied in order) holds
//!    all N keys. Printed with its ratio to step 1: the cost of presence over the raw fan-out of
//!    the same N² messages.
//! 3. **churn**: for `--duration` s, clients re-track a new meta at `--rates` total updates per
//!    second (each an update in place: one diff with a join and a leave, fanned out to N);
//!    delivered presence events per second = diffs received by all clients over the window plus
//!    the drain that follows (at most `--drain-max` s), with the loss against updates × N.
//! 4. **check**: every client's view must hold N keys with exactly one meta each.
//!
//! The tenant's `max_presence_events_per_second` (which counts every delivered diff once per
//! recipient) is raised through the tenants API first (`--jwt-secret` is the API secret, as under
//! `scripts/bench`), and the server needs `CLIENT_PRESENCE_MAX_CALLS` above the churn's per-client
//! calls per 30 s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::client::{self, ClientConfig};

const TOPIC: &str = "realtime:lg-presence";

/// What every connection is asked to do.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Wait,
    Broadcast,
    Track,
    Churn {
        per_conn: f64,
        epoch: Instant,
        until: Instant,
    },
    Check,
    Stop,
}

#[derive(Default)]
struct Shared {
    joined: AtomicUsize,
    bcast_complete: AtomicUsize,
    state_complete: AtomicUsize,
    consistent: AtomicUsize,
    checked: AtomicUsize,
    diffs: AtomicU64,
    updates: AtomicU64,
    closed: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, e: String) {
        let mut slot = self.first_error.lock().expect("error slot poisoned");
        slot.get_or_insert(e);
    }
}

/// Figures of one run.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// Seconds until every client received every broadcast of the round.
    pub broadcast_round_s: f64,
    /// Seconds until every client's presence view was complete.
    pub presence_sync_s: f64,
    /// Presence updates sent per second during the churn.
    pub updates_per_s: f64,
    /// Presence diffs delivered per second during the churn (all clients).
    pub events_per_s: f64,
    /// Lost diffs in percent of updates × N.
    pub loss_pct: f64,
    /// Clients whose final view had N keys with one meta each.
    pub consistent: usize,
}

/// Per-connection view of the room: presence key → metas currently known.
#[derive(Default)]
struct View {
    keys: HashMap<String, usize>,
}

impl View {
    fn apply_state(&mut self, state: &Value) {
        self.keys.clear();
        if let Some(map) = state.as_object() {
            for (k, v) in map {
                let n = v["metas"].as_array().map_or(0, Vec::len);
                if n > 0 {
                    self.keys.insert(k.clone(), n);
                }
            }
        }
    }

    /// Joins first, then leaves, as realtime-js applies a diff.
    fn apply_diff(&mut self, diff: &Value) {
        if let Some(joins) = diff["joins"].as_object() {
            for (k, v) in joins {
                *self.keys.entry(k.clone()).or_default() +=
                    v["metas"].as_array().map_or(0, Vec::len);
            }
        }
        if let Some(leaves) = diff["leaves"].as_object() {
            for (k, v) in leaves {
                let n = v["metas"].as_array().map_or(0, Vec::len);
                if let Some(have) = self.keys.get_mut(k) {
                    *have = have.saturating_sub(n);
                    if *have == 0 {
                        self.keys.remove(k);
                    }
                }
            }
        }
    }
}

fn frame(reference: u64, event: &str, payload: Value) -> Message {
    Message::text(json!(["1", reference.to_string(), TOPIC, event, payload]).to_string())
}

async fn connection(
    cfg: Arc<ClientConfig>,
    index: usize,
    n: usize,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    connecting: Arc<Semaphore>,
) -> Result<(), String> {
    // A permit paces the handshakes; it is released once joined.
    let mut permit = Some(
        connecting
            .acquire_owned()
            .await
            .map_err(|e| format!("connect permit: {e}"))?,
    );
    let mut ws = client::dial(&cfg, None).await?;
    let mut reference = 1u64;
    ws.send(frame(
        reference,
        "phx_join",
        json!({"config": {"broadcast": {"self": true, "ack": false},
            "presence": {"key": format!("u{index}"), "enabled": true},
            "postgres_changes": [], "private": false}}),
    ))
    .await
    .map_err(|e| format!("send join: {e}"))?;
    let mut view = View::default();
    let (mut bcasts, mut bcast_done, mut state_done) = (0usize, false, false);
    let mut version = 0u64;
    let mut churn: Option<(f64, Instant, Instant)> = None;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(15));
    loop {
        let next_update = churn.map(|(per_conn, epoch, until)| {
            // Spread the clients over one period so that the updates are not synchronized.
            let offset = index as f64 / n as f64;
            let at = epoch + Duration::from_secs_f64((version as f64 + offset) / per_conn);
            (at, until)
        });
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let now = *phase.borrow_and_update();
                match now {
                    Phase::Wait => {}
                    Phase::Broadcast => {
                        reference += 1;
                        ws.send(frame(reference, "broadcast",
                            json!({"type": "broadcast", "event": "b", "payload": {"from": index}})))
                            .await.map_err(|e| format!("send broadcast: {e}"))?;
                    }
                    Phase::Track => {
                        reference += 1;
                        ws.send(frame(reference, "presence",
                            json!({"type": "presence", "event": "track", "payload": {"v": 0}})))
                            .await.map_err(|e| format!("send track: {e}"))?;
                    }
                    Phase::Churn { per_conn, epoch, until } => churn = Some((per_conn, epoch, until)),
                    Phase::Check => {
                        churn = None;
                        if view.keys.len() == n && view.keys.values().all(|&m| m == 1) {
                            shared.consistent.fetch_add(1, Ordering::Relaxed);
                        }
                        shared.checked.fetch_add(1, Ordering::Relaxed);
                    }
                    Phase::Stop => {
                        let _ = ws.close(None).await;
                        return Ok(());
                    }
                }
            }
            () = async {
                match next_update {
                    Some((at, _)) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some((at, until)) = next_update {
                    if at >= until {
                        churn = None;
                    } else {
                        version += 1;
                        reference += 1;
                        ws.send(frame(reference, "presence",
                            json!({"type": "presence", "event": "track", "payload": {"v": version}})))
                            .await.map_err(|e| format!("send update: {e}"))?;
                        shared.updates.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ = heartbeat.tick() => {
                reference += 1;
                let hb = json!([null, reference.to_string(), "phoenix", "heartbeat", {}]).to_string();
                ws.send(Message::text(hb)).await.map_err(|e| format!("send heartbeat: {e}"))?;
            }
            message = ws.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(c))) => return Err(format!("closed by the server: {c:?}")),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("read: {e}")),
                    None => return Err("connection ended".into()),
                };
                let v: Value = serde_json::from_str(text.as_str()).map_err(|e| format!("bad frame: {e}"))?;
                match v[3].as_str() {
                    Some("presence_state") => {
                        view.apply_state(&v[4]);
                        shared.joined.fetch_add(1, Ordering::Relaxed);
                        drop(permit.take());
                    }
                    Some("presence_diff") => {
                        shared.diffs.fetch_add(1, Ordering::Relaxed);
                        view.apply_diff(&v[4]);
                        if !state_done && view.keys.len() == n {
                            state_done = true;
                            shared.state_complete.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some("broadcast") => {
                        bcasts += 1;
                        if !bcast_done && bcasts == n {
                            bcast_done = true;
                            shared.bcast_complete.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some("phx_reply") if v[4]["status"] != "ok" => {
                        return Err(format!("error reply: {}", v[4]));
                    }
                    Some("system" | "phx_close") => return Err(format!("channel closed: {}", v[4])),
                    _ => {}
                }
            }
        }
    }
}

async fn wait_for(what: &str, counter: &AtomicUsize, target: usize, timeout: Duration) -> f64 {
    let start = Instant::now();
    while counter.load(Ordering::Relaxed) < target {
        if start.elapsed() > timeout {
            println!(
                "  {what}: only {}/{target} after {:.0} s",
                counter.load(Ordering::Relaxed),
                timeout.as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed().as_secs_f64()
}

/// Raises the tenant's presence rate limit through the tenants API.
async fn raise_presence_limit(url: &str, tenant: &str, api_secret: &str) -> Result<(), String> {
    let rest = url.strip_prefix("ws://").ok_or("only ws:// URLs")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs()
        + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"role": "service_role", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(api_secret.as_bytes()),
    )
    .map_err(|e| e.to_string())?;
    let response = reqwest::Client::new()
        .patch(format!("http://{authority}/api/tenants/{tenant}"))
        .bearer_auth(token)
        .json(&json!({"tenant": {"max_presence_events_per_second": 1_000_000_000}}))
        .send()
        .await
        .map_err(|e| format!("tenants API: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "tenants API answered {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        ));
    }
    Ok(())
}

/// Runs the scenario once against the server at `cfg.url`.
pub async fn run_once(
    cfg: Arc<ClientConfig>,
    n: usize,
    rate: f64,
    duration: f64,
    drain_max: f64,
) -> Result<Figures, String> {
    let shared = Arc::new(Shared::default());
    let (phase_tx, phase_rx) = watch::channel(Phase::Wait);
    let mut tasks = JoinSet::new();
    let connecting = Arc::new(Semaphore::new(64));
    let open = Instant::now();
    for i in 0..n {
        let (cfg, shared, rx, connecting) = (
            cfg.clone(),
            shared.clone(),
            phase_rx.clone(),
            connecting.clone(),
        );
        tasks.spawn(async move {
            if let Err(e) = connection(cfg, i, n, shared.clone(), rx, connecting).await {
                shared.closed.fetch_add(1, Ordering::Relaxed);
                shared.error(format!("conn {i}: {e}"));
            }
        });
    }
    let t = wait_for("joins", &shared.joined, n, Duration::from_secs(120)).await;
    println!(
        "  {} joined in {t:.2} s ({:.0} joins/s)",
        shared.joined.load(Ordering::Relaxed),
        n as f64 / open.elapsed().as_secs_f64()
    );
    let mut f = Figures::default();

    phase_tx.send_replace(Phase::Broadcast);
    f.broadcast_round_s = wait_for(
        "broadcast round",
        &shared.bcast_complete,
        n,
        Duration::from_secs(120),
    )
    .await;
    println!(
        "  broadcast round: {} x {} deliveries in {:.3} s",
        n, n, f.broadcast_round_s
    );

    let diffs0 = shared.diffs.load(Ordering::Relaxed);
    phase_tx.send_replace(Phase::Track);
    f.presence_sync_s = wait_for(
        "presence sync",
        &shared.state_complete,
        n,
        Duration::from_secs(120),
    )
    .await;
    println!(
        "  presence sync: every view complete in {:.3} s ({} diffs; {:.2}x the broadcast round)",
        f.presence_sync_s,
        shared.diffs.load(Ordering::Relaxed) - diffs0,
        f.presence_sync_s / f.broadcast_round_s.max(1e-9)
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let diffs0 = shared.diffs.load(Ordering::Relaxed);
    let epoch = Instant::now();
    let until = epoch + Duration::from_secs_f64(duration);
    phase_tx.send_replace(Phase::Churn {
        per_conn: rate / n as f64,
        epoch,
        until,
    });
    tokio::time::sleep_until(until.into()).await;
    let updates = shared.updates.load(Ordering::Relaxed);
    let expected = updates * n as u64;
    let drain_deadline = Instant::now() + Duration::from_secs_f64(drain_max);
    while shared.diffs.load(Ordering::Relaxed) - diffs0 < expected
        && Instant::now() < drain_deadline
        && shared.closed.load(Ordering::Relaxed) == 0
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let window = epoch.elapsed().as_secs_f64();
    let got = shared.diffs.load(Ordering::Relaxed) - diffs0;
    f.updates_per_s = updates as f64 / duration;
    f.events_per_s = got as f64 / window;
    f.loss_pct = if expected == 0 {
        0.0
    } else {
        100.0 * expected.saturating_sub(got) as f64 / expected as f64
    };
    println!(
        "  churn: {updates} updates in {duration:.1} s ({:.0}/s) -> {got}/{expected} diffs in {window:.2} s: {:.0} presence events/s delivered, loss {:.3} %",
        f.updates_per_s, f.events_per_s, f.loss_pct
    );

    phase_tx.send_replace(Phase::Check);
    let alive = n - shared.closed.load(Ordering::Relaxed);
    wait_for("check", &shared.checked, alive, Duration::from_secs(10)).await;
    f.consistent = shared.consistent.load(Ordering::Relaxed);
    println!(
        "  check: {}/{} views hold {n} keys with one meta each",
        f.consistent, n
    );
    if let Some(e) = shared
        .first_error
        .lock()
        .expect("error slot poisoned")
        .as_ref()
    {
        println!(
            "  first error ({} connections lost): {e}",
            shared.closed.load(Ordering::Relaxed)
        );
    }
    phase_tx.send_replace(Phase::Stop);
    while tasks.join_next().await.is_some() {}
    Ok(f)
}

/// What to run.
pub struct Plan<'a> {
    /// Tenant external id.
    pub tenant: &'a str,
    /// `API_JWT_SECRET` of the server, for the tenants API.
    pub api_secret: &'a str,
    /// Clients on the topic.
    pub conns: usize,
    /// Total presence updates per second during the churn.
    pub rate: f64,
    /// Churn length in seconds.
    pub duration: f64,
    /// Longest wait for the churn's last diffs, in seconds.
    pub drain_max: f64,
    /// Runs.
    pub repeat: usize,
}

/// Raises the tenant limit, then runs the scenario `plan.repeat` times and returns the runs.
pub async fn run(cfg: Arc<ClientConfig>, plan: &Plan<'_>) -> Result<Vec<Figures>, String> {
    raise_presence_limit(&cfg.url, plan.tenant, plan.api_secret).await?;
    // The tenant update disconnects the tenant's sockets; let it settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut runs = Vec::new();
    for r in 0..plan.repeat {
        println!("  run {}/{}:", r + 1, plan.repeat);
        runs.push(
            run_once(
                cfg.clone(),
                plan.conns,
                plan.rate,
                plan.duration,
                plan.drain_max,
            )
            .await?,
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(runs)
}

// As in main.rs: the bench target has no harness; `tests/loadgen.rs` runs these.
#[cfg(test)]
#[allow(dead_code, unused_imports)]
mod tests {
    use super::*;

    #[test]
    fn views_apply_states_and_diffs_like_realtime_js() {
        let mut v = View::default();
        v.apply_state(&json!({"a": {"metas": [{"phx_ref": "1"}]}}));
        v.apply_diff(&json!({"joins": {"b": {"metas": [{"phx_ref": "2"}]}}, "leaves": {}}));
        assert_eq!(v.keys.len(), 2);
        // An update: join of the new meta and leave of the old one in one diff.
        v.apply_diff(&json!({"joins": {"a": {"metas": [{"phx_ref": "3"}]}},
            "leaves": {"a": {"metas": [{"phx_ref": "1"}]}}}));
        assert_eq!(v.keys.get("a"), Some(&1));
        v.apply_diff(&json!({"joins": {}, "leaves": {"b": {"metas": [{"phx_ref": "2"}]}}}));
        assert_eq!(v.keys.len(), 1);
    }
}
