//! Server frame encoding: v1 objects (no `join_ref`), v2 arrays, kind-4 binary user broadcasts.

use bytes::{BufMut, Bytes, BytesMut};

use super::{KIND_USER_BROADCAST, PayloadEncoding, UserBroadcast, Vsn};

/// Why a kind-4 frame cannot carry a message (the JSON text form may still).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// Topic, event or metadata longer than the 255 bytes a length byte can express.
    #[error("{0} is longer than 255 bytes")]
    FieldTooLong(&'static str),
}

/// Appends `s` as a JSON string literal.
pub(super) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_opt_json_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.push_str("null"),
    }
}

/// Encodes a server message; `payload` must be JSON text (it is spliced in verbatim).
///
/// v2: `[join_ref, ref, topic, event, payload]`; v1: `{"topic","event","payload","ref"}` (the v1
/// serializer never sends `join_ref`).
pub fn encode_message(
    vsn: Vsn,
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    event: &str,
    payload: &str,
) -> String {
    let mut out = String::with_capacity(payload.len() + topic.len() + event.len() + 48);
    match vsn {
        Vsn::V2 => {
            out.push('[');
            push_opt_json_str(&mut out, join_ref);
            out.push(',');
            push_opt_json_str(&mut out, reference);
            out.push(',');
            push_json_str(&mut out, topic);
            out.push(',');
            push_json_str(&mut out, event);
            out.push(',');
            out.push_str(payload);
            out.push(']');
        }
        Vsn::V1 => {
            out.push_str("{\"topic\":");
            push_json_str(&mut out, topic);
            out.push_str(",\"event\":");
            push_json_str(&mut out, event);
            out.push_str(",\"payload\":");
            out.push_str(payload);
            out.push_str(",\"ref\":");
            push_opt_json_str(&mut out, reference);
            out.push('}');
        }
    }
    out
}

/// Encodes a `phx_reply` with `{"status": status, "response": response}`; `response` is JSON text.
pub fn encode_reply(
    vsn: Vsn,
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    status: &str,
    response: &str,
) -> String {
    let mut payload = String::with_capacity(response.len() + status.len() + 28);
    payload.push_str("{\"status\":");
    push_json_str(&mut payload, status);
    payload.push_str(",\"response\":");
    payload.push_str(response);
    payload.push('}');
    encode_message(
        vsn,
        join_ref,
        reference,
        topic,
        super::EVENT_REPLY,
        &payload,
    )
}

/// Encodes a kind-4 user broadcast frame for subscribers of `topic`.
///
/// # Errors
/// [`EncodeError::FieldTooLong`] when topic, event or metadata exceed 255 bytes.
pub fn encode_user_broadcast(topic: &str, message: &UserBroadcast) -> Result<Bytes, EncodeError> {
    let metadata = message.metadata.as_deref().unwrap_or_default();
    let len = |field: &'static str, n: usize| {
        u8::try_from(n).map_err(|_| EncodeError::FieldTooLong(field))
    };
    let topic_len = len("topic", topic.len())?;
    let event_len = len("event", message.event.len())?;
    let meta_len = len("metadata", metadata.len())?;
    let mut out = BytesMut::with_capacity(
        5 + topic.len() + message.event.len() + metadata.len() + message.payload.len(),
    );
    out.put_u8(KIND_USER_BROADCAST);
    out.put_u8(topic_len);
    out.put_u8(event_len);
    out.put_u8(meta_len);
    out.put_u8(message.encoding.as_byte());
    out.put_slice(topic.as_bytes());
    out.put_slice(message.event.as_bytes());
    out.put_slice(metadata);
    out.put_slice(&message.payload);
    Ok(out.freeze())
}

/// Returns the JSON broadcast payload `{"type":"broadcast","event":..,"payload":..[,"meta":..]}`
/// of a user broadcast, or `None` when its payload is binary (binary is never sent as JSON).
pub fn user_broadcast_json(message: &UserBroadcast) -> Option<String> {
    if message.encoding == PayloadEncoding::Binary {
        return None;
    }
    // Decoding and the HTTP API only admit valid UTF-8 JSON payloads.
    let payload = std::str::from_utf8(&message.payload).ok()?;
    let mut out = String::with_capacity(payload.len() + message.event.len() + 48);
    out.push_str("{\"type\":\"broadcast\",\"event\":");
    push_json_str(&mut out, &message.event);
    out.push_str(",\"payload\":");
    out.push_str(payload);
    if let Some(meta) = message
        .metadata
        .as_deref()
        .and_then(|m| std::str::from_utf8(m).ok())
    {
        out.push_str(",\"meta\":");
        out.push_str(meta);
    }
    out.push('}');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phoenix::{InboundPayload, decode_text};

    #[test]
    fn v2_and_v1_messages() {
        assert_eq!(
            encode_message(Vsn::V2, Some("1"), None, "realtime:room1", "system", "{}"),
            r#"["1",null,"realtime:room1","system",{}]"#
        );
        assert_eq!(
            encode_message(
                Vsn::V1,
                Some("1"),
                Some("7"),
                "realtime:room1",
                "broadcast",
                "{}"
            ),
            r#"{"topic":"realtime:room1","event":"broadcast","payload":{},"ref":"7"}"#
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            encode_reply(Vsn::V2, None, Some("12"), "phoenix", "ok", "{}"),
            r#"[null,"12","phoenix","phx_reply",{"status":"ok","response":{}}]"#
        );
        assert_eq!(
            encode_reply(
                Vsn::V1,
                Some("1"),
                Some("1"),
                "realtime:a",
                "error",
                r#"{"reason":"x"}"#
            ),
            r#"{"topic":"realtime:a","event":"phx_reply","payload":{"status":"error","response":{"reason":"x"}},"ref":"1"}"#
        );
    }

    #[test]
    fn strings_are_escaped() {
        let text = encode_message(Vsn::V2, None, None, "realtime:\"q\"\\\n\u{1}é", "e", "{}");
        let back = decode_text(Vsn::V2, &text).unwrap();
        assert_eq!(back.topic, "realtime:\"q\"\\\n\u{1}é");
        assert!(matches!(back.payload, InboundPayload::Json(_)));
    }

    /// The kind-4 frame of PROTOCOL.md Appendix A.
    #[test]
    fn kind4_matches_the_documented_bytes() {
        let m = UserBroadcast {
            event: "cursor".into(),
            encoding: PayloadEncoding::Json,
            payload: Bytes::from_static(b"{\"x\":1}"),
            metadata: None,
        };
        let frame = encode_user_broadcast("realtime:room1", &m).unwrap();
        let mut expected = vec![4, 14, 6, 0, 1];
        expected.extend_from_slice(b"realtime:room1cursor{\"x\":1}");
        assert_eq!(&frame[..], &expected[..]);
        assert_eq!(
            user_broadcast_json(&m).unwrap(),
            r#"{"type":"broadcast","event":"cursor","payload":{"x":1}}"#
        );
    }

    #[test]
    fn kind4_refuses_long_fields_and_json_form_refuses_binary() {
        let m = UserBroadcast {
            event: "e".repeat(256),
            encoding: PayloadEncoding::Binary,
            payload: Bytes::from_static(&[1, 2]),
            metadata: Some(Bytes::from_static(b"{\"id\":\"1\"}")),
        };
        assert_eq!(
            encode_user_broadcast("t", &m),
            Err(EncodeError::FieldTooLong("event"))
        );
        assert_eq!(user_broadcast_json(&m), None);
    }
}
