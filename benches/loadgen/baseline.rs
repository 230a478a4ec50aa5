//! The baseline: the least a Phoenix-compatible broadcast server has to do, with tokio and
//! tokio-tungstenite, so the real server's figures can be read as ratios against it.
//!
//! It answers heartbeats, `phx_join` (`ok` with `{"postgres_changes":[]}`) and `phx_leave`, and
//! fans each `broadcast` (JSON text or kind-3 binary) out to the other members of the topic
//! (`self:false`, no ack). Each outgoing frame is encoded once per serializer version and shared
//! as `Bytes`; each connection's writer drains its queue with `feed()` and flushes once per batch.
//! No auth, no tenants, no limits, no presence: it is a floor, not a server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::wire::{self, Vsn};

/// Frames queued per connection before it counts as a slow consumer and is closed.
const OUTBOX_CAPACITY: usize = 16 * 1024;
/// Listen queue length (the kernel caps it at `net.core.somaxconn`, 4096 here).
const LISTEN_BACKLOG: u32 = 4096;
/// Most frames written between two flushes.
const MAX_BATCH: usize = 512;

#[derive(Clone)]
struct Member {
    conn: u64,
    vsn: Vsn,
    tx: mpsc::Sender<Message>,
}

/// Topic → members; copy-on-write so a fan-out holds the lock only to clone one `Arc`.
// std `RwLock`: every critical section is a map lookup or a Vec rebuild, never an await.
#[derive(Default)]
struct Hub {
    topics: RwLock<HashMap<String, Arc<Vec<Member>>>>,
}

impl Hub {
    fn join(&self, topic: &str, member: Member) {
        let mut topics = self.topics.write().expect("hub lock poisoned");
        let entry = topics.entry(topic.to_owned()).or_default();
        let mut members: Vec<Member> = entry
            .iter()
            .filter(|m| m.conn != member.conn)
            .cloned()
            .collect();
        members.push(member);
        *entry = Arc::new(members);
    }

    fn leave(&self, topic: &str, conn: u64) {
        let mut topics = self.topics.write().expect("hub lock poisoned");
        if let Some(entry) = topics.get_mut(topic) {
            let members: Vec<Member> = entry.iter().filter(|m| m.conn != conn).cloned().collect();
            if members.is_empty() {
                topics.remove(topic);
            } else {
                *entry = Arc::new(members);
            }
        }
    }

    fn members(&self, topic: &str) -> Option<Arc<Vec<Member>>> {
        self.topics
            .read()
            .expect("hub lock poisoned")
            .get(topic)
            .cloned()
    }

    /// Sends one broadcast to every member but `from`, encoding lazily once per version.
    fn fan_out(
        &self,
        topic: &str,
        from: u64,
        v2_frame: impl Fn() -> Message,
        v1_frame: impl Fn() -> Option<Message>,
    ) {
        let Some(members) = self.members(topic) else {
            return;
        };
        let mut v2: Option<Message> = None;
        let mut v1: Option<Option<Message>> = None;
        for m in members.iter().filter(|m| m.conn != from) {
            let frame = match m.vsn {
                Vsn::V2 => v2.get_or_insert_with(&v2_frame).clone(),
                Vsn::V1 => match v1.get_or_insert_with(&v1_frame) {
                    Some(f) => f.clone(),
                    None => continue,
                },
            };
            // A full outbox means a slow consumer: the frame is dropped, and the generator
            // counts it as lost. A closed outbox belongs to a connection that is going away.
            let _ = m.tx.try_send(frame);
        }
    }
}

/// Runs the baseline server on `127.0.0.1:port` until the process is killed.
pub async fn serve(port: u16) -> std::io::Result<()> {
    // `TcpListener::bind` listens with a backlog of 128, which a burst of connects overflows
    // while the one core is busy (each overflow costs the client a 1 s SYN retransmit).
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    let listener = socket.listen(LISTEN_BACKLOG)?;
    eprintln!("baseline-server: listening on 127.0.0.1:{port}");
    let hub = Arc::new(Hub::default());
    let mut next_conn = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        next_conn += 1;
        let hub = hub.clone();
        let conn = next_conn;
        tokio::spawn(async move {
            if let Err(err) = serve_connection(hub, conn, stream).await {
                tracing_free_log(conn, &err);
            }
        });
    }
}

