//! A small swarm of nodes wired together in memory: every node stages and applies a release,
//! whatever the seed, with byzantine peers serving corrupt chunks among them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use shoal_protocol::{DeviceState, ReleaseSeq, RolloutPlan, WaveAction};

use shoal_node_core::{
    FetchError, FetchStats, Input, Instant, MessageId, Node, Output, PeerId, PeerInfo,
    ReleaseCache, Verdict,
};
use shoal_testing::{TEST_EPOCH, TestFleet, TestRelease, device_key, synthetic_chunks};

/// Index of the origin in `Swarm::ids`; nodes are `1..`.
const ORIGIN: usize = 0;

#[derive(Debug)]
enum Ev {
    In(usize, Input),
}

struct Swarm {
    nodes: Vec<Option<Node>>,
    ids: Vec<PeerId>,
    index: BTreeMap<PeerId, usize>,
    links: Vec<BTreeSet<usize>>,
    sites: Vec<u32>,
    byzantine: BTreeSet<usize>,
    queue: BTreeMap<(Instant, u64), Ev>,
    next: u64,
    rel: TestRelease,
    fleet: TestFleet,
    /// Per node: reports seen, in order.
    reports: Vec<Vec<DeviceState>>,
    applied: BTreeSet<usize>,
    wave_open: bool,
    /// Honest nodes with a path of honest nodes from the origin.
    reachable_honest: BTreeSet<usize>,
    /// (victim, byzantine server) pairs of corrupt chunks served.
    corrupted: BTreeSet<(usize, usize)>,
}

impl Swarm {
    fn new(seed: u64, n: usize, sites: u32, byz: usize) -> Swarm {
        let fleet = TestFleet::new("swarm");
        let rel = fleet.release(
            1,
            synthetic_chunks(0, 40, 64 * 1024),
            RolloutPlan::all_at_once(),
        );
        let cache = ReleaseCache::default();
        let mut rng = shoal_node_core::rng::Rng::new(seed);
        let mut ids = vec![PeerId::from(device_key(0).public_key())];
        let mut origin = fleet.config(0);
        origin.origin = true;
        origin.releases = cache.clone();
        let mut nodes = vec![Some(Node::new(origin, seed))];
        let mut site_of = vec![0];
        for i in 1..=n {
            let mut config = fleet.config(i as u64);
            let site = rng.below(u64::from(sites)) as u32;
            config.site = Some(format!("site-{site}"));
            config.releases = cache.clone();
            config.fetch_timeout_ms = 2_000;
            ids.push(PeerId::from(device_key(i as u64).public_key()));
            nodes.push(Some(Node::new(config, seed ^ i as u64)));
            site_of.push(site);
        }
        // A ring (connected), a few random chords, and the origin linked to two nodes.
        let mut links = vec![BTreeSet::new(); n + 1];
        let link = |a: usize, b: usize, links: &mut Vec<BTreeSet<usize>>| {
            if a != b {
                links[a].insert(b);
                links[b].insert(a);
            }
        };
        for i in 1..=n {
            link(i, i % n + 1, &mut links);
            let j = 1 + rng.below(n as u64) as usize;
            link(i, j, &mut links);
        }
        link(ORIGIN, 1, &mut links);
        link(ORIGIN, 1 + rng.below(n as u64) as usize, &mut links);
        let byzantine: BTreeSet<usize> =
            (0..byz).map(|_| 1 + rng.below(n as u64) as usize).collect();
        // The origin always reaches one honest node.
        if let Some(h) = (1..=n).find(|i| !byzantine.contains(i)) {
            link(ORIGIN, h, &mut links);
        }
        let mut reachable_honest = BTreeSet::new();
        let mut stack = vec![ORIGIN];
        while let Some(a) = stack.pop() {
            for &b in &links[a] {
                if b != ORIGIN && !byzantine.contains(&b) && reachable_honest.insert(b) {
                    stack.push(b);
                }
            }
        }
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        Swarm {
            nodes,
            ids,
            index,
            links,
            sites: site_of,
            byzantine,
            queue: BTreeMap::new(),
            next: 0,
            rel,
            fleet,
            reports: vec![Vec::new(); n + 1],
            applied: BTreeSet::new(),
            wave_open: false,
            corrupted: BTreeSet::new(),
            reachable_honest,
        }
    }

