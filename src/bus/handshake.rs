//! The bus handshake: proves to each other that both ends of a fresh QUIC connection know the
//! cluster secret, and names them.
//!
//! On the first bidirectional stream (opened by the dialer), every message length-prefixed like a
//! frame (at most [`MAX_HANDSHAKE_BYTES`]):
//!
//! 1. dialer → acceptor: `Hello` (version, cluster id, node run, 32-byte random nonce);
//! 2. acceptor → dialer: its own `Hello`, once the dialer's passed [`Identity::check_hello`];
//! 3. dialer → acceptor: `Proof` with the dialer's MAC, once the acceptor's hello passed and
//!    named the run the dialer meant to reach;
//! 4. acceptor → dialer: `Welcome::Accepted` and the acceptor's `Proof`, once the dialer's MAC
//!    verified and the bus lists the dialer's run; or `Welcome::Refused(reason)` for the benign
//!    refusals (not listed, superseded, shutting down).
//!
//! The MAC is HMAC-SHA256 keyed with the cluster secret over
//! `MAC_LABEL || u32be(len) || dialer hello || u32be(len) || acceptor hello || side || exporter`,
//! where the hellos are their exact bytes on the wire, `side` is `b'D'` or `b'A'` (so one side's
//! proof is never the other's), and `exporter` is 32 bytes of TLS keying material exported from
//! this connection with label [`EXPORTER_LABEL`]. Both nonces make a proof fresh; the exporter
//! ties it to this TLS session, so a man in the middle that relays the messages between two TLS
//! sessions of its own cannot make either proof verify. Proofs are checked in constant time
//! (`ring::hmac::verify`). The dialer proves first, so the acceptor never gives a MAC to a peer
//! that has not shown it knows the secret.
//!
//! Every other refusal closes the connection with an application close code from [`Refusal`]
//! and a short reason, which the other side reads back ([`HandshakeError::RefusedByPeer`]).
//! Secrets never appear in reasons or logs.

use std::fmt;

use bytes::Bytes;
use quinn::{Connection, ConnectionError, SendStream, VarInt};
use realtime_proto::bus::{Hello, NodeRun, Proof, Welcome};
use ring::hmac;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::framing::{FrameReader, FramingError, prefixed};
use crate::error::{ErrorCode, OperationalError};

/// Longest handshake message accepted.
pub(super) const MAX_HANDSHAKE_BYTES: usize = 4096;
/// Longest node name or cluster id accepted in a hello.
pub(super) const MAX_NAME_BYTES: usize = 255;
/// First input of every proof MAC.
const MAC_LABEL: &[u8] = b"realtime-bus/1 proof";
/// Label of the TLS keying material exported for the proofs.
pub(super) const EXPORTER_LABEL: &[u8] = b"EXPORTER-realtime-bus/1";
/// Close code of a link that ends normally (unlisted, replaced, shutdown).
pub(super) const CLOSE_NORMAL: VarInt = VarInt::from_u32(0);
/// Close code of a link whose peer sent bytes that are not a valid frame.
pub(super) const CLOSE_INVALID_MESSAGE: VarInt = VarInt::from_u32(100);

/// Why a handshake was refused; each has its own application close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A proof did not verify: the other side has another cluster secret.
    WrongSecret,
    /// The other side belongs to another cluster id.
    OtherCluster,
    /// The other side speaks another major version of the bus protocol.
    Version,
    /// A handshake message did not decode, was too large, or named an invalid node.
    Malformed,
    /// The dialer's name sorts higher than the acceptor's: the acceptor should have dialed.
    DialRule,
    /// The other side uses this node's own name.
    SameName,
    /// The acceptor is not the node run the dialer meant to reach (it restarted, say).
    UnexpectedPeer,
    /// The acceptor does not list the dialer's run (yet): membership has not caught up.
    NotListed,
    /// A newer run of the same node is linked already.
    Superseded,
    /// The handshake did not finish in time.
    Timeout,
    /// The bus is shutting down.
    ShuttingDown,
}

