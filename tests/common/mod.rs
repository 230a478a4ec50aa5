//! Shared test set-up: one throwaway PostgreSQL 15 cluster per test process, a fresh database
//! per test, configurations and a started node pointing at it.
//!
//! The cluster lives in a temp dir and is stopped and deleted when the process exits (an
//! `atexit` hook), and by a detached watchdog if the process dies without running it.
#![allow(dead_code)]

pub mod ws;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use realtime::app::RunningApp;
use realtime::config::Config;
use serde_json::Value;

const PGBIN: &str = "/usr/lib/postgresql/15/bin";
pub const ENC_KEY: &str = "supabaserealtime";
pub const API_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

/// The cluster of this test process.
pub struct Pg {
    root: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

static PG: OnceLock<Pg> = OnceLock::new();

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn pg_command(as_postgres: bool, program: &str) -> Command {
    let path = format!("{PGBIN}/{program}");
    if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--", &path]);
        cmd
    } else {
        Command::new(path)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

extern "C" fn stop_cluster_at_exit() {
    if let Some(pg) = PG.get() {
        pg.stop();
    }
}

impl Pg {
    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn start() -> Pg {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let root =
            std::env::temp_dir().join(format!("realtime-test-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&root).expect("temp dir");
        let as_postgres = is_root();
        if as_postgres {
            run(
                Command::new("chown").arg("postgres").arg(&root),
                "chown temp dir",
            );
        }
        std::fs::write(root.join("pw"), "postgres\n").expect("password file");
        run(
            pg_command(as_postgres, "initdb")
                .arg("-D")
                .arg(root.join("data"))
                .args(["-U", "postgres", "-E", "UTF8", "--auth-local=trust"])
                .args(["--auth-host=scram-sha-256", "--pwfile"])
                .arg(root.join("pw")),
            "initdb",
        );
        let mut pg = Pg {
            root,
            port: 0,
            as_postgres,
        };
        // Another test process may grab the same free port between probe and bind: retry.
        for attempt in 0..5 {
            pg.port = free_port();
            let status = pg_command(as_postgres, "pg_ctl")
                .arg("-D")
                .arg(pg.data())
                .arg("-l")
                .arg(pg.root.join("pg.log"))
                .args(["-w", "-o"])
                .arg(format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical \
                     -c max_replication_slots=20 -c max_wal_senders=20 -c fsync=off \
                     -c max_connections=200",
                    pg.port,
                    pg.root.display()
                ))
                .arg("start")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("pg_ctl start");
            if status.success() {
                break;
            }
            assert!(
                attempt < 4,
                "postgres did not start; see {}",
                pg.root.display()
            );
        }
        pg.spawn_watchdog();
        // SAFETY: registering a plain `extern "C" fn` with no captured state.
        unsafe { libc::atexit(stop_cluster_at_exit) };
        pg
    }

    /// Stops the cluster if this process dies without running its exit hook.
    fn spawn_watchdog(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}; rm -rf '{root}'",
            pid = std::process::id(),
            stop = self.stop_command_line(),
            root = self.root.display()
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    fn stop_command_line(&self) -> String {
        let prefix = if self.as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        };
        format!(
            "{prefix}{PGBIN}/pg_ctl -D '{}' -m immediate -w stop >/dev/null 2>&1",
            self.data().display()
        )
    }

    fn stop(&self) {
        let _ = Command::new("sh")
            .args(["-c", &self.stop_command_line()])
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Returns this process's cluster, starting it on first use.
pub fn pg() -> &'static Pg {
    PG.get_or_init(Pg::start)
}

static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Connects to `dbname` of the test cluster as the superuser.
pub async fn connect(dbname: &str) -> tokio_postgres::Client {
    let url = format!(
        "host=127.0.0.1 port={} user=postgres password=postgres dbname={dbname}",
        pg().port
    );
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test cluster");
    tokio::spawn(connection);
    client
}

/// Creates a new empty database and returns its name.
pub async fn fresh_database() -> String {
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        DB_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    connect("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    name
}

/// Variables of a node using database `dbname`, plus `extra` (later pairs win).
pub fn vars(dbname: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let port = pg().port.to_string();
    let mut vars: Vec<(String, String)> = [
        ("DB_HOST", "127.0.0.1"),
        ("DB_PORT", port.as_str()),
        ("DB_USER", "postgres"),
        ("DB_PASSWORD", "postgres"),
        ("DB_NAME", dbname),
        ("DB_ENC_KEY", ENC_KEY),
        ("API_JWT_SECRET", API_SECRET),
        ("PORT", "0"),
        ("BIND_ADDR", "127.0.0.1"),
        ("NODE_NAME", "test-node"),
        ("DB_POOL_SIZE", "3"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    vars
}

/// A configuration for database `dbname`.
pub fn config(dbname: &str, extra: &[(&str, &str)]) -> Config {
    Config::from_vars(vars(dbname, extra)).expect("test configuration")
}

/// A node started on a fresh database, and that database's name.
pub async fn start_app(extra: &[(&str, &str)]) -> (RunningApp, String) {
    let db = fresh_database().await;
    let app = realtime::app::start(config(&db, extra))
        .await
        .expect("node starts");
    (app, db)
}

/// An HS256 token with `claims`, signed with `secret`.
pub fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a test token")
}

/// A valid management API token.
pub fn api_token() -> String {
    sign(&serde_json::json!({"role": "service_role"}), API_SECRET)
}

/// An upsert body for tenant `id` with a `postgres` extension.
pub fn tenant_body(id: &str) -> Value {
    serde_json::json!({"tenant": {
        "external_id": id,
        "name": "ignored on create",
        "jwt_secret": "tenant-jwt-secret-tenant-jwt-secret-000",
        "extensions": [{"type": "postgres", "settings": {
            "region": "us-east-1", "db_host": "db.example.internal", "db_port": "5432",
            "db_name": "postgres", "db_user": "supabase_admin", "db_password": "db-pass-123"
        }}]
    }})
}
