//! [`Node`] and its [`Config`]: the state machine itself. Trust and gossip are handled here,
//! chunk choice in [`super::fetch`], activation and reports in [`super::activate`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use shoal_protocol::verify::{self, Context, VerifyError};
use shoal_protocol::{
    Announcement, DeviceId, Digest, ReleaseSeq, SigningKey, TrustRoot, UnixTime, WaveAction,
    WaveControl,
};

use super::bitfield::Bitfield;
use super::fetch::{Class, Scheduler};
use super::release::{Release, ReleaseCache};
use super::rng::Rng;
use super::snapshot::{Phase, ReleaseSnapshot, Snapshot};
use super::types::{
    DropReason, Event, FetchError, FetchStats, GossipMessage, Input, Instant, Output, PeerId,
    PeerInfo, Refusal, Verdict,
};

/// The in-flight cap for `p`: `base`, plus one per 10 ms of RTT, at most `4 * base`.
fn per_peer_cap(base: u32, p: &Peer) -> u32 {
    base.saturating_add(p.info.rtt_ms / 10)
        .min(base.saturating_mul(4))
}

/// Most fetches of one chunk in flight at once in the endgame.
const ENDGAME_COPIES: usize = 2;

/// Most banned peers remembered at once.
pub const MAX_BANNED: usize = 4096;

/// How a node behaves. [`Config::new`] gives the defaults; every bound is a field.
#[derive(Debug, Clone)]
pub struct Config {
    /// The device's key: its identity ([`Node::id`]) and what signs its reports.
    pub key: SigningKey,
    /// The fleet's trust root (already rotated to the current version by the driver).
    pub trust: TrustRoot,
    /// The device's architecture, as manifests name it.
    pub arch: String,
    /// The device's site label; peers with the same label are preferred.
    pub site: Option<String>,
    /// Most bytes of chunks the store may hold: the committed release plus the one being fetched.
    pub store_quota_bytes: u64,
    /// Most connected peers; more are dropped.
    pub max_peers: usize,
    /// Most chunk fetches in flight from one nearby peer; a distant peer gets one more per
    /// 10 ms of RTT (to fill the bandwidth-delay product), up to four times this.
    pub max_in_flight_per_peer: u32,
    /// Most chunk fetches in flight overall.
    pub max_in_flight_total: u32,
    /// Shortest deadline of a fetch, in milliseconds.
    pub fetch_timeout_ms: u64,
    /// A peer serving below this rate is dropped; a fetch's deadline is at least its size at
    /// this rate.
    pub min_rate_bytes_per_s: u64,
    /// First retry delay after a failure, doubled per consecutive failure.
    pub backoff_base_ms: u64,
    /// Longest retry delay.
    pub backoff_max_ms: u64,
    /// How long a peer that answered [`FetchError::Busy`] is left alone (no penalty).
    pub busy_backoff_ms: u64,
    /// Consecutive failures (timeouts, I/O errors, false advertisements) before a peer is dropped.
    pub max_peer_failures: u32,
    /// How long a peer that sent bad bytes stays banned.
    pub ban_ms: u64,
    /// Chunk progress is persisted at most this often.
    pub persist_interval_ms: u64,
    /// Candidates examined per rarest-first pick (see [`super::fetch`]).
    pub rarest_sample: u32,
    /// With no chunk stored for this long, the node imports any chunk its site lacks, not only
    /// its share (see [`super::fetch`]).
    pub idle_fallback_ms: u64,
    /// Most uploads served at once (see [`Node::admit_upload`]).
    pub max_uploads: u32,
    /// On the origin: times each chunk is served before it is served only when no peer holds
    /// it (see [`super::Admission`]).
    pub origin_copies: u32,
    /// Verified releases shared with other nodes of this process (the simulator); a fresh cache
    /// by default.
    pub releases: ReleaseCache,
    /// The builder's origin node: it gets releases through [`Node::seed`], serves and
    /// advertises them, and never fetches, applies or reports.
    pub origin: bool,
}

impl Config {
    /// Defaults: 16 GiB quota, 64 peers, 4 fetches per peer (plus one per 10 ms of RTT) and 64
    /// overall, 5 s minimum deadline, 64 KiB/s minimum rate, backoff 500 ms doubling to 30 s
    /// (100 ms after Busy), 3 failures, 1 h bans, persist every 5 s, rarest of 32, idle fallback
    /// after 500 ms, 16 uploads, the origin serves each chunk once.
    pub fn new(key: SigningKey, trust: TrustRoot, arch: impl Into<String>) -> Config {
        Config {
            key,
            trust,
            arch: arch.into(),
            site: None,
            store_quota_bytes: 16 << 30,
            max_peers: 64,
            max_in_flight_per_peer: 4,
            max_in_flight_total: 64,
            fetch_timeout_ms: 5_000,
            min_rate_bytes_per_s: 64 * 1024,
            backoff_base_ms: 500,
            backoff_max_ms: 30_000,
            busy_backoff_ms: 100,
            max_peer_failures: 3,
            ban_ms: 3_600_000,
            persist_interval_ms: 5_000,
            rarest_sample: 32,
            idle_fallback_ms: 500,
            max_uploads: 16,
            origin_copies: 1,
            releases: ReleaseCache::default(),
            origin: false,
        }
    }
}

/// Where the current release stands, for status displays and the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The release.
    pub sequence: ReleaseSeq,
    /// Its phase.
    pub phase: Phase,
    /// Unique chunks stored (0 before the manifest).
    pub have_chunks: u32,
    /// Unique chunks in the release (0 before the manifest).
    pub total_chunks: u32,
    /// Chunk fetches in flight.
    pub in_flight: u32,
    /// The device's wave for this release (once the manifest is known).
    pub wave: Option<u32>,
}

