//! A scenario client: one raw WebSocket (Phoenix v2 serializer) to the self-host tenant of a
//! node, which keeps every frame it reads and a presence view per channel built the way
//! realtime-js builds it (PROTOCOL.md 5.3), so tests can wait for a condition over everything
//! received so far.
//!
//! Reading happens only inside the waiting methods ([`Client::wait_until`], [`Client::settle`],
//! ...): frames queue in the socket meanwhile. Kind-4 binary broadcasts are decoded into the same
//! shape as JSON broadcasts (`{"type":"broadcast","event":..,"payload":..,"meta":..}`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use testkit::ws::{Ws, connect_as, try_connect};
use testkit::{API_SECRET, SELF_HOST, client_token};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// One frame the server sent, normalized.
#[derive(Clone, Debug)]
pub struct Frame {
    /// When this client read it.
    pub at: Instant,
    /// Slot 0 of the v2 array.
    pub join_ref: Option<String>,
    /// Slot 1.
    pub reference: Option<String>,
    /// The topic (`realtime:<sub_topic>`).
    pub topic: String,
    /// The event (`broadcast`, `presence_diff`, `phx_reply`, ...).
    pub event: String,
    /// The payload.
    pub payload: Value,
}

/// A presence entry as a client sees it: one meta per channel tracking under the key.
pub type Metas = Vec<Value>;

/// A channel's presence, applied as realtime-js applies `presence_state` and `presence_diff`.
#[derive(Clone, Debug, Default)]
pub struct PresenceView {
    /// Whether a `presence_state` arrived (until then diffs are held back).
    pub synced: bool,
    /// Key → metas.
    pub keys: BTreeMap<String, Metas>,
    /// Every key that appeared (through a state or a diff's joins), with when.
    pub joins: Vec<(String, Instant)>,
    /// Every key whose metas went away entirely (leave diffs or a state without it), with when.
    pub leaves: Vec<(String, Instant)>,
    held: Vec<(Value, Instant)>,
}

impl PresenceView {
    /// The keys present now.
    pub fn key_set(&self) -> BTreeSet<String> {
        self.keys.keys().cloned().collect()
    }

    /// Whether `key` is present now.
    pub fn has(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// When `key` last left, if it ever did.
    pub fn left_at(&self, key: &str) -> Option<Instant> {
        self.leaves
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, t)| *t)
    }

    /// Whether `key` (re)appeared at or after `since`.
    pub fn joined_since(&self, key: &str, since: Instant) -> bool {
        self.joins.iter().any(|(k, t)| k == key && *t >= since)
    }

    fn apply_state(&mut self, state: &Value, at: Instant) {
        let old = std::mem::take(&mut self.keys);
        if let Some(map) = state.as_object() {
            for (key, entry) in map {
                let metas = entry["metas"].as_array().cloned().unwrap_or_default();
                if !metas.is_empty() {
                    self.keys.insert(key.clone(), metas);
                }
            }
        }
        for key in old.keys().filter(|k| !self.keys.contains_key(*k)) {
            self.leaves.push((key.clone(), at));
        }
        for key in self.keys.keys().filter(|k| !old.contains_key(*k)) {
            self.joins.push((key.clone(), at));
        }
        self.synced = true;
        for (diff, at) in std::mem::take(&mut self.held) {
            self.apply_diff(&diff, at);
        }
    }

    fn apply_diff(&mut self, diff: &Value, at: Instant) {
        if !self.synced {
            self.held.push((diff.clone(), at));
            return;
        }
        if let Some(joins) = diff["joins"].as_object() {
            for (key, entry) in joins {
                let joined = entry["metas"].as_array().cloned().unwrap_or_default();
                let refs: BTreeSet<&str> = joined
                    .iter()
                    .filter_map(|m| m["phx_ref"].as_str())
                    .collect();
                let existing = self.keys.remove(key);
                let was_present = existing.is_some();
                let mut metas: Metas = existing
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|m| !m["phx_ref"].as_str().is_some_and(|r| refs.contains(r)))
                    .collect();
                metas.extend(joined.iter().cloned());
                if !was_present {
                    self.joins.push((key.clone(), at));
                }
                self.keys.insert(key.clone(), metas);
            }
        }
        if let Some(leaves) = diff["leaves"].as_object() {
            for (key, entry) in leaves {
                let refs: BTreeSet<&str> = entry["metas"]
                    .as_array()
                    .map(|ms| ms.iter().filter_map(|m| m["phx_ref"].as_str()).collect())
                    .unwrap_or_default();
                if let Some(metas) = self.keys.get_mut(key) {
                    metas.retain(|m| !m["phx_ref"].as_str().is_some_and(|r| refs.contains(r)));
                    if metas.is_empty() {
                        self.keys.remove(key);
                        self.leaves.push((key.clone(), at));
                    }
                }
            }
        }
    }
}

