//! A TCP round-robin entry proxy for a local cluster (`scripts/cluster`):
//!
//! ```text
//! entry_proxy --listen 127.0.0.1:4000 --backend 127.0.0.1:4001 --backend 127.0.0.1:4002 ...
//! ```
//!
//! Each accepted connection goes to the next backend in turn; a backend that refuses or does not
//! answer within 1 s is skipped for that connection and the one after it is tried, until every
//! backend was tried once (then the client is closed). Bytes are copied both ways until either
//! side closes. Nothing is parsed, so WebSockets, HTTP and anything else pass through.
//!
//! Once listening it prints `entry_proxy: listening on <addr>` on stdout (a listen port of 0
//! gets a free one); then, for each connection once its backend accepted and before any byte is
//! copied, `entry_proxy: route <client addr> -> <backend addr>` (an access log: tests use it to
//! know which node a client landed on). SIGINT or SIGTERM stops it: it stops accepting, ends
//! every connection and exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use std::io::Write as _;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a backend may take to accept before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The command line.
struct Args {
    listen: SocketAddr,
    backends: Vec<SocketAddr>,
}

const USAGE: &str =
    "usage: entry_proxy --listen HOST:PORT --backend HOST:PORT [--backend HOST:PORT ...]";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = None;
    let mut backends = Vec::new();
    while let Some(flag) = args.next() {
        let value = || format!("{flag} needs a HOST:PORT value");
        match flag.as_str() {
            "--listen" => {
                let v = args.next().ok_or_else(value)?;
                listen = Some(v.parse().map_err(|e| format!("--listen {v}: {e}"))?);
            }
            "--backend" => {
                let v = args.next().ok_or_else(value)?;
                backends.push(v.parse().map_err(|e| format!("--backend {v}: {e}"))?);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let listen = listen.ok_or_else(|| format!("--listen is missing\n{USAGE}"))?;
    if backends.is_empty() {
        return Err(format!("no --backend given\n{USAGE}"));
    }
    Ok(Args { listen, backends })
}

/// The backends and where the next connection starts.
struct Backends {
    addrs: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Backends {
    /// Connects to the next backend that accepts, starting one further than the previous
    /// connection did.
    async fn connect(&self) -> Option<(SocketAddr, TcpStream)> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..self.addrs.len() {
            let addr = self.addrs[(first + k) % self.addrs.len()];
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Some((addr, stream)),
                Ok(Err(e)) => {
                    eprintln!("entry_proxy: backend {addr} refused: {e}; trying the next")
                }
                Err(_) => eprintln!("entry_proxy: backend {addr} did not answer; trying the next"),
            }
        }
        None
    }
}

async fn serve(mut client: TcpStream, backends: Arc<Backends>, stop: CancellationToken) {
    let Some((addr, mut backend)) = backends.connect().await else {
        eprintln!("entry_proxy: no backend accepts; closing the client");
        let _ = client.shutdown().await;
        return;
    };
    if let Ok(peer) = client.peer_addr() {
        // A closed stdout (nobody reads the log) must not end the connection: ignore errors.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "entry_proxy: route {peer} -> {addr}");
        let _ = out.flush();
    }
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
            if let Err(e) = result {
                eprintln!("entry_proxy: connection to {addr} ended: {e}");
            }
        }
        () = stop.cancelled() => {}
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    println!("entry_proxy: listening on {}", listener.local_addr()?);
    let backends = Arc::new(Backends {
        addrs: args.backends,
        next: AtomicUsize::new(0),
    });
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    tasks.spawn(serve(client, backends.clone(), stop.clone()));
                }
                Err(e) => {
                    eprintln!("entry_proxy: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    drop(listener);
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("entry_proxy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
