//! Trust-root rotation on the builder: propose, sign (possibly on another machine), install.
//!
//! A rotation is the signed envelope of the fleet's next [`TrustRoot`] version. Devices accept it
//! only when a threshold of the current version's root keys *and* of the new version's root keys
//! signed it ([`TrustRoot::verify_successor`]), so it is made in three steps that may run on
//! different machines:
//!
//! 1. [`propose`]: the next version (new root keys, new release keys, thresholds, expiry), with no
//!    signature yet. Written to a file.
//! 2. [`sign`]: one root key adds its signature. Run once per key, wherever the key lives (an
//!    offline machine); the builder's own root key can sign too when it is online.
//! 3. [`install`]: the builder checks the envelope exactly as a device will, then keeps it in
//!    `<data>/fleets/<fleet>/rotations/<version>.bin` and makes it the fleet's current
//!    `trust-root.bin` (self-signed by its new root keys, so a new device can be provisioned
//!    with it directly). If the new version trusts the builder's pending release key
//!    (`keys/release.next.key`), that key becomes `release.key` and the old one
//!    `release.prev.key`, which keeps co-signing for fleets not rotated yet.
//!
//! Devices learn a rotation by gossip ([`shoal_node`'s `GossipMessage::TrustRoot`]): the
//! builder's origin node publishes [`chain`], and every node sends the rotations it holds to a
//! peer that connects, so a device offline during a rotation catches up.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use shoal_protocol::encoding::{decode, encode};
use shoal_protocol::verify::VerifyError;
use shoal_protocol::{Envelope, PublicKey, SigningKey, TrustRoot, UnixTime, Wire};

use crate::keys::{self, KeyError};

/// Why a rotation could not be proposed, signed or installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The failure.
        source: io::Error,
    },
    /// A key file.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The file is not a signed trust root, or it does not verify as the fleet's next version.
    #[error("{what}: {source}")]
    Invalid {
        /// Which file or check.
        what: String,
        /// Why.
        source: VerifyError,
    },
    /// The proposed version would leave the fleet unusable.
    #[error("{0}")]
    Refused(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RotationError + '_ {
    move |source| RotationError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The fleet's directory under the data directory.
pub fn fleet_dir(data: &Path, fleet: &str) -> PathBuf {
    data.join("fleets").join(fleet)
}

/// The fleet's current trust root and its signed envelope.
pub fn current(data: &Path, fleet: &str) -> Result<(TrustRoot, Envelope), RotationError> {
    let path = fleet_dir(data, fleet).join("trust-root.bin");
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    let invalid = |source| RotationError::Invalid {
        what: path.display().to_string(),
        source,
    };
    let env: Envelope = decode(&bytes).map_err(|e| invalid(e.into()))?;
    let root = TrustRoot::open_initial(&env).map_err(invalid)?;
    if root.fleet != fleet {
        return Err(RotationError::Refused(format!(
            "{} is the trust root of fleet {:?}",
            path.display(),
            root.fleet
        )));
    }
    Ok((root, env))
}

/// Every installed rotation of the fleet, oldest first (encoded envelopes): what the origin node
/// gossips.
pub fn chain(data: &Path, fleet: &str) -> Result<Vec<Vec<u8>>, RotationError> {
    let dir = fleet_dir(data, fleet).join("rotations");
    let mut found = Vec::new();
    match fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries {
                let e = e.map_err(io_err(&dir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(v) = name
                    .strip_suffix(".bin")
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    found.push((v, e.path()));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&dir)(e)),
    }
    found.sort();
    found
        .into_iter()
        .map(|(_, p)| fs::read(&p).map_err(io_err(&p)))
        .collect()
}

/// What the next version changes; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// New root keys.
    pub root_keys: Option<Vec<PublicKey>>,
    /// New root threshold.
    pub root_threshold: Option<u8>,
    /// New release keys.
    pub release_keys: Option<Vec<PublicKey>>,
    /// New release threshold.
    pub release_threshold: Option<u8>,
    /// New expiry.
    pub expires: Option<UnixTime>,
}

