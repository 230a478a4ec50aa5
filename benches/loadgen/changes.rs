//! Scenario `f` (Postgres Changes) against a real server and its tenant database (`--pg`).
//!
//! Three phases (`--phases raw,fanout,rls`):
//!
//! * **raw**: what the replication slot alone delivers here. Two pgoutput slots are created on a
//!   scratch table's own publication, `--raw-rows` rows are written in transactions of
//!   `--raw-batch`, then the server's own stream (`TenantStream`) reads slot A counting `Data`
//!   events without looking at them (raw rate), and slot B decoding every message with
//!   `pgoutput::decode` + `RelationCache` and writing every column's JSON with
//!   `values::write_json` (decode rate). Both run in this process, on the generator's core; the
//!   walsender is Postgres's. The slots and the publication are dropped afterwards.
//! * **fanout**: `--conns` anon subscribers on `--topics` topics, each binding INSERT on
//!   `public.bench_rows`; a writer inserts rows at each of `--rates` rows/s (one multi-row INSERT,
//!   one transaction, per 10 ms tick) and every row goes to every subscriber.
//! * **rls**: `--conns` authenticated subscribers, user `i` a member of team `i / 10`, each with
//!   its own JWT, binding INSERT on `public.bench_rls_rows` (RLS on, a team-membership policy);
//!   rows get a random team, so each one is visible to the 10 members of its team. Steps
//!   `--rls-rates`. Also reports the RLS probe statements per second (one per distinct claims
//!   set per batch), read from `pg_stat_statements` (preloaded by `scripts/bench-changes`).
//!
//! Latency is commit-to-client: this process's wall clock when the frame is read minus the
//! frame's `commit_timestamp`, which has millisecond precision (truncated), so figures are
//! 0..1 ms high. `send` latency is the same clock minus the row's `sent_at` (microseconds, taken
//! just before the INSERT is sent). Both clocks are this machine's. Each row's `body` names its
//! step (`s<slot>`, `w` for warm-up), so late deliveries are still counted for the right step.
//! Delivered/s is over the window plus the drain that follows it; loss is against the
//! deliveries due (rows × subscribers, or per team × that team's subscribed members).

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use realtime::config::{ReplicationConfig, Secret};
use realtime::postgres_changes::pgoutput::{self, Message as PgMessage, RelationCache};
use realtime::postgres_changes::replication::{
    ReplicationStats, ReplicationTarget, SlotName, StreamEvent, TenantStream,
};
use realtime::postgres_changes::values::{write_json, write_string};
use realtime::tasks::Owner;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;
use tokio_tungstenite::tungstenite::Message;

use super::client::{self, ClientConfig};
use super::stats::{self, Histogram, median, sample_process, sample_processes};
use super::wire::{self, Vsn};
use super::{Opts, StepRow, cpu_delta, print_summary_line, ratio};

/// Members per team in the RLS phase (each row is visible to this many subscribers).
pub const TEAM_SIZE: usize = 10;
/// Writer tick: one multi-row INSERT (one transaction) per tick.
const TICK: Duration = Duration::from_millis(10);
/// How long the raw phase waits for the next replication event before giving up.
const STREAM_STALL: Duration = Duration::from_secs(30);
const RAW_TABLE: &str = "bench_raw";
const RAW_PUBLICATION: &str = "bench_raw_pub";
const RAW_SLOTS: [&str; 2] = ["bench_raw_a", "bench_raw_b"];
const FANOUT_TABLE: &str = "bench_rows";
const RLS_TABLE: &str = "bench_rls_rows";
const JOIN_REF: &str = "1";

