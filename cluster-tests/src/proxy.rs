//! The entry proxy (`src/bin/entry_proxy.rs`) as a child process of a test: started with a
//! listen address (port 0 works: the proxy prints the address it bound) and backends, killed on
//! drop. Its log (stderr) goes to the test's stderr; its stdout (the listening line, then one
//! route line per connection) is read by a thread, so [`Routes::backend_of`] can say which
//! backend a client landed on.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The line prefix the proxy prints on stdout once it listens, followed by the address.
pub const LISTENING: &str = "entry_proxy: listening on ";

/// The line prefix of a route, followed by `<client addr> -> <backend addr>`.
pub const ROUTE: &str = "entry_proxy: route ";

/// A running entry proxy.
pub struct EntryProxy {
    child: Child,
    addr: SocketAddr,
    routes: Routes,
}

/// The connections the proxy routed: client address (as the proxy saw it, i.e. the client
/// socket's local address) → backend. Cheap to clone; a later connection from the same client
/// address replaces the earlier one.
#[derive(Clone, Debug, Default)]
pub struct Routes(Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>);

impl Routes {
    /// The backend the proxy connected `client` to, waiting up to `timeout` for its route line
    /// (it is printed before the first byte is copied, so once a client got an answer through
    /// the proxy only the reading thread can be behind).
    pub async fn backend_of(&self, client: SocketAddr, timeout: Duration) -> Option<SocketAddr> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.0.lock().expect("routes lock").get(&client).copied();
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn record(&self, line: &str) {
        let parsed = line.strip_prefix(ROUTE).and_then(|rest| {
            let (client, backend) = rest.split_once(" -> ")?;
            Some((client.parse().ok()?, backend.parse().ok()?))
        });
        if let Some((client, backend)) = parsed {
            self.0.lock().expect("routes lock").insert(client, backend);
        }
    }
}

impl EntryProxy {
    /// Starts the proxy binary `bin` on `listen` in front of `backends`, and waits until it
    /// listens. Integration tests of this package find `bin` as
    /// `env!("CARGO_BIN_EXE_entry_proxy")`.
    pub fn start(bin: &Path, listen: SocketAddr, backends: &[SocketAddr]) -> EntryProxy {
        let mut cmd = Command::new(bin);
        cmd.arg("--listen").arg(listen.to_string());
        for backend in backends {
            cmd.arg("--backend").arg(backend.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let _ = stdout.read_line(&mut line);
        let Some(addr) = line
            .trim()
            .strip_prefix(LISTENING)
            .and_then(|a| a.parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the entry proxy did not start (its stderr is above): {line}");
        };
        let routes = Routes::default();
        let sink = routes.clone();
        // Ends at EOF, when the proxy exits.
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                sink.record(line.trim());
            }
        });
        EntryProxy {
            child,
            addr,
            routes,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The routes it printed so far (a handle that follows new ones).
    pub fn routes(&self) -> Routes {
        self.routes.clone()
    }
}

impl Drop for EntryProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_lines_parse_and_the_latest_wins() {
        let routes = Routes::default();
        routes.record("entry_proxy: route 127.0.0.1:5000 -> 127.0.0.1:4001");
        routes.record("entry_proxy: route 127.0.0.1:5001 -> 127.0.0.1:4002");
        routes.record("entry_proxy: route 127.0.0.1:5000 -> 127.0.0.1:4003");
        routes.record("entry_proxy: backend 127.0.0.1:4001 refused");
        routes.record("entry_proxy: route nonsense -> 127.0.0.1:4001");
        let map = routes.0.lock().unwrap().clone();
        assert_eq!(map.len(), 2);
        assert_eq!(
            map[&"127.0.0.1:5000".parse().unwrap()],
            "127.0.0.1:4003".parse().unwrap()
        );
        assert_eq!(
            map[&"127.0.0.1:5001".parse().unwrap()],
            "127.0.0.1:4002".parse().unwrap()
        );
    }
}
