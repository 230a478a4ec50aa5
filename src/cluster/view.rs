//! The pure core of membership: from the failure detector's live set and each node's gossip
//! keys to the validated view and its `Joined`/`Left` events. No sockets, no tokio: the shell in
//! `mod.rs` feeds it every change of chitchat's live set.
//!
//! Every gossip value is untrusted input. A node whose keys are missing (a partial delta not yet
//! complete) is skipped quietly; one whose values are malformed is skipped with one warning per
//! incarnation. Of several incarnations of one name only the highest counts: a restarted node
//! replaces its previous run at once, without waiting for the failure detector.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use crate::types::{NodeId, NodeIncarnation};

use super::{KEY_BUS, KEY_HTTP, KEY_LEAVING, KEY_REGION, KEY_VERSION, LEAVING_VALUE};

/// Longest accepted node name, in bytes.
pub(super) const MAX_NODE_NAME_BYTES: usize = 255;
/// Longest accepted region or version value, in bytes.
pub(super) const MAX_LABEL_BYTES: usize = 64;
/// Longest accepted socket address text (`[v6 with zone]:port` fits).
const MAX_ADDR_BYTES: usize = 64;

/// A live node of the cluster, as its gossip keys describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node and its incarnation (chitchat's generation).
    pub node: NodeIncarnation,
    /// Address of its QUIC bus endpoint.
    pub bus: SocketAddr,
    /// Address of its HTTP/WebSocket listener.
    pub http: SocketAddr,
    /// Its `REGION`, if it has one.
    pub region: Option<String>,
    /// Its software version.
    pub version: String,
}

/// The live members at one moment, this node included, sorted by node name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipView {
    members: Vec<Member>,
}

impl MembershipView {
    /// Returns the members, sorted by node name (one incarnation per name).
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Returns the member of that name, if live.
    pub fn get(&self, node: &NodeId) -> Option<&Member> {
        self.members
            .binary_search_by(|m| m.node.node.cmp(node))
            .ok()
            .map(|i| &self.members[i])
    }

    /// Returns true when exactly that incarnation is a live member.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "used by tests and the change forwarding to come")
    )]
    pub fn contains(&self, node: &NodeIncarnation) -> bool {
        self.get(&node.node).is_some_and(|m| m.node == *node)
    }

    /// Returns the number of live members (at least one: this node).
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "used by tests and the change forwarding to come")
    )]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Returns true when the view holds nobody (never the case for a running membership).
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "used by tests and the change forwarding to come")
    )]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// A change of the live set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A node (or a new incarnation of a known name) became a live member.
    Joined(Member),
    /// A member is gone: `graceful` when it announced its leave, false when the failure detector
    /// declared it dead, its keys became invalid, or a newer incarnation of it replaced it.
    Left {
        /// The incarnation that left.
        node: NodeIncarnation,
        /// Whether it announced the leave.
        graceful: bool,
    },
}

/// One live node as chitchat reports it: its id and the raw values of our keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Candidate {
    pub(super) name: String,
    pub(super) generation: u64,
    pub(super) bus: Option<String>,
    pub(super) http: Option<String>,
    pub(super) region: Option<String>,
    pub(super) version: Option<String>,
    pub(super) leaving: Option<String>,
}

impl Candidate {
    /// Reads our keys through `get` (chitchat's `NodeState::get`).
    pub(super) fn read<'a>(
        name: &str,
        generation: u64,
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Candidate {
        Candidate {
            name: name.to_string(),
            generation,
            bus: get(KEY_BUS).map(str::to_string),
            http: get(KEY_HTTP).map(str::to_string),
            region: get(KEY_REGION).map(str::to_string),
            version: get(KEY_VERSION).map(str::to_string),
            leaving: get(KEY_LEAVING).map(str::to_string),
        }
    }
}

