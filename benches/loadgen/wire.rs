//! Phoenix frames as the load generator and the baseline server see them (pure, no I/O).
//!
//! Text frames are v1 JSON objects or v2 JSON arrays; binary frames are kind 3 (client → server
//! user broadcast) and kind 4 (server → client user broadcast), as in `PROTOCOL.md` section 2.
//! Every published payload carries a stamp `"lg":[sent_ns,seq,step]`; receivers find it with a
//! byte search instead of a full JSON parse, so the generator spends its one core on sockets.

use serde_json::{Value, json};

/// Topic of socket-level messages (heartbeats).
pub const PHOENIX_TOPIC: &str = "phoenix";
/// User event name of every published broadcast.
pub const USER_EVENT: &str = "lg";
/// Binary kind of a client → server user broadcast push.
pub const KIND_USER_PUSH: u8 = 3;
/// Binary kind of a server → client user broadcast.
pub const KIND_USER_BROADCAST: u8 = 4;
/// Payload encoding byte of a JSON user payload.
pub const ENCODING_JSON: u8 = 1;

const STAMP_MARK: &[u8] = b"\"lg\":[";

/// Serializer version of a socket (`vsn` query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vsn {
    /// `1.0.0`: JSON objects, text only.
    V1,
    /// `2.0.0`: JSON arrays plus binary kinds 3 and 4.
    V2,
}

impl Vsn {
    /// Returns the `vsn` query value.
    pub fn query_value(self) -> &'static str {
        match self {
            Vsn::V1 => "1.0.0",
            Vsn::V2 => "2.0.0",
        }
    }

    /// Reads a `vsn` query value; missing means v1, as in Phoenix.
    pub fn from_query(query: Option<&str>) -> Vsn {
        let vsn = query
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("vsn="));
        match vsn {
            Some(v) if v.starts_with("2.") => Vsn::V2,
            _ => Vsn::V1,
        }
    }
}

/// What a published payload carries for the receivers to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Send time, nanoseconds since the generator's start `Instant`.
    pub sent_ns: u64,
    /// Publisher-local sequence number.
    pub seq: u64,
    /// Index of the step the message belongs to (`u32::MAX` for warm-up).
    pub step: u32,
}

/// Builds a user payload JSON object carrying `stamp`, padded to at least `size` bytes.
pub fn encode_payload(stamp: Stamp, size: usize) -> String {
    let mut out = format!(
        "{{\"lg\":[{},{},{}],\"pad\":\"",
        stamp.sent_ns, stamp.seq, stamp.step
    );
    let closing = 2; // `"}`
    let pad = size.saturating_sub(out.len() + closing);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

/// Finds the stamp in any frame or payload bytes that contain one.
pub fn find_stamp(bytes: &[u8]) -> Option<Stamp> {
    let at = bytes
        .windows(STAMP_MARK.len())
        .position(|w| w == STAMP_MARK)?;
    let mut rest = &bytes[at + STAMP_MARK.len()..];
    let mut numbers = [0u64; 3];
    for (i, slot) in numbers.iter_mut().enumerate() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 20 {
            return None;
        }
        let mut value: u64 = 0;
        for &d in &rest[..digits] {
            value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        *slot = value;
        let sep = if i == 2 { b']' } else { b',' };
        if rest.get(digits) != Some(&sep) {
            return None;
        }
        rest = &rest[digits + 1..];
    }
    Some(Stamp {
        sent_ns: numbers[0],
        seq: numbers[1],
        step: u32::try_from(numbers[2]).ok()?,
    })
}

/// A decoded text frame (either version).
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// `join_ref` (always `None` for v1 outbound frames).
    pub join_ref: Option<String>,
    /// `ref`.
    pub msg_ref: Option<String>,
    /// `topic`.
    pub topic: String,
    /// `event`.
    pub event: String,
    /// `payload`.
    pub payload: Value,
}

