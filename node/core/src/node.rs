//! [`Node`]: the state machine's data, getters and input dispatch; how it behaves is its
//! [`Config`] ([`super::config`]). The handlers live by topic: gossip and trust in
//! [`super::gossip`], peers and availability in [`super::peers`], the manifest in
//! [`super::manifest`], chunk fetching in [`super::chunks`] (chunk choice in [`super::fetch`],
//! the site's import ring in [`super::ring`]), serving in [`super::upload`], activation and
//! reports in [`super::activate`], snapshots in [`super::persist`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use shoal_protocol::verify::{self, Context, VerifyError};
use shoal_protocol::{
    Announcement, DeviceId, DeviceState, Digest, ReleaseSeq, UnixTime, WaveControl,
};

use super::bitfield::Bitfield;
use super::config::Config;
use super::fetch::{Class, Scheduler};
use super::release::{Release, ReleaseCache};
use super::rng::Rng;
use super::snapshot::{Phase, ReleaseSnapshot, Snapshot};
use super::types::{Input, Instant, Output, PeerId, PeerInfo};

/// The in-flight cap for `p`: `base`, plus one per 10 ms of RTT, at most `4 * base`. A peer on
/// another site gets at most `remote_horizon_ms` divided by its time per chunk (at least one),
/// and one until it has delivered: its site's WAN uplink is shared by every request from
/// every other site, and a deep queue there only makes each chunk wait (see
/// [`Config::remote_horizon_ms`]).
pub(super) fn per_peer_cap(base: u32, p: &Peer, remote_horizon_ms: u64) -> u32 {
    let cap = base
        .saturating_add(p.info.rtt_ms / 10)
        .min(base.saturating_mul(4));
    if p.class != Class::Remote || remote_horizon_ms == 0 {
        return cap;
    }
    match p.chunk_ms {
        Some(per_chunk) => {
            let fits = remote_horizon_ms / per_chunk.max(1);
            cap.min(u32::try_from(fits).unwrap_or(u32::MAX).max(1))
        }
        None => 1,
    }
}

/// Most fetches of one chunk in flight at once in the endgame.
pub(super) const ENDGAME_COPIES: usize = 2;

/// Most site members ([`Input::SiteMembers`]) remembered.
pub const MAX_SITE_MEMBERS: usize = 16_384;

/// Most banned peers remembered at once.
pub const MAX_BANNED: usize = 4096;

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
    /// Moving average (1/4) of the time this peer took per chunk, from the later of the
    /// request and its previous delivery to the delivery (its service time when requests
    /// queue behind each other), in milliseconds; `None` until it delivered.
    pub(super) chunk_ms: Option<u64>,
    /// When it last delivered a chunk.
    pub(super) last_delivery: Instant,
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
    /// This device is on the latest `Hold` list (an operator pinned it to another release).
    pub(super) held: bool,
    /// (counter, envelope bytes) of the latest `Open`, the latest `Hold` and the latest other
    /// action: together they say everything a late joiner needs.
    pub(super) last_open: Option<(u64, Vec<u8>)>,
    pub(super) last_hold: Option<(u64, Vec<u8>)>,
    pub(super) last_other: Option<(u64, Vec<u8>)>,
}

