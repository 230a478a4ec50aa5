//! The `phx_join` payload: lenient parsing into a [`JoinConfig`] (PROTOCOL.md 3.2), and the
//! `postgres_changes` echo of the join reply.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Replay request of `config.broadcast.replay`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayConfig {
    /// `since`: unix milliseconds.
    pub since: i64,
    /// `limit`, clamped to 1..=25 (default 25).
    pub limit: u32,
}

/// What a join asked for. Unknown keys are ignored; values of the wrong type fall back to
/// defaults and are reported in `invalid` (logged as `InvalidJoinPayload`).
#[derive(Clone, Debug, Default)]
pub struct JoinConfig {
    /// False when the payload has no `config` key (legacy join, 3.7).
    pub has_config: bool,
    /// `config.private`.
    pub private: bool,
    /// `config.broadcast.self`.
    pub broadcast_self: bool,
    /// `config.broadcast.ack`.
    pub broadcast_ack: bool,
    /// `config.broadcast.replay`; `Err` when present but not valid.
    pub replay: Option<Result<ReplayConfig, ()>>,
    /// `config.broadcast.replication_ready`.
    pub replication_ready: bool,
    /// `config.presence.enabled`.
    pub presence_enabled: bool,
    /// `config.presence.key` (`None` when absent, null or `""`: the server generates one).
    pub presence_key: Option<String>,
    /// Each `config.postgres_changes` entry (nulls dropped) as the exact JSON object text sent.
    pub postgres_changes: Vec<Box<RawValue>>,
    /// `user_token`, else `access_token` (when a string).
    pub token: Option<String>,
    /// Paths whose values had the wrong type.
    pub invalid: Vec<&'static str>,
}

/// A boolean as the original accepts it: `true`/`false`, or those words in any case as strings.
fn flag(value: Option<&Value>, path: &'static str, invalid: &mut Vec<&'static str>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(_) => {
            invalid.push(path);
            false
        }
    }
}

fn object<'a>(
    value: Option<&'a Value>,
    path: &'static str,
    invalid: &mut Vec<&'static str>,
) -> Option<&'a Map<String, Value>> {
    match value {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map),
        Some(_) => {
            invalid.push(path);
            None
        }
    }
}

fn replay(value: &Map<String, Value>) -> Result<ReplayConfig, ()> {
    let since = value.get("since").and_then(Value::as_i64).ok_or(())?;
    let limit = match value.get("limit") {
        None | Some(Value::Null) => 25,
        Some(v) => v.as_i64().ok_or(())?.clamp(1, 25) as u32,
    };
    Ok(ReplayConfig { since, limit })
}

impl JoinConfig {
    /// Parses a join payload (raw JSON text). Never fails: a payload that is not an object is
    /// treated as an empty one and reported invalid.
    pub fn parse(payload: &str) -> JoinConfig {
        #[derive(serde::Deserialize)]
        struct Shape<'a> {
            #[serde(borrow, default)]
            config: Option<&'a RawValue>,
            #[serde(default)]
            access_token: Option<Value>,
            #[serde(default)]
            user_token: Option<Value>,
        }
        let mut out = JoinConfig::default();
        let parsed = match payload.trim_start().starts_with('{') {
            true => serde_json::from_str::<Shape<'_>>(payload).ok(),
            false => None,
        };
        let Some(shape) = parsed else {
            out.invalid.push("payload");
            return out;
        };
        out.token = [shape.user_token, shape.access_token]
            .into_iter()
            .flatten()
            .find_map(|v| v.as_str().map(str::to_string));
        let Some(raw_config) = shape.config else {
            return out;
        };
        out.has_config = true;
        let config: Value = serde_json::from_str(raw_config.get()).unwrap_or(Value::Null);
        let invalid = &mut out.invalid;
        let Some(config) = object(Some(&config), "config", invalid) else {
            return out;
        };
        out.private = flag(config.get("private"), "config.private", invalid);
        if let Some(broadcast) = object(config.get("broadcast"), "config.broadcast", invalid) {
            out.broadcast_self = flag(broadcast.get("self"), "config.broadcast.self", invalid);
            out.broadcast_ack = flag(broadcast.get("ack"), "config.broadcast.ack", invalid);
            out.replication_ready = flag(
                broadcast.get("replication_ready"),
                "config.broadcast.replication_ready",
                invalid,
            );
            out.replay = match broadcast.get("replay") {
                None | Some(Value::Null) => None,
                Some(Value::Object(r)) => Some(replay(r)),
                Some(_) => Some(Err(())),
            };
        }
        if let Some(presence) = object(config.get("presence"), "config.presence", invalid) {
            out.presence_enabled =
                flag(presence.get("enabled"), "config.presence.enabled", invalid);
            out.presence_key = match presence.get("key") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
            };
        }
        // The entries are echoed byte for byte, so read them from the raw text.
        #[derive(serde::Deserialize)]
        struct Changes<'a> {
            #[serde(borrow, default)]
            postgres_changes: Option<Vec<Option<&'a RawValue>>>,
        }
        match serde_json::from_str::<Changes<'_>>(raw_config.get()) {
            Ok(changes) => {
                for entry in changes
                    .postgres_changes
                    .unwrap_or_default()
                    .into_iter()
                    .flatten()
                {
                    if entry.get().trim_start().starts_with('{') {
                        out.postgres_changes.push(entry.to_owned());
                    } else {
                        out.invalid.push("config.postgres_changes");
                    }
                }
            }
            Err(_) => out.invalid.push("config.postgres_changes"),
        }
        out
    }
}

