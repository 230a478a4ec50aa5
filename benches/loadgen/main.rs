//! `loadgen`: a load generator for the realtime server, and the baseline it is compared with.
//!
//! ```text
//! cargo bench --bench loadgen -- [run] --scenario a|b|c|d|custom [options]
//! cargo bench --bench loadgen -- baseline-server --port 4100
//! ```
//!
//! Each scenario runs against the baseline server (spawned by default, `--baseline auto`) and,
//! when `--url` is given, against the real server; every figure of the real server is then also
//! printed as a ratio to the baseline measured in the same run. See `usage()` for the options and
//! `scripts/bench` for the pinned, repeated run with a real server and Postgres.
//!
//! What the timers cover: latency is from just before a publish frame is queued in the generator
//! to just after its delivery is decoded by a subscriber connection of the same process (one
//! monotonic clock). Server CPU is utime + stime of `--server-pid` (summed over a cluster's
//! pids) over the measured window plus the drain that follows it (warm-up excluded). On
//! loopback much of the TCP work runs as softirq that no process is charged for, so each step
//! also reports every core's busy share from `/proc/stat` (`cpu0%`, `cpu1%`) and deliveries per
//! busy second of core 0, the servers' core under `scripts/bench`. Joins/s is the number of joined connections divided by the time from
//! the first TCP connect to the last `phx_reply` ok.

mod baseline;
mod changes;
mod client;
mod dbcast;
mod presence;
mod stats;
mod wire;

use std::net::IpAddr;
use std::process::{Child, Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use client::{ClientConfig, ConnRole, ConnectPace, Fleet, Phase, WARMUP_STEP};
use stats::{ProcSample, median, sample_process, sample_processes};
use wire::Vsn;

const DEFAULT_JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

fn usage() -> &'static str {
    "usage: loadgen [run] [options]            run a scenario
       loadgen baseline-server [--port P]  run the baseline fan-out server

scenarios (--scenario):
  a | fanout   1 publisher -> --conns subscribers (1000) on one topic; steps --rates
               (100,200,300,400,600,800,1000,1500,2000 msg/s) until loss > 0 or p99 > --p99-limit-ms
  b | rooms    --conns (5000) in rooms of --room-size (7): 1 publisher at --room-rate
               (1 msg/s) per room, all members subscribed
  c | idle     --conns (10000) join and sit: server RSS delta per connection, joins/s
  d | joins    --conns (5000) connect + join as fast as allowed: joins/s (median of --repeat)
  e | presence --conns (100) clients track on one topic (real server only, needs --url): time
               until every view is complete vs the same fan-out as broadcasts, then presence
               updates at --rates (100/s total) for --duration: presence events/s delivered
  f | changes  Postgres Changes (real server only, needs --url and --pg): phase raw = the
               replication slot's own rate, undecoded vs decoded to JSON (--raw-rows 200000 in
               transactions of --raw-batch 1000); fanout = --conns (500) anon subscribers on
               --topics (10) binding INSERT on public.bench_rows, rows at --rates
               (20,50,100,200,400,800 rows/s), each to all; rls = --conns authenticated
               subscribers in teams of 10 on public.bench_rls_rows (RLS), rows at --rls-rates
               (500,1000,2000,3000,4000 rows/s) to their team, steps bounded by
               --rls-p99-limit-ms (default --p99-limit-ms); --phases raw,fanout,rls
  g | dbcast   Broadcast from the database (real server only, needs --url and --pg): --conns
               (1000) subscribers on --topics (10) public topics; --raw-rows (200000) rows
               inserted into realtime.messages in transactions of --raw-batch (1000): rows/s and
               deliveries/s to the last delivery, then the same messages through
               POST /api/broadcast (same run, same subscribers) as the baseline
  custom       --topics T --subs-per-topic S --pubs-per-topic P --rates R1,R2,..

targets:
  --url ws://127.0.0.1:4000/socket/websocket   real server (omit: baseline only)
  --spread-urls ws://..,ws://..                cluster nodes the real server's subscribers dial
                                               round-robin (publishers stay on --url)
  --server-pid PID[,PID..]                     real server's pids (a cluster's nodes) for CPU and RSS
  --baseline auto|none|ws://...                (auto) spawn this binary's baseline-server
  --baseline-pid PID  --baseline-port 4100  --baseline-cpus 0 (taskset list for auto)
  --tenant realtime-dev  --jwt-secret S  --vsn 2|1
  --pg postgres://postgres:postgres@127.0.0.1:5432/postgres   tenant database (changes)

load:
  --payload 100 (bytes)  --duration 5  --warmup 1  --repeat 3  --drain-max 5 (seconds)
  --connect-rate 0 (conns/s, 0 = unpaced)  --connect-batch 100  --connect-concurrency 256
  --connect-timeout 120  --source-ips 127.0.0.1,127.0.0.2  --heartbeat 25
  --settle 3 --hold 0 (idle)  --p99-limit-ms 100  --stop-on-fail (custom)
  --private (join private channels: the server runs its RLS read check per join;
             the token is role authenticated, sub loadgen)
  --threads N (runtime workers; default = cores allowed, 1 = current-thread runtime)"
}

#[derive(Clone, Debug, PartialEq)]
enum BaselineMode {
    Auto,
    Off,
    Url(String),
}

