//! The presence CRDT: pure state, merge and diff (no I/O, no tokio). The algorithm is described
//! in `docs/ARCHITECTURE.md`, section "Presence CRDT".
//!
//! Every node owns one **replica**, named by its node id and an **incarnation** that grows each
//! time the node starts. A replica is the only writer of the entries of its own sockets; each of
//! its operations (track, untrack, update) takes the next value of the replica's counter, the
//! operation's **dot**. An entry is keyed by its dot (the per-track ref, rendered as `phx_ref`)
//! and carries the room, the presence key and the metas.
//!
//! A [`Delta`] is a join-semilattice value: for every replica, a causal context (the dots it has
//! seen) and the live entries among them, plus a **floor** per node (incarnations below it are
//! dead). [`Delta::join`] is commutative, associative and idempotent; operations produce small
//! deltas of the same type, so peers converge whatever the order, duplication or loss of the
//! deltas, once anti-entropy ([`Digest`], [`State::delta_for`]) has repaired the losses.
//! [`State`] is a [`Delta`] plus an index by room, and reports each merge as [`Changes`] (joins
//! and leaves), which the tracker turns into `presence_diff`s.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::Arc;

use base64::Engine;

use crate::types::NodeId;

mod wire;

pub use wire::{InvalidDelta, MAX_NAME_BYTES, WireRoom, check_name as wire_check_name};

/// One node's replica: the node and the incarnation (start) it belongs to; entries of older
/// incarnations are dead. The same type membership uses to name a node's run.
pub type ReplicaId = crate::types::NodeIncarnation;

/// One operation of a replica: the identity of the entry it created (its per-track ref).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dot {
    /// The writing replica.
    pub replica: ReplicaId,
    /// The replica's counter at this operation (from 1).
    pub counter: u64,
}

impl Dot {
    /// Returns the `phx_ref` of the entry created by this dot: base64 of a hash of the replica
    /// and the counter. Every node renders the same ref for the same entry.
    pub fn phx_ref(&self) -> String {
        ref_text(&self.replica, self.counter)
    }
}

fn ref_text(replica: &ReplicaId, counter: u64) -> String {
    // FNV-1a over the node name and incarnation: stable across builds and platforms.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in replica
        .node
        .as_str()
        .bytes()
        .chain(replica.incarnation.to_be_bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hash.to_be_bytes());
    bytes[8..].copy_from_slice(&counter.to_be_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One tracked presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<R> {
    /// The room it is tracked in.
    pub room: R,
    /// The presence key.
    pub key: Arc<str>,
    /// The user's meta: JSON object text without `phx_ref`/`phx_ref_prev`.
    pub meta: Arc<str>,
    /// Counter of the entry of the same replica this one replaced (an update), if any.
    pub prev: Option<u64>,
}

/// The dots of one replica seen so far: every counter up to `max`, plus the out-of-order ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Context {
    max: u64,
    /// Counters above `max + 1` (never `max + 1` itself after [`Context::compact`]).
    cloud: BTreeSet<u64>,
}

impl Context {
    fn of(counters: &[u64]) -> Context {
        let mut c = Context {
            max: 0,
            cloud: counters.iter().copied().collect(),
        };
        c.compact();
        c
    }

    fn contains(&self, counter: u64) -> bool {
        counter <= self.max || self.cloud.contains(&counter)
    }

    fn union(&mut self, other: &Context) {
        self.max = self.max.max(other.max);
        self.cloud.extend(other.cloud.iter().copied());
        self.compact();
    }

    fn compact(&mut self) {
        self.cloud = self.cloud.split_off(&(self.max + 1));
        while self.cloud.first() == Some(&(self.max + 1)) {
            self.cloud.pop_first();
            self.max += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.max == 0 && self.cloud.is_empty()
    }
}

/// What one delta says about one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Slice<R> {
    /// Every dot seen: created entries and removed ones.
    context: Context,
    /// The operations merged, each named by the dot it took. A removal puts an older dot in
    /// `context` without saying anything of the operation that created it (an update's
    /// removal of an even older entry, say), so anti-entropy compares these, not `context`.
    ops: Context,
    /// Live entries, by counter; every counter is in `context`.
    entries: BTreeMap<u64, Entry<R>>,
}

impl<R> Default for Slice<R> {
    fn default() -> Self {
        Slice {
            context: Context::default(),
            ops: Context::default(),
            entries: BTreeMap::new(),
        }
    }
}

/// A lattice value: a whole replica state, or the small piece of one that an operation, a
/// node-down or an anti-entropy round sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta<R> {
    /// Per node, the lowest live incarnation.
    floors: BTreeMap<NodeId, u64>,
    /// Replicas at or above their node's floor.
    replicas: BTreeMap<ReplicaId, Slice<R>>,
}

impl<R> Default for Delta<R> {
    fn default() -> Self {
        Delta {
            floors: BTreeMap::new(),
            replicas: BTreeMap::new(),
        }
    }
}

/// One change of the visible entries caused by a merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<R> {
    /// An entry became visible.
    Join(Dot, Entry<R>),
    /// An entry went away.
    Leave(Dot, Entry<R>),
}