impl Refusal {
    const ALL: [Refusal; 11] = [
        Refusal::WrongSecret,
        Refusal::OtherCluster,
        Refusal::Version,
        Refusal::Malformed,
        Refusal::DialRule,
        Refusal::SameName,
        Refusal::UnexpectedPeer,
        Refusal::NotListed,
        Refusal::Superseded,
        Refusal::Timeout,
        Refusal::ShuttingDown,
    ];

    /// Returns the application close code (1-11).
    pub(super) fn close_code(self) -> VarInt {
        let index = Refusal::ALL.iter().position(|r| *r == self).unwrap_or(0);
        VarInt::from_u32(u32::try_from(index).unwrap_or(0) + 1)
    }

    /// Returns the refusal of a close code, if it is one.
    pub(super) fn from_close_code(code: VarInt) -> Option<Refusal> {
        let index = usize::try_from(code.into_inner().checked_sub(1)?).ok()?;
        Refusal::ALL.get(index).copied()
    }

    /// Returns the operational code logged with this refusal.
    pub(crate) fn error_code(self) -> ErrorCode {
        match self {
            Refusal::WrongSecret => ErrorCode::Unauthorized,
            Refusal::OtherCluster | Refusal::DialRule | Refusal::SameName => {
                ErrorCode::InvalidConfiguration
            }
            Refusal::Version | Refusal::Malformed => ErrorCode::InvalidPeerMessage,
            Refusal::UnexpectedPeer
            | Refusal::NotListed
            | Refusal::Superseded
            | Refusal::Timeout
            | Refusal::ShuttingDown => ErrorCode::RealtimeNodeDisconnected,
        }
    }

    /// Returns true for refusals that point at a misconfiguration or an intruder (logged as
    /// warnings); the others are normal while membership converges or nodes restart.
    pub(crate) fn is_alarming(self) -> bool {
        matches!(
            self,
            Refusal::WrongSecret
                | Refusal::OtherCluster
                | Refusal::Version
                | Refusal::Malformed
                | Refusal::DialRule
                | Refusal::SameName
                | Refusal::Timeout
        )
    }

    fn as_str(self) -> &'static str {
        match self {
            Refusal::WrongSecret => "wrong cluster secret",
            Refusal::OtherCluster => "other cluster id",
            Refusal::Version => "unsupported bus protocol version",
            Refusal::Malformed => "malformed handshake",
            Refusal::DialRule => "the dialer's name must sort lower than the acceptor's",
            Refusal::SameName => "peer uses this node's name",
            Refusal::UnexpectedPeer => "unexpected node run",
            Refusal::NotListed => "node run not listed as a peer",
            Refusal::Superseded => "a newer run of the node is linked",
            Refusal::Timeout => "handshake timed out",
            Refusal::ShuttingDown => "bus shutting down",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection did not become an authenticated link.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// This node refused the other side.
    #[error("refused the peer ({refusal}): {detail}")]
    Refused {
        /// Why.
        refusal: Refusal,
        /// What exactly (for our log only).
        detail: String,
    },
    /// The other side refused this node: `refusal` from its close code, `None` for a
    /// `Welcome::Refused` (benign refusals).
    #[error("refused by the peer: {detail}")]
    RefusedByPeer {
        /// Why, when the peer closed with a refusal code.
        refusal: Option<Refusal>,
        /// The peer's reason text (lossy UTF-8, untrusted).
        detail: String,
    },
    /// The connection failed or closed without a refusal.
    #[error("connection failed: {0}")]
    Connection(String),
}

impl HandshakeError {
    /// Returns a local refusal.
    pub(super) fn refused(refusal: Refusal, detail: impl Into<String>) -> HandshakeError {
        HandshakeError::Refused {
            refusal,
            detail: detail.into(),
        }
    }

    /// Returns the refusal behind this error, ours or the peer's.
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        match self {
            HandshakeError::Refused { refusal, .. } => Some(*refusal),
            HandshakeError::RefusedByPeer { refusal, .. } => *refusal,
            HandshakeError::Connection(_) => None,
        }
    }

    /// Returns true when the failure deserves a warning (see [`Refusal::is_alarming`]).
    pub(crate) fn is_alarming(&self) -> bool {
        self.refusal().is_some_and(Refusal::is_alarming)
    }

