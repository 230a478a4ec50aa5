//! The hash ring: which node owns each tenant's change stream (issue 9, "Ownership").
//!
//! Pure code (no tokio, no I/O). A [`Ring`] is built from the live members' names; every node
//! that sees the same members computes the same owner for every tenant, in every release, on
//! every platform:
//!
//! * the members are sorted and deduplicated first, so their order does not matter;
//! * each member is `vnodes_per_node` points on the ring (`hashring` has no virtual nodes: the
//!   points are separate ring entries, a [`VNode`] = `(node, idx)`, added with one `batch_add`);
//! * points and keys are placed with a fixed hash, [`RingHasher`]: FNV-1a 64 over explicit
//!   bytes (never through `std`'s `Hash` for `str` or integers, whose byte feed is not promised
//!   to stay the same), then MurmurHash3's 64-bit finalizer so that names differing in one
//!   trailing byte land far apart. No random keys, no `DefaultHasher`.
//!
//! A tenant's owner is the first point at or after the tenant's hash (wrapping around).
//! Adding a node moves only the tenants the new node's points take (about `1/(N+1)` of them);
//! removing a node moves only that node's tenants. [`RingOwnership`] is the swappable ring a
//! node consults for [`StreamOwnership`]; [`moved`] lists which of a node's tenants changed owner.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, PoisonError, RwLock};

use hashring::HashRing;

use crate::postgres_changes::replication::StreamOwnership;
use crate::types::{NodeId, TenantId};

/// Points per node when nothing else is configured: 128 keeps every node's share within about
/// ±15 % of `1/N` for N ≤ 7 (see the balance test and docs/ARCHITECTURE.md, "Ring").
pub(crate) const DEFAULT_VNODES_PER_NODE: usize = 128;

/// The most points one node may have (more only costs memory and build time).
pub(crate) const MAX_VNODES_PER_NODE: usize = 4096;

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Builds [`RingHash`]ers: the ring's fixed hash (no keys, no randomness).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct RingHasher;

impl BuildHasher for RingHasher {
    type Hasher = RingHash;

    fn build_hasher(&self) -> RingHash {
        RingHash(FNV_OFFSET)
    }
}

/// FNV-1a 64 over the bytes written, finished with MurmurHash3's `fmix64`.
///
/// Only [`Hasher::write`] is meant to be fed (the ring's own `Hash` impls do so); the integer
/// writers are pinned to little-endian bytes anyway, so nothing depends on the platform.
#[derive(Clone, Copy, Debug)]
struct RingHash(u64);

impl Hasher for RingHash {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.write(&[i]);
    }

    fn write_u16(&mut self, i: u16) {
        self.write(&i.to_le_bytes());
    }

    fn write_u32(&mut self, i: u32) {
        self.write(&i.to_le_bytes());
    }

    fn write_u64(&mut self, i: u64) {
        self.write(&i.to_le_bytes());
    }

    fn write_usize(&mut self, i: usize) {
        // The same bytes on 32- and 64-bit targets.
        self.write_u64(i as u64);
    }

    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
}

/// MurmurHash3's 64-bit finalizer: every input bit flips about half the output bits.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// One point of a node on the ring: its `idx`th virtual node.
#[derive(Clone, Debug)]
struct VNode {
    node: NodeId,
    idx: u32,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.node.as_str().as_bytes());
        // 0xff never occurs in UTF-8: the name ends here, whatever it is.
        state.write(&[0xff]);
        state.write(&self.idx.to_le_bytes());
    }
}

/// A tenant's place on the ring: the hash of its external id's bytes.
struct KeyPoint<'a>(&'a str);

impl Hash for KeyPoint<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

/// The consistent-hash ring over a set of members; immutable, cheap to share behind an `Arc`.
#[derive(Clone)]
pub(crate) struct Ring {
    /// Sorted, without duplicates.
    members: Vec<NodeId>,
    vnodes_per_node: usize,
    points: HashRing<VNode, RingHasher>,
}

