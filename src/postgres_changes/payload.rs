//! The `postgres_changes` payload (PROTOCOL.md 6.4): the `data` object of one change, encoded
//! once per visibility group, and the per-channel frame that adds the channel's `ids`.
//!
//! Column values arrive as JSON text already (`values` renders them as `to_jsonb` would), so
//! building a payload is string assembly with no intermediate JSON tree.

use std::fmt::Write as _;

use crate::hub::Frame;
use crate::phoenix::{self, Vsn};

/// Fields of a record whose JSON text is at most this long survive the size limit (6.5).
pub(crate) const TRUNCATED_FIELD_MAX: usize = 64;
/// The error of a change larger than `max_record_bytes`.
pub(crate) const ERROR_TOO_LARGE: &str = "Error 413: Payload Too Large";

/// What happened to the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ChangeKind {
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
}

impl ChangeKind {
    /// The `data.type` text, upper case as realtime-js needs it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Insert => "INSERT",
            ChangeKind::Update => "UPDATE",
            ChangeKind::Delete => "DELETE",
        }
    }
}

/// One output column: its name, its `pg_type.typname`, and its value in the new and old images
/// as JSON text (`None`: the image lacks the column, e.g. an unchanged TOAST value or a column
/// outside the replica identity).
#[derive(Clone, Debug)]
pub(crate) struct OutColumn<'a> {
    /// Column name.
    pub name: &'a str,
    /// Type name (`int4`, `_text`, ...).
    pub type_name: &'a str,
    /// Value in the new image.
    pub new: Option<&'a str>,
    /// Value in the old image.
    pub old: Option<&'a str>,
}

/// The `data` object of one change as seen by one group of subscribers.
#[derive(Clone, Debug)]
pub(crate) struct ChangeData<'a> {
    /// Schema name.
    pub schema: &'a str,
    /// Table name.
    pub table: &'a str,
    /// `YYYY-MM-DDTHH:MI:SS.mmmZ`.
    pub commit_timestamp: &'a str,
    /// The action.
    pub kind: ChangeKind,
    /// The visible columns, in table order.
    pub columns: &'a [OutColumn<'a>],
    /// Errors to report with the change (empty: `null`).
    pub errors: &'a [&'a str],
}

fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_record<'a>(
    out: &mut String,
    columns: &[OutColumn<'a>],
    image: impl Fn(&OutColumn<'a>) -> Option<&'a str>,
    truncate: bool,
) {
    out.push('{');
    let mut first = true;
    for column in columns {
        let Some(value) = image(column) else { continue };
        if truncate && value.len() > TRUNCATED_FIELD_MAX {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        push_str(out, column.name);
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
}

/// Returns the size that counts toward `max_record_bytes`: the JSON text of both images.
fn record_bytes(columns: &[OutColumn<'_>]) -> usize {
    columns
        .iter()
        .map(|c| {
            let per = c.name.len() + 4;
            c.new.map_or(0, |v| v.len() + per) + c.old.map_or(0, |v| v.len() + per)
        })
        .sum()
}

impl ChangeData<'_> {
    /// Encodes the `data` object. A change whose records exceed `max_record_bytes` keeps only
    /// the fields of at most [`TRUNCATED_FIELD_MAX`] bytes and reports [`ERROR_TOO_LARGE`]
    /// (PROTOCOL.md 6.5).
    pub(crate) fn encode(&self, max_record_bytes: usize) -> String {
        let too_large = record_bytes(self.columns) > max_record_bytes;
        let mut out = String::with_capacity(128 + record_bytes(self.columns).min(1 << 16));
        out.push_str("{\"schema\":");
        push_str(&mut out, self.schema);
        out.push_str(",\"table\":");
        push_str(&mut out, self.table);
        out.push_str(",\"commit_timestamp\":");
        push_str(&mut out, self.commit_timestamp);
        out.push_str(",\"type\":\"");
        out.push_str(self.kind.as_str());
        out.push_str("\",\"columns\":[");
        for (i, column) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"name\":");
            push_str(&mut out, column.name);
            out.push_str(",\"type\":");
            push_str(&mut out, column.type_name);
            out.push('}');
        }
        out.push(']');
        if self.kind != ChangeKind::Delete {
            out.push_str(",\"record\":");
            push_record(&mut out, self.columns, |c| c.new, too_large);
        }
        if self.kind != ChangeKind::Insert {
            out.push_str(",\"old_record\":");
            push_record(&mut out, self.columns, |c| c.old, too_large);
        }
        out.push_str(",\"errors\":");
        let mut errors: Vec<&str> = self.errors.to_vec();
        if too_large {
            errors.push(ERROR_TOO_LARGE);
        }
        push_errors(&mut out, &errors);
        out.push('}');
        out
    }
}

fn push_errors(out: &mut String, errors: &[&str]) {
    if errors.is_empty() {
        out.push_str("null");
        return;
    }
    out.push('[');
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, e);
    }
    out.push(']');
}

