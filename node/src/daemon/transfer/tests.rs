//! Loopback tests of the chunk protocol with real QUIC sockets.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::*;
use crate::daemon::identity::DeviceKey;
use crate::daemon::quic::{QuicError, connect, endpoint};
use shoal_testing::pseudo_random;

/// Serves the store's blobs with every frame replaced by a frame of other bytes.
struct Corrupting(Arc<Store>);

impl BlobSource for Corrupting {
    fn get(&self, kind: BlobKind, digest: &Digest) -> Option<StoredBlob> {
        let mut raw = self.0.read(digest).ok()??;
        raw[0] ^= 1;
        let _ = kind;
        Some(StoredBlob {
            raw_size: raw.len() as u32,
            compressed: zstd::bulk::compress(&raw, 1).ok()?,
        })
    }
}

struct Server {
    key: DeviceKey,
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    counters: Arc<Counters>,
}

fn start_server(source: Arc<dyn BlobSource>, banned: Arc<Mutex<BTreeSet<DeviceId>>>) -> Server {
    let key = DeviceKey::generate();
    let ep = endpoint(&key, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    let counters = Arc::new(Counters::default());
    let admit: Arc<AdmitFn> = Arc::new(move |d: &DeviceId| !banned.lock().unwrap().contains(d));
    tokio::spawn(serve(
        ep.clone(),
        super::Server::new(source, counters.clone(), 64),
        admit,
    ));
    Server {
        key,
        addr,
        endpoint: ep,
        counters,
    }
}

fn seeded_store(dir: &std::path::Path, chunks: usize) -> (Arc<Store>, Vec<ChunkRef>) {
    let store = Arc::new(Store::open(dir, 1 << 30).unwrap());
    let refs = (0..chunks)
        .map(|i| {
            let data = pseudo_random(100_000 + i * 1000, i as u64 + 1);
            let digest = store.put_bytes(&data).unwrap();
            ChunkRef {
                digest,
                size: data.len() as u32,
            }
        })
        .collect();
    (store, refs)
}

#[tokio::test]
async fn chunks_are_fetched_verified_and_stored_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let (src, refs) = seeded_store(&dir.path().join("a"), 20);
    let server = start_server(src.clone(), Default::default());
    let client_key = DeviceKey::generate();
    let client_ep = endpoint(&client_key, "127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = connect(
        &client_ep,
        &client_key,
        server.addr,
        &server.key.device_id(),
    )
    .await
    .unwrap();
    let server_dev = server.key.device_id();
    assert_eq!(
        crate::daemon::quic::remote_device(&conn),
        Some(server.key.device_id())
    );
    let dst = Arc::new(Store::open(&dir.path().join("b"), 1 << 30).unwrap());
    let counters = Arc::new(Counters::default());
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in refs.clone() {
        let (conn, dst, counters) = (conn.clone(), dst.clone(), counters.clone());
        tasks.spawn(
            async move { fetch_chunk_into(&conn, &server_dev, &dst, chunk, &counters).await },
        );
    }
    while let Some(r) = tasks.join_next().await {
        assert!(r.unwrap().unwrap(), "every chunk was fetched");
    }
    for chunk in &refs {
        assert_eq!(
            dst.read(&chunk.digest).unwrap(),
            src.read(&chunk.digest).unwrap()
        );
    }
    assert_eq!(counters.verified.load(Ordering::Relaxed), 20);
    assert_eq!(server.counters.served.load(Ordering::Relaxed), 20);
    // A stored chunk is not fetched again.
    assert!(
        !fetch_chunk_into(&conn, &server_dev, &dst, refs[0], &counters)
            .await
            .unwrap()
    );
    assert_eq!(server.counters.served.load(Ordering::Relaxed), 20);
    // An unknown digest is NotFound; a wrong expected size is the peer's fault.
    let missing = Digest::of(b"nothing");
    assert!(matches!(
        fetch(&conn, &server_dev, BlobKind::Chunk, &missing, None, &counters).await,
        Err(FetchError::NotFound(d)) if d == missing
    ));
    let err = fetch(
        &conn,
        &server_dev,
        BlobKind::Chunk,
        &refs[1].digest,
        Some(5),
        &counters,
    )
    .await
    .unwrap_err();
    assert!(err.is_peer_fault(), "{err}");
    server.endpoint.close(0u32.into(), b"");
}

#[tokio::test]
async fn corrupt_chunks_are_rejected_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (src, refs) = seeded_store(&dir.path().join("a"), 3);
    let server = start_server(Arc::new(Corrupting(src)), Default::default());
    let client_key = DeviceKey::generate();
    let client_ep = endpoint(&client_key, "127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = connect(
        &client_ep,
        &client_key,
        server.addr,
        &server.key.device_id(),
    )
    .await
    .unwrap();
    let dst = Arc::new(Store::open(&dir.path().join("b"), 1 << 30).unwrap());
    let counters = Counters::default();
    let server_dev = server.key.device_id();
    for chunk in refs {
        let err = fetch_chunk_into(&conn, &server_dev, &dst, chunk, &counters)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::Invalid(BlobError::DigestMismatch { .. })),
            "{err}"
        );
    }
    assert!(dst.is_empty());
    assert_eq!(counters.rejected.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_peer_with_another_key_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = seeded_store(dir.path(), 1);
    let server = start_server(src, Default::default());
    let client_key = DeviceKey::generate();
    let client_ep = endpoint(&client_key, "127.0.0.1:0".parse().unwrap()).unwrap();
    let impostor = DeviceKey::generate().device_id();
    let err = connect(&client_ep, &client_key, server.addr, &impostor)
        .await
        .unwrap_err();
    assert!(matches!(err, QuicError::Connection { .. }), "{err}");
}

