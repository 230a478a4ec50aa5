//! This node's subscribers per room and the local fan-out.
//!
//! A room is (tenant, public/private, sub_topic): public and private channels of the same name
//! are different rooms. Publishing encodes a message at most once per wire format (v1 text, v2
//! text or kind-4 binary) and queues the same shared bytes on every subscriber's bounded
//! [`Outbox`]; a subscriber whose queue is full is marked slow and skipped, never waited for.
//! The hub knows nothing of other nodes: `broadcast` forwards to peers and calls the hub for the
//! local part. It also keeps the live connections of each tenant, for tenant-wide disconnects.

mod outbox;

pub use outbox::{ChannelSlot, ConnSignals, Frame, Outbound, Outbox, outbox};

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use crate::phoenix::{self, UserBroadcast, Vsn};
use crate::tenants::Tenant;
use crate::types::{ConnId, TenantId};

/// A room: the unit of fan-out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoomKey {
    /// The tenant.
    pub tenant: TenantId,
    /// Private (RLS-authorized) or public channel.
    pub private: bool,
    /// The channel name without `realtime:`.
    pub sub_topic: Arc<str>,
}

/// One joined channel, as the hub sees it.
#[derive(Clone, Debug)]
pub struct Subscriber {
    /// The connection.
    pub conn: ConnId,
    /// The channel within the connection.
    pub slot: ChannelSlot,
    /// The connection's wire format.
    pub vsn: Vsn,
    /// The connection's queue.
    pub outbox: Outbox,
    /// What fan-out the channel may receive ([`Reads::ALL`] for a public channel).
    pub reads: Reads,
    /// The ids of the database messages replayed to the channel at join (PROTOCOL.md 4.6): a
    /// live database broadcast with one of these `meta.id`s is not delivered to it.
    pub replayed: Option<ReplayedIds>,
}

/// The ids of the messages replayed to one channel, kept for the channel's lifetime.
pub type ReplayedIds = Arc<std::collections::HashSet<String>>;

/// What a subscriber may receive of its room's fan-out: a private channel without broadcast
/// read gets no broadcasts, one without presence read no `presence_diff` (PROTOCOL.md 8). A
/// bit test per subscriber in the fan-out loop; public channels have [`Reads::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reads(u8);

impl Reads {
    /// Nothing.
    pub const NONE: Reads = Reads(0);
    /// Broadcasts (and other `FanoutKind::Broadcast` messages).
    pub const BROADCAST: Reads = Reads(1);
    /// Presence diffs.
    pub const PRESENCE: Reads = Reads(2);
    /// Everything (public channels).
    pub const ALL: Reads = Reads(3);

    /// Both sets.
    pub const fn with(self, other: Reads) -> Reads {
        Reads(self.0 | other.0)
    }

    /// Whether a message of `kind` may be delivered.
    pub const fn allows(self, kind: FanoutKind) -> bool {
        match kind {
            FanoutKind::Broadcast => self.0 & Reads::BROADCAST.0 != 0,
            FanoutKind::Presence => self.0 & Reads::PRESENCE.0 != 0,
            FanoutKind::PostgresChanges => true,
        }
    }
}

/// The event name of a fan-out message: a constant of this server, or text that came off the
/// wire (a peer's message). Cloning never copies the text.
#[derive(Clone, Debug)]
pub struct EventName(EventText);

#[derive(Clone, Debug)]
enum EventText {
    Static(&'static str),
    Shared(Arc<str>),
}

impl EventName {
    /// Returns the event name as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            EventText::Static(s) => s,
            EventText::Shared(s) => s,
        }
    }
}