/// The unsigned envelope of the version after `current`, well-formed.
pub fn propose(current: &TrustRoot, changes: Changes) -> Result<Envelope, RotationError> {
    let next = TrustRoot {
        fleet: current.fleet.clone(),
        version: current.version + 1,
        expires: changes.expires.unwrap_or(current.expires),
        root_threshold: changes.root_threshold.unwrap_or(current.root_threshold),
        root_keys: changes
            .root_keys
            .unwrap_or_else(|| current.root_keys.clone()),
        release_threshold: changes
            .release_threshold
            .unwrap_or(current.release_threshold),
        release_keys: changes
            .release_keys
            .unwrap_or_else(|| current.release_keys.clone()),
    };
    next.check().map_err(|e| RotationError::Invalid {
        what: "proposed trust root".into(),
        source: e.into(),
    })?;
    Ok(Envelope {
        payload: encode(&next),
        signatures: Vec::new(),
    })
}

/// Decodes the trust root a rotation envelope carries (to show what is about to be signed).
pub fn open_unverified(env: &Envelope) -> Result<TrustRoot, RotationError> {
    decode(&env.payload).map_err(|e| RotationError::Invalid {
        what: "rotation payload".into(),
        source: e.into(),
    })
}

/// Adds `key`'s signature to a rotation; returns the trust root it signs.
pub fn sign(env: &mut Envelope, key: &SigningKey) -> Result<TrustRoot, RotationError> {
    let root = open_unverified(env)?;
    if env.signatures.iter().any(|s| s.key_id == key.id()) {
        return Err(RotationError::Refused(format!(
            "key {} already signed this rotation",
            key.public_key().fingerprint()
        )));
    }
    env.add_signature(TrustRoot::KIND, key);
    Ok(root)
}

/// Checks `env` as a device will and makes it the fleet's current trust root; swaps in the
/// pending release key if the new version trusts it. Returns the new root.
pub fn install(
    data: &Path,
    fleet: &str,
    env: &Envelope,
    now: UnixTime,
) -> Result<TrustRoot, RotationError> {
    let (cur, _) = current(data, fleet)?;
    let next = cur
        .verify_successor(env)
        .map_err(|source| RotationError::Invalid {
            what: format!("rotation of {fleet} to version {}", cur.version + 1),
            source,
        })?;
    if now >= next.expires {
        return Err(RotationError::Invalid {
            what: format!("rotation of {fleet}"),
            source: VerifyError::TrustRootExpired {
                version: next.version,
            },
        });
    }
    let key_dir = data.join("keys");
    let release = keys::load(&key_dir.join("release.key"))?;
    let pending_path = key_dir.join("release.next.key");
    let pending = if pending_path.exists() {
        Some(keys::load(&pending_path)?)
    } else {
        None
    };
    let trusts = |k: &SigningKey| next.release_keys.contains(&k.public_key());
    let swap = match &pending {
        Some(p) if trusts(p) => true,
        _ if trusts(&release) => false,
        _ => {
            return Err(RotationError::Refused(format!(
                "version {} trusts no release key this builder holds; it could sign nothing",
                next.version
            )));
        }
    };
    let dir = fleet_dir(data, fleet);
    let rotations = dir.join("rotations");
    fs::create_dir_all(&rotations).map_err(io_err(&rotations))?;
    let bytes = encode(env);
    let kept = rotations.join(format!("{}.bin", next.version));
    keys::write_new(&kept, &bytes).map_err(io_err(&kept))?;
    let tmp = dir.join("trust-root.bin.tmp");
    let _ = fs::remove_file(&tmp);
    keys::write_new(&tmp, &bytes).map_err(io_err(&tmp))?;
    let target = dir.join("trust-root.bin");
    fs::rename(&tmp, &target).map_err(io_err(&target))?;
    if swap {
        let prev = key_dir.join("release.prev.key");
        let _ = fs::remove_file(&prev);
        let cur_path = key_dir.join("release.key");
        fs::rename(&cur_path, &prev).map_err(io_err(&prev))?;
        fs::rename(&pending_path, &cur_path).map_err(io_err(&cur_path))?;
    }
    Ok(next)
}