/// Tables, roles, `auth.uid()`, the policy and the publication the fan-out and RLS phases use.
/// Idempotent; `{members}` is replaced by the number of users.
const SETUP_SQL: &str = r#"
do $$ begin
  if not exists (select from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
  if not exists (select from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
end $$;
create schema if not exists auth;
create or replace function auth.uid() returns uuid language sql stable as
  $f$ select nullif(coalesce(current_setting('request.jwt.claim.sub', true),
                             current_setting('request.jwt.claims', true)::jsonb->>'sub'), '')::uuid $f$;
grant usage on schema auth to anon, authenticated;
grant usage on schema public to anon, authenticated;
create table if not exists public.bench_rows
  (id bigserial primary key, team int not null, body text, sent_at bigint);
create table if not exists public.bench_rls_rows
  (id bigserial primary key, team int not null, body text, sent_at bigint);
create table if not exists public.bench_members (user_id uuid primary key, team int not null);
create index if not exists bench_members_team on public.bench_members (team);
alter table public.bench_rls_rows enable row level security;
drop policy if exists bench_team on public.bench_rls_rows;
create policy bench_team on public.bench_rls_rows for select to authenticated
  using (team in (select m.team from public.bench_members m where m.user_id = auth.uid()));
grant select, insert on public.bench_rows, public.bench_rls_rows to anon, authenticated;
grant select on public.bench_members to authenticated;
truncate public.bench_members;
insert into public.bench_members
  select ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, i / 10
  from generate_series(0, {members} - 1) as i;
do $$ declare t text; begin
  foreach t in array array['bench_rows', 'bench_rls_rows'] loop
    if not exists (select from pg_publication_tables
                   where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = t) then
      execute format('alter publication supabase_realtime add table public.%I', t);
    end if;
  end loop;
end $$;
"#;

/// The uuid of bench user `i` (as `bench_members` holds it).
pub fn user_uuid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// Wall clock, microseconds since the Unix epoch.
fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Days from 1970-01-01 to the civil date `y-m-d` (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads `YYYY-MM-DDTHH:MM:SS.mmmZ` as milliseconds since the Unix epoch.
pub fn parse_commit_ms(s: &[u8]) -> Option<i64> {
    if s.len() < 24 || s[23] != b'Z' {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = s.get(from..from + len)?;
        digits.iter().try_fold(0i64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        if s[at] != sep {
            return None;
        }
    }
    let days = days_from_civil(num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let secs = days * 86_400 + num(11, 2)? * 3600 + num(14, 2)? * 60 + num(17, 2)?;
    Some(secs * 1000 + num(20, 3)?)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn leading_int(s: &[u8]) -> Option<i64> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 18 {
        return None;
    }
    std::str::from_utf8(&s[..digits]).ok()?.parse().ok()
}

/// What one `postgres_changes` frame says about itself, found by byte search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// `commit_timestamp`, milliseconds since the Unix epoch.
    pub commit_ms: i64,
    /// The row's `sent_at`, microseconds since the Unix epoch.
    pub sent_us: Option<i64>,
    /// The step slot named by the row's `body` (`s<slot>`); `None` for warm-up rows.
    pub slot: Option<u32>,
}

/// Reads a `postgres_changes` frame; `None` when the frame is not one (no `commit_timestamp`).
pub fn parse_delivery(frame: &[u8]) -> Option<Delivery> {
    const TS: &[u8] = b"\"commit_timestamp\":\"";
    const BODY: &[u8] = b"\"body\":\"s";
    const SENT: &[u8] = b"\"sent_at\":";
    let at = find(frame, TS)? + TS.len();
    let commit_ms = parse_commit_ms(frame.get(at..at + 24)?)?;
    let record = find(frame, b"\"record\":").map_or(frame, |r| &frame[r..]);
    let slot = find(record, BODY)
        .and_then(|b| leading_int(&record[b + BODY.len()..]))
        .and_then(|n| u32::try_from(n).ok());
    let sent_us = find(record, SENT).and_then(|s| leading_int(&record[s + SENT.len()..]));
    Some(Delivery {
        commit_ms,
        sent_us,
        slot,
    })
}

/// The `phx_join` of a channel with one INSERT binding on `public.<table>`.
pub fn join_frame(topic: &str, table: &str, token: &str) -> String {
    let payload = json!({
        "config": {
            "broadcast": {"self": false, "ack": false},
            "presence": {"enabled": false},
            "postgres_changes": [{"event": "INSERT", "schema": "public", "table": table}],
            "private": false,
        },
        "access_token": token,
    });
    wire::encode_text(
        Vsn::V2,
        Some(JOIN_REF),
        Some(JOIN_REF),
        topic,
        "phx_join",
        &payload,
    )
}

/// Signs a tenant JWT with `role` and, when given, `sub`.
pub fn sign_user_jwt(secret: &str, role: &str, sub: Option<&str>) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = json!({
        "role": role,
        "iss": "loadgen",
        "iat": now,
        "exp": now + 24 * 3600,
    });
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("signing the JWT: {e}"))
}

/// Deliveries due for one step: every row to every subscriber (`per_group` has one entry), or
/// each team's rows to that team's subscribed members.
pub fn expected_deliveries(rows_per_group: &[u64], subscribed_per_group: &[u64]) -> u64 {
    rows_per_group
        .iter()
        .zip(subscribed_per_group)
        .map(|(r, s)| r * s)
        .sum()
}

/// The tenant database, from `--pg`.
struct Pg {
    config: tokio_postgres::Config,
}

impl Pg {
    fn parse(url: &str) -> Result<Pg, String> {
        let config = tokio_postgres::Config::from_str(url).map_err(|e| format!("--pg: {e}"))?;
        Ok(Pg { config })
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, String> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| format!("connecting to --pg: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("loadgen: postgres connection: {e}");
            }
        });
        Ok(client)
    }

    fn target(&self, slot: &str, publication: &str) -> Result<ReplicationTarget, String> {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let password = self
            .config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        Ok(ReplicationTarget {
            host,
            port: self.config.get_ports().first().copied().unwrap_or(5432),
            user: self.config.get_user().unwrap_or("postgres").to_owned(),
            password: Secret::new(password),
            dbname: self.config.get_dbname().unwrap_or("postgres").to_owned(),
            tls: false,
            slot: SlotName::new(slot).map_err(|e| e.to_string())?,
            publication: publication.to_owned(),
            temporary_slot: false,
        })
    }
}

fn sql_err(what: &str) -> impl Fn(tokio_postgres::Error) -> String + '_ {
    move |e| {
        let detail = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned());
        format!("{what}: {detail}")
    }
}

// ---------------------------------------------------------------------------------------------
// Phase raw

/// Figures of the raw phase.
#[derive(Clone, Copy, Debug, Default)]
struct RawFigures {
    rows: u64,
    write_s: f64,
    raw_events_per_s: f64,
    raw_rows_per_s: f64,
    decode_rows_per_s: f64,
    /// Rows per second of decoding time alone (the decoder's own ceiling on this core).
    decode_busy_rows_per_s: f64,
    json_bytes: u64,
}

/// What reading one slot gave.
#[derive(Clone, Copy, Debug, Default)]
struct SlotRead {
    /// `Data` events (Relation messages included).
    data: u64,
    /// Insert messages.
    inserts: u64,
    /// From `Connected` to the commit of the last row.
    secs: f64,
    /// JSON written when decoding.
    json_bytes: u64,
    /// Time spent decoding and writing JSON only.
    decode_busy_s: f64,
}