/// The visible changes of one merge, in the order they happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes<R>(pub Vec<Change<R>>);

impl<R> Default for Changes<R> {
    fn default() -> Self {
        Changes(Vec::new())
    }
}

impl<R> Changes<R> {
    /// Returns true when nothing visible changed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<R: Clone + Eq> Delta<R> {
    /// Returns true when the delta carries nothing.
    pub fn is_empty(&self) -> bool {
        self.floors.is_empty() && self.replicas.is_empty()
    }

    /// Returns the floor of `node` (0 when unknown).
    fn floor(&self, node: &NodeId) -> u64 {
        self.floors.get(node).copied().unwrap_or(0)
    }

    /// Joins `other` into `self` (the lattice least upper bound).
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "cluster step: presence replication over the bus")
    )]
    pub fn join(&mut self, other: &Delta<R>) {
        self.merge(other, &mut |_| {});
    }

    /// The merge shared by [`Delta::join`] and [`State::apply`]; `on_change` sees each entry
    /// that appears or disappears.
    fn merge(&mut self, other: &Delta<R>, on_change: &mut dyn FnMut(Change<R>)) {
        for (node, &floor) in &other.floors {
            self.raise_floor(node, floor, on_change);
        }
        for (replica, theirs) in &other.replicas {
            // Seeing an incarnation means every older one of that node is dead.
            self.raise_floor(&replica.node, replica.incarnation, on_change);
            if replica.incarnation < self.floor(&replica.node) {
                continue;
            }
            let ours = self.replicas.entry(replica.clone()).or_default();
            // Entries we hold whose dot they have seen without keeping it were removed there.
            let mut removed: Vec<u64> = ours
                .entries
                .range(..=theirs.context.max)
                .map(|(&c, _)| c)
                .chain(
                    theirs
                        .context
                        .cloud
                        .iter()
                        .copied()
                        .filter(|c| ours.entries.contains_key(c)),
                )
                .filter(|c| !theirs.entries.contains_key(c))
                .collect();
            removed.sort_unstable();
            removed.dedup();
            for counter in removed {
                if let Some(entry) = ours.entries.remove(&counter) {
                    on_change(Change::Leave(dot(replica, counter), entry));
                }
            }
            // Entries they hold that we have never seen are new; seen-but-absent ones were
            // removed here and stay removed.
            for (&counter, entry) in &theirs.entries {
                if !ours.context.contains(counter) {
                    ours.entries.insert(counter, entry.clone());
                    on_change(Change::Join(dot(replica, counter), entry.clone()));
                }
            }
            ours.context.union(&theirs.context);
            ours.ops.union(&theirs.ops);
            debug_assert!(ours.entries.keys().all(|&c| ours.context.contains(c)));
        }
    }

    fn raise_floor(&mut self, node: &NodeId, floor: u64, on_change: &mut dyn FnMut(Change<R>)) {
        if self.floors.get(node).is_some_and(|&f| f >= floor) {
            return;
        }
        self.floors.insert(node.clone(), floor);
        let dead: Vec<ReplicaId> = self
            .replicas
            .keys()
            .filter(|r| &r.node == node && r.incarnation < floor)
            .cloned()
            .collect();
        for replica in dead {
            if let Some(slice) = self.replicas.remove(&replica) {
                for (counter, entry) in slice.entries {
                    on_change(Change::Leave(dot(&replica, counter), entry));
                }
            }
        }
    }

    /// Returns every visible entry (for tests and diagnostics).
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "cluster step: presence replication over the bus")
    )]
    pub fn entries(&self) -> impl Iterator<Item = (Dot, &Entry<R>)> {
        self.replicas.iter().flat_map(|(replica, slice)| {
            slice
                .entries
                .iter()
                .map(move |(&counter, entry)| (dot(replica, counter), entry))
        })
    }
}

fn dot(replica: &ReplicaId, counter: u64) -> Dot {
    Dot {
        replica: replica.clone(),
        counter,
    }
}

/// What a node knows, in a few numbers: per replica the counter up to which it has seen every
/// operation, and per node the floor. Peers exchange digests to find what the other misses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    /// Per node, the lowest live incarnation.
    pub floors: BTreeMap<NodeId, u64>,
    /// Per live replica, the contiguous counter.
    pub clocks: BTreeMap<ReplicaId, u64>,
}

/// A node's presence state: the merged lattice value plus an index by room.
#[derive(Clone, Debug)]
pub struct State<R: Hash + Eq> {
    lattice: Delta<R>,
    /// Room → presence key → dots of the visible entries; derived from `lattice`.
    index: HashMap<R, BTreeMap<Arc<str>, BTreeSet<Dot>>>,
}

impl<R: Clone + Eq + Hash> Default for State<R> {
    fn default() -> Self {
        State {
            lattice: Delta::default(),
            index: HashMap::new(),
        }
    }
}

/// One presence key of a room and its entries, as [`State::room`] returns them.
pub type KeyEntries<'a, R> = (Arc<str>, Vec<(Dot, &'a Entry<R>)>);