impl std::ops::Deref for EventName {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for EventName {
    fn eq(&self, other: &EventName) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for EventName {}

impl From<&'static str> for EventName {
    fn from(s: &'static str) -> EventName {
        EventName(EventText::Static(s))
    }
}

impl From<Arc<str>> for EventName {
    fn from(s: Arc<str>) -> EventName {
        EventName(EventText::Shared(s))
    }
}

impl From<String> for EventName {
    fn from(s: String) -> EventName {
        EventName(EventText::Shared(s.into()))
    }
}

impl std::fmt::Display for EventName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a fan-out message is, for the limits it counts toward (PROTOCOL.md 12.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FanoutKind {
    /// A broadcast or system message: its deliveries count toward `max_events_per_second`,
    /// and a channel that receives one while that limit is tripped is shut down.
    Broadcast,
    /// A `presence_diff`: counted in the presence counter only, never shuts a channel down
    /// for the events limit.
    Presence,
    /// A `postgres_changes` delivery: never trips the broadcast events limit (PROTOCOL.md
    /// 12.2); the change stream has its own accounting.
    PostgresChanges,
}

impl FanoutKind {
    /// Returns true when delivering this kind checks the events-per-second limit.
    pub fn checks_events_limit(self) -> bool {
        matches!(self, FanoutKind::Broadcast)
    }
}

/// A message to fan out to a room.
#[derive(Clone, Debug)]
pub enum FanoutMessage {
    /// A user broadcast (kind-3 push, per-event HTTP API, database): kind 4 to v2 subscribers,
    /// a JSON `broadcast` to v1 subscribers; binary payloads are not delivered to v1.
    User(UserBroadcast),
    /// An event whose payload is JSON text, sent as a text frame to everyone (a JSON
    /// `broadcast` push forwarded verbatim, the batch HTTP API, `presence_diff`, ...).
    Json {
        /// What the message is, for the limits.
        kind: FanoutKind,
        /// Event name, e.g. `broadcast`.
        event: EventName,
        /// Payload JSON text.
        payload: Arc<str>,
    },
}

impl FanoutMessage {
    /// Returns what the message is, for the limits it counts toward.
    pub fn kind(&self) -> FanoutKind {
        match self {
            FanoutMessage::User(_) => FanoutKind::Broadcast,
            FanoutMessage::Json { kind, .. } => *kind,
        }
    }

    /// Returns the size of the user payload, for payload limits.
    pub fn payload_len(&self) -> usize {
        match self {
            FanoutMessage::User(m) => m.payload.len(),
            FanoutMessage::Json { payload, .. } => payload.len(),
        }
    }

    /// The `meta.id` of a database broadcast (a user broadcast whose metadata has an `"id"`).
    pub fn db_id(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Meta {
            id: Option<String>,
        }
        match self {
            FanoutMessage::User(m) => m
                .metadata
                .as_deref()
                .and_then(|meta| serde_json::from_slice::<Meta>(meta).ok())
                .and_then(|meta| meta.id),
            FanoutMessage::Json { .. } => None,
        }
    }

    /// Encodes the frame a subscriber of format `vsn` on `topic` receives, or `None` when that
    /// format cannot carry it.
    pub fn encode(&self, vsn: Vsn, topic: &str) -> Option<Frame> {
        match (self, vsn) {
            (FanoutMessage::User(m), Vsn::V2) => match phoenix::encode_user_broadcast(topic, m) {
                Ok(bytes) => Some(Frame::Binary(bytes)),
                // Too long for the one-byte lengths of kind 4: JSON text still works.
                Err(_) => phoenix::user_broadcast_json(m).map(|payload| {
                    Frame::text(phoenix::encode_message(
                        vsn,
                        None,
                        None,
                        topic,
                        phoenix::EVENT_BROADCAST,
                        &payload,
                    ))
                }),
            },
            (FanoutMessage::User(m), Vsn::V1) => phoenix::user_broadcast_json(m).map(|payload| {
                Frame::text(phoenix::encode_message(
                    vsn,
                    None,
                    None,
                    topic,
                    phoenix::EVENT_BROADCAST,
                    &payload,
                ))
            }),
            (FanoutMessage::Json { event, payload, .. }, vsn) => Some(Frame::text(
                phoenix::encode_message(vsn, None, None, topic, event, payload),
            )),
        }
    }
}

/// Told when a room appears on or disappears from this node (the cluster learns its peers'
/// interest from these).
///
/// Called with the hub's room map locked, so that the events of one room alternate `created`,
/// `emptied`, ... in the order the map changed: implementations must only queue, never wait
/// or call back into the hub.
pub trait RoomEvents: Send + Sync + 'static {
    /// `room` got its first local subscriber.
    fn room_created(&self, room: &RoomKey);
    /// `room` lost its last local subscriber.
    fn room_emptied(&self, room: &RoomKey);
}

struct Room {
    /// `realtime:<sub_topic>`, the topic every subscriber joined with.
    topic: String,
    members: RwLock<Members>,
}

/// A room's subscribers. A room is closed, under this lock, by the leave that empties it,
/// before it leaves the map: a join never adds to a closed room, so a room holding subscribers
/// is always the one in the map.
struct Members {
    subscribers: Vec<Subscriber>,
    closed: bool,
}

impl Room {
    fn new(key: &RoomKey, first: Subscriber) -> Arc<Room> {
        Arc::new(Room {
            topic: format!("{}{}", phoenix::TOPIC_PREFIX, key.sub_topic),
            members: RwLock::new(Members {
                subscribers: vec![first],
                closed: false,
            }),
        })
    }

