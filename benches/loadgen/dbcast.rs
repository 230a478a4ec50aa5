//! Scenario `g` (dbcast): Broadcast from the database against the real server (needs `--url`
//! and `--pg`, the tenant's database).
//!
//! `--conns` (1000) v2 subscribers on `--topics` (10) public topics, so 100 per topic by
//! default. Phase `db`: `--raw-rows` (200000) rows inserted into `realtime.messages` in
//! transactions of `--raw-batch` (1000), spread over the topics; the figure is rows/s and
//! deliveries/s from the first insert to the last delivery (every row reaches every subscriber
//! of its topic). Phase `http`, the same-run baseline: the same number of messages through
//! `POST /api/broadcast` in batches of `--raw-batch`, measured the same way. Server CPU
//! seconds per phase with `--server-pid`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_postgres::NoTls;
use tokio_tungstenite::tungstenite::Message;

use super::client::{self, ClientConfig};
use super::stats::sample_processes;
use super::wire::{self, Vsn};
use super::{Opts, cpu_delta};

#[derive(Default)]
struct Counters {
    joined: AtomicU64,
    failed: AtomicU64,
    /// Kind-4 frames (database broadcasts).
    binary: AtomicU64,
    /// Text `broadcast` frames (the HTTP batch API).
    text: AtomicU64,
}

fn topic_name(t: usize) -> String {
    format!("bench-db-{t}")
}

