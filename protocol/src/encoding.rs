//! The canonical encoding: one value, one byte string.
//!
//! Format: one version byte ([`FORMAT_VERSION`]) followed by the value in
//! [postcard](https://docs.rs/postcard). Postcard was chosen because it is compact (announcements
//! stay far under 4 KiB), has a written specification, has no maps with free key order in our types
//! (we use `BTreeMap`, serialised in key order) and no optional padding, so a value has exactly one
//! encoding; and it is already serde, so JSON views come for free.
//!
//! Decoding is strict, because the bytes come from peers: [`decode`] checks the size cap *before*
//! parsing, rejects unknown versions and trailing bytes, runs the type's [`Wire::validate`]
//! (collection and string limits), and re-encodes the value to reject any non-canonical form (an
//! over-long varint, say). Postcard never allocates more than the input can fill, and the input
//! is capped, so nothing a peer sends allocates unboundedly or panics.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The version byte in front of every encoded value.
pub const FORMAT_VERSION: u8 = 1;

/// A type with a canonical encoding and limits on what a decoder accepts.
pub trait Wire: Serialize + DeserializeOwned {
    /// What the type is called in errors.
    const KIND: &'static str;
    /// The largest encoding a decoder accepts, in bytes.
    const MAX_BYTES: usize;
    /// Checks the limits of collections and strings inside the value.
    fn validate(&self) -> Result<(), LimitError> {
        Ok(())
    }
}

/// A limit exceeded inside a decoded value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} has {len} items, at most {max} allowed")]
pub struct LimitError {
    /// Which field.
    pub what: &'static str,
    /// How many it had.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

/// Returns a [`LimitError`] when `len > max`.
pub fn limit(what: &'static str, len: usize, max: usize) -> Result<(), LimitError> {
    if len > max {
        Err(LimitError { what, len, max })
    } else {
        Ok(())
    }
}

/// Why bytes were not accepted as a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is larger than the cap for its kind.
    #[error("{kind} is {len} bytes, larger than the {max}-byte cap")]
    Oversized {
        /// The kind of value.
        kind: &'static str,
        /// Input length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The input is empty.
    #[error("{kind}: empty input")]
    Empty {
        /// The kind of value.
        kind: &'static str,
    },
    /// The version byte is not one this build understands.
    #[error("{kind}: unknown format version {version}")]
    UnknownVersion {
        /// The kind of value.
        kind: &'static str,
        /// The version byte found.
        version: u8,
    },
    /// The bytes do not parse as the type.
    #[error("{kind}: malformed: {reason}")]
    Malformed {
        /// The kind of value.
        kind: &'static str,
        /// The parser's reason.
        reason: String,
    },
    /// A value was decoded but bytes were left over.
    #[error("{kind}: {extra} trailing bytes")]
    TrailingBytes {
        /// The kind of value.
        kind: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// A collection or string inside the value is over its limit.
    #[error("{kind}: {source}")]
    Limit {
        /// The kind of value.
        kind: &'static str,
        /// Which limit.
        source: LimitError,
    },
    /// The bytes decode, but are not the canonical encoding of the value.
    #[error("{kind}: not in canonical form")]
    NonCanonical {
        /// The kind of value.
        kind: &'static str,
    },
}

/// Encodes `value` canonically.
pub fn encode<T: Wire>(value: &T) -> Vec<u8> {
    let out = vec![FORMAT_VERSION];
    // Serialising our own types into a Vec cannot fail: they contain no maps with non-string
    // keys and no unsized sequences of unknown length.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard cannot fail on {}: {e}", T::KIND),
    }
}

/// Decodes `bytes` as a `T`, strictly. See the module docs for what is checked.
pub fn decode<T: Wire>(bytes: &[u8]) -> Result<T, DecodeError> {
    let kind = T::KIND;
    if bytes.len() > T::MAX_BYTES {
        return Err(DecodeError::Oversized {
            kind,
            len: bytes.len(),
            max: T::MAX_BYTES,
        });
    }
    let Some((&version, body)) = bytes.split_first() else {
        return Err(DecodeError::Empty { kind });
    };
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion { kind, version });
    }
    let (value, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| DecodeError::Malformed {
            kind,
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            kind,
            extra: rest.len(),
        });
    }
    value
        .validate()
        .map_err(|source| DecodeError::Limit { kind, source })?;
    if encode(&value) != bytes {
        return Err(DecodeError::NonCanonical { kind });
    }
    Ok(value)
}