#[derive(Clone, Debug)]
struct Opts {
    server_mode: bool,
    scenario: String,
    url: Option<String>,
    server_pids: Vec<u32>,
    baseline: BaselineMode,
    baseline_pid: Option<u32>,
    baseline_port: u16,
    baseline_cpus: Option<String>,
    port: u16,
    tenant: String,
    jwt_secret: String,
    vsn: Vsn,
    conns: Option<usize>,
    topics: Option<usize>,
    subs_per_topic: usize,
    pubs_per_topic: usize,
    room_size: usize,
    room_rate: f64,
    rates: Option<Vec<f64>>,
    duration: f64,
    warmup: f64,
    repeat: usize,
    drain_max: f64,
    payload: usize,
    connect_rate: f64,
    connect_batch: usize,
    connect_concurrency: usize,
    connect_timeout: f64,
    source_ips: Vec<IpAddr>,
    spread_urls: Vec<String>,
    heartbeat: f64,
    settle: f64,
    hold: f64,
    private: bool,
    p99_limit_ms: f64,
    stop_on_fail: bool,
    threads: Option<usize>,
    pg: Option<String>,
    rls_rates: Option<Vec<f64>>,
    phases: Option<Vec<String>>,
    raw_rows: usize,
    raw_batch: usize,
    rls_p99_limit_ms: Option<f64>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            server_mode: false,
            scenario: "a".into(),
            url: None,
            server_pids: Vec::new(),
            baseline: BaselineMode::Auto,
            baseline_pid: None,
            baseline_port: 4100,
            baseline_cpus: None,
            port: 4100,
            tenant: "realtime-dev".into(),
            jwt_secret: DEFAULT_JWT_SECRET.into(),
            vsn: Vsn::V2,
            conns: None,
            topics: None,
            subs_per_topic: 10,
            pubs_per_topic: 1,
            room_size: 7,
            room_rate: 1.0,
            rates: None,
            duration: 5.0,
            warmup: 1.0,
            repeat: 3,
            drain_max: 5.0,
            payload: 100,
            connect_rate: 0.0,
            connect_batch: 100,
            connect_concurrency: 256,
            connect_timeout: 120.0,
            source_ips: Vec::new(),
            spread_urls: Vec::new(),
            heartbeat: 25.0,
            settle: 3.0,
            hold: 0.0,
            private: false,
            p99_limit_ms: 100.0,
            stop_on_fail: false,
            threads: None,
            pg: None,
            rls_rates: None,
            phases: None,
            raw_rows: 200_000,
            raw_batch: 1000,
            rls_p99_limit_ms: None,
        }
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("invalid value for {key}: {value:?}"))
}

fn parse_list<T: std::str::FromStr>(key: &str, value: &str) -> Result<Vec<T>, String> {
    value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse_num(key, s.trim()))
        .collect()
}

impl Opts {
    /// Parses the arguments after the program name (cargo's own `--bench` already removed).
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts::default();
        let mut i = 0;
        if let Some(first) = args.first() {
            match first.as_str() {
                "baseline-server" => {
                    o.server_mode = true;
                    i = 1;
                }
                "run" => i = 1,
                _ => {}
            }
        }
        while i < args.len() {
            let key = args[i].as_str();
            if key == "--stop-on-fail" {
                o.stop_on_fail = true;
                i += 1;
                continue;
            }
            if key == "--private" {
                o.private = true;
                i += 1;
                continue;
            }
            if key == "-h" || key == "--help" {
                return Err(String::new());
            }
            let value = args
                .get(i + 1)
                .ok_or_else(|| format!("missing value for {key}"))?
                .as_str();
            i += 2;
            match key {
                "--scenario" => o.scenario = value.to_owned(),
                "--url" => o.url = Some(value.to_owned()),
                "--server-pid" => o.server_pids = parse_list(key, value)?,
                "--baseline" => {
                    o.baseline = match value {
                        "auto" => BaselineMode::Auto,
                        "none" | "off" => BaselineMode::Off,
                        url => BaselineMode::Url(url.to_owned()),
                    }
                }
                "--baseline-pid" => o.baseline_pid = Some(parse_num(key, value)?),
                "--baseline-port" => o.baseline_port = parse_num(key, value)?,
                "--baseline-cpus" => o.baseline_cpus = Some(value.to_owned()),
                "--port" => o.port = parse_num(key, value)?,
                "--tenant" => o.tenant = value.to_owned(),
                "--jwt-secret" => o.jwt_secret = value.to_owned(),
                "--vsn" => {
                    o.vsn = match value {
                        "1" | "1.0.0" => Vsn::V1,
                        "2" | "2.0.0" => Vsn::V2,
                        _ => return Err(format!("invalid value for --vsn: {value:?}")),
                    }
                }
                "--conns" => o.conns = Some(parse_num(key, value)?),
                "--topics" => o.topics = Some(parse_num(key, value)?),
                "--subs-per-topic" => o.subs_per_topic = parse_num(key, value)?,
                "--pubs-per-topic" => o.pubs_per_topic = parse_num(key, value)?,
                "--room-size" => o.room_size = parse_num(key, value)?,
                "--room-rate" => o.room_rate = parse_num(key, value)?,
                "--rates" => o.rates = Some(parse_list(key, value)?),
                "--duration" => o.duration = parse_num(key, value)?,
                "--warmup" => o.warmup = parse_num(key, value)?,
                "--repeat" => o.repeat = parse_num::<usize>(key, value)?.max(1),
                "--drain-max" => o.drain_max = parse_num(key, value)?,
                "--payload" => o.payload = parse_num(key, value)?,
                "--connect-rate" => o.connect_rate = parse_num(key, value)?,
                "--connect-batch" => o.connect_batch = parse_num(key, value)?,
                "--connect-concurrency" => o.connect_concurrency = parse_num(key, value)?,
                "--connect-timeout" => o.connect_timeout = parse_num(key, value)?,
                "--source-ips" => o.source_ips = parse_list(key, value)?,
                "--spread-urls" => o.spread_urls = parse_list(key, value)?,
                "--heartbeat" => o.heartbeat = parse_num(key, value)?,
                "--settle" => o.settle = parse_num(key, value)?,
                "--hold" => o.hold = parse_num(key, value)?,
                "--p99-limit-ms" => o.p99_limit_ms = parse_num(key, value)?,
                "--threads" => o.threads = Some(parse_num(key, value)?),
                "--pg" => o.pg = Some(value.to_owned()),
                "--rls-rates" => o.rls_rates = Some(parse_list(key, value)?),
                "--phases" => o.phases = Some(parse_list(key, value)?),
                "--raw-rows" => o.raw_rows = parse_num(key, value)?,
                "--raw-batch" => o.raw_batch = parse_num(key, value)?,
                "--rls-p99-limit-ms" => o.rls_p99_limit_ms = Some(parse_num(key, value)?),
                _ => return Err(format!("unknown option {key}")),
            }
        }
        if o.room_size < 2 {
            return Err("--room-size must be at least 2".into());
        }
        Ok(o)
    }
}

