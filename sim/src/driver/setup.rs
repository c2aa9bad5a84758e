//! Building a [`Sim`]: keys, release, nodes, topology, mesh, fault plan.

use rustc_hash::FxHashMap as HashMap;
use slab::Slab;

use shoal_node_core::{Bitfield, Config, Input, Node, ReleaseCache};
use shoal_protocol::{ChunkRef, DeviceId, Digest, RolloutPlan, Wave, waves};
use shoal_testing::{TEST_EPOCH, TestFleet, device_key};

use super::{Device, Event, Metrics, Runtime, Sim, control};
use crate::faults;
use crate::net::{Net, Topology};
use crate::rng::Rng;
use crate::scenario::{Scenario, mbps_to_bytes_per_s};

/// The fleet name of simulated releases.
pub(crate) const FLEET: &str = "sim";

/// The rollout plan of a scenario.
pub(crate) fn plan_of(sc: &Scenario) -> RolloutPlan {
    RolloutPlan {
        waves: sc
            .rollout
            .waves
            .iter()
            .map(|w| Wave {
                percent: w.percent,
                min_sample: w.min_sample,
                success_threshold_pct: w.success_threshold_pct,
                error_threshold_pct: w.error_threshold_pct,
                bake_time_s: w.bake_time_s,
            })
            .collect(),
        progress_deadline_s: sc.rollout.progress_deadline_s,
    }
}

/// The chunks of a release of `bytes` in pieces of `chunk` bytes (the last one shorter).
pub(crate) fn chunks_of(bytes: u64, chunk: u64) -> Vec<ChunkRef> {
    let n = bytes.div_ceil(chunk).max(1);
    (0..n)
        .map(|i| ChunkRef {
            digest: Digest::of(&(0x5_1A00_0000u64 + i).to_le_bytes()),
            size: bytes.saturating_sub(i * chunk).clamp(1, chunk) as u32,
        })
        .collect()
}

fn pick_distinct(rng: &mut Rng, pool: &[u32], k: usize, exclude: u32, out: &mut Vec<u32>) {
    if pool.len() <= 1 {
        return;
    }
    let want = k.min(pool.len() - 1);
    let mut tries = 0;
    while out.len() < want && tries < want * 8 + 16 {
        tries += 1;
        let c = pool[rng.below(pool.len() as u64) as usize];
        if c != exclude && !out.contains(&c) {
            out.push(c);
        }
    }
}

