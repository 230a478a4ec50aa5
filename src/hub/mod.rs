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
use std::sync::{Arc, RwLock};

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
        /// Event name, e.g. `broadcast`.
        event: &'static str,
        /// Payload JSON text.
        payload: Arc<str>,
    },
}

impl FanoutMessage {
    /// Returns the size of the user payload, for payload limits.
    pub fn payload_len(&self) -> usize {
        match self {
            FanoutMessage::User(m) => m.payload.len(),
            FanoutMessage::Json { payload, .. } => payload.len(),
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
            (FanoutMessage::Json { event, payload }, vsn) => Some(Frame::text(
                phoenix::encode_message(vsn, None, None, topic, event, payload),
            )),
        }
    }
}

struct Room {
    /// `realtime:<sub_topic>`, the topic every subscriber joined with.
    topic: String,
    subscribers: RwLock<Vec<Subscriber>>,
}

/// This node's rooms and tenant connections.
#[derive(Default)]
pub struct Hub {
    // std locks: held for short map operations only, never across an await.
    rooms: RwLock<HashMap<RoomKey, Arc<Room>>>,
    connections: RwLock<HashMap<TenantId, HashMap<ConnId, Outbox>>>,
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

    /// Adds a subscriber to a room.
    pub fn subscribe(&self, key: RoomKey, subscriber: Subscriber) {
        let room = {
            let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
            rooms
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(Room {
                        topic: format!("{}{}", phoenix::TOPIC_PREFIX, key.sub_topic),
                        subscribers: RwLock::new(Vec::new()),
                    })
                })
                .clone()
        };
        room.subscribers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(subscriber);
    }

    /// Removes a channel's subscription; drops the room when it becomes empty.
    pub fn unsubscribe(&self, key: &RoomKey, conn: ConnId, slot: ChannelSlot) {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        let Some(room) = rooms.get(key) else { return };
        let now_empty = {
            let mut subs = room.subscribers.write().unwrap_or_else(|e| e.into_inner());
            subs.retain(|s| !(s.conn == conn && s.slot == slot));
            subs.is_empty()
        };
        if now_empty {
            rooms.remove(key);
        }
    }

    /// Returns the number of local subscribers of a room.
    pub fn subscriber_count(&self, key: &RoomKey) -> usize {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        rooms.get(key).map_or(0, |r| {
            r.subscribers
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .len()
        })
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
        let Some(room) = self
            .rooms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
        else {
            return 0;
        };
        let mut v1: Option<Option<Frame>> = None;
        let mut v2: Option<Option<Frame>> = None;
        let mut delivered = 0;
        let subs = room.subscribers.read().unwrap_or_else(|e| e.into_inner());
        for sub in subs.iter() {
            if exclude == Some((sub.conn, sub.slot)) {
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
            },
        );
        (conn, rx)
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

    #[test]
    fn public_and_private_rooms_are_apart_and_empty_rooms_vanish() {
        let hub = Hub::default();
        let (conn, mut public) = join(&hub, key(false), Vsn::V2, 1);
        let (_, mut private) = join(&hub, key(true), Vsn::V2, 1);
        let json = FanoutMessage::Json {
            event: "broadcast",
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
}
