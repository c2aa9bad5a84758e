//! The chunk protocol on the data plane's QUIC connections.
//!
//! One request per bidirectional stream, so requests pipeline freely (up to
//! [`super::quic::MAX_STREAMS_PER_CONNECTION`] per connection) and one slow chunk never blocks
//! another:
//!
//! ```text
//! request:  version (1) | kind (1: 0 chunk, 1 manifest) | digest (32)
//! response: status (1: 0 ok, 1 not found, 2 refused, 3 busy)
//!           then, if ok: raw size (u32 LE) | frame length (u32 LE) | zstd frame
//! ```
//!
//! The client checks the declared size against the kind's maximum (1 MiB chunks, 16 MiB
//! manifests) and the size it expected, reads at most zstd's bound for that size, decompresses
//! with the declared size as the cap and compares BLAKE3 with the digest asked for
//! ([`super::store::verify_blob`]) before anything reaches the store. Server side, a
//! [`BlobSource`] answers (the [`Store`], or a test's byzantine source).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal_protocol::{ChunkRef, DeviceId, Digest};
use tokio::sync::Semaphore;

use super::quic::remote_device;
use super::store::{
    BlobError, MAX_CHUNK_BYTES, MAX_MANIFEST_BYTES, Store, StoreError, StoredBlob, verify_blob,
};

const VERSION: u8 = 1;
const REQUEST_BYTES: usize = 34;
const STATUS_OK: u8 = 0;
const STATUS_NOT_FOUND: u8 = 1;
const STATUS_REFUSED: u8 = 2;
const STATUS_BUSY: u8 = 3;

/// How long one request may take end to end.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections the server holds at once.
pub const MAX_CONNECTIONS: usize = 256;

/// What is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum BlobKind {
    /// A chunk (at most 1 MiB).
    Chunk,
    /// A manifest envelope (at most 16 MiB and 4 KiB).
    Manifest,
}

impl BlobKind {
    /// The largest blob of this kind.
    pub fn max_bytes(self) -> u32 {
        match self {
            BlobKind::Chunk => MAX_CHUNK_BYTES,
            BlobKind::Manifest => MAX_MANIFEST_BYTES,
        }
    }

    fn code(self) -> u8 {
        match self {
            BlobKind::Chunk => 0,
            BlobKind::Manifest => 1,
        }
    }

    fn from_code(code: u8) -> Option<BlobKind> {
        match code {
            0 => Some(BlobKind::Chunk),
            1 => Some(BlobKind::Manifest),
            _ => None,
        }
    }
}

/// Where a server finds what it serves. Called from a blocking thread.
pub trait BlobSource: Send + Sync + 'static {
    /// The stored frame of a blob, or `None`.
    fn get(&self, kind: BlobKind, digest: &Digest) -> Option<StoredBlob>;

    /// Sends the frames of blobs of `kind` at this many bytes per second instead of at once.
    /// `None` (every real source): at once. Only tests that need a trickling peer set it.
    fn pace_bytes_per_s(&self, _kind: BlobKind) -> Option<u32> {
        None
    }
}

impl BlobSource for Store {
    fn get(&self, _kind: BlobKind, digest: &Digest) -> Option<StoredBlob> {
        match self.get_compressed(digest) {
            Ok(blob) => blob,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot serve a stored blob");
                None
            }
        }
    }
}

pub use super::metrics::Counters;

/// Decides whether a connecting device is served (false for a banned one).
pub type AdmitFn = dyn Fn(&DeviceId) -> bool + Send + Sync;

/// What a server needs to answer requests: where blobs come from, the counters, and the bound
/// on concurrent uploads (requests beyond it are answered "busy" at once, so a popular seeder
/// sheds load to other peers instead of queueing).
#[derive(Clone)]
pub struct Server {
    /// Where blobs come from.
    pub source: Arc<dyn BlobSource>,
    /// Byte and chunk counters.
    pub counters: Arc<Counters>,
    /// Upload slots.
    pub uploads: Arc<Semaphore>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("free_uploads", &self.uploads.available_permits())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server of `source` with at most `max_uploads` blobs in flight.
    pub fn new(source: Arc<dyn BlobSource>, counters: Arc<Counters>, max_uploads: usize) -> Server {
        Server {
            source,
            counters,
            uploads: Arc::new(Semaphore::new(max_uploads.max(1))),
        }
    }
}

