//! [`Release`]: a verified manifest with its unique chunk list, shared behind an `Arc`, and the
//! [`ReleaseCache`] that lets many nodes in one process (the simulator) share one copy.
//!
//! A cache hit never skips a check that depends on the node: the bytes are still hashed against
//! the announced digest, and fleet, sequence, architecture, expiry and the rollout plan are
//! checked again. It skips only the decoding and the signature check, which depend on nothing but
//! the bytes and the trust root, both part of the cache key.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use shoal_protocol::verify::{self, Context, VerifyError};
use shoal_protocol::{Announcement, ChunkRef, Digest, ReleaseManifest, TrustRoot};

/// Most entries a [`ReleaseCache`] keeps (dead ones are pruned first).
pub const RELEASE_CACHE_ENTRIES: usize = 64;

/// A verified release: manifest, envelope bytes, unique chunks.
#[derive(Debug)]
pub struct Release {
    /// The manifest.
    pub manifest: Arc<ReleaseManifest>,
    /// The signed manifest envelope bytes (what peers are served).
    pub manifest_bytes: Arc<[u8]>,
    /// BLAKE3 of `manifest_bytes`.
    pub manifest_digest: Digest,
    /// [`ReleaseManifest::unique_chunks`]: bit `i` of a release bitfield is `chunks[i]`.
    pub chunks: Vec<ChunkRef>,
    /// Sum of the unique chunks' sizes.
    pub unique_bytes: u64,
}

/// Shares verified releases between nodes of one process, keyed by (trust root, manifest
/// digest). Cloning shares the cache. The default is a fresh empty cache; a daemon with one node
/// gains nothing from it and may leave it so.
#[derive(Debug, Clone, Default)]
pub struct ReleaseCache(Arc<Mutex<CacheMap>>);

/// (trust root digest, manifest digest) → release, while some node holds it.
type CacheMap = BTreeMap<(Digest, Digest), Weak<Release>>;

fn trust_key(trust: &TrustRoot) -> Digest {
    Digest::of(&shoal_protocol::encoding::encode(trust))
}

impl ReleaseCache {
    /// Verifies `bytes` as the manifest of `ann` (see [`verify::manifest`]), reusing a release
    /// already verified under the same trust root.
    pub fn verify(
        &self,
        ctx: &Context<'_>,
        trust_digest: Digest,
        ann: &Announcement,
        bytes: Arc<[u8]>,
    ) -> Result<Arc<Release>, VerifyError> {
        let key = (trust_digest, ann.manifest_digest);
        let cached = self
            .0
            .lock()
            .ok()
            .and_then(|m| m.get(&key).and_then(Weak::upgrade));
        if let Some(release) = cached {
            recheck(ctx, ann, &bytes, &release)?;
            return Ok(release);
        }
        let manifest = verify::manifest(ctx, ann, &bytes)?;
        let chunks = manifest.unique_chunks();
        let unique_bytes = chunks.iter().map(|c| u64::from(c.size)).sum();
        let release = Arc::new(Release {
            manifest: Arc::new(manifest),
            manifest_bytes: bytes,
            manifest_digest: ann.manifest_digest,
            chunks,
            unique_bytes,
        });
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= RELEASE_CACHE_ENTRIES {
                m.retain(|_, w| w.strong_count() > 0);
            }
            if m.len() < RELEASE_CACHE_ENTRIES {
                m.insert(key, Arc::downgrade(&release));
            }
        }
        Ok(release)
    }

    /// The digest under which `trust` keys the cache.
    pub fn trust_digest(trust: &TrustRoot) -> Digest {
        trust_key(trust)
    }
}

/// The node-dependent checks of [`verify::manifest`], for a release whose bytes and signatures
/// were verified before under the same trust root.
fn recheck(
    ctx: &Context<'_>,
    ann: &Announcement,
    bytes: &[u8],
    release: &Release,
) -> Result<(), VerifyError> {
    if bytes.len() as u64 != ann.manifest_size {
        return Err(VerifyError::SizeMismatch {
            expected: ann.manifest_size,
            found: bytes.len() as u64,
        });
    }
    let found = Digest::of(bytes);
    if found != ann.manifest_digest || found != release.manifest_digest {
        return Err(VerifyError::DigestMismatch {
            expected: ann.manifest_digest,
            found,
        });
    }
    if ctx.now >= ctx.trust.expires {
        return Err(VerifyError::TrustRootExpired {
            version: ctx.trust.version,
        });
    }
    let m = &release.manifest;
    if m.fleet != ctx.trust.fleet {
        return Err(VerifyError::WrongFleet {
            expected: ctx.trust.fleet.clone(),
            found: m.fleet.clone(),
        });
    }
    if m.sequence != ann.sequence {
        return Err(VerifyError::ManifestMismatch {
            expected: ann.sequence,
            found: m.sequence,
        });
    }
    if m.arch != ctx.arch {
        return Err(VerifyError::WrongArch {
            expected: ctx.arch.to_string(),
            found: m.arch.clone(),
        });
    }
    if ctx.now >= m.expires {
        return Err(VerifyError::Expired {
            kind: "manifest",
            expires: m.expires.0,
            now: ctx.now.0,
        });
    }
    match ctx.highest_seen {
        Some((highest, _)) if m.sequence < highest => Err(VerifyError::Rollback {
            highest,
            found: m.sequence,
        }),
        Some((highest, seen)) if m.sequence == highest && seen != ann.manifest_digest => {
            Err(VerifyError::Equivocation {
                sequence: m.sequence,
            })
        }
        _ => Ok(()),
    }?;
    m.rollout.check()?;
    Ok(())
}