impl Ring {
    /// A ring of `members` (any order, duplicates ignored) with `vnodes_per_node` points each
    /// (clamped to `1..=MAX_VNODES_PER_NODE`).
    pub(crate) fn new(members: impl IntoIterator<Item = NodeId>, vnodes_per_node: usize) -> Ring {
        let mut members: Vec<NodeId> = members.into_iter().collect();
        members.sort();
        members.dedup();
        let vnodes_per_node = vnodes_per_node.clamp(1, MAX_VNODES_PER_NODE);
        let per_node = u32::try_from(vnodes_per_node).unwrap_or(u32::MAX);
        // Added in one canonical order (members sorted, then idx): `batch_add` sorts stably by
        // hash, so even two points with the same hash end up in the same order on every node.
        let vnodes: Vec<VNode> = members
            .iter()
            .flat_map(|node| {
                (0..per_node).map(|idx| VNode {
                    node: node.clone(),
                    idx,
                })
            })
            .collect();
        let mut points = HashRing::with_hasher(RingHasher);
        points.batch_add(vnodes);
        Ring {
            members,
            vnodes_per_node,
            points,
        }
    }

    /// A ring of `members` with this ring's points per node.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "forwarding changes between nodes uses the moves (next step of the cluster)"
        )
    )]
    pub(crate) fn with_members(&self, members: impl IntoIterator<Item = NodeId>) -> Ring {
        Ring::new(members, self.vnodes_per_node)
    }

    /// The node that owns `tenant`, or `None` for an empty ring. Allocates nothing.
    pub(crate) fn owner(&self, tenant: &TenantId) -> Option<&NodeId> {
        self.points
            .get(&KeyPoint(tenant.as_str()))
            .map(|vnode| &vnode.node)
    }

    /// The members, sorted, without duplicates.
    pub(crate) fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// Whether `node` is a member.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "forwarding changes between nodes uses the moves (next step of the cluster)"
        )
    )]
    pub(crate) fn contains(&self, node: &NodeId) -> bool {
        self.members.binary_search(node).is_ok()
    }

    /// Whether the ring has no members (then no tenant has an owner).
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "forwarding changes between nodes uses the moves (next step of the cluster)"
        )
    )]
    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Points per member.
    pub(crate) fn vnodes_per_node(&self) -> usize {
        self.vnodes_per_node
    }
}

/// Two rings are equal when they have the same members and points per node (then they give the
/// same owner for every tenant).
impl PartialEq for Ring {
    fn eq(&self, other: &Ring) -> bool {
        self.vnodes_per_node == other.vnodes_per_node && self.members == other.members
    }
}

impl Eq for Ring {}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("members", &self.members)
            .field("vnodes_per_node", &self.vnodes_per_node)
            .finish_non_exhaustive()
    }
}

/// A tenant whose owner differs between two rings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Moved {
    /// The tenant.
    pub(crate) tenant: TenantId,
    /// Its owner on the old ring (`None`: the old ring was empty).
    pub(crate) from: Option<NodeId>,
    /// Its owner on the new ring (`None`: the new ring is empty).
    pub(crate) to: Option<NodeId>,
}

/// The tenants among `tenants` whose owner on `new` is not their owner on `old`, in the order
/// given (a tenant given twice is listed twice).
pub(crate) fn moved<'a>(
    old: &Ring,
    new: &Ring,
    tenants: impl IntoIterator<Item = &'a TenantId>,
) -> Vec<Moved> {
    if old == new {
        return Vec::new();
    }
    tenants
        .into_iter()
        .filter_map(|tenant| {
            let from = old.owner(tenant);
            let to = new.owner(tenant);
            (from != to).then(|| Moved {
                tenant: tenant.clone(),
                from: from.cloned(),
                to: to.cloned(),
            })
        })
        .collect()
}

/// What [`RingOwnership::set_members`] replaced: the ring before and after.
#[derive(Clone, Debug)]
pub(crate) struct RingChange {
    /// The ring before the swap.
    pub(crate) old: Arc<Ring>,
    /// The ring now in use.
    pub(crate) new: Arc<Ring>,
}

