//! Ports reserved up front for the nodes of a test cluster: an HTTP (TCP) port, a gossip (UDP)
//! port and a bus (UDP) port per node.
//!
//! Ports come from 20000-31999, below Linux's ephemeral range (32768-60999), so the outgoing
//! connections and `bind(0)` listeners of other tests never take them. A port is ours once
//!
//! * this process holds an exclusive `flock` on `<tmp>/realtime-cluster-ports/<port>`, which it
//!   keeps for the whole life of the [`Reservation`] (so other cluster-test processes skip it,
//!   including while a node of ours is restarting), and
//! * binding it (TCP on `0.0.0.0` for HTTP, UDP on `0.0.0.0` for gossip and bus) succeeded; those
//!   probe sockets are closed right before the nodes start.
//!
//! A killed node's UDP ports are free as soon as its process is reaped, and the server binds its
//! HTTP listener with `SO_REUSEADDR`, so a restart reuses the same ports.

use std::fs::{File, OpenOptions};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// The lowest port handed out.
const FIRST: u16 = 20000;
/// How many ports the range holds.
const SPAN: u32 = 12000;

/// The ports of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePorts {
    /// HTTP and WebSocket (`PORT`, TCP).
    pub http: u16,
    /// Gossip (`GOSSIP_PORT`, UDP).
    pub gossip: u16,
    /// QUIC bus (`BUS_PORT`, UDP).
    pub bus: u16,
}

/// Ports held by this process: lock files for as long as the value lives, probe sockets until
/// [`Reservation::release_probes`].
pub struct Reservation {
    locks: Vec<File>,
    probes: Vec<Probe>,
    next: u32,
}

enum Probe {
    Tcp(#[allow(dead_code, reason = "held open, never read")] TcpListener),
    Udp(#[allow(dead_code, reason = "held open, never read")] UdpSocket),
}

#[derive(Clone, Copy)]
enum Kind {
    Tcp,
    Udp,
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("realtime-cluster-ports")
}

/// Takes an exclusive, non-blocking `flock` on `file`; false when another process holds it.
fn try_lock(file: &File) -> bool {
    #[allow(unsafe_code, reason = "a libc call std does not wrap at this MSRV")]
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    rc == 0
}

impl Reservation {
    /// An empty reservation whose search starts at a place that depends on the process and the
    /// time, so concurrent test processes rarely probe the same ports.
    pub fn new() -> Reservation {
        std::fs::create_dir_all(lock_dir()).expect("the port lock directory");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seed = std::process::id().wrapping_mul(2_654_435_761) ^ nanos;
        Reservation {
            locks: Vec::new(),
            probes: Vec::new(),
            next: seed % SPAN,
        }
    }

    /// Reserves the three ports of one more node.
    pub fn node(&mut self) -> NodePorts {
        NodePorts {
            http: self.port(Kind::Tcp),
            gossip: self.port(Kind::Udp),
            bus: self.port(Kind::Udp),
        }
    }

    /// Reserves `count` nodes' ports.
    pub fn nodes(&mut self, count: usize) -> Vec<NodePorts> {
        (0..count).map(|_| self.node()).collect()
    }

    /// Reserves one more TCP port (e.g. for a proxy).
    pub fn tcp(&mut self) -> u16 {
        self.port(Kind::Tcp)
    }

    fn port(&mut self, kind: Kind) -> u16 {
        for _ in 0..SPAN {
            let port = FIRST + (self.next % SPAN) as u16;
            // A stride coprime with SPAN walks the whole range.
            self.next = self.next.wrapping_add(7919);
            let Ok(file) = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(lock_dir().join(port.to_string()))
            else {
                continue;
            };
            if !try_lock(&file) {
                continue;
            }
            let probe = match kind {
                Kind::Tcp => TcpListener::bind(("0.0.0.0", port)).map(Probe::Tcp),
                Kind::Udp => UdpSocket::bind(("0.0.0.0", port)).map(Probe::Udp),
            };
            if let Ok(probe) = probe {
                self.locks.push(file);
                self.probes.push(probe);
                return port;
            }
        }
        panic!("no free port left in {FIRST}..{}", u32::from(FIRST) + SPAN);
    }

    /// Closes the probe sockets, so nodes can bind the ports; the locks stay.
    pub fn release_probes(&mut self) {
        self.probes.clear();
    }
}

impl Default for Reservation {
    fn default() -> Self {
        Reservation::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_held_and_bindable_after_release() {
        let mut a = Reservation::new();
        let ports = a.nodes(3);
        let mut all: Vec<u16> = ports
            .iter()
            .flat_map(|p| [p.http, p.gossip, p.bus])
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 9);
        assert!(all.iter().all(|p| (20000..32000).contains(p)));
        // Held: binding fails while the probes are open.
        assert!(UdpSocket::bind(("0.0.0.0", ports[0].gossip)).is_err());
        assert!(TcpListener::bind(("0.0.0.0", ports[0].http)).is_err());
        // Another reservation never gets a locked port, even after the probes are released.
        a.release_probes();
        let mut b = Reservation::new();
        let other = b.nodes(3);
        assert!(
            other
                .iter()
                .flat_map(|p| [p.http, p.gossip, p.bus])
                .all(|p| !all.contains(&p))
        );
        assert!(UdpSocket::bind(("0.0.0.0", ports[0].gossip)).is_ok());
        assert!(TcpListener::bind(("127.0.0.1", ports[0].http)).is_ok());
    }
}