    fn push(&mut self, at: Instant, ev: Ev) {
        self.next += 1;
        self.queue.insert((at, self.next), ev);
    }

    fn info(&self, of: usize, seen_by: usize) -> PeerInfo {
        PeerInfo {
            site: (of != ORIGIN).then(|| format!("site-{}", self.sites[of])),
            rtt_ms: if of == ORIGIN || self.sites[of] != self.sites[seen_by] {
                40
            } else {
                2
            },
            origin: of == ORIGIN,
        }
    }

    fn delay(&self, a: usize, b: usize) -> u64 {
        if a == ORIGIN || b == ORIGIN || self.sites[a] != self.sites[b] {
            20
        } else {
            1
        }
    }

    fn start(&mut self) {
        for i in 0..self.nodes.len() {
            self.push(Instant::ZERO, Ev::In(i, Input::WallClock(TEST_EPOCH)));
            for j in self.links[i].clone() {
                let info = self.info(j, i);
                self.push(
                    Instant(1),
                    Ev::In(
                        i,
                        Input::PeerConnected {
                            peer: self.ids[j],
                            info,
                        },
                    ),
                );
            }
        }
        // The origin holds the release and announces it to its neighbours.
        let origin = self.nodes[ORIGIN].as_mut().expect("origin");
        origin.handle(Instant::ZERO, Input::WallClock(TEST_EPOCH));
        let ann = self.rel.announcement_gossip[1..].to_vec();
        origin
            .seed(Instant::ZERO, ann, Arc::clone(&self.rel.manifest_bytes))
            .expect("seeds");
        let mut g = BTreeMap::new();
        let mut m = 0;
        while let Some(out) = self.nodes[ORIGIN].as_mut().expect("origin").poll_output() {
            self.effect(Instant::ZERO, ORIGIN, out, &mut g, &mut m);
        }
        for j in self.links[ORIGIN].clone() {
            let bytes = self.rel.announcement_gossip.clone();
            self.push(
                Instant(5),
                Ev::In(
                    j,
                    Input::Gossip {
                        from: self.ids[ORIGIN],
                        id: MessageId(0),
                        bytes,
                    },
                ),
            );
        }
    }

    fn open_wave(&mut self, at: Instant) {
        self.wave_open = true;
        let bytes = self
            .fleet
            .wave_control(&self.rel, 1, WaveAction::Open { wave: 0 });
        for j in self.links[ORIGIN].clone() {
            self.push(
                at,
                Ev::In(
                    j,
                    Input::Gossip {
                        from: self.ids[ORIGIN],
                        id: MessageId(1),
                        bytes: bytes.clone(),
                    },
                ),
            );
        }
    }

    /// Runs until the queue is empty or `limit`; returns the time reached.
    fn run(&mut self, limit: Instant) -> Instant {
        let mut now = Instant::ZERO;
        let mut gossip_by_id: BTreeMap<(usize, u64), Vec<u8>> = BTreeMap::new();
        let mut next_msg = 10u64;
        loop {
            // The earliest of the queue and every node's timer.
            let timer = (0..self.nodes.len())
                .filter_map(|i| {
                    self.nodes[i]
                        .as_ref()
                        .and_then(|n| n.poll_timeout())
                        .map(|t| (t, i))
                })
                .min();
            let queued = self.queue.keys().next().copied();
            let (t, which) = match (queued, timer) {
                (None, None) => return now,
                (Some(q), Some((t, i))) if t < q.0 => (t, Err(i)),
                (Some(q), _) => (q.0, Ok(q)),
                (None, Some((t, i))) => (t, Err(i)),
            };
            if t > limit {
                return now;
            }
            now = now.max(t);
            let i = match which {
                Ok(key) => {
                    let Some(Ev::In(i, input)) = self.queue.remove(&key) else {
                        unreachable!()
                    };
                    if let Input::Gossip { id, bytes, .. } = &input {
                        gossip_by_id.insert((i, id.0), bytes.clone());
                    }
                    self.nodes[i].as_mut().expect("node").handle(now, input);
                    i
                }
                Err(i) => {
                    self.nodes[i].as_mut().expect("node").handle_timeout(now);
                    i
                }
            };
            while let Some(out) = self.nodes[i].as_mut().expect("node").poll_output() {
                self.effect(now, i, out, &mut gossip_by_id, &mut next_msg);
            }
        }
    }

