//! The outward side of the peers: which peers are linked, which rooms each peer has
//! subscribers for, and sending to them. It is the [`PeerFanout`] of the broadcaster, the
//! [`PresenceReplication`] of the tracker and the [`RoomEvents`] sink of the hub, so every
//! method only queues on the bus and never waits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use bytes::Bytes;
use realtime_proto::bus::{Frame, NodeRun};

use super::wire;
use crate::broadcast::PeerFanout;
use crate::bus::Bus;
use crate::hub::{FanoutMessage, RoomEvents, RoomKey};
use crate::presence::{PresenceDelta, PresenceReplication};

/// Linked peers and this node's rooms, changed together under one lock so that a peer's
/// interest snapshot and the room events around it reach it in a consistent order.
#[derive(Default)]
struct Out {
    /// Linked peers: name → incarnation.
    linked: BTreeMap<Arc<str>, u64>,
    /// Rooms with local subscribers.
    rooms: HashSet<RoomKey>,
}

/// What every peer wants: rooms → interested peers, and the reverse.
#[derive(Default)]
struct Interest {
    by_room: HashMap<RoomKey, Vec<Arc<str>>>,
    by_peer: HashMap<Arc<str>, HashSet<RoomKey>>,
    /// Rooms any peer wants, per tenant (Broadcast from the database runs for these).
    by_tenant: HashMap<crate::types::TenantId, usize>,
}

impl Interest {
    fn add(&mut self, peer: &Arc<str>, room: RoomKey) {
        if self
            .by_peer
            .entry(peer.clone())
            .or_default()
            .insert(room.clone())
        {
            let peers = self.by_room.entry(room.clone()).or_default();
            if peers.is_empty() {
                *self.by_tenant.entry(room.tenant).or_default() += 1;
            }
            peers.push(peer.clone());
        }
    }

    fn room_gone(&mut self, room: &RoomKey) {
        self.by_room.remove(room);
        if let Some(count) = self.by_tenant.get_mut(&room.tenant) {
            *count -= 1;
            if *count == 0 {
                self.by_tenant.remove(&room.tenant);
            }
        }
    }

    fn remove(&mut self, peer: &Arc<str>, room: &RoomKey) {
        if let Some(rooms) = self.by_peer.get_mut(peer)
            && rooms.remove(room)
            && let Some(peers) = self.by_room.get_mut(room)
        {
            peers.retain(|p| p != peer);
            if peers.is_empty() {
                self.room_gone(room);
            }
        }
    }

    fn forget(&mut self, peer: &Arc<str>) {
        if let Some(rooms) = self.by_peer.remove(peer) {
            for room in rooms {
                if let Some(peers) = self.by_room.get_mut(&room) {
                    peers.retain(|p| p != peer);
                    if peers.is_empty() {
                        self.room_gone(&room);
                    }
                }
            }
        }
    }
}

/// Counters of what went to and came from peers.
#[derive(Debug, Default)]
pub(crate) struct LinkStats {
    /// Broadcast frames queued for peers (one per interested peer).
    pub(crate) broadcasts_out: AtomicU64,
    /// Broadcasts from peers delivered locally.
    pub(crate) broadcasts_in: AtomicU64,
    /// Presence deltas queued for peers.
    pub(crate) presence_out: AtomicU64,
    /// Frames the bus did not take (peer not linked any more, or its queue full).
    pub(crate) not_queued: AtomicU64,
    /// Frames from peers refused by validation.
    pub(crate) invalid_in: AtomicU64,
}

/// The outward side of this node's peers. Shared behind an `Arc`.
pub(crate) struct PeerLinks {
    bus: OnceLock<Bus>,
    out: Mutex<Out>,
    interest: RwLock<Interest>,
    pub(crate) stats: LinkStats,
}

impl std::fmt::Debug for PeerLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLinks").finish_non_exhaustive()
    }
}

impl PeerLinks {
    /// No bus yet: nothing is linked and every send is a no-op until [`PeerLinks::attach`].
    pub(crate) fn new() -> Arc<PeerLinks> {
        Arc::new(PeerLinks {
            bus: OnceLock::new(),
            out: Mutex::new(Out::default()),
            interest: RwLock::new(Interest::default()),
            stats: LinkStats::default(),
        })
    }