/// The `config` of a join: broadcast `self`, a presence key (presence enabled when given) and
/// Postgres Changes bindings.
pub fn join_config(self_broadcast: bool, presence_key: Option<&str>, postgres: Value) -> Value {
    json!({"config": {
        "broadcast": {"ack": false, "self": self_broadcast},
        "presence": {"key": presence_key.unwrap_or(""), "enabled": presence_key.is_some()},
        "postgres_changes": postgres,
        "private": false,
    }})
}

/// The full topic of `sub_topic`.
pub fn topic(sub_topic: &str) -> String {
    format!("realtime:{sub_topic}")
}

/// A WebSocket client of the self-host tenant (see the module doc).
pub struct Client {
    /// A label for failure messages (e.g. `c1@node-1`).
    pub label: String,
    ws: Ws,
    frames: Vec<Frame>,
    next_ref: u64,
    join_refs: HashMap<String, String>,
    presence: HashMap<String, PresenceView>,
    closed: bool,
    close_code: Option<u16>,
    last_heartbeat: Instant,
}

/// How often a client that is reading sends a heartbeat (realtime-js: every 25 s; the server
/// closes a socket silent for 60 s).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);

impl Client {
    /// Connects to `addr` as the self-host tenant (`Host: realtime-dev.localhost`, an anon
    /// token signed with its secret, `vsn=2.0.0`).
    pub async fn connect(addr: SocketAddr, label: impl Into<String>) -> Client {
        let token = client_token(API_SECRET, 3600);
        let ws = connect_as(addr, SELF_HOST, &token, "2.0.0").await;
        Client {
            label: label.into(),
            ws,
            frames: Vec::new(),
            next_ref: 0,
            join_refs: HashMap::new(),
            presence: HashMap::new(),
            closed: false,
            close_code: None,
            last_heartbeat: Instant::now(),
        }
    }

    /// Opens a new socket to `addr` in place of this one (which the server closed, or which is
    /// dropped now), as the same tenant and user. The frames read so far are kept, so counts
    /// span reconnects; channels and presence views are forgotten: join again.
    ///
    /// # Errors
    /// When the connection or the WebSocket handshake fails (the old socket is kept then).
    pub async fn reconnect(&mut self, addr: SocketAddr) -> Result<(), WsError> {
        let token = client_token(API_SECRET, 3600);
        let host = format!("{SELF_HOST}.localhost");
        let query = format!("apikey={token}&vsn=2.0.0");
        self.ws = try_connect(addr, &host, &query).await?;
        self.closed = false;
        self.close_code = None;
        self.join_refs.clear();
        self.presence.clear();
        self.last_heartbeat = Instant::now();
        Ok(())
    }