/// Finds the secret of one of `wanted` among the builder's key files (`root.key` and retired
/// root keys).
pub fn local_root_keys(
    key_dir: &Path,
    wanted: &[PublicKey],
) -> Result<Vec<SigningKey>, RotationError> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(key_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io_err(key_dir)(e)),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n == "root.key" || (n.starts_with("retired-root-") && n.ends_with(".key"))
            })
        })
        .collect();
    paths.sort();
    for p in paths {
        let k = keys::load(&p)?;
        if wanted.contains(&k.public_key()) && !found.iter().any(|f: &SigningKey| f.id() == k.id())
        {
            found.push(k);
        }
    }
    Ok(found)
}

/// What [`rotate_online`] did.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The installed version.
    pub root: TrustRoot,
    /// The encoded rotation envelope.
    pub envelope: Vec<u8>,
}

/// `shoal-builder keys rotate` with the root key on this machine: a new root key replaces the
/// old one (kept as `retired-root-<fingerprint>.key`), and with `new_release_key` a new release
/// key replaces the old one; the rotation is signed by the old and the new root key and
/// installed.
pub fn rotate_online(
    data: &Path,
    fleet: &str,
    new_release_key: bool,
    now: UnixTime,
) -> Result<Rotated, RotationError> {
    let (cur, _) = current(data, fleet)?;
    let key_dir = data.join("keys");
    let old = local_root_keys(&key_dir, &cur.root_keys)?;
    if old.len() < usize::from(cur.root_threshold) {
        return Err(KeyError::RootOffline {
            dir: key_dir.display().to_string(),
        }
        .into());
    }
    let root_path = key_dir.join("root.key");
    // The new root key: a fresh one, unless root.key is already newer than this fleet's root
    // (another fleet was rotated first).
    let new_root = if root_path.exists()
        && !cur
            .root_keys
            .contains(&keys::load(&root_path)?.public_key())
    {
        keys::load(&root_path)?
    } else {
        let fresh = key_dir.join("root.next.key");
        let _ = fs::remove_file(&fresh);
        keys::generate(&fresh)?
    };
    let release_keys = if new_release_key {
        let pending = key_dir.join("release.next.key");
        let k = if pending.exists() {
            keys::load(&pending)?
        } else {
            keys::generate(&pending)?
        };
        Some(vec![k.public_key()])
    } else {
        None
    };
    let mut env = propose(
        &cur,
        Changes {
            root_keys: Some(vec![new_root.public_key()]),
            root_threshold: Some(1),
            release_threshold: release_keys.as_ref().map(|_| 1),
            release_keys,
            expires: Some(now.plus_secs(keys::TRUST_ROOT_VALIDITY_S)),
        },
    )?;
    for k in old.iter().take(usize::from(cur.root_threshold)) {
        sign(&mut env, k)?;
    }
    sign(&mut env, &new_root)?;
    let root = install(data, fleet, &env, now)?;
    // The new root key becomes root.key; the old one is retired, not lost.
    let fresh = key_dir.join("root.next.key");
    if fresh.exists() {
        if root_path.exists() {
            let old_key = keys::load(&root_path)?;
            let retired = key_dir.join(format!(
                "retired-root-{}.key",
                old_key.public_key().fingerprint()
            ));
            fs::rename(&root_path, &retired).map_err(io_err(&retired))?;
        }
        fs::rename(&fresh, &root_path).map_err(io_err(&root_path))?;
    }
    Ok(Rotated {
        root,
        envelope: encode(&env),
    })
}

#[cfg(test)]
mod tests;
