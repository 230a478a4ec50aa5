//! A [`Delta`] to and from its wire form ([`realtime_proto::presence`]).
//!
//! A peer's bytes are untrusted: [`Delta::from_wire`] checks every invariant [`Delta::join`]
//! and [`State`](super::State) rely on (canonical contexts, entries covered by their context,
//! operations inside the context, replicas at or above their floor, counters that never
//! overflow, bounded sizes, meta that is canonical JSON object text) and refuses the delta with
//! an [`InvalidDelta`] instead of panicking or storing a value no local operation could build.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::Arc;

use realtime_proto::presence as wire;

use super::{Context, Delta, Entry, ReplicaId, Slice};
use crate::error::{ErrorCode, OperationalError};
use crate::types::NodeId;

/// Largest counter, incarnation or floor accepted: far above any real one, and `+ 1` never
/// overflows.
pub const MAX_COUNTER: u64 = u64::MAX / 2;
/// Most nodes (floors) or replicas one delta may name.
pub const MAX_REPLICAS: usize = 4096;
/// Most out-of-order counters one context may carry.
pub const MAX_CLOUD: usize = 65_536;
/// Longest node name, tenant id or room name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest presence key, in bytes.
pub const MAX_KEY_BYTES: usize = 64 * 1024;
/// Longest meta text, in bytes (above the 5 MB WebSocket frame limit, so every meta a node
/// accepts from its clients passes).
pub const MAX_META_BYTES: usize = 8 * 1024 * 1024;

/// Why a peer's presence delta was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDelta {
    /// More items than the bound allows.
    #[error("{what}: {count} items, at most {max}")]
    TooMany {
        /// The list.
        what: &'static str,
        /// Its length.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// A list that must be sorted without duplicates is not.
    #[error("{what} not strictly ascending")]
    Unsorted {
        /// The list.
        what: &'static str,
    },
    /// A name, key or meta is empty or too long.
    #[error("{what}: bad length {len}")]
    BadLength {
        /// The field.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A counter, incarnation or floor is 0 where it must not be, or above [`MAX_COUNTER`].
    #[error("{what} out of range: {value}")]
    OutOfRange {
        /// The field.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// A context is not in canonical form (cloud at or below `max + 1`), or empty.
    #[error("replica {replica}: {what} context is not canonical")]
    BadContext {
        /// The replica.
        replica: String,
        /// `context` or `ops`.
        what: &'static str,
    },
    /// An operation outside the replica's context.
    #[error("replica {replica}: operation {counter} is outside its context")]
    OpOutsideContext {
        /// The replica.
        replica: String,
        /// The operation's counter.
        counter: u64,
    },
    /// An entry whose dot its replica's context does not cover.
    #[error("replica {replica}: entry {counter} is outside its context")]
    EntryOutsideContext {
        /// The replica.
        replica: String,
        /// The entry's counter.
        counter: u64,
    },
    /// An entry whose `prev` is not an earlier dot of the same context.
    #[error("replica {replica}: entry {counter} replaces {prev}, not an earlier seen dot")]
    BadPrev {
        /// The replica.
        replica: String,
        /// The entry's counter.
        counter: u64,
        /// Its `prev`.
        prev: u64,
    },
    /// A replica without a floor for its node, or below it.
    #[error("replica {replica}: floor {floor:?} of its node does not admit it")]
    BelowFloor {
        /// The replica.
        replica: String,
        /// The node's floor in the delta, if any.
        floor: Option<u64>,
    },
    /// An entry names a room index past the room table.
    #[error("entry {counter} names room {index} of {rooms}")]
    NoSuchRoom {
        /// The entry's counter.
        counter: u64,
        /// The index.
        index: u32,
        /// The table's length.
        rooms: usize,
    },
    /// A room the server cannot hold.
    #[error("bad room: {0}")]
    BadRoom(&'static str),
    /// A meta that is not the canonical JSON object text a node stores.
    #[error("replica {replica}: entry {counter} has a meta that is not canonical JSON object text")]
    BadMeta {
        /// The replica.
        replica: String,
        /// The entry's counter.
        counter: u64,
    },
}

impl OperationalError for InvalidDelta {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidPeerMessage
    }

    fn client_message(&self) -> String {
        self.to_string()
    }
}

/// A room type that has a wire form.
pub trait WireRoom: Sized {
    /// Returns the wire form.
    fn to_wire(&self) -> wire::Room;
    /// Reads and checks a peer's room.
    ///
    /// # Errors
    /// [`InvalidDelta::BadRoom`] when this server cannot hold it.
    fn from_wire(room: &wire::Room) -> Result<Self, InvalidDelta>;
}

/// Checks a name's length (node, tenant, room).
pub fn check_name(what: &'static str, name: &str) -> Result<(), InvalidDelta> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(InvalidDelta::BadLength {
            what,
            len: name.len(),
        });
    }
    Ok(())
}