fn opt_string(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// Decodes a text frame; `None` for anything malformed (such frames are dropped, as the server does).
pub fn decode_text(vsn: Vsn, text: &str) -> Option<Envelope> {
    let value: Value = serde_json::from_str(text).ok()?;
    match vsn {
        Vsn::V1 => {
            let obj = value.as_object()?;
            Some(Envelope {
                join_ref: opt_string(obj.get("join_ref")),
                msg_ref: opt_string(obj.get("ref")),
                topic: obj.get("topic")?.as_str()?.to_owned(),
                event: obj.get("event")?.as_str()?.to_owned(),
                payload: obj.get("payload")?.clone(),
            })
        }
        Vsn::V2 => {
            let arr = value.as_array()?;
            if arr.len() < 5 {
                return None;
            }
            Some(Envelope {
                join_ref: opt_string(arr.first()),
                msg_ref: opt_string(arr.get(1)),
                topic: arr[2].as_str()?.to_owned(),
                event: arr[3].as_str()?.to_owned(),
                payload: arr[4].clone(),
            })
        }
    }
}

/// Encodes a text frame. v1 drops `join_ref` on server frames only; the client always sends it.
pub fn encode_text(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Value,
) -> String {
    match vsn {
        Vsn::V1 => {
            let mut obj = json!({
                "topic": topic,
                "event": event,
                "payload": payload,
                "ref": msg_ref,
            });
            if let Some(j) = join_ref {
                obj["join_ref"] = json!(j);
            }
            obj.to_string()
        }
        Vsn::V2 => json!([join_ref, msg_ref, topic, event, payload]).to_string(),
    }
}

/// Builds the `phx_join` of a broadcast-only channel, public or private (RLS-checked).
pub fn join_frame(
    vsn: Vsn,
    topic: &str,
    join_ref: &str,
    access_token: &str,
    private: bool,
) -> String {
    let payload = json!({
        "config": {
            "broadcast": {"self": false, "ack": false},
            "presence": {"enabled": false},
            "postgres_changes": [],
            "private": private,
        },
        "access_token": access_token,
    });
    encode_text(
        vsn,
        Some(join_ref),
        Some(join_ref),
        topic,
        "phx_join",
        &payload,
    )
}

/// Builds a socket heartbeat.
pub fn heartbeat_frame(vsn: Vsn, msg_ref: &str) -> String {
    encode_text(
        vsn,
        None,
        Some(msg_ref),
        PHOENIX_TOPIC,
        "heartbeat",
        &json!({}),
    )
}

/// Builds a JSON text `broadcast` push (v1 publishers) around a user payload that is JSON text.
pub fn broadcast_text_frame(
    vsn: Vsn,
    topic: &str,
    join_ref: &str,
    msg_ref: &str,
    user_payload: &str,
) -> String {
    let inner =
        format!("{{\"type\":\"broadcast\",\"event\":\"{USER_EVENT}\",\"payload\":{user_payload}}}");
    let topic = json!(topic);
    match vsn {
        Vsn::V1 => format!(
            "{{\"topic\":{topic},\"event\":\"broadcast\",\"payload\":{inner},\"ref\":\"{msg_ref}\",\"join_ref\":\"{join_ref}\"}}"
        ),
        Vsn::V2 => format!("[\"{join_ref}\",\"{msg_ref}\",{topic},\"broadcast\",{inner}]"),
    }
}

/// Builds a fan-out text broadcast as the server sends it (`join_ref` and `ref` null).
pub fn broadcast_out_text(vsn: Vsn, topic: &str, broadcast_payload: &str) -> String {
    let topic = json!(topic);
    match vsn {
        Vsn::V1 => format!(
            "{{\"topic\":{topic},\"event\":\"broadcast\",\"payload\":{broadcast_payload},\"ref\":null}}"
        ),
        Vsn::V2 => format!("[null,null,{topic},\"broadcast\",{broadcast_payload}]"),
    }
}

/// Wraps a raw JSON user payload into the `{"type":"broadcast",...}` map of a text broadcast.
pub fn broadcast_map(event: &str, user_payload_json: &[u8]) -> String {
    let event = json!(event);
    format!(
        "{{\"type\":\"broadcast\",\"event\":{event},\"payload\":{}}}",
        String::from_utf8_lossy(user_payload_json)
    )
}

/// A binary user broadcast, kind 3 (client → server) or kind 4 (server → client), borrowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserBroadcast<'a> {
    /// Kind 3 only: the channel's join_ref.
    pub join_ref: &'a [u8],
    /// Kind 3 only: the push ref.
    pub msg_ref: &'a [u8],
    /// Channel topic (`realtime:<name>`).
    pub topic: &'a [u8],
    /// User event name.
    pub event: &'a [u8],
    /// Metadata JSON text or empty.
    pub meta: &'a [u8],
    /// 0 = binary, anything else = JSON.
    pub encoding: u8,
    /// User payload bytes.
    pub payload: &'a [u8],
}

fn len8(field: &[u8]) -> u8 {
    // Callers pass topic/event/refs that the protocol limits to 255 bytes.
    debug_assert!(
        field.len() <= 255,
        "binary frame field longer than 255 bytes"
    );
    field.len() as u8
}

