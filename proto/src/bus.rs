//! Frames of the inter-node bus: the handshake that authenticates a peer, and every message
//! nodes exchange once it is authenticated.
//!
//! These are plain data. Everything here arrives from the network, so the server validates
//! each value (names, sizes, counts) before acting on it; decoding alone proves nothing but the
//! shape. Byte strings that carry a server-side encoding of their own (a presence delta, raw
//! pgoutput messages) stay opaque here and are validated by their own decoders.

use serde::{Deserialize, Serialize};

/// ALPN protocol name of the bus; a QUIC peer without it is refused in the TLS handshake.
pub const ALPN: &[u8] = b"realtime-bus/1";

/// A node run: its name and the incarnation (start time in ms) of this run.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeRun {
    /// The node name (`NODE_NAME`).
    pub name: String,
    /// The run's incarnation.
    pub incarnation: u64,
}

/// First message of each side on the handshake stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Major version of the bus protocol ([`crate::PROTOCOL_VERSION`]).
    pub version: u16,
    /// The cluster this node belongs to (`CLUSTER_ID`).
    pub cluster: String,
    /// Who is speaking.
    pub node: NodeRun,
    /// A fresh random challenge for the other side.
    pub nonce: [u8; 32],
}

/// Second message of each side: the proof that it knows the cluster secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// A MAC keyed with the cluster secret over both hellos and the TLS session (the server
    /// documents the exact input).
    pub mac: [u8; 32],
}

/// The handshake's outcome, sent by the accepting side after checking the dialer's proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Welcome {
    /// Accepted: frames may flow.
    Accepted,
    /// Refused, with a reason for the dialer's log.
    Refused(String),
}

/// A room: the tenant, whether the channel is private, and the topic without `realtime:`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Room {
    /// Tenant external id.
    pub tenant: String,
    /// Private channel.
    pub private: bool,
    /// Topic without the `realtime:` prefix.
    pub sub_topic: String,
}

/// How a user broadcast's payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayloadEncoding {
    /// JSON text.
    Json,
    /// Opaque binary.
    Binary,
}

/// A message published on some node, for a peer's local subscribers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A user broadcast (the binary-capable form).
    User {
        /// User event name.
        event: String,
        /// Payload encoding.
        encoding: PayloadEncoding,
        /// Payload bytes.
        payload: Vec<u8>,
        /// Kind-4 metadata JSON object text, if any.
        metadata: Option<Vec<u8>>,
    },
    /// A JSON event (a forwarded `broadcast` push, the batch HTTP API, ...).
    Json {
        /// What it counts as: 0 broadcast, 1 presence, 2 postgres changes, 3 system.
        kind: u8,
        /// Event name.
        event: String,
        /// Payload JSON text.
        payload: String,
    },
}

/// One event of a tenant's replication stream, as the owner received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamEvent {
    /// The stream (re)connected: relations will be described again.
    Connected,
    /// A transaction begins.
    Begin {
        /// LSN of its commit record.
        final_lsn: u64,
        /// Commit time, microseconds since the Unix epoch.
        commit_micros: i64,
        /// Transaction id.
        xid: u32,
    },
    /// One raw pgoutput message inside the transaction.
    Data {
        /// Its WAL position.
        lsn: u64,
        /// The message bytes.
        bytes: Vec<u8>,
    },
    /// The transaction committed.
    Commit {
        /// LSN of the commit record.
        lsn: u64,
        /// End of the commit record: what a consumer confirms.
        end_lsn: u64,
    },
    /// Changes were lost (the slot was invalidated or recreated), with the reason.
    Lost(String),
    /// The stream disconnected and is reconnecting, with the error text.
    Disconnected(String),
}

/// A request that expects one [`Response`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Anti-entropy: here is my presence digest; send what I miss.
    PresenceSync(PresenceDigest),
    /// Liveness and round-trip probe.
    Ping,
    /// The answering node's metrics, as Prometheus text (added in protocol version 2).
    Metrics,
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// What the asking node misses (encoded like [`Frame::Presence`]), or nothing.
    PresenceSync(Option<Vec<u8>>),
    /// Answer to [`Request::Ping`].
    Pong,
    /// The request failed on the answering node, with the reason (`ErrorOnRpcCall`).
    Error(String),
    /// Answer to [`Request::Metrics`]: the node's series, each labelled with its `node`
    /// (added in protocol version 2).
    Metrics(String),
}

/// A presence digest: per node the lowest live incarnation, per replica its contiguous
/// operation counter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceDigest {
    /// (node, lowest live incarnation).
    pub floors: Vec<(String, u64)>,
    /// (replica, contiguous counter).
    pub clocks: Vec<(NodeRun, u64)>,
}

/// A frame after the handshake. Variants are only ever appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// A broadcast for the receiver's local subscribers of `room` (never forwarded again).
    Broadcast {
        /// The room.
        room: Room,
        /// The message.
        message: Message,
    },
    /// Rooms the sender has local subscribers for: with `reset` the list replaces everything
    /// the receiver knew of the sender, else `added`/`removed` apply in order.
    Interest {
        /// Replace the sender's whole interest.
        reset: bool,
        /// Rooms that got their first local subscriber.
        added: Vec<Room>,
        /// Rooms that lost their last local subscriber.
        removed: Vec<Room>,
    },
    /// A presence delta of the sender's replica (or an anti-entropy answer), in the validated
    /// encoding of the server's presence module ([`crate::presence::PresenceDelta`]).
    Presence(Vec<u8>),
    /// The sender's subscribers want (`true`) or no longer want tenant's Postgres changes from
    /// the receiver, which owns the tenant's stream.
    ChangesInterest {
        /// Tenant external id.
        tenant: String,
        /// Wanted or not.
        wanted: bool,
        /// The last commit end the sender dispatched (0: a new feed, nothing to catch up).
        since: u64,
    },
    /// Stream events of a tenant the sender owns, in WAL order.
    Changes {
        /// Tenant external id.
        tenant: String,
        /// The events.
        events: Vec<StreamEvent>,
    },
    /// The sender delivered a tenant's changes up to `end_lsn` (a commit's end).
    ChangesAck {
        /// Tenant external id.
        tenant: String,
        /// The commit end the sender dispatched.
        end_lsn: u64,
    },
    /// A tenant record changed through the sender's API: drop caches and act on `change`.
    TenantChanged {
        /// Tenant external id.
        tenant: String,
        /// 0 created, 1 updated, 2 deleted, 3 reloaded, 4 shutdown.
        change: u8,
        /// Whether the tenant's sockets must close.
        disconnect: bool,
    },
    /// A request; answer with [`Frame::Reply`] of the same id.
    Request {
        /// Correlation id, unique per sender and connection.
        id: u64,
        /// The request.
        request: Request,
    },
    /// The answer to a [`Frame::Request`].
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        response: Response,
    },
}