/// Encodes an error-only `data` object (PROTOCOL.md 6.4: the 400 and 401 cases of 6.3).
pub(crate) fn error_data(schema: &str, table: &str, kind: ChangeKind, errors: &[&str]) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"schema\":");
    push_str(&mut out, schema);
    out.push_str(",\"table\":");
    push_str(&mut out, table);
    out.push_str(",\"commit_timestamp\":null,\"type\":\"");
    out.push_str(kind.as_str());
    out.push_str("\",\"columns\":[]");
    if kind != ChangeKind::Delete {
        out.push_str(",\"record\":{}");
    }
    if kind != ChangeKind::Insert {
        out.push_str(",\"old_record\":{}");
    }
    out.push_str(",\"errors\":");
    push_errors(&mut out, errors);
    out.push('}');
    out
}

/// Builds the frame one channel receives: `{"ids":[...],"data":<data>}` as a
/// `postgres_changes` push with both refs `null`.
pub(crate) fn change_frame(vsn: Vsn, topic: &str, ids: &[u64], data: &str) -> Frame {
    let mut payload = String::with_capacity(data.len() + 16 + ids.len() * 12);
    payload.push_str("{\"ids\":[");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            payload.push(',');
        }
        let _ = write!(payload, "{id}");
    }
    payload.push_str("],\"data\":");
    payload.push_str(data);
    payload.push('}');
    Frame::text(phoenix::encode_message(
        vsn,
        None,
        None,
        topic,
        phoenix::EVENT_POSTGRES_CHANGES,
        &payload,
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn columns() -> Vec<OutColumn<'static>> {
        vec![
            OutColumn {
                name: "id",
                type_name: "int8",
                new: Some("1"),
                old: Some("1"),
            },
            OutColumn {
                name: "ti\"tle",
                type_name: "text",
                new: Some("\"buy milk\""),
                old: None,
            },
            OutColumn {
                name: "tags",
                type_name: "_text",
                new: Some("[\"a\",\"b\"]"),
                old: None,
            },
        ]
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).expect("valid JSON")
    }

    #[test]
    fn record_keys_follow_the_action() {
        let cols = columns();
        let data = |kind| ChangeData {
            schema: "public",
            table: "todos",
            commit_timestamp: "2026-08-21T10:15:30.123Z",
            kind,
            columns: &cols,
            errors: &[],
        };
        let update = parse(&data(ChangeKind::Update).encode(1 << 20));
        assert_eq!(
            update,
            json!({"schema":"public","table":"todos","commit_timestamp":"2026-08-21T10:15:30.123Z",
                "type":"UPDATE","columns":[{"name":"id","type":"int8"},{"name":"ti\"tle","type":"text"},
                {"name":"tags","type":"_text"}],
                "record":{"id":1,"ti\"tle":"buy milk","tags":["a","b"]},"old_record":{"id":1},"errors":null})
        );
        let insert = parse(&data(ChangeKind::Insert).encode(1 << 20));
        assert!(insert.get("record").is_some() && insert.get("old_record").is_none());
        let delete = parse(&data(ChangeKind::Delete).encode(1 << 20));
        assert!(delete.get("record").is_none() && delete["old_record"] == json!({"id": 1}));
    }

    #[test]
    fn a_change_over_the_size_limit_keeps_small_fields_and_says_413() {
        let big = format!("\"{}\"", "x".repeat(100));
        let cols = vec![
            OutColumn {
                name: "id",
                type_name: "int4",
                new: Some("7"),
                old: None,
            },
            OutColumn {
                name: "body",
                type_name: "text",
                new: Some(&big),
                old: None,
            },
        ];
        let data = ChangeData {
            schema: "public",
            table: "t",
            commit_timestamp: "2026-01-01T00:00:00.000Z",
            kind: ChangeKind::Insert,
            columns: &cols,
            errors: &[],
        };
        let small = parse(&data.encode(50));
        assert_eq!(small["record"], json!({"id": 7}));
        assert_eq!(small["errors"], json!([ERROR_TOO_LARGE]));
        let whole = parse(&data.encode(1 << 20));
        assert_eq!(whole["record"]["body"], json!("x".repeat(100)));
        assert_eq!(whole["errors"], Value::Null);
    }

    #[test]
    fn error_only_payloads_have_the_documented_shape() {
        let d = parse(&error_data(
            "public",
            "t",
            ChangeKind::Update,
            &["Error 401: Unauthorized"],
        ));
        assert_eq!(
            d,
            json!({"schema":"public","table":"t","commit_timestamp":null,"type":"UPDATE",
                "columns":[],"record":{},"old_record":{},"errors":["Error 401: Unauthorized"]})
        );
    }

    #[test]
    fn frames_carry_the_channel_ids_in_both_wire_formats() {
        let Frame::Text(v2) = change_frame(Vsn::V2, "realtime:room1", &[30636876, 5], "{}") else {
            panic!("text frame");
        };
        assert_eq!(
            parse(std::str::from_utf8(&v2).unwrap()),
            json!([null, null, "realtime:room1", "postgres_changes", {"ids":[30636876,5],"data":{}}])
        );
        let Frame::Text(v1) = change_frame(Vsn::V1, "realtime:room1", &[1], "{}") else {
            panic!("text frame");
        };
        assert_eq!(
            parse(std::str::from_utf8(&v1).unwrap()),
            json!({"topic":"realtime:room1","event":"postgres_changes","payload":{"ids":[1],"data":{}},"ref":null})
        );
    }
}
