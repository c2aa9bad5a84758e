//! Content-defined chunking: bounded sizes, stream = buffer, local edits stay local.

use proptest::prelude::*;
use shoal_protocol::ChunkParams;
use shoal_protocol::chunking::{chunk_bytes, chunk_reader};
use shoal_testing::pseudo_random as noise;

#[test]
fn one_changed_byte_in_64_mib_changes_at_most_3_chunks() {
    let mut data = noise(64 * 1024 * 1024, 7);
    let before = chunk_bytes(&data, ChunkParams::DEFAULT);
    let mid = data.len() / 2;
    data[mid] ^= 0x5a;
    let after = chunk_bytes(&data, ChunkParams::DEFAULT);
    let old: std::collections::BTreeSet<_> = before.chunks.iter().map(|c| c.digest).collect();
    let changed = after
        .chunks
        .iter()
        .filter(|c| !old.contains(&c.digest))
        .count();
    assert!(changed >= 1, "the edit must change a chunk");
    assert!(changed <= 3, "{changed} chunks changed");
    assert_ne!(before.digest, after.digest);
    assert!(before.chunks.len() > 100, "{} chunks", before.chunks.len());
}

#[test]
fn streaming_matches_in_memory_and_calls_back_in_order() {
    let data = noise(20 * 1024 * 1024 + 12345, 3);
    let whole = chunk_bytes(&data, ChunkParams::DEFAULT);
    let mut seen = Vec::new();
    let mut rebuilt = Vec::new();
    let streamed = chunk_reader(
        // A reader that returns short reads.
        std::io::Read::chain(&data[..1000], &data[1000..]),
        ChunkParams::DEFAULT,
        |c, bytes| {
            assert_eq!(bytes.len(), c.size as usize);
            seen.push(c);
            rebuilt.extend_from_slice(bytes);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(streamed, whole);
    assert_eq!(seen, whole.chunks);
    assert_eq!(rebuilt, data);
    assert!(whole.is_consistent());
    assert_eq!(whole.size, data.len() as u64);
}

#[test]
fn reader_errors_and_callback_errors_come_back() {
    struct Broken;
    impl std::io::Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    let err = chunk_reader(Broken, ChunkParams::DEFAULT, |_, _| Ok(())).unwrap_err();
    assert_eq!(err.to_string(), "disk on fire");
    let data = noise(4 * 1024 * 1024, 5);
    let err = chunk_reader(&data[..], ChunkParams::DEFAULT, |_, _| {
        Err(std::io::Error::other("store full"))
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "store full");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn chunks_respect_bounds_and_cover_the_input(len in 0usize..3_000_000, seed in any::<u64>()) {
        let p = ChunkParams::DEFAULT;
        let data = noise(len, seed);
        let layer = chunk_bytes(&data, p);
        prop_assert_eq!(layer.size, len as u64);
        let n = layer.chunks.len();
        for (i, c) in layer.chunks.iter().enumerate() {
            prop_assert!(c.size <= p.max_size);
            if i + 1 < n {
                prop_assert!(c.size >= p.min_size);
            }
        }
        let streamed = chunk_reader(&data[..], p, |_, _| Ok(())).unwrap();
        prop_assert_eq!(streamed, layer);
    }
}
