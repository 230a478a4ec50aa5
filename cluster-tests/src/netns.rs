//! A small lab network for partition tests: one network namespace per node, each with a veth
//! into a bridge in the test's own namespace, which has an address on the same /24 so the test
//! reaches every node directly (and nodes reach the test's forwarders, e.g. to PostgreSQL).
//!
//! Partitions are silent drops: a node's neighbour entry for a peer is replaced by a permanent
//! one with a MAC address nobody has, so its frames to that peer vanish on the bridge while
//! everything else (the test's clients included) still flows. [`NetLab::heal`] deletes those
//! entries and ARP takes over again.
//!
//! Needs root and `ip` (iproute2). Everything is named `rt<pid>…` and removed on drop (and by
//! the next lab, if the process that made it died first); the /24
//! is `10.231.<x>.0/24` with `x` derived from the pid. All traffic stays on this machine: the
//! bridge has no uplink and nothing is routed beyond it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Host;

/// A MAC address no interface of the lab has (locally administered).
const NOWHERE_MAC: &str = "02:00:00:de:ad:01";

/// The lab network; torn down on drop.
pub struct NetLab {
    ip_bin: PathBuf,
    tag: String,
    subnet: u8,
    namespaces: Vec<String>,
    bridge: Option<String>,
    blocked: Vec<(usize, usize)>,
}

fn find_ip() -> Option<PathBuf> {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    #[allow(unsafe_code, reason = "a libc call std does not wrap")]
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe {
        libc::geteuid() == 0
    }
}

impl NetLab {
    /// Why a lab cannot be built here, if it cannot (not root, no `ip`).
    pub fn unavailable() -> Option<String> {
        if !is_root() {
            return Some("not running as root (network namespaces need it)".into());
        }
        if find_ip().is_none() {
            return Some("no `ip` binary (iproute2)".into());
        }
        None
    }

    /// Builds a lab with `count` node namespaces.
    ///
    /// # Errors
    /// The failing `ip` command and its output (whatever was created is removed).
    pub fn create(count: usize) -> Result<NetLab, String> {
        if let Some(why) = NetLab::unavailable() {
            return Err(why);
        }
        assert!(count < 200, "at most 199 nodes");
        let pid = std::process::id();
        let mut lab = NetLab {
            ip_bin: find_ip().expect("checked above"),
            tag: format!("rt{pid}"),
            subnet: (pid % 200 + 20) as u8,
            namespaces: Vec::new(),
            bridge: None,
            blocked: Vec::new(),
        };
        lab.remove_stale();
        let bridge = format!("{}b", lab.tag);
        lab.ip(&["link", "add", &bridge, "type", "bridge"])?;
        lab.bridge = Some(bridge.clone());
        let host = format!("{}/24", lab.host_ip());
        lab.ip(&["addr", "add", &host, "dev", &bridge])?;
        lab.ip(&["link", "set", &bridge, "up"])?;
        for i in 0..count {
            let ns = format!("{}-{i}", lab.tag);
            lab.ip(&["netns", "add", &ns])?;
            lab.namespaces.push(ns.clone());
            let outer = format!("{}h{i}", lab.tag);
            let inner = format!("{}n{i}", lab.tag);
            lab.ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            lab.ip(&["link", "set", &inner, "netns", &ns])?;
            lab.ip(&["link", "set", &outer, "master", &bridge])?;
            lab.ip(&["link", "set", &outer, "up"])?;
            let addr = format!("{}/24", lab.node_ip(i));
            lab.ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner])?;
            lab.ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            lab.ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    /// Removes the namespaces and bridges of labs whose test process is gone (killed before
    /// its drop ran), so their addresses do not shadow this lab's.
    fn remove_stale(&self) {
        let owner_gone = |name: &str| -> bool {
            let digits: String = name
                .strip_prefix("rt")
                .unwrap_or_default()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            !digits.is_empty() && !Path::new(&format!("/proc/{digits}")).exists()
        };
        let list = |args: &[&str]| -> String {
            Command::new(&self.ip_bin)
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        for line in list(&["netns", "list"]).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name.contains('-') && owner_gone(name) {
                let _ = self.ip(&["netns", "del", name]);
            }
        }
        for line in list(&["-o", "link", "show", "type", "bridge"]).lines() {
            // `<index>: <name>: <flags> ...`
            let name = line.split(':').nth(1).unwrap_or_default().trim();
            if name.ends_with('b') && owner_gone(name) {
                let _ = self.ip(&["link", "del", name]);
            }
        }
    }

    fn ip(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new(&self.ip_bin)
            .args(args)
            .output()
            .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The test's own address on the lab's bridge.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 1)
    }

    /// Node `i`'s address.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 11 + i as u8)
    }

    /// Where node `i` runs: its address, started through `ip netns exec <ns>`.
    pub fn host(&self, i: usize) -> Host {
        Host {
            ip: self.node_ip(i).into(),
            wrapper: vec![
                self.ip_bin.display().to_string(),
                "netns".into(),
                "exec".into(),
                self.namespaces[i].clone(),
            ],
        }
    }

    fn inner_dev(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Cuts every node of `a` off from every node of `b` (both directions, silently).
    ///
    /// # Errors
    /// A failing `ip` command.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) -> Result<(), String> {
        for &x in a {
            for &y in b {
                for (from, to) in [(x, y), (y, x)] {
                    let peer = self.node_ip(to).to_string();
                    self.ip(&[
                        "-n",
                        &self.namespaces[from],
                        "neigh",
                        "replace",
                        &peer,
                        "lladdr",
                        NOWHERE_MAC,
                        "nud",
                        "permanent",
                        "dev",
                        &self.inner_dev(from),
                    ])?;
                    self.blocked.push((from, to));
                }
            }
        }
        Ok(())
    }

    /// Undoes every partition.
    ///
    /// # Errors
    /// A failing `ip` command.
    pub fn heal(&mut self) -> Result<(), String> {
        for (from, to) in std::mem::take(&mut self.blocked) {
            let peer = self.node_ip(to).to_string();
            self.ip(&[
                "-n",
                &self.namespaces[from],
                "neigh",
                "del",
                &peer,
                "dev",
                &self.inner_dev(from),
            ])?;
        }
        Ok(())
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the peer on the bridge.
        for ns in std::mem::take(&mut self.namespaces) {
            let _ = self.ip(&["netns", "del", &ns]);
        }
        if let Some(bridge) = self.bridge.take() {
            let _ = self.ip(&["link", "del", &bridge]);
        }
    }
}