fn tracing_free_log(conn: u64, err: &dyn std::fmt::Display) {
    // Resets during teardown are normal; print only the unusual ones.
    let text = err.to_string();
    if !["reset", "closed", "Broken pipe", "Handshake not finished"]
        .iter()
        .any(|s| text.contains(s))
    {
        eprintln!("baseline-server: connection {conn}: {text}");
    }
}

fn text(s: String) -> Message {
    Message::Text(Utf8Bytes::from(s))
}

// The handshake callback's `Result<Response, ErrorResponse>` type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn serve_connection(
    hub: Arc<Hub>,
    conn: u64,
    stream: TcpStream,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    stream.set_nodelay(true)?;
    let mut vsn = Vsn::V1;
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |req: &Request, resp: Response| {
            vsn = Vsn::from_query(req.uri().query());
            Ok(resp)
        },
        Some(config),
    )
    .await?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(OUTBOX_CAPACITY);

    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(first).await.is_err() {
                return;
            }
            let mut n = 1;
            while n < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => {
                        if sink.feed(m).await.is_err() {
                            return;
                        }
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });

    let mut joined: Vec<String> = Vec::new();
    let ok_empty = json!({"status": "ok", "response": {}});
    while let Some(msg) = stream.next().await {
        match msg? {
            Message::Binary(frame) => {
                let Some(push) = wire::decode_kind3(&frame) else {
                    continue;
                };
                let Ok(topic) = std::str::from_utf8(push.topic) else {
                    continue;
                };
                let kind4 = Bytes::from(wire::encode_kind4(
                    push.topic,
                    push.event,
                    &[],
                    push.encoding,
                    push.payload,
                ));
                let v1 = || {
                    (push.encoding != 0).then(|| {
                        let event = String::from_utf8_lossy(push.event);
                        text(wire::broadcast_out_text(
                            Vsn::V1,
                            topic,
                            &wire::broadcast_map(&event, push.payload),
                        ))
                    })
                };
                hub.fan_out(topic, conn, || Message::Binary(kind4.clone()), v1);
            }
            Message::Text(t) => {
                let Some(env) = wire::decode_text(vsn, &t) else {
                    continue;
                };
                let reply = |payload: &serde_json::Value, join_ref: Option<&str>| {
                    text(wire::encode_text(
                        vsn,
                        join_ref,
                        env.msg_ref.as_deref(),
                        &env.topic,
                        "phx_reply",
                        payload,
                    ))
                };
                match env.event.as_str() {
                    "heartbeat" if env.topic == wire::PHOENIX_TOPIC => {
                        let _ = tx.try_send(reply(&ok_empty, None));
                    }
                    "phx_join" if env.topic.starts_with("realtime:") => {
                        hub.join(
                            &env.topic,
                            Member {
                                conn,
                                vsn,
                                tx: tx.clone(),
                            },
                        );
                        joined.push(env.topic.clone());
                        let ok = json!({"status": "ok", "response": {"postgres_changes": []}});
                        let _ = tx.try_send(reply(&ok, env.join_ref.as_deref()));
                    }
                    "phx_join" => {
                        let err =
                            json!({"status": "error", "response": {"reason": "unmatched topic"}});
                        let _ = tx.try_send(reply(&err, None));
                    }
                    "phx_leave" => {
                        hub.leave(&env.topic, conn);
                        joined.retain(|t| t != &env.topic);
                        let _ = tx.try_send(reply(&ok_empty, env.join_ref.as_deref()));
                    }
                    "broadcast" => {
                        let payload = env.payload.to_string();
                        let v2 = Utf8Bytes::from(wire::broadcast_out_text(
                            Vsn::V2,
                            &env.topic,
                            &payload,
                        ));
                        let v1 = Utf8Bytes::from(wire::broadcast_out_text(
                            Vsn::V1,
                            &env.topic,
                            &payload,
                        ));
                        hub.fan_out(
                            &env.topic,
                            conn,
                            || Message::Text(v2.clone()),
                            || Some(Message::Text(v1.clone())),
                        );
                    }
                    _ => {}
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    for topic in &joined {
        hub.leave(topic, conn);
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}