    fn effect(
        &mut self,
        now: Instant,
        i: usize,
        out: Output,
        gossip: &mut BTreeMap<(usize, u64), Vec<u8>>,
        next_msg: &mut u64,
    ) {
        let me = self.ids[i];
        match out {
            Output::GossipVerdict { id, verdict } => {
                let bytes = gossip.remove(&(i, id.0));
                if verdict == Verdict::Accept
                    && let Some(bytes) = bytes
                {
                    for j in self.links[i].clone() {
                        if j != ORIGIN {
                            *next_msg += 1;
                            let d = self.delay(i, j);
                            self.push(
                                now.plus_ms(d),
                                Ev::In(
                                    j,
                                    Input::Gossip {
                                        from: me,
                                        id: MessageId(*next_msg),
                                        bytes: bytes.clone(),
                                    },
                                ),
                            );
                        }
                    }
                }
            }
            Output::SyncGossip { peer, messages } => {
                let j = self.index[&peer];
                if j != ORIGIN {
                    for bytes in messages {
                        *next_msg += 1;
                        let d = self.delay(i, j);
                        self.push(
                            now.plus_ms(d),
                            Ev::In(
                                j,
                                Input::Gossip {
                                    from: me,
                                    id: MessageId(*next_msg),
                                    bytes,
                                },
                            ),
                        );
                    }
                }
            }
            Output::SendBitfield {
                peer,
                sequence,
                have,
            } => {
                let j = self.index[&peer];
                if j != ORIGIN {
                    let d = self.delay(i, j);
                    self.push(
                        now.plus_ms(d),
                        Ev::In(
                            j,
                            Input::PeerHave {
                                peer: me,
                                sequence,
                                have,
                            },
                        ),
                    );
                }
            }
            Output::Advertise { sequence, index } => {
                for j in self.links[i].clone() {
                    if j != ORIGIN {
                        let d = self.delay(i, j);
                        self.push(
                            now.plus_ms(d),
                            Ev::In(
                                j,
                                Input::PeerHaveChunk {
                                    peer: me,
                                    sequence,
                                    index,
                                },
                            ),
                        );
                    }
                }
            }
            Output::FetchManifest { peer, sequence, .. } => {
                let j = self.index[&peer];
                let has = j == ORIGIN
                    || self.nodes[j]
                        .as_ref()
                        .is_some_and(|n| n.release().is_some());
                let result = if has {
                    Ok(Arc::clone(&self.rel.manifest_bytes))
                } else {
                    Err(FetchError::NotFound)
                };
                let d = 2 * self.delay(i, j) + 5;
                self.push(
                    now.plus_ms(d),
                    Ev::In(
                        i,
                        Input::ManifestFetched {
                            peer,
                            sequence,
                            result,
                        },
                    ),
                );
            }
            Output::FetchChunk {
                peer,
                sequence,
                index,
                chunk,
            } => {
                let j = self.index[&peer];
                let has = j == ORIGIN
                    || self.nodes[j]
                        .as_ref()
                        .is_some_and(|n| n.has_chunk(sequence, index));
                let result = if !has {
                    Err(FetchError::NotFound)
                } else if self.byzantine.contains(&j) {
                    self.corrupted.insert((i, j));
                    Err(FetchError::DigestMismatch)
                } else {
                    Ok(FetchStats {
                        bytes: u64::from(chunk.size),
                        elapsed_ms: 10,
                    })
                };
                let d = 2 * self.delay(i, j) + 10;
                self.push(
                    now.plus_ms(d),
                    Ev::In(
                        i,
                        Input::ChunkFetched {
                            peer,
                            sequence,
                            index,
                            result,
                        },
                    ),
                );
            }
            Output::Apply { sequence, .. } => {
                assert!(self.wave_open, "node {i} applied before its wave opened");
                assert!(
                    self.reports[i].contains(&DeviceState::Staged),
                    "node {i} applied before staging"
                );
                assert!(self.applied.insert(i), "node {i} applied twice");
                self.push(
                    now.plus_ms(10),
                    Ev::In(
                        i,
                        Input::ApplyFinished {
                            sequence,
                            result: Ok(()),
                        },
                    ),
                );
                self.push(
                    now.plus_ms(20),
                    Ev::In(
                        i,
                        Input::HealthResult {
                            sequence,
                            healthy: true,
                            detail: String::new(),
                        },
                    ),
                );
            }
            Output::Report { envelope, report } => {
                let checked =
                    shoal_protocol::verify::status_report(&envelope).expect("signed report");
                assert_eq!(checked.device, me);
                self.reports[i].push(report.state);
            }
            Output::DropPeer { peer, .. } | Output::BanPeer { peer, .. } => {
                let j = self.index[&peer];
                self.links[i].remove(&j);
                self.links[j].remove(&i);
                if j != ORIGIN {
                    self.push(
                        now.plus_ms(1),
                        Ev::In(j, Input::PeerDisconnected { peer: me }),
                    );
                }
            }
            Output::Rollback { .. } => panic!("node {i} rolled back a healthy release"),
            Output::CancelFetch { .. } | Output::Persist(_) | Output::Event(_) => {}
        }
    }
}

