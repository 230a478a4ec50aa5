//! Nodes as processes: the environment of a test node, the built `realtime` binary, and a child
//! process of it that is ready once `GET /healthcheck` answers.
//!
//! Finding the binary ([`realtime_binary`]): `REALTIME_BIN` if set; else `realtime` in the
//! profile directory of the running test executable (`<target>/[<triple>/]<profile>/deps/..`).
//! `cargo nextest run --workspace` and `cargo test --workspace` build it together with the
//! tests, so it is used as is. When it is missing or older than the server's sources (e.g. after
//! `cargo nextest run -p cluster-tests` alone), it is built first with
//! `cargo build -p realtime --bin realtime` for the same profile, target and target dir.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::fixtures::{API_SECRET, ENC_KEY};
use crate::pg::{Pg, pg};
use crate::ws::Endpoint;

/// The workspace root, where the server package lives.
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// How long a node may take to answer `/healthcheck` (it connects and migrates first).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

static NODE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Variables of a node using database `dbname` of this process's cluster, plus `extra` (later
/// pairs win). `PORT` is `0`: in-process apps bind any port, [`Node::start`] picks a free one.
pub fn vars(dbname: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    pg().node_vars(dbname, extra)
}

impl Pg {
    /// Variables of a node using database `dbname` of this cluster, plus `extra` (later pairs
    /// win).
    pub fn node_vars(&self, dbname: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let port = self.port.to_string();
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
}

/// The path of an up-to-date `realtime` binary (see the module doc); built at most once per
/// process.
pub fn realtime_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("REALTIME_BIN") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable lives in <target>/<profile>/deps");
        let bin = profile_dir.join("realtime");
        if !is_fresh(&bin) {
            build_binary(profile_dir);
        }
        assert!(bin.is_file(), "no realtime binary at {}", bin.display());
        bin
    })
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time of the files under `path`.
fn newest(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|entry| newest(&entry.ok()?.path()))
        .max()
}

/// Whether `bin` exists and is newer than the sources of the server and its path dependencies.
fn is_fresh(bin: &Path) -> bool {
    let Some(built) = mtime(bin) else {
        return false;
    };
    let root = Path::new(WORKSPACE);
    [
        "src",
        "proto/src",
        "Cargo.toml",
        "Cargo.lock",
        "proto/Cargo.toml",
    ]
    .iter()
    .filter_map(|p| newest(&root.join(p)))
    .all(|source| source <= built)
}

/// Runs `cargo build -p realtime --bin realtime` into the target dir and profile of
/// `profile_dir` (`<target>/[<triple>/]<profile>`).
fn build_binary(profile_dir: &Path) {
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(name) => name.to_string(),
    };
    let mut target_dir = profile_dir.parent().expect("a target dir").to_path_buf();
    let mut triple = None;
    // Cargo marks the target dir's root with CACHEDIR.TAG; a directory without it is
    // `<target>/<triple>`.
    if !target_dir.join("CACHEDIR.TAG").exists()
        && let Some(parent) = target_dir.parent().map(Path::to_path_buf)
        && parent.join("CACHEDIR.TAG").exists()
    {
        triple = target_dir.file_name().map(|n| n.to_os_string());
        target_dir = parent;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "realtime",
        "--bin",
        "realtime",
        "--profile",
        &profile,
    ])
    .arg("--manifest-path")
    .arg(Path::new(WORKSPACE).join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir);
    if let Some(triple) = triple {
        cmd.arg("--target").arg(triple);
    }
    eprintln!("testkit: building the realtime binary: {cmd:?}");
    let out = cmd.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build of the realtime binary failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// How to run one node process: the program and its arguments (a wrapper such as
/// `ip netns exec <ns> <binary>` works: it must end up exec'ing the node in the same process),
/// its whole environment, and the address of its HTTP listener.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The program to run.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment, exactly (nothing is inherited).
    pub vars: Vec<(String, String)>,
    /// Where its HTTP listener answers once it is ready.
    pub addr: SocketAddr,
}