/// Decodes one pgoutput message and, for an insert, writes its row as a JSON object into
/// `json`; returns whether it was an insert.
fn decode_row(cache: &mut RelationCache, json: &mut String, bytes: &[u8]) -> Result<bool, String> {
    match pgoutput::decode(bytes).map_err(|e| format!("decode: {e}"))? {
        PgMessage::Relation(r) => {
            cache.insert_relation(&r);
        }
        m @ PgMessage::Type(_) => cache.apply(&m),
        PgMessage::Insert(m) => {
            let relation = cache
                .get(m.relation)
                .ok_or_else(|| format!("insert into unknown relation {}", m.relation))?;
            json.clear();
            json.push('{');
            for (i, (column, value)) in relation.columns.iter().zip(m.new).enumerate() {
                if i > 0 {
                    json.push(',');
                }
                write_string(json, &column.name);
                json.push(':');
                match value {
                    pgoutput::TupleValue::Text(text) => write_json(json, column.json, text)
                        .map_err(|e| format!("column {}: {e}", column.name))?,
                    _ => json.push_str("null"),
                }
            }
            json.push('}');
            return Ok(true);
        }
        _ => {}
    }
    Ok(false)
}

/// Reads one slot through `TenantStream` until `rows` inserts came, decoding every message
/// when `decode`.
async fn stream_slot(pg: &Pg, slot: &str, rows: u64, decode: bool) -> Result<SlotRead, String> {
    let owner = Owner::new();
    let target = pg.target(slot, RAW_PUBLICATION)?;
    let (handle, mut events) = TenantStream::spawn(
        &owner,
        target,
        &ReplicationConfig::default(),
        Arc::new(ReplicationStats::default()),
    );
    let mut cache = RelationCache::new();
    let mut json = String::with_capacity(256);
    let mut read = SlotRead::default();
    let mut busy = Duration::ZERO;
    let mut started: Option<Instant> = None;
    let result = loop {
        let event = match tokio::time::timeout(STREAM_STALL, events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => break Err(format!("slot {slot}: the stream ended")),
            Err(_) => {
                break Err(format!(
                    "slot {slot}: nothing for {} s after {}/{rows} rows (status {:?})",
                    STREAM_STALL.as_secs(),
                    read.inserts,
                    handle.status()
                ));
            }
        };
        match event {
            StreamEvent::Connected { .. } => {
                started.get_or_insert_with(Instant::now);
            }
            StreamEvent::Data { bytes, .. } => {
                read.data += 1;
                if !decode {
                    read.inserts += u64::from(bytes.first() == Some(&b'I'));
                    continue;
                }
                let t = Instant::now();
                match decode_row(&mut cache, &mut json, &bytes) {
                    Ok(insert) => {
                        busy += t.elapsed();
                        if insert {
                            read.inserts += 1;
                            read.json_bytes += json.len() as u64;
                        }
                    }
                    Err(e) => break Err(format!("slot {slot}: {e}")),
                }
            }
            StreamEvent::Commit { end_lsn, .. } => {
                handle.confirm(end_lsn);
                if read.inserts >= rows {
                    read.secs = started.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
                    read.decode_busy_s = busy.as_secs_f64();
                    break Ok(read);
                }
            }
            StreamEvent::Lost { reason } => {
                break Err(format!("slot {slot}: changes lost: {reason}"));
            }
            StreamEvent::Disconnected { error } => {
                break Err(format!("slot {slot}: disconnected: {error}"));
            }
            StreamEvent::Begin { .. } | StreamEvent::Message { .. } => {}
        }
    };
    handle.shutdown().await;
    owner.shutdown(Duration::from_secs(2)).await;
    result
}

async fn drop_raw_objects(client: &tokio_postgres::Client) -> Result<(), String> {
    client
        .execute(
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots \
             where slot_name = any($1) and not active",
            &[&RAW_SLOTS.to_vec()],
        )
        .await
        .map_err(sql_err("dropping the raw slots"))?;
    client
        .batch_execute(&format!(
            "drop publication if exists {RAW_PUBLICATION}; drop table if exists public.{RAW_TABLE}"
        ))
        .await
        .map_err(sql_err("dropping the raw table"))
}

