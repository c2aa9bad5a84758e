//! Load profile of `shoal_node_core` at simulator scale: heap per node and time per input for a
//! 1 GiB release of 4,096 chunks. Figures, not assertions (timings belong in reports):
//!
//! ```text
//! cargo test --release -p shoal-node-core --test core_load -- --ignored --nocapture
//! ```

// A load profile times the core from outside: the clock ban is for the core itself.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;

use shoal_node_core::{
    Bitfield, FetchStats, Input, Instant, MessageId, Node, Output, PeerId, PeerInfo, ReleaseCache,
};
use shoal_protocol::RolloutPlan;
use shoal_testing::{TEST_EPOCH, TestFleet, device_key, synthetic_chunks};

/// Resident set size in bytes (Linux), 0 elsewhere.
fn rss_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<i64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

const CHUNKS: u32 = 4096;
const PEERS: u64 = 8;

fn peer(n: u64) -> PeerId {
    PeerId::from(device_key(1_000_000 + n).public_key())
}

#[test]
#[ignore = "load profile; run on demand with --release --nocapture"]
fn core_load_profile() {
    let fleet = TestFleet::new("load");
    let rel = fleet.release(
        1,
        synthetic_chunks(0, CHUNKS, 256 * 1024),
        RolloutPlan::all_at_once(),
    );
    let ann = rel.announcement_gossip.clone();
    let cache = ReleaseCache::default();
    let seq = rel.announcement.sequence;
    let info = |i: u64| PeerInfo {
        site: Some(format!("s{}", i % 3)),
        rtt_ms: 5 + i as u32,
        origin: false,
    };

    // Memory: N nodes, each with the manifest accepted and PEERS peers' (half-full) bitfields.
    let n = 1000u64;
    let ps: Vec<PeerId> = (0..PEERS).map(peer).collect();
    let before = rss_bytes();
    let start = std::time::Instant::now();
    let mut nodes = Vec::new();
    let mut half = Bitfield::new(CHUNKS);
    for i in (0..CHUNKS).step_by(2) {
        half.set(i);
    }
    for d in 0..n {
        let mut config = fleet.config(d);
        config.releases = cache.clone();
        config.site = Some("s0".into());
        let mut node = Node::new(config, d);
        let t = Instant::ZERO;
        node.handle(t, Input::WallClock(TEST_EPOCH));
        for p in 0..PEERS {
            node.handle(
                t,
                Input::PeerConnected {
                    peer: ps[p as usize],
                    info: info(p),
                },
            );
        }
        node.handle(
            t,
            Input::Gossip {
                from: ps[0],
                id: MessageId(1),
                bytes: ann.clone(),
            },
        );
        for p in 0..PEERS {
            node.handle(
                t,
                Input::PeerHave {
                    peer: ps[p as usize],
                    sequence: seq,
                    have: half.clone(),
                },
            );
        }
        node.handle(
            t,
            Input::ManifestFetched {
                peer: ps[0],
                sequence: seq,
                result: Ok(Arc::clone(&rel.manifest_bytes)),
            },
        );
        while node.poll_output().is_some() {}
        nodes.push(node);
    }
    let setup = start.elapsed();
    let live = rss_bytes() - before;
    println!(
        "{n} nodes, {CHUNKS} chunks, {PEERS} peers each: {} bytes RSS per node (the shared release, counted once: {} bytes); setup {:.1} ms per node",
        live / n as i64,
        rel.manifest_bytes.len() + rel.chunks.len() * 36,
        setup.as_secs_f64() * 1000.0 / n as f64
    );
    drop(nodes);

    // Time: one node fetches every chunk; every stored chunk is also HAVE'd by each peer.
    let mut config = fleet.config(7);
    config.releases = cache.clone();
    let mut node = Node::new(config, 7);
    let mut t = Instant::ZERO;
    node.handle(t, Input::WallClock(TEST_EPOCH));
    for p in 0..PEERS {
        node.handle(
            t,
            Input::PeerConnected {
                peer: peer(p),
                info: info(p),
            },
        );
    }
    node.handle(
        t,
        Input::Gossip {
            from: peer(0),
            id: MessageId(1),
            bytes: ann.clone(),
        },
    );
    node.handle(
        t,
        Input::PeerHave {
            peer: peer(0),
            sequence: seq,
            have: Bitfield::full(CHUNKS),
        },
    );
    node.handle(
        t,
        Input::ManifestFetched {
            peer: peer(0),
            sequence: seq,
            result: Ok(Arc::clone(&rel.manifest_bytes)),
        },
    );
    let mut pending = Vec::new();
    let mut inputs = 0u64;
    let mut outputs = 0u64;
    let peers: Vec<PeerId> = (0..PEERS).map(peer).collect();
    let start = std::time::Instant::now();
    loop {
        while let Some(o) = node.poll_output() {
            outputs += 1;
            if let Output::FetchChunk { peer, index, .. } = o {
                pending.push((peer, index));
            }
        }
        let Some((p, index)) = pending.pop() else {
            break;
        };
        t = t.plus_ms(1);
        for q in &peers[1..] {
            node.handle(
                t,
                Input::PeerHaveChunk {
                    peer: *q,
                    sequence: seq,
                    index,
                },
            );
            inputs += 1;
        }
        node.handle(
            t,
            Input::ChunkFetched {
                peer: p,
                sequence: seq,
                index,
                result: Ok(FetchStats {
                    bytes: 256 * 1024,
                    elapsed_ms: 20,
                }),
            },
        );
        inputs += 1;
        if node.poll_timeout().is_some_and(|d| d <= t) {
            node.handle_timeout(t);
        }
    }
    let el = start.elapsed();
    let have = node.progress().map(|p| p.have_chunks);
    println!(
        "one node, full fetch: {inputs} inputs, {outputs} outputs in {:.1} ms ({:.0} ns per input); staged chunks {:?}",
        el.as_secs_f64() * 1000.0,
        el.as_nanos() as f64 / inputs as f64,
        have
    );
    assert_eq!(have, Some(CHUNKS));
}
