//! A one-node harness: feed inputs, collect outputs, advance time to the next timeout.

use std::sync::Arc;

use shoal_protocol::{RolloutPlan, WaveAction};

use shoal_node_core::{
    FetchStats, Input, Instant, MessageId, Node, Output, PeerId, PeerInfo, Verdict,
};
use shoal_testing::{TEST_EPOCH, TestFleet, TestRelease, device_key, synthetic_chunks};

pub(super) struct Harness {
    pub(super) fleet: TestFleet,
    pub(super) node: Node,
    pub(super) now: Instant,
    pub(super) out: Vec<Output>,
    next_msg: u64,
}

pub(super) fn peer(n: u64) -> PeerId {
    PeerId::from(device_key(1000 + n).public_key())
}

pub(super) fn info(site: Option<&str>, rtt_ms: u32, origin: bool) -> PeerInfo {
    PeerInfo {
        site: site.map(str::to_string),
        rtt_ms,
        origin,
    }
}

impl Harness {
    pub(super) fn new() -> Harness {
        Self::with(|_| {})
    }

    pub(super) fn with(f: impl FnOnce(&mut shoal_node_core::Config)) -> Harness {
        let fleet = TestFleet::new("test-fleet");
        let mut config = fleet.config(1);
        config.site = Some("here".into());
        // The manifest is asked for at once, as soon as the announcement arrives; the tests
        // of the wait for the site's manifest importer set it themselves.
        config.manifest_wait_ms = 0;
        f(&mut config);
        let mut h = Harness {
            fleet,
            node: Node::new(config, 7),
            now: Instant::ZERO,
            out: Vec::new(),
            next_msg: 0,
        };
        h.input(Input::WallClock(TEST_EPOCH));
        h
    }

    pub(super) fn release(&self, seq: u64, chunks: u32) -> TestRelease {
        self.fleet.release(
            seq,
            synthetic_chunks(seq * 1_000_000, chunks, 256 * 1024),
            RolloutPlan::all_at_once(),
        )
    }

    /// Feeds one input and drains the outputs, which are returned (and kept in `out`).
    pub(super) fn input(&mut self, input: Input) -> Vec<Output> {
        self.node.handle(self.now, input);
        self.drain()
    }

    pub(super) fn drain(&mut self) -> Vec<Output> {
        let mut v = Vec::new();
        while let Some(o) = self.node.poll_output() {
            v.push(o);
        }
        self.out.extend(v.iter().cloned());
        v
    }

    /// Advances to the next timeout (if any, and not past `limit`) and handles it.
    pub(super) fn advance(&mut self, limit: Instant) -> Option<Vec<Output>> {
        let t = self.node.poll_timeout()?;
        if t > limit {
            return None;
        }
        self.now = self.now.max(t);
        self.node.handle_timeout(self.now);
        Some(self.drain())
    }

    pub(super) fn gossip(&mut self, from: PeerId, bytes: Vec<u8>) -> Verdict {
        self.next_msg += 1;
        let id = MessageId(self.next_msg);
        let out = self.input(Input::Gossip { from, id, bytes });
        out.iter()
            .find_map(|o| match o {
                Output::GossipVerdict { id: i, verdict } if *i == id => Some(*verdict),
                _ => None,
            })
            .expect("every gossip input gets a verdict")
    }

    pub(super) fn connect(&mut self, p: PeerId, i: PeerInfo) -> Vec<Output> {
        self.input(Input::PeerConnected { peer: p, info: i })
    }

    /// Announces `rel` from `from` and serves its manifest: ends with chunk fetching started.
    pub(super) fn announce_and_serve_manifest(
        &mut self,
        rel: &TestRelease,
        from: PeerId,
    ) -> Vec<Output> {
        assert_eq!(
            self.gossip(from, rel.announcement_gossip.clone()),
            Verdict::Accept
        );
        let (peer, seq) = self
            .out
            .iter()
            .rev()
            .find_map(|o| match o {
                Output::FetchManifest { peer, sequence, .. } => Some((*peer, *sequence)),
                _ => None,
            })
            .expect("a manifest fetch after a new announcement");
        self.input(Input::ManifestFetched {
            peer,
            sequence: seq,
            result: Ok(Arc::clone(&rel.manifest_bytes)),
        })
    }

    pub(super) fn open_wave(&mut self, rel: &TestRelease, counter: u64, wave: u32) -> Verdict {
        let b = self
            .fleet
            .wave_control(rel, counter, WaveAction::Open { wave });
        self.gossip(peer(99), b)
    }

    pub(super) fn ok(&mut self, p: PeerId, rel: &TestRelease, index: u32) -> Vec<Output> {
        self.input(Input::ChunkFetched {
            peer: p,
            sequence: rel.announcement.sequence,
            index,
            result: Ok(FetchStats {
                bytes: 256 * 1024,
                elapsed_ms: 20,
            }),
        })
    }
}

/// The chunk fetches among `out`, as (peer, index).
pub(super) fn fetches(out: &[Output]) -> Vec<(PeerId, u32)> {
    out.iter()
        .filter_map(|o| match o {
            Output::FetchChunk { peer, index, .. } => Some((*peer, *index)),
            _ => None,
        })
        .collect()
}
