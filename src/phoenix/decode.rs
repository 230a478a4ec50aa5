//! Client frame decoding: v1 JSON objects, v2 JSON arrays, v2 kind-3 binary pushes.

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::{
    Inbound, InboundPayload, KIND_USER_BROADCAST_PUSH, PayloadEncoding, UserBroadcast, Vsn,
};
use crate::error::ErrorCode;

/// Why a client frame could not be decoded. The frame is dropped and the socket stays open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not JSON, or JSON of the wrong shape for the socket's serializer.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// A binary frame on a v1 socket.
    #[error("binary frames are not accepted on a vsn 1.0.0 socket")]
    BinaryOnV1,
    /// A binary frame whose kind byte is not 3.
    #[error("unsupported binary frame kind {0}")]
    UnsupportedKind(u8),
    /// A binary frame shorter than its header or its declared lengths.
    #[error("binary frame truncated: header declares {declared} bytes, frame has {actual}")]
    Truncated {
        /// Bytes the header's lengths require.
        declared: usize,
        /// Bytes present.
        actual: usize,
    },
    /// A string field of a binary frame is not UTF-8.
    #[error("binary frame field {0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// The payload of a JSON-encoded user broadcast is not valid JSON.
    #[error("binary frame payload declared as JSON is not valid JSON")]
    InvalidJsonPayload,
    /// Kind-3 metadata that is not a JSON object.
    #[error("binary frame metadata is not a JSON object")]
    InvalidMetadata,
}

impl DecodeError {
    /// Returns the operational code logged for a dropped frame.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::MalformedWebSocketMessage
    }
}

/// A `ref`/`join_ref` slot: string, number or null.
#[derive(Deserialize)]
#[serde(untagged)]
enum RefSlot {
    Text(String),
    Number(serde_json::Number),
}

fn parse_ref(raw: Option<&RawValue>) -> Result<Option<String>, DecodeError> {
    let Some(raw) = raw else { return Ok(None) };
    match serde_json::from_str::<Option<RefSlot>>(raw.get()) {
        Ok(None) => Ok(None),
        Ok(Some(RefSlot::Text(s))) => Ok(Some(s)),
        Ok(Some(RefSlot::Number(n))) => Ok(Some(n.to_string())),
        Err(_) => Err(DecodeError::Malformed(
            "ref and join_ref must be strings, numbers or null",
        )),
    }
}

fn parse_string(raw: &RawValue, what: &'static str) -> Result<String, DecodeError> {
    serde_json::from_str::<String>(raw.get()).map_err(|_| DecodeError::Malformed(what))
}

/// Decodes a text frame for a socket of serializer `vsn`.
///
/// v2 frames are `[join_ref, ref, topic, event, payload, ...]` (extra trailing elements are
/// tolerated); v1 frames are objects with `topic`, `event`, `payload`, `ref` and optional
/// `join_ref`.
///
/// # Errors
/// [`DecodeError::Malformed`] for invalid JSON or a wrong shape.
pub fn decode_text(vsn: Vsn, text: &str) -> Result<Inbound, DecodeError> {
    match vsn {
        Vsn::V2 => decode_v2_text(text),
        Vsn::V1 => decode_v1_text(text),
    }
}

fn decode_v2_text(text: &str) -> Result<Inbound, DecodeError> {
    let slots: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|_| DecodeError::Malformed("expected a JSON array"))?;
    if slots.len() < 5 {
        return Err(DecodeError::Malformed(
            "expected [join_ref, ref, topic, event, payload]",
        ));
    }
    Ok(Inbound {
        join_ref: parse_ref(Some(slots[0]))?,
        reference: parse_ref(Some(slots[1]))?,
        topic: parse_string(slots[2], "topic must be a string")?,
        event: parse_string(slots[3], "event must be a string")?,
        payload: InboundPayload::Json(slots[4].to_owned()),
    })
}