#[derive(Debug)]
pub(super) struct Peer {
    pub(super) info: PeerInfo,
    pub(super) class: Class,
    pub(super) failures: u32,
    pub(super) backoff_until: Instant,
    /// Holds the current release's manifest (it sent availability for it).
    pub(super) has_manifest: bool,
    /// Availability received before our manifest was known: a full bitfield, and single HAVEs
    /// as raw words (at most [`MAX_EARLY_HAVE_BITS`] bits).
    pub(super) early_have: Option<Bitfield>,
    pub(super) early_chunks: Vec<u64>,
}

/// Highest chunk index remembered from a HAVE that arrives before the manifest.
pub const MAX_EARLY_HAVE_BITS: u32 = 1 << 18;

/// Rollout state of the current release, from verified wave control messages.
#[derive(Debug, Default, Clone)]
pub(super) struct Waves {
    pub(super) counter: Option<u64>,
    pub(super) open: Option<u32>,
    pub(super) paused: bool,
    pub(super) halted: bool,
    /// (counter, envelope bytes) of the latest `Open` and the latest other action.
    pub(super) last_open: Option<(u64, Vec<u8>)>,
    pub(super) last_other: Option<(u64, Vec<u8>)>,
}

#[derive(Debug, Default)]
pub(super) struct ManifestFetch {
    pub(super) in_flight: Option<(PeerId, Instant)>,
    pub(super) tried: BTreeSet<PeerId>,
    pub(super) retry_at: Option<Instant>,
    pub(super) rounds: u32,
}

#[derive(Debug)]
pub(super) struct Current {
    pub(super) ann: Announcement,
    pub(super) ann_bytes: Vec<u8>,
    pub(super) phase: Phase,
    pub(super) release: Option<Arc<Release>>,
    pub(super) sched: Option<Scheduler>,
    pub(super) wave: Option<u32>,
    pub(super) waves: Waves,
    pub(super) manifest_fetch: ManifestFetch,
    /// When a chunk was last stored (or fetching began): the idle fallback counts from here.
    pub(super) last_progress: Instant,
    /// The origin's serve counts (super-seeding), once it serves.
    pub(super) served: Option<super::upload::Served>,
}

/// A device's decision logic for releases. See the [module docs](super) for how to drive it.
#[derive(Debug)]
pub struct Node {
    pub(super) config: Config,
    pub(super) id: DeviceId,
    pub(super) trust_digest: Digest,
    pub(super) rng: Rng,
    pub(super) wall: Option<(UnixTime, Instant)>,
    pub(super) now: Instant,
    pub(super) outputs: VecDeque<Output>,
    pub(super) highest: Option<(ReleaseSeq, Digest)>,
    pub(super) applied: Option<ReleaseSeq>,
    pub(super) committed: Option<ReleaseSeq>,
    pub(super) committed_release: Option<Arc<Release>>,
    pub(super) cur: Option<Current>,
    pub(super) peers: BTreeMap<PeerId, Peer>,
    /// Peers in preference order: class, RTT, id.
    pub(super) order: Vec<PeerId>,
    pub(super) banned: BTreeMap<PeerId, Instant>,
    /// A verified wave control for a release above the current one, kept until it is announced.
    pub(super) pending_control: Option<(WaveControl, Vec<u8>)>,
    pub(super) persist_due: Option<Instant>,
    /// A snapshot to re-verify at the first wall clock.
    pub(super) resume_from: Option<ReleaseSnapshot>,
    /// Uploads admitted and not yet finished.
    pub(super) uploads: u32,
}

impl Node {
    /// A node with no history.
    pub fn new(config: Config, seed: u64) -> Node {
        let id = DeviceId::from(config.key.public_key());
        let trust_digest = ReleaseCache::trust_digest(&config.trust);
        Node {
            config,
            id,
            trust_digest,
            rng: Rng::new(seed),
            wall: None,
            now: Instant::ZERO,
            outputs: VecDeque::new(),
            highest: None,
            applied: None,
            committed: None,
            committed_release: None,
            cur: None,
            peers: BTreeMap::new(),
            order: Vec::new(),
            banned: BTreeMap::new(),
            pending_control: None,
            persist_due: None,
            resume_from: None,
            uploads: 0,
        }
    }

    /// A node that continues from `snapshot`. The sequence bounds (`highest`, `applied`,
    /// `committed`) take effect at once; the current release is verified again at the first
    /// [`Input::WallClock`] (and dropped if it no longer verifies), then fetching continues
    /// where the snapshot left off.
    pub fn resume(config: Config, snapshot: Snapshot, seed: u64) -> Node {
        let mut node = Node::new(config, seed);
        node.highest = snapshot.highest;
        node.applied = snapshot.applied;
        node.committed = snapshot.committed;
        node.resume_from = snapshot.release;
        node
    }

    /// Installs a release whose chunks are all stored locally (the builder's origin node, or a
    /// device provisioned with it): both envelopes are verified as if they had arrived by
    /// gossip, then the node advertises the full bitfield to its peers. `announcement` is the
    /// signed envelope bytes (not the gossip message). Needs a wall clock first.
    pub fn seed(
        &mut self,
        now: Instant,
        announcement: Vec<u8>,
        manifest: Arc<[u8]>,
    ) -> Result<(), VerifyError> {
        self.now = self.now.max(now);
        let Some(ctx) = self.ctx() else {
            return Err(VerifyError::Expired {
                kind: "wall clock (none given yet)",
                expires: 0,
                now: 0,
            });
        };
        let ann = verify::announcement(&ctx, &announcement)?;
        let release = self
            .config
            .releases
            .verify(&ctx, self.trust_digest, &ann, manifest)?;
        let new_seq = ann.sequence;
        if self.highest == Some((ann.sequence, ann.manifest_digest)) {
            return Ok(());
        }
        if let Some(old) = self.cur.take() {
            self.abandon(old, new_seq);
        }
        self.highest = Some((ann.sequence, ann.manifest_digest));
        let full = Bitfield::full(release.chunks.len() as u32);
        self.cur = Some(Current {
            ann,
            ann_bytes: announcement,
            phase: Phase::FetchingManifest,
            release: None,
            sched: None,
            wave: None,
            waves: Waves::default(),
            manifest_fetch: ManifestFetch::default(),
            last_progress: Instant::ZERO,
            served: None,
        });
        self.accept_release_with(release, Some(full));
        Ok(())
    }

