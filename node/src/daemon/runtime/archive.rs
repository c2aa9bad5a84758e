//! A `docker load` archive assembled on the fly from stored chunks.
//!
//! The archive is the legacy `docker save` layout: `manifest.json` (config file, tag, layer
//! files in order), the image config verbatim, then one uncompressed tar per layer, each the
//! concatenation of its chunks. A blocking task reads each chunk from the [`Store`] (which
//! decompresses it and checks its BLAKE3 again), checks its size against the manifest, and
//! sends it through a bounded channel to the Engine's image load request: nothing is written to
//! disk on this side, and at most [`QUEUE`] chunks are in memory.
//!
//! Before anything is streamed, [`check_image`] checks the config against its digest and every
//! layer's chunk list against the layer's digest and size
//! ([`shoal_protocol::LayerRef::is_consistent`]), and that every chunk is stored. A chunk that
//! fails while streaming aborts the upload (the Engine sees a truncated request body and loads
//! nothing) and the typed [`ArchiveError`] is returned.

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use shoal_protocol::{Digest, ImageRef};
use tokio::sync::mpsc;

use crate::daemon::store::{Store, StoreError};

/// Archive pieces in flight between the reading task and the Engine.
pub const QUEUE: usize = 8;

/// Why an image could not be assembled from the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The image config does not hash to the digest the manifest names.
    #[error("image config does not match its digest {expected}")]
    ConfigDigest {
        /// The digest the manifest names.
        expected: Digest,
    },
    /// A layer's chunk list does not hash to the layer digest or add up to its size.
    #[error("layer {index} ({digest}) is inconsistent with its chunk list")]
    LayerDigest {
        /// The layer's position, bottom first.
        index: usize,
        /// The digest the manifest names.
        digest: Digest,
    },
    /// A chunk is not in the store.
    #[error("chunk {0} is not stored")]
    MissingChunk(Digest),
    /// A stored chunk's length differs from the manifest's.
    #[error("chunk {digest} is {actual} bytes, the manifest says {expected}")]
    ChunkSize {
        /// The chunk.
        digest: Digest,
        /// Its size in the manifest.
        expected: u32,
        /// Its stored size.
        actual: usize,
    },
    /// Reading a chunk failed, or it no longer verifies (the store drops such a chunk).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The image config is not JSON (the Engine could not load it either).
    #[error("image config is not JSON: {0}")]
    ConfigJson(String),
}

/// Checks the config digest, every layer's consistency and that every chunk is stored.
pub fn check_image(store: &Store, image: &ImageRef) -> Result<(), ArchiveError> {
    if Digest::of(&image.config) != image.config_digest {
        return Err(ArchiveError::ConfigDigest {
            expected: image.config_digest,
        });
    }
    serde_json::from_slice::<serde_json::Value>(&image.config)
        .map_err(|e| ArchiveError::ConfigJson(e.to_string()))?;
    for (index, layer) in image.layers.iter().enumerate() {
        if !layer.is_consistent() {
            return Err(ArchiveError::LayerDigest {
                index,
                digest: layer.digest,
            });
        }
        if let Some(c) = layer.chunks.iter().find(|c| !store.contains(&c.digest)) {
            return Err(ArchiveError::MissingChunk(c.digest));
        }
    }
    Ok(())
}

/// The Engine's image id for this config (`sha256:<hex of the config's SHA-256>`).
pub fn image_id(image: &ImageRef) -> String {
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(&image.config))
    )
}

/// The first error of a streaming archive, kept for the caller once the upload fails.
pub type Failure = Arc<Mutex<Option<ArchiveError>>>;

/// Streams the archive of `image` tagged `tag`; call [`check_image`] first. A chunk that fails
/// on the way ends the stream with an error and leaves the reason in the returned [`Failure`].
pub fn stream(
    store: Arc<Store>,
    image: Arc<ImageRef>,
    tag: String,
) -> (
    impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    Failure,
) {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUE);
    let failure: Failure = Arc::new(Mutex::new(None));
    let fail = failure.clone();
    tokio::task::spawn_blocking(move || {
        let mut w = Sender { tx: tx.clone() };
        if let Err(e) = write_archive(&mut w, &store, &image, &tag) {
            let msg = e.to_string();
            *fail.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            let _ = tx.blocking_send(Err(std::io::Error::other(msg)));
        }
    });
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (s, failure)
}