/// Serves blobs on every connection `endpoint` accepts, until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, server: Server, admit: Arc<AdmitFn>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let server = server.clone();
        let admit = admit.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "incoming data-plane handshake failed");
                    return;
                }
            };
            let Some(device) = remote_device(&conn) else {
                conn.close(1u32.into(), b"no device identity");
                return;
            };
            if !admit(&device) {
                conn.close(2u32.into(), b"refused");
                return;
            }
            serve_connection(conn, device, server).await;
        });
    }
}

/// Serves the blob requests a peer makes on an established connection, until it closes.
pub async fn serve_connection(conn: quinn::Connection, device: DeviceId, server: Server) {
    // quinn bounds the concurrent streams a peer may open (transport_config).
    while let Ok((send, recv)) = conn.accept_bi().await {
        let server = server.clone();
        tokio::spawn(async move {
            if let Err(e) =
                tokio::time::timeout(REQUEST_TIMEOUT, serve_stream(send, recv, &server, &device))
                    .await
                    .unwrap_or(Err(ServeError::Timeout))
            {
                tracing::debug!(peer = %device.short(), error = %e, "data-plane request failed");
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("reading request: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("writing response: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("timed out")]
    Timeout,
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    server: &Server,
    device: &DeviceId,
) -> Result<(), ServeError> {
    let counters = &server.counters;
    let mut req = [0u8; REQUEST_BYTES];
    recv.read_exact(&mut req).await?;
    let kind = BlobKind::from_code(req[1]);
    if req[0] != VERSION || kind.is_none() {
        send.write_all(&[STATUS_REFUSED]).await?;
        let _ = send.finish();
        return Ok(());
    }
    let kind = kind.expect("checked above");
    let mut digest = Digest::default();
    digest.0.copy_from_slice(&req[2..]);
    let Ok(_upload) = server.uploads.clone().try_acquire_owned() else {
        send.write_all(&[STATUS_BUSY]).await?;
        let _ = send.finish();
        return Ok(());
    };
    let source = server.source.clone();
    let blob = tokio::task::spawn_blocking(move || source.get(kind, &digest))
        .await
        .ok()
        .flatten();
    match blob {
        None => send.write_all(&[STATUS_NOT_FOUND]).await?,
        Some(blob) => {
            let mut head = [0u8; 9];
            head[0] = STATUS_OK;
            head[1..5].copy_from_slice(&blob.raw_size.to_le_bytes());
            let len = u32::try_from(blob.compressed.len()).unwrap_or(u32::MAX);
            head[5..9].copy_from_slice(&len.to_le_bytes());
            send.write_all(&head).await?;
            match server.source.pace_bytes_per_s(kind) {
                None => send.write_all(&blob.compressed).await?,
                Some(rate) => {
                    let step = (rate.max(1) as usize).min(blob.compressed.len().max(1));
                    for piece in blob.compressed.chunks(step) {
                        send.write_all(piece).await?;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            counters.add_out(device, blob.compressed.len() as u64);
            counters.served.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = send.finish();
    // Wait for the peer to read everything before the stream is dropped.
    let _ = send.stopped().await;
    Ok(())
}

/// Why a fetch failed. [`FetchError::Invalid`] means the peer sent bytes that are not the blob
/// (a peer to penalise); the others are availability or network failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The connection is gone.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The stream failed.
    #[error("stream failed: {0}")]
    Stream(String),
    /// The peer does not have the blob.
    #[error("peer does not have {0}")]
    NotFound(Digest),
    /// The peer refused the request.
    #[error("peer refused the request")]
    Refused,
    /// The peer is at its upload limit; ask again later or elsewhere.
    #[error("peer is busy")]
    Busy,
    /// The peer answered with an unknown status byte.
    #[error("peer sent unknown status {0}")]
    BadStatus(u8),
    /// The peer sent bytes that are not the blob asked for.
    #[error("peer sent an invalid blob: {0}")]
    Invalid(#[from] BlobError),
    /// The request took longer than [`REQUEST_TIMEOUT`].
    #[error("request timed out")]
    Timeout,
    /// The verified blob could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FetchError {
    /// Whether the peer proved itself faulty (sent wrong bytes), rather than merely unavailable.
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, FetchError::Invalid(_) | FetchError::BadStatus(_))
    }
}

/// A verified blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The frame as received (what the store keeps).
    pub blob: StoredBlob,
    /// The raw bytes.
    pub raw: Vec<u8>,
}

/// Fetches and verifies one blob from `peer` at the other end of `conn`.
pub async fn fetch(
    conn: &quinn::Connection,
    peer: &DeviceId,
    kind: BlobKind,
    digest: &Digest,
    expected_size: Option<u32>,
    counters: &Counters,
) -> Result<Fetched, FetchError> {
    let result = tokio::time::timeout(
        REQUEST_TIMEOUT,
        fetch_inner(conn, peer, kind, digest, expected_size, counters),
    )
    .await
    .unwrap_or(Err(FetchError::Timeout));
    if matches!(result, Err(ref e) if e.is_peer_fault()) {
        counters.rejected.fetch_add(1, Ordering::Relaxed);
    }
    result
}

async fn fetch_inner(
    conn: &quinn::Connection,
    peer: &DeviceId,
    kind: BlobKind,
    digest: &Digest,
    expected_size: Option<u32>,
    counters: &Counters,
) -> Result<Fetched, FetchError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut req = [0u8; REQUEST_BYTES];
    req[0] = VERSION;
    req[1] = kind.code();
    req[2..].copy_from_slice(&digest.0);
    send.write_all(&req)
        .await
        .map_err(|e| FetchError::Stream(e.to_string()))?;
    let _ = send.finish();
    let mut status = [0u8; 1];
    read_exact(&mut recv, &mut status).await?;
    match status[0] {
        STATUS_OK => {}
        STATUS_NOT_FOUND => return Err(FetchError::NotFound(*digest)),
        STATUS_REFUSED => return Err(FetchError::Refused),
        STATUS_BUSY => return Err(FetchError::Busy),
        other => return Err(FetchError::BadStatus(other)),
    }
    let mut head = [0u8; 8];
    read_exact(&mut recv, &mut head).await?;
    let max = kind.max_bytes();
    let (raw_size, len) = crate::wire::check_blob_head(head, max, expected_size)?;
    let mut compressed = vec![0u8; len as usize];
    read_exact(&mut recv, &mut compressed).await?;
    counters.add_in(peer, u64::from(len));
    let d = *digest;
    let (compressed, raw) = tokio::task::spawn_blocking(move || {
        verify_blob(&d, raw_size, expected_size, max, &compressed).map(|raw| (compressed, raw))
    })
    .await
    .map_err(|e| FetchError::Stream(e.to_string()))??;
    counters.verified.fetch_add(1, Ordering::Relaxed);
    Ok(Fetched {
        blob: StoredBlob {
            raw_size,
            compressed,
        },
        raw,
    })
}

async fn read_exact(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<(), FetchError> {
    recv.read_exact(buf).await.map_err(|e| match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
            FetchError::Connection(c)
        }
        other => FetchError::Stream(other.to_string()),
    })
}

/// Fetches a chunk unless stored, verifies it and stores it. Returns whether it was fetched.
pub async fn fetch_chunk_into(
    conn: &quinn::Connection,
    peer: &DeviceId,
    store: &Arc<Store>,
    chunk: ChunkRef,
    counters: &Counters,
) -> Result<bool, FetchError> {
    if store.contains(&chunk.digest) {
        return Ok(false);
    }
    let fetched = fetch(
        conn,
        peer,
        BlobKind::Chunk,
        &chunk.digest,
        Some(chunk.size),
        counters,
    )
    .await?;
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        store.put(
            &chunk.digest,
            fetched.blob.raw_size,
            &fetched.blob.compressed,
        )
    })
    .await
    .map_err(|e| FetchError::Stream(e.to_string()))??;
    Ok(true)
}

/// The address and device of a peer's data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr {
    /// Who.
    pub device: DeviceId,
    /// Where its QUIC endpoint listens.
    pub addr: SocketAddr,
}

#[cfg(test)]
mod tests;