fn run_swarm(seed: u64, n: usize, sites: u32, byz: usize) {
    let mut s = Swarm::new(seed, n, sites, byz);
    s.start();
    s.run(Instant(60_000));
    // Every honest node that still has a path to the data staged the release; none applied.
    assert!(s.applied.is_empty(), "no wave is open yet");
    let staged = |s: &Swarm, i: usize| s.reports[i].first() == Some(&DeviceState::Staged);
    // Honest nodes with an honest path to the origin (byzantine nodes get banned, so a node
    // behind only byzantine neighbours is cut off: a property of the topology, not the core).
    let honest: Vec<usize> = s.reachable_honest.iter().copied().collect();
    assert!(!honest.is_empty());
    for &i in &honest {
        assert!(
            staged(&s, i),
            "seed {seed}: node {i} did not stage: {:?}",
            s.nodes[i].as_ref().and_then(|n| n.progress())
        );
    }
    s.open_wave(Instant(60_001));
    s.run(Instant(120_000));
    for &i in &honest {
        assert_eq!(
            s.reports[i],
            vec![
                DeviceState::Staged,
                DeviceState::Applying,
                DeviceState::Running,
                DeviceState::Healthy
            ],
            "seed {seed}: node {i}"
        );
        assert_eq!(
            s.nodes[i].as_ref().and_then(|n| n.committed()),
            Some(ReleaseSeq(1))
        );
    }
    // Whoever was served corrupt bytes banned the server (the link is gone).
    for &(victim, server) in &s.corrupted {
        assert!(
            !s.links[victim].contains(&server),
            "seed {seed}: {victim} still linked to {server}"
        );
    }
}

#[test]
fn swarm_of_twelve_on_three_sites_stages_and_applies() {
    run_swarm(1, 12, 3, 0);
}

#[test]
fn swarm_with_byzantine_peers_converges() {
    run_swarm(2, 12, 3, 2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, .. ProptestConfig::default() })]
    #[test]
    fn swarm_converges_for_any_seed(seed in any::<u64>(), n in 3usize..10, sites in 1u32..4, byz in 0usize..3) {
        run_swarm(seed, n, sites, byz);
    }
}