    /// Closes `conn` as this failure requires: a local refusal with its code and text.
    pub(super) fn close(&self, conn: &Connection) {
        match self {
            HandshakeError::Refused { refusal, .. } => {
                conn.close(refusal.close_code(), refusal.as_str().as_bytes());
            }
            HandshakeError::RefusedByPeer { .. } | HandshakeError::Connection(_) => {
                conn.close(CLOSE_NORMAL, b"handshake failed");
            }
        }
    }

    fn from_connection(error: &ConnectionError) -> HandshakeError {
        match error {
            ConnectionError::ApplicationClosed(close) => {
                let detail = String::from_utf8_lossy(&close.reason).into_owned();
                match Refusal::from_close_code(close.error_code) {
                    Some(refusal) => HandshakeError::RefusedByPeer {
                        refusal: Some(refusal),
                        detail,
                    },
                    None => HandshakeError::Connection(format!("closed by the peer: {detail}")),
                }
            }
            other => HandshakeError::Connection(other.to_string()),
        }
    }
}

impl OperationalError for HandshakeError {
    fn code(&self) -> ErrorCode {
        self.refusal()
            .map_or(ErrorCode::RealtimeNodeDisconnected, Refusal::error_code)
    }

    fn client_message(&self) -> String {
        "cluster peer not connected".to_string()
    }
}

/// Which end of the connection computes a proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// The node that opened the connection.
    Dialer,
    /// The node that accepted it.
    Acceptor,
}

impl Side {
    fn tag(self) -> u8 {
        match self {
            Side::Dialer => b'D',
            Side::Acceptor => b'A',
        }
    }
}

/// What both proofs of one connection cover.
pub(super) struct Transcript {
    /// The dialer's hello as sent.
    pub(super) dialer_hello: Bytes,
    /// The acceptor's hello as sent.
    pub(super) acceptor_hello: Bytes,
    /// TLS keying material of this connection.
    pub(super) exporter: [u8; 32],
}

impl Transcript {
    fn mac_input(&self, side: Side) -> Vec<u8> {
        let mut input = Vec::with_capacity(
            MAC_LABEL.len() + 8 + self.dialer_hello.len() + self.acceptor_hello.len() + 33,
        );
        input.extend_from_slice(MAC_LABEL);
        for hello in [&self.dialer_hello, &self.acceptor_hello] {
            input.extend_from_slice(&u32::try_from(hello.len()).unwrap_or(u32::MAX).to_be_bytes());
            input.extend_from_slice(hello);
        }
        input.push(side.tag());
        input.extend_from_slice(&self.exporter);
        input
    }
}

/// This node as the handshake presents it: cluster, run and the key made from the secret.
pub(super) struct Identity {
    cluster: String,
    me: NodeRun,
    key: hmac::Key,
}

