//! [`SocketTally`]: one socket's counts, added up locally per item and flushed into the
//! registry's atomics once per batch, so the fan-out path pays no lookup per delivery.

use std::sync::Arc;

use super::tenants::TenantCounters;
use super::{InKind, OutKind, registered};

/// A socket's contribution to the connection, channel and message series. Counts the socket
/// as a connection of its tenant while it lives; dropping it takes the socket and its channels
/// out again.
#[derive(Debug)]
pub struct SocketTally {
    tenant: Arc<TenantCounters>,
    /// (messages, bytes) per [`OutKind`], not yet flushed.
    out: [(u64, u64); 3],
    channels: i64,
}

impl SocketTally {
    /// Starts counting a socket of `tenant` (external id).
    pub fn new(tenant: &str) -> SocketTally {
        let tenant = registered().tenants.handle(tenant);
        tenant.connections.inc();
        SocketTally {
            tenant,
            out: [(0, 0); 3],
            channels: 0,
        }
    }

    /// Counts one queued fan-out item of `bytes` (locally; see [`SocketTally::flush`]).
    #[inline]
    pub fn outbound(&mut self, kind: OutKind, bytes: usize) {
        let slot = &mut self.out[kind as usize];
        slot.0 += 1;
        slot.1 += bytes as u64;
    }

    /// Adds the fan-out counted since the last flush to the registry.
    pub fn flush(&mut self) {
        let metrics = registered();
        let (mut messages, mut bytes) = (0, 0);
        for (kind, slot) in self.out.iter_mut().enumerate() {
            if slot.0 > 0 {
                metrics.messages_out[kind].inc_by(slot.0);
                metrics.messages_out_bytes[kind].inc_by(slot.1);
                messages += slot.0;
                bytes += slot.1;
                *slot = (0, 0);
            }
        }
        if messages > 0 {
            self.tenant.messages_out.inc_by(messages);
            self.tenant.messages_out_bytes.inc_by(bytes);
        }
    }

    /// Counts one client frame (`topic`, `event`) of `bytes` on the wire.
    pub fn inbound(&mut self, topic: &str, event: &str, bytes: usize) {
        let metrics = registered();
        let kind = InKind::of(topic, event) as usize;
        metrics.messages_in[kind].inc();
        metrics.messages_in_bytes[kind].inc_by(bytes as u64);
        self.tenant.messages_in.inc();
    }

    /// Records the socket's current number of joined channels (cheap when unchanged).
    #[inline]
    pub fn channels(&mut self, joined: usize) {
        let joined = joined as i64;
        if joined != self.channels {
            let delta = joined - self.channels;
            registered().channels.add(delta);
            self.tenant.channels.add(delta);
            self.channels = joined;
        }
    }
}

impl Drop for SocketTally {
    fn drop(&mut self) {
        self.flush();
        self.channels(0);
        self.tenant.connections.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_counts_its_tenant_until_dropped() {
        let mut tally = SocketTally::new("tally-tenant");
        let tenant = tally.tenant.clone();
        assert_eq!(tenant.connections.get(), 1);
        tally.channels(2);
        tally.outbound(OutKind::Broadcast, 10);
        tally.outbound(OutKind::Presence, 5);
        assert_eq!(
            tenant.messages_out.get(),
            0,
            "counted locally until the flush"
        );
        tally.flush();
        assert_eq!(tenant.messages_out.get(), 2);
        assert_eq!(tenant.messages_out_bytes.get(), 15);
        tally.inbound("realtime:r", "broadcast", 30);
        assert_eq!(tenant.messages_in.get(), 1);
        assert_eq!(tenant.channels.get(), 2);
        drop(tally);
        assert_eq!(tenant.connections.get(), 0);
        assert_eq!(tenant.channels.get(), 0);
    }
}
