//! The on-disk chunk store: blobs (chunks and manifests) named by their BLAKE3 digest.
//!
//! Layout under the store's root:
//!
//! ```text
//! blobs/<first two hex>/<64 hex>   one blob: "SHB1", raw size (u32 LE), one zstd frame
//! tmp/                             files being written; emptied at open
//! ```
//!
//! A blob is kept as the zstd frame it travelled in, so serving it costs a file read and no
//! compression, and the disk holds compressed bytes. Every frame reaching [`Store::put`] has been
//! decompressed and checked against its digest by the caller ([`verify_blob`]); [`Store::read`]
//! decompresses and checks again (so a blob damaged on disk is caught before activation, and
//! removed). Writes go to `tmp/`, are fsynced, then renamed into place; file names are derived
//! from digests only, so nothing a peer sends chooses a path. A blob whose rename is lost in a
//! crash is simply fetched again: the store is a cache of content-addressed bytes, the node's
//! state ([`super::state`]) is the only thing that must survive exactly.
//!
//! The quota counts blob bytes uncompressed (an upper bound of their size on disk, within zstd's
//! framing of a few bytes per 128 KiB). [`Store::check_fits`] lets a download be refused before it
//! starts; [`Store::put`] refuses anything past the quota regardless. [`Store::retain`] evicts
//! every blob not in a keep set (the chunks of the current, previous and target releases).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use shoal_protocol::Digest;

/// The largest chunk (FastCDC's maximum).
pub const MAX_CHUNK_BYTES: u32 = shoal_protocol::ChunkParams::DEFAULT.max_size;
/// The largest manifest envelope.
pub const MAX_MANIFEST_BYTES: u32 =
    <shoal_protocol::Envelope as shoal_protocol::Wire>::MAX_BYTES as u32;
/// The largest blob the store takes.
pub const MAX_BLOB_BYTES: u32 = MAX_MANIFEST_BYTES;
/// zstd level used when the store compresses bytes itself ([`Store::put_bytes`]).
pub const COMPRESSION_LEVEL: i32 = 1;

const MAGIC: &[u8; 4] = b"SHB1";
const HEADER_BYTES: usize = 8;

pub use crate::wire::{BlobError, compressed_bound, verify_blob};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed.
    #[error("store I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The blob does not fit in the quota.
    #[error("store quota exceeded: need {needed} more bytes, {available} of {quota} available")]
    QuotaExceeded {
        /// Bytes asked for.
        needed: u64,
        /// Bytes still free under the quota.
        available: u64,
        /// The quota.
        quota: u64,
    },
    /// A stored blob failed verification (it has been removed).
    #[error("stored blob {digest} is corrupt: {source}")]
    Corrupt {
        /// The blob.
        digest: Digest,
        /// What was wrong.
        source: BlobError,
    },
    /// A stored file does not start with the blob header (it has been removed).
    #[error("stored blob {digest} has no valid header")]
    BadHeader {
        /// The blob.
        digest: Digest,
    },
    /// The blob is larger than any blob may be.
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// A stored blob as it travels: raw size and zstd frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    /// Uncompressed size.
    pub raw_size: u32,
    /// The zstd frame.
    pub compressed: Vec<u8>,
}

/// What [`Store::retain`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvictStats {
    /// Blobs removed.
    pub blobs: u64,
    /// Their uncompressed bytes.
    pub bytes: u64,
}