#[tokio::test]
async fn a_banned_device_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let (src, refs) = seeded_store(dir.path(), 1);
    let client_key = DeviceKey::generate();
    let banned = Arc::new(Mutex::new(BTreeSet::from([client_key.device_id()])));
    let server = start_server(src, banned);
    let client_ep = endpoint(&client_key, "127.0.0.1:0".parse().unwrap()).unwrap();
    let server_dev = server.key.device_id();
    let result = match connect(&client_ep, &client_key, server.addr, &server_dev).await {
        Ok(conn) => fetch(
            &conn,
            &server_dev,
            BlobKind::Chunk,
            &refs[0].digest,
            None,
            &Counters::default(),
        )
        .await
        .map(|_| ()),
        Err(_) => Ok(()),
    };
    assert!(result.is_err(), "a banned device got a chunk");
    assert_eq!(server.counters.served.load(Ordering::Relaxed), 0);
}

/// How a hostile server lies about a blob.
#[derive(Debug, Clone, Copy)]
enum Lie {
    /// Declares one byte more than the chunk has.
    SizeAboveTheChunk,
    /// Declares more than any chunk may hold.
    SizeAboveTheMax,
    /// Sends a frame far larger than the declared size can compress to (an endless stream).
    EndlessFrame,
    /// A small frame that decompresses to far more than declared (a decompression bomb).
    Bomb,
}

struct Lying(Arc<Store>, Lie);

impl BlobSource for Lying {
    fn get(&self, _kind: BlobKind, digest: &Digest) -> Option<StoredBlob> {
        let raw = self.0.read(digest).ok()??;
        let real = raw.len() as u32;
        let honest = zstd::bulk::compress(&raw, 1).ok()?;
        Some(match self.1 {
            Lie::SizeAboveTheChunk => StoredBlob {
                raw_size: real + 1,
                compressed: honest,
            },
            Lie::SizeAboveTheMax => StoredBlob {
                raw_size: crate::daemon::store::MAX_CHUNK_BYTES + 1,
                compressed: honest,
            },
            Lie::EndlessFrame => StoredBlob {
                raw_size: real,
                compressed: vec![0x55; 8 << 20],
            },
            Lie::Bomb => {
                let big = vec![0u8; 16 << 20];
                StoredBlob {
                    raw_size: real,
                    compressed: zstd::bulk::compress(&big, 1).ok()?,
                }
            }
        })
    }
}

#[tokio::test]
async fn lying_sizes_endless_frames_and_bombs_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (src, refs) = seeded_store(&dir.path().join("a"), 1);
    let chunk = refs[0];
    let expected = |lie: Lie, e: &BlobError| match lie {
        Lie::SizeAboveTheChunk => matches!(e, BlobError::SizeMismatch { .. }),
        Lie::SizeAboveTheMax => matches!(e, BlobError::TooLarge { .. }),
        Lie::EndlessFrame => matches!(e, BlobError::CompressedTooLarge { .. }),
        Lie::Bomb => matches!(e, BlobError::Decompress | BlobError::Truncated { .. }),
    };
    let cases = [
        Lie::SizeAboveTheChunk,
        Lie::SizeAboveTheMax,
        Lie::EndlessFrame,
        Lie::Bomb,
    ];
    for lie in cases {
        let server = start_server(Arc::new(Lying(src.clone(), lie)), Default::default());
        let client_key = DeviceKey::generate();
        let client_ep = endpoint(&client_key, "127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = connect(
            &client_ep,
            &client_key,
            server.addr,
            &server.key.device_id(),
        )
        .await
        .unwrap();
        let dst = Arc::new(Store::open(&dir.path().join(format!("{lie:?}")), 1 << 30).unwrap());
        let counters = Counters::default();
        let err = fetch_chunk_into(&conn, &server.key.device_id(), &dst, chunk, &counters)
            .await
            .unwrap_err();
        match &err {
            FetchError::Invalid(e) => assert!(expected(lie, e), "{lie:?}: {e}"),
            other => panic!("{lie:?}: {other}"),
        }
        assert!(err.is_peer_fault(), "{lie:?}");
        assert!(dst.is_empty(), "{lie:?}: something was stored");
        // The client read no more than the frame it accepted to read.
        assert!(
            counters.total_in() <= crate::daemon::store::compressed_bound(chunk.size) as u64,
            "{lie:?}: read {} bytes",
            counters.total_in()
        );
        server.endpoint.close(0u32.into(), b"");
    }
}
