//! [`Envelope`]: payload bytes with ed25519 signatures by key id, checked against a threshold.
//!
//! A signature covers `"shoal-sig-v1\0" || kind || "\0" || payload`, so a signature made for one
//! kind of message (a manifest, say) can never be replayed as another (a wave control message).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::encoding::{LimitError, Wire, limit};
use crate::{KeyId, PublicKey, Signature};

/// At most this many signatures on one envelope.
pub const MAX_SIGNATURES: usize = 32;

/// A private ed25519 key. Made from 32 secret bytes the caller provides (from its own RNG or a
/// key file); this crate never draws randomness.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public_key().fingerprint())
    }
}

impl SigningKey {
    /// The key whose secret is `secret`.
    pub fn from_bytes(secret: &[u8; 32]) -> Self {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(secret))
    }

    /// The secret bytes, for writing a key file.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.public_key().id()
    }

    /// Signs `payload` as a message of `kind`.
    pub fn sign(&self, kind: &str, payload: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        Signature(self.0.sign(&signed_message(kind, payload)).to_bytes())
    }
}

fn signed_message(kind: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + kind.len() + payload.len());
    m.extend_from_slice(b"shoal-sig-v1\0");
    m.extend_from_slice(kind.as_bytes());
    m.push(0);
    m.extend_from_slice(payload);
    m
}

/// One signature and the id of the key that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureEntry {
    /// The signer's key id.
    pub key_id: KeyId,
    /// The signature.
    pub signature: Signature,
}

/// Signed bytes: the canonical encoding of a value and the signatures over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// What is signed: the canonical encoding of the inner value.
    pub payload: Vec<u8>,
    /// Signatures over `payload`, each by a distinct key.
    pub signatures: Vec<SignatureEntry>,
}

impl Wire for Envelope {
    const KIND: &'static str = "envelope";
    /// Large enough for a manifest; the inner value's own cap is checked when the payload is
    /// decoded.
    const MAX_BYTES: usize = 16 * 1024 * 1024 + 4096;
    fn validate(&self) -> Result<(), LimitError> {
        limit("envelope signatures", self.signatures.len(), MAX_SIGNATURES)
    }
}

/// Why an envelope's signatures are not enough.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No signature is by a key this role trusts.
    #[error("signed by unknown key {0}")]
    UnknownKey(KeyId),
    /// A trusted key's signature does not verify.
    #[error("bad signature by key {0}")]
    BadSignature(KeyId),
    /// The same key signed twice (each key counts once).
    #[error("key {0} signed more than once")]
    DuplicateKey(KeyId),
    /// Fewer valid signatures by distinct trusted keys than the threshold.
    #[error("{valid} valid signatures, threshold is {threshold}")]
    BelowThreshold {
        /// Valid signatures by distinct trusted keys.
        valid: usize,
        /// Required.
        threshold: usize,
    },
}

impl Envelope {
    /// Signs `payload` (of `kind`) with each of `keys`.
    pub fn sign(kind: &str, payload: Vec<u8>, keys: &[&SigningKey]) -> Envelope {
        let signatures = keys
            .iter()
            .map(|k| SignatureEntry {
                key_id: k.id(),
                signature: k.sign(kind, &payload),
            })
            .collect();
        Envelope {
            payload,
            signatures,
        }
    }

    /// Encodes `value` canonically and signs it.
    pub fn seal<T: Wire>(value: &T, keys: &[&SigningKey]) -> Envelope {
        Self::sign(T::KIND, crate::encoding::encode(value), keys)
    }

    /// Adds one more signature.
    pub fn add_signature(&mut self, kind: &str, key: &SigningKey) {
        self.signatures.push(SignatureEntry {
            key_id: key.id(),
            signature: key.sign(kind, &self.payload),
        });
    }

    /// Counts valid signatures by distinct keys among `trusted`. Signatures by keys not in
    /// `trusted` are skipped (they may be another role's, as in a rotation signed by old and new
    /// roots); a bad signature by a trusted key, or a key signing twice, is an error.
    pub fn count_valid(&self, kind: &str, trusted: &[PublicKey]) -> Result<usize, SignatureError> {
        let message = signed_message(kind, &self.payload);
        let mut seen = BTreeSet::new();
        let mut valid = 0;
        for entry in &self.signatures {
            if !seen.insert(entry.key_id) {
                return Err(SignatureError::DuplicateKey(entry.key_id));
            }
            let Some(key) = trusted.iter().find(|k| k.id() == entry.key_id) else {
                continue;
            };
            if !key.verify(&message, &entry.signature) {
                return Err(SignatureError::BadSignature(entry.key_id));
            }
            valid += 1;
        }
        Ok(valid)
    }

    /// Checks that at least `threshold` distinct keys of `trusted` signed this envelope.
    pub fn verify_threshold(
        &self,
        kind: &str,
        trusted: &[PublicKey],
        threshold: usize,
    ) -> Result<(), SignatureError> {
        let valid = self.count_valid(kind, trusted)?;
        if valid >= threshold.max(1) {
            return Ok(());
        }
        if valid == 0
            && let Some(first) = self.signatures.first()
        {
            return Err(SignatureError::UnknownKey(first.key_id));
        }
        Err(SignatureError::BelowThreshold {
            valid,
            threshold: threshold.max(1),
        })
    }

    /// Decodes the payload as a `T` after checking the signatures; see [`crate::encoding::decode`].
    pub fn open<T: Wire>(
        &self,
        trusted: &[PublicKey],
        threshold: usize,
    ) -> Result<T, crate::verify::VerifyError> {
        self.verify_threshold(T::KIND, trusted, threshold)?;
        Ok(crate::encoding::decode(&self.payload)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    #[test]
    fn threshold_counts_each_key_once() {
        let (a, b, c) = (key(1), key(2), key(3));
        let trusted = [a.public_key(), b.public_key(), c.public_key()];
        let env = Envelope::sign("t", b"hi".to_vec(), &[&a, &b]);
        assert_eq!(env.verify_threshold("t", &trusted, 2), Ok(()));
        assert_eq!(
            env.verify_threshold("t", &trusted, 3),
            Err(SignatureError::BelowThreshold {
                valid: 2,
                threshold: 3
            })
        );
        let twice = Envelope::sign("t", b"hi".to_vec(), &[&a, &a]);
        assert_eq!(
            twice.verify_threshold("t", &trusted, 2),
            Err(SignatureError::DuplicateKey(a.id()))
        );
    }

    #[test]
    fn signature_for_one_kind_does_not_verify_as_another() {
        let a = key(1);
        let env = Envelope::sign("manifest", b"x".to_vec(), &[&a]);
        assert_eq!(
            env.verify_threshold("wave-control", &[a.public_key()], 1),
            Err(SignatureError::BadSignature(a.id()))
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let (a, z) = (key(1), key(9));
        let env = Envelope::sign("t", b"x".to_vec(), &[&z]);
        assert_eq!(
            env.verify_threshold("t", &[a.public_key()], 1),
            Err(SignatureError::UnknownKey(z.id()))
        );
    }
}
