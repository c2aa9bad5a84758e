//! [`PeerMap`]: a hash map keyed by [`PeerId`] for the per-input hot paths (a peer's state, its
//! availability). Peer ids are public keys, so a few multiply-xor rounds over their bytes spread
//! them well; the map is bounded by [`super::Config::max_peers`], so even ids chosen to collide
//! cost at most a scan of that many entries. The hasher is fixed (no per-process random state),
//! so iteration order depends only on the inputs; the core never lets it reach an output
//! (iterations are sorted, or only mutate or take a minimum).

// The one hash map the core may use (clippy.toml bans them elsewhere): see above.
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::types::PeerId;

/// A map from peers to `V` with [`PeerHasher`].
pub(crate) type PeerMap<V> = HashMap<PeerId, V, BuildHasherDefault<PeerHasher>>;

/// FxHash-style hasher over the id's bytes, eight at a time.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PeerHasher(u64);

impl Hasher for PeerHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn write_usize(&mut self, _len: usize) {
        // Only the length prefix of the id's bytes, always 32.
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_testing::device_key;

    #[test]
    fn distinct_ids_hash_apart_and_the_map_finds_them() {
        let ids: Vec<PeerId> = (0..200)
            .map(|n| PeerId::from(device_key(n).public_key()))
            .collect();
        let mut m: PeerMap<u64> = PeerMap::default();
        for (n, id) in ids.iter().enumerate() {
            m.insert(*id, n as u64);
        }
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(m.get(id), Some(&(n as u64)));
        }
        let mut hashes: Vec<u64> = ids
            .iter()
            .map(|id| {
                let mut h = PeerHasher::default();
                std::hash::Hash::hash(id, &mut h);
                h.finish()
            })
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), ids.len());
    }
}