fn check_range(what: &'static str, value: u64, min: u64) -> Result<(), InvalidDelta> {
    if value < min || value > MAX_COUNTER {
        return Err(InvalidDelta::OutOfRange { what, value });
    }
    Ok(())
}

fn check_count(what: &'static str, count: usize, max: usize) -> Result<(), InvalidDelta> {
    if count > max {
        return Err(InvalidDelta::TooMany { what, count, max });
    }
    Ok(())
}

fn strictly_ascending<T: Ord>(what: &'static str, items: &[T]) -> Result<(), InvalidDelta> {
    if items.windows(2).any(|w| w[0] >= w[1]) {
        return Err(InvalidDelta::Unsorted { what });
    }
    Ok(())
}

fn context_to_wire(c: &Context) -> wire::DotContext {
    wire::DotContext {
        max: c.max,
        cloud: c.cloud.iter().copied().collect(),
    }
}

fn context_from_wire(
    c: &wire::DotContext,
    replica: &str,
    what: &'static str,
) -> Result<Context, InvalidDelta> {
    check_count("context cloud", c.cloud.len(), MAX_CLOUD)?;
    check_range("context max", c.max, 0)?;
    strictly_ascending("context cloud", &c.cloud)?;
    let canonical = c.cloud.first().is_none_or(|&first| first > c.max + 1);
    let empty = c.max == 0 && c.cloud.is_empty();
    if !canonical || empty {
        return Err(InvalidDelta::BadContext {
            replica: replica.to_owned(),
            what,
        });
    }
    for &counter in &c.cloud {
        check_range("context counter", counter, 1)?;
    }
    Ok(Context {
        max: c.max,
        cloud: c.cloud.iter().copied().collect::<BTreeSet<u64>>(),
    })
}

/// Checks that `meta` is what `canonical_meta` stores: a JSON object without the server's own
/// keys, serialized with sorted keys and no whitespace.
fn canonical_meta(meta: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(meta) {
        Ok(value @ serde_json::Value::Object(_)) => {
            value.get("phx_ref").is_none()
                && value.get("phx_ref_prev").is_none()
                && serde_json::to_string(&value).is_ok_and(|text| text == meta)
        }
        _ => false,
    }
}

impl<R: WireRoom + Clone + Eq + Hash> Delta<R> {
    /// Returns the wire form of this delta.
    pub fn to_wire(&self) -> wire::PresenceDelta {
        let mut rooms: Vec<wire::Room> = Vec::new();
        let mut index: HashMap<&R, u32> = HashMap::new();
        let replicas = self
            .replicas
            .iter()
            .map(|(replica, slice)| wire::ReplicaSlice {
                node: replica.node.as_str().to_owned(),
                incarnation: replica.incarnation,
                context: context_to_wire(&slice.context),
                ops: context_to_wire(&slice.ops),
                entries: slice
                    .entries
                    .iter()
                    .map(|(&counter, entry)| wire::Entry {
                        counter,
                        room: *index.entry(&entry.room).or_insert_with(|| {
                            rooms.push(entry.room.to_wire());
                            u32::try_from(rooms.len() - 1).unwrap_or(u32::MAX)
                        }),
                        key: entry.key.to_string(),
                        meta: entry.meta.to_string(),
                        prev: entry.prev,
                    })
                    .collect(),
            })
            .collect();
        wire::PresenceDelta {
            floors: self
                .floors
                .iter()
                .map(|(node, &floor)| (node.as_str().to_owned(), floor))
                .collect(),
            rooms,
            replicas,
        }
    }

