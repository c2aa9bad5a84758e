//! [`Digest`]: the BLAKE3 name of a chunk, layer, manifest or key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A BLAKE3 hash, 32 bytes. Shown and parsed as 64 lowercase hex characters; serialised as a hex
/// string in human-readable formats (JSON) and as 32 raw bytes in the canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 hex characters, for logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

/// A string that is not 64 hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a digest: expected {expected} hex characters, got {input:?}")]
pub struct ParseDigestError {
    /// How many hex characters were expected.
    pub expected: usize,
    /// The offending input, cut to 80 characters.
    pub input: String,
}

pub(crate) fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], ParseDigestError> {
    let mut out = [0u8; N];
    match hex::decode_to_slice(s, &mut out) {
        Ok(()) => Ok(out),
        Err(_) => Err(ParseDigestError {
            expected: N * 2,
            input: s.chars().take(80).collect(),
        }),
    }
}

impl FromStr for Digest {
    type Err = ParseDigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex::<32>(s).map(Digest)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::keys::fixed::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::keys::fixed::deserialize::<D, 32>(d).map(Digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_json_is_a_string() {
        let d = Digest::of(b"hello");
        let s = d.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }

    #[test]
    fn bad_hex_is_a_typed_error() {
        let err = "xyz".parse::<Digest>().unwrap_err();
        assert_eq!(err.expected, 64);
        assert!("00".repeat(33).parse::<Digest>().is_err());
    }

    #[test]
    fn canonical_form_is_32_raw_bytes() {
        let d = Digest::of(b"x");
        let bytes = postcard::to_stdvec(&d).unwrap();
        assert_eq!(bytes, d.0.to_vec());
    }
}