/// The chunk store. Shared between tasks behind an `Arc`; its methods block on file I/O, so
/// async callers run them in `spawn_blocking`.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    quota_bytes: u64,
    index: Mutex<BTreeMap<Digest, u32>>,
    used_bytes: AtomicU64,
    tmp_counter: AtomicU64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Store {
    /// Opens (creating if needed) the store at `root` with a quota in bytes. Scans the blobs
    /// present (reading each header) and empties `tmp/`.
    pub fn open(root: &Path, quota_bytes: u64) -> Result<Store, StoreError> {
        let blobs = root.join("blobs");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let mut index = BTreeMap::new();
        let mut used = 0u64;
        for shard in std::fs::read_dir(&blobs).map_err(io_err(&blobs))? {
            let shard = shard.map_err(io_err(&blobs))?.path();
            if !shard.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&shard).map_err(io_err(&shard))? {
                let path = entry.map_err(io_err(&shard))?.path();
                let Some(digest) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<Digest>().ok())
                else {
                    continue;
                };
                match read_header(&path) {
                    Ok(Some(size)) => {
                        used += u64::from(size);
                        index.insert(digest, size);
                    }
                    Ok(None) => {
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Store {
            root: root.to_owned(),
            quota_bytes,
            index: Mutex::new(index),
            used_bytes: AtomicU64::new(used),
            tmp_counter: AtomicU64::new(0),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_string();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }

    /// Whether the blob is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().contains_key(digest)
    }

    /// The uncompressed size of a stored blob.
    pub fn size_of(&self, digest: &Digest) -> Option<u32> {
        self.lock().get(digest).copied()
    }

    /// How many blobs are stored.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Every stored digest, in order.
    pub fn digests(&self) -> Vec<Digest> {
        self.lock().keys().copied().collect()
    }

    /// Bytes stored (uncompressed).
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// The quota.
    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    /// Bytes still free under the quota.
    pub fn available_bytes(&self) -> u64 {
        self.quota_bytes.saturating_sub(self.used_bytes())
    }

    /// Refuses up front a download of `needed` more bytes that cannot fit.
    pub fn check_fits(&self, needed: u64) -> Result<(), StoreError> {
        let available = self.available_bytes();
        if needed > available {
            return Err(StoreError::QuotaExceeded {
                needed,
                available,
                quota: self.quota_bytes,
            });
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Digest, u32>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a verified blob (its frame already checked with [`verify_blob`]). Returns `false`
    /// if it was already stored.
    pub fn put(
        &self,
        digest: &Digest,
        raw_size: u32,
        compressed: &[u8],
    ) -> Result<bool, StoreError> {
        if raw_size > MAX_BLOB_BYTES {
            return Err(BlobError::TooLarge {
                declared: raw_size.into(),
                max: MAX_BLOB_BYTES.into(),
            }
            .into());
        }
        if self.contains(digest) {
            return Ok(false);
        }
        // Reserve the bytes first so concurrent puts cannot overshoot the quota together.
        let size = u64::from(raw_size);
        let reserved = self
            .used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + size <= self.quota_bytes).then_some(used + size)
            });
        if let Err(used) = reserved {
            return Err(StoreError::QuotaExceeded {
                needed: size,
                available: self.quota_bytes.saturating_sub(used),
                quota: self.quota_bytes,
            });
        }
        match self.write_file(digest, raw_size, compressed) {
            Ok(()) => {
                if self.lock().insert(*digest, raw_size).is_some() {
                    // Another task stored it meanwhile; the file is the same content.
                    self.used_bytes.fetch_sub(size, Ordering::AcqRel);
                    return Ok(false);
                }
                Ok(true)
            }
            Err(e) => {
                self.used_bytes.fetch_sub(size, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    fn write_file(
        &self,
        digest: &Digest,
        raw_size: u32,
        compressed: &[u8],
    ) -> Result<(), StoreError> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("{}.{n}", digest));
        let dest = self.path_of(digest);
        let result = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
            let mut header = [0u8; HEADER_BYTES];
            header[..4].copy_from_slice(MAGIC);
            header[4..].copy_from_slice(&raw_size.to_le_bytes());
            f.write_all(&header).map_err(io_err(&tmp))?;
            f.write_all(compressed).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            std::fs::rename(&tmp, &dest).map_err(io_err(&dest))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Compresses and stores `bytes` (what an origin does when it imports a release). Returns
    /// the digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        let raw_size = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        if raw_size > MAX_BLOB_BYTES {
            return Err(BlobError::TooLarge {
                declared: bytes.len() as u64,
                max: MAX_BLOB_BYTES.into(),
            }
            .into());
        }
        if self.contains(&digest) {
            return Ok(digest);
        }
        let compressed =
            zstd::bulk::compress(bytes, COMPRESSION_LEVEL).map_err(|source| StoreError::Io {
                path: self.root.clone(),
                source,
            })?;
        self.put(&digest, raw_size, &compressed)?;
        Ok(digest)
    }

    /// The stored frame of a blob, as it is served to peers (not re-verified: the receiver
    /// verifies). `None` if it is not stored.
    pub fn get_compressed(&self, digest: &Digest) -> Result<Option<StoredBlob>, StoreError> {
        if !self.contains(digest) {
            return Ok(None);
        }
        let path = self.path_of(digest);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(digest);
                return Ok(None);
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io_err(&path))?;
        if buf.len() < HEADER_BYTES || &buf[..4] != MAGIC {
            self.remove(digest);
            return Err(StoreError::BadHeader { digest: *digest });
        }
        let raw_size = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        buf.drain(..HEADER_BYTES);
        Ok(Some(StoredBlob {
            raw_size,
            compressed: buf,
        }))
    }

    /// Reads a blob, decompressing and verifying it again (before activation). A blob that fails
    /// is removed and reported as [`StoreError::Corrupt`]. `None` if it is not stored.
    pub fn read(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(blob) = self.get_compressed(digest)? else {
            return Ok(None);
        };
        match verify_blob(
            digest,
            blob.raw_size,
            None,
            MAX_BLOB_BYTES,
            &blob.compressed,
        ) {
            Ok(raw) => Ok(Some(raw)),
            Err(source) => {
                self.remove(digest);
                Err(StoreError::Corrupt {
                    digest: *digest,
                    source,
                })
            }
        }
    }

    fn forget(&self, digest: &Digest) {
        if let Some(size) = self.lock().remove(digest) {
            self.used_bytes.fetch_sub(u64::from(size), Ordering::AcqRel);
        }
    }

    /// Removes one blob. Returns whether it was stored.
    pub fn remove(&self, digest: &Digest) -> bool {
        let present = self.lock().contains_key(digest);
        let _ = std::fs::remove_file(self.path_of(digest));
        self.forget(digest);
        present
    }

    /// Evicts every blob whose digest is not in `keep`.
    pub fn retain(&self, keep: &BTreeSet<Digest>) -> EvictStats {
        let victims: Vec<(Digest, u32)> = self
            .lock()
            .iter()
            .filter(|(d, _)| !keep.contains(d))
            .map(|(d, s)| (*d, *s))
            .collect();
        let mut stats = EvictStats::default();
        for (digest, size) in victims {
            if self.remove(&digest) {
                stats.blobs += 1;
                stats.bytes += u64::from(size);
            }
        }
        stats
    }
}

fn read_header(path: &Path) -> Result<Option<u32>, StoreError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut header = [0u8; HEADER_BYTES];
    if f.read_exact(&mut header).is_err() || &header[..4] != MAGIC {
        return Ok(None);
    }
    let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    Ok((size <= MAX_BLOB_BYTES).then_some(size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_testing::pseudo_random;

    #[test]
    fn put_read_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 10 << 20).unwrap();
        let data = pseudo_random(300_000, 7);
        let d = store.put_bytes(&data).unwrap();
        assert!(store.contains(&d));
        assert_eq!(store.used_bytes(), 300_000);
        assert_eq!(store.read(&d).unwrap().unwrap(), data);
        drop(store);
        let store = Store::open(dir.path(), 10 << 20).unwrap();
        assert_eq!(store.digests(), vec![d]);
        assert_eq!(store.used_bytes(), 300_000);
        assert_eq!(store.read(&d).unwrap().unwrap(), data);
    }

    #[test]
    fn quota_is_enforced_up_front_and_on_put() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 500_000).unwrap();
        assert!(store.check_fits(500_000).is_ok());
        assert!(matches!(
            store.check_fits(500_001),
            Err(StoreError::QuotaExceeded {
                needed: 500_001,
                available: 500_000,
                ..
            })
        ));
        store.put_bytes(&pseudo_random(300_000, 1)).unwrap();
        let err = store.put_bytes(&pseudo_random(300_000, 2)).unwrap_err();
        assert!(matches!(
            err,
            StoreError::QuotaExceeded {
                available: 200_000,
                ..
            }
        ));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn corrupt_blob_on_disk_is_caught_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 10 << 20).unwrap();
        let data = vec![42u8; 200_000];
        let d = store.put_bytes(&data).unwrap();
        // Replace the frame with a valid frame of other bytes.
        let other = zstd::bulk::compress(&vec![43u8; 200_000], 1).unwrap();
        let mut file = b"SHB1".to_vec();
        file.extend_from_slice(&200_000u32.to_le_bytes());
        file.extend_from_slice(&other);
        std::fs::write(store.path_of(&d), file).unwrap();
        assert!(matches!(
            store.read(&d),
            Err(StoreError::Corrupt {
                source: BlobError::DigestMismatch { .. },
                ..
            })
        ));
        assert!(!store.contains(&d));
        assert_eq!(store.used_bytes(), 0);
    }

    #[test]
    fn verify_blob_caps_and_checks() {
        let data = pseudo_random(1000, 3);
        let d = Digest::of(&data);
        let z = zstd::bulk::compress(&data, 1).unwrap();
        assert_eq!(
            verify_blob(&d, 1000, Some(1000), 1 << 20, &z).unwrap(),
            data
        );
        assert!(matches!(
            verify_blob(&d, 999, None, 1 << 20, &z),
            Err(BlobError::Decompress)
        ));
        assert!(matches!(
            verify_blob(&d, 1001, None, 1 << 20, &z),
            Err(BlobError::Truncated { .. })
        ));
        assert!(matches!(
            verify_blob(&d, 1000, Some(10), 1 << 20, &z),
            Err(BlobError::SizeMismatch { .. })
        ));
        assert!(matches!(
            verify_blob(&d, 2 << 20, None, 1 << 20, &z),
            Err(BlobError::TooLarge { .. })
        ));
        assert!(matches!(
            verify_blob(&Digest::of(b"x"), 1000, None, 1 << 20, &z),
            Err(BlobError::DigestMismatch { .. })
        ));
        // A bomb: 1 MiB of zeros declared as 1000 bytes.
        let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 19).unwrap();
        assert!(matches!(
            verify_blob(&d, 1000, None, 1 << 20, &bomb),
            Err(BlobError::Decompress)
        ));
    }

    #[test]
    fn retain_evicts_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 10 << 20).unwrap();
        let a = store.put_bytes(&pseudo_random(1000, 1)).unwrap();
        let b = store.put_bytes(&pseudo_random(2000, 2)).unwrap();
        let stats = store.retain(&BTreeSet::from([a]));
        assert_eq!(
            stats,
            EvictStats {
                blobs: 1,
                bytes: 2000
            }
        );
        assert!(store.contains(&a) && !store.contains(&b));
        assert_eq!(store.used_bytes(), 1000);
    }
}
