//! [`SocketTally`]: one socket's message counts, written only by its own task (a relaxed load
//! and store per item: no read-modify-write, no shared cache line) and summed over the live
//! sockets at scrape time. A closing socket adds its totals to the node's and its tenant's
//! closed totals once, under the same lock the scrape takes, so no count is lost or doubled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use super::tenants::TenantCounters;
use super::{InKind, OutKind, Snapshot, registered};

/// Message counts by kind.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    out: [AtomicU64; 3],
    out_bytes: [AtomicU64; 3],
    incoming: [AtomicU64; 7],
    incoming_bytes: [AtomicU64; 7],
}

/// Adds `n` to a cell that only one task writes.
#[inline]
fn bump(cell: &AtomicU64, n: u64) {
    cell.store(cell.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

fn load(cells: &[AtomicU64]) -> impl Iterator<Item = u64> + '_ {
    cells.iter().map(|c| c.load(Ordering::Relaxed))
}

impl Counts {
    /// Adds these counts to `into` (which several sockets may add to at once).
    fn add_into(&self, into: &Counts) {
        let pairs = [
            (&self.out[..], &into.out[..]),
            (&self.out_bytes[..], &into.out_bytes[..]),
            (&self.incoming[..], &into.incoming[..]),
            (&self.incoming_bytes[..], &into.incoming_bytes[..]),
        ];
        for (from, to) in pairs {
            for (f, t) in from.iter().zip(to) {
                t.fetch_add(f.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }

    /// (messages in, messages out, bytes out).
    pub(crate) fn tenant_totals(&self) -> (u64, u64, u64) {
        (
            load(&self.incoming).sum(),
            load(&self.out).sum(),
            load(&self.out_bytes).sum(),
        )
    }
}

#[derive(Debug)]
struct LiveSocket {
    counts: Counts,
    tenant: Arc<TenantCounters>,
}

/// The live sockets' counts, and the totals of the closed ones.
struct Traffic {
    next: u64,
    live: HashMap<u64, Arc<LiveSocket>>,
    closed: Counts,
}

// std Mutex: taken at socket start and end and once per scrape, never on the per-item path.
static TRAFFIC: LazyLock<Mutex<Traffic>> = LazyLock::new(|| {
    Mutex::new(Traffic {
        next: 0,
        live: HashMap::new(),
        closed: Counts::default(),
    })
});

fn traffic() -> MutexGuard<'static, Traffic> {
    TRAFFIC.lock().unwrap_or_else(|e| e.into_inner())
}

/// A socket's contribution to the connection, channel and message series. Counts the socket
/// as a connection of its tenant while it lives; dropping it takes the socket and its channels
/// out again and keeps its message counts in the closed totals.
#[derive(Debug)]
pub struct SocketTally {
    id: u64,
    socket: Arc<LiveSocket>,
    channels: i64,
}

impl SocketTally {
    /// Starts counting a socket of `tenant` (external id).
    pub fn new(tenant: &str) -> SocketTally {
        let tenant = registered().tenants.handle(tenant);
        tenant.connections.inc();
        let socket = Arc::new(LiveSocket {
            counts: Counts::default(),
            tenant,
        });
        let mut traffic = traffic();
        let id = traffic.next;
        traffic.next += 1;
        traffic.live.insert(id, socket.clone());
        SocketTally {
            id,
            socket,
            channels: 0,
        }
    }

    /// Counts one queued fan-out item of `bytes`.
    #[inline]
    pub fn outbound(&mut self, kind: OutKind, bytes: usize) {
        let counts = &self.socket.counts;
        bump(&counts.out[kind as usize], 1);
        bump(&counts.out_bytes[kind as usize], bytes as u64);
    }

    /// Counts one client frame (`topic`, `event`) of `bytes` on the wire.
    pub fn inbound(&mut self, topic: &str, event: &str, bytes: usize) {
        let kind = InKind::of(topic, event) as usize;
        let counts = &self.socket.counts;
        bump(&counts.incoming[kind], 1);
        bump(&counts.incoming_bytes[kind], bytes as u64);
    }

    /// Records the socket's current number of joined channels (cheap when unchanged).
    #[inline]
    pub fn channels(&mut self, joined: usize) {
        let joined = joined as i64;
        if joined != self.channels {
            let delta = joined - self.channels;
            registered().channels.add(delta);
            self.socket.tenant.channels.add(delta);
            self.channels = joined;
        }
    }
}

impl Drop for SocketTally {
    fn drop(&mut self) {
        {
            let mut traffic = traffic();
            traffic.live.remove(&self.id);
            self.socket.counts.add_into(&traffic.closed);
            self.socket.counts.add_into(&self.socket.tenant.closed);
        }
        self.channels(0);
        self.socket.tenant.connections.dec();
    }
}

/// A tenant entry and its (messages in, messages out, bytes out).
type TenantSums = (Arc<TenantCounters>, (u64, u64, u64));

/// Samples the message series: the closed totals plus every live socket's counts.
pub(crate) fn sample_traffic(s: &mut Snapshot) {
    let traffic = traffic();
    let total = Counts::default();
    traffic.closed.add_into(&total);
    // Per tenant entry (by address): its closed totals plus its live sockets'.
    let mut tenants: HashMap<*const TenantCounters, TenantSums> = HashMap::new();
    for tenant in registered().tenants.all() {
        let closed = tenant.closed.tenant_totals();
        tenants.insert(Arc::as_ptr(&tenant), (tenant, closed));
    }
    for socket in traffic.live.values() {
        socket.counts.add_into(&total);
        let (i, o, b) = socket.counts.tenant_totals();
        let entry = tenants
            .entry(Arc::as_ptr(&socket.tenant))
            .or_insert_with(|| (socket.tenant.clone(), socket.tenant.closed.tenant_totals()));
        entry.1.0 += i;
        entry.1.1 += o;
        entry.1.2 += b;
    }
    drop(traffic);
    for (kind, (n, bytes)) in InKind::ALL
        .iter()
        .zip(load(&total.incoming).zip(load(&total.incoming_bytes)))
    {
        let labels = [("kind", kind.label())];
        s.counter(
            "realtime_messages_in_total",
            "Client WebSocket frames received, by kind",
            &labels,
            n,
        );
        s.counter(
            "realtime_messages_in_bytes_total",
            "Bytes of client WebSocket frames received, by kind",
            &labels,
            bytes,
        );
    }
    for (kind, (n, bytes)) in OutKind::ALL
        .iter()
        .zip(load(&total.out).zip(load(&total.out_bytes)))
    {
        let labels = [("kind", kind.label())];
        s.counter(
            "realtime_messages_out_total",
            "Fan-out messages queued to sockets (one per recipient channel), by kind",
            &labels,
            n,
        );
        s.counter(
            "realtime_messages_out_bytes_total",
            "Bytes of fan-out messages queued to sockets, by kind",
            &labels,
            bytes,
        );
    }
    for (tenant, (i, o, b)) in tenants.into_values() {
        let labels = [("tenant", tenant.label.as_str())];
        s.counter(
            "realtime_tenant_messages_in_total",
            "Client WebSocket frames received from a tenant's sockets",
            &labels,
            i,
        );
        s.counter(
            "realtime_tenant_messages_out_total",
            "Fan-out messages queued to a tenant's sockets",
            &labels,
            o,
        );
        s.counter(
            "realtime_tenant_messages_out_bytes_total",
            "Bytes of fan-out messages queued to a tenant's sockets",
            &labels,
            b,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant_out(s: &Snapshot, tenant: &str) -> f64 {
        s.value("realtime_tenant_messages_out_total", &[("tenant", tenant)])
    }

    #[test]
    fn a_socket_counts_while_open_and_its_totals_stay_after_it_closes() {
        let mut tally = SocketTally::new("tally-tenant");
        let tenant = tally.socket.tenant.clone();
        assert_eq!(tenant.connections.get(), 1);
        tally.channels(2);
        tally.outbound(OutKind::Broadcast, 10);
        tally.outbound(OutKind::Presence, 5);
        tally.inbound("realtime:r", "broadcast", 30);
        let mut open = Snapshot::default();
        sample_traffic(&mut open);
        assert_eq!(tenant_out(&open, "tally-tenant"), 2.0);
        assert_eq!(
            open.value(
                "realtime_tenant_messages_out_bytes_total",
                &[("tenant", "tally-tenant")]
            ),
            15.0
        );
        assert_eq!(tenant.channels.get(), 2);
        drop(tally);
        assert_eq!(tenant.connections.get(), 0);
        assert_eq!(tenant.channels.get(), 0);
        let mut closed = Snapshot::default();
        sample_traffic(&mut closed);
        assert_eq!(
            tenant_out(&closed, "tally-tenant"),
            2.0,
            "kept after the close"
        );
        assert!(
            closed.value("realtime_messages_out_total", &[("kind", "broadcast")])
                >= open.value("realtime_messages_out_total", &[("kind", "broadcast")])
        );
    }
}