#[derive(Deserialize)]
struct V1Frame<'a> {
    #[serde(borrow)]
    topic: &'a RawValue,
    #[serde(borrow)]
    event: &'a RawValue,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(borrow, rename = "ref")]
    reference: Option<&'a RawValue>,
    #[serde(borrow, default)]
    join_ref: Option<&'a RawValue>,
}

fn decode_v1_text(text: &str) -> Result<Inbound, DecodeError> {
    let frame: V1Frame<'_> = serde_json::from_str(text).map_err(|_| {
        DecodeError::Malformed("expected an object with topic, event, payload and ref")
    })?;
    Ok(Inbound {
        join_ref: parse_ref(frame.join_ref)?,
        reference: parse_ref(frame.reference)?,
        topic: parse_string(frame.topic, "topic must be a string")?,
        event: parse_string(frame.event, "event must be a string")?,
        payload: InboundPayload::Json(frame.payload.to_owned()),
    })
}

/// Decodes a binary frame. Only kind 3 (user broadcast push) is accepted, and only on v2.
///
/// # Errors
/// Any [`DecodeError`] but `Malformed`: wrong kind, lengths running past the frame, non-UTF-8
/// strings, a JSON payload or metadata that is not valid JSON.
pub fn decode_binary(vsn: Vsn, frame: &Bytes) -> Result<Inbound, DecodeError> {
    if vsn == Vsn::V1 {
        return Err(DecodeError::BinaryOnV1);
    }
    let header = frame.get(..7).ok_or(DecodeError::Truncated {
        declared: 7,
        actual: frame.len(),
    })?;
    if header[0] != KIND_USER_BROADCAST_PUSH {
        return Err(DecodeError::UnsupportedKind(header[0]));
    }
    let lens = [header[1], header[2], header[3], header[4], header[5]].map(usize::from);
    let encoding = if header[6] == 0 {
        PayloadEncoding::Binary
    } else {
        PayloadEncoding::Json
    };
    let declared = 7 + lens.iter().sum::<usize>();
    if frame.len() < declared {
        return Err(DecodeError::Truncated {
            declared,
            actual: frame.len(),
        });
    }
    let mut at = 7;
    let mut take = |len: usize| {
        let part = frame.slice(at..at + len);
        at += len;
        part
    };
    let join_ref = take(lens[0]);
    let reference = take(lens[1]);
    let topic = take(lens[2]);
    let event = take(lens[3]);
    let metadata = take(lens[4]);
    let payload = frame.slice(declared..);

    let text = |b: &Bytes, field: &'static str| -> Result<String, DecodeError> {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| DecodeError::InvalidUtf8(field))
    };
    let optional = |s: String| if s.is_empty() { None } else { Some(s) };
    let metadata = if metadata.is_empty() {
        None
    } else {
        match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&metadata) {
            Ok(_) => Some(metadata),
            Err(_) => return Err(DecodeError::InvalidMetadata),
        }
    };
    if encoding == PayloadEncoding::Json && serde_json::from_slice::<IgnoredAny>(&payload).is_err()
    {
        return Err(DecodeError::InvalidJsonPayload);
    }
    Ok(Inbound {
        join_ref: optional(text(&join_ref, "join_ref")?),
        reference: optional(text(&reference, "ref")?),
        topic: text(&topic, "topic")?,
        event: super::EVENT_BROADCAST.to_string(),
        payload: InboundPayload::UserBroadcast(UserBroadcast {
            event: text(&event, "event")?,
            encoding,
            payload,
            metadata,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_payload(inbound: &Inbound) -> &str {
        match &inbound.payload {
            InboundPayload::Json(raw) => raw.get(),
            InboundPayload::UserBroadcast(_) => panic!("expected a JSON payload"),
        }
    }

    #[test]
    fn decodes_a_v2_join() {
        let f = decode_text(
            Vsn::V2,
            r#"["1","2","realtime:room1","phx_join",{"config":{"private":false}},"extra"]"#,
        )
        .unwrap();
        assert_eq!(f.join_ref.as_deref(), Some("1"));
        assert_eq!(f.reference.as_deref(), Some("2"));
        assert_eq!(f.topic, "realtime:room1");
        assert_eq!(f.event, "phx_join");
        assert_eq!(json_payload(&f), r#"{"config":{"private":false}}"#);
    }

    #[test]
    fn v2_accepts_null_and_numeric_refs() {
        let f = decode_text(Vsn::V2, r#"[null,12,"phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(f.join_ref, None);
        assert_eq!(f.reference.as_deref(), Some("12"));
    }

    #[test]
    fn v2_rejects_wrong_shapes() {
        for bad in [
            "not json",
            "{}",
            "null",
            r#"["1","2","t","e"]"#,
            r#"["1","2",3,"e",{}]"#,
            r#"["1","2","t",null,{}]"#,
            r#"[{},"2","t","e",{}]"#,
            r#"["1","2","t","e",{}"#,
        ] {
            assert!(
                matches!(decode_text(Vsn::V2, bad), Err(DecodeError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn decodes_a_v1_frame_with_and_without_join_ref() {
        let f = decode_text(
            Vsn::V1,
            r#"{"topic":"realtime:a","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}"#,
        )
        .unwrap();
        assert_eq!(f.join_ref.as_deref(), Some("1"));
        let f = decode_text(
            Vsn::V1,
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":null}"#,
        )
        .unwrap();
        assert_eq!(f.join_ref, None);
        assert_eq!(f.reference, None);
        assert!(
            decode_text(
                Vsn::V1,
                r#"{"topic":"phoenix","event":"heartbeat","ref":null}"#
            )
            .is_err()
        );
        assert!(decode_text(Vsn::V1, r#"["1","1","t","e",{}]"#).is_err());
    }

    /// The exact bytes realtime-js 2.119.1 sends for `send({type:'broadcast',event:'cursor',payload:{x:1}})`.
    #[test]
    fn decodes_the_realtime_js_kind3_example() {
        let mut frame = vec![3, 1, 1, 14, 6, 0, 1];
        frame.extend_from_slice(b"12realtime:room1cursor{\"x\":1}");
        let f = decode_binary(Vsn::V2, &Bytes::from(frame)).unwrap();
        assert_eq!(f.join_ref.as_deref(), Some("1"));
        assert_eq!(f.reference.as_deref(), Some("2"));
        assert_eq!(f.topic, "realtime:room1");
        assert_eq!(f.event, "broadcast");
        let InboundPayload::UserBroadcast(b) = f.payload else {
            panic!("expected user broadcast")
        };
        assert_eq!(b.event, "cursor");
        assert_eq!(b.encoding, PayloadEncoding::Json);
        assert_eq!(&b.payload[..], b"{\"x\":1}");
        assert_eq!(b.metadata, None);
    }

    #[test]
    fn kind3_with_metadata_and_binary_payload() {
        let meta = br#"{"persist":true}"#;
        let mut frame = vec![3, 1, 1, 3, 1, meta.len() as u8, 0];
        frame.extend_from_slice(b"12r:ae");
        frame.extend_from_slice(meta);
        frame.extend_from_slice(&[0xff, 0x00, 0xfe]);
        let f = decode_binary(Vsn::V2, &Bytes::from(frame)).unwrap();
        let InboundPayload::UserBroadcast(b) = f.payload else {
            panic!("expected user broadcast")
        };
        assert_eq!(b.encoding, PayloadEncoding::Binary);
        assert_eq!(&b.payload[..], &[0xff, 0x00, 0xfe]);
        assert_eq!(b.metadata.as_deref(), Some(&meta[..]));
    }

    #[test]
    fn binary_errors() {
        assert_eq!(
            decode_binary(Vsn::V1, &Bytes::from_static(&[3])).err(),
            Some(DecodeError::BinaryOnV1)
        );
        assert!(matches!(
            decode_binary(Vsn::V2, &Bytes::from_static(&[3, 0])),
            Err(DecodeError::Truncated { .. })
        ));
        assert_eq!(
            decode_binary(Vsn::V2, &Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0])).err(),
            Some(DecodeError::UnsupportedKind(0))
        );
        assert_eq!(
            decode_binary(Vsn::V2, &Bytes::from_static(&[3, 200, 0, 0, 0, 0, 1, b'x'])).err(),
            Some(DecodeError::Truncated {
                declared: 207,
                actual: 8
            })
        );
        assert_eq!(
            decode_binary(
                Vsn::V2,
                &Bytes::from_static(&[3, 0, 0, 1, 1, 0, 1, 0xff, b'e', b'{', b'}'])
            )
            .err(),
            Some(DecodeError::InvalidUtf8("topic"))
        );
        assert_eq!(
            decode_binary(
                Vsn::V2,
                &Bytes::from_static(&[3, 0, 0, 1, 1, 0, 1, b't', b'e', b'{'])
            )
            .err(),
            Some(DecodeError::InvalidJsonPayload)
        );
        assert_eq!(
            decode_binary(
                Vsn::V2,
                &Bytes::from_static(&[3, 0, 0, 1, 1, 1, 0, b't', b'e', b'['])
            )
            .err(),
            Some(DecodeError::InvalidMetadata)
        );
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests: decoders never panic on arbitrary input, and what the encoders produce
    //! decodes back to the same values.
    use proptest::prelude::*;

    use super::*;
    use crate::phoenix::encode_message;

    proptest! {
        #[test]
        fn binary_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_binary(Vsn::V2, &Bytes::from(bytes.clone()));
            let _ = decode_binary(Vsn::V1, &Bytes::from(bytes));
        }

        #[test]
        fn kind3_frames_with_lengths_near_the_edges_never_panic(
            lens in proptest::array::uniform5(any::<u8>()),
            body in proptest::collection::vec(any::<u8>(), 0..1400),
            encoding in any::<u8>(),
        ) {
            let mut frame = vec![3, lens[0], lens[1], lens[2], lens[3], lens[4], encoding];
            frame.extend_from_slice(&body);
            let _ = decode_binary(Vsn::V2, &Bytes::from(frame));
        }

        #[test]
        fn text_decoding_never_panics(text in ".{0,300}") {
            let _ = decode_text(Vsn::V2, &text);
            let _ = decode_text(Vsn::V1, &text);
        }

        #[test]
        fn text_frames_round_trip(
            join_ref in proptest::option::of("[ -~]{0,12}"),
            reference in proptest::option::of("[0-9]{1,6}"),
            topic in "\\PC{0,40}",
            event in "\\PC{1,20}",
        ) {
            let text = encode_message(Vsn::V2, join_ref.as_deref(), reference.as_deref(), &topic, &event, "{\"k\":[1,2]}");
            let back = decode_text(Vsn::V2, &text).unwrap();
            prop_assert_eq!(back.join_ref, join_ref);
            prop_assert_eq!(back.reference, reference);
            prop_assert_eq!(back.topic, topic);
            prop_assert_eq!(back.event, event);
        }

        #[test]
        fn kind3_frames_round_trip(
            topic in "[a-z:]{0,60}",
            event in "\\PC{0,20}",
            payload in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut frame = vec![3, 1, 1, topic.len() as u8, event.len() as u8, 0, 0];
            frame.extend_from_slice(b"12");
            frame.extend_from_slice(topic.as_bytes());
            frame.extend_from_slice(event.as_bytes());
            frame.extend_from_slice(&payload);
            let back = decode_binary(Vsn::V2, &Bytes::from(frame)).unwrap();
            prop_assert_eq!(back.topic, topic);
            let InboundPayload::UserBroadcast(b) = back.payload else { panic!("user broadcast") };
            prop_assert_eq!(b.event, event);
            prop_assert_eq!(&b.payload[..], &payload[..]);
        }
    }
}
