//! Presence: who is in each room, on every node, as realtime-js expects it (PROTOCOL.md 5).
//!
//! [`Presence`] is the tracker channels call: `track`/`untrack` for one channel, `untrack_all`
//! when a socket ends, `state` for the `presence_state` push. It keeps this node's view in a
//! [`crdt::State`] where this node writes only its own replica, and fans every visible change
//! out to the room's local subscribers through the hub as a `presence_diff` (join_ref and ref
//! null, the tracker itself included).
//!
//! The cluster plugs in at three places, as `broadcast` does with `PeerFanout`: deltas out
//! through a [`PresenceReplication`] (the in-process [`NoReplication`] until the bus exists),
//! deltas in through [`Presence::merge_from_peer`], and node loss through
//! [`Presence::replica_down`]; [`Presence::digest`] and [`Presence::delta_for`] serve
//! anti-entropy. This module never talks to peers itself.

pub mod crdt;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Map, Value};

use crate::hub::{ChannelSlot, FanoutKind, FanoutMessage, Hub, RoomKey};
use crate::limits::{FixedWindow, Limits};
use crate::phoenix;
use crate::tenants::TenantLimits;
use crate::types::{ConnId, TenantId};
use crdt::{Change, Changes, Digest, Dot, Entry, InvalidDelta, ReplicaId, State};

/// A presence delta as it travels between nodes.
pub type PresenceDelta = crdt::Delta<RoomKey>;

impl crdt::WireRoom for RoomKey {
    fn to_wire(&self) -> realtime_proto::presence::Room {
        realtime_proto::presence::Room {
            tenant: self.tenant.as_str().to_owned(),
            private: self.private,
            sub_topic: self.sub_topic.to_string(),
        }
    }

    fn from_wire(room: &realtime_proto::presence::Room) -> Result<RoomKey, InvalidDelta> {
        crdt::wire_check_name("tenant", &room.tenant)?;
        if room.sub_topic.len() > crdt::MAX_NAME_BYTES {
            return Err(InvalidDelta::BadRoom("room name too long"));
        }
        Ok(RoomKey {
            tenant: TenantId::new(room.tenant.as_str()),
            private: room.private,
            sub_topic: Arc::from(room.sub_topic.as_str()),
        })
    }
}

/// Why a peer's presence delta bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum DeltaWireError {
    /// The bytes are not an encoded delta.
    #[error("undecodable presence delta: {0}")]
    Decode(#[from] realtime_proto::DecodeError),
    /// The delta breaks an invariant.
    #[error("invalid presence delta: {0}")]
    Invalid(#[from] InvalidDelta),
}

impl crate::error::OperationalError for DeltaWireError {
    fn code(&self) -> crate::error::ErrorCode {
        crate::error::ErrorCode::InvalidPeerMessage
    }

    fn client_message(&self) -> String {
        self.to_string()
    }
}

/// Encodes a delta for peers (`realtime_proto::presence::PresenceDelta`, bincode).
///
/// # Errors
/// Only when the delta exceeds [`realtime_proto::MAX_MESSAGE_BYTES`].
pub fn encode_delta(delta: &PresenceDelta) -> Result<Vec<u8>, realtime_proto::EncodeError> {
    realtime_proto::encode(&delta.to_wire())
}

/// Decodes and validates a delta a peer sent; never panics, whatever the bytes.
///
/// # Errors
/// [`DeltaWireError`] for bytes that are not a delta or a delta that breaks an invariant.
pub fn decode_delta(bytes: &[u8]) -> Result<PresenceDelta, DeltaWireError> {
    let wire: realtime_proto::presence::PresenceDelta = realtime_proto::decode(bytes)?;
    Ok(PresenceDelta::from_wire(&wire)?)
}

/// Sends this node's presence deltas to the other nodes of the cluster.
pub trait PresenceReplication: Send + Sync + 'static {
    /// Sends `delta` (an operation of this node's replica) to every peer.
    ///
    /// Called with the tracker's lock held, in operation order, so it must only queue the
    /// delta, never wait for the network.
    fn publish(&self, delta: &PresenceDelta);
}

