//! Phoenix wire values: event names, the v1 (`vsn=1.0.0`, JSON objects) and v2 (`vsn=2.0.0`,
//! JSON arrays + binary user-broadcast frames) codecs. Pure code: bytes in, values out.
//!
//! Decoding borrows nothing from the socket: an [`Inbound`] owns its strings, and a JSON payload is
//! kept as raw text ([`RawJson`]) so that forwarded payloads are never re-serialized. Encoding
//! writes frames for one subscriber format at a time; fan-out code encodes a message once per
//! format and shares the bytes. The payloads of control frames (reply responses, `system`
//! messages) are built here too, so channel code writes no JSON by hand.

mod decode;
mod encode;
mod payload;

pub use decode::{decode_binary, decode_text};
pub use encode::{encode_message, encode_reply, encode_user_broadcast, user_broadcast_json};
pub use payload::{
    EMPTY_OBJECT, PAYLOAD_SIZE_EXCEEDED_RESPONSE, SERVER_DISCONNECT_PAYLOAD, STATUS_ERROR,
    STATUS_OK, UNMATCHED_TOPIC_RESPONSE, join_ok_response, reason_response, system_error_payload,
};

use bytes::Bytes;

/// `phx_join`
pub const EVENT_JOIN: &str = "phx_join";
/// `phx_leave`
pub const EVENT_LEAVE: &str = "phx_leave";
/// `phx_reply`
pub const EVENT_REPLY: &str = "phx_reply";
/// `phx_close`
pub const EVENT_CLOSE: &str = "phx_close";
/// `heartbeat` (on topic [`TOPIC_PHOENIX`])
pub const EVENT_HEARTBEAT: &str = "heartbeat";
/// `broadcast`
pub const EVENT_BROADCAST: &str = "broadcast";
/// `presence`
pub const EVENT_PRESENCE: &str = "presence";
/// `presence_state`
pub const EVENT_PRESENCE_STATE: &str = "presence_state";
/// `presence_diff`
pub const EVENT_PRESENCE_DIFF: &str = "presence_diff";
/// `access_token`
pub const EVENT_ACCESS_TOKEN: &str = "access_token";
/// `system`
pub const EVENT_SYSTEM: &str = "system";
/// `postgres_changes`
pub const EVENT_POSTGRES_CHANGES: &str = "postgres_changes";
/// The socket-level topic of heartbeats.
pub const TOPIC_PHOENIX: &str = "phoenix";
/// Prefix of every channel topic.
pub const TOPIC_PREFIX: &str = "realtime:";

/// Binary frame kind of a client user-broadcast push (client → server).
pub const KIND_USER_BROADCAST_PUSH: u8 = 3;
/// Binary frame kind of a user broadcast (server → client); the only kind realtime-js decodes.
pub const KIND_USER_BROADCAST: u8 = 4;

/// Serializer version negotiated by the `vsn` query parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vsn {
    /// `1.0.0`: JSON objects, no binary frames.
    V1,
    /// `2.0.0`: JSON arrays and binary user-broadcast frames.
    V2,
}

impl Vsn {
    /// Parses the `vsn` query parameter: missing means 1.0.0; only `1.0.x` and `2.0.x` are
    /// accepted (the original's `~> 1.0.0` / `~> 2.0.0`).
    pub fn from_query(vsn: Option<&str>) -> Option<Vsn> {
        let Some(v) = vsn else { return Some(Vsn::V1) };
        let mut parts = v.split('.');
        let (major, minor, patch) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || minor != "0"
            || patch.is_empty()
            || !patch.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        match major {
            "1" => Some(Vsn::V1),
            "2" => Some(Vsn::V2),
            _ => None,
        }
    }
}

/// A JSON value kept as its exact text (validated once when decoded).
pub type RawJson = Box<serde_json::value::RawValue>;

/// Encoding byte of a user-broadcast payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadEncoding {
    /// 0: raw bytes (an `ArrayBuffer` in realtime-js).
    Binary,
    /// 1: UTF-8 JSON text.
    Json,
}

impl PayloadEncoding {
    /// Returns the encoding byte of kind-3/kind-4 frames.
    pub fn as_byte(self) -> u8 {
        match self {
            PayloadEncoding::Binary => 0,
            PayloadEncoding::Json => 1,
        }
    }
}

/// A user broadcast as it travels inside the server: event name plus payload bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserBroadcast {
    /// The user event name, e.g. `cursor`.
    pub event: String,
    /// How `payload` is encoded.
    pub encoding: PayloadEncoding,
    /// Payload bytes: valid JSON text when `encoding` is `Json`.
    pub payload: Bytes,
    /// Metadata JSON object text (kind-4 metadata), if any.
    pub metadata: Option<Bytes>,
}

/// The payload of a decoded client frame.
#[derive(Debug)]
pub enum InboundPayload {
    /// A JSON payload (text frames), kept as raw text.
    Json(RawJson),
    /// A kind-3 binary user-broadcast push; its event is always `broadcast`.
    UserBroadcast(UserBroadcast),
}

/// One decoded client frame.
#[derive(Debug)]
pub struct Inbound {
    /// `join_ref` (absent or null → `None`; numbers are taken as their decimal text).
    pub join_ref: Option<String>,
    /// `ref` (as for `join_ref`).
    pub reference: Option<String>,
    /// Topic, e.g. `realtime:room1` or `phoenix`.
    pub topic: String,
    /// Event name.
    pub event: String,
    /// Payload.
    pub payload: InboundPayload,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsn_query_parsing_follows_the_original() {
        assert_eq!(Vsn::from_query(None), Some(Vsn::V1));
        assert_eq!(Vsn::from_query(Some("1.0.0")), Some(Vsn::V1));
        assert_eq!(Vsn::from_query(Some("2.0.0")), Some(Vsn::V2));
        assert_eq!(Vsn::from_query(Some("2.0.7")), Some(Vsn::V2));
        assert_eq!(Vsn::from_query(Some("2.1.0")), None);
        assert_eq!(Vsn::from_query(Some("3.0.0")), None);
        assert_eq!(Vsn::from_query(Some("2")), None);
        assert_eq!(Vsn::from_query(Some("abc")), None);
        assert_eq!(Vsn::from_query(Some("2.0.0.1")), None);
    }
}
