//! The builder's signing keys and the trust roots it issues.
//!
//! Keys live in `<data>/keys/`, each file the 32 secret bytes of an ed25519 key, created with
//! mode 0600 (never readable by others, never rewritten once present) from the operating
//! system's RNG:
//!
//! - `root.key` signs trust roots. Only fleet creation and `shoal-builder keys rotate` use it, so
//!   it can live offline: `shoal-builder keys export-root` moves it out of the data directory,
//!   after which the server holds only the release key and rotations are signed elsewhere
//!   (`keys sign-rotation`, see [`crate::rotation`]). A missing `root.key` beside an existing
//!   `release.key` means "offline", never "generate a new one".
//! - `release.key` signs manifests, announcements and wave control messages.
//! - `release.prev.key`, after a release-key rotation: the retired key, which still co-signs for
//!   fleets whose trust root has not been rotated yet (a fleet that revoked it ignores its
//!   signature).
//! - `retired-root-<fingerprint>.key`: root keys replaced by a rotation, kept so that fleets still
//!   trusting them can be rotated too.
//!
//! Every fleet gets a self-signed version-1 [`TrustRoot`] naming the root and release keys
//! (threshold 1 each); it is what a device is provisioned with.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::Rng;
use shoal_protocol::{Envelope, SigningKey, TrustRoot, UnixTime};

/// How long a fleet's first trust root stays valid (five years).
pub const TRUST_ROOT_VALIDITY_S: u64 = 5 * 365 * 24 * 3600;

/// Why a key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The failure.
        source: io::Error,
    },
    /// The file is not 32 bytes.
    #[error("key file {path} holds {len} bytes, expected 32")]
    BadLength {
        /// The file.
        path: String,
        /// Its length.
        len: usize,
    },
    /// The root key is not on this machine (it was exported to live offline).
    #[error("the root key is offline (not in {dir}); sign with `shoal-builder keys sign-rotation`")]
    RootOffline {
        /// The keys directory.
        dir: String,
    },
    /// The file is readable by group or others.
    #[error("key file {path} has mode {mode:o}; it must be 0600")]
    Permissions {
        /// The file.
        path: String,
        /// Its mode bits.
        mode: u32,
    },
}

/// The builder's keys.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Signs trust roots; `None` when the root key lives offline.
    pub root: Option<SigningKey>,
    /// Signs releases.
    pub release: SigningKey,
    /// The release key before the last release-key rotation, if any: it co-signs releases for
    /// fleets not rotated yet.
    pub previous_release: Option<SigningKey>,
    /// Where they were loaded from ([`Keys::reloaded`]).
    dir: std::path::PathBuf,
}

