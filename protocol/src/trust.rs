//! [`TrustRoot`]: who may sign what for a fleet, rotated the way TUF rotates its root role.
//!
//! A trust root lists root keys with a threshold and release keys with a threshold, and expires.
//! Root keys sign only trust roots; release keys sign announcements, manifests and wave control
//! messages. Version 1 is pinned on the device when it is provisioned. Version N+1 is accepted
//! only when a threshold of version N's root keys *and* a threshold of its own root keys signed it,
//! so neither a stolen old key nor a new key alone can take over a fleet. A device walks a chain of
//! rotations one version at a time, at most [`MAX_ROTATIONS_AT_ONCE`] per update; intermediate
//! versions may have expired, the last one must not have.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::encoding::{LimitError, Wire, decode, limit};
use crate::verify::VerifyError;
use crate::{Envelope, PublicKey, UnixTime};

/// Most keys per role.
pub const MAX_KEYS_PER_ROLE: usize = 16;
/// Most trust-root versions a device walks in one update.
pub const MAX_ROTATIONS_AT_ONCE: usize = 64;

/// A fleet's trust root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustRoot {
    /// The fleet.
    pub fleet: String,
    /// Starts at 1; each rotation adds one.
    pub version: u64,
    /// After this instant the root must be rotated before anything else is accepted.
    pub expires: UnixTime,
    /// Keys that sign trust roots.
    pub root_keys: Vec<PublicKey>,
    /// How many root keys must sign.
    pub root_threshold: u8,
    /// Keys that sign releases and wave control.
    pub release_keys: Vec<PublicKey>,
    /// How many release keys must sign.
    pub release_threshold: u8,
}

impl Wire for TrustRoot {
    const KIND: &'static str = "trust-root";
    const MAX_BYTES: usize = 8 * 1024;
    fn validate(&self) -> Result<(), LimitError> {
        limit("fleet", self.fleet.len(), crate::manifest::MAX_NAME_BYTES)?;
        limit("root keys", self.root_keys.len(), MAX_KEYS_PER_ROLE)?;
        limit("release keys", self.release_keys.len(), MAX_KEYS_PER_ROLE)
    }
}

/// A trust root that is not well-formed on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustRootError {
    /// A role lists the same key twice.
    #[error("the {role} role lists key {key} twice")]
    DuplicateKey {
        /// `root` or `release`.
        role: &'static str,
        /// The key's fingerprint.
        key: String,
    },
    /// A threshold of zero, or above the number of keys.
    #[error("the {role} role has threshold {threshold} with {keys} keys")]
    BadThreshold {
        /// `root` or `release`.
        role: &'static str,
        /// The threshold.
        threshold: u8,
        /// The number of keys.
        keys: usize,
    },
}

impl TrustRoot {
    /// Checks thresholds and that no role lists a key twice.
    pub fn check(&self) -> Result<(), TrustRootError> {
        for (role, keys, threshold) in [
            ("root", &self.root_keys, self.root_threshold),
            ("release", &self.release_keys, self.release_threshold),
        ] {
            let mut seen = BTreeSet::new();
            for k in keys {
                if !seen.insert(*k) {
                    return Err(TrustRootError::DuplicateKey {
                        role,
                        key: k.fingerprint(),
                    });
                }
            }
            if threshold == 0 || usize::from(threshold) > keys.len() {
                return Err(TrustRootError::BadThreshold {
                    role,
                    threshold,
                    keys: keys.len(),
                });
            }
        }
        Ok(())
    }

    /// Opens a self-signed initial root (version 1, pinned at provisioning): well-formed and
    /// signed by a threshold of its own root keys.
    pub fn open_initial(envelope: &Envelope) -> Result<TrustRoot, VerifyError> {
        let root: TrustRoot = decode(&envelope.payload)?;
        root.check()?;
        envelope.verify_threshold(
            Self::KIND,
            &root.root_keys,
            usize::from(root.root_threshold),
        )?;
        Ok(root)
    }

    /// Accepts `next` as the successor of `self`: version exactly one higher, same fleet, well
    /// formed, signed by a threshold of this root's keys and of its own.
    pub fn verify_successor(&self, next: &Envelope) -> Result<TrustRoot, VerifyError> {
        let candidate: TrustRoot = decode(&next.payload)?;
        if candidate.fleet != self.fleet {
            return Err(VerifyError::WrongFleet {
                expected: self.fleet.clone(),
                found: candidate.fleet,
            });
        }
        if candidate.version != self.version + 1 {
            return Err(VerifyError::TrustRootVersion {
                current: self.version,
                found: candidate.version,
            });
        }
        candidate.check()?;
        next.verify_threshold(
            Self::KIND,
            &self.root_keys,
            usize::from(self.root_threshold),
        )?;
        next.verify_threshold(
            Self::KIND,
            &candidate.root_keys,
            usize::from(candidate.root_threshold),
        )?;
        Ok(candidate)
    }

    /// Walks a chain of rotations from `self`; the result must not have expired at `now`.
    pub fn rotate_through(
        &self,
        chain: &[Envelope],
        now: UnixTime,
    ) -> Result<TrustRoot, VerifyError> {
        if chain.len() > MAX_ROTATIONS_AT_ONCE {
            return Err(VerifyError::TooManyRotations {
                len: chain.len(),
                max: MAX_ROTATIONS_AT_ONCE,
            });
        }
        let mut current = self.clone();
        for next in chain {
            current = current.verify_successor(next)?;
        }
        if now >= current.expires {
            return Err(VerifyError::TrustRootExpired {
                version: current.version,
            });
        }
        Ok(current)
    }
}
