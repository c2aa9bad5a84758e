//! The builder's signing keys and the trust roots it issues.
//!
//! Two ed25519 keys live in `<data>/keys/`: `root.key` signs trust roots, `release.key` signs
//! manifests, announcements and wave control messages. Each file holds the 32 secret bytes, is
//! created with mode 0600 (never readable by others, never rewritten once present) and is made
//! from the operating system's RNG on first start. Every fleet gets a self-signed version-1
//! [`TrustRoot`] naming both keys (threshold 1 each); it is what a device is provisioned with.

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
    /// The file is readable by group or others.
    #[error("key file {path} has mode {mode:o}; it must be 0600")]
    Permissions {
        /// The file.
        path: String,
        /// Its mode bits.
        mode: u32,
    },
}

/// The builder's two keys.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Signs trust roots.
    pub root: SigningKey,
    /// Signs releases.
    pub release: SigningKey,
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
        Ok(Keys {
            root: load_or_generate(&dir.join("root.key"))?,
            release: load_or_generate(&dir.join("release.key"))?,
        })
    }

    /// A fleet's self-signed initial trust root, signed by the root key.
    pub fn initial_trust_root(&self, fleet: &str, now: UnixTime) -> Envelope {
        let root = TrustRoot {
            fleet: fleet.to_string(),
            version: 1,
            expires: now.plus_secs(TRUST_ROOT_VALIDITY_S),
            root_keys: vec![self.root.public_key()],
            root_threshold: 1,
            release_keys: vec![self.release.public_key()],
            release_threshold: 1,
        };
        Envelope::seal(&root, &[&self.root])
    }
}

fn load_or_generate(path: &Path) -> Result<SigningKey, KeyError> {
    let p = || path.display().to_string();
    match fs::read(path) {
        Ok(bytes) => {
            let mode = fs::metadata(path)
                .map_err(|source| KeyError::Io { path: p(), source })?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions { path: p(), mode });
            }
            let secret: [u8; 32] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyError::BadLength {
                        path: p(),
                        len: bytes.len(),
                    })?;
            Ok(SigningKey::from_bytes(&secret))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| KeyError::Io { path: p(), source })?;
            f.write_all(&secret)
                .and_then(|()| f.sync_all())
                .map_err(|source| KeyError::Io { path: p(), source })?;
            Ok(SigningKey::from_bytes(&secret))
        }
        Err(source) => Err(KeyError::Io { path: p(), source }),
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
        assert_eq!(again.root.public_key(), keys.root.public_key());
        assert_ne!(keys.root.public_key(), keys.release.public_key());
        let env = keys.initial_trust_root("demo", UnixTime(1_000));
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