/// What a local operation produced: the delta for peers and the visible changes.
#[derive(Clone, Debug)]
pub struct Applied<R> {
    /// The operation's dot (for a track or an update: the new entry's).
    pub dot: Dot,
    /// The delta to send to peers.
    pub delta: Delta<R>,
    /// The visible changes, to fan out locally.
    pub changes: Changes<R>,
}

impl<R: Clone + Eq + Hash> State<R> {
    /// Creates the state of a node whose own replica is `me`.
    pub fn new(me: &ReplicaId) -> State<R> {
        let mut state = State::default();
        state.lattice.floors.insert(me.node.clone(), me.incarnation);
        state
    }

    /// Returns the merged lattice value.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "cluster step: presence replication over the bus")
    )]
    pub fn lattice(&self) -> &Delta<R> {
        &self.lattice
    }

    /// Merges a delta (a peer's operation, an anti-entropy answer, a node-down) and returns the
    /// visible changes.
    pub fn apply(&mut self, delta: &Delta<R>) -> Changes<R> {
        let mut changes = Vec::new();
        self.lattice.merge(delta, &mut |c| changes.push(c));
        for change in &changes {
            match change {
                Change::Join(dot, entry) => {
                    self.index
                        .entry(entry.room.clone())
                        .or_default()
                        .entry(entry.key.clone())
                        .or_default()
                        .insert(dot.clone());
                }
                Change::Leave(dot, entry) => {
                    if let Some(keys) = self.index.get_mut(&entry.room) {
                        if let Some(dots) = keys.get_mut(&entry.key) {
                            dots.remove(dot);
                            if dots.is_empty() {
                                keys.remove(&entry.key);
                            }
                        }
                        if keys.is_empty() {
                            self.index.remove(&entry.room);
                        }
                    }
                }
            }
        }
        Changes(changes)
    }

    fn next_counter(&self, me: &ReplicaId) -> u64 {
        self.lattice.replicas.get(me).map_or(1, |s| {
            // The writer has seen all of its own operations.
            debug_assert!(s.context.cloud.is_empty());
            s.context.max + 1
        })
    }

    /// The delta of one operation of `me`: `counters` are the dots it touches, the highest
    /// being the operation's own.
    fn own_delta(me: &ReplicaId, counters: &[u64], entry: Option<(u64, Entry<R>)>) -> Delta<R> {
        let op = counters.iter().copied().max().unwrap_or(0);
        let mut slice = Slice {
            context: Context::of(counters),
            ops: Context::of(&[op]),
            entries: BTreeMap::new(),
        };
        slice.entries.extend(entry);
        Delta {
            floors: BTreeMap::from([(me.node.clone(), me.incarnation)]),
            replicas: BTreeMap::from([(me.clone(), slice)]),
        }
    }

    /// Tracks a new entry on replica `me` (this node).
    pub fn add(&mut self, me: &ReplicaId, room: R, key: Arc<str>, meta: Arc<str>) -> Applied<R> {
        let counter = self.next_counter(me);
        let entry = Entry {
            room,
            key,
            meta,
            prev: None,
        };
        let delta = Self::own_delta(me, &[counter], Some((counter, entry)));
        let changes = self.apply(&delta);
        Applied {
            dot: dot(me, counter),
            delta,
            changes,
        }
    }

    /// Replaces entry `old` of replica `me` with a new one (Phoenix `update`): the new entry's
    /// `prev` is `old`, and one delta carries the removal and the addition.
    ///
    /// Returns `None` when `old` is not a live entry of `me`.
    pub fn update(
        &mut self,
        me: &ReplicaId,
        old: u64,
        room: R,
        key: Arc<str>,
        meta: Arc<str>,
    ) -> Option<Applied<R>> {
        self.lattice.replicas.get(me)?.entries.get(&old)?;
        let counter = self.next_counter(me);
        let entry = Entry {
            room,
            key,
            meta,
            prev: Some(old),
        };
        let delta = Self::own_delta(me, &[old, counter], Some((counter, entry)));
        let changes = self.apply(&delta);
        Some(Applied {
            dot: dot(me, counter),
            delta,
            changes,
        })
    }

    /// Removes entry `counter` of replica `me`. The removal takes a counter of its own, so a
    /// peer that missed it sees a gap in its digest.
    ///
    /// Returns `None` when `counter` is not a live entry of `me`.
    pub fn remove(&mut self, me: &ReplicaId, counter: u64) -> Option<Applied<R>> {
        self.lattice.replicas.get(me)?.entries.get(&counter)?;
        let own = self.next_counter(me);
        let delta = Self::own_delta(me, &[counter, own], None);
        let changes = self.apply(&delta);
        Some(Applied {
            dot: dot(me, own),
            delta,
            changes,
        })
    }

    /// Removes several entries of replica `me` in one delta (a socket closing).
    pub fn remove_many(
        &mut self,
        me: &ReplicaId,
        counters: &[u64],
    ) -> Option<(Delta<R>, Changes<R>)> {
        let live: Vec<u64> = match self.lattice.replicas.get(me) {
            Some(slice) => counters
                .iter()
                .copied()
                .filter(|c| slice.entries.contains_key(c))
                .collect(),
            None => return None,
        };
        if live.is_empty() {
            return None;
        }
        let mut context = live;
        context.push(self.next_counter(me));
        let delta = Self::own_delta(me, &context, None);
        let changes = self.apply(&delta);
        Some((delta, changes))
    }

    /// Declares `replica` dead (its node left the cluster or restarted) and returns the leaves
    /// of its entries, with the delta that says so to peers.
    pub fn remove_replica(&mut self, replica: &ReplicaId) -> (Delta<R>, Changes<R>) {
        let delta = Delta {
            floors: BTreeMap::from([(replica.node.clone(), replica.incarnation + 1)]),
            replicas: BTreeMap::new(),
        };
        let changes = self.apply(&delta);
        (delta, changes)
    }

    /// Returns the digest of this state.
    pub fn digest(&self) -> Digest {
        Digest {
            floors: self.lattice.floors.clone(),
            clocks: self
                .lattice
                .replicas
                .iter()
                .map(|(r, s)| (r.clone(), s.ops.max))
                .collect(),
        }
    }

    /// Returns what a peer with digest `theirs` misses, or `None` when it misses nothing: the
    /// floors it is behind on, and the whole slice of every replica whose contiguous counter is
    /// ahead of the peer's (a whole slice, so that removals below the peer's counter travel too).
    pub fn delta_for(&self, theirs: &Digest) -> Option<Delta<R>> {
        let mut delta = Delta::default();
        for (node, &floor) in &self.lattice.floors {
            if theirs.floors.get(node).is_none_or(|&f| f < floor) {
                delta.floors.insert(node.clone(), floor);
            }
        }
        for (replica, slice) in &self.lattice.replicas {
            let dead_there = theirs
                .floors
                .get(&replica.node)
                .is_some_and(|&f| replica.incarnation < f);
            let behind = theirs
                .clocks
                .get(replica)
                .is_none_or(|&c| c < slice.ops.max);
            if !dead_there && behind && !slice.ops.is_empty() {
                delta
                    .floors
                    .entry(replica.node.clone())
                    .or_insert(replica.incarnation);
                delta.replicas.insert(replica.clone(), slice.clone());
            }
        }
        (!delta.is_empty()).then_some(delta)
    }

    /// Returns the visible entries of `room` grouped by presence key, keys in order, each key's
    /// entries in dot order.
    pub fn room(&self, room: &R) -> Vec<KeyEntries<'_, R>> {
        let Some(keys) = self.index.get(room) else {
            return Vec::new();
        };
        keys.iter()
            .map(|(key, dots)| {
                let entries = dots
                    .iter()
                    .filter_map(|d| {
                        let entry = self
                            .lattice
                            .replicas
                            .get(&d.replica)?
                            .entries
                            .get(&d.counter)?;
                        Some((d.clone(), entry))
                    })
                    .collect();
                (key.clone(), entries)
            })
            .collect()
    }

    /// Returns the entry of replica `me` with `counter`, if live.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "cluster step: presence replication over the bus")
    )]
    pub fn own_entry(&self, me: &ReplicaId, counter: u64) -> Option<&Entry<R>> {
        self.lattice.replicas.get(me)?.entries.get(&counter)
    }

    /// Returns the lowest live incarnation of `node` (0 when unknown).
    pub fn floor_of(&self, node: &NodeId) -> u64 {
        self.lattice.floor(node)
    }

    /// Returns true when `replica` is below its node's floor.
    pub fn is_dead(&self, replica: &ReplicaId) -> bool {
        replica.incarnation < self.lattice.floor(&replica.node)
    }

    /// Returns the number of rooms with at least one visible entry.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "cluster step: presence replication over the bus")
    )]
    pub fn room_count(&self) -> usize {
        self.index.len()
    }

    /// Returns the number of visible entries, every replica's included.
    pub fn entry_count(&self) -> usize {
        self.index
            .values()
            .flat_map(BTreeMap::values)
            .map(BTreeSet::len)
            .sum()
    }
}

