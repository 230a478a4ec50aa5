//! Pure decoding of `realtime.messages` inserts from pgoutput into broadcasts (PROTOCOL.md 9.2,
//! 9.3): which relations are the messages table (the parent or a day partition), where its
//! columns are, and the message one inserted row makes.

use std::collections::HashMap;

use bytes::Bytes;

use crate::phoenix::{PayloadEncoding, UserBroadcast};
use crate::postgres_changes::pgoutput::{Message, RelationMessage, TupleValue};

/// The `extension` of rows that are broadcasts.
const BROADCAST_EXTENSION: &str = "broadcast";

/// One row of `realtime.messages`, ready to fan out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbMessage {
    /// The row's `id`: `meta.id` for subscribers.
    pub id: String,
    /// The row's `topic` (a channel's sub-topic).
    pub topic: String,
    /// Public or private room.
    pub private: bool,
    /// The user event, the payload and `{"id": ...}` metadata.
    pub broadcast: UserBroadcast,
}

/// Column positions of one messages relation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Columns {
    id: Option<usize>,
    topic: Option<usize>,
    event: Option<usize>,
    payload: Option<usize>,
    binary_payload: Option<usize>,
    private: Option<usize>,
    extension: Option<usize>,
}

/// Why an insert was not turned into a message (logged by the caller, never fatal).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// A column the message needs is missing or NULL.
    #[error("realtime.messages row without `{0}`")]
    Missing(&'static str),
    /// A value is not what its type promises (bad UTF-8, bad hex).
    #[error("realtime.messages row with an unreadable `{0}`")]
    Unreadable(&'static str),
}

/// The messages relations a stream has described, by OID.
#[derive(Debug, Default)]
pub struct MessageRelations {
    relations: HashMap<u32, Columns>,
}

/// Whether a relation is `realtime.messages` or one of its day partitions.
fn is_messages_table(namespace: &str, name: &str) -> bool {
    namespace == "realtime"
        && (name == "messages"
            || name
                .strip_prefix("messages_")
                .is_some_and(|rest| !rest.is_empty()))
}

impl MessageRelations {
    /// An empty set (a new replication session describes every relation again).
    pub fn new() -> MessageRelations {
        MessageRelations::default()
    }

    fn learn(&mut self, relation: &RelationMessage<'_>) {
        if !is_messages_table(relation.namespace, relation.name) {
            self.relations.remove(&relation.oid);
            return;
        }
        let mut columns = Columns::default();
        for (index, column) in relation.columns.iter().enumerate() {
            let slot = match column.name {
                "id" => &mut columns.id,
                "topic" => &mut columns.topic,
                "event" => &mut columns.event,
                "payload" => &mut columns.payload,
                "binary_payload" => &mut columns.binary_payload,
                "private" => &mut columns.private,
                "extension" => &mut columns.extension,
                _ => continue,
            };
            *slot = Some(index);
        }
        self.relations.insert(relation.oid, columns);
    }

    /// Applies one decoded pgoutput message: a Relation is remembered; an Insert into a
    /// messages relation gives its message (`None` for anything else, and for rows that are
    /// not broadcasts).
    ///
    /// # Errors
    /// [`RowError`] for a broadcast row that lacks a field or holds an unreadable value.
    pub fn apply(&mut self, message: &Message<'_>) -> Result<Option<DbMessage>, RowError> {
        match message {
            Message::Relation(relation) => {
                self.learn(relation);
                Ok(None)
            }
            Message::Insert(insert) => match self.relations.get(&insert.relation) {
                Some(columns) => {
                    let values: Vec<TupleValue<'_>> = insert.new.iter().collect();
                    columns.message(&values)
                }
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }
}

fn text<'a>(
    values: &[TupleValue<'a>],
    at: Option<usize>,
    name: &'static str,
) -> Result<Option<&'a str>, RowError> {
    match at.and_then(|i| values.get(i)) {
        Some(TupleValue::Text(bytes)) => std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| RowError::Unreadable(name)),
        Some(TupleValue::Binary(_) | TupleValue::UnchangedToast) => Err(RowError::Unreadable(name)),
        Some(TupleValue::Null) | None => Ok(None),
    }
}

/// Decodes bytea's hex output (`\x0a1b...`).
fn bytea_hex(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    hex.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// `{"id":"<id>"}`, the metadata of a database broadcast (an id is a uuid: nothing to escape,
/// but it is escaped anyway).
pub fn id_metadata(id: &str, replayed: bool) -> Bytes {
    let id = serde_json::Value::String(id.to_string());
    Bytes::from(if replayed {
        format!("{{\"replayed\":true,\"id\":{id}}}")
    } else {
        format!("{{\"id\":{id}}}")
    })
}

impl Columns {
    fn message(&self, values: &[TupleValue<'_>]) -> Result<Option<DbMessage>, RowError> {
        if text(values, self.extension, "extension")? != Some(BROADCAST_EXTENSION) {
            return Ok(None);
        }
        let id = text(values, self.id, "id")?.ok_or(RowError::Missing("id"))?;
        let topic = text(values, self.topic, "topic")?.ok_or(RowError::Missing("topic"))?;
        let event = text(values, self.event, "event")?.ok_or(RowError::Missing("event"))?;
        // NULL counts as false, as for the room of a `private` the sender left out.
        let private = text(values, self.private, "private")? == Some("t");
        let (encoding, payload) = match (
            text(values, self.payload, "payload")?,
            text(values, self.binary_payload, "binary_payload")?,
        ) {
            (Some(json), _) => (PayloadEncoding::Json, Bytes::from(json.to_string())),
            (None, Some(hex)) => (
                PayloadEncoding::Binary,
                Bytes::from(bytea_hex(hex).ok_or(RowError::Unreadable("binary_payload"))?),
            ),
            (None, None) => return Err(RowError::Missing("payload")),
        };
        Ok(Some(DbMessage {
            id: id.to_string(),
            topic: topic.to_string(),
            private,
            broadcast: UserBroadcast {
                event: event.to_string(),
                encoding,
                payload,
                metadata: Some(id_metadata(id, false)),
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres_changes::pgoutput::decode;

    fn relation(oid: u32, namespace: &str, name: &str, columns: &[&str]) -> Vec<u8> {
        let mut out = vec![b'R'];
        out.extend_from_slice(&oid.to_be_bytes());
        for s in [namespace, name] {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        out.push(b'd');
        out.extend_from_slice(&(columns.len() as u16).to_be_bytes());
        for c in columns {
            out.push(0);
            out.extend_from_slice(c.as_bytes());
            out.push(0);
            out.extend_from_slice(&25u32.to_be_bytes());
            out.extend_from_slice(&(-1i32).to_be_bytes());
        }
        out
    }

    fn insert(oid: u32, values: &[Option<&str>]) -> Vec<u8> {
        let mut out = vec![b'I'];
        out.extend_from_slice(&oid.to_be_bytes());
        out.push(b'N');
        out.extend_from_slice(&(values.len() as u16).to_be_bytes());
        for v in values {
            match v {
                None => out.push(b'n'),
                Some(text) => {
                    out.push(b't');
                    out.extend_from_slice(&(text.len() as u32).to_be_bytes());
                    out.extend_from_slice(text.as_bytes());
                }
            }
        }
        out
    }

    const COLUMNS: &[&str] = &[
        "topic",
        "extension",
        "payload",
        "event",
        "private",
        "updated_at",
        "inserted_at",
        "id",
        "binary_payload",
    ];

    fn apply(rels: &mut MessageRelations, bytes: &[u8]) -> Result<Option<DbMessage>, RowError> {
        rels.apply(&decode(bytes).unwrap())
    }

    #[test]
    fn a_partition_insert_becomes_a_message_with_id_metadata() {
        let mut rels = MessageRelations::new();
        let rel = relation(7, "realtime", "messages_2026_12_02", COLUMNS);
        assert_eq!(apply(&mut rels, &rel), Ok(None));
        let row = insert(
            7,
            &[
                Some("room1"),
                Some("broadcast"),
                Some(r#"{"t": "hi", "id": "abc"}"#),
                Some("note"),
                Some("f"),
                Some("2026-12-02 10:00:00"),
                Some("2026-12-02 10:00:00"),
                Some("abc"),
                None,
            ],
        );
        let message = apply(&mut rels, &row).unwrap().unwrap();
        assert_eq!(message.topic, "room1");
        assert!(!message.private);
        assert_eq!(message.id, "abc");
        assert_eq!(message.broadcast.event, "note");
        assert_eq!(message.broadcast.encoding, PayloadEncoding::Json);
        assert_eq!(
            &message.broadcast.payload[..],
            br#"{"t": "hi", "id": "abc"}"#
        );
        assert_eq!(
            message.broadcast.metadata.as_deref(),
            Some(&br#"{"id":"abc"}"#[..])
        );
    }

    #[test]
    fn binary_rows_private_rows_and_other_tables() {
        let mut rels = MessageRelations::new();
        apply(&mut rels, &relation(7, "realtime", "messages", COLUMNS)).unwrap();
        apply(&mut rels, &relation(8, "public", "messages", COLUMNS)).unwrap();
        let values = [
            Some("room1"),
            Some("broadcast"),
            None,
            Some("bin"),
            Some("t"),
            None,
            None,
            Some("id1"),
            Some("\\x00ff10"),
        ];
        let message = apply(&mut rels, &insert(7, &values)).unwrap().unwrap();
        assert!(message.private);
        assert_eq!(message.broadcast.encoding, PayloadEncoding::Binary);
        assert_eq!(&message.broadcast.payload[..], &[0x00, 0xff, 0x10]);
        assert_eq!(apply(&mut rels, &insert(8, &values)), Ok(None));
        let mut presence = values;
        presence[1] = Some("presence");
        assert_eq!(apply(&mut rels, &insert(7, &presence)), Ok(None));
        let mut bad = values;
        bad[8] = Some("\\x0");
        assert_eq!(
            apply(&mut rels, &insert(7, &bad)),
            Err(RowError::Unreadable("binary_payload"))
        );
        let mut none = values;
        none[8] = None;
        assert_eq!(
            apply(&mut rels, &insert(7, &none)),
            Err(RowError::Missing("payload"))
        );
        assert!(!is_messages_table("realtime", "messages_"));
        assert!(!is_messages_table("realtime", "messagesx"));
    }

    #[test]
    fn metadata_shapes() {
        assert_eq!(&id_metadata("a", false)[..], br#"{"id":"a"}"#);
        assert_eq!(
            &id_metadata("a", true)[..],
            br#"{"replayed":true,"id":"a"}"#
        );
    }
}