impl Identity {
    /// Creates the identity; `secret` keys every proof.
    pub(super) fn new(cluster: String, me: NodeRun, secret: &[u8]) -> Identity {
        Identity {
            cluster,
            me,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// Returns a hello with a fresh nonce.
    pub(super) fn hello(&self) -> Hello {
        Hello {
            version: realtime_proto::PROTOCOL_VERSION,
            cluster: self.cluster.clone(),
            node: self.me.clone(),
            nonce: rand::random(),
        }
    }

    /// Checks the other side's hello: same major version, same cluster, a valid name.
    ///
    /// # Errors
    /// [`HandshakeError::Refused`] with `Version`, `OtherCluster` or `Malformed`.
    pub(super) fn check_hello(&self, hello: &Hello) -> Result<(), HandshakeError> {
        if hello.version != realtime_proto::PROTOCOL_VERSION {
            return Err(HandshakeError::refused(
                Refusal::Version,
                format!(
                    "peer speaks version {}, this node {}",
                    hello.version,
                    realtime_proto::PROTOCOL_VERSION
                ),
            ));
        }
        if hello.cluster != self.cluster {
            return Err(HandshakeError::refused(
                Refusal::OtherCluster,
                format!(
                    "peer cluster `{}` is not `{}`",
                    hello.cluster.escape_debug(),
                    self.cluster
                ),
            ));
        }
        valid_name(&hello.node.name)
            .map_err(|problem| HandshakeError::refused(Refusal::Malformed, problem))
    }

    /// Returns the proof of `side` for `transcript`.
    pub(super) fn proof(&self, transcript: &Transcript, side: Side) -> Proof {
        let tag = hmac::sign(&self.key, &transcript.mac_input(side));
        let mut mac = [0u8; 32];
        mac.copy_from_slice(tag.as_ref());
        Proof { mac }
    }

    /// Verifies the other side's proof in constant time.
    ///
    /// # Errors
    /// [`HandshakeError::Refused`] with `WrongSecret` when it does not verify.
    pub(super) fn verify(
        &self,
        transcript: &Transcript,
        side: Side,
        proof: &Proof,
    ) -> Result<(), HandshakeError> {
        hmac::verify(&self.key, &transcript.mac_input(side), &proof.mac).map_err(|_| {
            HandshakeError::refused(
                Refusal::WrongSecret,
                "the peer's proof does not verify with this node's secret",
            )
        })
    }
}

/// Checks a node name: 1-255 bytes, no control characters.
///
/// # Errors
/// What is wrong with it.
pub(super) fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!("node name of {} bytes", name.len()));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "node name `{}` has control characters",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// Returns the connection's exported keying material for the proofs.
///
/// # Errors
/// [`HandshakeError::Connection`] when TLS cannot export (never after a finished handshake).
pub(super) fn exporter(conn: &Connection) -> Result<[u8; 32], HandshakeError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| HandshakeError::Connection("TLS keying material export failed".into()))?;
    Ok(out)
}

/// The handshake stream of one connection.
pub(super) struct HandshakeStream {
    conn: Connection,
    send: SendStream,
    reader: FrameReader,
}

impl HandshakeStream {
    /// Opens the stream (dialer).
    ///
    /// # Errors
    /// [`HandshakeError`] when the connection failed.
    pub(super) async fn open(conn: &Connection) -> Result<HandshakeStream, HandshakeError> {
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| HandshakeError::from_connection(&e))?;
        Ok(HandshakeStream::new(conn, send, recv))
    }

    /// Accepts the stream (acceptor).
    ///
    /// # Errors
    /// [`HandshakeError`] when the connection failed.
    pub(super) async fn accept(conn: &Connection) -> Result<HandshakeStream, HandshakeError> {
        let (send, recv) = conn
            .accept_bi()
            .await
            .map_err(|e| HandshakeError::from_connection(&e))?;
        Ok(HandshakeStream::new(conn, send, recv))
    }

    fn new(conn: &Connection, send: SendStream, recv: quinn::RecvStream) -> HandshakeStream {
        HandshakeStream {
            conn: conn.clone(),
            send,
            reader: FrameReader::new(recv, MAX_HANDSHAKE_BYTES),
        }
    }

    /// The failure to report after an I/O error: the connection's close reason if it closed.
    fn io_failure(&self, what: String) -> HandshakeError {
        match self.conn.close_reason() {
            Some(reason) => HandshakeError::from_connection(&reason),
            None => HandshakeError::Connection(what),
        }
    }

    /// Writes one message; returns its encoding (what the proofs cover for hellos).
    ///
    /// # Errors
    /// [`HandshakeError`] when the stream or connection failed.
    pub(super) async fn write<T: Serialize>(&mut self, value: &T) -> Result<Bytes, HandshakeError> {
        let encoded = Bytes::from(
            realtime_proto::encode(value)
                .map_err(|e| HandshakeError::Connection(format!("cannot encode: {e}")))?,
        );
        self.write_raw(&encoded).await?;
        Ok(encoded)
    }

    /// Writes one message's bytes with their prefix.
    ///
    /// # Errors
    /// [`HandshakeError`] when the stream or connection failed.
    pub(super) async fn write_raw(&mut self, encoded: &[u8]) -> Result<(), HandshakeError> {
        if let Err(error) = self.send.write_all(&prefixed(encoded)).await {
            return Err(self.io_failure(error.to_string()));
        }
        Ok(())
    }

    /// Reads one message; returns it and its bytes.
    ///
    /// # Errors
    /// [`HandshakeError`]: `Malformed` for bytes that are not one `T` (or too many), else the
    /// connection's failure.
    pub(super) async fn read<T: DeserializeOwned>(&mut self) -> Result<(T, Bytes), HandshakeError> {
        let bytes = match self.reader.next().await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(self.io_failure("handshake stream ended".into())),
            Err(FramingError::Read(error)) => return Err(self.io_failure(error.to_string())),
            Err(error) => {
                return Err(HandshakeError::refused(
                    Refusal::Malformed,
                    error.to_string(),
                ));
            }
        };
        let value = realtime_proto::decode::<T>(&bytes)
            .map_err(|e| HandshakeError::refused(Refusal::Malformed, e.to_string()))?;
        Ok((value, bytes))
    }

    /// Ends our side of the stream.
    pub(super) fn finish(&mut self) {
        // Already finished or reset only when the connection is gone; the link notices.
        let _ = self.send.finish();
    }
}

