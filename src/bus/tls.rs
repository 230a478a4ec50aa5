//! TLS and QUIC transport settings of the bus endpoint.
//!
//! TLS here only encrypts and gives each connection a unique session: the server certificate is
//! a throwaway self-signed one made at start, and the client accepts any certificate (it still
//! checks that the server signed the handshake with the certificate's key, which the exported
//! keying material then depends on). Peers authenticate in the bus handshake with the cluster
//! secret (see `handshake`). Every rustls config is built with the ring provider explicitly, so no
//! process-wide provider is needed. TLS 1.3 only (QUIC requires it); ALPN
//! [`realtime_proto::bus::ALPN`].

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::BusError;

/// The server name dialers put in their TLS hello (the certificate is not checked against it).
pub(super) const SERVER_NAME: &str = "realtime-bus";
/// A link with no packet for this long (ms) is dead.
const IDLE_TIMEOUT_MS: u32 = 6_000;
/// Keep-alive period, well under [`IDLE_TIMEOUT_MS`].
const KEEP_ALIVE: Duration = Duration::from_secs(1);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Transport settings of one side. A dialer opens one bidirectional stream (the handshake) and
/// each side one unidirectional stream (its frames); the limits allow exactly that.
fn transport(accepts_bidi: bool) -> Arc<TransportConfig> {
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(u32::from(accepts_bidi)))
        .max_concurrent_uni_streams(VarInt::from_u32(1))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .datagram_receive_buffer_size(None);
    Arc::new(transport)
}

/// Returns the accepting side's settings with a fresh self-signed certificate.
///
/// # Errors
/// [`BusError::Tls`] when the certificate or the TLS config cannot be made.
pub(super) fn server_config() -> Result<quinn::ServerConfig, BusError> {
    let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(|e| BusError::Tls(format!("self-signed certificate: {e}")))?;
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| BusError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| BusError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![realtime_proto::bus::ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| BusError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(true));
    Ok(config)
}

/// Returns the dialing side's settings.
///
/// # Errors
/// [`BusError::Tls`] when the TLS config cannot be made.
pub(super) fn client_config() -> Result<quinn::ClientConfig, BusError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| BusError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::tls::AnyServerCertificate::new(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![realtime_proto::bus::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| BusError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(false));
    Ok(config)
}

/// Returns true when the connection negotiated the bus ALPN.
pub(super) fn negotiated_bus_alpn(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|protocol| protocol == realtime_proto::bus::ALPN)
}
