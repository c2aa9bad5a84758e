//! Keys and their names: [`PublicKey`], [`KeyId`], [`Signature`], [`DeviceId`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Digest, ParseDigestError};

/// Serde for fixed-size byte strings: hex in human-readable formats, raw bytes otherwise.
pub(crate) mod fixed {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(bytes))
        } else {
            use serde::ser::SerializeTuple;
            let mut t = s.serialize_tuple(bytes.len())?;
            for b in bytes {
                t.serialize_element(b)?;
            }
            t.end()
        }
    }

    struct Fixed<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for Fixed<N> {
        type Value = [u8; N];
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{N} bytes or {} hex characters", N * 2)
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            crate::digest::parse_hex::<N>(v).map_err(E::custom)
        }
        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = [0u8; N];
            for (i, slot) in out.iter_mut().enumerate() {
                *slot = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(i, &self))?;
            }
            Ok(out)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(Fixed::<N>)
        } else {
            d.deserialize_tuple(N, Fixed::<N>)
        }
    }
}

macro_rules! fixed_bytes {
    ($(#[$m:meta])* $name:ident, $n:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $n]);

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                fixed::serialize(&self.0, s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                fixed::deserialize::<D, $n>(d).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(&self.0[..4]))
            }
        }

        impl FromStr for $name {
            type Err = ParseDigestError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                crate::digest::parse_hex::<$n>(s).map($name)
            }
        }
    };
}

fixed_bytes!(
    /// An ed25519 public key (32 bytes). Whether it is a valid curve point is checked when it
    /// verifies something, so a malformed key from a peer is an error there, never a panic.
    PublicKey,
    32
);
fixed_bytes!(
    /// An ed25519 signature (64 bytes).
    Signature,
    64
);
fixed_bytes!(
    /// A device's identity: its ed25519 public key. It is also the device's libp2p identity.
    DeviceId,
    32
);

/// A key's name: the BLAKE3 digest of its public key bytes. Derived, never chosen, so one key
/// cannot appear under two ids.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub Digest);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl PublicKey {
    /// The key's id.
    pub fn id(&self) -> KeyId {
        let mut h = blake3::Hasher::new();
        h.update(b"shoal-key-id-v1\0");
        h.update(&self.0);
        KeyId(h.finalize().into())
    }

    /// Short fingerprint for people: the first 16 hex characters of the key id.
    pub fn fingerprint(&self) -> String {
        self.id().to_string()[..16].to_string()
    }

    /// Checks `signature` over `message`. `false` for a malformed key or a bad signature.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &sig).is_ok()
    }
}

impl DeviceId {
    /// The device's key as a public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0)
    }

    /// The first 8 hex characters, for logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl From<PublicKey> for DeviceId {
    fn from(k: PublicKey) -> Self {
        DeviceId(k.0)
    }
}