impl RingChange {
    /// Whether the members (and so every owner) stayed the same.
    pub(crate) fn is_unchanged(&self) -> bool {
        self.old == self.new
    }

    /// The tenants among `tenants` whose owner changed (see [`moved`]).
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "forwarding changes between nodes uses the moves (next step of the cluster)"
        )
    )]
    pub(crate) fn moved<'a>(&self, tenants: impl IntoIterator<Item = &'a TenantId>) -> Vec<Moved> {
        moved(&self.old, &self.new, tenants)
    }
}

/// This node's view of stream ownership: a shared ring, swapped when membership changes.
///
/// `owns(tenant)` is true when the ring names this node as the owner, or when the ring is
/// empty (a cluster of one, before membership has said anything).
pub(crate) struct RingOwnership {
    node: NodeId,
    ring: RwLock<Arc<Ring>>,
}

impl RingOwnership {
    /// Ownership for `node`, starting from `ring`.
    pub(crate) fn new(node: NodeId, ring: Ring) -> RingOwnership {
        RingOwnership {
            node,
            ring: RwLock::new(Arc::new(ring)),
        }
    }

    /// This node.
    #[cfg(test)]
    pub(crate) fn node(&self) -> &NodeId {
        &self.node
    }

    /// The ring in use now.
    pub(crate) fn ring(&self) -> Arc<Ring> {
        Arc::clone(&self.ring.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the ring by one of `members` (same points per node) and returns both rings, so
    /// the caller can work out which of its tenants moved ([`RingChange::moved`]). The new ring
    /// is built before the lock is taken; `owns` callers wait only for the swap.
    pub(crate) fn set_members(&self, members: impl IntoIterator<Item = NodeId>) -> RingChange {
        let vnodes = self.ring().vnodes_per_node();
        let new = Arc::new(Ring::new(members, vnodes));
        let mut ring = self.ring.write().unwrap_or_else(PoisonError::into_inner);
        let old = std::mem::replace(&mut *ring, Arc::clone(&new));
        RingChange { old, new }
    }
}

impl fmt::Debug for RingOwnership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingOwnership")
            .field("node", &self.node)
            .field("ring", &self.ring())
            .finish()
    }
}

impl StreamOwnership for RingOwnership {
    fn owns(&self, tenant: &TenantId) -> bool {
        let ring = self.ring.read().unwrap_or_else(PoisonError::into_inner);
        ring.owner(tenant).is_none_or(|owner| *owner == self.node)
    }

