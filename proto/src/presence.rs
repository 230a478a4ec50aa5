//! The presence CRDT delta on the wire (see the server's `presence::crdt`).
//!
//! These types only carry data: a peer's bytes that decode are still untrusted, and the server
//! validates every invariant its merge relies on when converting them into its own delta.
//! Lists that are maps on the server are sent sorted by their key, without duplicates.

use serde::{Deserialize, Serialize};

/// A presence delta: per node the lowest live incarnation, and per replica what it says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceDelta {
    /// `(node, floor)`, sorted by node.
    pub floors: Vec<(String, u64)>,
    /// The rooms the entries refer to, by index.
    pub rooms: Vec<Room>,
    /// Sorted by `(node, incarnation)`.
    pub replicas: Vec<ReplicaSlice>,
}

/// A room: tenant, public or private, channel name without `realtime:`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Room {
    /// The tenant's external id.
    pub tenant: String,
    /// Private (RLS-authorized) channel.
    pub private: bool,
    /// The channel name without `realtime:`.
    pub sub_topic: String,
}

/// What a delta says about one replica (one run of one node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSlice {
    /// The node.
    pub node: String,
    /// The node's run.
    pub incarnation: u64,
    /// Every dot seen (created or removed).
    pub context: DotContext,
    /// The operations merged, each named by its dot.
    pub ops: DotContext,
    /// The live entries, sorted by counter.
    pub entries: Vec<Entry>,
}

/// A set of counters: all of `1..=max`, plus `cloud` (sorted, each above `max + 1`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DotContext {
    /// Every counter up to this one.
    pub max: u64,
    /// Counters above `max + 1`, ascending.
    pub cloud: Vec<u64>,
}

/// One tracked presence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The dot's counter (the replica is the slice's).
    pub counter: u64,
    /// Index into [`PresenceDelta::rooms`].
    pub room: u32,
    /// The presence key.
    pub key: String,
    /// The meta: canonical JSON object text.
    pub meta: String,
    /// The counter of the entry this one replaced (an update).
    pub prev: Option<u64>,
}
