//! The node's wire formats for bytes that come from peers, without the I/O: control-stream
//! frames and compressed blob frames. The daemon reads them off QUIC streams; the fuzz targets
//! (`node/fuzz`) call these decoders directly, so they link neither libp2p nor quinn.
//!
//! Control frames: length (u32 LE, at most [`MAX_FRAME_BYTES`]) then the postcard encoding of a
//! [`ControlMsg`]. Blob frames: raw size and compressed length (u32 LE each, checked by
//! [`check_blob_head`] before anything is read), then one zstd frame ([`verify_blob`]).

use serde::{Deserialize, Serialize};
use shoal_protocol::{Digest, ReleaseSeq};

/// The largest control frame: a bitfield of 16 M chunks (4 TiB at 256 KiB) and framing.
pub const MAX_FRAME_BYTES: usize = 2 * 1024 * 1024 + 1024;

/// One message on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ControlMsg {
    /// The first message: who the sender is, beyond the key the handshake proved.
    Hello {
        /// The sender's fleet; a peer of another fleet is disconnected.
        fleet: String,
        /// The sender's site label.
        site: Option<String>,
        /// Whether the sender is the builder's origin node.
        origin: bool,
    },
    /// The sender's full availability for a release.
    Bitfield {
        /// The release.
        sequence: ReleaseSeq,
        /// Number of chunks (bits).
        len: u32,
        /// The bits, 64 per word, least significant first.
        words: Vec<u64>,
    },
    /// The sender stored one more chunk of a release.
    Have {
        /// The release.
        sequence: ReleaseSeq,
        /// Index into the release's unique chunk list.
        index: u32,
    },
    /// A gossip message the receiver may have missed (encoded as on the gossip topic).
    Gossip {
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Asks for the receiver's bitfield of a release (sent when the sender just accepted its
    /// announcement: availability sent before that was dropped by its core).
    WantBitfield {
        /// The release.
        sequence: ReleaseSeq,
    },
    /// A signed status report, for the builder's origin node.
    Report {
        /// The encoded [`shoal_protocol::Envelope`] of a [`shoal_protocol::StatusReport`].
        envelope: Vec<u8>,
    },
}

/// Encodes one frame.
pub fn encode(msg: &ControlMsg) -> Vec<u8> {
    let body = postcard::to_stdvec(msg).expect("control messages always encode");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes the body of one control frame (after its length prefix).
pub fn decode(body: &[u8]) -> Result<ControlMsg, postcard::Error> {
    postcard::from_bytes(body)
}

/// Why received bytes are not the blob they claim to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The declared size is above the limit for its kind.
    #[error("declared size {declared} is above the limit {max}")]
    TooLarge {
        /// The declared size.
        declared: u64,
        /// The limit.
        max: u64,
    },
    /// The declared size differs from the size the caller expected (from the manifest).
    #[error("declared size {declared}, expected {expected}")]
    SizeMismatch {
        /// The declared size.
        declared: u64,
        /// The expected size.
        expected: u64,
    },
    /// The compressed bytes are longer than zstd could ever need for the declared size.
    #[error("compressed length {len} exceeds the bound {max} for the declared size")]
    CompressedTooLarge {
        /// The compressed length.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// The bytes are not a zstd frame, or decompress past the declared size.
    #[error("zstd frame is malformed or larger than declared")]
    Decompress,
    /// The frame decompressed to fewer bytes than declared.
    #[error("decompressed to {found} bytes, declared {declared}")]
    Truncated {
        /// The declared size.
        declared: u64,
        /// What came out.
        found: u64,
    },
    /// The bytes hash to another digest.
    #[error("digest mismatch: expected {expected}, found {found}")]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// The digest of what arrived.
        found: Digest,
    },
}

/// The most compressed bytes a frame of `raw_size` bytes may take.
pub fn compressed_bound(raw_size: u32) -> usize {
    zstd::zstd_safe::compress_bound(raw_size as usize) + 64
}

/// Checks a compressed blob: declared size within `max` (and equal to `expected` if given),
/// decompression capped at the declared size, BLAKE3 equal to `digest`. Returns the raw bytes.
pub fn verify_blob(
    digest: &Digest,
    declared: u32,
    expected: Option<u32>,
    max: u32,
    compressed: &[u8],
) -> Result<Vec<u8>, BlobError> {
    if declared > max {
        return Err(BlobError::TooLarge {
            declared: declared.into(),
            max: max.into(),
        });
    }
    if let Some(expected) = expected
        && expected != declared
    {
        return Err(BlobError::SizeMismatch {
            declared: declared.into(),
            expected: expected.into(),
        });
    }
    let bound = compressed_bound(declared);
    if compressed.len() > bound {
        return Err(BlobError::CompressedTooLarge {
            len: compressed.len() as u64,
            max: bound as u64,
        });
    }
    let raw =
        zstd::bulk::decompress(compressed, declared as usize).map_err(|_| BlobError::Decompress)?;
    if raw.len() != declared as usize {
        return Err(BlobError::Truncated {
            declared: declared.into(),
            found: raw.len() as u64,
        });
    }
    let found = Digest::of(&raw);
    if found != *digest {
        return Err(BlobError::DigestMismatch {
            expected: *digest,
            found,
        });
    }
    Ok(raw)
}

/// Checks a blob frame's head (raw size, compressed length, as read off the stream) before its
/// body is read: the declared size within `max` and equal to `expected` if given, the
/// compressed length within what zstd could need. Returns `(raw_size, compressed_len)`.
pub fn check_blob_head(
    head: [u8; 8],
    max: u32,
    expected: Option<u32>,
) -> Result<(u32, u32), BlobError> {
    let raw_size = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if raw_size > max {
        return Err(BlobError::TooLarge {
            declared: raw_size.into(),
            max: max.into(),
        });
    }
    if let Some(expected) = expected
        && expected != raw_size
    {
        return Err(BlobError::SizeMismatch {
            declared: raw_size.into(),
            expected: expected.into(),
        });
    }
    let bound = compressed_bound(raw_size);
    if len as usize > bound {
        return Err(BlobError::CompressedTooLarge {
            len: len.into(),
            max: bound as u64,
        });
    }
    Ok((raw_size, len))
}