/// What one scenario does, with its presets resolved.
#[derive(Clone, Debug, PartialEq)]
enum Work {
    Steps {
        topics: usize,
        subs_per_topic: usize,
        pubs_per_topic: usize,
        rates: Vec<f64>,
        stop_on_fail: bool,
    },
    Idle {
        conns: usize,
        topics: usize,
    },
    Joins {
        conns: usize,
    },
    Presence {
        conns: usize,
        rate: f64,
    },
    DbCast {
        conns: usize,
    },
    Changes {
        conns: usize,
    },
}

impl Work {
    fn from_opts(o: &Opts) -> Result<Work, String> {
        Ok(match o.scenario.as_str() {
            "a" | "fanout" => Work::Steps {
                topics: 1,
                subs_per_topic: o.conns.unwrap_or(1000),
                pubs_per_topic: 1,
                rates: o.rates.clone().unwrap_or_else(|| {
                    vec![
                        100.0, 200.0, 300.0, 400.0, 600.0, 800.0, 1000.0, 1500.0, 2000.0,
                    ]
                }),
                stop_on_fail: true,
            },
            "b" | "rooms" => {
                let rooms = (o.conns.unwrap_or(5000) / o.room_size).max(1);
                Work::Steps {
                    topics: rooms,
                    subs_per_topic: o.room_size - 1,
                    pubs_per_topic: 1,
                    rates: o
                        .rates
                        .clone()
                        .unwrap_or_else(|| vec![rooms as f64 * o.room_rate]),
                    stop_on_fail: false,
                }
            }
            "c" | "idle" => {
                let conns = o.conns.unwrap_or(10_000);
                Work::Idle {
                    conns,
                    topics: o.topics.unwrap_or((conns / 10).max(1)),
                }
            }
            "d" | "joins" => Work::Joins {
                conns: o.conns.unwrap_or(5000),
            },
            "e" | "presence" => Work::Presence {
                conns: o.conns.unwrap_or(100),
                rate: o
                    .rates
                    .as_ref()
                    .and_then(|r| r.first().copied())
                    .unwrap_or(100.0),
            },
            "g" | "dbcast" => Work::DbCast {
                conns: o.conns.unwrap_or(1000),
            },
            "f" | "changes" => Work::Changes {
                conns: o.conns.unwrap_or(500),
            },
            "custom" => Work::Steps {
                topics: o.topics.unwrap_or(1),
                subs_per_topic: o.subs_per_topic,
                pubs_per_topic: o.pubs_per_topic.max(1),
                rates: o.rates.clone().unwrap_or_else(|| vec![1000.0]),
                stop_on_fail: o.stop_on_fail,
            },
            other => return Err(format!("unknown scenario {other:?}")),
        })
    }

    fn connections(&self) -> usize {
        match self {
            Work::Steps {
                topics,
                subs_per_topic,
                pubs_per_topic,
                ..
            } => topics * (subs_per_topic + pubs_per_topic),
            Work::Idle { conns, .. }
            | Work::Joins { conns }
            | Work::Presence { conns, .. }
            | Work::Changes { conns }
            | Work::DbCast { conns } => *conns,
        }
    }
}

/// Lays out the connections of a stepped scenario: per topic, subscribers then publishers.
fn step_roles(topics: usize, subs: usize, pubs: usize) -> Vec<ConnRole> {
    let fanout = (subs + pubs - 1) as u64;
    let mut roles = Vec::with_capacity(topics * (subs + pubs));
    for t in 0..topics {
        let topic: Arc<str> = format!("realtime:lg-{t}").into();
        for _ in 0..subs {
            roles.push(ConnRole {
                topic: topic.clone(),
                publisher: None,
                fanout,
            });
        }
        for p in 0..pubs {
            roles.push(ConnRole {
                topic: topic.clone(),
                publisher: Some(t * pubs + p),
                fanout,
            });
        }
    }
    roles
}

fn sit_roles(conns: usize, topics: usize, prefix: &str) -> Vec<ConnRole> {
    let names: Vec<Arc<str>> = (0..topics.max(1))
        .map(|t| format!("realtime:{prefix}-{t}").into())
        .collect();
    (0..conns)
        .map(|i| ConnRole {
            topic: names[i % names.len()].clone(),
            publisher: None,
            fanout: 0,
        })
        .collect()
}

/// A long-lived client JWT: `anon`, or for `--private` the `authenticated` user `loadgen`
/// (what a benchmark's RLS policy admits).
fn sign_jwt(secret: &str, private: bool) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = serde_json::json!({
        "role": if private { "authenticated" } else { "anon" },
        "iss": "loadgen",
        "iat": now,
        "exp": now + 10 * 365 * 24 * 3600,
    });
    if private {
        claims["sub"] = "loadgen".into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("signing the JWT: {e}"))
}

/// A server the scenario runs against.
struct Target {
    name: &'static str,
    url: String,
    /// Its processes (a cluster's nodes): CPU and RSS are their sums.
    pids: Vec<u32>,
}

/// Kills the spawned baseline server when dropped.
struct SpawnedBaseline(Child);

