//! A throwaway PostgreSQL 15 cluster (`initdb --no-sync` into a temp dir, `wal_level=logical`,
//! `fsync=off`) and a fresh database per test.
//!
//! [`pg()`] is the cluster of this test process: started on first use, stopped and deleted at
//! process exit (an `atexit` hook) or, if the process dies without running it, by a detached
//! watchdog. [`Pg::start`] gives an owned cluster that is stopped when dropped. Clients and node
//! processes reach a cluster over TCP on `127.0.0.1:port` as `postgres`/`postgres`.
//!
//! As root, the cluster runs as the `postgres` user; its directory is then placed where that
//! user can reach it (the temp dir if every ancestor is enterable by others, else `/tmp`) and
//! every PostgreSQL tool runs from `/`, so a checkout in a mode-700 directory works.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const PGBIN: &str = "/usr/lib/postgresql/15/bin";

/// A running throwaway cluster.
pub struct Pg {
    root: PathBuf,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    as_postgres: bool,
    /// Whether dropping this value stops the cluster (false for the process-wide one).
    owned: bool,
}

static PG: OnceLock<Pg> = OnceLock::new();
static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Returns this process's cluster, starting it on first use.
pub fn pg() -> &'static Pg {
    PG.get_or_init(|| {
        let mut pg = Pg::start();
        pg.owned = false;
        #[allow(unsafe_code, reason = "a libc call std does not wrap")]
        // SAFETY: registering a plain `extern "C" fn` with no captured state.
        unsafe {
            libc::atexit(stop_cluster_at_exit)
        };
        pg
    })
}

/// Connects to `dbname` of this process's cluster as the superuser.
pub async fn connect(dbname: &str) -> tokio_postgres::Client {
    pg().connect(dbname).await
}

/// Creates a new empty database in this process's cluster and returns its name.
pub async fn fresh_database() -> String {
    pg().create_database().await
}

extern "C" fn stop_cluster_at_exit() {
    if let Some(pg) = PG.get() {
        pg.stop();
    }
}

fn is_root() -> bool {
    #[allow(unsafe_code, reason = "a libc call std does not wrap")]
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe {
        libc::geteuid() == 0
    }
}

/// Whether a user other than the owner can enter `dir` and each of its ancestors.
fn others_can_enter(dir: &Path) -> bool {
    dir.ancestors()
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// Where cluster directories go: a place the `postgres` user can reach when it runs them.
fn base_dir(as_postgres: bool) -> PathBuf {
    let tmp = std::env::temp_dir();
    if !as_postgres || others_can_enter(&tmp) {
        tmp
    } else {
        PathBuf::from("/tmp")
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

impl Pg {
    /// Starts a new cluster owned by the caller: it is stopped and deleted on drop (and by a
    /// watchdog if this process dies first).
    pub fn start() -> Pg {
        let as_postgres = is_root();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let root =
            base_dir(as_postgres).join(format!("realtime-test-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&root).expect("temp dir");
        if as_postgres {
            run(
                Command::new("chown").arg("postgres").arg(&root),
                "chown temp dir",
            );
        }
        let mut pg = Pg {
            root,
            port: 0,
            as_postgres,
            owned: true,
        };
        std::fs::write(pg.root.join("pw"), "postgres\n").expect("password file");
        run(
            pg.command("initdb")
                .arg("-D")
                .arg(pg.data())
                .args([
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--auth-local=trust",
                ])
                .args(["--auth-host=scram-sha-256", "--pwfile"])
                .arg(pg.root.join("pw")),
            "initdb",
        );
        // Another test process may grab the same free port between probe and bind: retry.
        for attempt in 0..5 {
            pg.port = free_port();
            if pg.pg_ctl_start() {
                break;
            }
            assert!(
                attempt < 4,
                "postgres did not start; see {}",
                pg.root.join("pg.log").display()
            );
        }
        pg.spawn_watchdog();
        pg
    }

    /// Stops the server (fast shutdown: sessions are ended), keeping its data; see
    /// [`Pg::start_server`]. For tests of a database that goes away.
    pub fn stop_server(&self) {
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w", "stop"]),
            "pg_ctl stop",
        );
    }

    /// Starts a server stopped by [`Pg::stop_server`] again, on the same port.
    pub fn start_server(&self) {
        assert!(
            self.pg_ctl_start(),
            "postgres did not restart; see {}",
            self.root.join("pg.log").display()
        );
    }

    fn pg_ctl_start(&self) -> bool {
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.root.join("pg.log"))
            .args(["-w", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical \
                 -c max_replication_slots=20 -c max_wal_senders=20 -c fsync=off \
                 -c max_connections=200",
                self.port,
                self.root.display()
            ))
            .arg("start")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl start")
            .success()
    }

    /// The cluster's directory (data dir, socket, `pg.log`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A `tokio_postgres` connection string for `dbname` as the superuser over TCP.
    pub fn conn_string(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password=postgres dbname={dbname}",
            self.port
        )
    }

    /// Connects to `dbname` as the superuser; the connection task runs on the current runtime.
    pub async fn connect(&self, dbname: &str) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.conn_string(dbname), tokio_postgres::NoTls)
                .await
                .expect("connect to the test cluster");
        tokio::spawn(connection);
        client
    }

    /// Creates a new empty database, unique across test processes, and returns its name.
    pub async fn create_database(&self) -> String {
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            DB_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        self.connect("postgres")
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        name
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// A PostgreSQL tool, run as `postgres` when we are root, from `/` (which every user can
    /// enter, unlike a checkout in a mode-700 directory).
    fn command(&self, program: &str) -> Command {
        let path = format!("{PGBIN}/{program}");
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--", &path]);
            cmd
        } else {
            Command::new(path)
        };
        cmd.current_dir("/");
        cmd
    }

    /// Stops the cluster if this process dies without stopping it.
    fn spawn_watchdog(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}; rm -rf '{root}'",
            pid = std::process::id(),
            stop = self.stop_command_line(),
            root = self.root.display()
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .current_dir("/")
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
            .current_dir("/")
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.owned {
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mode_700_ancestor_is_not_enterable_by_others() {
        let private = std::env::temp_dir().join(format!("testkit-700-{}", std::process::id()));
        let inner = private.join("checkout");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!others_can_enter(&inner));
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).unwrap();
        let open = others_can_enter(&inner);
        std::fs::remove_dir_all(&private).unwrap();
        assert_eq!(open, others_can_enter(&std::env::temp_dir()));
        assert!(others_can_enter(Path::new("/tmp")));
    }

    #[tokio::test]
    async fn an_owned_cluster_serves_fresh_databases_and_is_removed_on_drop() {
        let pg = Pg::start();
        let root = pg.root().to_path_buf();
        let (a, b) = (pg.create_database().await, pg.create_database().await);
        assert_ne!(a, b);
        let row = pg
            .connect(&b)
            .await
            .query_one(
                "SELECT current_database(), current_setting('wal_level')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), b);
        assert_eq!(row.get::<_, String>(1), "logical");
        drop(pg);
        assert!(!root.exists(), "{} is left behind", root.display());
    }
}