    /// Gives the links their bus, once it runs.
    pub(crate) fn attach(&self, bus: Bus) {
        let _ = self.bus.set(bus);
    }

    /// The bus, once attached.
    pub(crate) fn bus(&self) -> Option<&Bus> {
        self.bus.get()
    }

    fn out(&self) -> MutexGuard<'_, Out> {
        self.out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Encodes a frame of this node's own making (only a frame over the size limit fails).
    fn encode(frame: &Frame) -> Option<Bytes> {
        match Bus::encode(frame) {
            Ok(bytes) => Some(bytes),
            Err(err) => {
                tracing::error!(error = %err, "a frame for peers could not be encoded; dropped");
                None
            }
        }
    }

    fn send(&self, peer: &str, frame: Bytes) {
        let queued = self.bus.get().is_some_and(|bus| bus.send(peer, frame));
        if !queued {
            self.stats.not_queued.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues `frame` for every linked peer.
    pub(crate) fn send_all(&self, frame: &Frame) {
        let out = self.out();
        self.send_all_locked(&out, frame);
    }

    fn send_all_locked(&self, out: &Out, frame: &Frame) {
        if out.linked.is_empty() {
            return;
        }
        let Some(bytes) = Self::encode(frame) else {
            return;
        };
        for peer in out.linked.keys() {
            self.send(peer, bytes.clone());
        }
    }

    /// Queues `frame` for one peer.
    pub(crate) fn send_to(&self, peer: &str, frame: &Frame) {
        if let Some(bytes) = Self::encode(frame) {
            self.send(peer, bytes);
        }
    }

    /// Linked peers now (name, incarnation).
    pub(crate) fn linked(&self) -> Vec<NodeRun> {
        self.out()
            .linked
            .iter()
            .map(|(name, incarnation)| NodeRun {
                name: name.to_string(),
                incarnation: *incarnation,
            })
            .collect()
    }

    /// Whether a peer of that name is linked.
    #[cfg(test)]
    pub(crate) fn is_linked(&self, peer: &str) -> bool {
        self.out().linked.contains_key(peer)
    }

    /// A peer's link is up: it gets this node's whole interest before any later room event.
    pub(crate) fn peer_up(&self, peer: &NodeRun) {
        let name: Arc<str> = peer.name.as_str().into();
        // A new run starts with no interest; it announces its own.
        self.write_interest().forget(&name);
        let mut out = self.out();
        out.linked.insert(name, peer.incarnation);
        let frame = Frame::Interest {
            reset: true,
            added: out.rooms.iter().map(wire::room_to_wire).collect(),
            removed: Vec::new(),
        };
        if let Some(bytes) = Self::encode(&frame) {
            self.send(&peer.name, bytes);
        }
    }

    /// A peer's link ended (only that run's: a newer run's link stays).
    pub(crate) fn peer_down(&self, peer: &NodeRun) {
        let mut out = self.out();
        if out.linked.get(peer.name.as_str()) != Some(&peer.incarnation) {
            return;
        }
        out.linked.remove(peer.name.as_str());
        drop(out);
        self.write_interest().forget(&peer.name.as_str().into());
    }

    fn write_interest(&self) -> std::sync::RwLockWriteGuard<'_, Interest> {
        self.interest
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies a peer's interest frame.
    pub(crate) fn apply_interest(
        &self,
        peer: &str,
        reset: bool,
        added: Vec<RoomKey>,
        removed: Vec<RoomKey>,
    ) {
        let peer: Arc<str> = peer.into();
        let mut interest = self.write_interest();
        if reset {
            interest.forget(&peer);
        }
        for room in added {
            interest.add(&peer, room);
        }
        for room in &removed {
            interest.remove(&peer, room);
        }
    }

    /// Peers interested in `room` now.
    #[cfg(test)]
    pub(crate) fn interested(&self, room: &RoomKey) -> Vec<Arc<str>> {
        self.interest
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_room
            .get(room)
            .cloned()
            .unwrap_or_default()
    }
}

impl PeerFanout for PeerLinks {
    fn forward(&self, room: &RoomKey, message: &FanoutMessage) {
        let interest = self
            .interest
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(peers) = interest.by_room.get(room) else {
            return;
        };
        let frame = Frame::Broadcast {
            room: wire::room_to_wire(room),
            message: wire::message_to_wire(message),
        };
        let Some(bytes) = Self::encode(&frame) else {
            return;
        };
        for peer in peers {
            self.stats.broadcasts_out.fetch_add(1, Ordering::Relaxed);
            self.send(peer, bytes.clone());
        }
    }
}

impl crate::db_broadcast::TenantInterest for PeerLinks {
    fn tenants(&self) -> Vec<crate::types::TenantId> {
        self.interest
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_tenant
            .keys()
            .cloned()
            .collect()
    }
}

impl PresenceReplication for PeerLinks {
    fn publish(&self, delta: &PresenceDelta) {
        let out = self.out();
        if out.linked.is_empty() {
            return;
        }
        match crate::presence::encode_delta(delta) {
            Ok(bytes) => {
                self.stats.presence_out.fetch_add(1, Ordering::Relaxed);
                self.send_all_locked(&out, &Frame::Presence(bytes));
            }
            Err(err) => tracing::error!(error = %err, "cannot encode a presence delta"),
        }
    }
}

impl RoomEvents for PeerLinks {
    fn room_created(&self, room: &RoomKey) {
        let mut out = self.out();
        out.rooms.insert(room.clone());
        self.send_all_locked(
            &out,
            &Frame::Interest {
                reset: false,
                added: vec![wire::room_to_wire(room)],
                removed: Vec::new(),
            },
        );
    }

    fn room_emptied(&self, room: &RoomKey) {
        let mut out = self.out();
        out.rooms.remove(room);
        self.send_all_locked(
            &out,
            &Frame::Interest {
                reset: false,
                added: Vec::new(),
                removed: vec![wire::room_to_wire(room)],
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TenantId;

    fn room(topic: &str) -> RoomKey {
        RoomKey {
            tenant: TenantId::new("t"),
            private: false,
            sub_topic: topic.into(),
        }
    }

    #[test]
    fn interest_tracks_rooms_per_peer_and_resets() {
        let links = PeerLinks::new();
        links.apply_interest("b", false, vec![room("1"), room("2")], vec![]);
        links.apply_interest("c", false, vec![room("1")], vec![]);
        let mut one = links.interested(&room("1"));
        one.sort();
        assert_eq!(one, vec![Arc::from("b"), Arc::from("c")]);
        links.apply_interest("b", false, vec![], vec![room("1")]);
        assert_eq!(links.interested(&room("1")), vec![Arc::from("c")]);
        // A reset replaces everything the peer wanted.
        links.apply_interest("b", true, vec![room("3")], vec![]);
        assert!(links.interested(&room("2")).is_empty());
        assert_eq!(links.interested(&room("3")), vec![Arc::from("b")]);
        // Adding twice counts once.
        links.apply_interest("b", false, vec![room("3")], vec![]);
        assert_eq!(links.interested(&room("3")).len(), 1);
        use crate::db_broadcast::TenantInterest;
        assert_eq!(links.tenants(), vec![TenantId::new("t")]);
        links.apply_interest("b", false, vec![], vec![room("3")]);
        assert_eq!(links.tenants().len(), 1, "c still wants room 1");
        links.apply_interest("c", true, vec![], vec![]);
        assert!(links.tenants().is_empty(), "no room left: no tenant");
    }

    #[test]
    fn a_peer_going_down_drops_its_interest_but_not_a_newer_runs_link() {
        let links = PeerLinks::new();
        let old = NodeRun {
            name: "b".into(),
            incarnation: 1,
        };
        let new = NodeRun {
            name: "b".into(),
            incarnation: 2,
        };
        links.peer_up(&old);
        links.apply_interest("b", false, vec![room("1")], vec![]);
        links.peer_up(&new);
        assert!(
            links.interested(&room("1")).is_empty(),
            "a new run starts without interest"
        );
        links.apply_interest("b", false, vec![room("1")], vec![]);
        links.peer_down(&old);
        assert!(links.is_linked("b"), "the old run's end keeps the new link");
        assert_eq!(links.interested(&room("1")).len(), 1);
        links.peer_down(&new);
        assert!(!links.is_linked("b"));
        assert!(links.interested(&room("1")).is_empty());
    }
}
