//! The entry proxy (`src/bin/entry_proxy.rs`) as a child process of a test: started with a
//! listen address (port 0 works: the proxy prints the address it bound) and backends, killed on
//! drop. Its log (stderr) goes to the test's stderr.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The line prefix the proxy prints on stdout once it listens, followed by the address.
pub const LISTENING: &str = "entry_proxy: listening on ";

/// A running entry proxy.
pub struct EntryProxy {
    child: Child,
    addr: SocketAddr,
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
        EntryProxy { child, addr }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EntryProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