/// Runs the dialer's side on a fresh connection to `expected`.
///
/// # Errors
/// [`HandshakeError`]: a refusal either way, or a failed connection. The caller closes `conn`.
pub(super) async fn dial(
    identity: &Identity,
    conn: &Connection,
    expected: &NodeRun,
) -> Result<(), HandshakeError> {
    if !super::tls::negotiated_bus_alpn(conn) {
        return Err(HandshakeError::refused(Refusal::Malformed, "no bus ALPN"));
    }
    let mut stream = HandshakeStream::open(conn).await?;
    let dialer_hello = stream.write(&identity.hello()).await?;
    let (theirs, acceptor_hello) = stream.read::<Hello>().await?;
    identity.check_hello(&theirs)?;
    if theirs.node != *expected {
        return Err(HandshakeError::refused(
            Refusal::UnexpectedPeer,
            format!(
                "dialed {}@{}, {}@{} answered",
                expected.name,
                expected.incarnation,
                theirs.node.name.escape_debug(),
                theirs.node.incarnation
            ),
        ));
    }
    let transcript = Transcript {
        dialer_hello,
        acceptor_hello,
        exporter: exporter(conn)?,
    };
    stream
        .write(&identity.proof(&transcript, Side::Dialer))
        .await?;
    match stream.read::<Welcome>().await?.0 {
        Welcome::Accepted => {}
        Welcome::Refused(reason) => {
            return Err(HandshakeError::RefusedByPeer {
                refusal: None,
                detail: reason.chars().take(200).collect(),
            });
        }
    }
    let (proof, _) = stream.read::<Proof>().await?;
    identity.verify(&transcript, Side::Acceptor, &proof)?;
    stream.finish();
    Ok(())
}

/// An inbound connection whose dialer proved it knows the secret; the bus decides to welcome it.
pub(super) struct Verified {
    stream: HandshakeStream,
    transcript: Transcript,
    peer: NodeRun,
}

impl Verified {
    /// Returns the dialer's run.
    pub(super) fn peer(&self) -> &NodeRun {
        &self.peer
    }

    /// Accepts the dialer: `Welcome::Accepted` and this node's proof.
    ///
    /// # Errors
    /// [`HandshakeError`] when the connection failed.
    pub(super) async fn welcome(mut self, identity: &Identity) -> Result<(), HandshakeError> {
        self.stream.write(&Welcome::Accepted).await?;
        self.stream
            .write(&identity.proof(&self.transcript, Side::Acceptor))
            .await?;
        self.stream.finish();
        Ok(())
    }

    /// Refuses the dialer with `Welcome::Refused`, then waits (bounded by the caller) for the
    /// dialer to close.
    pub(super) async fn refuse(mut self, refusal: Refusal) {
        let reason = refusal.as_str().to_string();
        if self.stream.write(&Welcome::Refused(reason)).await.is_ok() {
            self.stream.finish();
            self.stream.conn.closed().await;
        }
    }
}