impl Keys {
    /// Loads `root.key` and `release.key` from `dir`, generating each one that is missing.
    pub fn load_or_generate(dir: &Path) -> Result<Keys, KeyError> {
        let io = |source| KeyError::Io {
            path: dir.display().to_string(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        let root_path = dir.join("root.key");
        let release_path = dir.join("release.key");
        let first_start = !root_path.exists() && !release_path.exists();
        let root = if first_start || root_path.exists() {
            Some(load_or_generate(&root_path)?)
        } else {
            None
        };
        let prev = dir.join("release.prev.key");
        Ok(Keys {
            dir: dir.to_owned(),
            root,
            release: load_or_generate(&release_path)?,
            previous_release: if prev.exists() {
                Some(load(&prev)?)
            } else {
                None
            },
        })
    }

    /// The root key, or [`KeyError::RootOffline`].
    pub fn root(&self, dir: &Path) -> Result<&SigningKey, KeyError> {
        self.root.as_ref().ok_or_else(|| KeyError::RootOffline {
            dir: dir.display().to_string(),
        })
    }

    /// The release keys as they are on disk now: `shoal-builder keys rotate --new-release-key`
    /// run while the server runs swaps the files, and what the server signs next must use the
    /// new key (the fleet's origin, already rotated, refuses the revoked one). Keeps the loaded
    /// keys if the files cannot be read.
    pub fn reloaded(&self) -> Keys {
        let release = match load(&self.dir.join("release.key")) {
            Ok(k) => k,
            Err(_) => return self.clone(),
        };
        let prev = self.dir.join("release.prev.key");
        let previous_release = if prev.exists() {
            match load(&prev) {
                Ok(k) => Some(k),
                Err(_) => return self.clone(),
            }
        } else {
            None
        };
        Keys {
            release,
            previous_release,
            ..self.clone()
        }
    }

    /// The keys that sign a release: the release key, and the previous one while some fleet
    /// may still trust only it.
    pub fn release_signers(&self) -> Vec<&SigningKey> {
        std::iter::once(&self.release)
            .chain(self.previous_release.as_ref())
            .collect()
    }

    /// A fleet's self-signed initial trust root, signed by the root key.
    pub fn initial_trust_root(&self, fleet: &str, now: UnixTime) -> Result<Envelope, KeyError> {
        let key = self.root.as_ref().ok_or_else(|| KeyError::RootOffline {
            dir: "the data directory".into(),
        })?;
        let root = TrustRoot {
            fleet: fleet.to_string(),
            version: 1,
            expires: now.plus_secs(TRUST_ROOT_VALIDITY_S),
            root_keys: vec![key.public_key()],
            root_threshold: 1,
            release_keys: vec![self.release.public_key()],
            release_threshold: 1,
        };
        Ok(Envelope::seal(&root, &[key]))
    }
}

/// Loads a key file (32 secret bytes, mode 0600).
pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let p = || path.display().to_string();
    let bytes = fs::read(path).map_err(|source| KeyError::Io { path: p(), source })?;
    let mode = fs::metadata(path)
        .map_err(|source| KeyError::Io { path: p(), source })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { path: p(), mode });
    }
    let secret: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::BadLength {
            path: p(),
            len: bytes.len(),
        })?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Writes a new key file from the operating system's RNG (mode 0600, never over an existing
/// file) and returns the key.
pub fn generate(path: &Path) -> Result<SigningKey, KeyError> {
    let p = || path.display().to_string();
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    write_new(path, &secret).map_err(|source| KeyError::Io { path: p(), source })?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Writes `bytes` to a new file with mode 0600 and syncs it.
pub fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn load_or_generate(path: &Path) -> Result<SigningKey, KeyError> {
    if path.exists() {
        load(path)
    } else {
        generate(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_0600_stable_and_the_trust_root_opens() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::load_or_generate(dir.path()).unwrap();
        for f in ["root.key", "release.key"] {
            let mode = fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let again = Keys::load_or_generate(dir.path()).unwrap();
        let root = keys.root.as_ref().unwrap();
        assert_eq!(again.root.unwrap().public_key(), root.public_key());
        assert_ne!(root.public_key(), keys.release.public_key());
        let env = keys.initial_trust_root("demo", UnixTime(1_000)).unwrap();
        let root = TrustRoot::open_initial(&env).unwrap();
        assert_eq!(root.fleet, "demo");
        assert_eq!(root.release_keys, vec![keys.release.public_key()]);
    }

    #[test]
    fn a_world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Keys::load_or_generate(dir.path()).unwrap();
        let f = dir.path().join("root.key");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Keys::load_or_generate(dir.path()),
            Err(KeyError::Permissions { .. })
        ));
    }
}

#[cfg(test)]
mod offline_tests {
    use super::*;

    #[test]
    fn a_root_key_moved_away_is_offline_not_regenerated() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::load_or_generate(dir.path()).unwrap();
        let release = keys.release.public_key();
        fs::remove_file(dir.path().join("root.key")).unwrap();
        let again = Keys::load_or_generate(dir.path()).unwrap();
        assert!(again.root.is_none());
        assert!(!dir.path().join("root.key").exists());
        assert_eq!(again.release.public_key(), release);
        assert!(matches!(
            again.initial_trust_root("demo", UnixTime(1)),
            Err(KeyError::RootOffline { .. })
        ));
        assert_eq!(again.release_signers().len(), 1);
    }
}