    fn members(&self) -> std::sync::RwLockReadGuard<'_, Members> {
        self.members.read().unwrap_or_else(|e| e.into_inner())
    }

    fn members_mut(&self) -> std::sync::RwLockWriteGuard<'_, Members> {
        self.members.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `subscriber` unless the room is closed; gives it back when closed.
    fn try_add(&self, subscriber: Subscriber) -> Result<(), Subscriber> {
        let mut members = self.members_mut();
        if members.closed {
            return Err(subscriber);
        }
        members.subscribers.push(subscriber);
        Ok(())
    }
}

/// This node's rooms and tenant connections.
#[derive(Default)]
pub struct Hub {
    // std locks: held for short map operations only, never across an await. Lock order: the
    // room map, then a room's members.
    rooms: RwLock<HashMap<RoomKey, Arc<Room>>>,
    connections: RwLock<HashMap<TenantId, HashMap<ConnId, Outbox>>>,
    room_events: OnceLock<Arc<dyn RoomEvents>>,
}

/// Keeps a connection registered with its tenant; unregisters on drop.
pub struct ConnectionRegistration {
    hub: Arc<Hub>,
    tenant: TenantId,
    conn: ConnId,
}

impl Drop for ConnectionRegistration {
    fn drop(&mut self) {
        let mut connections = self
            .hub
            .connections
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(conns) = connections.get_mut(&self.tenant) {
            conns.remove(&self.conn);
            if conns.is_empty() {
                connections.remove(&self.tenant);
            }
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("rooms", &self.room_count())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Creates an empty hub.
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// Registers the sink told about rooms created and emptied from now on. There is one sink
    /// per hub: returns false (and keeps the first) when one is already set.
    pub fn set_room_events(&self, sink: Arc<dyn RoomEvents>) -> bool {
        self.room_events.set(sink).is_ok()
    }

    fn read_rooms(&self) -> std::sync::RwLockReadGuard<'_, HashMap<RoomKey, Arc<Room>>> {
        self.rooms.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_rooms(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<RoomKey, Arc<Room>>> {
        self.rooms.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a subscriber to a room. Returns true when this created the room on this node (it
    /// had no local subscriber), as the room-events sink is told.
    ///
    /// Atomic with respect to the room's existence: once this returns, the subscriber is in the
    /// room that publishes find, whatever leaves run concurrently.
    pub fn subscribe(&self, key: RoomKey, subscriber: Subscriber) -> bool {
        // Fast path: the room exists and is open; only the room's own lock is taken to write.
        let existing = self.read_rooms().get(&key).cloned();
        let subscriber = match existing {
            Some(room) => match room.try_add(subscriber) {
                Ok(()) => return false,
                Err(subscriber) => subscriber,
            },
            None => subscriber,
        };
        // The room is missing or closed by its last leave: settle it under the map's lock.
        let mut rooms = self.write_rooms();
        let subscriber = match rooms.get(&key) {
            Some(room) => match room.try_add(subscriber) {
                Ok(()) => return false,
                Err(subscriber) => {
                    // Still closed: its last leave has not removed it from the map yet. Replace
                    // it; that leave then finds another room and reports nothing, and the map
                    // never went without the room.
                    let room = Room::new(&key, subscriber);
                    rooms.insert(key, room);
                    return false;
                }
            },
            None => subscriber,
        };
        let room = Room::new(&key, subscriber);
        if let Some(sink) = self.room_events.get() {
            sink.room_created(&key);
        }
        rooms.insert(key, room);
        true
    }

    /// Removes a channel's subscription; drops the room when it becomes empty. Returns true
    /// when this emptied the room on this node, as the room-events sink is told.
    pub fn unsubscribe(&self, key: &RoomKey, conn: ConnId, slot: ChannelSlot) -> bool {
        let Some(room) = self.read_rooms().get(key).cloned() else {
            return false;
        };
        {
            let mut members = room.members_mut();
            let before = members.subscribers.len();
            members
                .subscribers
                .retain(|s| !(s.conn == conn && s.slot == slot));
            if members.closed
                || members.subscribers.len() == before
                || !members.subscribers.is_empty()
            {
                return false;
            }
            members.closed = true;
        }
        let mut rooms = self.write_rooms();
        // A join may have replaced the closed room meanwhile: then the room never left the map.
        if !rooms.get(key).is_some_and(|r| Arc::ptr_eq(r, &room)) {
            return false;
        }
        rooms.remove(key);
        if let Some(sink) = self.room_events.get() {
            sink.room_emptied(key);
        }
        true
    }

    /// Changes what channel `(conn, slot)` of room `key` may receive (a permission established
    /// or recomputed after the join). Returns false when the channel is not in the room.
    pub fn set_reads(&self, key: &RoomKey, conn: ConnId, slot: ChannelSlot, reads: Reads) -> bool {
        let Some(room) = self.read_rooms().get(key).cloned() else {
            return false;
        };
        let mut members = room.members_mut();
        match members
            .subscribers
            .iter_mut()
            .find(|s| s.conn == conn && s.slot == slot)
        {
            Some(sub) => {
                sub.reads = reads;
                true
            }
            None => false,
        }
    }

    /// Returns true when a publish to `key` now would reach channel `(conn, slot)`.
    #[cfg(test)]
    fn reaches(&self, key: &RoomKey, conn: ConnId, slot: ChannelSlot) -> bool {
        self.read_rooms().get(key).is_some_and(|r| {
            r.members()
                .subscribers
                .iter()
                .any(|s| s.conn == conn && s.slot == slot)
        })
    }

    /// Returns the number of local subscribers of a room.
    pub fn subscriber_count(&self, key: &RoomKey) -> usize {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        rooms.get(key).map_or(0, |r| r.members().subscribers.len())
    }

    /// Returns the number of rooms with at least one local subscriber.
    pub fn room_count(&self) -> usize {
        self.rooms.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Queues `message` for every local subscriber of `key` except `exclude`, encoding it once
    /// per wire format. Returns the number of subscribers it was queued for.
    pub fn publish(
        &self,
        key: &RoomKey,
        message: &FanoutMessage,
        exclude: Option<(ConnId, ChannelSlot)>,
    ) -> usize {
        let Some(room) = self.read_rooms().get(key).cloned() else {
            return 0;
        };
        let mut v1: Option<Option<Frame>> = None;
        let mut v2: Option<Option<Frame>> = None;
        let mut delivered = 0;
        let kind = message.kind();
        // Parsed only when a subscriber replayed messages at join.
        let mut db_id: Option<Option<String>> = None;
        let members = room.members();
        for sub in &members.subscribers {
            if exclude == Some((sub.conn, sub.slot)) || !sub.reads.allows(kind) {
                continue;
            }
            if let Some(replayed) = &sub.replayed
                && db_id
                    .get_or_insert_with(|| message.db_id())
                    .as_ref()
                    .is_some_and(|id| replayed.contains(id))
            {
                continue;
            }
            let cached = match sub.vsn {
                Vsn::V1 => &mut v1,
                Vsn::V2 => &mut v2,
            };
            let frame = cached.get_or_insert_with(|| message.encode(sub.vsn, &room.topic));
            if let Some(frame) = frame
                && sub.outbox.push(Outbound::Fanout {
                    slot: sub.slot,
                    kind,
                    frame: frame.clone(),
                })
            {
                delivered += 1;
            }
        }
        delivered
    }

    /// Registers a live connection of `tenant`, for tenant-wide disconnects.
    pub fn register_connection(
        self: &Arc<Self>,
        tenant: TenantId,
        conn: ConnId,
        outbox: Outbox,
    ) -> ConnectionRegistration {
        self.connections
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tenant.clone())
            .or_default()
            .insert(conn, outbox);
        ConnectionRegistration {
            hub: self.clone(),
            tenant,
            conn,
        }
    }

    /// Returns the tenants with live connections on this node.
    pub fn tenants(&self) -> Vec<TenantId> {
        self.connections
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Returns the number of live connections of a tenant on this node.
    pub fn connection_count(&self, tenant: &TenantId) -> usize {
        self.connections
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .map_or(0, HashMap::len)
    }

    /// Hands every connection of `tenant` its new record (an update that needs no disconnect).
    /// Returns the number of connections told.
    pub fn update_tenant(&self, tenant: &TenantId, record: &Arc<Tenant>) -> usize {
        let connections = self.connections.read().unwrap_or_else(|e| e.into_inner());
        let Some(conns) = connections.get(tenant) else {
            return 0;
        };
        conns
            .values()
            .filter(|o| o.push(Outbound::TenantUpdated(record.clone())))
            .count()
    }

    /// Asks every connection of `tenant` to tell its channels and close (code 1012).
    /// Returns the number of connections asked.
    pub fn disconnect_tenant(&self, tenant: &TenantId) -> usize {
        let connections = self.connections.read().unwrap_or_else(|e| e.into_inner());
        let Some(conns) = connections.get(tenant) else {
            return 0;
        };
        conns
            .values()
            .filter(|o| o.push(Outbound::TenantDisconnect))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::sync::mpsc::Receiver;

    use super::*;
    use crate::phoenix::PayloadEncoding;

    fn key(private: bool) -> RoomKey {
        RoomKey {
            tenant: TenantId::from("t1"),
            private,
            sub_topic: "room1".into(),
        }
    }

    fn join(hub: &Hub, key: RoomKey, vsn: Vsn, slot: ChannelSlot) -> (ConnId, Receiver<Outbound>) {
        let (outbox, rx, _) = outbox(8);
        let conn = ConnId::next();
        hub.subscribe(
            key,
            Subscriber {
                conn,
                slot,
                vsn,
                outbox,
                reads: Reads::ALL,
                replayed: None,
            },
        );
        (conn, rx)
    }

    #[derive(Default)]
    struct CountingEvents(std::sync::Mutex<Vec<(RoomKey, bool)>>);

    impl CountingEvents {
        fn counts(&self) -> (usize, usize) {
            let log = self.0.lock().unwrap();
            let created = log.iter().filter(|(_, c)| *c).count();
            (created, log.len() - created)
        }
    }

    impl RoomEvents for CountingEvents {
        fn room_created(&self, room: &RoomKey) {
            self.0.lock().unwrap().push((room.clone(), true));
        }

        fn room_emptied(&self, room: &RoomKey) {
            self.0.lock().unwrap().push((room.clone(), false));
        }
    }

    fn frame(rx: &mut Receiver<Outbound>) -> Option<Frame> {
        match rx.try_recv() {
            Ok(Outbound::Fanout { frame, .. }) => Some(frame),
            _ => None,
        }
    }

    fn user(encoding: PayloadEncoding, payload: &'static [u8]) -> FanoutMessage {
        FanoutMessage::User(UserBroadcast {
            event: "cursor".into(),
            encoding,
            payload: Bytes::from_static(payload),
            metadata: None,
        })
    }

    #[test]
    fn a_replayed_id_is_not_delivered_again_to_that_channel() {
        let hub = Hub::default();
        let (_, mut plain) = join(&hub, key(true), Vsn::V2, 1);
        let (outbox, mut replayer, _) = outbox(8);
        hub.subscribe(
            key(true),
            Subscriber {
                conn: ConnId::next(),
                slot: 1,
                vsn: Vsn::V2,
                outbox,
                reads: Reads::ALL,
                replayed: Some(Arc::new(["a".to_string()].into_iter().collect())),
            },
        );
        let db = |id: &'static str| {
            FanoutMessage::User(UserBroadcast {
                event: "note".into(),
                encoding: PayloadEncoding::Json,
                payload: Bytes::from_static(b"{}"),
                metadata: Some(Bytes::from(format!("{{\"id\":\"{id}\"}}"))),
            })
        };
        assert_eq!(db("a").db_id().as_deref(), Some("a"));
        assert_eq!(
            hub.publish(&key(true), &db("a"), None),
            1,
            "suppressed for the replayer"
        );
        assert!(frame(&mut plain).is_some());
        assert!(replayer.try_recv().is_err());
        assert_eq!(
            hub.publish(&key(true), &db("b"), None),
            2,
            "another id reaches both"
        );
        assert!(frame(&mut replayer).is_some());
        assert_eq!(
            hub.publish(&key(true), &user(PayloadEncoding::Json, b"{}"), None),
            2,
            "no metadata: nothing to suppress"
        );
    }

    #[test]
    fn each_format_gets_its_encoding_and_bytes_are_shared() {
        let hub = Hub::default();
        let (_, mut a) = join(&hub, key(false), Vsn::V2, 1);
        let (_, mut b) = join(&hub, key(false), Vsn::V2, 1);
        let (_, mut c) = join(&hub, key(false), Vsn::V1, 1);
        assert_eq!(
            hub.publish(
                &key(false),
                &user(PayloadEncoding::Json, b"{\"x\":1}"),
                None
            ),
            3
        );
        let (Some(Frame::Binary(fa)), Some(Frame::Binary(fb))) = (frame(&mut a), frame(&mut b))
        else {
            panic!("v2 subscribers get kind 4")
        };
        assert_eq!(
            fa.as_ptr(),
            fb.as_ptr(),
            "one encoding shared by both v2 subscribers"
        );
        assert_eq!(fa[0], 4);
        assert_eq!(
            frame(&mut c),
            Some(Frame::text(
                r#"{"topic":"realtime:room1","event":"broadcast","payload":{"type":"broadcast","event":"cursor","payload":{"x":1}},"ref":null}"#
                    .into()
            ))
        );
    }

    #[test]
    fn binary_payloads_skip_v1_and_self_is_excluded() {
        let hub = Hub::default();
        let (me, mut mine) = join(&hub, key(false), Vsn::V2, 3);
        let (_, mut other) = join(&hub, key(false), Vsn::V2, 1);
        let (_, mut old) = join(&hub, key(false), Vsn::V1, 1);
        let n = hub.publish(
            &key(false),
            &user(PayloadEncoding::Binary, &[1, 2, 3]),
            Some((me, 3)),
        );
        assert_eq!(n, 1);
        assert!(frame(&mut mine).is_none());
        assert!(matches!(frame(&mut other), Some(Frame::Binary(_))));
        assert!(frame(&mut old).is_none());
    }

    /// A presence-only member gets no broadcasts, a broadcast-only member no presence diffs,
    /// and a permission established later (`set_reads`) takes effect at once.
    #[test]
    fn per_subscriber_reads_filter_the_fan_out() {
        let hub = Hub::default();
        let join_with = |reads| {
            let (outbox, rx, _) = outbox(8);
            let conn = ConnId::next();
            hub.subscribe(
                key(true),
                Subscriber {
                    conn,
                    slot: 1,
                    vsn: Vsn::V2,
                    outbox,
                    reads,
                    replayed: None,
                },
            );
            (conn, rx)
        };
        let (_, mut both) = join_with(Reads::ALL);
        let (_, mut presence_only) = join_with(Reads::PRESENCE);
        let (late, mut broadcast_only) = join_with(Reads::BROADCAST);
        let diff = FanoutMessage::Json {
            kind: FanoutKind::Presence,
            event: "presence_diff".into(),
            payload: r#"{"joins":{},"leaves":{}}"#.into(),
        };
        let note = user(PayloadEncoding::Json, b"{}");
        assert_eq!(hub.publish(&key(true), &note, None), 2);
        assert!(frame(&mut both).is_some());
        assert!(frame(&mut presence_only).is_none());
        assert!(frame(&mut broadcast_only).is_some());
        assert_eq!(hub.publish(&key(true), &diff, None), 2);
        assert!(frame(&mut both).is_some());
        assert!(frame(&mut presence_only).is_some());
        assert!(frame(&mut broadcast_only).is_none());
        assert!(hub.set_reads(&key(true), late, 1, Reads::ALL));
        assert!(
            !hub.set_reads(&key(true), late, 2, Reads::ALL),
            "no such channel"
        );
        assert_eq!(hub.publish(&key(true), &diff, None), 3);
        assert!(frame(&mut broadcast_only).is_some());
        assert!(Reads::NONE.allows(FanoutKind::PostgresChanges));
    }

    #[test]
    fn public_and_private_rooms_are_apart_and_empty_rooms_vanish() {
        let hub = Hub::default();
        let (conn, mut public) = join(&hub, key(false), Vsn::V2, 1);
        let (_, mut private) = join(&hub, key(true), Vsn::V2, 1);
        let json = FanoutMessage::Json {
            kind: FanoutKind::Broadcast,
            event: "broadcast".into(),
            payload: r#"{"type":"broadcast"}"#.into(),
        };
        assert_eq!(hub.publish(&key(true), &json, None), 1);
        assert!(frame(&mut public).is_none());
        assert_eq!(
            frame(&mut private),
            Some(Frame::text(
                r#"[null,null,"realtime:room1","broadcast",{"type":"broadcast"}]"#.into()
            ))
        );
        assert_eq!(hub.room_count(), 2);
        hub.unsubscribe(&key(false), conn, 1);
        assert_eq!(hub.room_count(), 1);
        assert_eq!(hub.publish(&key(false), &json, None), 0);
    }

    #[test]
    fn subscribe_and_unsubscribe_report_rooms_created_and_emptied() {
        let hub = Hub::default();
        let events = Arc::new(CountingEvents::default());
        assert!(hub.set_room_events(events.clone()));
        assert!(
            !hub.set_room_events(Arc::new(CountingEvents::default())),
            "one sink"
        );
        let sub = |conn| Subscriber {
            conn,
            slot: 1,
            vsn: Vsn::V2,
            outbox: outbox(4).0,
            reads: Reads::ALL,
            replayed: None,
        };
        let (a, b) = (ConnId::next(), ConnId::next());
        assert!(
            hub.subscribe(key(false), sub(a)),
            "first subscriber creates the room"
        );
        assert!(!hub.subscribe(key(false), sub(b)));
        assert!(
            hub.subscribe(key(true), sub(a)),
            "the private room is another room"
        );
        assert!(!hub.unsubscribe(&key(false), a, 1));
        assert!(
            !hub.unsubscribe(&key(false), a, 1),
            "already gone: nothing to report"
        );
        assert!(
            hub.unsubscribe(&key(false), b, 1),
            "last leave empties the room"
        );
        assert!(!hub.unsubscribe(&key(false), b, 1));
        assert!(hub.subscribe(key(false), sub(a)), "created again");
        assert_eq!(
            *events.0.lock().unwrap(),
            vec![
                (key(false), true),
                (key(true), true),
                (key(false), false),
                (key(false), true)
            ]
        );
    }

    #[test]
    fn tenant_connections_register_and_unregister() {
        let hub = Hub::new();
        let (outbox, mut rx, _) = outbox(4);
        let reg = hub.register_connection(TenantId::from("t1"), ConnId::next(), outbox);
        assert_eq!(hub.connection_count(&TenantId::from("t1")), 1);
        assert_eq!(hub.disconnect_tenant(&TenantId::from("t1")), 1);
        assert!(matches!(rx.try_recv(), Ok(Outbound::TenantDisconnect)));
        drop(reg);
        assert_eq!(hub.connection_count(&TenantId::from("t1")), 0);
        assert_eq!(hub.disconnect_tenant(&TenantId::from("t1")), 0);
    }

    /// Joins and leaves two rooms from many OS threads in a tight loop: every channel that
    /// `subscribe` returned for must be in the room a publish finds, and the channels still
    /// subscribed at the end get a publish. Before rooms were closed under their own lock, a
    /// last leave could drop the room between the map lookup and the push, and the joining
    /// channel received nothing, ever.
    #[test]
    fn concurrent_joins_and_leaves_never_strand_a_subscriber() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 20_000;
        let hub = Hub::default();
        let events = Arc::new(CountingEvents::default());
        assert!(hub.set_room_events(events.clone()));
        let stranded = std::sync::atomic::AtomicUsize::new(0);
        let kept: Vec<(ConnId, Receiver<Outbound>)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (hub, stranded) = (&hub, &stranded);
                    s.spawn(move || {
                        let room = key(t % 2 == 0);
                        let mut last = None;
                        for round in 0..ROUNDS {
                            let (outbox, rx, _) = outbox(4);
                            let conn = ConnId::next();
                            hub.subscribe(
                                room.clone(),
                                Subscriber {
                                    conn,
                                    slot: 1,
                                    vsn: Vsn::V1,
                                    outbox,
                                    reads: Reads::ALL,
                                    replayed: None,
                                },
                            );
                            if !hub.reaches(&room, conn, 1) {
                                stranded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            if round + 1 == ROUNDS {
                                last = Some((conn, rx));
                            } else {
                                hub.unsubscribe(&room, conn, 1);
                            }
                        }
                        last.expect("the last round keeps its channel")
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("worker"))
                .collect()
        });
        assert_eq!(
            stranded.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "subscribed channels a publish did not reach"
        );
        let ping = FanoutMessage::Json {
            kind: FanoutKind::Broadcast,
            event: "broadcast".into(),
            payload: "{}".into(),
        };
        assert_eq!(
            hub.publish(&key(false), &ping, None) + hub.publish(&key(true), &ping, None),
            THREADS,
            "every kept channel is reachable"
        );
        for (_, mut rx) in kept {
            assert!(matches!(rx.try_recv(), Ok(Outbound::Fanout { .. })));
        }
        assert_eq!(hub.room_count(), 2);
        // Creations and emptyings alternate per room, so the counts differ by the rooms left.
        let (created, emptied) = events.counts();
        assert_eq!(created - emptied, 2);
    }
}