    /// The device's identity.
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// The highest accepted release and its manifest digest.
    pub fn highest(&self) -> Option<(ReleaseSeq, Digest)> {
        self.highest
    }

    /// The highest release ever handed to [`Output::Apply`].
    pub fn applied(&self) -> Option<ReleaseSeq> {
        self.applied
    }

    /// The last release committed healthy.
    pub fn committed(&self) -> Option<ReleaseSeq> {
        self.committed
    }

    /// The current release's progress.
    pub fn progress(&self) -> Option<Progress> {
        let cur = self.cur.as_ref()?;
        Some(Progress {
            sequence: cur.ann.sequence,
            phase: cur.phase,
            have_chunks: cur.sched.as_ref().map_or(0, |s| s.have.count_ones()),
            total_chunks: cur.sched.as_ref().map_or(0, |s| s.len()),
            in_flight: cur.sched.as_ref().map_or(0, |s| s.in_flight.len() as u32),
            wave: cur.wave,
        })
    }

    /// The current release, once its manifest verified.
    pub fn release(&self) -> Option<&Arc<Release>> {
        self.cur.as_ref()?.release.as_ref()
    }

    /// Whether chunk `index` of release `sequence` is stored (what a driver checks before
    /// serving it).
    pub fn has_chunk(&self, sequence: ReleaseSeq, index: u32) -> bool {
        self.cur.as_ref().is_some_and(|c| {
            c.ann.sequence == sequence && c.sched.as_ref().is_some_and(|s| s.have.get(index))
        })
    }

    /// The stored-chunk bitfield of the current release.
    pub fn have(&self) -> Option<&Bitfield> {
        Some(&self.cur.as_ref()?.sched.as_ref()?.have)
    }

