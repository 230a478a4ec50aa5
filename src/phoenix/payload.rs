//! The JSON payloads of the server's control frames: reply responses and `system` messages
//! (PROTOCOL.md 3.2-3.5, 4.4, 5.1). Each returns JSON text for [`super::encode_message`] /
//! [`super::encode_reply`].

use serde_json::value::RawValue;

use super::encode::push_json_str;

/// `status` of a successful `phx_reply`.
pub const STATUS_OK: &str = "ok";
/// `status` of a refused `phx_reply`.
pub const STATUS_ERROR: &str = "error";
/// The empty object: heartbeat and leave replies, `phx_close`, acks.
pub const EMPTY_OBJECT: &str = "{}";
/// Phoenix's answer to a push or join on a topic that is not joined (PROTOCOL.md 3.2, 3.3).
pub const UNMATCHED_TOPIC_RESPONSE: &str = r#"{"reason":"unmatched topic"}"#;
/// The response of an acked broadcast over `max_payload_size_in_kb` (PROTOCOL.md 12.2).
pub const PAYLOAD_SIZE_EXCEEDED_RESPONSE: &str = r#""payload_size_exceeded""#;
/// The `system` payload of a tenant-wide disconnect, without `channel` (PROTOCOL.md 1.7).
pub const SERVER_DISCONNECT_PAYLOAD: &str =
    r#"{"extension":"system","status":"ok","message":"Server requested disconnect"}"#;

/// Returns `{"reason": reason}`: the response of a refused join (`<Code>: <message>`,
/// PROTOCOL.md 3.4) or of a refused presence push (5.1).
pub fn reason_response(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len() + 14);
    out.push_str("{\"reason\":");
    push_json_str(&mut out, reason);
    out.push('}');
    out
}

/// Returns the `system` error payload of a channel shutdown (PROTOCOL.md 3.5):
/// `{"extension":"system","status":"error","message":..,"channel":<sub_topic>}`.
pub fn system_error_payload(message: &str, sub_topic: &str) -> String {
    let mut out = String::with_capacity(message.len() + sub_topic.len() + 64);
    out.push_str("{\"extension\":\"system\",\"status\":\"error\",\"message\":");
    push_json_str(&mut out, message);
    out.push_str(",\"channel\":");
    push_json_str(&mut out, sub_topic);
    out.push('}');
    out
}

/// Returns the response of a successful join, `{"postgres_changes":[...]}`: each entry's JSON
/// object as the client sent it, with `"id":<id>` put first (PROTOCOL.md 3.2). Entries must be
/// JSON objects.
pub fn join_ok_response<'a>(entries: impl IntoIterator<Item = (u64, &'a RawValue)>) -> String {
    let mut out = String::from("{\"postgres_changes\":[");
    for (i, (id, entry)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let text = entry.get().trim();
        debug_assert!(
            text.starts_with('{'),
            "a postgres_changes entry is an object"
        );
        let body = text[1..].trim_start();
        out.push_str("{\"id\":");
        out.push_str(&id.to_string());
        if !body.starts_with('}') {
            out.push(',');
        }
        out.push_str(body);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn constant_payloads_are_the_documented_json() {
        assert_eq!(
            parse(UNMATCHED_TOPIC_RESPONSE),
            json!({"reason": "unmatched topic"})
        );
        assert_eq!(
            parse(PAYLOAD_SIZE_EXCEEDED_RESPONSE),
            json!("payload_size_exceeded")
        );
        assert_eq!(
            parse(SERVER_DISCONNECT_PAYLOAD),
            json!({"extension": "system", "status": "ok", "message": "Server requested disconnect"})
        );
        assert_eq!(parse(EMPTY_OBJECT), json!({}));
    }

    #[test]
    fn reasons_are_escaped() {
        let reason =
            "Unauthorized: You do not have permissions to read from this Channel topic: a\"b\\c\n";
        assert_eq!(parse(&reason_response(reason)), json!({"reason": reason}));
        assert_eq!(
            reason_response("TopicNameRequired: You must provide a topic name"),
            r#"{"reason":"TopicNameRequired: You must provide a topic name"}"#
        );
    }

    #[test]
    fn system_error_has_the_shutdown_shape() {
        assert_eq!(
            system_error_payload("Too many messages per second", "room1"),
            r#"{"extension":"system","status":"error","message":"Too many messages per second","channel":"room1"}"#
        );
        assert_eq!(
            parse(&system_error_payload(
                "Token has expired 3 seconds ago",
                "a\"b"
            )),
            json!({"extension": "system", "status": "error",
                   "message": "Token has expired 3 seconds ago", "channel": "a\"b"})
        );
    }

    #[test]
    fn join_response_puts_the_id_first_and_keeps_the_entry() {
        let a = RawValue::from_string(r#"{"event":"*", "schema":"public"}"#.into()).unwrap();
        let empty = RawValue::from_string("{ }".into()).unwrap();
        assert_eq!(
            join_ok_response([(7, &*a), (9, &*empty)]),
            r#"{"postgres_changes":[{"id":7,"event":"*", "schema":"public"},{"id":9}]}"#
        );
        assert_eq!(join_ok_response([]), r#"{"postgres_changes":[]}"#);
    }
}