    /// The local address of the socket (what a proxy in front of the server sees as the
    /// client's address).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self.ws.get_ref() {
            MaybeTlsStream::Plain(tcp) => tcp.local_addr().ok(),
            _ => None,
        }
    }

    fn next_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    async fn send(&mut self, frame: Value) {
        self.try_send(frame)
            .await
            .unwrap_or_else(|e| panic!("{}: send failed: {e}", self.label));
    }

    async fn try_send(&mut self, frame: Value) -> Result<(), WsError> {
        self.ws.send(Message::text(frame.to_string())).await
    }

    /// Joins `sub_topic` with `config` (see [`join_config`]) and waits for an ok reply, whose
    /// payload it returns. With presence enabled, also waits for the `presence_state`.
    pub async fn join(&mut self, sub_topic: &str, config: Value) -> Value {
        let topic = topic(sub_topic);
        let join_ref = self.next_ref();
        let presence = config["config"]["presence"]["enabled"] == json!(true);
        self.join_refs.insert(topic.clone(), join_ref.clone());
        self.presence.remove(&topic);
        self.send(json!([join_ref, join_ref, topic, "phx_join", config]))
            .await;
        let reply = self.reply(&join_ref, Duration::from_secs(10)).await;
        assert_eq!(
            reply["status"], "ok",
            "{}: join of {topic} refused: {reply}",
            self.label
        );
        if presence {
            let t = topic.clone();
            self.expect_until(Duration::from_secs(10), "the presence_state", |c| {
                c.presence.get(&t).is_some_and(|p| p.synced)
            })
            .await;
        }
        reply
    }

    /// Waits for the reply to `reference` and returns its payload.
    pub async fn reply(&mut self, reference: &str, timeout: Duration) -> Value {
        let what = format!("the reply to ref {reference}");
        self.expect_until(timeout, &what, |c| c.find_reply(reference).is_some())
            .await;
        self.find_reply(reference).cloned().unwrap_or(Value::Null)
    }

    fn find_reply(&self, reference: &str) -> Option<&Value> {
        self.frames
            .iter()
            .find(|f| f.event == "phx_reply" && f.reference.as_deref() == Some(reference))
            .map(|f| &f.payload)
    }

    fn join_ref(&self, topic: &str) -> String {
        self.join_refs
            .get(topic)
            .cloned()
            .unwrap_or_else(|| panic!("{}: not joined to {topic}", self.label))
    }

    /// Pushes a JSON broadcast of `event` with `payload` on joined channel `sub_topic`.
    pub async fn broadcast(&mut self, sub_topic: &str, event: &str, payload: Value) {
        if let Err(e) = self.try_broadcast(sub_topic, event, payload).await {
            panic!("{}: send failed: {e}", self.label);
        }
    }

    /// Like [`Client::broadcast`], with a failed send (the socket is gone) as an `Err`.
    ///
    /// # Errors
    /// What the socket said.
    pub async fn try_broadcast(
        &mut self,
        sub_topic: &str,
        event: &str,
        payload: Value,
    ) -> Result<(), WsError> {
        let topic = topic(sub_topic);
        let join_ref = self.join_ref(&topic);
        let reference = self.next_ref();
        self.try_send(json!([join_ref, reference, topic, "broadcast",
            {"type": "broadcast", "event": event, "payload": payload}]))
            .await
    }

    /// Tracks `meta` on joined channel `sub_topic` and waits for the ok reply.
    pub async fn track(&mut self, sub_topic: &str, meta: Value) {
        let topic = topic(sub_topic);
        let join_ref = self.join_ref(&topic);
        let reference = self.next_ref();
        self.send(json!([join_ref, reference, topic, "presence",
            {"type": "presence", "event": "track", "payload": meta}]))
            .await;
        let reply = self.reply(&reference, Duration::from_secs(10)).await;
        assert_eq!(
            reply,
            json!({"status": "ok", "response": {}}),
            "{}: track",
            self.label
        );
    }

    /// Sends a heartbeat (keeps the socket clear of the idle timeout).
    pub async fn heartbeat(&mut self) {
        self.last_heartbeat = Instant::now();
        let reference = self.next_ref();
        self.send(json!([null, reference, "phoenix", "heartbeat", {}]))
            .await;
    }

    /// Reads one frame, waiting until `deadline` at most; false when none came or the socket
    /// is closed.
    async fn pump(&mut self, deadline: Instant) -> bool {
        if self.closed {
            return false;
        }
        if self.last_heartbeat.elapsed() >= HEARTBEAT_EVERY {
            self.heartbeat().await;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let next = match tokio::time::timeout(remaining, self.ws.next()).await {
            Err(_) => return false,
            Ok(next) => next,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(_)) | None => {
                self.closed = true;
                return false;
            }
        };
        let at = Instant::now();
        let frame = match message {
            Message::Text(text) => match serde_json::from_str::<Value>(text.as_str()) {
                Ok(Value::Array(slots)) if slots.len() == 5 => Some(Frame {
                    at,
                    join_ref: slots[0].as_str().map(str::to_owned),
                    reference: slots[1].as_str().map(str::to_owned),
                    topic: slots[2].as_str().unwrap_or_default().to_owned(),
                    event: slots[3].as_str().unwrap_or_default().to_owned(),
                    payload: slots[4].clone(),
                }),
                _ => panic!("{}: not a v2 frame: {text}", self.label),
            },
            Message::Binary(bytes) => Some(decode_kind4(&bytes, at, &self.label)),
            Message::Close(close) => {
                self.closed = true;
                self.close_code = close.map(|c| u16::from(c.code));
                None
            }
            _ => None,
        };
        if let Some(frame) = frame {
            self.ingest(frame);
        }
        true
    }

    fn ingest(&mut self, frame: Frame) {
        match frame.event.as_str() {
            "presence_state" => self
                .presence
                .entry(frame.topic.clone())
                .or_default()
                .apply_state(&frame.payload, frame.at),
            "presence_diff" => self
                .presence
                .entry(frame.topic.clone())
                .or_default()
                .apply_diff(&frame.payload, frame.at),
            _ => {}
        }
        self.frames.push(frame);
    }

    /// Reads frames until `cond` holds (true) or `timeout` passes (false).
    pub async fn wait_until(
        &mut self,
        timeout: Duration,
        mut cond: impl FnMut(&Client) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if !self.pump(deadline).await && self.closed {
                // Nothing more will come.
                return cond(self);
            }
        }
    }

    /// Like [`Client::wait_until`], panicking with `what` and the last frames on a timeout.
    pub async fn expect_until(
        &mut self,
        timeout: Duration,
        what: &str,
        cond: impl FnMut(&Client) -> bool,
    ) {
        if !self.wait_until(timeout, cond).await {
            panic!(
                "{}: no {what} within {timeout:?}; closed: {}; last frames:\n{}",
                self.label,
                self.closed,
                self.recent(12)
            );
        }
    }

    /// Reads everything that arrives during `period`.
    pub async fn settle(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        while Instant::now() < deadline {
            if !self.pump(deadline).await && self.closed {
                tokio::time::sleep_until(deadline.into()).await;
            }
        }
    }

    /// The last `n` frames, one per line.
    pub fn recent(&self, n: usize) -> String {
        let mut out = String::new();
        for f in &self.frames[self.frames.len().saturating_sub(n)..] {
            let _ = writeln!(out, "  {} {} {}", f.topic, f.event, f.payload);
        }
        out
    }

    /// Every frame read so far.
    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// Whether the server closed the socket (or it broke).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The code of the server's close frame, once one came (`None` too when the socket broke
    /// without one).
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// The user payloads of the broadcasts of `event` received on `sub_topic`, in order.
    pub fn broadcasts(&self, sub_topic: &str, event: &str) -> Vec<Value> {
        let topic = topic(sub_topic);
        self.frames
            .iter()
            .filter(|f| f.topic == topic && f.event == "broadcast")
            .filter(|f| f.payload["event"] == event)
            .map(|f| f.payload["payload"].clone())
            .collect()
    }

    /// How many broadcasts of `event` on `sub_topic` carried `payload` exactly.
    pub fn count_broadcast(&self, sub_topic: &str, event: &str, payload: &Value) -> usize {
        self.broadcasts(sub_topic, event)
            .iter()
            .filter(|p| *p == payload)
            .count()
    }

    /// The presence view of `sub_topic` (empty before the join's state).
    pub fn presence(&self, sub_topic: &str) -> PresenceView {
        self.presence
            .get(&topic(sub_topic))
            .cloned()
            .unwrap_or_default()
    }

    /// Whether `sub_topic`'s presence shows exactly `keys`.
    pub fn presence_is(&self, sub_topic: &str, keys: &[&str]) -> bool {
        let want: BTreeSet<String> = keys.iter().map(|k| k.to_string()).collect();
        self.presence
            .get(&topic(sub_topic))
            .is_some_and(|p| p.synced && p.key_set() == want)
    }

    /// The `data` of every `postgres_changes` push received on `sub_topic`.
    pub fn changes(&self, sub_topic: &str) -> Vec<Value> {
        let topic = topic(sub_topic);
        self.frames
            .iter()
            .filter(|f| f.topic == topic && f.event == "postgres_changes")
            .map(|f| f.payload["data"].clone())
            .collect()
    }

    /// The `system` pushes received on `sub_topic`.
    pub fn system(&self, sub_topic: &str) -> Vec<Value> {
        let topic = topic(sub_topic);
        self.frames
            .iter()
            .filter(|f| f.topic == topic && f.event == "system")
            .map(|f| f.payload.clone())
            .collect()
    }
}