/// Returns the binding id of a `postgres_changes` entry: a positive integer (never 0, and safe
/// as a JavaScript number) that is the same for identical entries, on every node and in every
/// release: FNV-1a (64 bit) of the entry's canonical JSON (object keys sorted, no spaces),
/// reduced to 1..2^31-1.
pub fn postgres_changes_id(entry: &RawValue) -> u64 {
    let mut canonical = String::with_capacity(entry.get().len());
    match serde_json::from_str::<Value>(entry.get()) {
        Ok(value) => write_canonical(&mut canonical, &value),
        Err(_) => canonical.push_str(entry.get()),
    }
    fnv1a64(canonical.as_bytes()) % ((1 << 31) - 1) + 1
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Writes `value` as JSON with object keys in byte order, whatever order the map keeps.
fn write_canonical(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(out, &map[key]);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Builds the join reply's `{"postgres_changes":[...]}`: each requested entry as sent, plus
/// its integer `id`, in request order.
pub fn join_reply_response(entries: &[Box<RawValue>]) -> String {
    crate::phoenix::join_ok_response(
        entries
            .iter()
            .map(|entry| (postgres_changes_id(entry), &**entry)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_realtime_js_join_payload() {
        let c = JoinConfig::parse(
            r#"{"config":{"broadcast":{"ack":false,"self":true},"presence":{"key":"","enabled":true},
            "postgres_changes":[{"event":"*","schema":"public","table":"todos","filter":"id=eq.1"},null],
            "private":false},"access_token":"tok","version":"realtime-js/2.119.1"}"#,
        );
        assert!(c.has_config);
        assert!(c.broadcast_self);
        assert!(!c.broadcast_ack);
        assert!(c.presence_enabled);
        assert_eq!(c.presence_key, None);
        assert_eq!(c.token.as_deref(), Some("tok"));
        assert_eq!(c.postgres_changes.len(), 1);
        assert!(c.invalid.is_empty());
    }

    #[test]
    fn string_flags_and_wrong_types() {
        let c = JoinConfig::parse(
            r#"{"config":{"private":"TRUE","broadcast":{"ack":"yes","self":"False"},"presence":7}}"#,
        );
        assert!(c.private);
        assert!(!c.broadcast_ack);
        assert!(!c.broadcast_self);
        assert_eq!(c.invalid, vec!["config.broadcast.ack", "config.presence"]);
        let legacy = JoinConfig::parse(r#"{"user_token":"u","access_token":"a"}"#);
        assert!(!legacy.has_config);
        assert_eq!(legacy.token.as_deref(), Some("u"));
        assert_eq!(JoinConfig::parse("[]").invalid, vec!["payload"]);
    }

    #[test]
    fn replay_params() {
        let c =
            JoinConfig::parse(r#"{"config":{"broadcast":{"replay":{"since":1000,"limit":99}}}}"#);
        assert_eq!(
            c.replay,
            Some(Ok(ReplayConfig {
                since: 1000,
                limit: 25
            }))
        );
        let c = JoinConfig::parse(r#"{"config":{"broadcast":{"replay":{"limit":3}}}}"#);
        assert_eq!(c.replay, Some(Err(())));
    }

    #[test]
    fn echo_keeps_entries_verbatim_in_order_with_nonzero_ids() {
        let c = JoinConfig::parse(
            r#"{"config":{"postgres_changes":[{"event":"INSERT","schema":"public","table":"messages","select":["id","body"]},{},{"event":"*", "schema":"public"}]}}"#,
        );
        let reply = join_reply_response(&c.postgres_changes);
        let parsed: Value = serde_json::from_str(&reply).unwrap();
        let entries = parsed["postgres_changes"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0]["table"], "messages");
        assert_eq!(entries[0]["select"], serde_json::json!(["id", "body"]));
        assert_eq!(entries[2]["event"], "*");
        for e in entries {
            assert!(e["id"].as_u64().unwrap() > 0);
        }
        assert_eq!(join_reply_response(&[]), r#"{"postgres_changes":[]}"#);
    }

    #[test]
    fn identical_filters_share_an_id() {
        let a = RawValue::from_string(r#"{"event":"*","schema":"public"}"#.into()).unwrap();
        let b = RawValue::from_string(r#"{ "schema":"public", "event":"*" }"#.into()).unwrap();
        let c = RawValue::from_string(r#"{"event":"INSERT","schema":"public"}"#.into()).unwrap();
        assert_eq!(postgres_changes_id(&a), postgres_changes_id(&b));
        assert_ne!(postgres_changes_id(&a), postgres_changes_id(&c));
    }

    #[test]
    fn ids_are_fixed_across_releases_and_nodes() {
        // Pinned values: a node of another release must give the same ids (FNV-1a of the
        // canonical JSON), or a client that reconnects elsewhere would miss its changes.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let entry =
            RawValue::from_string(r#"{"table":"todos","schema":"public","event":"*"}"#.into())
                .unwrap();
        let mut canonical = String::new();
        write_canonical(&mut canonical, &serde_json::from_str(entry.get()).unwrap());
        assert_eq!(
            canonical,
            r#"{"event":"*","schema":"public","table":"todos"}"#
        );
        assert_eq!(
            postgres_changes_id(&entry),
            fnv1a64(canonical.as_bytes()) % ((1 << 31) - 1) + 1
        );
        assert_eq!(postgres_changes_id(&entry), 223_825_877);
    }
}