impl Sim {
    /// A simulation of `sc` with master seed `seed`; `replay` is the command printed when an
    /// invariant breaks.
    pub fn new(sc: &Scenario, seed: u64, replay: String) -> Sim {
        let n = sc.fleet.devices;
        let nsites = sc.fleet.sites;
        let mut rng = Rng::derive(seed, 0x70B0);
        let fleet = TestFleet::new(FLEET);
        let plan = plan_of(sc);
        let chunks = chunks_of(sc.release_bytes(), sc.chunk_bytes());
        let release = fleet.release(1, chunks, plan.clone());
        let nchunks = release.chunks.len() as u32;
        let cache = ReleaseCache::default();
        let fault_plan = faults::plan(sc, seed);

        let lan = mbps_to_bytes_per_s(sc.network.lan_mbps);
        let up = mbps_to_bytes_per_s(sc.network.device_up_mbps).min(lan);
        let down = mbps_to_bytes_per_s(sc.network.device_down_mbps).min(lan);
        let topo = Topology {
            builder_up: mbps_to_bytes_per_s(sc.network.builder_up_mbps),
            sites: (0..nsites)
                .map(|_| {
                    (
                        mbps_to_bytes_per_s(sc.network.wan_up_mbps),
                        mbps_to_bytes_per_s(sc.network.wan_down_mbps),
                    )
                })
                .collect(),
            devices: (0..n).map(|i| (i % nsites, up, down)).collect(),
        };

        let mut devices = Vec::with_capacity(n as usize);
        let mut ids = HashMap::with_capacity_and_hasher(n as usize + 1, Default::default());
        let mut seeds = Rng::derive(seed, 0x5EED);
        for i in 0..n {
            let site = i % nsites;
            let key = device_key(u64::from(i));
            let id = DeviceId::from(key.public_key());
            let byzantine = fault_plan.byzantine[i as usize];
            let dev_seed = seeds.next_u64();
            let node = byzantine.is_none().then(|| {
                let mut cfg = Config::new(key, fleet.trust.clone(), shoal_testing::TEST_ARCH);
                cfg.site = Some(format!("site-{site}"));
                cfg.releases = cache.clone();
                Node::new(cfg, dev_seed)
            });
            ids.insert(id, i);
            devices.push(Device {
                id,
                node,
                site,
                byzantine,
                online: true,
                timer_at: None,
                snapshot: None,
                connections: Vec::new(),
                origin_up: false,
                seen_gossip: 0,
                stored: Bitfield::new(nchunks),
                staged_at: None,
                milestones: super::Milestones::default(),
                last_highest: 0,
                last_applied: 0,
                wave: waves::wave_of(&plan, &id, FLEET, release.announcement.sequence),
                runtime: Runtime::Idle,
                seed: dev_seed,
                queued_reports: Vec::new(),
                counted_healthy: false,
            });
        }
        let origin_key = device_key(1 << 40);
        let origin_id = DeviceId::from(origin_key.public_key());
        let mut origin_cfg = Config::new(origin_key, fleet.trust.clone(), shoal_testing::TEST_ARCH);
        origin_cfg.origin = true;
        origin_cfg.max_peers = n as usize + 16;
        origin_cfg.max_uploads = super::ORIGIN_UPLOAD_SLOTS;
        origin_cfg.releases = cache.clone();
        let origin = Node::new(origin_cfg, seeds.next_u64());

        // Peer graph: each device introduced to some same-site and some other-site peers.
        let mut by_site: Vec<Vec<u32>> = vec![Vec::new(); nsites as usize];
        for i in 0..n {
            by_site[(i % nsites) as usize].push(i);
        }
        let all: Vec<u32> = (0..n).collect();
        let mut edges: Vec<Vec<u32>> = vec![Vec::new(); n as usize];
        let mut picks = Vec::new();
        for i in 0..n {
            let site = (i % nsites) as usize;
            picks.clear();
            pick_distinct(
                &mut rng,
                &by_site[site],
                sc.fleet.local_peers as usize,
                i,
                &mut picks,
            );
            if nsites > 1 {
                let mut remote = Vec::new();
                let mut tries = 0;
                while remote.len() < sc.fleet.remote_peers as usize && tries < 64 {
                    tries += 1;
                    let c = all[rng.below(u64::from(n)) as usize];
                    if c % nsites != i % nsites && !remote.contains(&c) {
                        remote.push(c);
                    }
                }
                picks.extend(remote);
            }
            for &p in &picks {
                if !edges[i as usize].contains(&p) {
                    edges[i as usize].push(p);
                    edges[p as usize].push(i);
                }
            }
        }
        for (i, e) in edges.into_iter().enumerate() {
            let site = devices[i].site;
            devices[i].connections = e
                .into_iter()
                .map(|peer| super::Connection {
                    peer,
                    remote: devices[peer as usize].site != site,
                    up: false,
                    blocked_until: 0,
                })
                .collect();
        }

        // Gossip mesh: about `mesh_degree` random neighbours each.
        let degree = sc.gossip.mesh_degree as usize;
        let mut mesh: Vec<Vec<u32>> = vec![Vec::new(); n as usize];
        for i in 0..n {
            picks.clear();
            pick_distinct(&mut rng, &all, degree.div_ceil(2), i, &mut picks);
            for &p in &picks {
                if !mesh[i as usize].contains(&p) {
                    mesh[i as usize].push(p);
                    mesh[p as usize].push(i);
                }
            }
        }
        let mut origin_mesh = Vec::new();
        pick_distinct(&mut rng, &all, degree, u32::MAX, &mut origin_mesh);

        let replay_full = Bitfield::full(nchunks);
        let nwaves = sc.rollout.waves.len();
        let mut sim = Sim {
            scenario: sc.clone(),
            seed,
            replay,
            now: 0,
            queue: dary_heap::QuaternaryHeap::new(),
            slots: Slab::new(),
            next_seq: 0,
            net: Net::new(&topo),
            devices,
            ids,
            origin_id,
            fleet,
            release,
            full: replay_full,
            gossip: Vec::new(),
            gossip_index: HashMap::default(),
            mesh,
            origin_mesh,
            transfers: Slab::new(),
            fetches: HashMap::default(),
            have_batches: vec![Vec::new(); 2 * n as usize],
            origin,
            partitioned: vec![false; nsites as usize],
            control: control::Control::new(plan),
            fault_plan,
            announced: false,
            rng: Rng::derive(seed, 0x1055),
            trace: blake3::Hasher::new(),
            metrics: Metrics {
                wave_opened: vec![None; nwaves],
                wave_finished: vec![None; nwaves],
                wave_healthy: vec![0; nwaves],
                ..Metrics::default()
            },
            outputs: Vec::new(),
            cache: cache.clone(),
            violation: None,
        };
        let (f, r) = (sim.fleet.clone(), sim.release.clone());
        let ids = sim.devices.iter().map(|d| d.id).collect();
        sim.control.bind(f, r, ids);
        if sim.replay.is_empty() {
            sim.replay = format!(
                "shoal-sim run --scenario {} --seed {seed}",
                sim.scenario.name
            );
        }
        let wall = Input::WallClock(TEST_EPOCH);
        sim.feed_origin(wall.clone());
        for i in 0..n {
            sim.feed(i, wall.clone());
            sim.tell_site_members(i);
        }
        for i in 0..n {
            sim.connect_origin(i);
            let peers: Vec<u32> = sim.devices[i as usize]
                .connections
                .iter()
                .map(|c| c.peer)
                .collect();
            for p in peers {
                if p > i {
                    sim.connect(i, p);
                }
            }
        }
        let schedule = sim.fault_plan.schedule.clone();
        for (t, f) in schedule {
            sim.push(t, Event::Fault(f));
        }
        sim.push(1_000_000, Event::Announce);
        sim
    }

    /// Set the replay command printed with a violation.
    pub fn set_replay(&mut self, replay: String) {
        self.replay = replay;
    }
}