impl Drop for SpawnedBaseline {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn spawn_baseline(port: u16, cpus: Option<&str>) -> Result<(SpawnedBaseline, u32), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = match cpus {
        Some(list) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(list).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args(["baseline-server", "--port", &port.to_string()]);
    let child = cmd
        .spawn()
        .map_err(|e| format!("spawning the baseline: {e}"))?;
    // taskset execs the program, so the child's pid is the server's.
    let pid = child.id();
    let guard = SpawnedBaseline(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(format!(
                "baseline did not listen on port {port} within 10 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((guard, pid))
}

/// The figures of one step (medians over the repeats).
#[derive(Clone, Debug, Default)]
struct StepRow {
    offered: f64,
    published_per_s: f64,
    delivered_per_s: f64,
    loss_pct: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    srv_cpu_s: f64,
    srv_rss_mib: f64,
    per_cpu_s: f64,
    gen_cpu_pct: f64,
    cpu0_pct: f64,
    cpu1_pct: f64,
    per_core0_s: f64,
}

impl StepRow {
    const HEADER: &'static str = "   offered  published  delivered/s    loss%   p50ms   p90ms   p99ms   maxms  srvCPUs  srvRSSMiB  deliv/CPUs  gen%  cpu0% cpu1% deliv/core0s";

    fn fields(&self) -> [f64; 15] {
        [
            self.offered,
            self.published_per_s,
            self.delivered_per_s,
            self.loss_pct,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
            self.srv_cpu_s,
            self.srv_rss_mib,
            self.per_cpu_s,
            self.gen_cpu_pct,
            self.cpu0_pct,
            self.cpu1_pct,
            self.per_core0_s,
        ]
    }

    fn from_fields(f: [f64; 15]) -> StepRow {
        StepRow {
            offered: f[0],
            published_per_s: f[1],
            delivered_per_s: f[2],
            loss_pct: f[3],
            p50_ms: f[4],
            p90_ms: f[5],
            p99_ms: f[6],
            max_ms: f[7],
            srv_cpu_s: f[8],
            srv_rss_mib: f[9],
            per_cpu_s: f[10],
            gen_cpu_pct: f[11],
            cpu0_pct: f[12],
            cpu1_pct: f[13],
            per_core0_s: f[14],
        }
    }

    fn median_of(rows: &[StepRow]) -> StepRow {
        let mut out = [0.0; 15];
        for (k, slot) in out.iter_mut().enumerate() {
            let column: Vec<f64> = rows.iter().map(|r| r.fields()[k]).collect();
            *slot = median(&column);
        }
        StepRow::from_fields(out)
    }

    fn passes(&self, p99_limit_ms: f64) -> bool {
        self.loss_pct <= 0.0 && self.p99_ms <= p99_limit_ms && self.delivered_per_s > 0.0
    }

    fn print(&self, note: &str) {
        println!(
            "{:>10.0} {:>10.0} {:>12.0} {:>8.3} {:>7.2} {:>7.2} {:>7.2} {:>7.1} {:>8.2} {:>10.1} {:>11.0} {:>5.0} {:>6.0} {:>5.0} {:>13.0} {note}",
            self.offered,
            self.published_per_s,
            self.delivered_per_s,
            self.loss_pct,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
            self.srv_cpu_s,
            self.srv_rss_mib,
            self.per_cpu_s,
            self.gen_cpu_pct,
            self.cpu0_pct,
            self.cpu1_pct,
            self.per_core0_s,
        );
    }
}

fn ratio(real: f64, base: f64) -> String {
    if base == 0.0 {
        if real == 0.0 {
            "=".into()
        } else {
            "inf".into()
        }
    } else {
        format!("{:.2}", real / base)
    }
}

fn cpu_delta(a: Option<ProcSample>, b: Option<ProcSample>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => b.cpu_secs - a.cpu_secs,
        _ => f64::NAN,
    }
}

/// Runs one measured window at `rate` msg/s in total and returns its figures.
async fn measure_step(
    fleet: &Fleet,
    slot: usize,
    rate: f64,
    publishers: usize,
    o: &Opts,
    pids: &[u32],
) -> StepRow {
    let rate_per_pub = rate / publishers.max(1) as f64;
    let phase = |step: u32| Phase {
        active: true,
        step,
        rate_per_pub,
        epoch: Instant::now(),
        publishers,
    };
    if o.warmup > 0.0 {
        let _ = fleet.phase.send(phase(WARMUP_STEP));
        tokio::time::sleep(Duration::from_secs_f64(o.warmup)).await;
    }
    let srv0 = sample_processes(pids);
    let gen0 = sample_process(None);
    let cores0 = stats::sample_cores();
    let t0 = Instant::now();
    let _ = fleet.phase.send(phase(slot as u32));
    tokio::time::sleep(Duration::from_secs_f64(o.duration)).await;
    let _ = fleet.phase.send(Phase::idle());
    let window = t0.elapsed().as_secs_f64();

    // Drain: wait for the expected deliveries, giving up after 1 s without progress.
    let st = &fleet.shared.steps[slot];
    let drain_start = Instant::now();
    let mut last = st.delivered.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    while drain_start.elapsed().as_secs_f64() < o.drain_max {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = st.delivered.load(Ordering::Relaxed);
        if now >= st.expected.load(Ordering::Relaxed) {
            break;
        }
        if now != last {
            last = now;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    let srv1 = sample_processes(pids);
    let gen1 = sample_process(None);
    let busy = stats::core_busy_pct(&cores0, &stats::sample_cores());
    let wall = t0.elapsed().as_secs_f64();

    let published = st.published.load(Ordering::Relaxed) as f64;
    let expected = st.expected.load(Ordering::Relaxed) as f64;
    let delivered = st.delivered.load(Ordering::Relaxed) as f64;
    let srv_cpu = cpu_delta(srv0, srv1);
    let ms = |ns: u64| ns as f64 / 1e6;
    StepRow {
        offered: rate,
        published_per_s: published / window,
        delivered_per_s: delivered / window,
        loss_pct: if expected > 0.0 {
            ((expected - delivered).max(0.0) / expected) * 100.0
        } else {
            0.0
        },
        p50_ms: ms(st.latency.quantile(0.50)),
        p90_ms: ms(st.latency.quantile(0.90)),
        p99_ms: ms(st.latency.quantile(0.99)),
        max_ms: ms(st.latency.max()),
        srv_cpu_s: srv_cpu,
        srv_rss_mib: srv1.map_or(f64::NAN, |s| s.rss_kib as f64 / 1024.0),
        per_cpu_s: delivered / srv_cpu,
        gen_cpu_pct: cpu_delta(gen0, gen1) / wall * 100.0,
        cpu0_pct: busy.first().copied().unwrap_or(f64::NAN),
        cpu1_pct: busy.get(1).copied().unwrap_or(f64::NAN),
        // Core 0 is the servers' core under scripts/bench; its busy time includes the softirq
        // work of loopback TCP that no process is charged for.
        per_core0_s: delivered / (busy.first().copied().unwrap_or(f64::NAN) / 100.0 * wall),
    }
}

/// Opens a fleet and prints how it went, including the kernel's listen-queue overflows meanwhile
/// (system-wide; each one costs the client a 1 s SYN retransmit).
async fn open_and_report(
    cfg: Arc<ClientConfig>,
    roles: Vec<ConnRole>,
    slots: usize,
    o: &Opts,
) -> Fleet {
    let overflows0 = stats::listen_overflows();
    let fleet = client::open_fleet(cfg, roles, slots, pace(o)).await;
    let overflows = match (overflows0, stats::listen_overflows()) {
        (Some(a), Some(b)) => b.saturating_sub(a).to_string(),
        _ => "?".to_owned(),
    };
    print_open_report(&fleet, &overflows);
    fleet
}

fn print_open_report(fleet: &Fleet, listen_overflows: &str) {
    let s = &fleet.shared;
    let joined = s.joined.load(Ordering::Relaxed);
    println!(
        "  opened {joined}/{} in {:.2} s: {:.0} joins/s, join latency p50 {:.1} ms p99 {:.1} ms (connect failures {}, join refusals {}, listen overflows {listen_overflows})",
        fleet.requested,
        fleet.open_secs,
        joined as f64 / fleet.open_secs.max(1e-9),
        s.join_latency.quantile(0.5) as f64 / 1e6,
        s.join_latency.quantile(0.99) as f64 / 1e6,
        s.connect_failed.load(Ordering::Relaxed),
        s.join_failed.load(Ordering::Relaxed),
    );
    if let Some(err) = s.first_error.lock().expect("error slot poisoned").as_ref() {
        println!("  first error: {err}");
    }
}

fn pace(o: &Opts) -> ConnectPace {
    ConnectPace {
        rate: o.connect_rate,
        batch: o.connect_batch,
        in_flight: o.connect_concurrency,
        timeout: Duration::from_secs_f64(o.connect_timeout),
    }
}

/// Result of one scenario against one target.
enum Outcome {
    Steps(Vec<StepRow>),
    Idle {
        joins_per_s: f64,
        rss_per_conn_kib: f64,
        gen_rss_per_conn_kib: f64,
    },
    Joins {
        joins_per_s: f64,
        p50_ms: f64,
        p99_ms: f64,
    },
}

async fn run_steps(cfg: Arc<ClientConfig>, work: &Work, o: &Opts, target: &Target) -> Outcome {
    let Work::Steps {
        topics,
        subs_per_topic,
        pubs_per_topic,
        rates,
        stop_on_fail,
    } = work
    else {
        unreachable!("run_steps is only called for stepped work");
    };
    let roles = step_roles(*topics, *subs_per_topic, *pubs_per_topic);
    let publishers = topics * pubs_per_topic;
    let slots = rates.len() * o.repeat;
    let fleet = open_and_report(cfg, roles, slots, o).await;
    let mut rows = Vec::new();
    if fleet.shared.joined.load(Ordering::Relaxed) == 0 {
        fleet.close().await;
        return Outcome::Steps(rows);
    }
    println!("{}", StepRow::HEADER);
    for (k, &rate) in rates.iter().enumerate() {
        let mut reps = Vec::new();
        for r in 0..o.repeat {
            let row =
                measure_step(&fleet, k * o.repeat + r, rate, publishers, o, &target.pids).await;
            if o.repeat > 1 {
                row.print(&format!("  (run {}/{})", r + 1, o.repeat));
            }
            reps.push(row);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let row = StepRow::median_of(&reps);
        let pass = row.passes(o.p99_limit_ms);
        let mut note = String::from(if o.repeat > 1 { "  median" } else { "" });
        if !pass {
            note.push_str("  FAIL");
        }
        if row.gen_cpu_pct > 90.0 {
            note.push_str("  generator-bound?");
        }
        row.print(&note);
        rows.push(row);
        if *stop_on_fail && !pass {
            break;
        }
    }
    let s = &fleet.shared;
    println!(
        "  dropped connections {}, heartbeat replies {}, publisher max lag {} ms",
        s.dropped.load(Ordering::Relaxed),
        s.heartbeats_ok.load(Ordering::Relaxed),
        s.publish_lag_max_ms.load(Ordering::Relaxed),
    );
    fleet.close().await;
    Outcome::Steps(rows)
}

async fn run_idle(
    cfg: Arc<ClientConfig>,
    conns: usize,
    topics: usize,
    o: &Opts,
    target: &Target,
) -> Outcome {
    let before = sample_processes(&target.pids);
    let gen_before = sample_process(None);
    let fleet = open_and_report(cfg, sit_roles(conns, topics, "idle"), 0, o).await;
    tokio::time::sleep(Duration::from_secs_f64(o.settle)).await;
    let after = sample_processes(&target.pids);
    let gen_after = sample_process(None);
    let joined = fleet.shared.joined.load(Ordering::Relaxed).max(1) as f64;
    let per = |a: Option<ProcSample>, b: Option<ProcSample>| match (a, b) {
        (Some(a), Some(b)) => (b.rss_kib as f64 - a.rss_kib as f64) / joined,
        _ => f64::NAN,
    };
    let rss_per_conn_kib = per(before, after);
    let gen_rss_per_conn_kib = per(gen_before, gen_after);
    println!(
        "  server RSS {:.1} MiB -> {:.1} MiB: {:.2} KiB per joined connection (generator: {:.2} KiB per connection)",
        before.map_or(f64::NAN, |s| s.rss_kib as f64 / 1024.0),
        after.map_or(f64::NAN, |s| s.rss_kib as f64 / 1024.0),
        rss_per_conn_kib,
        gen_rss_per_conn_kib,
    );
    if o.hold > 0.0 {
        let cpu0 = sample_processes(&target.pids);
        tokio::time::sleep(Duration::from_secs_f64(o.hold)).await;
        let cpu1 = sample_processes(&target.pids);
        println!(
            "  held {:.0} s: server CPU {:.2} s, dropped connections {}, heartbeat replies {}",
            o.hold,
            cpu_delta(cpu0, cpu1),
            fleet.shared.dropped.load(Ordering::Relaxed),
            fleet.shared.heartbeats_ok.load(Ordering::Relaxed),
        );
    }
    let joins_per_s =
        fleet.shared.joined.load(Ordering::Relaxed) as f64 / fleet.open_secs.max(1e-9);
    fleet.close().await;
    Outcome::Idle {
        joins_per_s,
        rss_per_conn_kib,
        gen_rss_per_conn_kib,
    }
}

async fn run_joins(cfg: Arc<ClientConfig>, conns: usize, o: &Opts) -> Outcome {
    let (mut rates, mut p50s, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..o.repeat {
        print!("  run {}/{}:", r + 1, o.repeat);
        let fleet = open_and_report(cfg.clone(), sit_roles(conns, 100, "joins"), 0, o).await;
        let s = &fleet.shared;
        rates.push(s.joined.load(Ordering::Relaxed) as f64 / fleet.open_secs.max(1e-9));
        p50s.push(s.join_latency.quantile(0.5) as f64 / 1e6);
        p99s.push(s.join_latency.quantile(0.99) as f64 / 1e6);
        fleet.close().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let out = Outcome::Joins {
        joins_per_s: median(&rates),
        p50_ms: median(&p50s),
        p99_ms: median(&p99s),
    };
    if let Outcome::Joins {
        joins_per_s,
        p50_ms,
        p99_ms,
    } = &out
    {
        println!(
            "  median: {joins_per_s:.0} joins/s, join latency p50 {p50_ms:.1} ms p99 {p99_ms:.1} ms"
        );
    }
    out
}

fn highest_passing(rows: &[StepRow], p99_limit_ms: f64) -> Option<&StepRow> {
    rows.iter().take_while(|r| r.passes(p99_limit_ms)).last()
}

fn print_comparison(work: &Work, o: &Opts, base: &Outcome, real: &Outcome) {
    println!("\n== realtime / baseline (ratio; >1 means the real server's figure is larger) ==");
    match (base, real) {
        (Outcome::Steps(b), Outcome::Steps(r)) => {
            println!("{}", StepRow::HEADER);
            for (rb, rr) in b.iter().zip(r) {
                let f: Vec<String> = rr
                    .fields()
                    .iter()
                    .zip(rb.fields())
                    .map(|(x, y)| ratio(*x, y))
                    .collect();
                println!(
                    "{:>10.0} {:>10} {:>12} {:>8} {:>7} {:>7} {:>7} {:>7} {:>8} {:>10} {:>11} {:>5} {:>6} {:>5} {:>13}",
                    rb.offered,
                    f[1],
                    f[2],
                    f[3],
                    f[4],
                    f[5],
                    f[6],
                    f[7],
                    f[8],
                    f[9],
                    f[10],
                    f[11],
                    f[12],
                    f[13],
                    f[14]
                );
            }
            if matches!(
                work,
                Work::Steps {
                    stop_on_fail: true,
                    ..
                }
            ) {
                let hb = highest_passing(b, o.p99_limit_ms);
                let hr = highest_passing(r, o.p99_limit_ms);
                let show = |h: Option<&StepRow>| {
                    h.map_or("none".to_owned(), |x| {
                        format!(
                            "{:.0} msg/s ({:.0} deliveries/s, {:.0} deliveries per server CPU-s)",
                            x.offered, x.delivered_per_s, x.per_cpu_s
                        )
                    })
                };
                println!(
                    "  highest rate with zero loss and p99 <= {} ms:",
                    o.p99_limit_ms
                );
                println!("    baseline: {}", show(hb));
                println!("    realtime: {}", show(hr));
                if let (Some(hb), Some(hr)) = (hb, hr) {
                    println!(
                        "    ratio: rate {}, deliveries per CPU-s {}",
                        ratio(hr.offered, hb.offered),
                        ratio(hr.per_cpu_s, hb.per_cpu_s)
                    );
                }
            }
        }
        (
            Outcome::Idle {
                joins_per_s: jb,
                rss_per_conn_kib: mb,
                gen_rss_per_conn_kib: gb,
            },
            Outcome::Idle {
                joins_per_s: jr,
                rss_per_conn_kib: mr,
                gen_rss_per_conn_kib: gr,
            },
        ) => {
            println!("  joins/s {:.0} vs {:.0}: {}", jr, jb, ratio(*jr, *jb));
            println!(
                "  RSS KiB per idle connection {:.2} vs {:.2}: {}",
                mr,
                mb,
                ratio(*mr, *mb)
            );
            println!(
                "  (generator RSS KiB per connection {gr:.2} and {gb:.2}: client side, for scale)"
            );
        }
        (
            Outcome::Joins {
                joins_per_s: jb,
                p99_ms: pb,
                ..
            },
            Outcome::Joins {
                joins_per_s: jr,
                p99_ms: pr,
                ..
            },
        ) => {
            println!("  joins/s {:.0} vs {:.0}: {}", jr, jb, ratio(*jr, *jb));
            println!("  join p99 ms {:.1} vs {:.1}: {}", pr, pb, ratio(*pr, *pb));
        }
        _ => {}
    }
}

/// Headline figures of one outcome, for the `summary` lines that `scripts/bench` collects.
fn headline(work: &Work, o: &Opts, out: &Outcome) -> Vec<(&'static str, f64)> {
    match (work, out) {
        (
            Work::Steps {
                stop_on_fail: true, ..
            },
            Outcome::Steps(rows),
        ) => match highest_passing(rows, o.p99_limit_ms) {
            Some(x) => vec![
                ("max_ok_rate", x.offered),
                ("deliv_per_s", x.delivered_per_s),
                ("deliv_per_cpu_s", x.per_cpu_s),
                ("p99_ms", x.p99_ms),
            ],
            None => vec![("max_ok_rate", 0.0)],
        },
        (Work::Steps { .. }, Outcome::Steps(rows)) => match rows.last() {
            Some(x) => vec![
                ("offered", x.offered),
                ("deliv_per_s", x.delivered_per_s),
                ("loss_pct", x.loss_pct),
                ("p50_ms", x.p50_ms),
                ("p99_ms", x.p99_ms),
                ("srv_cpu_s", x.srv_cpu_s),
                ("cpu0_pct", x.cpu0_pct),
                ("deliv_per_cpu_s", x.per_cpu_s),
            ],
            None => Vec::new(),
        },
        (
            _,
            Outcome::Idle {
                joins_per_s,
                rss_per_conn_kib,
                ..
            },
        ) => vec![
            ("rss_kib_per_conn", *rss_per_conn_kib),
            ("joins_per_s", *joins_per_s),
        ],
        (
            _,
            Outcome::Joins {
                joins_per_s,
                p99_ms,
                ..
            },
        ) => vec![("joins_per_s", *joins_per_s), ("join_p99_ms", *p99_ms)],
        _ => Vec::new(),
    }
}

fn print_summary_line(scenario: &str, name: &str, fields: &[(&str, String)]) {
    let text: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("summary {scenario} {name} {}", text.join(" "));
}

fn check_fd_limit(needed: usize) {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| stats::parse_max_open_files(&t));
    if let Some(soft) = soft
        && (needed as u64 + 64) > soft
    {
        eprintln!(
            "warning: {needed} connections need more than the open-file limit {soft}; raise `ulimit -n` or lower --conns"
        );
    }
}

async fn run(o: Opts) -> Result<(), String> {
    let work = Work::from_opts(&o)?;
    check_fd_limit(work.connections());
    let token = sign_jwt(&o.jwt_secret, o.private)?;
    if let Work::Presence { conns, rate } = work {
        return run_presence(&o, token, conns, rate).await;
    }
    if let Work::DbCast { .. } = work {
        return dbcast::run(&o).await;
    }
    if let Work::Changes { .. } = work {
        return changes::run(&o).await;
    }
    let mut targets = Vec::new();
    let mut _spawned = None;
    match &o.baseline {
        BaselineMode::Auto => {
            let (guard, pid) = spawn_baseline(o.baseline_port, o.baseline_cpus.as_deref()).await?;
            _spawned = Some(guard);
            targets.push(Target {
                name: "baseline",
                url: format!("ws://127.0.0.1:{}/socket/websocket", o.baseline_port),
                pids: vec![pid],
            });
        }
        BaselineMode::Url(url) => targets.push(Target {
            name: "baseline",
            url: url.clone(),
            pids: o.baseline_pid.into_iter().collect(),
        }),
        BaselineMode::Off => {}
    }
    if let Some(url) = &o.url {
        targets.push(Target {
            name: "realtime",
            url: url.clone(),
            pids: o.server_pids.clone(),
        });
    }
    if targets.is_empty() {
        return Err("nothing to run against: give --url or keep --baseline".into());
    }
    println!(
        "scenario {} ({:?}), vsn {}, payload {} B, {} connections, duration {} s, warm-up {} s, repeat {}",
        o.scenario,
        work,
        o.vsn.query_value(),
        o.payload,
        work.connections(),
        o.duration,
        o.warmup,
        o.repeat
    );
    let mut outcomes = Vec::new();
    for target in &targets {
        println!(
            "\n== {} ({}, pids {:?}) ==",
            target.name, target.url, target.pids
        );
        let cfg = Arc::new(ClientConfig {
            url: target.url.clone(),
            host: format!("{}.localhost", o.tenant),
            token: token.clone(),
            private: o.private,
            vsn: o.vsn,
            payload: o.payload,
            source_ips: o.source_ips.clone(),
            heartbeat: Duration::from_secs_f64(o.heartbeat),
            // Only the real server is a cluster.
            spread_urls: if Some(&target.url) == o.url.as_ref() {
                o.spread_urls.clone()
            } else {
                Vec::new()
            },
        });
        let out = match &work {
            Work::Steps { .. } => run_steps(cfg, &work, &o, target).await,
            Work::Idle { conns, topics } => run_idle(cfg, *conns, *topics, &o, target).await,
            Work::Joins { conns } => run_joins(cfg, *conns, &o).await,
            // Handled by `run_presence` / `changes::run` before any target is set up.
            Work::Presence { .. } | Work::Changes { .. } | Work::DbCast { .. } => {
                return Err("presence and changes run without targets".into());
            }
        };
        let fields: Vec<(&str, String)> = headline(&work, &o, &out)
            .into_iter()
            .map(|(k, v)| (k, format!("{v:.2}")))
            .collect();
        print_summary_line(&o.scenario, target.name, &fields);
        outcomes.push(out);
        // Let the server settle (sockets closing, timers) before the next target.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if targets.len() == 2 {
        print_comparison(&work, &o, &outcomes[0], &outcomes[1]);
        let base = headline(&work, &o, &outcomes[0]);
        let real = headline(&work, &o, &outcomes[1]);
        let fields: Vec<(&str, String)> = real
            .iter()
            .filter_map(|(k, r)| {
                let (_, b) = base.iter().find(|(kb, _)| kb == k)?;
                Some((*k, ratio(*r, *b)))
            })
            .collect();
        print_summary_line(&o.scenario, "ratio", &fields);
    }
    Ok(())
}

/// Scenario `e`: see `presence.rs`. Prints the medians and the presence/broadcast ratio.
async fn run_presence(o: &Opts, token: String, conns: usize, rate: f64) -> Result<(), String> {
    let url = o
        .url
        .clone()
        .ok_or("the presence scenario needs --url (the baseline server has no presence)")?;
    println!(
        "scenario {} (presence), {conns} connections on one topic, churn {rate} updates/s for {} s, repeat {}",
        o.scenario, o.duration, o.repeat
    );
    let cfg = Arc::new(ClientConfig {
        url,
        host: format!("{}.localhost", o.tenant),
        token,
        private: false,
        vsn: Vsn::V2,
        payload: o.payload,
        source_ips: o.source_ips.clone(),
        heartbeat: Duration::from_secs_f64(o.heartbeat),
        spread_urls: o.spread_urls.clone(),
    });
    let plan = presence::Plan {
        tenant: &o.tenant,
        api_secret: &o.jwt_secret,
        conns,
        rate,
        duration: o.duration,
        drain_max: o.drain_max,
        repeat: o.repeat,
    };
    let runs = presence::run(cfg, &plan).await?;
    let pick = |f: fn(&presence::Figures) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let (bcast, sync) = (pick(|f| f.broadcast_round_s), pick(|f| f.presence_sync_s));
    let fields = [
        ("conns", conns.to_string()),
        ("broadcast_round_ms", format!("{:.1}", bcast * 1e3)),
        ("presence_sync_ms", format!("{:.1}", sync * 1e3)),
        ("sync_vs_broadcast", ratio(sync, bcast)),
        ("updates_per_s", format!("{:.0}", pick(|f| f.updates_per_s))),
        (
            "presence_events_per_s",
            format!("{:.0}", pick(|f| f.events_per_s)),
        ),
        ("loss_pct", format!("{:.3}", pick(|f| f.loss_pct))),
        (
            "consistent_views",
            format!("{:.0}", pick(|f| f.consistent as f64)),
        ),
    ];
    println!();
    print_summary_line(&o.scenario, "realtime", &fields);
    Ok(())
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` to harness-less bench binaries.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(err) => {
            if !err.is_empty() {
                eprintln!("loadgen: {err}");
            }
            eprintln!("{}", usage());
            return if err.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    client::now_ns(); // fixes the shared start Instant
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("loadgen: tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = if opts.server_mode {
        runtime
            .block_on(baseline::serve(opts.port))
            .map_err(|e| format!("baseline server: {e}"))
    } else {
        runtime.block_on(async {
            // On Ctrl-C, return so that a spawned baseline is killed by its guard.
            tokio::select! {
                r = run(opts) => r,
                _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
            }
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadgen: {err}");
            ExitCode::FAILURE
        }
    }
}

// The bench target is compiled with `cfg(test)` but without a harness, so the `#[test]`
// functions vanish there and their helpers look unused; `tests/loadgen.rs` runs them.
#[cfg(test)]
#[allow(dead_code, unused_imports)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn presets_resolve_to_the_documented_shapes() {
        let a = Work::from_opts(&Opts::parse(&args("--scenario a")).unwrap()).unwrap();
        assert_eq!(a.connections(), 1001);
        let b =
            Work::from_opts(&Opts::parse(&args("--scenario b --room-rate 2")).unwrap()).unwrap();
        assert_eq!(
            b,
            Work::Steps {
                topics: 714,
                subs_per_topic: 6,
                pubs_per_topic: 1,
                rates: vec![1428.0],
                stop_on_fail: false
            }
        );
        assert_eq!(b.connections(), 4998);
        let c = Work::from_opts(&Opts::parse(&args("run --scenario c")).unwrap()).unwrap();
        assert_eq!(
            c,
            Work::Idle {
                conns: 10_000,
                topics: 1000
            }
        );
    }

    #[test]
    fn the_presence_preset_takes_conns_and_the_first_rate() {
        let e =
            Work::from_opts(&Opts::parse(&args("--scenario e --rates 50,60")).unwrap()).unwrap();
        assert_eq!(
            e,
            Work::Presence {
                conns: 100,
                rate: 50.0
            }
        );
        let p =
            Work::from_opts(&Opts::parse(&args("--scenario presence --conns 7")).unwrap()).unwrap();
        assert_eq!(p.connections(), 7);
        let f = Opts::parse(&args(
            "--scenario f --pg postgres://u:p@h:1/d --rls-rates 5,6 --phases raw,rls",
        ))
        .unwrap();
        assert_eq!(Work::from_opts(&f).unwrap(), Work::Changes { conns: 500 });
        assert_eq!(f.rls_rates, Some(vec![5.0, 6.0]));
        assert_eq!(f.phases, Some(vec!["raw".to_owned(), "rls".to_owned()]));
        assert_eq!(f.pg.as_deref(), Some("postgres://u:p@h:1/d"));
    }

    #[test]
    fn options_parse_and_reject_garbage() {
        let o = Opts::parse(&args(
            "--vsn 1 --rates 10,20 --baseline none --url ws://x/socket/websocket",
        ))
        .unwrap();
        assert_eq!(o.vsn, Vsn::V1);
        assert_eq!(o.rates, Some(vec![10.0, 20.0]));
        assert_eq!(o.baseline, BaselineMode::Off);
        assert!(Opts::parse(&args("--vsn 3")).is_err());
        assert!(Opts::parse(&args("--bogus 1")).is_err());
        assert!(Opts::parse(&args("--conns")).is_err());
        assert!(
            Opts::parse(&args("baseline-server --port 5000"))
                .unwrap()
                .server_mode
        );
    }

    #[test]
    fn roles_give_each_message_its_fanout() {
        let roles = step_roles(2, 6, 1);
        assert_eq!(roles.len(), 14);
        assert!(roles.iter().all(|r| r.fanout == 6));
        let pubs: Vec<usize> = roles.iter().filter_map(|r| r.publisher).collect();
        assert_eq!(pubs, vec![0, 1]);
        assert_eq!(&*roles[7].topic, "realtime:lg-1");
    }

    #[test]
    fn medians_and_pass_rule() {
        let mk = |loss: f64, p99: f64| StepRow {
            loss_pct: loss,
            p99_ms: p99,
            delivered_per_s: 1.0,
            ..StepRow::default()
        };
        let m = StepRow::median_of(&[mk(0.0, 5.0), mk(1.0, 50.0), mk(0.0, 500.0)]);
        assert_eq!((m.loss_pct, m.p99_ms), (0.0, 50.0));
        assert!(m.passes(100.0));
        assert!(!mk(0.1, 1.0).passes(100.0));
        let rows = [mk(0.0, 1.0), mk(0.0, 2.0), mk(0.0, 200.0)];
        assert_eq!(highest_passing(&rows, 100.0).unwrap().p99_ms, 2.0);
        assert_eq!(ratio(2.0, 4.0), "0.50");
        assert_eq!(ratio(0.0, 0.0), "=");
    }

    #[test]
    fn jwt_has_three_parts() {
        let t = sign_jwt(DEFAULT_JWT_SECRET, false).unwrap();
        assert_eq!(t.split('.').count(), 3);
    }
}