/// Why a candidate is not a member.
#[derive(Debug, PartialEq, Eq)]
enum Rejection {
    /// A key is absent: the node's state may still be arriving.
    Incomplete(&'static str),
    /// A value is malformed.
    Invalid { key: &'static str, problem: String },
}

/// Tracks the view across changes of the live set and names what changed.
pub(super) struct Tracker {
    me: Member,
    /// Live peers in the view, by name (this node is not in the map).
    peers: BTreeMap<NodeId, Member>,
    /// The highest incarnation seen live per name; lower ones never enter again.
    newest: HashMap<String, u64>,
    /// Incarnations already warned about (one warning each).
    warned: HashSet<(String, u64)>,
}

impl Tracker {
    pub(super) fn new(me: Member) -> Tracker {
        Tracker {
            me,
            peers: BTreeMap::new(),
            newest: HashMap::new(),
            warned: HashSet::new(),
        }
    }

    /// Returns the current view (this node plus the live peers).
    pub(super) fn view(&self) -> MembershipView {
        let mut members: Vec<Member> = self.peers.values().cloned().collect();
        members.push(self.me.clone());
        members.sort_by(|a, b| a.node.node.cmp(&b.node.node));
        MembershipView { members }
    }

    /// Takes the new live set and returns what changed: every `Left` first, then every `Joined`,
    /// so a restarted node reads as its old incarnation leaving, then its new one joining.
    pub(super) fn apply(&mut self, live: &[Candidate]) -> Vec<MembershipEvent> {
        let me_name = self.me.node.node.as_str().to_string();
        // The chosen candidate per name: the highest generation, leaving or not.
        let mut chosen: BTreeMap<&str, (&Candidate, Option<Member>)> = BTreeMap::new();
        let mut leaving: HashSet<(&str, u64)> = HashSet::new();
        for candidate in live {
            if candidate.name == me_name {
                // A lower generation is this node's previous run, still in peers' states.
                if candidate.generation > self.me.node.incarnation {
                    self.warn_once(candidate, "another node gossips under this node's name");
                }
                continue;
            }
            if let Err(problem) = validate_node_name(&candidate.name) {
                self.warn_once(candidate, &format!("bad node name: {problem}"));
                continue;
            }
            match candidate.leaving.as_deref() {
                None => {}
                Some(LEAVING_VALUE) => {
                    leaving.insert((candidate.name.as_str(), candidate.generation));
                }
                Some(_) => self.warn_once(candidate, "bad value of the leaving key (ignored)"),
            }
            let member = match parse_member(candidate) {
                Ok(member) => Some(member),
                Err(Rejection::Incomplete(key)) => {
                    tracing::debug!(node = %candidate.name, generation = candidate.generation, key, "gossip keys incomplete");
                    None
                }
                Err(Rejection::Invalid { key, problem }) => {
                    self.warn_once(candidate, &format!("bad gossip value of {key}: {problem}"));
                    None
                }
            };
            let newest = self.newest.entry(candidate.name.clone()).or_insert(0);
            if candidate.generation < *newest {
                continue;
            }
            *newest = candidate.generation;
            let newer = chosen
                .get(candidate.name.as_str())
                .is_none_or(|(other, _)| other.generation < candidate.generation);
            if newer {
                chosen.insert(candidate.name.as_str(), (candidate, member));
            }
        }

        let mut next: BTreeMap<NodeId, Member> = BTreeMap::new();
        for (candidate, member) in chosen.values() {
            if leaving.contains(&(candidate.name.as_str(), candidate.generation)) {
                continue;
            }
            if let Some(member) = member {
                next.insert(member.node.node.clone(), member.clone());
            }
        }

        let mut events = Vec::new();
        for (name, old) in &self.peers {
            if next.get(name).is_some_and(|m| m.node == old.node) {
                continue;
            }
            let graceful = leaving.contains(&(name.as_str(), old.node.incarnation));
            events.push(MembershipEvent::Left {
                node: old.node.clone(),
                graceful,
            });
        }
        for (name, new) in &next {
            if self.peers.get(name).is_some_and(|m| m.node == new.node) {
                continue;
            }
            events.push(MembershipEvent::Joined(new.clone()));
        }
        self.peers = next;

        // Forget names that are no longer live at all, so the maps stay as large as the cluster.
        let live_names: HashSet<&str> = live.iter().map(|c| c.name.as_str()).collect();
        self.newest
            .retain(|name, _| live_names.contains(name.as_str()));
        self.warned
            .retain(|(name, _)| live_names.contains(name.as_str()));
        events
    }

    fn warn_once(&mut self, candidate: &Candidate, problem: &str) {
        if self
            .warned
            .insert((candidate.name.clone(), candidate.generation))
        {
            tracing::warn!(
                node = %candidate.name.escape_debug(),
                generation = candidate.generation,
                problem,
                "skipping a gossip member"
            );
        }
    }
}

fn parse_member(candidate: &Candidate) -> Result<Member, Rejection> {
    let bus = required(KEY_BUS, candidate.bus.as_deref())?;
    let http = required(KEY_HTTP, candidate.http.as_deref())?;
    let version = required(KEY_VERSION, candidate.version.as_deref())?;
    let invalid = |key| move |problem| Rejection::Invalid { key, problem };
    Ok(Member {
        node: NodeIncarnation {
            node: NodeId::new(candidate.name.as_str()),
            incarnation: candidate.generation,
        },
        bus: parse_peer_addr(bus).map_err(invalid(KEY_BUS))?,
        http: parse_peer_addr(http).map_err(invalid(KEY_HTTP))?,
        region: parse_region(candidate.region.as_deref()).map_err(invalid(KEY_REGION))?,
        version: validate_version(version)
            .map_err(invalid(KEY_VERSION))?
            .to_string(),
    })
}

fn required<'a>(key: &'static str, value: Option<&'a str>) -> Result<&'a str, Rejection> {
    value.ok_or(Rejection::Incomplete(key))
}

/// Checks a node name: 1 to 255 bytes, no control characters.
pub(super) fn validate_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NODE_NAME_BYTES {
        return Err(format!("must be 1 to {MAX_NODE_NAME_BYTES} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(())
}

/// Parses an address a peer can be reached at: an IP and a non-zero port, not the unspecified,
/// broadcast or a multicast address.
pub(super) fn parse_peer_addr(raw: &str) -> Result<SocketAddr, String> {
    if raw.len() > MAX_ADDR_BYTES {
        return Err("too long".into());
    }
    let addr: SocketAddr = raw.parse().map_err(|_| "not ip:port".to_string())?;
    check_peer_addr(addr)?;
    Ok(addr)
}

/// Checks that `addr` is one a peer can connect to.
pub(super) fn check_peer_addr(addr: SocketAddr) -> Result<(), String> {
    let ip = addr.ip();
    if addr.port() == 0 {
        return Err("port 0".into());
    }
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(format!("{ip} is not a unicast address"));
    }
    Ok(())
}

/// Parses a region: absent or empty is none; else 1 to 64 of `[A-Za-z0-9._-]`.
pub(super) fn parse_region(raw: Option<&str>) -> Result<Option<String>, String> {
    match raw {
        None | Some("") => Ok(None),
        Some(region) => {
            validate_label(region, |c| c.is_ascii_alphanumeric() || "._-".contains(c))?;
            Ok(Some(region.to_string()))
        }
    }
}

/// Checks a version: 1 to 64 printable ASCII characters without spaces.
pub(super) fn validate_version(version: &str) -> Result<&str, String> {
    validate_label(version, |c| c.is_ascii_graphic())?;
    Ok(version)
}

fn validate_label(value: &str, allowed: impl Fn(char) -> bool) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_LABEL_BYTES {
        return Err(format!("must be 1 to {MAX_LABEL_BYTES} bytes"));
    }
    if !value.chars().all(allowed) {
        return Err("has characters outside the allowed set".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, generation: u64, port: u16) -> Member {
        Member {
            node: NodeIncarnation {
                node: NodeId::new(name),
                incarnation: generation,
            },
            bus: SocketAddr::from(([10, 0, 0, 1], port)),
            http: SocketAddr::from(([10, 0, 0, 1], port + 1)),
            region: Some("eu-west-1".into()),
            version: "0.1.0".into(),
        }
    }

    fn candidate(m: &Member) -> Candidate {
        Candidate {
            name: m.node.node.as_str().to_string(),
            generation: m.node.incarnation,
            bus: Some(m.bus.to_string()),
            http: Some(m.http.to_string()),
            region: m.region.clone(),
            version: Some(m.version.clone()),
            leaving: None,
        }
    }

    fn leaving(m: &Member) -> Candidate {
        Candidate {
            leaving: Some("1".into()),
            ..candidate(m)
        }
    }

    fn names(view: &MembershipView) -> Vec<String> {
        view.members().iter().map(|m| m.node.to_string()).collect()
    }

    #[test]
    fn peers_join_and_this_node_is_always_in_the_view() {
        let me = member("a", 1, 100);
        let mut tracker = Tracker::new(me.clone());
        assert_eq!(names(&tracker.view()), ["a@1"]);
        let b = member("b", 5, 200);
        let c = member("c", 7, 300);
        let events = tracker.apply(&[candidate(&me), candidate(&c), candidate(&b)]);
        assert_eq!(
            events,
            [
                MembershipEvent::Joined(b.clone()),
                MembershipEvent::Joined(c.clone())
            ]
        );
        let view = tracker.view();
        assert_eq!(names(&view), ["a@1", "b@5", "c@7"]);
        assert_eq!(view.get(&NodeId::new("b")), Some(&b));
        assert!(view.contains(&c.node));
        // The same live set again changes nothing.
        assert!(tracker.apply(&[candidate(&b), candidate(&c)]).is_empty());
        // Self need not be reported by chitchat to be in the view.
        assert_eq!(tracker.view().len(), 3);
    }

    #[test]
    fn a_dead_peer_leaves_ungracefully_and_a_leaving_one_gracefully() {
        let mut tracker = Tracker::new(member("a", 1, 100));
        let b = member("b", 5, 200);
        let c = member("c", 7, 300);
        tracker.apply(&[candidate(&b), candidate(&c)]);
        // c announces its leave: it leaves at once, gracefully, while still live for chitchat.
        let events = tracker.apply(&[candidate(&b), leaving(&c)]);
        assert_eq!(
            events,
            [MembershipEvent::Left {
                node: c.node.clone(),
                graceful: true
            }]
        );
        assert_eq!(names(&tracker.view()), ["a@1", "b@5"]);
        // When chitchat then drops c, nothing more is reported.
        assert!(tracker.apply(&[candidate(&b)]).is_empty());
        // b disappears without a word: dead.
        assert_eq!(
            tracker.apply(&[]),
            [MembershipEvent::Left {
                node: b.node.clone(),
                graceful: false
            }]
        );
    }

    #[test]
    fn a_restarted_node_replaces_its_previous_incarnation_at_once() {
        let mut tracker = Tracker::new(member("a", 1, 100));
        let old = member("b", 5, 200);
        let new = member("b", 9, 210);
        tracker.apply(&[candidate(&old)]);
        // Both runs are live for chitchat (the old one is not detected dead yet).
        let events = tracker.apply(&[candidate(&old), candidate(&new)]);
        assert_eq!(
            events,
            [
                MembershipEvent::Left {
                    node: old.node.clone(),
                    graceful: false
                },
                MembershipEvent::Joined(new.clone())
            ]
        );
        assert_eq!(names(&tracker.view()), ["a@1", "b@9"]);
        // The old incarnation (a late heartbeat) never comes back, whatever the order.
        assert!(
            tracker
                .apply(&[candidate(&new), candidate(&old)])
                .is_empty()
        );
        assert_eq!(tracker.view().get(&NodeId::new("b")), Some(&new));
        // Once the old run is detected dead, nothing more is reported.
        assert!(tracker.apply(&[candidate(&new)]).is_empty());
    }

    #[test]
    fn an_older_incarnation_seen_after_a_newer_one_is_ignored() {
        let mut tracker = Tracker::new(member("a", 1, 100));
        let old = member("b", 5, 200);
        let new = member("b", 9, 210);
        tracker.apply(&[candidate(&new)]);
        assert!(
            tracker
                .apply(&[candidate(&new), candidate(&old)])
                .is_empty()
        );
        assert_eq!(names(&tracker.view()), ["a@1", "b@9"]);
    }

    #[test]
    fn bad_or_incomplete_gossip_values_are_skipped() {
        let me = member("a", 1, 100);
        let mut tracker = Tracker::new(me.clone());
        let good = member("g", 3, 400);
        let base = candidate(&member("x", 2, 500));
        let bad = [
            Candidate {
                bus: Some("not an address".into()),
                ..base.clone()
            },
            Candidate {
                name: "y".into(),
                http: Some("0.0.0.0:4000".into()),
                ..base.clone()
            },
            Candidate {
                name: "z".into(),
                bus: Some("10.0.0.1:0".into()),
                ..base.clone()
            },
            Candidate {
                name: "r".into(),
                region: Some("eu west\n".into()),
                ..base.clone()
            },
            Candidate {
                name: "v".into(),
                version: Some("x".repeat(65)),
                ..base.clone()
            },
            Candidate {
                name: "w".into(),
                version: None,
                ..base.clone()
            },
            Candidate {
                name: "bad\u{7}name".into(),
                ..base.clone()
            },
            Candidate {
                name: String::new(),
                ..base.clone()
            },
            Candidate {
                name: "m".into(),
                bus: Some("224.0.0.1:7947".into()),
                ..base.clone()
            },
            // Another process using this node's name is not a member either.
            Candidate {
                name: "a".into(),
                generation: 99,
                ..base.clone()
            },
        ];
        let mut live = bad.to_vec();
        live.push(candidate(&good));
        let events = tracker.apply(&live);
        assert_eq!(events, [MembershipEvent::Joined(good.clone())]);
        assert_eq!(names(&tracker.view()), ["a@1", "g@3"]);
        // Each bad incarnation is warned about once, and forgotten when it is gone.
        assert!(tracker.warned.contains(&("x".to_string(), 2)));
        assert!(tracker.warned.contains(&("a".to_string(), 99)));
        // A bad value of the leaving key is ignored: the node stays a member.
        let odd_leaving = Candidate {
            leaving: Some("soon".into()),
            ..candidate(&good)
        };
        assert!(tracker.apply(&[odd_leaving]).is_empty());
        assert!(!tracker.warned.contains(&("x".to_string(), 2)));
        assert!(tracker.warned.contains(&("g".to_string(), 3)));
        tracker.apply(&[candidate(&good)]);
        assert!(tracker.warned.contains(&("g".to_string(), 3)));
        assert_eq!(tracker.newest.len(), 1);
    }

    #[test]
    fn a_member_whose_values_turn_bad_leaves() {
        let mut tracker = Tracker::new(member("a", 1, 100));
        let b = member("b", 5, 200);
        tracker.apply(&[candidate(&b)]);
        let broken = Candidate {
            http: Some("nonsense".into()),
            ..candidate(&b)
        };
        assert_eq!(
            tracker.apply(&[broken]),
            [MembershipEvent::Left {
                node: b.node.clone(),
                graceful: false
            }]
        );
    }

    #[test]
    fn value_checks() {
        assert!(parse_peer_addr("127.0.0.1:7947").is_ok());
        assert!(parse_peer_addr("[::1]:7947").is_ok());
        assert!(parse_peer_addr("[::]:7947").is_err());
        assert!(parse_peer_addr("255.255.255.255:1").is_err());
        assert!(parse_peer_addr("host:7947").is_err());
        assert!(parse_peer_addr(&format!("[::1]:{}", "1".repeat(70))).is_err());
        assert_eq!(parse_region(None), Ok(None));
        assert_eq!(parse_region(Some("")), Ok(None));
        assert_eq!(
            parse_region(Some("us-east-1")),
            Ok(Some("us-east-1".into()))
        );
        assert!(parse_region(Some("us east")).is_err());
        assert!(validate_version("0.1.0-rc.1+abc").is_ok());
        assert!(validate_version("").is_err());
        assert!(validate_version("1 0").is_err());
        assert!(validate_node_name("realtime@4000").is_ok());
        assert!(validate_node_name(&"n".repeat(256)).is_err());
    }
}