/// The single-node replication: there are no peers.
#[derive(Debug, Default)]
pub struct NoReplication;

impl PresenceReplication for NoReplication {
    fn publish(&self, _delta: &PresenceDelta) {}
}

/// A `presence_diff` sent to a room's local subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff {
    /// The room.
    pub room: RoomKey,
    /// The diff payload, `{"joins":{..},"leaves":{..}}`.
    pub payload: Arc<str>,
    /// Local subscribers it was queued for.
    pub delivered: usize,
}

/// What this node tracks for one channel.
#[derive(Clone, Debug)]
struct LocalTrack {
    room: RoomKey,
    key: Arc<str>,
    meta: Arc<str>,
    counter: u64,
}

struct Inner {
    me: ReplicaId,
    state: State<RoomKey>,
    /// This node's tracks by channel; ordered so that one connection's channels are a range.
    local: BTreeMap<(ConnId, ChannelSlot), LocalTrack>,
}

/// The presence tracker of this node.
pub struct Presence {
    hub: Arc<Hub>,
    limits: Arc<Limits>,
    replication: Arc<dyn PresenceReplication>,
    // std mutex: short sections, no await. Fan-out happens under it so that every room sees
    // diffs in the order the state changed (the hub only queues, never waits).
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("replica", &self.replica())
            .finish_non_exhaustive()
    }
}

/// Returns the canonical meta text of a tracked object: the object without the keys the server
/// sets itself, serialized with sorted keys.
fn canonical_meta(meta: &Map<String, Value>) -> Arc<str> {
    let mut meta = meta.clone();
    meta.remove("phx_ref");
    meta.remove("phx_ref_prev");
    Arc::from(Value::Object(meta).to_string())
}

fn json_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// Appends one meta as realtime-js reads it: `phx_ref`, `phx_ref_prev` on updates, then the
/// user's fields.
fn push_meta(out: &mut String, dot: &Dot, entry: &Entry<RoomKey>) {
    let _ = write!(out, "{{\"phx_ref\":\"{}\"", dot.phx_ref());
    if let Some(prev) = entry.prev {
        let _ = write!(
            out,
            ",\"phx_ref_prev\":\"{}\"",
            crdt::phx_ref_of(&dot.replica, prev)
        );
    }
    // The canonical meta is `{}` or `{"k":..}` without whitespace.
    match entry.meta.strip_prefix('{') {
        Some(rest) if rest != "}" => {
            out.push(',');
            out.push_str(rest);
        }
        _ => out.push('}'),
    }
}

/// Appends `{key:{"metas":[..]},..}`.
fn push_keyed_metas<'a>(
    out: &mut String,
    groups: impl IntoIterator<Item = (&'a str, Vec<(&'a Dot, &'a Entry<RoomKey>)>)>,
) {
    out.push('{');
    for (i, (key, metas)) in groups.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_string(key));
        out.push_str(":{\"metas\":[");
        for (j, (dot, entry)) in metas.into_iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            push_meta(out, dot, entry);
        }
        out.push_str("]}");
    }
    out.push('}');
}

type Grouped<'a> = BTreeMap<&'a str, Vec<(&'a Dot, &'a Entry<RoomKey>)>>;

/// Groups changes by room and renders each room's `presence_diff` payload.
fn render_diffs(changes: &Changes<RoomKey>) -> Vec<(RoomKey, String)> {
    let mut rooms: HashMap<&RoomKey, (Grouped<'_>, Grouped<'_>)> = HashMap::new();
    for change in &changes.0 {
        let (dot, entry, leave) = match change {
            Change::Join(d, e) => (d, e, false),
            Change::Leave(d, e) => (d, e, true),
        };
        let (joins, leaves) = rooms.entry(&entry.room).or_default();
        let side = if leave { leaves } else { joins };
        side.entry(&entry.key).or_default().push((dot, entry));
    }
    rooms
        .into_iter()
        .map(|(room, (joins, leaves))| {
            let mut payload = String::from("{\"joins\":");
            push_keyed_metas(&mut payload, joins);
            payload.push_str(",\"leaves\":");
            push_keyed_metas(&mut payload, leaves);
            payload.push('}');
            (room.clone(), payload)
        })
        .collect()
}