/// A `realtime` node running as a child process; killed when dropped.
///
/// Its stdout and stderr go to a log file, whose tail is printed (and the file kept) when the
/// node is dropped during a panic. The child also gets SIGKILL if the thread that started it exits (Linux
/// `PR_SET_PDEATHSIG`), so it cannot outlive a killed test; start nodes from the test's own
/// task or runtime workers, not from a short-lived thread.
pub struct Node {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Node {
    /// Starts [`realtime_binary`] with exactly `vars` (nothing inherited) and waits until it is
    /// ready. A `PORT` of `0` (or none) is replaced by a free port, retried if it gets taken.
    pub async fn start(vars: Vec<(String, String)>) -> Node {
        Node::start_binary(realtime_binary(), vars).await
    }

    /// Like [`Node::start`], with the binary at `bin`.
    pub async fn start_binary(bin: &Path, vars: Vec<(String, String)>) -> Node {
        let fixed_port = vars
            .iter()
            .rev()
            .find(|(k, _)| k == "PORT")
            .and_then(|(_, v)| v.parse::<u16>().ok())
            .filter(|p| *p != 0);
        let attempts = if fixed_port.is_some() { 1 } else { 3 };
        let mut last_log = String::new();
        for _ in 0..attempts {
            let port = fixed_port.unwrap_or_else(free_port);
            let mut vars = vars.clone();
            vars.push(("PORT".to_string(), port.to_string()));
            let launch = Launch {
                program: bin.to_path_buf(),
                args: Vec::new(),
                vars,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            };
            match Node::launch(&launch).await {
                Ok(node) => return node,
                // The failed node was dropped (killed); try again on another port.
                Err(log) => last_log = log,
            }
        }
        panic!(
            "realtime node did not become ready on {attempts} attempt(s); last log:\n{last_log}"
        );
    }

    /// Runs `launch` once and waits until `GET http://<launch.addr>/healthcheck` answers.
    /// Nothing is filled in: `PORT`, `BIND_ADDR` and the rest come from `launch.vars` alone.
    ///
    /// # Errors
    /// The node's log when it exited or did not become ready in time (it is killed then).
    pub async fn launch(launch: &Launch) -> Result<Node, String> {
        let mut node = Node::spawn(launch);
        if node.wait_ready().await {
            Ok(node)
        } else {
            Err(node.log_text())
        }
    }

    fn spawn(launch: &Launch) -> Node {
        let n = NODE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let log =
            std::env::temp_dir().join(format!("realtime-test-node-{}-{n}.log", std::process::id()));
        let file = File::create(&log).expect("node log file");
        let mut cmd = Command::new(&launch.program);
        cmd.args(&launch.args)
            .env_clear()
            .envs(launch.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("node log file"))
            .stderr(file);
        #[allow(unsafe_code, reason = "a libc call std does not wrap")]
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", launch.program.display()));
        Node {
            child,
            addr: launch.addr,
            log,
        }
    }

    /// Polls `/healthcheck` until it answers 200 (true) or the process exits or times out.
    async fn wait_ready(&mut self) -> bool {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client");
        let url = format!("http://{}/healthcheck", self.addr);
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The node's HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL and reaps the process (its sockets are closed once this returns).
    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child.wait().expect("wait for the node")
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for the node")
    }

    /// The file the node logs to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What the node has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM (graceful shutdown) and waits up to `timeout` for the exit status; kills
    /// it after that.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        #[allow(unsafe_code, reason = "a libc call std does not wrap")]
        // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM)
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the node") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait for the node");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Endpoint for Node {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = self.log_text();
            let start = text.len().saturating_sub(4000);
            let start = (start..text.len())
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(text.len());
            eprintln!(
                "--- log of the realtime node on {} ({}) ---\n{}",
                self.addr,
                self.log.display(),
                &text[start..]
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