/// Sends broadcasts of event `probe` (payload `{"k": <n>}`) from `sender` on `sub_topic`, a
/// few per second, until every receiver has received at least one, and returns how long that
/// took. Nodes learn each other's interest in a room asynchronously, so a test first makes sure
/// the path is open before it counts deliveries of its own events.
///
/// # Panics
/// After `timeout`, naming the receivers still without a probe.
pub async fn until_delivered(
    sender: &mut Client,
    sub_topic: &str,
    receivers: &mut [&mut Client],
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    let mut k = 0;
    loop {
        k += 1;
        sender.broadcast(sub_topic, "probe", json!({"k": k})).await;
        let mut missing = Vec::new();
        for r in receivers.iter_mut() {
            let got = r
                .wait_until(Duration::from_millis(250), |c| {
                    !c.broadcasts(sub_topic, "probe").is_empty()
                })
                .await;
            if !got {
                missing.push(r.label.clone());
            }
        }
        if missing.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "broadcasts from {} on {sub_topic} did not reach {missing:?} within {timeout:?}",
            sender.label
        );
    }
}

/// Decodes a kind-4 binary broadcast (PROTOCOL.md 2.3) into a `broadcast` frame.
fn decode_kind4(bytes: &[u8], at: Instant, label: &str) -> Frame {
    assert!(
        bytes.len() >= 5 && bytes[0] == 4,
        "{label}: a binary frame that is not kind 4: {bytes:?}"
    );
    let (t, e, m, encoding) = (
        bytes[1] as usize,
        bytes[2] as usize,
        bytes[3] as usize,
        bytes[4],
    );
    let field = |from: usize, len: usize| -> String {
        String::from_utf8_lossy(bytes.get(from..from + len).unwrap_or_default()).into_owned()
    };
    let topic = field(5, t);
    let event = field(5 + t, e);
    let meta = field(5 + t + e, m);
    let body = bytes.get(5 + t + e + m..).unwrap_or_default();
    let payload = if encoding == 1 {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    } else {
        json!(body)
    };
    let mut broadcast = json!({"type": "broadcast", "event": event, "payload": payload});
    if m > 0 {
        broadcast["meta"] = serde_json::from_str(&meta).unwrap_or(Value::Null);
    }
    Frame {
        at,
        join_ref: None,
        reference: None,
        topic,
        event: "broadcast".to_string(),
        payload: broadcast,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(r: &str) -> Value {
        json!({"phx_ref": r, "user": "u"})
    }

    #[test]
    fn diffs_before_the_state_are_held_and_joins_apply_before_leaves() {
        let t = Instant::now();
        let mut view = PresenceView::default();
        view.apply_diff(
            &json!({"joins": {"b": {"metas": [meta("2")]}}, "leaves": {}}),
            t,
        );
        assert!(view.keys.is_empty(), "held until the state");
        view.apply_state(&json!({"a": {"metas": [meta("1")]}}), t);
        assert_eq!(view.key_set(), ["a", "b"].map(String::from).into());
        // An update: the new meta joins, the old one leaves, in one diff.
        view.apply_diff(
            &json!({"joins": {"a": {"metas": [meta("3")]}}, "leaves": {"a": {"metas": [meta("1")]}}}),
            t,
        );
        assert_eq!(view.keys["a"], vec![meta("3")]);
        assert!(view.left_at("a").is_none());
        view.apply_diff(
            &json!({"joins": {}, "leaves": {"b": {"metas": [meta("2")]}}}),
            t,
        );
        assert_eq!(view.key_set(), ["a"].map(String::from).into());
        assert!(view.left_at("b").is_some());
        assert!(view.joined_since("b", t));
    }

    #[test]
    fn kind4_frames_decode_to_the_json_shape() {
        let mut bytes = vec![4, 14, 2, 10, 1];
        bytes.extend_from_slice(b"realtime:room1");
        bytes.extend_from_slice(b"ev");
        bytes.extend_from_slice(br#"{"id":"x"}"#);
        bytes.extend_from_slice(br#"{"n":1}"#);
        let frame = decode_kind4(&bytes, Instant::now(), "t");
        assert_eq!(frame.topic, "realtime:room1");
        assert_eq!(
            frame.payload,
            json!({"type": "broadcast", "event": "ev", "payload": {"n": 1}, "meta": {"id": "x"}})
        );
    }
}