async fn run_raw(pg: &Pg, o: &Opts) -> Result<RawFigures, String> {
    let client = pg.connect().await?;
    drop_raw_objects(&client).await?;
    client
        .batch_execute(&format!(
            "create table public.{RAW_TABLE} (id bigserial primary key, team int not null, body text, sent_at bigint);
             create publication {RAW_PUBLICATION} for table public.{RAW_TABLE};"
        ))
        .await
        .map_err(sql_err("creating the raw table"))?;
    for slot in RAW_SLOTS {
        client
            .execute(
                "select pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await
            .map_err(sql_err("creating a raw slot"))?;
    }
    let rows = o.raw_rows as u64;
    let batch = o.raw_batch.max(1) as i64;
    let insert = client
        .prepare(&format!(
            "insert into public.{RAW_TABLE} (team, body, sent_at) \
             select g % 50, 'row ' || g || ' of the raw phase, some text', g from generate_series($1::int8, $2::int8) g"
        ))
        .await
        .map_err(sql_err("preparing the raw insert"))?;
    let t0 = Instant::now();
    let mut written = 0i64;
    while (written as u64) < rows {
        let to = (written + batch).min(rows as i64);
        client
            .execute(&insert, &[&(written + 1), &to])
            .await
            .map_err(sql_err("raw insert"))?;
        written = to;
    }
    let write_s = t0.elapsed().as_secs_f64();
    println!(
        "  wrote {rows} rows in {} transactions of {batch} in {write_s:.2} s ({:.0} rows/s)",
        rows.div_ceil(batch as u64),
        rows as f64 / write_s
    );
    let outcome = async {
        let raw = stream_slot(pg, RAW_SLOTS[0], rows, false).await?;
        println!(
            "  raw:    {} Data events ({} inserts) in {:.2} s: {:.0} events/s, {:.0} rows/s",
            raw.data,
            raw.inserts,
            raw.secs,
            raw.data as f64 / raw.secs,
            raw.inserts as f64 / raw.secs
        );
        let dec = stream_slot(pg, RAW_SLOTS[1], rows, true).await?;
        println!(
            "  decode: {} rows decoded to JSON ({:.0} B/row) in {:.2} s: {:.0} rows/s; decoding alone took {:.3} s ({:.0} rows per busy second)",
            dec.inserts,
            dec.json_bytes as f64 / dec.inserts.max(1) as f64,
            dec.secs,
            dec.inserts as f64 / dec.secs,
            dec.decode_busy_s,
            dec.inserts as f64 / dec.decode_busy_s
        );
        Ok::<_, String>(RawFigures {
            rows,
            write_s,
            raw_events_per_s: raw.data as f64 / raw.secs,
            raw_rows_per_s: raw.inserts as f64 / raw.secs,
            decode_rows_per_s: dec.inserts as f64 / dec.secs,
            decode_busy_rows_per_s: dec.inserts as f64 / dec.decode_busy_s,
            json_bytes: dec.json_bytes,
        })
    }
    .await;
    drop_raw_objects(&client).await?;
    outcome
}

// ---------------------------------------------------------------------------------------------
// Subscribers

/// Counters of one measured step.
#[derive(Default)]
struct StepCounters {
    commit_latency: Histogram,
    send_latency: Histogram,
    delivered: AtomicU64,
}

/// State shared by the subscriber tasks of one phase.
struct Shared {
    steps: Box<[StepCounters]>,
    /// Subscribed connections per visibility group (one group in fan-out, teams in RLS).
    group_subscribed: Box<[AtomicU64]>,
    joined: AtomicU64,
    subscribed: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    warmup: AtomicU64,
    unstepped: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn new(slots: usize, groups: usize) -> Self {
        Self {
            steps: (0..slots).map(|_| StepCounters::default()).collect(),
            group_subscribed: (0..groups.max(1)).map(|_| AtomicU64::new(0)).collect(),
            joined: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            warmup: AtomicU64::new(0),
            unstepped: AtomicU64::new(0),
            first_error: Mutex::new(None),
        }
    }

    fn note_error(&self, text: String) {
        // std Mutex: set once, never held across an await.
        let mut slot = self.first_error.lock().expect("error slot poisoned");
        if slot.is_none() {
            *slot = Some(text);
        }
    }

    fn record(&self, d: Delivery) {
        let Some(slot) = d.slot else {
            self.warmup.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(step) = self.steps.get(slot as usize) else {
            self.unstepped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let now = wall_us();
        step.commit_latency
            .record((now - d.commit_ms * 1000).max(0) as u64 * 1000);
        if let Some(sent) = d.sent_us {
            step.send_latency.record((now - sent).max(0) as u64 * 1000);
        }
        step.delivered.fetch_add(1, Ordering::Relaxed);
    }

    fn subscribed_per_group(&self) -> Vec<u64> {
        self.group_subscribed
            .iter()
            .map(|g| g.load(Ordering::Relaxed))
            .collect()
    }
}

/// One subscriber connection.
struct Sub {
    cfg: Arc<ClientConfig>,
    topic: String,
    table: &'static str,
    group: usize,
}

/// The subscribers of one phase.
struct Fleet {
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
    shared: Arc<Shared>,
}

impl Fleet {
    async fn open(
        subs: Vec<Sub>,
        slots: usize,
        groups: usize,
        in_flight: usize,
        timeout: Duration,
    ) -> Fleet {
        let n = subs.len() as u64;
        let shared = Arc::new(Shared::new(slots, groups));
        let (stop, stop_rx) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(in_flight.max(1)));
        let mut tasks = JoinSet::new();
        let t0 = Instant::now();
        for (i, sub) in subs.into_iter().enumerate() {
            let permit = gate.clone().acquire_owned().await.expect("gate closed");
            let (shared, stop_rx) = (shared.clone(), stop_rx.clone());
            tasks.spawn(async move {
                let group = sub.group;
                let mut subscribed = false;
                let result =
                    subscriber(sub, shared.clone(), stop_rx, permit, &mut subscribed).await;
                if let Err(e) = result {
                    if subscribed {
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                        shared.group_subscribed[group].fetch_sub(1, Ordering::Relaxed);
                    } else {
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    shared.note_error(format!("conn {i}: {e}"));
                }
            });
        }
        let deadline = Instant::now() + timeout;
        while shared.subscribed.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < n
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let subscribed = shared.subscribed.load(Ordering::Relaxed);
        println!(
            "  {}/{n} joined, {subscribed}/{n} \"Subscribed to PostgreSQL\" in {secs:.2} s ({:.0}/s), {} failed",
            shared.joined.load(Ordering::Relaxed),
            subscribed as f64 / secs,
            shared.failed.load(Ordering::Relaxed)
        );
        if let Some(e) = shared
            .first_error
            .lock()
            .expect("error slot poisoned")
            .as_ref()
        {
            println!("  first error: {e}");
        }
        Fleet {
            tasks,
            stop,
            shared,
        }
    }

    async fn close(mut self) {
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(15), all)
            .await
            .is_err()
        {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

async fn subscriber(
    sub: Sub,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
    subscribed: &mut bool,
) -> Result<(), String> {
    let mut permit = Some(permit);
    let mut ws = client::dial(&sub.cfg, None).await?;
    ws.send(Message::text(join_frame(
        &sub.topic,
        sub.table,
        &sub.cfg.token,
    )))
    .await
    .map_err(|e| format!("send join: {e}"))?;
    let mut heartbeat = tokio::time::interval(sub.cfg.heartbeat);
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
            message = ws.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(c))) => return Err(format!("closed by the server: {c:?}")),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("read: {e}")),
                    None => return Err("connection ended".into()),
                };
                if let Some(d) = parse_delivery(text.as_bytes()) {
                    shared.record(d);
                    continue;
                }
                let v: Value = serde_json::from_str(text.as_str())
                    .map_err(|e| format!("bad frame: {e}"))?;
                match v[3].as_str() {
                    Some("phx_reply") if v[2] == "phoenix" => {}
                    Some("phx_reply") => {
                        if v[4]["status"] != "ok" {
                            return Err(format!("join refused: {}", v[4]));
                        }
                        shared.joined.fetch_add(1, Ordering::Relaxed);
                    }
                    Some("system") if v[4]["extension"] == "postgres_changes" => {
                        if v[4]["status"] != "ok" {
                            return Err(format!("postgres_changes: {}", v[4]));
                        }
                        if !*subscribed {
                            *subscribed = true;
                            shared.group_subscribed[sub.group].fetch_add(1, Ordering::Relaxed);
                            shared.subscribed.fetch_add(1, Ordering::Relaxed);
                            drop(permit.take());
                        }
                    }
                    Some("phx_close" | "phx_error") => {
                        return Err(format!("channel closed: {} {}", v[3], v[4]));
                    }
                    _ => {}
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writer and steps

/// Rows written during one window.
struct Written {
    rows: u64,
    per_group: Vec<u64>,
    transactions: u64,
}

struct Writer {
    client: tokio_postgres::Client,
    insert: tokio_postgres::Statement,
    rng: StdRng,
    /// Teams to spread rows over (1: every row is team 0).
    groups: usize,
    track_functions: bool,
}

impl Writer {
    async fn connect(pg: &Pg, table: &str, groups: usize) -> Result<Writer, String> {
        let client = pg.connect().await?;
        let insert = client
            .prepare(&format!(
                "insert into public.{table} (team, body, sent_at) \
                 select t, $2, $3 from unnest($1::int4[]) as t"
            ))
            .await
            .map_err(sql_err("preparing the insert"))?;
        // The probes are counted by pg_stat_statements when the bench Postgres preloads it.
        let track = client
            .batch_execute("create extension if not exists pg_stat_statements")
            .await
            .is_ok();
        Ok(Writer {
            client,
            insert,
            rng: StdRng::seed_from_u64(0x5eed),
            groups: groups.max(1),
            track_functions: track,
        })
    }

    /// Inserts `rate` rows/s for `secs`, one multi-row INSERT per tick, rows tagged `tag`.
    async fn write(&mut self, rate: f64, secs: f64, tag: &str) -> Result<Written, String> {
        let start = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut w = Written {
            rows: 0,
            per_group: vec![0; self.groups],
            transactions: 0,
        };
        loop {
            tick.tick().await;
            let elapsed = start.elapsed().as_secs_f64();
            let due = ((elapsed.min(secs) * rate).floor() as u64).saturating_sub(w.rows);
            if due > 0 {
                let teams: Vec<i32> = (0..due)
                    .map(|_| self.rng.random_range(0..self.groups) as i32)
                    .collect();
                for &t in &teams {
                    w.per_group[t as usize] += 1;
                }
                self.client
                    .execute(&self.insert, &[&teams, &tag, &wall_us()])
                    .await
                    .map_err(sql_err("insert"))?;
                w.rows += due;
                w.transactions += 1;
            }
            if elapsed >= secs {
                return Ok(w);
            }
        }
    }

    /// RLS probe statements executed so far (the server's per-set probe, `select array[...`,
    /// counted by pg_stat_statements; NaN without it).
    async fn rls_calls(&self) -> f64 {
        if !self.track_functions {
            return f64::NAN;
        }
        self.client
            .query_one(
                "select coalesce(sum(calls), 0)::int8 from pg_stat_statements \
                 where query like 'select array[%'",
                &[],
            )
            .await
            .map_or(f64::NAN, |row| row.get::<_, i64>(0) as f64)
    }
}

/// One measured step: the common figures plus the send latency and the RLS calls.
#[derive(Clone, Debug, Default)]
struct Row {
    step: StepRow,
    send_p50_ms: f64,
    send_p99_ms: f64,
    rls_calls_per_s: f64,
    transactions_per_s: f64,
}

impl Row {
    fn median_of(rows: &[Row]) -> Row {
        let pick = |f: fn(&Row) -> f64| median(&rows.iter().map(f).collect::<Vec<_>>());
        let steps: Vec<StepRow> = rows.iter().map(|r| r.step.clone()).collect();
        Row {
            step: StepRow::median_of(&steps),
            send_p50_ms: pick(|r| r.send_p50_ms),
            send_p99_ms: pick(|r| r.send_p99_ms),
            rls_calls_per_s: pick(|r| r.rls_calls_per_s),
            transactions_per_s: pick(|r| r.transactions_per_s),
        }
    }

    fn note(&self) -> String {
        format!(
            " send p50/p99 {:.2}/{:.2} ms, {:.0} txn/s, RLS probes {:.0}/s",
            self.send_p50_ms, self.send_p99_ms, self.transactions_per_s, self.rls_calls_per_s
        )
    }
}

/// What the stepped phases share.
struct StepCtx<'a> {
    o: &'a Opts,
    fleet: &'a Fleet,
    writer: &'a mut Writer,
    /// Wait for the statement statistics to be flushed around the window.
    count_rls: bool,
}

async fn measure(ctx: &mut StepCtx<'_>, slot: usize, rate: f64) -> Result<Row, String> {
    let o = ctx.o;
    if o.warmup > 0.0 {
        ctx.writer.write(rate, o.warmup, "w").await?;
    }
    if ctx.count_rls {
        // Backends flush function statistics at most once a second: let the warm-up's land.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let calls0 = ctx.writer.rls_calls().await;
    let srv0 = sample_processes(&o.server_pids);
    let gen0 = sample_process(None);
    let cores0 = stats::sample_cores();
    let t0 = Instant::now();
    let written = ctx
        .writer
        .write(rate, o.duration, &format!("s{slot}"))
        .await?;
    let window = t0.elapsed().as_secs_f64();
    let expected =
        expected_deliveries(&written.per_group, &ctx.fleet.shared.subscribed_per_group());

    let st = &ctx.fleet.shared.steps[slot];
    let drain_start = Instant::now();
    let mut last = st.delivered.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    while drain_start.elapsed().as_secs_f64() < o.drain_max {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = st.delivered.load(Ordering::Relaxed);
        if now >= expected {
            break;
        }
        if now != last {
            last = now;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let srv1 = sample_processes(&o.server_pids);
    let gen1 = sample_process(None);
    let busy = stats::core_busy_pct(&cores0, &stats::sample_cores());
    if ctx.count_rls {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let calls = ctx.writer.rls_calls().await - calls0;

    let delivered = st.delivered.load(Ordering::Relaxed) as f64;
    let expected = expected as f64;
    let srv_cpu = cpu_delta(srv0, srv1);
    let ms = |ns: u64| ns as f64 / 1e6;
    let core0 = busy.first().copied().unwrap_or(f64::NAN);
    Ok(Row {
        step: StepRow {
            offered: rate,
            published_per_s: written.rows as f64 / window,
            delivered_per_s: delivered / wall,
            loss_pct: if expected > 0.0 {
                (expected - delivered).max(0.0) / expected * 100.0
            } else {
                100.0
            },
            p50_ms: ms(st.commit_latency.quantile(0.50)),
            p90_ms: ms(st.commit_latency.quantile(0.90)),
            p99_ms: ms(st.commit_latency.quantile(0.99)),
            max_ms: ms(st.commit_latency.max()),
            srv_cpu_s: srv_cpu,
            srv_rss_mib: srv1.map_or(f64::NAN, |s| s.rss_kib as f64 / 1024.0),
            per_cpu_s: delivered / srv_cpu,
            gen_cpu_pct: cpu_delta(gen0, gen1) / wall * 100.0,
            cpu0_pct: core0,
            cpu1_pct: busy.get(1).copied().unwrap_or(f64::NAN),
            per_core0_s: delivered / (core0 / 100.0 * wall),
        },
        send_p50_ms: ms(st.send_latency.quantile(0.50)),
        send_p99_ms: ms(st.send_latency.quantile(0.99)),
        rls_calls_per_s: calls / wall,
        transactions_per_s: written.transactions as f64 / window,
    })
}

/// Runs `rates` in order (each `--repeat` times, medians), stopping after the first step with
/// loss or a p99 over the limit.
async fn run_steps(
    ctx: &mut StepCtx<'_>,
    rates: &[f64],
    p99_limit_ms: f64,
) -> Result<Vec<Row>, String> {
    let repeat = ctx.o.repeat;
    println!(
        "{}  (latency: commit_timestamp -> client, ms)",
        StepRow::HEADER
    );
    let mut rows = Vec::new();
    for (i, &rate) in rates.iter().enumerate() {
        let mut runs = Vec::new();
        for r in 0..repeat {
            runs.push(measure(ctx, i * repeat + r, rate).await?);
        }
        let row = Row::median_of(&runs);
        row.step.print(&row.note());
        let passes = row.step.passes(p99_limit_ms);
        rows.push(row);
        if !passes {
            println!("  stop: loss > 0 or p99 > {p99_limit_ms} ms at {rate} rows/s");
            break;
        }
        let s = &ctx.fleet.shared;
        if s.dropped.load(Ordering::Relaxed) > 0 {
            println!(
                "  {} subscribers dropped",
                s.dropped.load(Ordering::Relaxed)
            );
        }
    }
    Ok(rows)
}

fn highest_passing(rows: &[Row], limit: f64) -> Option<&Row> {
    rows.iter().take_while(|r| r.step.passes(limit)).last()
}

fn conn_config(o: &Opts, url: &str, token: String) -> Arc<ClientConfig> {
    Arc::new(ClientConfig {
        url: url.to_owned(),
        host: format!("{}.localhost", o.tenant),
        token,
        private: false,
        vsn: Vsn::V2,
        payload: 0,
        source_ips: Vec::new(),
        heartbeat: Duration::from_secs_f64(o.heartbeat),
        spread_urls: Vec::new(),
    })
}

/// Which phase of the fan-out kind.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fanout,
    Rls,
}

async fn run_subscribed(pg: &Pg, o: &Opts, url: &str, kind: Kind) -> Result<Vec<Row>, String> {
    let conns = o.conns.unwrap_or(500);
    let (rates, table) = match kind {
        Kind::Fanout => (
            o.rates
                .clone()
                .unwrap_or_else(|| vec![20.0, 50.0, 100.0, 200.0, 400.0, 800.0]),
            FANOUT_TABLE,
        ),
        Kind::Rls => (
            o.rls_rates
                .clone()
                .unwrap_or_else(|| vec![500.0, 1000.0, 2000.0, 3000.0, 4000.0]),
            RLS_TABLE,
        ),
    };
    let limit = p99_limit(o, kind);
    let groups = match kind {
        Kind::Fanout => 1,
        Kind::Rls => conns.div_ceil(TEAM_SIZE),
    };
    let topics = o.topics.unwrap_or(10).max(1);
    let anon = conn_config(o, url, sign_user_jwt(&o.jwt_secret, "anon", None)?);
    let mut subs = Vec::with_capacity(conns);
    for i in 0..conns {
        subs.push(match kind {
            Kind::Fanout => Sub {
                cfg: anon.clone(),
                topic: format!("realtime:pgc-{}", i % topics),
                table,
                group: 0,
            },
            Kind::Rls => {
                let token = sign_user_jwt(&o.jwt_secret, "authenticated", Some(&user_uuid(i)))?;
                Sub {
                    cfg: conn_config(o, url, token),
                    topic: format!("realtime:pgr-{}", i / TEAM_SIZE),
                    table,
                    group: i / TEAM_SIZE,
                }
            }
        });
    }
    let fleet = Fleet::open(
        subs,
        rates.len() * o.repeat,
        groups,
        o.connect_concurrency.min(100),
        Duration::from_secs_f64(o.connect_timeout),
    )
    .await;
    let result = async {
        if fleet.shared.subscribed.load(Ordering::Relaxed) == 0 {
            return Err("no subscriber got \"Subscribed to PostgreSQL\"".to_owned());
        }
        let mut writer = Writer::connect(pg, table, groups).await?;
        if kind == Kind::Rls && !writer.track_functions {
            println!("  note: pg_stat_statements is not loaded: RLS probes are not counted");
        }
        let mut ctx = StepCtx {
            o,
            fleet: &fleet,
            writer: &mut writer,
            count_rls: kind == Kind::Rls,
        };
        run_steps(&mut ctx, &rates, limit).await
    }
    .await;
    let s = &fleet.shared;
    println!(
        "  warm-up deliveries {}, unknown-step deliveries {}, subscribers dropped {}",
        s.warmup.load(Ordering::Relaxed),
        s.unstepped.load(Ordering::Relaxed),
        s.dropped.load(Ordering::Relaxed)
    );
    fleet.close().await;
    result
}

/// The p99 bound of a phase's steps.
fn p99_limit(o: &Opts, kind: Kind) -> f64 {
    match kind {
        Kind::Fanout => o.p99_limit_ms,
        Kind::Rls => o.rls_p99_limit_ms.unwrap_or(o.p99_limit_ms),
    }
}

fn f2(v: f64) -> String {
    format!("{v:.2}")
}

/// Runs the scenario: setup, then the phases of `--phases`.
pub async fn run(o: &Opts) -> Result<(), String> {
    let url = o
        .url
        .clone()
        .ok_or("the changes scenario needs --url (a real server)")?;
    let pg = Pg::parse(
        o.pg.as_deref()
            .ok_or("the changes scenario needs --pg postgres://user:pass@host:port/db")?,
    )?;
    let phases = o
        .phases
        .clone()
        .unwrap_or_else(|| vec!["raw".into(), "fanout".into(), "rls".into()]);
    if let Some(p) = phases
        .iter()
        .find(|p| !matches!(p.as_str(), "raw" | "fanout" | "rls"))
    {
        return Err(format!("unknown phase {p:?} (raw, fanout, rls)"));
    }
    let conns = o.conns.unwrap_or(500);
    println!(
        "scenario {} (postgres changes): phases {}, {conns} subscribers, duration {} s, warm-up {} s, repeat {}",
        o.scenario,
        phases.join(","),
        o.duration,
        o.warmup,
        o.repeat
    );
    {
        let client = pg.connect().await?;
        client
            .batch_execute(&SETUP_SQL.replace("{members}", &conns.to_string()))
            .await
            .map_err(sql_err("setup"))?;
    }
    let scenario = o.scenario.as_str();
    let mut raw = None;
    let (mut fanout, mut rls) = (None, None);
    for phase in &phases {
        match phase.as_str() {
            "raw" => {
                println!(
                    "\n== raw: the slot alone, {} rows, TenantStream in this process ==",
                    o.raw_rows
                );
                let f = run_raw(&pg, o).await?;
                print_summary_line(
                    scenario,
                    "raw",
                    &[
                        ("rows", f.rows.to_string()),
                        ("write_s", f2(f.write_s)),
                        ("raw_events_per_s", format!("{:.0}", f.raw_events_per_s)),
                        ("raw_rows_per_s", format!("{:.0}", f.raw_rows_per_s)),
                        ("decode_rows_per_s", format!("{:.0}", f.decode_rows_per_s)),
                        (
                            "decode_busy_rows_per_s",
                            format!("{:.0}", f.decode_busy_rows_per_s),
                        ),
                        (
                            "json_bytes_per_row",
                            format!("{:.0}", f.json_bytes as f64 / f.rows.max(1) as f64),
                        ),
                        (
                            "decode_vs_raw",
                            ratio(f.decode_rows_per_s, f.raw_rows_per_s),
                        ),
                    ],
                );
                raw = Some(f);
            }
            "fanout" | "rls" => {
                let kind = if phase == "fanout" {
                    Kind::Fanout
                } else {
                    Kind::Rls
                };
                match kind {
                    Kind::Fanout => println!(
                        "\n== fanout: {conns} anon subscribers on {} topics, INSERT on public.{FANOUT_TABLE}, every row to all ==",
                        o.topics.unwrap_or(10)
                    ),
                    Kind::Rls => println!(
                        "\n== rls: {conns} authenticated subscribers in teams of {TEAM_SIZE}, INSERT on public.{RLS_TABLE} (RLS), each row to its team =="
                    ),
                }
                let rows = run_subscribed(&pg, o, &url, kind).await?;
                let best = highest_passing(&rows, p99_limit(o, kind)).cloned();
                let mut fields = vec![("conns", conns.to_string())];
                match &best {
                    Some(b) => {
                        fields.extend([
                            ("max_ok_rate", format!("{:.0}", b.step.offered)),
                            ("deliv_per_s", format!("{:.0}", b.step.delivered_per_s)),
                            ("p50_ms", f2(b.step.p50_ms)),
                            ("p99_ms", f2(b.step.p99_ms)),
                            ("srv_cpu_s", f2(b.step.srv_cpu_s)),
                            ("deliv_per_cpu_s", format!("{:.0}", b.step.per_cpu_s)),
                        ]);
                        if kind == Kind::Rls {
                            fields.push(("rls_calls_per_s", format!("{:.0}", b.rls_calls_per_s)));
                        }
                    }
                    None => fields.push(("max_ok_rate", "0".into())),
                }
                print_summary_line(scenario, phase, &fields);
                match kind {
                    Kind::Fanout => fanout = Some(best),
                    Kind::Rls => rls = Some(best),
                }
            }
            _ => {}
        }
    }
    let mut ratios = Vec::new();
    if let Some(f) = raw {
        ratios.push((
            "decode_vs_raw",
            ratio(f.decode_rows_per_s, f.raw_rows_per_s),
        ));
    }
    if let (Some(r), Some(Some(f))) = (&rls, &fanout) {
        // No passing RLS step: 0 of the fan-out's deliveries.
        let r = r.as_ref().map_or(0.0, |r| r.step.delivered_per_s);
        ratios.push(("rls_vs_fanout_deliv", ratio(r, f.step.delivered_per_s)));
    }
    if !ratios.is_empty() {
        println!();
        print_summary_line(scenario, "ratio", &ratios);
    }
    Ok(())
}

// As in main.rs: the bench target has no harness; `tests/loadgen.rs` runs these.
#[cfg(test)]
#[allow(dead_code, unused_imports)]
mod tests {
    use super::*;

    #[test]
    fn commit_timestamps_read_as_epoch_milliseconds() {
        assert_eq!(parse_commit_ms(b"1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_commit_ms(b"2026-08-21T10:15:30.123Z"),
            Some(1_787_307_330_123)
        );
        assert_eq!(
            parse_commit_ms(b"2000-02-29T23:59:59.999Z"),
            Some(951_868_799_999)
        );
        assert_eq!(parse_commit_ms(b"2026-08-21 10:15:30.123Z"), None);
        assert_eq!(parse_commit_ms(b"2026-08-21T10:15:30.12xZ"), None);
        assert_eq!(parse_commit_ms(b"2026-08-21T10:15:30.123"), None);
    }

    #[test]
    fn deliveries_are_found_in_server_frames() {
        let frame = r#"[null,null,"realtime:pgc-1","postgres_changes",{"ids":[7],"data":{"schema":"public","table":"bench_rows","commit_timestamp":"2026-08-21T10:15:30.123Z","type":"INSERT","columns":[{"name":"id","type":"int8"},{"name":"body","type":"text"}],"record":{"id":7,"team":0,"body":"s12","sent_at":1787307330120456},"errors":null}}]"#;
        assert_eq!(
            parse_delivery(frame.as_bytes()),
            Some(Delivery {
                commit_ms: 1_787_307_330_123,
                sent_us: Some(1_787_307_330_120_456),
                slot: Some(12),
            })
        );
        let warm = frame.replace("\"s12\"", "\"w\"");
        assert_eq!(parse_delivery(warm.as_bytes()).unwrap().slot, None);
        let reply = r#"[null,"1","realtime:x","phx_reply",{"status":"ok","response":{}}]"#;
        assert_eq!(parse_delivery(reply.as_bytes()), None);
    }

    #[test]
    fn join_frames_bind_one_insert() {
        let v: Value =
            serde_json::from_str(&join_frame("realtime:a", "bench_rows", "tok")).unwrap();
        assert_eq!(v[3], "phx_join");
        assert_eq!(
            v[4]["config"]["postgres_changes"],
            json!([{"event": "INSERT", "schema": "public", "table": "bench_rows"}])
        );
        assert_eq!(v[4]["access_token"], "tok");
    }

    #[test]
    fn expected_deliveries_follow_team_membership() {
        assert_eq!(expected_deliveries(&[100], &[500]), 50_000);
        assert_eq!(expected_deliveries(&[3, 0, 2], &[10, 10, 9]), 48);
        assert_eq!(user_uuid(42), "00000000-0000-4000-8000-000000000042");
    }

    #[test]
    fn user_tokens_carry_role_and_sub() {
        let t = sign_user_jwt(
            "0123456789abcdef0123456789abcdef",
            "authenticated",
            Some("u"),
        )
        .unwrap();
        let v = jsonwebtoken::Validation::default();
        let data = jsonwebtoken::decode::<Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["role"], "authenticated");
        assert_eq!(data.claims["sub"], "u");
    }
}
