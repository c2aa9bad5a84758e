//! The builder's content-addressed store on disk.
//!
//! Chunks live at `chunks/<first two hex>/<digest hex>`, signed manifest envelopes at
//! `manifests/<digest hex>` (the BLAKE3 of the bytes stored) and each signed announcement at
//! `announcements/<manifest digest hex>`, beside the manifest it announces. A write goes to a temporary file in `tmp/`, is
//! fsynced, then renamed into place, so a crash never leaves a partial object under a digest
//! name. An object already present is not written again: that is how chunks shared between
//! layers, services and releases are stored once, and [`Store::put_chunk`] says whether the bytes
//! were new.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use shoal_protocol::{ChunkRef, Digest};

/// A store rooted at a directory.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    tmp_counter: AtomicU64,
}

/// What kind of object a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A chunk of a layer.
    Chunk,
    /// A signed manifest envelope.
    Manifest,
    /// A signed announcement envelope.
    Announcement,
}

impl Store {
    /// Opens (creating) the store under `root`.
    pub fn open(root: &Path) -> io::Result<Store> {
        for d in ["chunks", "manifests", "announcements", "tmp"] {
            fs::create_dir_all(root.join(d))?;
        }
        // Leftovers of an interrupted write are never referenced: remove them.
        for entry in fs::read_dir(root.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        Ok(Store {
            root: root.to_path_buf(),
            tmp_counter: AtomicU64::new(0),
        })
    }

    /// Where an object of `kind` named `digest` lives.
    pub fn path(&self, kind: Kind, digest: &Digest) -> PathBuf {
        let hex = digest.to_string();
        match kind {
            Kind::Chunk => self.root.join("chunks").join(&hex[..2]).join(hex),
            Kind::Manifest => self.root.join("manifests").join(hex),
            Kind::Announcement => self.root.join("announcements").join(hex),
        }
    }

    /// Whether the object is present.
    pub fn has(&self, kind: Kind, digest: &Digest) -> bool {
        self.path(kind, digest).is_file()
    }

    /// Stores a chunk whose digest the caller computed; returns `true` when its bytes were new.
    pub fn put_chunk(&self, chunk: &ChunkRef, bytes: &[u8]) -> io::Result<bool> {
        self.put(Kind::Chunk, &chunk.digest, bytes)
    }

    /// Stores `bytes` under their own digest; returns the digest.
    pub fn put_blob(&self, kind: Kind, bytes: &[u8]) -> io::Result<Digest> {
        let digest = Digest::of(bytes);
        self.put(kind, &digest, bytes)?;
        Ok(digest)
    }

    /// Stores `bytes` under `digest` (the caller's name for them); returns `true` when new.
    pub fn put(&self, kind: Kind, digest: &Digest, bytes: &[u8]) -> io::Result<bool> {
        let dest = self.path(kind, digest);
        if dest.is_file() {
            return Ok(false);
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}-{}-{n}", digest, std::process::id()));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &dest)?;
        Ok(true)
    }

    /// Reads an object, or `None` when absent.
    pub fn get(&self, kind: Kind, digest: &Digest) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(kind, digest)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_put_of_same_chunk_is_not_new_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bytes = b"hello chunk";
        let c = ChunkRef {
            digest: Digest::of(bytes),
            size: bytes.len() as u32,
        };
        assert!(store.put_chunk(&c, bytes).unwrap());
        assert!(!store.put_chunk(&c, bytes).unwrap());
        assert_eq!(
            store.get(Kind::Chunk, &c.digest).unwrap().unwrap(),
            bytes.to_vec()
        );
        assert!(
            store
                .get(Kind::Chunk, &Digest::of(b"absent"))
                .unwrap()
                .is_none()
        );
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