struct Sender {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl Sender {
    fn send(&mut self, b: Vec<u8>) -> Result<(), ArchiveError> {
        // A closed channel means the Engine request ended; the request reports why.
        let _ = self.tx.blocking_send(Ok(Bytes::from(b)));
        Ok(())
    }
}

fn header(path: &str, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    // Paths are short ASCII names of our own; set_path cannot fail on them.
    let _ = h.set_path(path);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    h.as_bytes().to_vec()
}

fn padding(size: u64) -> Vec<u8> {
    vec![0u8; (size.div_ceil(512) * 512 - size) as usize]
}

fn small_file(w: &mut Sender, path: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
    let mut out = header(path, bytes.len() as u64);
    out.write_all(bytes).ok();
    out.extend(padding(bytes.len() as u64));
    w.send(out)
}

fn write_archive(
    w: &mut Sender,
    store: &Store,
    image: &ImageRef,
    tag: &str,
) -> Result<(), ArchiveError> {
    let layers: Vec<String> = (0..image.layers.len())
        .map(|i| format!("layer{i}.tar"))
        .collect();
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [tag],
        "Layers": layers,
    }]);
    small_file(w, "manifest.json", manifest.to_string().as_bytes())?;
    small_file(w, "config.json", &image.config)?;
    for (name, layer) in layers.iter().zip(&image.layers) {
        w.send(header(name, layer.size))?;
        for c in &layer.chunks {
            let bytes = store
                .read(&c.digest)?
                .ok_or(ArchiveError::MissingChunk(c.digest))?;
            if bytes.len() != c.size as usize {
                return Err(ArchiveError::ChunkSize {
                    digest: c.digest,
                    expected: c.size,
                    actual: bytes.len(),
                });
            }
            w.send(bytes)?;
        }
        w.send(padding(layer.size))?;
    }
    // Two zero blocks end a tar.
    w.send(vec![0u8; 1024])
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use shoal_protocol::chunking::{ChunkParams, chunk_bytes};

    fn image_with(store: &Store, data: &[u8]) -> ImageRef {
        let layer = chunk_bytes(data, ChunkParams::DEFAULT);
        let mut start = 0;
        for c in &layer.chunks {
            store
                .put_bytes(&data[start..start + c.size as usize])
                .unwrap();
            start += c.size as usize;
        }
        let config = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
        ImageRef {
            config_digest: Digest::of(&config),
            config,
            layers: vec![layer],
        }
    }

    #[tokio::test]
    async fn the_archive_is_a_tar_of_manifest_config_and_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let image = image_with(&store, &data);
        check_image(&store, &image).unwrap();
        let (s, failure) = stream(store, Arc::new(image), "t/x:r1".into());
        let parts: Vec<_> = s.collect().await;
        assert!(failure.lock().unwrap().is_none());
        let bytes: Vec<u8> = parts
            .into_iter()
            .flat_map(|p| p.unwrap().to_vec())
            .collect();
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut names = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut body).unwrap();
            if name == "layer0.tar" {
                assert!(body == data, "layer bytes differ");
            }
            if name == "manifest.json" {
                let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(m[0]["RepoTags"][0], "t/x:r1");
            }
            names.push(name);
        }
        assert_eq!(names, ["manifest.json", "config.json", "layer0.tar"]);
    }

    #[tokio::test]
    async fn tampered_manifests_and_missing_chunks_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
        let data = vec![5u8; 100_000];
        let image = image_with(&store, &data);

        let mut bad = image.clone();
        bad.config.push(b' ');
        assert!(matches!(
            check_image(&store, &bad),
            Err(ArchiveError::ConfigDigest { .. })
        ));

        let mut bad = image.clone();
        bad.layers[0].size += 1;
        assert!(matches!(
            check_image(&store, &bad),
            Err(ArchiveError::LayerDigest { index: 0, .. })
        ));

        let mut bad = image.clone();
        let fake = Digest::of(b"never stored");
        bad.layers[0] = shoal_protocol::LayerRef::from_chunks(vec![shoal_protocol::ChunkRef {
            digest: fake,
            size: 10,
        }]);
        assert!(matches!(
            check_image(&store, &bad),
            Err(ArchiveError::MissingChunk(d)) if d == fake
        ));

        // A chunk removed after the check: the stream ends in an error, the reason is typed.
        let digest = image.layers[0].chunks[0].digest;
        store.remove(&digest);
        let (s, failure) = stream(store, Arc::new(image), "t/x:r1".into());
        let parts: Vec<_> = s.collect().await;
        assert!(parts.last().unwrap().is_err());
        assert!(matches!(
            failure.lock().unwrap().take(),
            Some(ArchiveError::MissingChunk(d)) if d == digest
        ));
    }
}