/// Encodes a kind-3 push (no metadata).
pub fn encode_kind3(
    join_ref: &str,
    msg_ref: &str,
    topic: &str,
    event: &str,
    encoding: u8,
    payload: &[u8],
) -> Vec<u8> {
    let fields = [
        join_ref.as_bytes(),
        msg_ref.as_bytes(),
        topic.as_bytes(),
        event.as_bytes(),
    ];
    let mut out =
        Vec::with_capacity(7 + fields.iter().map(|f| f.len()).sum::<usize>() + payload.len());
    out.push(KIND_USER_PUSH);
    for f in fields {
        out.push(len8(f));
    }
    out.push(0); // metadata length
    out.push(encoding);
    for f in fields {
        out.extend_from_slice(f);
    }
    out.extend_from_slice(payload);
    out
}

/// Encodes a kind-4 user broadcast.
pub fn encode_kind4(
    topic: &[u8],
    event: &[u8],
    meta: &[u8],
    encoding: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + topic.len() + event.len() + meta.len() + payload.len());
    out.extend_from_slice(&[
        KIND_USER_BROADCAST,
        len8(topic),
        len8(event),
        len8(meta),
        encoding,
    ]);
    out.extend_from_slice(topic);
    out.extend_from_slice(event);
    out.extend_from_slice(meta);
    out.extend_from_slice(payload);
    out
}

fn split_fields<'a, const N: usize>(
    body: &'a [u8],
    lens: &[u8; N],
) -> Option<([&'a [u8]; N], &'a [u8])> {
    let mut fields: [&[u8]; N] = [&[]; N];
    let mut rest = body;
    for (slot, &len) in fields.iter_mut().zip(lens) {
        let len = usize::from(len);
        if rest.len() < len {
            return None;
        }
        let (head, tail) = rest.split_at(len);
        *slot = head;
        rest = tail;
    }
    Some((fields, rest))
}

/// Decodes a kind-3 push; `None` if the frame is not kind 3 or is truncated.
pub fn decode_kind3(frame: &[u8]) -> Option<UserBroadcast<'_>> {
    if frame.len() < 7 || frame[0] != KIND_USER_PUSH {
        return None;
    }
    let lens = [frame[1], frame[2], frame[3], frame[4], frame[5]];
    let ([join_ref, msg_ref, topic, event, meta], payload) = split_fields(&frame[7..], &lens)?;
    Some(UserBroadcast {
        join_ref,
        msg_ref,
        topic,
        event,
        meta,
        encoding: frame[6],
        payload,
    })
}

/// Decodes a kind-4 broadcast; `None` if the frame is not kind 4 or is truncated.
pub fn decode_kind4(frame: &[u8]) -> Option<UserBroadcast<'_>> {
    if frame.len() < 5 || frame[0] != KIND_USER_BROADCAST {
        return None;
    }
    let lens = [frame[1], frame[2], frame[3]];
    let ([topic, event, meta], payload) = split_fields(&frame[5..], &lens)?;
    Some(UserBroadcast {
        join_ref: &[],
        msg_ref: &[],
        topic,
        event,
        meta,
        encoding: frame[4],
        payload,
    })
}

/// Reads a `phx_reply` status (`"ok"`, `"error"`, …) from its payload.
pub fn reply_status(payload: &Value) -> Option<&str> {
    payload.get("status")?.as_str()
}

