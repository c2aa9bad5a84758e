//! [`PeerMap`]: a hash map keyed by [`PeerId`] for the per-input hot paths (a peer's state, its
//! availability), hashed with [`rustc_hash::FxBuildHasher`]. Peer ids are public keys, so a fast
//! unkeyed hash spreads them well; the map is bounded by [`super::Config::max_peers`], so even
//! ids chosen to collide cost at most a scan of that many entries. The hasher is fixed (no
//! per-process random state), so iteration order depends only on the inputs; the core never lets
//! it reach an output (iterations are sorted, or only mutate or take a minimum).

// The one hash map the core may use (clippy.toml bans them elsewhere): see above.
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;

use super::types::PeerId;

/// A map from peers to `V`, hashed with FxHash.
pub(crate) type PeerMap<V> = HashMap<PeerId, V, rustc_hash::FxBuildHasher>;

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
            .map(|id| std::hash::BuildHasher::hash_one(&rustc_hash::FxBuildHasher, id))
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), ids.len());
    }
}
