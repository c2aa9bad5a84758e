//! A blob frame as a peer sends it: the 8-byte head (raw size, compressed length), then the zstd
//! frame. Checked as a fetch does (head first, then decompression capped at the declared size
//! and the digest); what verifies hashes to the digest and has the declared size.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_protocol::Digest;
use shoal_node::wire;

/// A cap below the real chunk maximum keeps each run's allocation small.
const MAX: u32 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let head: [u8; 8] = data[..8].try_into().unwrap();
    let expected = (data[8] & 1 == 1).then(|| u32::from_le_bytes(head[..4].try_into().unwrap()));
    let body = &data[9..];
    let Ok((raw_size, len)) = wire::check_blob_head(head, MAX, expected) else {
        return;
    };
    let body = &body[..body.len().min(len as usize)];
    // The digest asked for: of the body itself (so a stored frame's digest mismatches) or of
    // what the frame decompresses to (found by a first pass).
    let first = wire::verify_blob(&Digest::of(body), raw_size, expected, MAX, body);
    if let Err(wire::BlobError::DigestMismatch { found, .. }) = first {
        let raw = wire::verify_blob(&found, raw_size, expected, MAX, body).expect("same bytes");
        assert_eq!(raw.len(), raw_size as usize);
        assert_eq!(Digest::of(&raw), found);
    }
});