    /// Connected peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The snapshot of the node's durable state now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            highest: self.highest,
            applied: self.applied,
            committed: self.committed,
            release: self.cur.as_ref().map(|c| ReleaseSnapshot {
                announcement: c.ann_bytes.clone(),
                manifest: c.release.as_ref().map(|r| r.manifest_bytes.clone()),
                have: c.sched.as_ref().map(|s| s.have.clone()),
                controls: c.waves.controls(),
                phase: c.phase,
            }),
            saved_at: self.wall_now().unwrap_or_default(),
        }
    }

    /// The next output, if any. Call until `None` after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Node::handle_timeout`] is next due, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = self.persist_due;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(cur) = &self.cur {
            if let Some(s) = &cur.sched
                && let Some(d) = s.next_deadline()
            {
                at(d);
            }
            if let Some((_, d)) = cur.manifest_fetch.in_flight {
                at(d);
            }
            if let Some(r) = cur.manifest_fetch.retry_at {
                at(r);
            }
            if cur.phase == Phase::Fetching
                && let Some(s) = &cur.sched
                && !s.share().idle
            {
                at(cur.last_progress.plus_ms(self.config.idle_fallback_ms));
            }
            if matches!(cur.phase, Phase::Fetching | Phase::FetchingManifest) {
                for p in self.peers.values() {
                    if p.backoff_until > self.now {
                        at(p.backoff_until);
                    }
                }
            }
        }
        t
    }

    /// Handles one input at `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::WallClock(t) => self.on_wall_clock(t),
            Input::PeerConnected { peer, info } => self.on_peer_connected(peer, info),
            Input::PeerDisconnected { peer } => self.remove_peer(&peer),
            Input::Gossip { from, id, bytes } => {
                let verdict = self.on_gossip(from, &bytes);
                self.outputs
                    .push_back(Output::GossipVerdict { id, verdict });
            }
            Input::PeerHave {
                peer,
                sequence,
                have,
            } => self.on_peer_have(peer, sequence, have),
            Input::PeerHaveChunk {
                peer,
                sequence,
                index,
            } => {
                // The hot path (one per chunk per peer): it starts a fetch itself when starved,
                // and never needs a full scheduling pass.
                self.on_peer_have_chunk(peer, sequence, index);
                return;
            }
            Input::ManifestFetched {
                peer,
                sequence,
                result,
            } => self.on_manifest_fetched(peer, sequence, result),
            Input::ChunkFetched {
                peer,
                sequence,
                index,
                result,
            } => self.on_chunk_fetched(peer, sequence, index, result),
            Input::ApplyFinished { sequence, result } => self.on_apply_finished(sequence, result),
            Input::HealthResult {
                sequence,
                healthy,
                detail,
            } => self.on_health(sequence, healthy, detail),
        }
        self.schedule();
    }

    /// Handles the timers due at `now`: fetch deadlines, retries, throttled persistence.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let now = self.now;
        if let Some(cur) = &mut self.cur {
            let seq = cur.ann.sequence;
            let expired = cur
                .sched
                .as_mut()
                .map(|s| s.expire(now))
                .unwrap_or_default();
            for f in expired {
                self.outputs.push_back(Output::CancelFetch {
                    peer: f.peer,
                    sequence: seq,
                    index: f.index,
                });
                // A peer that does not deliver in time loses its advertised availability, so a
                // trickling peer's claims stop blocking imports from elsewhere.
                if let Some(s) = self.cur.as_mut().and_then(|c| c.sched.as_mut()) {
                    s.distrust(&f.peer);
                }
                self.peer_failed(&f.peer);
            }
        }
        if let Some(cur) = &mut self.cur
            && let Some((peer, deadline)) = cur.manifest_fetch.in_flight
            && deadline <= now
        {
            cur.manifest_fetch.in_flight = None;
            cur.manifest_fetch.tried.insert(peer);
            self.peer_failed(&peer);
        }
        if let Some(cur) = &mut self.cur
            && cur.manifest_fetch.retry_at.is_some_and(|r| r <= now)
        {
            cur.manifest_fetch.retry_at = None;
        }
        if self.persist_due.is_some_and(|d| d <= now) {
            self.persist();
        }
        self.fetch_manifest();
        self.schedule();
    }

    // ----- time -----

    pub(super) fn wall_now(&self) -> Option<UnixTime> {
        let (wall, at) = self.wall?;
        Some(wall.plus_secs(self.now.ms_since(at) / 1000))
    }

    fn on_wall_clock(&mut self, t: UnixTime) {
        self.wall = Some((t, self.now));
        if let Some(snap) = self.resume_from.take() {
            self.restore(snap);
        }
    }

    fn ctx(&self) -> Option<Context<'_>> {
        Some(Context {
            trust: &self.config.trust,
            arch: &self.config.arch,
            highest_seen: self.highest,
            now: self.wall_now()?,
        })
    }

    // ----- peers -----

    fn class_of(&self, info: &PeerInfo) -> Class {
        if info.origin {
            Class::Origin
        } else if info.site.is_some() && info.site == self.config.site {
            Class::Local
        } else {
            Class::Remote
        }
    }

    fn reorder(&mut self) {
        let mut order: Vec<(Class, u32, PeerId)> = self
            .peers
            .iter()
            .map(|(id, p)| (p.class, p.info.rtt_ms, *id))
            .collect();
        order.sort();
        self.order = order.into_iter().map(|(_, _, id)| id).collect();
        self.update_share();
    }

    /// Recomputes this node's share of its site's imports (see [`super::fetch::Share`]).
    pub(super) fn update_share(&mut self) {
        let Some(cur) = &self.cur else { return };
        let salt = super::fetch::mix64(cur.ann.sequence.0 ^ 0x5348_4f41_4c00_0000);
        let point = |id: &PeerId| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&id.0[..8]);
            super::fetch::mix64(u64::from_le_bytes(b) ^ salt)
        };
        let me = point(&self.id);
        let mut points: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| p.class == Class::Local)
            .map(|(id, _)| point(id))
            .collect();
        let chunk_salt = super::fetch::mix64(salt);
        let (now, idle_ms) = (self.now, self.config.idle_fallback_ms);
        let Some(cur) = &mut self.cur else { return };
        let idle = now.ms_since(cur.last_progress) >= idle_ms;
        if let Some(s) = &mut cur.sched {
            s.set_share(super::fetch::Share::new(me, &mut points, chunk_salt, idle));
        }
    }

    fn on_peer_connected(&mut self, peer: PeerId, info: PeerInfo) {
        if let Some(&until) = self.banned.get(&peer) {
            if until > self.now {
                self.outputs.push_back(Output::BanPeer {
                    peer,
                    reason: DropReason::BadData,
                    until,
                });
                return;
            }
            self.banned.remove(&peer);
        }
        let class = self.class_of(&info);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.info = info;
            p.class = class;
            if let Some(s) = self.cur.as_mut().and_then(|c| c.sched.as_mut()) {
                s.reclass_peer(peer, class);
            }
            self.reorder();
            return;
        }
        if self.peers.len() >= self.config.max_peers {
            self.outputs.push_back(Output::DropPeer {
                peer,
                reason: DropReason::TooManyPeers,
            });
            return;
        }
        self.peers.insert(
            peer,
            Peer {
                info,
                class,
                failures: 0,
                backoff_until: Instant::ZERO,
                has_manifest: false,
                early_have: None,
                early_chunks: Vec::new(),
            },
        );
        self.reorder();
        if let Some(cur) = &self.cur {
            let mut messages = vec![GossipMessage::Announcement(cur.ann_bytes.clone()).encode()];
            messages.extend(
                cur.waves
                    .controls()
                    .into_iter()
                    .map(|c| GossipMessage::WaveControl(c).encode()),
            );
            self.outputs
                .push_back(Output::SyncGossip { peer, messages });
            if let Some(s) = &cur.sched {
                self.outputs.push_back(Output::SendBitfield {
                    peer,
                    sequence: cur.ann.sequence,
                    have: s.have.clone(),
                });
            }
        }
        self.fetch_manifest();
    }

    pub(super) fn remove_peer(&mut self, peer: &PeerId) {
        if self.peers.remove(peer).is_none() {
            return;
        }
        self.order.retain(|p| p != peer);
        if let Some(cur) = &mut self.cur {
            if let Some(s) = &mut cur.sched {
                s.remove_peer(peer);
            }
            if cur
                .manifest_fetch
                .in_flight
                .is_some_and(|(p, _)| p == *peer)
            {
                cur.manifest_fetch.in_flight = None;
            }
        }
    }

    fn drop_peer(&mut self, peer: PeerId, reason: DropReason) {
        if self.peers.contains_key(&peer) {
            self.remove_peer(&peer);
            self.outputs.push_back(Output::DropPeer { peer, reason });
        }
    }

    fn ban_peer(&mut self, peer: PeerId) {
        let until = self.now.plus_ms(self.config.ban_ms);
        if self.banned.len() >= MAX_BANNED {
            let now = self.now;
            self.banned.retain(|_, u| *u > now);
            if self.banned.len() >= MAX_BANNED
                && let Some((&first, _)) = self.banned.iter().min_by_key(|(_, u)| **u)
            {
                self.banned.remove(&first);
            }
        }
        self.banned.insert(peer, until);
        self.remove_peer(&peer);
        self.outputs.push_back(Output::BanPeer {
            peer,
            reason: DropReason::BadData,
            until,
        });
    }

    /// One more failure: back off, and drop after too many in a row.
    fn peer_failed(&mut self, peer: &PeerId) {
        let (base, max, limit) = (
            self.config.backoff_base_ms,
            self.config.backoff_max_ms,
            self.config.max_peer_failures,
        );
        let now = self.now;
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        p.failures += 1;
        if p.failures >= limit {
            self.drop_peer(*peer, DropReason::Unresponsive);
            return;
        }
        let delay = base.saturating_mul(1 << (p.failures - 1).min(20)).min(max);
        p.backoff_until = now.plus_ms(delay);
    }

    fn deadline_for(&self, size: u64) -> Instant {
        let rate = self.config.min_rate_bytes_per_s.max(1);
        let at_rate = size.saturating_mul(1000) / rate;
        self.now.plus_ms(self.config.fetch_timeout_ms.max(at_rate))
    }

    // ----- gossip -----

    fn on_gossip(&mut self, from: PeerId, bytes: &[u8]) -> Verdict {
        let Some(msg) = GossipMessage::decode(bytes) else {
            return Verdict::Reject;
        };
        if self.wall.is_none() {
            return Verdict::Ignore;
        }
        // The same bytes again (another mesh path, a sync on connect): already judged, and
        // not worth a signature check.
        if let Some(cur) = &self.cur {
            let seen = match &msg {
                GossipMessage::Announcement(b) => *b == cur.ann_bytes,
                GossipMessage::WaveControl(b) => [&cur.waves.last_open, &cur.waves.last_other]
                    .into_iter()
                    .flatten()
                    .any(|(_, seen)| seen == b),
            };
            if seen {
                return Verdict::Ignore;
            }
        }
        match msg {
            GossipMessage::Announcement(b) => self.on_announcement(from, b),
            GossipMessage::WaveControl(b) => self.on_wave_control(b),
        }
    }

    fn on_announcement(&mut self, from: PeerId, bytes: Vec<u8>) -> Verdict {
        let Some(ctx) = self.ctx() else {
            return Verdict::Ignore;
        };
        let ann = match verify::announcement(&ctx, &bytes) {
            Ok(ann) => ann,
            // Valid and signed, just not for this device's architecture: forward, do nothing.
            Err(VerifyError::WrongArch { .. }) => return Verdict::Accept,
            Err(_) => return Verdict::Reject,
        };
        if self.highest == Some((ann.sequence, ann.manifest_digest)) {
            return Verdict::Ignore;
        }
        let new_seq = ann.sequence;
        if let Some(old) = self.cur.take() {
            self.abandon(old, new_seq);
        }
        self.highest = Some((ann.sequence, ann.manifest_digest));
        let mut cur = Current {
            ann,
            ann_bytes: bytes,
            phase: Phase::FetchingManifest,
            release: None,
            sched: None,
            wave: None,
            waves: Waves::default(),
            manifest_fetch: ManifestFetch::default(),
            last_progress: Instant::ZERO,
            served: None,
        };
        if let Some((wc, b)) = self.pending_control.take()
            && wc.sequence == cur.ann.sequence
            && wc.manifest_digest == cur.ann.manifest_digest
        {
            cur.waves.apply(&wc, b);
        }
        for p in self.peers.values_mut() {
            p.has_manifest = false;
            p.early_have = None;
            p.early_chunks = Vec::new();
        }
        if let Some(p) = self.peers.get_mut(&from) {
            p.has_manifest = true;
        }
        self.cur = Some(cur);
        self.outputs
            .push_back(Output::Event(Event::Announced { sequence: new_seq }));
        self.persist();
        self.fetch_manifest();
        Verdict::Accept
    }

    /// Stops work on `old` because `new` replaces it.
    fn abandon(&mut self, mut old: Current, new: ReleaseSeq) {
        let seq = old.ann.sequence;
        if let Some(s) = &mut old.sched {
            for f in s.cancel_all() {
                self.outputs.push_back(Output::CancelFetch {
                    peer: f.peer,
                    sequence: seq,
                    index: f.index,
                });
            }
        }
        if matches!(
            old.phase,
            Phase::FetchingManifest | Phase::Fetching | Phase::Staged
        ) {
            self.outputs
                .push_back(Output::Event(Event::Superseded { old: seq, new }));
        }
    }

    fn on_wave_control(&mut self, bytes: Vec<u8>) -> Verdict {
        let Some(now) = self.wall_now() else {
            return Verdict::Ignore;
        };
        let wc = match verify::wave_control(&self.config.trust, &bytes, now) {
            Ok(wc) => wc,
            Err(_) => return Verdict::Reject,
        };
        let Some(cur) = &mut self.cur else {
            return self.keep_pending_control(wc, bytes);
        };
        if wc.sequence > cur.ann.sequence {
            return self.keep_pending_control(wc, bytes);
        }
        if wc.sequence < cur.ann.sequence {
            return Verdict::Ignore;
        }
        if wc.manifest_digest != cur.ann.manifest_digest {
            return Verdict::Reject;
        }
        if cur.waves.counter.is_some_and(|c| wc.counter <= c) {
            return Verdict::Ignore;
        }
        cur.waves.apply(&wc, bytes);
        if cur.waves.halted
            && matches!(
                cur.phase,
                Phase::FetchingManifest | Phase::Fetching | Phase::Staged
            )
        {
            let seq = cur.ann.sequence;
            cur.phase = Phase::Halted;
            let cancelled = cur
                .sched
                .as_mut()
                .map(|s| s.cancel_all())
                .unwrap_or_default();
            cur.manifest_fetch.in_flight = None;
            for f in cancelled {
                self.outputs.push_back(Output::CancelFetch {
                    peer: f.peer,
                    sequence: seq,
                    index: f.index,
                });
            }
            self.outputs
                .push_back(Output::Event(Event::Halted { sequence: seq }));
        }
        self.persist();
        self.try_activate();
        Verdict::Accept
    }

    fn keep_pending_control(&mut self, wc: WaveControl, bytes: Vec<u8>) -> Verdict {
        let newer = match &self.pending_control {
            None => true,
            Some((p, _)) => (wc.sequence, wc.counter) > (p.sequence, p.counter),
        };
        if !newer {
            return Verdict::Ignore;
        }
        // Open messages are what late joiners need most; keep the latest of any kind.
        self.pending_control = Some((wc, bytes));
        Verdict::Accept
    }

    // ----- availability -----

    fn on_peer_have(&mut self, peer: PeerId, sequence: ReleaseSeq, have: Bitfield) {
        let Some(cur) = &mut self.cur else { return };
        if cur.ann.sequence != sequence {
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.has_manifest = true;
        match &mut cur.sched {
            None => p.early_have = Some(have),
            Some(s) => {
                if have.len() == s.len() {
                    s.set_peer_have(peer, p.class, have);
                }
            }
        }
        self.fetch_manifest();
    }

    fn on_peer_have_chunk(&mut self, peer: PeerId, sequence: ReleaseSeq, index: u32) {
        let Some(cur) = &mut self.cur else { return };
        if cur.ann.sequence != sequence {
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.has_manifest = true;
        let class = p.class;
        let Some(s) = &mut cur.sched else {
            if index < MAX_EARLY_HAVE_BITS {
                let w = (index / 64) as usize;
                if p.early_chunks.len() <= w {
                    p.early_chunks.resize(w + 1, 0);
                }
                p.early_chunks[w] |= 1 << (index % 64);
            }
            self.fetch_manifest();
            return;
        };
        if index >= s.len() || !s.peer_has(peer, class, index) {
            return;
        }
        // Starved and this peer may serve it: ask at once, without a full scheduling pass.
        if cur.phase == Phase::Fetching
            && s.is_needed(index)
            && s.class_may_serve(class, index)
            && (s.in_flight.len() as u32) < self.config.max_in_flight_total
            && s.in_flight_of(&peer) < per_peer_cap(self.config.max_in_flight_per_peer, p)
            && p.backoff_until <= self.now
        {
            self.start_fetch(peer, index);
        }
    }

    // ----- manifest -----

    /// Starts a manifest fetch if one is needed and none is running.
    pub(super) fn fetch_manifest(&mut self) {
        let now = self.now;
        let Some(cur) = &self.cur else { return };
        if cur.phase != Phase::FetchingManifest
            || cur.manifest_fetch.in_flight.is_some()
            || cur.manifest_fetch.retry_at.is_some_and(|r| r > now)
        {
            return;
        }
        let mf = &cur.manifest_fetch;
        let eligible = |id: &PeerId| {
            let p = &self.peers[id];
            !mf.tried.contains(id) && p.backoff_until <= now
        };
        // Non-origin peers known to hold it first, then other non-origin peers, then the
        // origin: the builder serves the manifest only when no peer can.
        let not_origin = |id: &PeerId| self.peers[id].class != Class::Origin;
        let pick = self
            .order
            .iter()
            .find(|id| not_origin(id) && self.peers[*id].has_manifest && eligible(id))
            .or_else(|| self.order.iter().find(|id| not_origin(id) && eligible(id)))
            .or_else(|| self.order.iter().find(|id| eligible(id)))
            .copied();
        let Some(peer) = pick else {
            let any_untried = self.order.iter().any(|id| !mf.tried.contains(id));
            if !any_untried && !self.order.is_empty() {
                // Everyone tried: start a new round after a backoff.
                let rounds = mf.rounds + 1;
                let delay = self
                    .config
                    .backoff_base_ms
                    .saturating_mul(1 << rounds.min(20))
                    .min(self.config.backoff_max_ms);
                if let Some(cur) = &mut self.cur {
                    cur.manifest_fetch.tried.clear();
                    cur.manifest_fetch.rounds = rounds;
                    cur.manifest_fetch.retry_at = Some(now.plus_ms(delay));
                }
            }
            return;
        };
        let (sequence, digest, size) = (
            cur.ann.sequence,
            cur.ann.manifest_digest,
            cur.ann.manifest_size,
        );
        let deadline = self.deadline_for(size);
        if let Some(cur) = &mut self.cur {
            cur.manifest_fetch.in_flight = Some((peer, deadline));
        }
        self.outputs.push_back(Output::FetchManifest {
            peer,
            sequence,
            digest,
            size,
        });
    }

    fn on_manifest_fetched(
        &mut self,
        peer: PeerId,
        sequence: ReleaseSeq,
        result: Result<Arc<[u8]>, super::types::FetchError>,
    ) {
        let Some(cur) = &mut self.cur else { return };
        if cur.ann.sequence != sequence || cur.phase != Phase::FetchingManifest {
            return;
        }
        if cur.manifest_fetch.in_flight.is_some_and(|(p, _)| p == peer) {
            cur.manifest_fetch.in_flight = None;
        }
        cur.manifest_fetch.tried.insert(peer);
        let ann = cur.ann.clone();
        let bytes = match result {
            Ok(b) => b,
            Err(FetchError::DigestMismatch) => return self.ban_peer(peer),
            Err(FetchError::NotFound | FetchError::Busy) => return self.fetch_manifest(),
            Err(_) => {
                self.peer_failed(&peer);
                return self.fetch_manifest();
            }
        };
        let Some(ctx) = self.ctx() else { return };
        match self
            .config
            .releases
            .verify(&ctx, self.trust_digest, &ann, bytes.clone())
        {
            Ok(release) => self.accept_release(release),
            Err(e) if Digest::of(&bytes) == ann.manifest_digest => {
                // The very bytes that were announced, and still wrong: the release is bad.
                self.refuse(Refusal::Invalid {
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                self.ban_peer(peer);
                self.fetch_manifest();
            }
        }
    }

    /// A verified manifest: check the quota, carry over chunks already held, start fetching.
    pub(super) fn accept_release(&mut self, release: Arc<Release>) {
        self.accept_release_with(release, None);
    }

    fn accept_release_with(&mut self, release: Arc<Release>, stored: Option<Bitfield>) {
        let len = release.chunks.len() as u32;
        let mut have = stored.unwrap_or_else(|| Bitfield::new(len));
        let mut shared_bytes = 0u64;
        if let Some(old) = &self.committed_release {
            let held: BTreeSet<Digest> = old.chunks.iter().map(|c| c.digest).collect();
            for (i, c) in release.chunks.iter().enumerate() {
                if held.contains(&c.digest) {
                    have.set(i as u32);
                    shared_bytes += u64::from(c.size);
                }
            }
        }
        let committed_bytes = self
            .committed_release
            .as_ref()
            .map_or(0, |r| r.unique_bytes);
        let needed_bytes =
            release.unique_bytes + committed_bytes - shared_bytes.min(committed_bytes);
        let Some(cur) = &mut self.cur else { return };
        cur.wave = Some(shoal_protocol::waves::wave_of(
            &release.manifest.rollout,
            &self.id,
            &release.manifest.fleet,
            release.manifest.sequence,
        ));
        cur.release = Some(release);
        if needed_bytes > self.config.store_quota_bytes {
            let quota_bytes = self.config.store_quota_bytes;
            self.refuse(Refusal::Quota {
                needed_bytes,
                quota_bytes,
            });
            return;
        }
        self.install_have(have);
    }

    /// Starts chunk fetching with `have` already stored.
    pub(super) fn install_have(&mut self, have: Bitfield) {
        let Some(cur) = &mut self.cur else { return };
        let mut sched = Scheduler::new(have);
        for id in &self.order {
            let p = self.peers.get_mut(id).expect("order lists connected peers");
            let mut early = p
                .early_have
                .take()
                .filter(|b| b.len() == sched.len())
                .unwrap_or_else(|| Bitfield::new(sched.len()));
            for (w, word) in std::mem::take(&mut p.early_chunks).into_iter().enumerate() {
                let mut word = word;
                while word != 0 {
                    early.set(w as u32 * 64 + word.trailing_zeros());
                    word &= word - 1;
                }
            }
            if early.count_ones() > 0 {
                sched.set_peer_have(*id, p.class, early);
            }
        }
        let seq = cur.ann.sequence;
        let total = sched.len();
        let missing = total - sched.have.count_ones();
        for id in &self.order {
            self.outputs.push_back(Output::SendBitfield {
                peer: *id,
                sequence: seq,
                have: sched.have.clone(),
            });
        }
        cur.sched = Some(sched);
        cur.phase = Phase::Fetching;
        cur.last_progress = self.now;
        self.update_share();
        self.outputs
            .push_back(Output::Event(Event::ManifestAccepted {
                sequence: seq,
                missing,
                total,
            }));
        self.persist();
        self.check_staged();
    }

    // ----- chunks -----

    fn start_fetch(&mut self, peer: PeerId, index: u32) {
        let Some(cur) = &self.cur else { return };
        let Some(release) = &cur.release else { return };
        let chunk = release.chunks[index as usize];
        let sequence = cur.ann.sequence;
        let deadline = self.deadline_for(u64::from(chunk.size));
        if let Some(s) = self.cur.as_mut().and_then(|c| c.sched.as_mut()) {
            s.start(peer, index, deadline);
        }
        self.outputs.push_back(Output::FetchChunk {
            peer,
            sequence,
            index,
            chunk,
        });
    }

    /// Updates the idle flag of the site share: no chunk stored for `idle_fallback_ms`.
    fn refresh_idle(&mut self) {
        let (now, idle_ms) = (self.now, self.config.idle_fallback_ms);
        if let Some(cur) = &mut self.cur
            && let Some(s) = &mut cur.sched
        {
            let idle = now.ms_since(cur.last_progress) >= idle_ms;
            let share = s.share();
            if share.idle != idle {
                s.set_share(super::fetch::Share { idle, ..share });
            }
        }
    }

    /// Fills free fetch slots, peers in preference order, one chunk per peer per round.
    pub(super) fn schedule(&mut self) {
        self.refresh_idle();
        let now = self.now;
        let (per_peer, total, sample) = (
            self.config.max_in_flight_per_peer,
            self.config.max_in_flight_total,
            self.config.rarest_sample,
        );
        loop {
            let mut progressed = false;
            for k in 0..self.order.len() {
                let Some(cur) = &mut self.cur else { return };
                if cur.phase != Phase::Fetching {
                    return;
                }
                let Some(s) = &mut cur.sched else { return };
                if s.in_flight.len() as u32 >= total {
                    return;
                }
                let peer = self.order[k];
                if self.peers[&peer].backoff_until > now
                    || s.in_flight_of(&peer) >= per_peer_cap(per_peer, &self.peers[&peer])
                {
                    continue;
                }
                if let Some(i) = s.pick(&peer, &mut self.rng, sample) {
                    self.start_fetch(peer, i);
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        self.endgame();
    }

    /// When every missing chunk is in flight, free slots fetch the oldest ones again from other
    /// peers (at most two copies); the first copy to arrive cancels the rest.
    fn endgame(&mut self) {
        if !self
            .cur
            .as_ref()
            .and_then(|c| c.sched.as_ref())
            .is_some_and(|s| !s.in_flight.is_empty() && s.nothing_needed())
        {
            return;
        }
        let now = self.now;
        let (per_peer, total) = (
            self.config.max_in_flight_per_peer,
            self.config.max_in_flight_total,
        );
        for k in 0..self.order.len() {
            let Some(cur) = &self.cur else { return };
            if cur.phase != Phase::Fetching {
                return;
            }
            let Some(s) = &cur.sched else { return };
            if s.in_flight.is_empty() || s.in_flight.len() as u32 >= total {
                return;
            }
            let peer = self.order[k];
            if self.peers[&peer].backoff_until > now
                || s.in_flight_of(&peer) >= per_peer_cap(per_peer, &self.peers[&peer])
            {
                continue;
            }
            if let Some(i) = s.pick_endgame(&peer, ENDGAME_COPIES) {
                self.start_fetch(peer, i);
            }
        }
    }

    fn on_chunk_fetched(
        &mut self,
        peer: PeerId,
        sequence: ReleaseSeq,
        index: u32,
        result: Result<FetchStats, FetchError>,
    ) {
        let Some(cur) = &mut self.cur else { return };
        if cur.ann.sequence != sequence {
            return;
        }
        let Some(s) = &mut cur.sched else { return };
        if index >= s.len() {
            return;
        }
        let was_in_flight = s.finish(&peer, index);
        match result {
            Ok(stats) => {
                // Verified and stored by the driver, even if we had given up on it.
                if s.store(index) {
                    cur.last_progress = self.now;
                    for f in s.take_duplicates(index) {
                        self.outputs.push_back(Output::CancelFetch {
                            peer: f.peer,
                            sequence,
                            index,
                        });
                    }
                    self.outputs
                        .push_back(Output::Advertise { sequence, index });
                    if self.persist_due.is_none() {
                        self.persist_due = Some(self.now.plus_ms(self.config.persist_interval_ms));
                    }
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.failures = 0;
                }
                let rate = stats.bytes.saturating_mul(1000) / stats.elapsed_ms.max(1);
                let slow = stats.elapsed_ms > self.config.fetch_timeout_ms
                    && rate < self.config.min_rate_bytes_per_s;
                if slow {
                    self.drop_peer(peer, DropReason::TooSlow);
                }
                self.check_staged();
            }
            // Bad bytes are bad bytes, even for a fetch we had given up on.
            Err(FetchError::DigestMismatch) => self.ban_peer(peer),
            Err(_) if !was_in_flight => {}
            Err(FetchError::TooSlow) => self.drop_peer(peer, DropReason::TooSlow),
            Err(FetchError::NotFound) => {
                s.peer_lacks(&peer, index);
                self.peer_failed(&peer);
            }
            Err(FetchError::Busy) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.backoff_until = self.now.plus_ms(self.config.busy_backoff_ms);
                }
            }
            Err(FetchError::Timeout) => {
                s.distrust(&peer);
                self.peer_failed(&peer);
            }
            Err(_) => self.peer_failed(&peer),
        }
    }

    // ----- persistence -----

    pub(super) fn persist(&mut self) {
        self.persist_due = None;
        let snap = self.snapshot();
        self.outputs.push_back(Output::Persist(Box::new(snap)));
    }

    /// Re-verifies a resumed release at the first wall clock.
    fn restore(&mut self, snap: ReleaseSnapshot) {
        let Some(ctx) = self.ctx() else { return };
        // The snapshot's own release is the highest seen; verify as if it were new.
        let ctx = Context {
            highest_seen: None,
            ..ctx
        };
        let Ok(ann) = verify::announcement(&ctx, &snap.announcement) else {
            return;
        };
        if self.highest != Some((ann.sequence, ann.manifest_digest)) {
            return;
        }
        let release = match &snap.manifest {
            Some(bytes) => {
                match self
                    .config
                    .releases
                    .verify(&ctx, self.trust_digest, &ann, bytes.clone())
                {
                    Ok(r) => Some(r),
                    Err(_) => return,
                }
            }
            None => None,
        };
        let mut cur = Current {
            ann,
            ann_bytes: snap.announcement,
            phase: Phase::FetchingManifest,
            release: None,
            sched: None,
            wave: None,
            waves: Waves::default(),
            manifest_fetch: ManifestFetch::default(),
            last_progress: Instant::ZERO,
            served: None,
        };
        for c in &snap.controls {
            if let Ok(wc) = verify::wave_control(&self.config.trust, c, ctx.now)
                && wc.sequence == cur.ann.sequence
                && wc.manifest_digest == cur.ann.manifest_digest
                && cur.waves.counter.is_none_or(|k| wc.counter > k)
            {
                cur.waves.apply(&wc, c.clone());
            }
        }
        self.cur = Some(cur);
        match (release, snap.have) {
            (Some(release), Some(have)) if have.len() as usize == release.chunks.len() => {
                let committed_here = self.committed == Some(release.manifest.sequence);
                if let Some(cur) = &mut self.cur {
                    cur.wave = Some(shoal_protocol::waves::wave_of(
                        &release.manifest.rollout,
                        &self.id,
                        &release.manifest.fleet,
                        release.manifest.sequence,
                    ));
                    cur.release = Some(release.clone());
                }
                if committed_here {
                    self.committed_release = Some(release);
                }
                match snap.phase {
                    Phase::FetchingManifest | Phase::Fetching | Phase::Staged => {
                        self.install_have(have)
                    }
                    Phase::Applying | Phase::Running => {
                        // Interrupted mid-apply: the runtime is back on the committed release,
                        // and this sequence may not be applied again. It failed.
                        self.finish_restore(have, snap.phase);
                        self.fail("interrupted by a restart while applying".to_string());
                    }
                    other => self.finish_restore(have, other),
                }
            }
            _ => self.fetch_manifest(),
        }
    }

    fn finish_restore(&mut self, have: Bitfield, phase: Phase) {
        if let Some(cur) = &mut self.cur {
            cur.sched = Some(Scheduler::new(have));
            cur.phase = phase;
        }
    }
}

impl Waves {
    pub(super) fn apply(&mut self, wc: &WaveControl, bytes: Vec<u8>) {
        self.counter = Some(wc.counter);
        match wc.action {
            WaveAction::Open { wave } => {
                self.open = Some(wave);
                self.last_open = Some((wc.counter, bytes));
                return;
            }
            WaveAction::Pause => self.paused = true,
            WaveAction::Resume => self.paused = false,
            WaveAction::Halt => self.halted = true,
        }
        self.last_other = Some((wc.counter, bytes));
    }

    pub(super) fn controls(&self) -> Vec<Vec<u8>> {
        let mut v: Vec<&(u64, Vec<u8>)> = self
            .last_open
            .iter()
            .chain(self.last_other.iter())
            .collect();
        v.sort_by_key(|(c, _)| *c);
        v.into_iter().map(|(_, b)| b.clone()).collect()
    }
}
