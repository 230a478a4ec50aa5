//! Shared identifier newtypes passed between modules.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A tenant's `external_id`: the first DNS label of the Host a client connects to.
///
/// Cheap to clone (shared string), since it travels with every message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Wraps an external id.
    pub fn new(external_id: impl Into<Arc<str>>) -> Self {
        Self(external_id.into())
    }

    /// Returns the external id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns the tenant a `Host` header value names: its first DNS label, without the port
    /// (`abcd.supabase.co:443` → `abcd`, `127.0.0.1` → `127`), as the original does.
    pub fn from_host(host: &str) -> TenantId {
        let without_port = host_without_port(host);
        TenantId::new(without_port.split('.').next().unwrap_or(without_port))
    }

    /// Returns whether a `Host` header value can name a tenant: a name of two labels or more
    /// (`abcd.supabase.co`, `no-such.localhost`). An IP literal (`127.0.0.1`, `[::1]:4000`) or a
    /// single label (`localhost`, a compose service name) cannot; only such a Host may fall back
    /// to `FALLBACK_TENANT` when its first label names no tenant.
    pub fn host_can_name_tenant(host: &str) -> bool {
        let name = host_without_port(host.trim());
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.starts_with('[') || name.parse::<std::net::IpAddr>().is_ok() {
            return false;
        }
        name.split('.').filter(|label| !label.is_empty()).count() >= 2
    }
}

/// Returns `host` without a trailing `:port` (an IPv6 literal keeps its brackets).
fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

impl TenantId {}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TenantId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

/// A node's name in the cluster (`NODE_NAME`, defaulting to the host name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Wraps a node name.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    /// Returns the node name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One run of a node: its name and an incarnation that grows with every start, so a restarted
/// node is told apart from its previous run. Created once at start and shared by everything
/// that names this node to peers (presence replicas, membership).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIncarnation {
    /// The node.
    pub node: NodeId,
    /// Milliseconds since the Unix epoch at start; higher for a later start (clocks permitting).
    pub incarnation: u64,
}

impl NodeIncarnation {
    /// Returns the incarnation of a node starting now.
    pub fn start(node: NodeId) -> NodeIncarnation {
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1));
        NodeIncarnation { node, incarnation }
    }
}

impl fmt::Display for NodeIncarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node, self.incarnation)
    }
}

/// A WebSocket connection's id, unique within this node's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// Returns a fresh id.
    pub fn next() -> ConnId {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_start_has_a_higher_incarnation() {
        let first = NodeIncarnation::start(NodeId::new("n"));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = NodeIncarnation::start(NodeId::new("n"));
        assert!(second.incarnation > first.incarnation);
        assert_eq!(second.to_string(), format!("n@{}", second.incarnation));
    }

    #[test]
    fn the_tenant_is_the_first_host_label() {
        let id = |h: &str| TenantId::from_host(h).as_str().to_string();
        assert_eq!(id("abcd.supabase.co"), "abcd");
        assert_eq!(id("realtime-dev.supabase-realtime:4000"), "realtime-dev");
        assert_eq!(id("t1.localhost:4000"), "t1");
        assert_eq!(id("localhost:4000"), "localhost");
        assert_eq!(id("127.0.0.1:4000"), "127");
        assert_eq!(id(""), "");
        assert_eq!(id("[::1]:4000"), "[::1]");
    }

    #[test]
    fn only_names_of_two_labels_or_more_can_name_a_tenant() {
        for host in [
            "abcd.supabase.co",
            "abcd.supabase.co:443",
            "no-such.localhost",
            "typo.example.com:4000",
            "realtime-dev.supabase-realtime",
            "t1.localhost.",
        ] {
            assert!(TenantId::host_can_name_tenant(host), "{host}");
        }
        for host in [
            "localhost",
            "localhost:4000",
            "localhost.",
            "realtime",
            "127.0.0.1",
            "127.0.0.1:4000",
            "10.1.2.3",
            "[::1]",
            "[::1]:4000",
            "[2001:db8::1]:443",
            "::1",
            "",
        ] {
            assert!(!TenantId::host_can_name_tenant(host), "{host}");
        }
    }
}