/// Renders the `phx_ref` of the entry `counter` of `replica` (used for `phx_ref_prev`).
pub fn phx_ref_of(replica: &ReplicaId, counter: u64) -> String {
    ref_text(replica, counter)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn replica(node: &str, incarnation: u64) -> ReplicaId {
        ReplicaId {
            node: NodeId::new(node),
            incarnation,
        }
    }

    fn visible(state: &State<u8>) -> BTreeMap<Dot, Entry<u8>> {
        state
            .lattice()
            .entries()
            .map(|(d, e)| (d, e.clone()))
            .collect()
    }

    fn joins(changes: &Changes<u8>) -> Vec<u64> {
        changes
            .0
            .iter()
            .filter_map(|c| match c {
                Change::Join(d, _) => Some(d.counter),
                Change::Leave(..) => None,
            })
            .collect()
    }

    fn leaves(changes: &Changes<u8>) -> Vec<u64> {
        changes
            .0
            .iter()
            .filter_map(|c| match c {
                Change::Leave(d, _) => Some(d.counter),
                Change::Join(..) => None,
            })
            .collect()
    }

    #[test]
    fn track_update_untrack_produce_joins_and_leaves_here_and_on_a_peer() {
        let a = replica("a", 1);
        let mut here = State::new(&a);
        let mut peer = State::new(&replica("b", 1));
        let t = here.add(&a, 1, "alice".into(), r#"{"x":1}"#.into());
        assert_eq!(joins(&t.changes), vec![1]);
        assert_eq!(joins(&peer.apply(&t.delta)), vec![1]);
        let u = here
            .update(&a, 1, 1, "alice".into(), r#"{"x":2}"#.into())
            .expect("entry 1 is live");
        assert_eq!((joins(&u.changes), leaves(&u.changes)), (vec![2], vec![1]));
        let on_peer = peer.apply(&u.delta);
        assert_eq!((joins(&on_peer), leaves(&on_peer)), (vec![2], vec![1]));
        assert_eq!(peer.own_entry(&a, 2).and_then(|e| e.prev), Some(1));
        let r = here.remove(&a, 2).expect("entry 2 is live");
        assert_eq!(leaves(&r.changes), vec![2]);
        assert_eq!(leaves(&peer.apply(&r.delta)), vec![2]);
        assert!(
            here.remove(&a, 2).is_none(),
            "a removed entry cannot be removed twice"
        );
        assert_eq!(visible(&here), visible(&peer));
        assert_eq!(peer.room_count(), 0);
    }

    #[test]
    fn a_removal_seen_before_its_add_keeps_the_entry_away() {
        let a = replica("a", 1);
        let mut writer = State::new(&a);
        let add = writer.add(&a, 1, "k".into(), "{}".into());
        let remove = writer.remove(&a, 1).expect("live");
        let mut peer = State::new(&replica("b", 1));
        assert!(peer.apply(&remove.delta).is_empty());
        assert!(peer.apply(&add.delta).is_empty());
        assert_eq!(visible(&peer).len(), 0);
    }

    #[test]
    fn refs_are_distinct_per_replica_and_counter() {
        let refs: BTreeSet<String> = [
            phx_ref_of(&replica("a", 1), 1),
            phx_ref_of(&replica("a", 1), 2),
            phx_ref_of(&replica("a", 2), 1),
            phx_ref_of(&replica("b", 1), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(refs.len(), 4);
        assert_eq!(
            Dot {
                replica: replica("a", 1),
                counter: 7
            }
            .phx_ref(),
            phx_ref_of(&replica("a", 1), 7)
        );
    }

    #[test]
    fn a_dead_replica_leaves_and_its_late_deltas_never_come_back() {
        let a1 = replica("a", 1);
        let mut a = State::new(&a1);
        let mut b = State::new(&replica("b", 1));
        let first = a.add(&a1, 1, "k".into(), "{}".into());
        let late = a.add(&a1, 2, "k".into(), "{}".into());
        b.apply(&first.delta);
        let (down, changes) = b.remove_replica(&a1);
        assert_eq!(leaves(&changes), vec![1]);
        assert!(b.apply(&late.delta).is_empty(), "stale incarnation ignored");
        assert!(b.apply(&first.delta).is_empty());
        assert!(visible(&b).is_empty());
        // The restarted node's new incarnation is welcome, and its floor kills the old one
        // on a third node that never heard of the down.
        let a2 = replica("a", 2);
        let mut restarted = State::new(&a2);
        let fresh = restarted.add(&a2, 1, "k".into(), "{}".into());
        assert_eq!(joins(&b.apply(&fresh.delta)), vec![1]);
        let mut c = State::new(&replica("c", 1));
        c.apply(&first.delta);
        assert_eq!(leaves(&c.apply(&fresh.delta)), vec![1]);
        assert!(c.apply(&late.delta).is_empty());
        assert_eq!(visible(&c), visible(&b));
        assert!(
            c.apply(&down).is_empty(),
            "the down delta says nothing new to c"
        );
    }

    trait TapJoin {
        fn tap_join(self, other: &Self) -> Self;
    }

    impl TapJoin for Delta<u8> {
        fn tap_join(mut self, other: &Self) -> Self {
            self.join(other);
            self
        }
    }

    #[test]
    fn anti_entropy_repairs_a_lost_removal_below_the_peers_counter() {
        let a1 = replica("a", 1);
        let mut a = State::new(&a1);
        let mut b = State::new(&replica("b", 1));
        let add = a.add(&a1, 1, "k".into(), "{}".into());
        b.apply(&add.delta);
        let _lost = a.remove(&a1, 1);
        let repair = a.delta_for(&b.digest()).expect("b is behind");
        assert_eq!(leaves(&b.apply(&repair)), vec![1]);
        assert!(a.delta_for(&b.digest()).is_none());
        let back = b
            .delta_for(&a.digest())
            .expect("b's own floor is news to a");
        assert!(a.apply(&back).is_empty());
        assert!(b.delta_for(&a.digest()).is_none());
        assert_eq!(a.lattice(), b.lattice());
    }

    #[test]
    fn room_groups_entries_by_key_in_dot_order() {
        let a1 = replica("a", 1);
        let mut a = State::new(&a1);
        a.add(&a1, 1, "bob".into(), "{}".into());
        a.add(&a1, 1, "alice".into(), "{}".into());
        a.add(&a1, 2, "alice".into(), "{}".into());
        a.add(&a1, 1, "alice".into(), "{}".into());
        let room = a.room(&1);
        let shape: Vec<(&str, Vec<u64>)> = room
            .iter()
            .map(|(k, es)| (&**k, es.iter().map(|(d, _)| d.counter).collect()))
            .collect();
        assert_eq!(shape, vec![("alice", vec![2, 4]), ("bob", vec![1])]);
        assert!(a.room(&3).is_empty());
    }

    // ---- property tests -------------------------------------------------------------------

    #[derive(Clone, Debug)]
    enum Op {
        Track {
            node: usize,
            room: u8,
            key: u8,
            meta: u8,
        },
        Update {
            node: usize,
            pick: usize,
            meta: u8,
        },
        Untrack {
            node: usize,
            pick: usize,
        },
        UntrackAll {
            node: usize,
        },
        Restart {
            node: usize,
        },
    }

    const NODES: usize = 3;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..NODES, 0..3u8, 0..3u8, 0..4u8)
                .prop_map(|(node, room, key, meta)| Op::Track { node, room, key, meta }),
            3 => (0..NODES, 0..8usize, 0..4u8)
                .prop_map(|(node, pick, meta)| Op::Update { node, pick, meta }),
            3 => (0..NODES, 0..8usize).prop_map(|(node, pick)| Op::Untrack { node, pick }),
            1 => (0..NODES).prop_map(|node| Op::UntrackAll { node }),
            1 => (0..NODES).prop_map(|node| Op::Restart { node }),
        ]
    }

    struct Node {
        me: ReplicaId,
        state: State<u8>,
        own: Vec<u64>,
    }

    impl Node {
        fn new(i: usize, incarnation: u64) -> Node {
            let me = replica(&format!("n{i}"), incarnation);
            Node {
                state: State::new(&me),
                me,
                own: Vec::new(),
            }
        }

        /// Applies a remote delta and checks that the reported changes are exactly the
        /// difference between the visible entries before and after.
        fn receive(&mut self, delta: &Delta<u8>) {
            let mut expected = visible(&self.state);
            let changes = self.state.apply(delta);
            for change in &changes.0 {
                match change {
                    Change::Join(d, e) => {
                        assert!(
                            expected.insert(d.clone(), e.clone()).is_none(),
                            "double join"
                        )
                    }
                    Change::Leave(d, e) => {
                        assert_eq!(expected.remove(d).as_ref(), Some(e), "leave of unknown")
                    }
                }
            }
            assert_eq!(visible(&self.state), expected);
        }
    }

    /// Runs `ops` on three nodes and returns them with every delta sent, by sender.
    fn run(ops: &[Op]) -> (Vec<Node>, Vec<(usize, Delta<u8>)>) {
        let mut nodes: Vec<Node> = (0..NODES).map(|i| Node::new(i, 1)).collect();
        let mut sent = Vec::new();
        for op in ops {
            match op.clone() {
                Op::Track {
                    node,
                    room,
                    key,
                    meta,
                } => {
                    let n = &mut nodes[node];
                    let a = n.state.add(
                        &n.me,
                        room,
                        format!("k{key}").into(),
                        format!("{{\"m\":{meta}}}").into(),
                    );
                    n.own.push(a.dot.counter);
                    sent.push((node, a.delta));
                }
                Op::Update { node, pick, meta } => {
                    let n = &mut nodes[node];
                    if n.own.is_empty() {
                        continue;
                    }
                    let i = pick % n.own.len();
                    let old = n.own[i];
                    let e = n
                        .state
                        .own_entry(&n.me, old)
                        .expect("own entries are live")
                        .clone();
                    let a = n
                        .state
                        .update(
                            &n.me,
                            old,
                            e.room,
                            e.key,
                            format!("{{\"u\":{meta}}}").into(),
                        )
                        .expect("own entries are live");
                    n.own[i] = a.dot.counter;
                    sent.push((node, a.delta));
                }
                Op::Untrack { node, pick } => {
                    let n = &mut nodes[node];
                    if n.own.is_empty() {
                        continue;
                    }
                    let old = n.own.remove(pick % n.own.len());
                    let a = n.state.remove(&n.me, old).expect("own entries are live");
                    sent.push((node, a.delta));
                }
                Op::UntrackAll { node } => {
                    let n = &mut nodes[node];
                    let own = std::mem::take(&mut n.own);
                    if let Some((delta, changes)) = n.state.remove_many(&n.me, &own) {
                        assert_eq!(changes.0.len(), own.len());
                        sent.push((node, delta));
                    }
                }
                Op::Restart { node } => {
                    let incarnation = nodes[node].me.incarnation + 1;
                    nodes[node] = Node::new(node, incarnation);
                }
            }
        }
        (nodes, sent)
    }

    /// splitmix64: a deterministic stream of choices from one proptest seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// The truth: each live replica's own entries, as its writer holds them.
    fn truth(nodes: &[Node]) -> BTreeMap<Dot, Entry<u8>> {
        nodes
            .iter()
            .flat_map(|n| {
                n.state
                    .lattice()
                    .entries()
                    .filter(|(d, _)| d.replica == n.me)
                    .map(|(d, e)| (d, e.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn some_join(deltas: &[(usize, Delta<u8>)], rng: &mut Rng) -> Delta<u8> {
        let mut out = Delta::default();
        for (_, d) in deltas {
            if rng.below(2) == 0 {
                out.join(d);
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// join is commutative, associative and idempotent on values built from real histories.
        #[test]
        fn join_is_a_semilattice(ops in prop::collection::vec(op(), 1..40), seed in any::<u64>()) {
            let (nodes, sent) = run(&ops);
            let mut rng = Rng(seed);
            let mut values: Vec<Delta<u8>> = (0..3).map(|_| some_join(&sent, &mut rng)).collect();
            values.push(nodes[rng.below(NODES)].state.lattice().clone());
            for a in &values {
                prop_assert_eq!(&a.clone().tap_join(a), a);
                for b in &values {
                    let ab = a.clone().tap_join(b);
                    prop_assert_eq!(&ab, &b.clone().tap_join(a));
                    prop_assert_eq!(&ab.clone().tap_join(b), &ab);
                    for c in &values {
                        prop_assert_eq!(
                            ab.clone().tap_join(c),
                            a.clone().tap_join(&b.clone().tap_join(c))
                        );
                    }
                }
            }
        }

        /// Nodes converge to the writers' truth whatever the order, duplication and loss of
        /// deltas, once anti-entropy has run; every merge reports exactly what changed.
        #[test]
        fn nodes_converge_under_reordered_duplicated_and_dropped_deltas(
            ops in prop::collection::vec(op(), 1..50),
            seed in any::<u64>(),
        ) {
            converge(&ops, seed)?;
        }
    }

    /// Regression: a lost update whose removed dot later arrived inside another update's
    /// context left the peer's dot context complete while it still showed the first entry.
    #[test]
    fn a_lost_update_is_repaired_even_when_its_dots_arrive_through_later_ops() {
        let t = |node| Op::Track {
            node,
            room: 0,
            key: 0,
            meta: 0,
        };
        let u = |node| Op::Update {
            node,
            pick: 0,
            meta: 0,
        };
        let ops = vec![
            t(1),
            t(1),
            t(0),
            t(1),
            t(1),
            t(1),
            u(0),
            u(0),
            t(0),
            t(0),
            Op::Untrack { node: 0, pick: 0 },
            t(0),
            t(0),
            Op::Untrack { node: 1, pick: 0 },
            u(0),
        ];
        converge(&ops, 15424427063331536952).unwrap();
    }

    fn converge(ops: &[Op], seed: u64) -> Result<(), TestCaseError> {
        {
            let (mut nodes, sent) = run(ops);
            let mut rng = Rng(seed);
            let mut queue: Vec<(usize, Delta<u8>)> = Vec::new();
            for (from, delta) in &sent {
                for to in (0..NODES).filter(|t| t != from) {
                    match rng.below(4) {
                        0 => {}
                        1 => {
                            queue.push((to, delta.clone()));
                            queue.push((to, delta.clone()));
                        }
                        _ => queue.push((to, delta.clone())),
                    }
                }
            }
            for i in (1..queue.len()).rev() {
                let j = rng.below(i + 1);
                queue.swap(i, j);
            }
            for (to, delta) in &queue {
                nodes[*to].receive(delta);
            }
            for _round in 0..2 {
                for from in 0..NODES {
                    for to in (0..NODES).filter(|&t| t != from) {
                        let digest = nodes[to].state.digest();
                        if let Some(repair) = nodes[from].state.delta_for(&digest) {
                            nodes[to].receive(&repair);
                        }
                    }
                }
            }
            let truth = truth(&nodes);
            for n in &nodes {
                prop_assert_eq!(&visible(&n.state), &truth);
                prop_assert_eq!(n.state.lattice(), nodes[0].state.lattice());
                for to in &nodes {
                    prop_assert!(n.state.delta_for(&to.state.digest()).is_none());
                }
            }
        }
        Ok(())
    }

    // ---- wire form ------------------------------------------------------------------------

    impl WireRoom for u8 {
        fn to_wire(&self) -> realtime_proto::presence::Room {
            realtime_proto::presence::Room {
                tenant: "t".into(),
                private: false,
                sub_topic: self.to_string(),
            }
        }

        fn from_wire(room: &realtime_proto::presence::Room) -> Result<u8, InvalidDelta> {
            room.sub_topic
                .parse()
                .map_err(|_| InvalidDelta::BadRoom("not a test room"))
        }
    }

    fn through_the_wire(delta: &Delta<u8>) -> Result<Delta<u8>, String> {
        let bytes = realtime_proto::encode(&delta.to_wire()).map_err(|e| e.to_string())?;
        let wire: realtime_proto::presence::PresenceDelta =
            realtime_proto::decode(&bytes).map_err(|e| e.to_string())?;
        Delta::from_wire(&wire).map_err(|e| e.to_string())
    }

    fn decode_untrusted(bytes: &[u8]) {
        if let Ok(wire) = realtime_proto::decode::<realtime_proto::presence::PresenceDelta>(bytes)
            && let Ok(delta) = Delta::<u8>::from_wire(&wire)
        {
            // Whatever passed validation merges without tripping an invariant.
            let mut state = State::new(&replica("me", 1));
            state.apply(&delta);
            let mut value = delta.clone();
            value.join(&delta);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Every delta a real history produces (operations, joins of them, whole states,
        /// anti-entropy answers) survives encode → decode → validate unchanged.
        #[test]
        fn deltas_round_trip_through_the_wire(
            ops in prop::collection::vec(op(), 1..40),
            seed in any::<u64>(),
        ) {
            let (nodes, sent) = run(&ops);
            let mut rng = Rng(seed);
            let mut values: Vec<Delta<u8>> = sent.iter().map(|(_, d)| d.clone()).collect();
            values.push(some_join(&sent, &mut rng));
            for n in &nodes {
                values.push(n.state.lattice().clone());
                for other in &nodes {
                    values.extend(n.state.delta_for(&other.state.digest()));
                }
            }
            for value in &values {
                prop_assert_eq!(&through_the_wire(value).map_err(TestCaseError::fail)?, value);
            }
        }

        /// Arbitrary bytes never panic the decoder, the validation or a merge of what passed.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            decode_untrusted(&bytes);
        }

        /// Real encodings with a few bytes changed never panic either (they get past the
        /// decoder far more often than random bytes).
        #[test]
        fn corrupted_encodings_never_panic(
            ops in prop::collection::vec(op(), 1..12),
            edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let (nodes, _) = run(&ops);
            let mut bytes = realtime_proto::encode(&nodes[0].state.lattice().to_wire())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            for (at, byte) in edits {
                let i = at % bytes.len();
                bytes[i] = byte;
            }
            decode_untrusted(&bytes);
        }
    }

    fn one_track() -> realtime_proto::presence::PresenceDelta {
        let a = replica("a", 7);
        let mut state = State::new(&a);
        state.add(&a, 1, "k".into(), "{}".into());
        state
            .add(&a, 2, "k".into(), r#"{"x":1}"#.into())
            .delta
            .to_wire()
    }

    #[test]
    fn crafted_invalid_deltas_are_refused_with_the_broken_invariant() {
        let refuse = |w: &realtime_proto::presence::PresenceDelta| {
            Delta::<u8>::from_wire(w).expect_err("refused")
        };
        let good = one_track();
        assert!(Delta::<u8>::from_wire(&good).is_ok());

        let mut w = good.clone();
        w.replicas[0].entries[0].counter = 9;
        assert_eq!(
            refuse(&w),
            InvalidDelta::EntryOutsideContext {
                replica: "a@7".into(),
                counter: 9
            }
        );
        assert_eq!(
            refuse(&w).to_string(),
            "replica a@7: entry 9 is outside its context"
        );

        let mut w = good.clone();
        w.floors[0].1 = 8;
        assert!(matches!(
            refuse(&w),
            InvalidDelta::BelowFloor { floor: Some(8), .. }
        ));
        w.floors.clear();
        assert!(matches!(
            refuse(&w),
            InvalidDelta::BelowFloor { floor: None, .. }
        ));

        let mut w = good.clone();
        w.replicas[0].context.cloud = vec![3];
        w.replicas[0].context.max = 2;
        assert!(matches!(refuse(&w), InvalidDelta::BadContext { .. }));

        let mut w = good.clone();
        w.replicas[0].ops.cloud = vec![5];
        assert!(matches!(
            refuse(&w),
            InvalidDelta::OpOutsideContext { counter: 5, .. }
        ));

        let mut w = good.clone();
        w.replicas[0].entries[0].meta = r#"{ "x": 1 }"#.into();
        assert!(matches!(refuse(&w), InvalidDelta::BadMeta { .. }));
        w.replicas[0].entries[0].meta = r#"{"phx_ref":"x"}"#.into();
        assert!(matches!(refuse(&w), InvalidDelta::BadMeta { .. }));

        let mut w = good.clone();
        w.replicas[0].entries[0].prev = Some(2);
        assert!(matches!(refuse(&w), InvalidDelta::BadPrev { .. }));

        let mut w = good.clone();
        w.replicas[0].entries[0].room = 3;
        assert!(matches!(
            refuse(&w),
            InvalidDelta::NoSuchRoom { index: 3, .. }
        ));

        let mut w = good.clone();
        w.replicas[0].incarnation = u64::MAX;
        w.floors[0].1 = u64::MAX;
        assert!(matches!(refuse(&w), InvalidDelta::OutOfRange { .. }));

        let mut w = good.clone();
        w.replicas.push(w.replicas[0].clone());
        assert_eq!(refuse(&w), InvalidDelta::Unsorted { what: "replicas" });

        let mut bytes = realtime_proto::encode(&good).expect("encodes");
        bytes.push(0);
        assert!(matches!(
            realtime_proto::decode::<realtime_proto::presence::PresenceDelta>(&bytes),
            Err(realtime_proto::DecodeError::Trailing(1))
        ));
    }
}
