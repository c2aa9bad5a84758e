//! The QUIC endpoint of the data plane (quinn), authenticated by the device key.
//!
//! The TLS certificate is libp2p's self-signed certificate bound to the device's ed25519 key
//! (`libp2p::tls`): the certificate carries a signature of its own key by the device key, and the
//! verifier on either side accepts it only if that signature holds. So the peer at the other end of
//! a connection is proven to hold the key of the [`DeviceId`] that [`remote_device`] returns; a
//! client dialing a device names the device it expects and the handshake fails for anyone else.
//! The ALPN is [`ALPN`], so a libp2p QUIC peer and a chunk peer never confuse their protocols.
//!
//! Why quinn directly and not raw streams on libp2p's QUIC connections: libp2p's stream
//! abstraction (and its muxer) copies through its own buffers and channels, and yields no control
//! over flow-control windows per stream; the data plane wants quinn's windows tuned for bulk
//! transfer and many concurrent streams (see [`transport_config`]), measured with
//! `examples/transfer_bench.rs`.
//!
//! The endpoint's stateless-reset key and the key its connection ids are made with are derived
//! from the device key ([`endpoint_config`]), so they are the same after a restart: when a device
//! dies without closing its connections (killed, power lost) and comes back on the same address,
//! the first packet a peer sends on a dead connection carries a connection id the new endpoint
//! recognises as its own, it answers with a stateless reset the peer accepts, and the peer drops
//! the connection at once (and dials again) instead of waiting for the idle timeout.

use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use shoal_protocol::DeviceId;

use super::identity::{DeviceKey, device_id_of, peer_id_of};

/// The data plane's ALPN.
pub const ALPN: &[u8] = b"shoal-chunks/1";

/// Concurrent request streams a peer may open on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// Why an endpoint could not be set up or a connection made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// The certificate for the device key could not be made.
    #[error("cannot make the TLS certificate for the device key: {0}")]
    Certificate(String),
    /// The TLS configuration lacks a QUIC initial cipher suite.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Tls(String),
    /// The UDP socket could not be bound (address taken, no permission, ...).
    #[error("cannot bind the QUIC endpoint to {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The device id is not a valid ed25519 key, so no peer can prove it.
    #[error("device id {0} is not a valid ed25519 key")]
    InvalidDeviceId(DeviceId),
    /// The connection could not be started.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// quinn's error.
        source: quinn::ConnectError,
    },
    /// The handshake or the connection failed (including a peer that is not the device expected).
    #[error("connection to {addr} failed: {source}")]
    Connection {
        /// The address.
        addr: SocketAddr,
        /// quinn's error.
        source: quinn::ConnectionError,
    },
    /// The peer authenticated as another device than expected.
    #[error("peer at {addr} is not device {expected}")]
    WrongPeer {
        /// The address.
        addr: SocketAddr,
        /// The device expected.
        expected: DeviceId,
    },
}

/// Installs the process-wide rustls crypto provider once (ring). Several crates of the
/// dependency graph enable both ring and aws-lc-rs in rustls, and rustls then refuses to guess
/// a default; our own configurations name their provider explicitly, this covers the rest.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means another provider is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The transport parameters used on both sides: windows sized for bulk transfer on LAN and
/// loopback, bounded streams, keep-alive and idle timeout.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into())
        .max_concurrent_uni_streams(8u32.into())
        .stream_receive_window((4u32 * 1024 * 1024).into())
        .receive_window((16u32 * 1024 * 1024).into())
        .send_window(16 * 1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(
            Duration::from_secs(30)
                .try_into()
                .expect("30 s is a valid idle timeout"),
        ));
    t
}

/// The server side configuration: the device's certificate, client certificates required (and
/// bound to their device keys).
pub fn server_config(key: &DeviceKey) -> Result<quinn::ServerConfig, QuicError> {
    let mut tls = libp2p::tls::make_server_config(&key.keypair())
        .map_err(|e| QuicError::Certificate(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport_config()));
    Ok(cfg)
}

/// The client side configuration for dialing `expected`: the handshake fails unless the server
/// proves that device's key.
pub fn client_config(
    key: &DeviceKey,
    expected: &DeviceId,
) -> Result<quinn::ClientConfig, QuicError> {
    let peer = peer_id_of(expected).ok_or(QuicError::InvalidDeviceId(*expected))?;
    let mut tls = libp2p::tls::make_client_config(&key.keypair(), Some(peer))
        .map_err(|e| QuicError::Certificate(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport_config()));
    Ok(cfg)
}

/// The label of the stateless-reset key's derivation from the device key.
const RESET_KEY_LABEL: &str = "shoal data plane: QUIC stateless reset key v1";
/// The label of the connection-id key's derivation from the device key.
const CID_KEY_LABEL: &str = "shoal data plane: QUIC connection id key v1";

/// The endpoint's configuration, the same in every life of the device: the stateless-reset key
/// is HMAC-SHA256 under a secret derived from the device key, and connection ids are quinn's
/// hashed ids under a key derived from it too. A restarted daemon so recognises the connection
/// ids of its previous life (quinn answers no other with a reset) and resets those connections
/// with tokens its peers accept.
pub fn endpoint_config(key: &DeviceKey) -> quinn::EndpointConfig {
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key.derive_secret(RESET_KEY_LABEL));
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&key.derive_secret(CID_KEY_LABEL)[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut cfg = quinn::EndpointConfig::new(Arc::new(reset));
    cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    cfg
}

/// A QUIC endpoint bound to `addr` that both serves and dials.
pub fn endpoint(key: &DeviceKey, addr: SocketAddr) -> Result<quinn::Endpoint, QuicError> {
    install_crypto_provider();
    let cfg = server_config(key)?;
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|source| QuicError::Bind { addr, source })?;
    let runtime = quinn::default_runtime().ok_or_else(|| QuicError::Bind {
        addr,
        source: std::io::Error::other("no async runtime found"),
    })?;
    quinn::Endpoint::new(endpoint_config(key), Some(cfg), socket, runtime)
        .map_err(|source| QuicError::Bind { addr, source })
}

/// The device at the other end of an established connection, from its certificate.
pub fn remote_device(conn: &quinn::Connection) -> Option<DeviceId> {
    let identity = conn.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    let cert = libp2p::tls::certificate::parse(certs.first()?).ok()?;
    device_id_of(&cert.peer_id())
}

/// Dials `expected` at `addr` from `endpoint` as `key`, and checks who answered.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    key: &DeviceKey,
    addr: SocketAddr,
    expected: &DeviceId,
) -> Result<quinn::Connection, QuicError> {
    let cfg = client_config(key, expected)?;
    let connecting = endpoint
        .connect_with(cfg, addr, "shoal")
        .map_err(|source| QuicError::Connect { addr, source })?;
    let conn = connecting
        .await
        .map_err(|source| QuicError::Connection { addr, source })?;
    if remote_device(&conn).as_ref() != Some(expected) {
        conn.close(0u32.into(), b"wrong peer");
        return Err(QuicError::WrongPeer {
            addr,
            expected: *expected,
        });
    }
    Ok(conn)
}
