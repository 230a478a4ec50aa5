//! Conversions between this node's values and the bus frames of `realtime_proto::bus`, with
//! the validation every value from a peer goes through before it is used.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use realtime_proto::bus as wire;

use crate::hub::{FanoutKind, FanoutMessage, RoomKey};
use crate::phoenix::{PayloadEncoding, UserBroadcast};
use crate::presence::crdt::Digest;
use crate::tenants::TenantChange;
use crate::types::{NodeId, TenantId};

/// Longest tenant external id, topic or event name accepted from a peer.
const MAX_NAME_BYTES: usize = 1024;
/// Most replicas or nodes in a digest from a peer.
const MAX_DIGEST_ENTRIES: usize = 65_536;

/// A value from a peer that breaks a rule this node relies on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid peer value: {0}")]
pub(crate) struct InvalidPeerValue(pub(crate) &'static str);

fn name(text: &str, what: &'static str) -> Result<(), InvalidPeerValue> {
    if text.is_empty() || text.len() > MAX_NAME_BYTES || text.chars().any(char::is_control) {
        return Err(InvalidPeerValue(what));
    }
    Ok(())
}

/// The wire form of a room.
pub(crate) fn room_to_wire(room: &RoomKey) -> wire::Room {
    wire::Room {
        tenant: room.tenant.as_str().to_string(),
        private: room.private,
        sub_topic: room.sub_topic.to_string(),
    }
}

/// A room from a peer. The topic may be empty (`realtime:` alone is a valid topic).
pub(crate) fn room_from_wire(room: wire::Room) -> Result<RoomKey, InvalidPeerValue> {
    name(&room.tenant, "tenant id")?;
    if room.sub_topic.len() > MAX_NAME_BYTES || room.sub_topic.chars().any(char::is_control) {
        return Err(InvalidPeerValue("topic"));
    }
    Ok(RoomKey {
        tenant: TenantId::new(room.tenant),
        private: room.private,
        sub_topic: room.sub_topic.into(),
    })
}

fn kind_to_wire(kind: FanoutKind) -> u8 {
    match kind {
        FanoutKind::Broadcast => 0,
        FanoutKind::Presence => 1,
        FanoutKind::PostgresChanges => 2,
    }
}

fn kind_from_wire(kind: u8) -> Result<FanoutKind, InvalidPeerValue> {
    match kind {
        0 => Ok(FanoutKind::Broadcast),
        1 => Ok(FanoutKind::Presence),
        2 => Ok(FanoutKind::PostgresChanges),
        _ => Err(InvalidPeerValue("message kind")),
    }
}

/// The wire form of a published message.
pub(crate) fn message_to_wire(message: &FanoutMessage) -> wire::Message {
    match message {
        FanoutMessage::User(m) => wire::Message::User {
            event: m.event.clone(),
            encoding: match m.encoding {
                PayloadEncoding::Json => wire::PayloadEncoding::Json,
                PayloadEncoding::Binary => wire::PayloadEncoding::Binary,
            },
            payload: m.payload.to_vec(),
            metadata: m.metadata.as_ref().map(|b| b.to_vec()),
        },
        FanoutMessage::Json {
            kind,
            event,
            payload,
        } => wire::Message::Json {
            kind: kind_to_wire(*kind),
            event: event.as_str().to_string(),
            payload: payload.to_string(),
        },
    }
}

fn is_json(text: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok()
}

fn is_json_object(text: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(text).is_ok()
}

/// A message from a peer: names bounded, JSON payloads and metadata well-formed, since they
/// are written into client frames as they are.
pub(crate) fn message_from_wire(message: wire::Message) -> Result<FanoutMessage, InvalidPeerValue> {
    match message {
        wire::Message::User {
            event,
            encoding,
            payload,
            metadata,
        } => {
            name(&event, "event name")?;
            let encoding = match encoding {
                wire::PayloadEncoding::Json => {
                    if !is_json(&payload) {
                        return Err(InvalidPeerValue("JSON payload"));
                    }
                    PayloadEncoding::Json
                }
                wire::PayloadEncoding::Binary => PayloadEncoding::Binary,
            };
            if let Some(meta) = &metadata
                && !is_json_object(meta)
            {
                return Err(InvalidPeerValue("metadata"));
            }
            Ok(FanoutMessage::User(UserBroadcast {
                event,
                encoding,
                payload: Bytes::from(payload),
                metadata: metadata.map(Bytes::from),
            }))
        }
        wire::Message::Json {
            kind,
            event,
            payload,
        } => {
            name(&event, "event name")?;
            if !is_json(payload.as_bytes()) {
                return Err(InvalidPeerValue("JSON payload"));
            }
            Ok(FanoutMessage::Json {
                kind: kind_from_wire(kind)?,
                event: event.into(),
                payload: Arc::from(payload),
            })
        }
    }
}

/// The wire form of a presence digest.
pub(crate) fn digest_to_wire(digest: &Digest) -> wire::PresenceDigest {
    wire::PresenceDigest {
        floors: digest
            .floors
            .iter()
            .map(|(node, floor)| (node.as_str().to_string(), *floor))
            .collect(),
        clocks: digest
            .clocks
            .iter()
            .map(|(replica, counter)| (crate::bus::node_run(replica), *counter))
            .collect(),
    }
}

/// A digest from a peer (bounded, names valid; duplicates keep the last value).
pub(crate) fn digest_from_wire(digest: wire::PresenceDigest) -> Result<Digest, InvalidPeerValue> {
    if digest.floors.len() > MAX_DIGEST_ENTRIES || digest.clocks.len() > MAX_DIGEST_ENTRIES {
        return Err(InvalidPeerValue("digest size"));
    }
    let mut floors = BTreeMap::new();
    for (node, floor) in digest.floors {
        name(&node, "node name")?;
        floors.insert(NodeId::new(node.as_str()), floor);
    }
    let mut clocks = BTreeMap::new();
    for (run, counter) in digest.clocks {
        name(&run.name, "node name")?;
        clocks.insert(crate::bus::node_incarnation(&run), counter);
    }
    Ok(Digest { floors, clocks })
}

/// The wire code of a tenant change.
pub(crate) fn change_to_wire(change: TenantChange) -> u8 {
    match change {
        TenantChange::Created => 0,
        TenantChange::Updated => 1,
        TenantChange::Deleted => 2,
        TenantChange::Reloaded => 3,
        TenantChange::Shutdown => 4,
    }
}

/// A tenant change code from a peer.
pub(crate) fn change_from_wire(code: u8) -> Result<TenantChange, InvalidPeerValue> {
    Ok(match code {
        0 => TenantChange::Created,
        1 => TenantChange::Updated,
        2 => TenantChange::Deleted,
        3 => TenantChange::Reloaded,
        4 => TenantChange::Shutdown,
        _ => return Err(InvalidPeerValue("tenant change")),
    })
}

/// A tenant id from a peer.
pub(crate) fn tenant_from_wire(tenant: String) -> Result<TenantId, InvalidPeerValue> {
    name(&tenant, "tenant id")?;
    Ok(TenantId::new(tenant))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeIncarnation;

    fn room() -> RoomKey {
        RoomKey {
            tenant: TenantId::new("t1"),
            private: true,
            sub_topic: "room:1".into(),
        }
    }

    #[test]
    fn rooms_round_trip_and_bad_names_are_refused() {
        assert_eq!(room_from_wire(room_to_wire(&room())).unwrap(), room());
        let mut bad = room_to_wire(&room());
        bad.tenant = String::new();
        assert!(room_from_wire(bad).is_err());
        let mut bad = room_to_wire(&room());
        bad.sub_topic = "a\nb".into();
        assert!(room_from_wire(bad).is_err());
        let mut bad = room_to_wire(&room());
        bad.sub_topic = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(room_from_wire(bad).is_err());
    }

    #[test]
    fn messages_round_trip() {
        let user = FanoutMessage::User(UserBroadcast {
            event: "cursor".into(),
            encoding: PayloadEncoding::Binary,
            payload: Bytes::from_static(&[0, 1, 255]),
            metadata: Some(Bytes::from_static(br#"{"id":"x"}"#)),
        });
        let back = message_from_wire(message_to_wire(&user)).unwrap();
        assert_eq!(message_to_wire(&back), message_to_wire(&user));
        let json = FanoutMessage::Json {
            kind: FanoutKind::Broadcast,
            event: "broadcast".into(),
            payload: r#"{"a":1}"#.into(),
        };
        let back = message_from_wire(message_to_wire(&json)).unwrap();
        assert_eq!(back.kind(), FanoutKind::Broadcast);
        assert_eq!(message_to_wire(&back), message_to_wire(&json));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let bad_json = wire::Message::Json {
            kind: 0,
            event: "broadcast".into(),
            payload: "{not json".into(),
        };
        assert_eq!(
            message_from_wire(bad_json).unwrap_err(),
            InvalidPeerValue("JSON payload")
        );
        let bad_kind = wire::Message::Json {
            kind: 9,
            event: "broadcast".into(),
            payload: "{}".into(),
        };
        assert!(message_from_wire(bad_kind).is_err());
        let bad_meta = wire::Message::User {
            event: "e".into(),
            encoding: wire::PayloadEncoding::Binary,
            payload: vec![1],
            metadata: Some(b"[1]".to_vec()),
        };
        assert_eq!(
            message_from_wire(bad_meta).unwrap_err(),
            InvalidPeerValue("metadata")
        );
        let bad_user_json = wire::Message::User {
            event: "e".into(),
            encoding: wire::PayloadEncoding::Json,
            payload: b"\xff".to_vec(),
            metadata: None,
        };
        assert!(message_from_wire(bad_user_json).is_err());
    }

    #[test]
    fn digests_and_changes_round_trip() {
        let mut digest = Digest::default();
        digest.floors.insert(NodeId::new("a"), 5);
        digest.clocks.insert(
            NodeIncarnation {
                node: NodeId::new("a"),
                incarnation: 7,
            },
            42,
        );
        assert_eq!(digest_from_wire(digest_to_wire(&digest)).unwrap(), digest);
        for change in [
            TenantChange::Created,
            TenantChange::Updated,
            TenantChange::Deleted,
            TenantChange::Reloaded,
            TenantChange::Shutdown,
        ] {
            assert_eq!(change_from_wire(change_to_wire(change)).unwrap(), change);
        }
        assert!(change_from_wire(5).is_err());
    }
}