/// Runs the acceptor's side up to the dialer's verified proof.
///
/// # Errors
/// [`HandshakeError`]: a refusal, or a failed connection. The caller closes `conn`.
pub(super) async fn accept(
    identity: &Identity,
    conn: &Connection,
) -> Result<Verified, HandshakeError> {
    if !super::tls::negotiated_bus_alpn(conn) {
        return Err(HandshakeError::refused(Refusal::Malformed, "no bus ALPN"));
    }
    let mut stream = HandshakeStream::accept(conn).await?;
    let (theirs, dialer_hello) = stream.read::<Hello>().await?;
    identity.check_hello(&theirs)?;
    let peer = theirs.node;
    if peer.name == identity.me.name {
        return Err(HandshakeError::refused(
            Refusal::SameName,
            format!("a peer dialed as {}", identity.me.name),
        ));
    }
    if peer.name > identity.me.name {
        return Err(HandshakeError::refused(
            Refusal::DialRule,
            format!(
                "{} dialed {}, but the lower name dials",
                peer.name.escape_debug(),
                identity.me.name
            ),
        ));
    }
    let acceptor_hello = stream.write(&identity.hello()).await?;
    let transcript = Transcript {
        dialer_hello,
        acceptor_hello,
        exporter: exporter(conn)?,
    };
    let (proof, _) = stream.read::<Proof>().await?;
    identity.verify(&transcript, Side::Dialer, &proof)?;
    Ok(Verified {
        stream,
        transcript,
        peer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str) -> NodeRun {
        NodeRun {
            name: name.to_string(),
            incarnation: 1,
        }
    }

    fn transcript() -> Transcript {
        Transcript {
            dialer_hello: Bytes::from_static(b"dialer hello"),
            acceptor_hello: Bytes::from_static(b"acceptor hello"),
            exporter: [9; 32],
        }
    }

    #[test]
    fn a_proof_verifies_only_with_the_same_secret_side_and_transcript() {
        let a = Identity::new("c".into(), run("a"), b"secret");
        let b = Identity::new("c".into(), run("b"), b"secret");
        let other = Identity::new("c".into(), run("b"), b"other secret");
        let t = transcript();
        let proof = a.proof(&t, Side::Dialer);
        assert!(b.verify(&t, Side::Dialer, &proof).is_ok());
        assert!(other.verify(&t, Side::Dialer, &proof).is_err());
        assert!(
            b.verify(&t, Side::Acceptor, &proof).is_err(),
            "a dialer's proof is not an acceptor's"
        );
        let mut relayed = transcript();
        relayed.exporter = [8; 32];
        assert!(
            b.verify(&relayed, Side::Dialer, &proof).is_err(),
            "a proof is bound to its TLS session"
        );
        let mut shifted = transcript();
        shifted.dialer_hello = Bytes::from_static(b"dialer hell");
        shifted.acceptor_hello = Bytes::from_static(b"oacceptor hello");
        assert!(
            b.verify(&shifted, Side::Dialer, &proof).is_err(),
            "hello boundaries are part of the input"
        );
    }

    #[test]
    fn hellos_of_other_versions_clusters_or_with_bad_names_are_refused() {
        let me = Identity::new("c".into(), run("a"), b"s");
        let mut hello = Identity::new("c".into(), run("b"), b"s").hello();
        assert!(me.check_hello(&hello).is_ok());
        let refusal = |h: &Hello| me.check_hello(h).unwrap_err().refusal();
        hello.version += 1;
        assert_eq!(refusal(&hello), Some(Refusal::Version));
        hello.version -= 1;
        hello.cluster = "d".into();
        assert_eq!(refusal(&hello), Some(Refusal::OtherCluster));
        hello.cluster = "c".into();
        for name in [String::new(), "x".repeat(256), "a\nb".into()] {
            hello.node.name = name;
            assert_eq!(refusal(&hello), Some(Refusal::Malformed));
        }
    }

    #[test]
    fn close_codes_round_trip_and_normal_codes_are_no_refusal() {
        for refusal in Refusal::ALL {
            assert_eq!(
                Refusal::from_close_code(refusal.close_code()),
                Some(refusal)
            );
        }
        assert_eq!(Refusal::from_close_code(CLOSE_NORMAL), None);
        assert_eq!(Refusal::from_close_code(CLOSE_INVALID_MESSAGE), None);
    }
}