impl Presence {
    /// Creates the tracker of replica `me` (this node's id and start incarnation).
    pub fn new(
        hub: Arc<Hub>,
        limits: Arc<Limits>,
        replication: Arc<dyn PresenceReplication>,
        me: ReplicaId,
    ) -> Presence {
        Presence {
            hub,
            limits,
            replication,
            inner: Mutex::new(Inner {
                state: State::new(&me),
                me,
                local: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns this node's replica.
    pub fn replica(&self) -> ReplicaId {
        self.lock().me.clone()
    }

    /// Returns a fresh client presence window for a channel of a tenant with `limits`.
    pub fn client_window(&self, limits: &TenantLimits) -> FixedWindow {
        self.limits.client_presence_window(limits)
    }

    /// Sends each room's diff to its local subscribers and counts the deliveries towards the
    /// tenant's presence events (once per recipient).
    fn fan_out(&self, changes: &Changes<RoomKey>) -> Vec<Diff> {
        if changes.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        render_diffs(changes)
            .into_iter()
            .map(|(room, payload)| {
                let payload: Arc<str> = Arc::from(payload);
                let delivered = self.hub.publish(
                    &room,
                    &FanoutMessage::Json {
                        kind: FanoutKind::Presence,
                        event: phoenix::EVENT_PRESENCE_DIFF.into(),
                        payload: payload.clone(),
                    },
                    None,
                );
                if delivered > 0 {
                    self.limits
                        .tenant(&room.tenant, now)
                        .add_presence_events(delivered as u64, now);
                }
                Diff {
                    room,
                    payload,
                    delivered,
                }
            })
            .collect()
    }

    /// Tracks `meta` under `key` in `room` for the channel `(conn, slot)` and fans out the diff.
    ///
    /// A second track from the same channel replaces its meta (Phoenix `update`: the new meta
    /// joins with `phx_ref_prev`, the old one leaves, in one diff); re-tracking an identical
    /// meta under the same key changes nothing and returns `None`.
    pub fn track(
        &self,
        room: &RoomKey,
        key: &str,
        meta: &Map<String, Value>,
        conn: ConnId,
        slot: ChannelSlot,
    ) -> Option<Diff> {
        let meta = canonical_meta(meta);
        let key: Arc<str> = Arc::from(key);
        let mut inner = self.lock();
        let inner = &mut *inner;
        let applied = match inner.local.get(&(conn, slot)) {
            Some(old) if old.room == *room && old.key == key && old.meta == meta => return None,
            Some(old) => inner.state.update(
                &inner.me,
                old.counter,
                room.clone(),
                key.clone(),
                meta.clone(),
            ),
            None => Some(
                inner
                    .state
                    .add(&inner.me, room.clone(), key.clone(), meta.clone()),
            ),
        };
        let Some(applied) = applied else {
            // The local record outlived its entry (never expected): start over.
            debug_assert!(false, "local track without a live entry");
            inner.local.remove(&(conn, slot));
            return None;
        };
        inner.local.insert(
            (conn, slot),
            LocalTrack {
                room: room.clone(),
                key,
                meta,
                counter: applied.dot.counter,
            },
        );
        self.replication.publish(&applied.delta);
        self.fan_out(&applied.changes).into_iter().next()
    }

    /// Removes the presence of channel `(conn, slot)`, if any, and fans out the diff.
    pub fn untrack(&self, conn: ConnId, slot: ChannelSlot) -> Option<Diff> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let old = inner.local.remove(&(conn, slot))?;
        let applied = inner.state.remove(&inner.me, old.counter)?;
        self.replication.publish(&applied.delta);
        self.fan_out(&applied.changes).into_iter().next()
    }

    /// Removes every presence of connection `conn` (its socket ended) in one delta; returns the
    /// number of presences removed.
    pub fn untrack_all(&self, conn: ConnId) -> usize {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let slots: Vec<(ConnId, ChannelSlot)> = inner
            .local
            .range((conn, ChannelSlot::MIN)..=(conn, ChannelSlot::MAX))
            .map(|(k, _)| *k)
            .collect();
        if slots.is_empty() {
            return 0;
        }
        let counters: Vec<u64> = slots
            .iter()
            .filter_map(|k| inner.local.remove(k))
            .map(|t| t.counter)
            .collect();
        let Some((delta, changes)) = inner.state.remove_many(&inner.me, &counters) else {
            return 0;
        };
        self.replication.publish(&delta);
        self.fan_out(&changes);
        counters.len()
    }

    /// Returns the `presence_state` payload of `room`: `{key:{"metas":[..]},..}` (`{}` when
    /// empty).
    pub fn state(&self, room: &RoomKey) -> String {
        let inner = self.lock();
        let groups = inner.state.room(room);
        let mut out = String::new();
        push_keyed_metas(
            &mut out,
            groups
                .iter()
                .map(|(key, entries)| (&**key, entries.iter().map(|(d, e)| (d, *e)).collect())),
        );
        out
    }

    /// Merges a delta received from a peer and fans out the resulting diffs; returns the
    /// number of local deliveries.
    ///
    /// When the delta declares this node's own replica dead (a peer took it for down), the
    /// node continues under the next incarnation and re-tracks every local presence, so its
    /// sockets reappear under new refs instead of vanishing.
    pub fn merge_from_peer(&self, delta: &PresenceDelta) -> usize {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut changes = inner.state.apply(delta);
        if inner.state.is_dead(&inner.me) {
            let me = ReplicaId {
                node: inner.me.node.clone(),
                incarnation: inner.state.floor_of(&inner.me.node),
            };
            tracing::warn!(node = %me.node, incarnation = me.incarnation, "a peer declared this node's presence replica dead; re-tracking local presences under a new incarnation");
            inner.me = me;
            for track in inner.local.values_mut() {
                let applied = inner.state.add(
                    &inner.me,
                    track.room.clone(),
                    track.key.clone(),
                    track.meta.clone(),
                );
                track.counter = applied.dot.counter;
                self.replication.publish(&applied.delta);
                changes.0.extend(applied.changes.0);
            }
        }
        self.fan_out(&changes).iter().map(|d| d.delivered).sum()
    }

    /// Declares `replica` dead (its node left the cluster) and fans out the leaves of its
    /// presences; returns the number of local deliveries. Ignored for this node's own replica.
    pub fn replica_down(&self, replica: &ReplicaId) -> usize {
        let mut inner = self.lock();
        if *replica == inner.me {
            return 0;
        }
        let (_, changes) = inner.state.remove_replica(replica);
        drop(inner);
        // Leaves of a dead replica commute with every later change of other replicas, so they
        // may be sent after the lock is released.
        self.fan_out(&changes).iter().map(|d| d.delivered).sum()
    }

    /// Returns this node's digest, for anti-entropy.
    pub fn digest(&self) -> Digest {
        self.lock().state.digest()
    }

    /// Returns what a peer with digest `theirs` misses, if anything.
    pub fn delta_for(&self, theirs: &Digest) -> Option<PresenceDelta> {
        self.lock().state.delta_for(theirs)
    }

    /// Returns the number of channels of this node that track a presence.
    pub fn local_count(&self) -> usize {
        self.lock().local.len()
    }

    /// Returns the number of presence entries this node knows, every node's replica included
    /// (O(rooms × keys), for metrics).
    pub fn entry_count(&self) -> usize {
        self.lock().state.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::Receiver;

    use super::*;
    use crate::hub::{Frame, Outbound, Subscriber, outbox};
    use crate::limits::LimitsConfig;
    use crate::phoenix::Vsn;
    use crate::types::{NodeId, TenantId};

    fn room() -> RoomKey {
        RoomKey {
            tenant: TenantId::from("t"),
            private: false,
            sub_topic: "lobby".into(),
        }
    }

    fn replica(node: &str, incarnation: u64) -> ReplicaId {
        ReplicaId {
            node: NodeId::new(node),
            incarnation,
        }
    }

    #[derive(Default)]
    struct Recorded(Mutex<Vec<PresenceDelta>>);

    impl PresenceReplication for Recorded {
        fn publish(&self, delta: &PresenceDelta) {
            self.0.lock().unwrap().push(delta.clone());
        }
    }

    fn tracker(node: &str) -> (Arc<Hub>, Presence, Arc<Recorded>) {
        let hub = Hub::new();
        let recorded = Arc::new(Recorded::default());
        let presence = Presence::new(
            hub.clone(),
            Arc::new(Limits::new(LimitsConfig::for_test())),
            recorded.clone(),
            replica(node, 1),
        );
        (hub, presence, recorded)
    }

    fn subscribe(hub: &Hub) -> (ConnId, Receiver<Outbound>) {
        let (outbox, rx, _) = outbox(16);
        let conn = ConnId::next();
        hub.subscribe(
            room(),
            Subscriber {
                conn,
                slot: 1,
                vsn: Vsn::V2,
                outbox,
                reads: crate::hub::Reads::ALL,
                replayed: None,
            },
        );
        (conn, rx)
    }

    fn next_json(rx: &mut Receiver<Outbound>) -> Value {
        match rx.try_recv() {
            Ok(Outbound::Fanout {
                frame: Frame::Text(bytes),
                ..
            }) => serde_json::from_slice(&bytes).expect("json frame"),
            other => panic!("expected a text fan-out, got {other:?}"),
        }
    }

    fn meta(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn track_update_untrack_fan_out_phoenix_diffs_including_the_tracker() {
        let (hub, presence, recorded) = tracker("a");
        let (conn, mut rx) = subscribe(&hub);
        let diff = presence
            .track(
                &room(),
                "alice",
                &meta(serde_json::json!({"user":"alice"})),
                conn,
                1,
            )
            .expect("a diff");
        assert_eq!(diff.delivered, 1);
        let frame = next_json(&mut rx);
        assert_eq!(frame[0], Value::Null);
        assert_eq!(frame[1], Value::Null);
        assert_eq!(frame[2], "realtime:lobby");
        assert_eq!(frame[3], "presence_diff");
        let first_ref = frame[4]["joins"]["alice"]["metas"][0]["phx_ref"]
            .as_str()
            .expect("phx_ref")
            .to_owned();
        assert_eq!(
            frame[4],
            serde_json::json!({"joins":{"alice":{"metas":[{"phx_ref":first_ref,"user":"alice"}]}},"leaves":{}})
        );
        // Same meta again: nothing happens.
        assert!(
            presence
                .track(
                    &room(),
                    "alice",
                    &meta(serde_json::json!({"user":"alice"})),
                    conn,
                    1
                )
                .is_none()
        );
        assert!(rx.try_recv().is_err());
        // New meta: update in place.
        presence
            .track(
                &room(),
                "alice",
                &meta(serde_json::json!({"user":"alice","status":"away","phx_ref":"forged"})),
                conn,
                1,
            )
            .expect("a diff");
        let frame = next_json(&mut rx);
        let joined = &frame[4]["joins"]["alice"]["metas"][0];
        assert_ne!(joined["phx_ref"], first_ref.as_str());
        assert_eq!(joined["phx_ref_prev"], first_ref.as_str());
        assert_eq!(joined["status"], "away");
        assert_eq!(
            frame[4]["leaves"],
            serde_json::json!({"alice":{"metas":[{"phx_ref":first_ref,"user":"alice"}]}})
        );
        let state: Value = serde_json::from_str(&presence.state(&room())).unwrap();
        assert_eq!(state["alice"]["metas"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            state["alice"]["metas"][0]["phx_ref_prev"],
            first_ref.as_str()
        );
        presence.untrack(conn, 1).expect("a diff");
        let frame = next_json(&mut rx);
        assert_eq!(frame[4]["joins"], serde_json::json!({}));
        assert_eq!(frame[4]["leaves"]["alice"]["metas"][0]["status"], "away");
        assert_eq!(presence.state(&room()), "{}");
        assert!(presence.untrack(conn, 1).is_none());
        assert_eq!(recorded.0.lock().unwrap().len(), 3, "one delta per change");
    }

    #[test]
    fn untrack_all_removes_every_channel_of_a_socket_and_only_that_socket() {
        let (hub, presence, _) = tracker("a");
        let (_, mut rx) = subscribe(&hub);
        let (gone, other) = (ConnId::next(), ConnId::next());
        for slot in 1..=3 {
            presence.track(&room(), &format!("k{slot}"), &Map::new(), gone, slot);
        }
        presence.track(&room(), "k1", &Map::new(), other, 1);
        while rx.try_recv().is_ok() {}
        assert_eq!(presence.untrack_all(gone), 3);
        let frame = next_json(&mut rx);
        let leaves = frame[4]["leaves"].as_object().expect("leaves");
        assert_eq!(leaves.len(), 3, "one diff with all three leaves");
        let state: Value = serde_json::from_str(&presence.state(&room())).unwrap();
        assert_eq!(state.as_object().map(|o| o.len()), Some(1));
        assert_eq!(state["k1"]["metas"].as_array().map(Vec::len), Some(1));
        assert_eq!(presence.untrack_all(gone), 0);
        assert_eq!(presence.local_count(), 1);
    }

    #[test]
    fn peer_deltas_fan_out_and_a_down_peer_leaves() {
        let (hub_a, a, sent_a) = tracker("a");
        let (hub_b, b, _) = tracker("b");
        let (_, mut rx_b) = subscribe(&hub_b);
        let (conn, _rx_a) = subscribe(&hub_a);
        a.track(&room(), "alice", &Map::new(), conn, 1);
        for delta in sent_a.0.lock().unwrap().iter() {
            assert_eq!(b.merge_from_peer(delta), 1);
        }
        let frame = next_json(&mut rx_b);
        assert!(frame[4]["joins"]["alice"].is_object());
        assert_eq!(a.state(&room()), b.state(&room()), "same refs everywhere");
        assert_eq!(b.replica_down(&a.replica()), 1);
        let frame = next_json(&mut rx_b);
        assert!(frame[4]["leaves"]["alice"].is_object());
        assert_eq!(b.state(&room()), "{}");
        // Anti-entropy: b has nothing a lacks except a's floor; a learns it is dead there and
        // re-tracks under a new incarnation.
        let repair = b.delta_for(&a.digest()).expect("floor news");
        a.merge_from_peer(&repair);
        assert_eq!(a.replica().incarnation, 2);
        let state: Value = serde_json::from_str(&a.state(&room())).unwrap();
        assert_eq!(state["alice"]["metas"].as_array().map(Vec::len), Some(1));
        let back = a.delta_for(&b.digest()).expect("the new incarnation");
        b.merge_from_peer(&back);
        assert_eq!(a.state(&room()), b.state(&room()));
    }

    #[test]
    fn deltas_cross_the_wire_and_bad_bytes_are_refused() {
        let (hub_a, a, sent_a) = tracker("a");
        let (hub_b, b, _) = tracker("b");
        let (_, mut rx_b) = subscribe(&hub_b);
        let (conn, _rx_a) = subscribe(&hub_a);
        a.track(
            &room(),
            "alice",
            &meta(serde_json::json!({"n": 1})),
            conn,
            1,
        );
        let delta = sent_a.0.lock().unwrap()[0].clone();
        let bytes = encode_delta(&delta).expect("encodes");
        let decoded = decode_delta(&bytes).expect("a valid delta");
        assert_eq!(decoded, delta);
        assert_eq!(b.merge_from_peer(&decoded), 1);
        assert!(next_json(&mut rx_b)[4]["joins"]["alice"].is_object());
        assert!(matches!(
            decode_delta(&bytes[..bytes.len() - 1]),
            Err(DeltaWireError::Decode(_))
        ));
        let mut wire = delta.to_wire();
        wire.rooms[0].tenant.clear();
        let bytes = realtime_proto::encode(&wire).expect("encodes");
        let err = decode_delta(&bytes).expect_err("an empty tenant is refused");
        assert!(matches!(
            err,
            DeltaWireError::Invalid(InvalidDelta::BadLength { what: "tenant", .. })
        ));
        assert_eq!(
            crate::error::OperationalError::code(&err),
            crate::error::ErrorCode::InvalidPeerMessage
        );
    }
}