    fn owner(&self, tenant: &TenantId) -> Option<NodeId> {
        let ring = self.ring.read().unwrap_or_else(PoisonError::into_inner);
        ring.owner(tenant)
            .filter(|owner| **owner != self.node)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name)
    }

    fn nodes(count: usize) -> Vec<NodeId> {
        (0..count).map(|i| node(&format!("realtime-{i}"))).collect()
    }

    fn point(bytes: &[u8]) -> u64 {
        let mut hash = RingHasher.build_hasher();
        hash.write(bytes);
        hash.finish()
    }

    /// `count` tenant ids shaped like Supabase project refs (20 lowercase letters), from a fixed
    /// seed (splitmix64), so every run measures the same set.
    fn tenants(count: usize) -> Vec<TenantId> {
        let mut state: u64 = 0x5eed_f00d_7e4a_4175;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..count)
            .map(|_| {
                let id: String = (0..20)
                    .map(|_| char::from(b'a' + (next() % 26) as u8))
                    .collect();
                TenantId::new(id)
            })
            .collect()
    }

    fn owners(ring: &Ring, tenants: &[TenantId]) -> Vec<Option<NodeId>> {
        tenants.iter().map(|t| ring.owner(t).cloned()).collect()
    }

    #[test]
    fn the_hash_is_fnv1a_with_fmix64() {
        // Values computed outside Rust (Python, from the FNV-1a and fmix64 definitions).
        assert_eq!(point(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(point(b"realtime"), 0x0d4f_88a4_e830_975f);
        let vnode = RingHasher.hash_one(VNode {
            node: node("node-a"),
            idx: 1,
        });
        assert_eq!(vnode, point(b"node-a\xff\x01\x00\x00\x00"));
        assert_eq!(vnode, 0x8d46_d94b_b6eb_6d50);
        assert_eq!(
            RingHasher.hash_one(KeyPoint("abcdefghijklmnopqrst")),
            point(b"abcdefghijklmnopqrst")
        );
    }

    #[test]
    fn owners_are_pinned() {
        // A change of hash, point layout or tie-breaking moves tenants between releases, which
        // a rolling deploy must not do silently: these owners were computed outside Rust from
        // the definitions above (members sorted, 128 points each, first point at or after the
        // key's hash, wrapping).
        let ring = Ring::new([node("node-a"), node("node-b"), node("node-c")], 128);
        let pinned = [
            ("realtime-dev", "node-c"),
            ("abcdefghijklmnopqrst", "node-c"),
            ("tenant-1", "node-a"),
            ("tenant-2", "node-b"),
            ("tenant-4", "node-c"),
            ("tenant-5", "node-b"),
            ("dev_tenant", "node-a"),
            ("localhost", "node-a"),
        ];
        for (tenant, owner) in pinned {
            assert_eq!(
                ring.owner(&TenantId::new(tenant)),
                Some(&node(owner)),
                "{tenant}"
            );
        }
    }

    #[test]
    fn an_empty_ring_has_no_owner() {
        let ring = Ring::new(Vec::new(), 128);
        assert!(ring.is_empty());
        assert!(ring.members().is_empty());
        assert_eq!(ring.owner(&TenantId::new("t")), None);
        assert_eq!(Ring::new(Vec::new(), 1), Ring::new(Vec::new(), 1));
    }

    #[test]
    fn one_member_owns_every_tenant() {
        let ring = Ring::new([node("solo")], 16);
        assert!(!ring.is_empty());
        assert!(ring.contains(&node("solo")));
        assert!(!ring.contains(&node("other")));
        for tenant in tenants(500) {
            assert_eq!(ring.owner(&tenant), Some(&node("solo")));
        }
    }

    #[test]
    fn vnodes_are_clamped() {
        assert_eq!(Ring::new([node("a")], 0).vnodes_per_node(), 1);
        assert_eq!(
            Ring::new([node("a")], usize::MAX).vnodes_per_node(),
            MAX_VNODES_PER_NODE
        );
        // With one point per node the ring still names an owner.
        let ring = Ring::new([node("a"), node("b")], 0);
        assert!(ring.owner(&TenantId::new("t")).is_some());
    }

    #[test]
    fn member_order_and_duplicates_do_not_matter() {
        let tenants = tenants(10_000);
        let members = nodes(5);
        let ring = Ring::new(members.clone(), 128);
        let expected = owners(&ring, &tenants);
        let mut reversed = members.clone();
        reversed.reverse();
        let mut rotated = members.clone();
        rotated.rotate_left(2);
        let mut doubled = members.clone();
        doubled.extend(members.iter().rev().cloned());
        for other in [reversed, rotated, doubled] {
            let other = Ring::new(other, 128);
            assert_eq!(other, ring);
            assert_eq!(other.members(), ring.members());
            assert_eq!(owners(&other, &tenants), expected);
        }
        assert_eq!(ring.members(), &members[..]); // already sorted names
    }

    /// Each node's share of 10,000 tenants is within ±25 % of `1/N` for N = 2..=7 with 128
    /// points per node; prints the measured worst deviation (`--nocapture`).
    #[test]
    fn shares_are_balanced() {
        let tenants = tenants(10_000);
        for n in 2..=7 {
            let ring = Ring::new(nodes(n), DEFAULT_VNODES_PER_NODE);
            let mut counts: HashMap<&NodeId, usize> = HashMap::new();
            for tenant in &tenants {
                *counts
                    .entry(ring.owner(tenant).expect("owner"))
                    .or_default() += 1;
            }
            assert_eq!(counts.len(), n, "every node owns some tenants");
            let fair = tenants.len() as f64 / n as f64;
            let worst = counts
                .values()
                .map(|&c| (c as f64 - fair).abs() / fair)
                .fold(0.0, f64::max);
            let (min, max) = (
                counts.values().min().copied().unwrap_or(0),
                counts.values().max().copied().unwrap_or(0),
            );
            eprintln!(
                "balance N={n}: fair {fair:.0}, min {min}, max {max}, worst {:.1} %",
                worst * 100.0
            );
            assert!(worst <= 0.25, "N={n}: worst share deviation {worst:.3}");
        }
    }

    /// Adding a node moves only tenants onto the new node, about `1/(N+1)` of them.
    #[test]
    fn adding_a_node_moves_only_tenants_to_it() {
        let tenants = tenants(10_000);
        for n in 1..=7 {
            let old = Ring::new(nodes(n), DEFAULT_VNODES_PER_NODE);
            let added = node("realtime-new");
            let new = old.with_members(old.members().iter().cloned().chain([added.clone()]));
            let moved = moved(&old, &new, &tenants);
            for m in &moved {
                assert_eq!(m.to.as_ref(), Some(&added), "{m:?}");
                assert!(m.from.is_some());
            }
            let fraction = moved.len() as f64 / tenants.len() as f64;
            let ideal = 1.0 / (n + 1) as f64;
            eprintln!(
                "add N={n}->{}: moved {} ({:.1} %, ideal {:.1} %)",
                n + 1,
                moved.len(),
                fraction * 100.0,
                ideal * 100.0
            );
            assert!(
                (fraction - ideal).abs() <= 0.25 * ideal,
                "N={n}: moved {fraction:.3}, ideal {ideal:.3}"
            );
        }
    }

    /// Removing a node moves exactly that node's tenants, and each to a remaining node.
    #[test]
    fn removing_a_node_moves_only_its_tenants() {
        let tenants = tenants(10_000);
        for n in 2..=8 {
            let old = Ring::new(nodes(n), DEFAULT_VNODES_PER_NODE);
            let removed = nodes(n)[n / 2].clone();
            let new = old.with_members(nodes(n).into_iter().filter(|m| *m != removed));
            let had: Vec<&TenantId> = tenants
                .iter()
                .filter(|t| old.owner(t) == Some(&removed))
                .collect();
            let moved = moved(&old, &new, &tenants);
            assert_eq!(moved.len(), had.len(), "N={n}");
            for (m, tenant) in moved.iter().zip(&had) {
                assert_eq!(&m.tenant, *tenant);
                assert_eq!(m.from.as_ref(), Some(&removed));
                let to = m.to.as_ref().expect("a remaining node");
                assert!(new.contains(to) && *to != removed);
            }
            eprintln!(
                "remove N={n}->{}: moved {} ({:.1} %)",
                n - 1,
                moved.len(),
                moved.len() as f64 / tenants.len() as f64 * 100.0
            );
        }
    }

    #[test]
    fn moved_lists_tenants_to_and_from_an_empty_ring() {
        let tenants = tenants(10);
        let empty = Ring::new(Vec::new(), 8);
        let full = Ring::new(nodes(3), 8);
        let to_full = moved(&empty, &full, &tenants);
        assert_eq!(to_full.len(), 10);
        assert!(to_full.iter().all(|m| m.from.is_none() && m.to.is_some()));
        let to_empty = moved(&full, &empty, &tenants);
        assert_eq!(to_empty.len(), 10);
        assert!(to_empty.iter().all(|m| m.from.is_some() && m.to.is_none()));
        assert!(moved(&full, &full.clone(), &tenants).is_empty());
    }

    #[test]
    fn ring_ownership_follows_the_swapped_ring() {
        let me = node("realtime-1");
        let ownership = RingOwnership::new(me.clone(), Ring::new(Vec::new(), 64));
        let tenants = tenants(2_000);
        // Empty ring: a cluster of one owns everything.
        assert!(tenants.iter().all(|t| ownership.owns(t)));

        let change = ownership.set_members([me.clone()]);
        assert!(change.old.is_empty());
        assert_eq!(change.new.members(), &[me.clone()][..]);
        assert!(
            change
                .moved(&tenants)
                .iter()
                .all(|m| m.to.as_ref() == Some(&me))
        );
        assert!(tenants.iter().all(|t| ownership.owns(t)));

        let change = ownership.set_members(nodes(3));
        assert!(!change.is_unchanged());
        assert_eq!(*ownership.ring(), *change.new);
        let moved = change.moved(&tenants);
        assert!(!moved.is_empty());
        assert!(moved.iter().all(|m| m.from.as_ref() == Some(&me)));
        for tenant in &tenants {
            let owner = change.new.owner(tenant).expect("owner");
            assert_eq!(ownership.owns(tenant), *owner == me, "{tenant}");
        }
        let mine = tenants.iter().filter(|t| ownership.owns(t)).count();
        assert!(mine > 0 && mine < tenants.len());
        assert_eq!(moved.len(), tenants.len() - mine);

        // The same members again: nothing moves.
        let change = ownership.set_members(nodes(3).into_iter().rev());
        assert!(change.is_unchanged());
        assert!(change.moved(&tenants).is_empty());

        // This node left the ring (others still live): it owns nothing.
        ownership.set_members([node("realtime-0"), node("realtime-2")]);
        assert!(tenants.iter().all(|t| !ownership.owns(t)));
        assert_eq!(ownership.node(), &me);
    }

    fn member_names() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("[a-z]{1,6}(-[0-9]{1,2})?", 0..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Between a ring without `extra` and the same ring with it, a key keeps its owner unless
        /// its owner is `extra`: read one way, adding a member moves keys only onto it; read the
        /// other way, removing a member moves only its keys. `moved` lists exactly those keys.
        #[test]
        fn only_the_changed_member_gains_or_loses_tenants(
            members in member_names(),
            extra in "[a-z]{1,6}(-[0-9]{1,2})?",
            vnodes in 1usize..48,
            keys in proptest::collection::vec("[a-z0-9]{1,20}", 1..200),
        ) {
            let extra = node(&extra);
            let without: Vec<NodeId> = members
                .iter()
                .map(|m| NodeId::new(m.as_str()))
                .filter(|m| *m != extra)
                .collect();
            let keys: Vec<TenantId> = keys.iter().map(|k| TenantId::new(k.as_str())).collect();
            let small = Ring::new(without.clone(), vnodes);
            let big = Ring::new(without.into_iter().chain([extra.clone()]), vnodes);
            let mut changed = Vec::new();
            for key in &keys {
                let before = small.owner(key);
                let after = big.owner(key).expect("the bigger ring has a member");
                if *after != extra {
                    prop_assert_eq!(before, Some(after), "{}", key);
                }
                if before != Some(after) {
                    changed.push(key.clone());
                }
            }
            let moved = moved(&small, &big, &keys);
            prop_assert!(moved.iter().all(|m| m.to.as_ref() == Some(&extra)));
            let moved: Vec<TenantId> = moved.into_iter().map(|m| m.tenant).collect();
            prop_assert_eq!(moved, changed);
        }

        /// The owner depends on the set of members only, not on their order or repetitions.
        #[test]
        fn owners_do_not_depend_on_member_order(
            (members, shuffled) in member_names()
                .prop_flat_map(|m| (Just(m.clone()), Just(m).prop_shuffle())),
            vnodes in 1usize..48,
            keys in proptest::collection::vec("[a-z0-9]{1,20}", 1..100),
        ) {
            let ring = Ring::new(members.iter().map(|m| NodeId::new(m.as_str())), vnodes);
            let other = Ring::new(
                shuffled.iter().chain(&members).map(|m| NodeId::new(m.as_str())),
                vnodes,
            );
            for key in keys.iter().map(|k| TenantId::new(k.as_str())) {
                prop_assert_eq!(ring.owner(&key), other.owner(&key));
            }
        }
    }
}