async fn subscriber(
    cfg: Arc<ClientConfig>,
    topic: String,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut ws = client::dial(&cfg, None).await?;
    let join = json!(["1", "1", format!("realtime:{topic}"), "phx_join",
        {"config": {"broadcast": {"self": false}, "private": false}, "access_token": cfg.token}]);
    ws.send(Message::text(join.to_string()))
        .await
        .map_err(|e| format!("send join: {e}"))?;
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.tick().await;
    let mut hb_ref = 1_000u64;
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            _ = heartbeat.tick() => {
                hb_ref += 1;
                ws.send(Message::text(wire::heartbeat_frame(Vsn::V2, &hb_ref.to_string())))
                    .await
                    .map_err(|e| format!("send heartbeat: {e}"))?;
            }
            message = ws.next() => match message {
                Some(Ok(Message::Binary(b))) if b.first() == Some(&4) => {
                    counters.binary.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(Message::Text(text))) => {
                    if text.contains("\"broadcast\",{") {
                        counters.text.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let v: Value = serde_json::from_str(text.as_str()).map_err(|e| format!("bad frame: {e}"))?;
                    if v[3] == "phx_reply" && v[2] != "phoenix" {
                        if v[4]["status"] != "ok" {
                            return Err(format!("join refused: {}", v[4]));
                        }
                        counters.joined.fetch_add(1, Ordering::Relaxed);
                    } else if v[3] == "phx_close" || v[3] == "phx_error" || v[3] == "system" {
                        return Err(format!("channel: {text}"));
                    }
                }
                Some(Ok(Message::Close(c))) => return Err(format!("closed by the server: {c:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("connection ended".into()),
            }
        }
    }
}

/// Waits until `count()` reaches `target` (or `max` passes); returns when it last grew.
async fn drain(count: impl Fn() -> u64, target: u64, max: Duration) -> (u64, Instant) {
    let deadline = Instant::now() + max;
    let (mut last, mut last_at) = (count(), Instant::now());
    while last < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let now = count();
        if now != last {
            last = now;
            last_at = Instant::now();
        } else if last_at.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    (last, last_at)
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

fn http_base(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or("--url must start with ws://")?;
    let host = rest.split('/').next().unwrap_or(rest);
    Ok(format!("http://{host}"))
}

/// Runs scenario `g`.
pub async fn run(o: &Opts) -> Result<(), String> {
    let url = o.url.clone().ok_or("scenario g needs --url")?;
    let pg_url = o.pg.clone().ok_or("scenario g needs --pg")?;
    let topics = o.topics.unwrap_or(10).max(1);
    let conns = o.conns.unwrap_or(1000).max(topics);
    let per_topic = conns / topics;
    let rows = o.raw_rows as u64;
    let batch = o.raw_batch.max(1) as u64;
    let token = super::changes::sign_user_jwt(&o.jwt_secret, "anon", None)?;
    let cfg = Arc::new(ClientConfig {
        url: url.clone(),
        host: format!("{}.localhost", o.tenant),
        token: token.clone(),
        vsn: Vsn::V2,
        payload: 0,
        source_ips: Vec::new(),
        heartbeat: Duration::from_secs_f64(o.heartbeat),
        spread_urls: Vec::new(),
        private: false,
    });
    let (client, connection) = tokio_postgres::connect(&pg_url, NoTls)
        .await
        .map_err(|e| format!("--pg: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });

    println!(
        "scenario g (dbcast): {conns} subscribers, {topics} topics ({per_topic} per topic), {rows} messages per phase in batches of {batch}, payload ~{} bytes",
        o.payload
    );
    let counters = Arc::new(Counters::default());
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for i in 0..per_topic * topics {
        let (cfg, counters, stop_rx) = (cfg.clone(), counters.clone(), stop_rx.clone());
        let topic = topic_name(i % topics);
        tasks.spawn(async move {
            if let Err(e) = subscriber(cfg, topic, counters.clone(), stop_rx).await {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("loadgen: subscriber {i}: {e}");
            }
        });
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let subs = (per_topic * topics) as u64;
    let (joined, _) = drain(
        || counters.joined.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed),
        subs,
        Duration::from_secs(120),
    )
    .await;
    println!(
        "  {joined}/{subs} joined, {} failed",
        counters.failed.load(Ordering::Relaxed)
    );

    // Warm-up: one row per topic until every subscriber got one (the owner's stream is up).
    let insert = "insert into realtime.messages (topic, extension, event, payload, private) \
        select 'bench-db-' || (g % $3::int8), 'broadcast', 'b', \
               jsonb_build_object('g', g, 'pad', repeat('x', $4::int4)), false \
        from generate_series($1::int8, $2::int8) g";
    let pad = o.payload as i32;
    let warm = Instant::now();
    loop {
        let before = counters.binary.load(Ordering::Relaxed);
        // Until the tenant migrations ran (the owner's stream set-up opens the tenant pool),
        // realtime.messages may not exist yet.
        if let Err(e) = client
            .execute(
                insert,
                &[&0i64, &(topics as i64 - 1), &(topics as i64), &pad],
            )
            .await
        {
            if warm.elapsed() > Duration::from_secs(60) {
                return Err(format!("warm-up insert: {}", pg_error(&e)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let (got, _) = drain(
            || counters.binary.load(Ordering::Relaxed) - before,
            subs,
            Duration::from_millis(500),
        )
        .await;
        if got >= subs {
            break;
        }
        if warm.elapsed() > Duration::from_secs(60) {
            return Err("the database broadcast stream did not deliver within 60 s".into());
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expected = rows * per_topic as u64;

    // Phase db.
    let base = counters.binary.load(Ordering::Relaxed);
    let cpu0 = sample_processes(&o.server_pids);
    let t0 = Instant::now();
    let mut written = 0u64;
    while written < rows {
        let n = batch.min(rows - written);
        client
            .execute(
                insert,
                &[
                    &(written as i64),
                    &((written + n) as i64 - 1),
                    &(topics as i64),
                    &pad,
                ],
            )
            .await
            .map_err(|e| format!("insert: {}", pg_error(&e)))?;
        written += n;
    }
    let wrote = t0.elapsed().as_secs_f64();
    let (got, last) = drain(
        || counters.binary.load(Ordering::Relaxed) - base,
        expected,
        Duration::from_secs_f64(o.drain_max.max(30.0)),
    )
    .await;
    let cpu_db = cpu_delta(cpu0, sample_processes(&o.server_pids));
    let secs_db = last.duration_since(t0).as_secs_f64();
    println!(
        "  db:   {rows} rows written in {wrote:.2} s ({:.0} rows/s); {got}/{expected} delivered in {secs_db:.2} s: {:.0} rows/s, {:.0} deliveries/s; server cpu {cpu_db:.2} s",
        rows as f64 / wrote,
        rows as f64 * (got as f64 / expected as f64) / secs_db,
        got as f64 / secs_db,
    );

    // Phase http: the same messages through the batch API.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = reqwest::Client::new();
    let endpoint = format!("{}/api/broadcast", http_base(&url)?);
    let body_pad = "x".repeat(o.payload);
    let base = counters.text.load(Ordering::Relaxed);
    let cpu0 = sample_processes(&o.server_pids);
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < rows {
        let n = batch.min(rows - sent);
        let messages: Vec<Value> = (sent..sent + n)
            .map(|g| {
                json!({"topic": topic_name(g as usize % topics), "event": "b",
                       "payload": {"g": g, "pad": body_pad}, "private": false})
            })
            .collect();
        let r = http
            .post(&endpoint)
            .header("host", format!("{}.localhost", o.tenant))
            .header("apikey", &token)
            .header("authorization", format!("Bearer {token}"))
            .json(&json!({ "messages": messages }))
            .send()
            .await
            .map_err(|e| format!("POST /api/broadcast: {e}"))?;
        if !r.status().is_success() {
            return Err(format!(
                "POST /api/broadcast: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ));
        }
        sent += n;
    }
    let posted = t0.elapsed().as_secs_f64();
    let (got_http, last) = drain(
        || counters.text.load(Ordering::Relaxed) - base,
        expected,
        Duration::from_secs_f64(o.drain_max.max(30.0)),
    )
    .await;
    let cpu_http = cpu_delta(cpu0, sample_processes(&o.server_pids));
    let secs_http = last.duration_since(t0).as_secs_f64();
    println!(
        "  http: {rows} messages posted in {posted:.2} s; {got_http}/{expected} delivered in {secs_http:.2} s: {:.0} msgs/s, {:.0} deliveries/s; server cpu {cpu_http:.2} s",
        rows as f64 * (got_http as f64 / expected as f64) / secs_http,
        got_http as f64 / secs_http,
    );
    println!(
        "summary dbcast subs_per_topic={per_topic} db_rows_per_s={:.0} db_deliveries_per_s={:.0} http_msgs_per_s={:.0} http_deliveries_per_s={:.0} db/http={:.2} lost_db={} lost_http={}",
        rows as f64 * (got as f64 / expected as f64) / secs_db,
        got as f64 / secs_db,
        rows as f64 * (got_http as f64 / expected as f64) / secs_http,
        got_http as f64 / secs_http,
        (got as f64 / secs_db) / (got_http as f64 / secs_http),
        expected - got.min(expected),
        expected - got_http.min(expected),
    );
    let _ = stop.send(true);
    let all = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(10), all).await;
    Ok(())
}