#[derive(Debug, Default)]
pub(super) struct ManifestFetch {
    pub(super) in_flight: Option<(PeerId, Instant)>,
    pub(super) tried: BTreeSet<PeerId>,
    pub(super) retry_at: Option<Instant>,
    pub(super) rounds: u32,
    /// When this node first looked for the manifest: a node that is not its site's manifest
    /// importer waits up to [`Config::manifest_wait_ms`] from here for a peer to hold it.
    pub(super) since: Option<Instant>,
    /// Until when it waits (a wake-up only: a peer that gets the manifest ends the wait).
    pub(super) wait_until: Option<Instant>,
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
    /// When a chunk was last stored (or fetching began): [`super::ring::Idle::All`] counts
    /// from here.
    pub(super) last_progress: Instant,
    /// When a chunk was last stored from outside the site (or fetching began):
    /// [`super::ring::Idle::Vouched`] counts from here, so the site's progress on chunks it
    /// already holds does not keep postponing the import of those nobody imports.
    pub(super) last_import: Instant,
    /// When a same-site peer last advertised a chunk this node lacks that no same-site peer
    /// held before (its site imported it), or this node imported one:
    /// [`super::ring::Idle::All`] for a starved node counts from here (see
    /// [`super::ring::Idle::after`]).
    pub(super) last_site_import: Instant,
    /// The origin's serve counts (super-seeding), once it serves.
    pub(super) served: Option<super::served::Served>,
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
    pub(super) peers: super::peermap::PeerMap<Peer>,
    /// Peers in preference order: class, RTT, id.
    pub(super) order: Vec<PeerId>,
    /// Scratch of [`Node::schedule`]: each peer's fetch cap in `order`, `None` in backoff.
    pub(super) order_caps: Vec<Option<u32>>,
    /// Per peer of `order`, in the same order: its `backoff_until` and its fetch cap
    /// ([`per_peer_cap`]), so [`Node::schedule`] does not look every peer up on each pass.
    /// Emptied when `order` or a peer's RTT changes (rebuilt by the next pass); a backoff is
    /// updated in place ([`Node::set_backoff`]).
    pub(super) order_meta: Vec<(Instant, u32)>,
    pub(super) banned: BTreeMap<PeerId, Instant>,
    /// A verified wave control for a release above the current one, kept until it is announced.
    pub(super) pending_control: Option<(WaveControl, Vec<u8>)>,
    pub(super) persist_due: Option<Instant>,
    /// A snapshot to re-verify at the first wall clock.
    pub(super) resume_from: Option<ReleaseSnapshot>,
    /// Uploads admitted and not yet finished.
    pub(super) uploads: u32,
    /// Other devices of this node's site, connected or not: the first eight bytes of their ids
    /// (all the import ring needs; 8 bytes a member), sorted.
    pub(super) site_members: Vec<u64>,
    /// The latest `backoff_until` ever set: before it, [`Node::poll_timeout`] looks for the
    /// next peer to come out of backoff; after it, no peer is in backoff.
    pub(super) backoff_horizon: Instant,
    /// The earliest `backoff_until` later than the time it was found (inner `None`: no peer
    /// was in backoff then); outer `None`: not known (a peer left, or the peer holding it got
    /// another backoff). Spares [`Node::poll_timeout`] a scan of every peer on each call while
    /// a backoff is running; see [`Node::next_backoff_after`].
    pub(super) next_backoff: std::cell::Cell<Option<Option<Instant>>>,
    /// Rotation envelopes accepted after the configured trust root, oldest first.
    pub(super) trust_chain: Vec<Vec<u8>>,
    /// The wall clock never reads below this (the last snapshot's time on resume).
    pub(super) wall_floor: UnixTime,
    /// Moving average of a successful fetch's duration, in milliseconds.
    pub(super) fetch_ms_avg: Option<u64>,
    /// The state last reported on a release, with its detail: reported again (freshly signed)
    /// when an origin connects, since a report sent while no origin was connected reached
    /// nobody and the rollout would wait for it.
    pub(super) last_report: Option<(ReleaseSeq, DeviceState, String)>,
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
            peers: super::peermap::PeerMap::default(),
            order: Vec::new(),
            order_caps: Vec::new(),
            order_meta: Vec::new(),
            banned: BTreeMap::new(),
            pending_control: None,
            persist_due: None,
            resume_from: None,
            uploads: 0,
            site_members: Vec::new(),
            backoff_horizon: Instant::ZERO,
            next_backoff: std::cell::Cell::new(None),
            trust_chain: Vec::new(),
            wall_floor: UnixTime(0),
            fetch_ms_avg: None,
            last_report: None,
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
        node.wall_floor = snapshot.saved_at;
        node.resume_trust(&snapshot.trust_chain);
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
        let relayed = super::types::GossipMessage::Announcement(announcement.clone()).encode();
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
            last_import: Instant::ZERO,
            last_site_import: Instant::ZERO,
            served: None,
        });
        self.accept_release_with(release, Some(full));
        // Besides the gossip the caller publishes: connected peers hear of it over the data
        // plane too (a site that gossip did not reach during a partition still learns of it
        // once the connection carries traffic again).
        let me = self.id;
        self.relay(me, &relayed);
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

    /// Whether [`Input::PeerHaveChunk`] from `peer` for chunk `index` of `sequence` would only
    /// move the node's clock: a device that holds the chunk decides nothing from who else
    /// holds it (picking, rarity, the import rules and the idle fallback only look at chunks
    /// it needs, and a peer's claims on held chunks never make it pick again), so once the
    /// peer's availability is known such a HAVE is dropped. About half of all HAVEs are: on
    /// every link, the second of the two holders to get a chunk tells the first. The origin
    /// counts holders of every chunk (super-seeding) and keeps them all. A driver may skip
    /// its output and timer handling after such an input.
    pub fn ignores_have(&self, peer: &PeerId, sequence: ReleaseSeq, index: u32) -> bool {
        !self.config.origin
            && self.cur.as_ref().is_some_and(|c| {
                c.ann.sequence == sequence
                    && c.sched
                        .as_ref()
                        .is_some_and(|s| s.have.get(index) && s.knows(peer))
            })
    }

    /// [`Node::handle`] of [`Input::PeerHaveChunk`] `{ peer, sequence, index }`; returns
    /// whether the HAVE was news, that is not one [`Node::ignores_have`] drops (asked before it
    /// is handled). The same as asking `ignores_have` and then handling the input, with one
    /// lookup of the peer fewer: a driver delivering HAVEs in bulk skips its output and timer
    /// handling when none was news.
    pub fn handle_have_chunk(
        &mut self,
        now: Instant,
        peer: PeerId,
        sequence: ReleaseSeq,
        index: u32,
    ) -> bool {
        self.now = self.now.max(now);
        if self.ignores_have(&peer, sequence, index) {
            return false;
        }
        self.on_peer_have_chunk_news(peer, sequence, index);
        true
    }

    /// The stored-chunk bitfield of the current release.
    pub fn have(&self) -> Option<&Bitfield> {
        Some(&self.cur.as_ref()?.sched.as_ref()?.have)
    }

    /// Connected peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The connected peers in the order fetches prefer them: same site first, then by RTT, then
    /// by id.
    pub fn peer_order(&self) -> &[PeerId] {
        &self.order
    }

    /// Until when a connected `peer` is in backoff after a failure (an instant already past when
    /// it is not); `None` for a peer that is not connected.
    pub fn backoff_until(&self, peer: &PeerId) -> Option<Instant> {
        self.peers.get(peer).map(|p| p.backoff_until)
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
            trust_chain: self.trust_chain.clone(),
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
            if cur.phase == Phase::FetchingManifest
                && let Some(w) = cur.manifest_fetch.wait_until
                && w > self.now
            {
                at(w);
            }
            if cur.phase == Phase::Fetching
                && let Some(s) = &cur.sched
                && let Some(t) = s.share().idle.next_step_at(
                    self.now,
                    cur.last_import,
                    cur.last_import.max(cur.last_site_import),
                    cur.last_progress,
                    self.config.idle_fallback_ms,
                )
            {
                at(t);
            }
            if matches!(cur.phase, Phase::Fetching | Phase::FetchingManifest)
                && self.backoff_horizon > self.now
                && let Some(b) = self.next_backoff_after(self.now)
            {
                at(b);
            }
        }
        t
    }

    /// The earliest `backoff_until` of a peer later than `now`. Times only go forward and every
    /// change of a backoff goes through [`Node::set_backoff`] (or removes the peer), so a cached
    /// earliest that is still ahead of `now` is the answer; otherwise the peers are scanned.
    fn next_backoff_after(&self, now: Instant) -> Option<Instant> {
        match self.next_backoff.get() {
            Some(None) => return None,
            Some(Some(t)) if t > now => return Some(t),
            _ => {}
        }
        let t = self
            .peers
            .values()
            .map(|p| p.backoff_until)
            .filter(|b| *b > now)
            .min();
        self.next_backoff.set(Some(t));
        t
    }

    /// Handles one input at `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::WallClock(t) => self.on_wall_clock(t),
            Input::PeerConnected { peer, info } => self.on_peer_connected(peer, info),
            Input::SiteMembers { peers } => self.set_site_members(peers),
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
                .map(|s| {
                    s.wake(now);
                    s.straggle(now, ENDGAME_COPIES);
                    s.expire(now)
                })
                .unwrap_or_default();
            for f in expired {
                self.outputs.push_back(Output::CancelFetch {
                    peer: f.peer,
                    sequence: seq,
                    index: f.index,
                });
                // A peer that does not deliver in time has its claims set aside for a while, so
                // a trickling peer's claims stop blocking imports from elsewhere.
                if let Some(s) = self.cur.as_mut().and_then(|c| c.sched.as_mut()) {
                    s.suspend(&f.peer, now);
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

    pub(super) fn on_wall_clock(&mut self, t: UnixTime) {
        let t = self.floor_wall_clock(t);
        self.wall = Some((t, self.now));
        if let Some(snap) = self.resume_from.take() {
            self.restore(snap);
        }
    }

    pub(super) fn ctx(&self) -> Option<Context<'_>> {
        Some(Context {
            trust: &self.config.trust,
            arch: &self.config.arch,
            highest_seen: self.highest,
            now: self.wall_now()?,
        })
    }
}