    /// Reads and validates a peer's delta.
    ///
    /// # Errors
    /// [`InvalidDelta`] naming the first broken invariant.
    pub fn from_wire(w: &wire::PresenceDelta) -> Result<Delta<R>, InvalidDelta> {
        check_count("floors", w.floors.len(), MAX_REPLICAS)?;
        check_count("replicas", w.replicas.len(), MAX_REPLICAS)?;
        let mut floors = BTreeMap::new();
        let mut previous: Option<&str> = None;
        for (node, floor) in &w.floors {
            check_name("node", node)?;
            check_range("floor", *floor, 0)?;
            if previous.is_some_and(|p| p >= node.as_str()) {
                return Err(InvalidDelta::Unsorted { what: "floors" });
            }
            previous = Some(node);
            floors.insert(NodeId::new(node.as_str()), *floor);
        }
        let rooms = w
            .rooms
            .iter()
            .map(R::from_wire)
            .collect::<Result<Vec<R>, _>>()?;
        let mut replicas = BTreeMap::new();
        let mut previous: Option<(&str, u64)> = None;
        for s in &w.replicas {
            check_name("node", &s.node)?;
            check_range("incarnation", s.incarnation, 0)?;
            if previous.is_some_and(|p| p >= (s.node.as_str(), s.incarnation)) {
                return Err(InvalidDelta::Unsorted { what: "replicas" });
            }
            previous = Some((&s.node, s.incarnation));
            let replica = ReplicaId {
                node: NodeId::new(s.node.as_str()),
                incarnation: s.incarnation,
            };
            let name = replica.to_string();
            let floor = floors.get(&replica.node).copied();
            if floor.is_none_or(|f| f > s.incarnation) {
                return Err(InvalidDelta::BelowFloor {
                    replica: name,
                    floor,
                });
            }
            let context = context_from_wire(&s.context, &name, "context")?;
            let ops = context_from_wire(&s.ops, &name, "ops")?;
            if let Some(&counter) = ops.cloud.iter().find(|&&c| !context.contains(c)) {
                return Err(InvalidDelta::OpOutsideContext {
                    replica: name,
                    counter,
                });
            }
            if ops.max > context.max {
                return Err(InvalidDelta::OpOutsideContext {
                    replica: name,
                    counter: context.max + 1,
                });
            }
            let entry_counters: Vec<u64> = s.entries.iter().map(|e| e.counter).collect();
            strictly_ascending("entries", &entry_counters)?;
            let mut entries = BTreeMap::new();
            for e in &s.entries {
                check_range("entry counter", e.counter, 1)?;
                if !context.contains(e.counter) {
                    return Err(InvalidDelta::EntryOutsideContext {
                        replica: name,
                        counter: e.counter,
                    });
                }
                if let Some(prev) = e.prev
                    && (prev == 0 || prev >= e.counter || !context.contains(prev))
                {
                    return Err(InvalidDelta::BadPrev {
                        replica: name,
                        counter: e.counter,
                        prev,
                    });
                }
                let room = rooms
                    .get(e.room as usize)
                    .ok_or(InvalidDelta::NoSuchRoom {
                        counter: e.counter,
                        index: e.room,
                        rooms: rooms.len(),
                    })?
                    .clone();
                if e.key.len() > MAX_KEY_BYTES {
                    return Err(InvalidDelta::BadLength {
                        what: "presence key",
                        len: e.key.len(),
                    });
                }
                if e.meta.len() > MAX_META_BYTES || !canonical_meta(&e.meta) {
                    return Err(InvalidDelta::BadMeta {
                        replica: name,
                        counter: e.counter,
                    });
                }
                entries.insert(
                    e.counter,
                    Entry {
                        room,
                        key: Arc::from(e.key.as_str()),
                        meta: Arc::from(e.meta.as_str()),
                        prev: e.prev,
                    },
                );
            }
            replicas.insert(
                replica,
                Slice {
                    context,
                    ops,
                    entries,
                },
            );
        }
        Ok(Delta { floors, replicas })
    }
}
