//! The device's identity: one ed25519 key, which is at once the Shoal [`DeviceId`] (it signs
//! status reports), the libp2p [`PeerId`] (gossip, discovery) and the key the QUIC data plane's
//! TLS certificate is bound to (see [`super::quic`]).
//!
//! The key lives in a file of 64 hex characters (the 32-byte secret seed), created with mode
//! 0600 by [`DeviceKey::create`]; [`DeviceKey::load`] refuses a file that others may read.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::PeerId;
use libp2p::identity::{Keypair, ed25519};
use shoal_protocol::{DeviceId, SigningKey};

/// Why a key file could not be created or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read (missing, no permission, ...).
    #[error("cannot read device key {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file could not be written (exists already, no permission, ...).
    #[error("cannot create device key {path}: {source}")]
    Write {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not 64 hex characters.
    #[error("device key {path} is malformed: expected 64 hex characters")]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
    /// Group or others may read the file.
    #[error(
        "device key {path} has mode {mode:o}; it must not be readable by group or others (chmod 600)"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
    },
}

/// The device's secret key.
#[derive(Clone)]
pub struct DeviceKey {
    secret: [u8; 32],
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey")
            .field("device", &self.device_id())
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// A fresh random key (from the operating system's RNG, through libp2p's key generation).
    pub fn generate() -> DeviceKey {
        let kp = ed25519::Keypair::generate();
        let mut secret = [0u8; 32];
        secret.copy_from_slice(kp.secret().as_ref());
        DeviceKey { secret }
    }

    /// The key with this 32-byte secret seed.
    pub fn from_secret(secret: [u8; 32]) -> DeviceKey {
        DeviceKey { secret }
    }

    /// The device's id (its public key).
    pub fn device_id(&self) -> DeviceId {
        self.signing_key().public_key().into()
    }

    /// The key as a Shoal signing key (for status reports).
    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.secret)
    }

    /// The key as a libp2p identity.
    pub fn keypair(&self) -> Keypair {
        let mut seed = self.secret;
        Keypair::ed25519_from_bytes(&mut seed).expect("any 32 bytes are an ed25519 seed")
    }

    /// A 32-byte secret derived from the key for one purpose (`label`), stable across restarts:
    /// SHA-256 of the label, a zero byte and the secret seed.
    pub fn derive_secret(&self, label: &str) -> [u8; 32] {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(label.as_bytes());
        h.update([0u8]);
        h.update(self.secret);
        h.finalize().into()
    }

    /// The libp2p peer id of this device.
    pub fn peer_id(&self) -> PeerId {
        self.keypair().public().to_peer_id()
    }

    /// Creates a new key file at `path` (which must not exist), mode 0600.
    pub fn create(path: &Path) -> Result<DeviceKey, KeyFileError> {
        let key = DeviceKey::generate();
        let err = |source| KeyFileError::Write {
            path: path.to_owned(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(err)?;
        writeln!(f, "{}", hex::encode(key.secret)).map_err(err)?;
        f.sync_all().map_err(err)?;
        Ok(key)
    }

    /// Loads the key file at `path`.
    pub fn load(path: &Path) -> Result<DeviceKey, KeyFileError> {
        let read_err = |source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Permissions {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let mut secret = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut secret).map_err(|_| KeyFileError::Malformed {
            path: path.to_owned(),
        })?;
        Ok(DeviceKey { secret })
    }
}

/// The libp2p peer id of a device, or `None` if the device id is not a valid ed25519 point.
pub fn peer_id_of(device: &DeviceId) -> Option<PeerId> {
    let pk = ed25519::PublicKey::try_from_bytes(&device.0).ok()?;
    Some(libp2p::identity::PublicKey::from(pk).to_peer_id())
}

/// The device id behind a libp2p peer id, if the peer id embeds an ed25519 key (as every Shoal
/// device's does). Peer ids that are hashes of other key types give `None`.
pub fn device_id_of(peer: &PeerId) -> Option<DeviceId> {
    let mh = peer.as_ref();
    // 0x00 is the identity multihash: the digest is the protobuf-encoded public key.
    if mh.code() != 0 {
        return None;
    }
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    let ed = pk.try_into_ed25519().ok()?;
    Some(DeviceId(ed.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_peer_ids_map_both_ways() {
        let key = DeviceKey::generate();
        let device = key.device_id();
        assert_eq!(peer_id_of(&device), Some(key.peer_id()));
        assert_eq!(device_id_of(&key.peer_id()), Some(device));
    }

    #[test]
    fn key_file_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        let key = DeviceKey::create(&path).unwrap();
        assert_eq!(DeviceKey::load(&path).unwrap().device_id(), key.device_id());
        assert!(matches!(
            DeviceKey::create(&path),
            Err(KeyFileError::Write { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                DeviceKey::load(&path),
                Err(KeyFileError::Permissions { .. })
            ));
        }
    }

    #[test]
    fn malformed_and_missing_key_files_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        assert!(matches!(
            DeviceKey::load(&path),
            Err(KeyFileError::Read { .. })
        ));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        opts.open(&path)
            .unwrap()
            .write_all(b"not hex at all")
            .unwrap();
        assert!(matches!(
            DeviceKey::load(&path),
            Err(KeyFileError::Malformed { .. })
        ));
    }
}