// The bench target is compiled with `cfg(test)` but without a harness, so the `#[test]`
// functions vanish there and their helpers look unused; `tests/loadgen.rs` runs them.
#[cfg(test)]
#[allow(dead_code, unused_imports)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        sent_ns: 123_456_789_012,
        seq: 42,
        step: 3,
    };

    #[test]
    fn payload_is_json_of_requested_size_and_carries_the_stamp() {
        for size in [0, 10, 64, 100, 1024] {
            let p = encode_payload(STAMP, size);
            assert!(p.len() >= size, "size {size} gave {}", p.len());
            if size > 60 {
                assert_eq!(p.len(), size);
            }
            let v: Value = serde_json::from_str(&p).unwrap();
            assert_eq!(v["lg"], json!([123_456_789_012u64, 42, 3]));
            assert_eq!(find_stamp(p.as_bytes()), Some(STAMP));
        }
    }

    #[test]
    fn find_stamp_rejects_truncated_or_foreign_bytes() {
        assert_eq!(find_stamp(b"{\"x\":1}"), None);
        assert_eq!(find_stamp(b"{\"lg\":[1,2"), None);
        assert_eq!(find_stamp(b"{\"lg\":[1,2,x]}"), None);
        assert_eq!(find_stamp(b"{\"lg\":[99999999999999999999999,2,3]}"), None);
        assert_eq!(
            find_stamp(b"xx{\"lg\":[7,8,9]}"),
            Some(Stamp {
                sent_ns: 7,
                seq: 8,
                step: 9
            })
        );
    }

    #[test]
    fn kind3_round_trips_and_matches_the_spec_example() {
        let frame = encode_kind3(
            "1",
            "2",
            "realtime:room1",
            "cursor",
            ENCODING_JSON,
            b"{\"x\":1}",
        );
        let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            concat!(
                "0301010e060001",
                "31",
                "32",
                "7265616c74696d653a726f6f6d31",
                "637572736f72",
                "7b2278223a317d"
            )
        );
        let d = decode_kind3(&frame).unwrap();
        assert_eq!(d.join_ref, b"1");
        assert_eq!(d.msg_ref, b"2");
        assert_eq!(d.topic, b"realtime:room1");
        assert_eq!(d.event, b"cursor");
        assert_eq!(d.meta, b"");
        assert_eq!(d.encoding, ENCODING_JSON);
        assert_eq!(d.payload, b"{\"x\":1}");
    }

    #[test]
    fn kind4_round_trips_and_rejects_other_kinds_and_truncation() {
        let frame = encode_kind4(
            b"realtime:a",
            b"lg",
            b"{\"id\":\"u\"}",
            ENCODING_JSON,
            b"{}",
        );
        let d = decode_kind4(&frame).unwrap();
        assert_eq!(
            (d.topic, d.event, d.meta, d.payload),
            (
                &b"realtime:a"[..],
                &b"lg"[..],
                &b"{\"id\":\"u\"}"[..],
                &b"{}"[..]
            )
        );
        assert!(decode_kind3(&frame).is_none());
        assert!(decode_kind4(&frame[..8]).is_none());
        assert!(decode_kind4(&[4, 1]).is_none());
    }

    #[test]
    fn text_frames_round_trip_in_both_versions() {
        for vsn in [Vsn::V1, Vsn::V2] {
            let text = join_frame(vsn, "realtime:r", "5", "tok", false);
            let e = decode_text(vsn, &text).unwrap();
            assert_eq!(e.join_ref.as_deref(), Some("5"));
            assert_eq!(e.msg_ref.as_deref(), Some("5"));
            assert_eq!(e.topic, "realtime:r");
            assert_eq!(e.event, "phx_join");
            assert_eq!(e.payload["config"]["broadcast"]["self"], json!(false));
            assert_eq!(e.payload["access_token"], json!("tok"));

            let hb = decode_text(vsn, &heartbeat_frame(vsn, "9")).unwrap();
            assert_eq!(
                (hb.topic.as_str(), hb.event.as_str()),
                ("phoenix", "heartbeat")
            );
            assert_eq!(hb.join_ref, None);

            let p = encode_payload(STAMP, 80);
            let b = broadcast_text_frame(vsn, "realtime:r", "5", "6", &p);
            let e = decode_text(vsn, &b).unwrap();
            assert_eq!(e.event, "broadcast");
            assert_eq!(e.payload["event"], json!(USER_EVENT));
            assert_eq!(find_stamp(b.as_bytes()), Some(STAMP));

            let out = broadcast_out_text(vsn, "realtime:r", &broadcast_map("lg", p.as_bytes()));
            let e = decode_text(vsn, &out).unwrap();
            assert_eq!((e.join_ref, e.msg_ref), (None, None));
            assert_eq!(e.payload["type"], json!("broadcast"));
            assert_eq!(find_stamp(out.as_bytes()), Some(STAMP));
        }
    }

    #[test]
    fn malformed_text_is_rejected() {
        assert!(decode_text(Vsn::V2, "[1,2,3]").is_none());
        assert!(decode_text(Vsn::V2, "{\"topic\":\"a\"}").is_none());
        assert!(decode_text(Vsn::V1, "[null,null,\"t\",\"e\",{}]").is_none());
        assert!(decode_text(Vsn::V1, "not json").is_none());
    }

    #[test]
    fn vsn_comes_from_the_query() {
        assert_eq!(Vsn::from_query(Some("apikey=x&vsn=2.0.0")), Vsn::V2);
        assert_eq!(Vsn::from_query(Some("vsn=1.0.0")), Vsn::V1);
        assert_eq!(Vsn::from_query(None), Vsn::V1);
    }

    #[test]
    fn reply_status_reads_the_status() {
        assert_eq!(
            reply_status(&json!({"status":"ok","response":{}})),
            Some("ok")
        );
        assert_eq!(reply_status(&json!({})), None);
    }
}
