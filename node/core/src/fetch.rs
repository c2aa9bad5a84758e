//! The chunk scheduler: what is stored, what is in flight, who has what, and which chunk to ask
//! a given peer for next.
//!
//! State per release is compact: three bitfields over the unique chunk list (stored, needed =
//! neither stored nor in flight, and one per peer) and two `u16` availability counts per chunk
//! (non-origin peers holding it; same-site peers holding it). In-flight fetches are a short list
//! (bounded by [`super::Config::max_in_flight_total`]).
//!
//! Picking for a peer scans the words of `peer ∧ needed` from a random word, skips chunks that
//! the peer's class should not serve (a remote peer only what no same-site peer has, the origin
//! only what no other peer has), and takes the rarest of the first `sample` candidates, stopping
//! early at a candidate that cannot be beaten. With fewer candidates than `sample` this is exact
//! rarest-first with a random tie-break; above, it is sampled rarest-first at a bounded cost.

use super::bitfield::Bitfield;
use super::rng::Rng;
use super::types::{Instant, PeerId};

/// How a peer is preferred: lower first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Class {
    /// Same site.
    Local,
    /// Another site (or unknown).
    Remote,
    /// The builder's origin node.
    Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InFlight {
    pub(crate) peer: PeerId,
    pub(crate) index: u32,
    pub(crate) deadline: Instant,
    /// When it may be asked of another peer too (a straggler), unless it arrived;
    /// [`InFlight::STRAGGLED`] once it has straggled.
    pub(crate) straggle_at: Instant,
}

impl InFlight {
    const STRAGGLED: Instant = Instant(u64::MAX);

    /// Still on time: it counts as a copy in flight. A straggler counts only toward the hard
    /// cap of [`Scheduler::copies_allowed`], so a chunk whose copies went to tricklers is asked
    /// of one more peer instead of waiting for their deadlines.
    fn on_time(&self) -> bool {
        self.straggle_at != Self::STRAGGLED
    }
}

/// What one peer has, and whether the last pick for it found nothing (until something it has
/// becomes needed again, it is not scanned).
#[derive(Debug)]
struct Avail {
    class: Class,
    bits: Bitfield,
    exhausted: bool,
    /// It delivered a verified chunk of this release to this node: its claims now keep this
    /// node from importing those chunks from farther away (see [`Scheduler::vouch`]).
    vouched: bool,
    /// Its claims are set aside until then (see [`Scheduler::suspend`]): they count for
    /// nothing and it is not asked.
    suspended_until: Option<Instant>,
    /// Suspensions since it last delivered: each one lasts twice as long as the one before.
    strikes: u8,
}

/// The first suspension of a peer's claims, in milliseconds (see [`Scheduler::suspend`]).
pub(crate) const SUSPEND_MS: u64 = 1_000;

/// Which chunks this node imports into its site. Consistent hashing: each node of the site and
/// each chunk get a point on a ring (salted per release); a node imports the chunks whose points
/// fall between its own point and the next point of a same-site peer it sees. With a full view
/// of the site (a LAN with mDNS) every chunk has exactly one importer; with partial views a few
/// chunks get two (a node that does not see the owner also claims them), rarely more.
///
/// A member that does not import (it is off, or byzantine) would leave its arc unimported, so
/// idleness (no chunk stored for a while) widens the share in two steps: first
/// ([`Idle::Vouched`]) to the node's arc on a second ring made only of the same-site peers that
/// vouched for themselves by delivering a verified chunk, so the stuck chunks get a few
/// importers each (one per node whose vouched ring covers them) instead of one per node of the
/// site; then ([`Idle::All`], three times as long) to everything, so a site never stalls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Share {
    /// This node's arc among all the site members it knows.
    pub(crate) arc: Arc,
    /// This node's arc among the vouched same-site peers, used while `idle`.
    pub(crate) idle_arc: Arc,
    pub(crate) salt: u64,
    pub(crate) idle: Idle,
}

/// How long a node has gone without storing a chunk, in steps of the idle fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Idle {
    /// Making progress: only its own arc.
    No,
    /// Idle once: its arc among the vouched same-site peers too.
    Vouched,
    /// Idle three times as long: anything the site lacks.
    All,
}

impl Idle {
    /// The idleness `since_import` ms after the last chunk stored from outside the site and
    /// `since_progress` ms after the last chunk stored at all, with the fallback time
    /// `fallback_ms`. `starved`: no chunk this node needs is held by a vouched same-site peer,
    /// so whatever it still lacks has to come from outside the site. Without progress for
    /// three fallback times a node is idle whatever it sees; otherwise only a starved node is,
    /// so a node that finished its own imports early keeps fetching from its site instead of
    /// importing the shares of slower members.
    ///
    /// The last step (everything) counts for a starved node from `since_site_import`: the
    /// later of its own last import and the last time a same-site peer advertised a chunk new
    /// to the site. While the site's importers make progress, a node whose own imports are
    /// slow (a thin WAN link) does not import everybody's share a second time; the step for
    /// members that import nothing (the vouched ring) still counts from its own imports.
    /// (Counting from its own imports only, constrained-wan at 200 devices / 64 MiB imported
    /// 1.27 F per site instead of 1.03 F.)
    pub(crate) fn after(
        since_import: u64,
        since_site_import: u64,
        since_progress: u64,
        fallback_ms: u64,
        starved: bool,
    ) -> Idle {
        let long = fallback_ms.saturating_mul(3);
        if since_progress >= long || (starved && since_site_import >= long) {
            Idle::All
        } else if starved && since_import >= 2 * fallback_ms {
            Idle::Vouched
        } else {
            Idle::No
        }
    }

    /// When, after `now`, the idleness may next grow without any input (a node that is not
    /// starved becomes idle only through an input, which re-evaluates it).
    pub(crate) fn next_step_at(
        self,
        now: Instant,
        last_import: Instant,
        last_site_import: Instant,
        last_progress: Instant,
        fallback_ms: u64,
    ) -> Option<Instant> {
        let long = fallback_ms.saturating_mul(3);
        let steps = [
            (Idle::Vouched, last_import.plus_ms(2 * fallback_ms)),
            (Idle::All, last_site_import.plus_ms(long)),
            (Idle::All, last_progress.plus_ms(long)),
        ];
        steps
            .into_iter()
            .filter(|(level, at)| *level > self && *at > now)
            .map(|(_, at)| at)
            .min()
    }
}

/// An arc `[lo, hi)` of the ring, wrapping when `hi <= lo`; `all` when the ring has no other
/// point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arc {
    pub(crate) lo: u64,
    pub(crate) hi: u64,
    pub(crate) all: bool,
}

impl Arc {
    /// The arc of the point `me` on a ring with the points `others` (any order).
    pub(crate) fn new(me: u64, others: &mut [u64]) -> Arc {
        others.sort_unstable();
        let hi = others
            .iter()
            .copied()
            .find(|p| *p > me)
            .or_else(|| others.first().copied())
            .unwrap_or(me);
        Arc {
            lo: me,
            hi,
            all: others.is_empty(),
        }
    }

    pub(crate) fn contains(&self, p: u64) -> bool {
        if self.all {
            true
        } else if self.lo < self.hi {
            self.lo <= p && p < self.hi
        } else {
            p >= self.lo || p < self.hi
        }
    }
}

impl Share {
    /// The share of the node at point `me` among same-site peers at `others`, of which
    /// `vouched` vouched for themselves (any order).
    pub(crate) fn new(
        me: u64,
        others: &mut [u64],
        vouched: &mut [u64],
        salt: u64,
        idle: Idle,
    ) -> Share {
        Share {
            arc: Arc::new(me, others),
            idle_arc: Arc::new(me, vouched),
            salt,
            idle,
        }
    }

    pub(crate) fn mine(&self, i: u32) -> bool {
        match self.idle {
            Idle::All => true,
            Idle::Vouched => {
                let p = mix64(u64::from(i) ^ self.salt);
                self.arc.contains(p) || self.idle_arc.contains(p)
            }
            Idle::No => self.arc.contains(mix64(u64::from(i) ^ self.salt)),
        }
    }
}

/// SplitMix64's finaliser: a fixed, well-spread hash of a 64-bit value.
pub(crate) fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Debug)]
pub(crate) struct Scheduler {
    share: Share,
    pub(crate) have: Bitfield,
    need: Bitfield,
    count_any: Vec<u16>,
    count_local: Vec<u16>,
    /// `count_local` over vouched peers only: what keeps a remote peer from being asked. A
    /// same-site peer that claims chunks it never delivers (a false advertiser, a trickler, a
    /// corrupter) cannot hold back the site's imports.
    vouched_local: Vec<u16>,
    peer_have: super::peermap::PeerMap<Avail>,
    pub(crate) in_flight: Vec<InFlight>,
    /// Chunks in flight that are needed again (their fetch straggles): never asked twice of
    /// the same peer.
    again: Bitfield,
}

impl Scheduler {
    pub(crate) fn new(have: Bitfield) -> Scheduler {
        let len = have.len();
        let mut need = Bitfield::full(len);
        for i in have.ones() {
            need.clear(i);
        }
        Scheduler {
            share: Share {
                arc: Arc {
                    lo: 0,
                    hi: 0,
                    all: true,
                },
                idle_arc: Arc {
                    lo: 0,
                    hi: 0,
                    all: true,
                },
                salt: 0,
                idle: Idle::No,
            },
            have,
            need,
            count_any: vec![0; len as usize],
            count_local: vec![0; len as usize],
            vouched_local: vec![0; len as usize],
            peer_have: super::peermap::PeerMap::default(),
            in_flight: Vec::new(),
            again: Bitfield::new(len),
        }
    }

    pub(crate) fn len(&self) -> u32 {
        self.have.len()
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    fn count(&mut self, class: Class, vouched: bool, i: u32, up: bool) {
        let i = i as usize;
        let bump = |c: &mut u16| {
            *c = if up {
                c.saturating_add(1)
            } else {
                c.saturating_sub(1)
            }
        };
        if class != Class::Origin {
            bump(&mut self.count_any[i]);
        }
        if class == Class::Local {
            bump(&mut self.count_local[i]);
            if vouched {
                bump(&mut self.vouched_local[i]);
            }
        }
    }

    /// `peer` delivered a verified chunk: from now on its claims count as holdings that make
    /// importing from farther away unnecessary. Returns whether that is news.
    pub(crate) fn vouch(&mut self, peer: &PeerId) -> bool {
        self.resume(peer);
        let Some(a) = self.peer_have.get_mut(peer) else {
            return false;
        };
        a.strikes = 0;
        if a.vouched {
            return false;
        }
        a.vouched = true;
        if a.class == Class::Local {
            for i in a.bits.ones() {
                let c = &mut self.vouched_local[i as usize];
                *c = c.saturating_add(1);
            }
        }
        true
    }

    /// Whether no needed chunk is held by a vouched same-site peer (see [`Idle::after`]).
    pub(crate) fn starved(&self) -> bool {
        self.need
            .ones()
            .all(|i| self.vouched_local[i as usize] == 0)
    }

    /// Same-site peers that vouched for themselves (delivered a verified chunk).
    pub(crate) fn vouched_local_peers(&self) -> impl Iterator<Item = &PeerId> {
        self.peer_have
            .iter()
            .filter(|(_, a)| a.vouched && a.class == Class::Local)
            .map(|(p, _)| p)
    }

    /// Replaces what `peer` is known to have.
    /// Replacing a bitfield of the same class counts only the bits that changed, so a driver
    /// may send coalesced bitfields instead of one HAVE per chunk at `O(words + changes)`.
    pub(crate) fn set_peer_have(&mut self, peer: PeerId, class: Class, have: Bitfield) {
        self.resume(&peer);
        if let Some(old) = self.peer_have.get(&peer)
            && old.class == class
            && old.bits.len() == have.len()
        {
            let vouched = old.vouched;
            let old_words = old.bits.words().to_vec();
            let mut lost = false;
            let mut gained_needed = false;
            for (wi, (&o, &n)) in old_words.iter().zip(have.words()).enumerate() {
                let (mut added, mut removed) = (n & !o, o & !n);
                gained_needed |= added & self.need.words()[wi] != 0;
                // Claims on held chunks change no pick (and a device does not record them).
                lost |= removed & !self.have.words()[wi] != 0;
                while added != 0 {
                    self.count(
                        class,
                        vouched,
                        wi as u32 * 64 + added.trailing_zeros(),
                        true,
                    );
                    added &= added - 1;
                }
                while removed != 0 {
                    self.count(
                        class,
                        vouched,
                        wi as u32 * 64 + removed.trailing_zeros(),
                        false,
                    );
                    removed &= removed - 1;
                }
            }
            if lost {
                self.unexhaust_all();
            }
            if let Some(a) = self.peer_have.get_mut(&peer) {
                a.bits = have;
                a.exhausted &= !gained_needed;
            }
            return;
        }
        let strikes = self.peer_have.get(&peer).map_or(0, |a| a.strikes);
        let vouched = self.forget_peer_have(&peer);
        for i in have.ones() {
            self.count(class, vouched, i, true);
        }
        self.peer_have.insert(
            peer,
            Avail {
                class,
                bits: have,
                exhausted: false,
                vouched,
                suspended_until: None,
                strikes,
            },
        );
    }

    /// Whether `peer`'s availability is known (it advertised something since it connected)
    /// and its claims are not suspended (a HAVE brings them back, see [`Scheduler::suspend`]).
    pub(crate) fn knows(&self, peer: &PeerId) -> bool {
        self.peer_have
            .get(peer)
            .is_some_and(|a| a.suspended_until.is_none())
    }

    /// `peer` has chunk `i` (a HAVE). Returns whether that was news.
    pub(crate) fn peer_has(&mut self, peer: PeerId, class: Class, i: u32) -> bool {
        let len = self.len();
        let needed = self.need.get(i);
        self.resume(&peer);
        let entry = self.peer_have.entry(peer).or_insert_with(|| Avail {
            class,
            bits: Bitfield::new(len),
            exhausted: false,
            vouched: false,
            suspended_until: None,
            strikes: 0,
        });
        if entry.bits.set(i) {
            entry.exhausted &= !needed;
            let (class, vouched) = (entry.class, entry.vouched);
            self.count(class, vouched, i, true);
            true
        } else {
            false
        }
    }

    /// Sets `peer`'s claims aside (it failed to deliver in time): they no longer keep this node
    /// from importing those chunks elsewhere or from asking the origin, it is not asked, and
    /// it has to deliver again before its claims hold back imports. Unlike forgetting them,
    /// the claims come back after [`SUSPEND_MS`] (doubled per suspension since it last
    /// delivered, up to 32 times), or at once when it advertises: a peer that is merely slow
    /// (a congested link right after a partition heals, a loaded machine) and will never
    /// advertise again (it is complete) is not lost for good. The origin's claims too: it
    /// never advertises again either, and keeping them through a straggle sent more requests
    /// to a busy origin (no faults, 500 devices: 1.71 s instead of 1.66 s).
    pub(crate) fn suspend(&mut self, peer: &PeerId, now: Instant) {
        let Some(a) = self.peer_have.get_mut(peer) else {
            return;
        };
        if a.suspended_until.is_some() {
            return;
        }
        let (class, vouched) = (a.class, a.vouched);
        a.vouched = false;
        a.suspended_until = Some(now.plus_ms(SUSPEND_MS << a.strikes.min(5)));
        a.strikes = a.strikes.saturating_add(1);
        let bits: Vec<u32> = a.bits.ones().collect();
        for i in bits {
            self.count(class, vouched, i, false);
        }
        // Fewer holders: a remote peer or the origin may now be asked for more.
        self.unexhaust_all();
    }

    /// Restores `peer`'s suspended claims (unvouched).
    fn resume(&mut self, peer: &PeerId) {
        let Some(a) = self.peer_have.get_mut(peer) else {
            return;
        };
        if a.suspended_until.take().is_none() {
            return;
        }
        a.exhausted = false;
        let class = a.class;
        let bits: Vec<u32> = a.bits.ones().collect();
        for i in bits {
            self.count(class, false, i, true);
        }
    }

    /// Restores the claims whose suspension ended at or before `now`.
    pub(crate) fn wake(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .peer_have
            .iter()
            .filter(|(_, a)| a.suspended_until.is_some_and(|t| t <= now))
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.resume(&p);
        }
    }

    /// Forgets what `peer` advertised (it lacked a chunk it advertised): its claims no longer
    /// keep this node from importing those chunks elsewhere, and it has to deliver again
    /// before they do; new HAVEs from it count again for picking.
    /// The origin's claims are kept: it holds every chunk by construction.
    pub(crate) fn distrust(&mut self, peer: &PeerId) {
        if self
            .peer_have
            .get(peer)
            .is_some_and(|a| a.class != Class::Origin)
        {
            self.forget_peer_have(peer);
        }
    }

    /// Forgets `peer`'s availability; returns whether it was vouched for.
    fn forget_peer_have(&mut self, peer: &PeerId) -> bool {
        if let Some(a) = self.peer_have.remove(peer) {
            if a.suspended_until.is_none() {
                for i in a.bits.ones() {
                    self.count(a.class, a.vouched, i, false);
                }
            }
            // Fewer holders: a remote peer or the origin may now be asked for more.
            self.unexhaust_all();
            a.vouched
        } else {
            false
        }
    }

    fn unexhaust_all(&mut self) {
        for a in self.peer_have.values_mut() {
            a.exhausted = false;
        }
    }

    /// Changes a peer's class, keeping its availability.
    pub(crate) fn reclass_peer(&mut self, peer: PeerId, class: Class) {
        if let Some(a) = self.peer_have.get(&peer)
            && a.class != class
        {
            let bits = a.bits.clone();
            self.set_peer_have(peer, class, bits);
        }
    }

    /// Forgets `peer` and returns its in-flight fetches (their chunks are needed again).
    pub(crate) fn remove_peer(&mut self, peer: &PeerId) -> Vec<InFlight> {
        self.forget_peer_have(peer);
        let mut gone = Vec::new();
        self.in_flight.retain(|f| {
            if f.peer == *peer {
                gone.push(*f);
                false
            } else {
                true
            }
        });
        for f in &gone {
            self.release_chunk(f.index);
        }
        gone
    }

    fn release_chunk(&mut self, i: u32) {
        if !self.in_flight.iter().any(|f| f.index == i) {
            self.again.clear(i);
        }
        if !self.have.get(i) && !self.in_flight.iter().any(|f| f.index == i) && self.need.set(i) {
            for a in self.peer_have.values_mut() {
                if a.bits.get(i) {
                    a.exhausted = false;
                }
            }
        }
    }

    pub(crate) fn in_flight_of(&self, peer: &PeerId) -> u32 {
        self.in_flight.iter().filter(|f| f.peer == *peer).count() as u32
    }

    /// Same-site peers known to hold chunk `i` (vouched or not).
    pub(crate) fn local_holders(&self, i: u32) -> u16 {
        self.count_local.get(i as usize).copied().unwrap_or(0)
    }

    pub(crate) fn is_needed(&self, i: u32) -> bool {
        self.need.get(i)
    }

    /// Sets the site share; peers are scanned again if it changed.
    pub(crate) fn set_share(&mut self, share: Share) {
        if share != self.share {
            self.share = share;
            self.unexhaust_all();
        }
    }

    pub(crate) fn share(&self) -> Share {
        self.share
    }

    /// Whether a peer of `class` may be asked for chunk `i`: a same-site peer for anything; a
    /// remote peer only for what no vouched same-site peer has, the origin only for what no
    /// other peer claims, and both only for this node's share of the site's imports. (Counting
    /// only vouched claims for the origin too was measured: it sent more requests to a busy
    /// origin and made fleet-10k's tail about 6% longer.)
    pub(crate) fn class_may_serve(&self, class: Class, i: u32) -> bool {
        match class {
            Class::Local => true,
            Class::Remote => self.vouched_local[i as usize] == 0 && self.share.mine(i),
            Class::Origin => self.count_any[i as usize] == 0 && self.share.mine(i),
        }
    }

    /// The chunk to ask `peer` for next, if any; see the module docs.
    pub(crate) fn pick(&mut self, peer: &PeerId, rng: &mut Rng, sample: u32) -> Option<u32> {
        let found = self.pick_scan(peer, rng, sample);
        if found.is_none()
            && let Some(a) = self.peer_have.get_mut(peer)
        {
            a.exhausted = true;
        }
        found
    }

    /// The origin's pick after the rounds: a needed chunk of this node's share that no vouched
    /// same-site peer holds, whoever else does (the rule for a remote peer; see
    /// `Node::overflow_to_origin`). Its exhaustion flag is neither read nor set (it tracks
    /// the origin's own rule).
    pub(crate) fn pick_overflow(&self, origin: &PeerId, rng: &mut Rng, sample: u32) -> Option<u32> {
        self.pick_scan_as(origin, rng, sample, true)
    }

    fn pick_scan(&self, peer: &PeerId, rng: &mut Rng, sample: u32) -> Option<u32> {
        self.pick_scan_as(peer, rng, sample, false)
    }

    fn pick_scan_as(
        &self,
        peer: &PeerId,
        rng: &mut Rng,
        sample: u32,
        overflow: bool,
    ) -> Option<u32> {
        let a = self.peer_have.get(peer)?;
        if (a.exhausted && !overflow) || a.suspended_until.is_some() {
            return None;
        }
        let class = if overflow { &Class::Remote } else { &a.class };
        let words = a.bits.words();
        let n = words.len();
        if n == 0 {
            return None;
        }
        let floor = if *class == Class::Origin { 0 } else { 1 };
        let start = rng.below(n as u64) as usize;
        let mut best: Option<(u16, u32)> = None;
        let mut seen = 0u32;
        for k in 0..n {
            let wi = (start + k) % n;
            let mut w = words[wi] & self.need.words()[wi];
            while w != 0 {
                let i = wi as u32 * 64 + w.trailing_zeros();
                w &= w - 1;
                if !self.class_may_serve(*class, i)
                    || self.asked_of(peer, i)
                    || self.again_for_vouched(a, i)
                {
                    continue;
                }
                let r = self.count_any[i as usize];
                if best.is_none_or(|(br, _)| r < br) {
                    best = Some((r, i));
                }
                seen += 1;
                if r <= floor || seen >= sample.max(1) {
                    return best.map(|(_, i)| i);
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Whether chunk `i` may be asked of one more peer: fewer than `max_copies` copies on time,
    /// and at most one more than that in all, or in the endgame (every missing chunk is in
    /// flight) twice that. (Without the overall cap, a loaded machine where every fetch
    /// straggled asked each chunk of every peer in turn, and eight daemons on loopback took
    /// minutes instead of seconds. With three copies at most, a node whose last chunk went to
    /// three tricklers waited for their 5 s deadlines with nothing else to do.)
    fn copies_allowed(&self, i: u32, max_copies: usize) -> bool {
        let (mut on_time, mut all) = (0, 0);
        for f in self.in_flight.iter().filter(|f| f.index == i) {
            all += 1;
            on_time += usize::from(f.on_time());
        }
        let cap = if self.nothing_needed() {
            2 * max_copies
        } else {
            max_copies
        };
        on_time < max_copies && all <= cap
    }

    /// Whether chunk `i` straggled and should be asked again only of a peer that delivered
    /// before: `a` (a same-site peer) never did, and a same-site peer that did holds it. A
    /// chunk whose first copy went to a trickler then does not go to the next trickler.
    fn again_for_vouched(&self, a: &Avail, i: u32) -> bool {
        !a.vouched
            && a.class == Class::Local
            && self.again.get(i)
            && self.vouched_local[i as usize] > 0
    }

    /// Whether chunk `i`, needed again while in flight, is in flight from `peer`.
    fn asked_of(&self, peer: &PeerId, i: u32) -> bool {
        self.again.get(i)
            && self
                .in_flight
                .iter()
                .any(|f| f.index == i && f.peer == *peer)
    }

    /// Straggler re-requests: every fetch older than its `straggle_at` with fewer than
    /// `max_copies` copies in flight makes its chunk needed again (it stays in flight), so the
    /// next pass asks another peer for it; the first copy to arrive cancels the others. A
    /// trickling peer then delays a chunk by the straggler time instead of the full deadline.
    /// The straggling peers' claims are set aside for a while (as on a timeout, see
    /// [`Scheduler::suspend`]), so a peer that claims everything and trickles stops blocking
    /// imports from elsewhere.
    pub(crate) fn straggle(&mut self, now: Instant, max_copies: usize) {
        let mut late = Vec::new();
        for f in &mut self.in_flight {
            if f.straggle_at <= now {
                f.straggle_at = InFlight::STRAGGLED;
                late.push((f.peer, f.index));
            }
        }
        for (peer, _) in &late {
            self.suspend(peer, now);
        }
        for (_, i) in late {
            if self.copies_allowed(i, max_copies) && !self.have.get(i) && self.need.set(i) {
                self.again.set(i);
                for a in self.peer_have.values_mut() {
                    if a.bits.get(i) {
                        a.exhausted = false;
                    }
                }
            }
        }
    }

    /// Endgame: nothing is left to ask for but some chunks are still in flight. Returns the
    /// oldest in-flight chunk that `peer` has and is not already fetching, with fewer than
    /// `max_copies` fetches in flight, within the class rules. Never for the origin (the
    /// builder sends a byte once).
    pub(crate) fn pick_endgame(&self, peer: &PeerId, max_copies: usize) -> Option<u32> {
        if !self.nothing_needed() {
            return None;
        }
        let a = self.peer_have.get(peer)?;
        if a.class == Class::Origin || a.suspended_until.is_some() {
            return None;
        }
        // A copy goes to a same-site peer that never delivered only if no one who did has it.
        let unproven = !a.vouched && a.class == Class::Local;
        self.in_flight.iter().map(|f| f.index).find(|&i| {
            a.bits.get(i)
                && self.class_may_serve(a.class, i)
                && !(unproven && self.vouched_local[i as usize] > 0)
                && !self
                    .in_flight
                    .iter()
                    .any(|f| f.index == i && f.peer == *peer)
                && self.copies_allowed(i, max_copies)
        })
    }

    /// Non-origin peers known to hold chunk `i`.
    pub(crate) fn holders(&self, i: u32) -> u16 {
        self.count_any.get(i as usize).copied().unwrap_or(0)
    }

    /// Whether every missing chunk is in flight.
    pub(crate) fn nothing_needed(&self) -> bool {
        self.need.words().iter().all(|w| *w == 0)
    }

    /// Removes and returns every remaining fetch of chunk `i` (it arrived from someone else).
    pub(crate) fn take_duplicates(&mut self, i: u32) -> Vec<InFlight> {
        self.again.clear(i);
        let mut gone = Vec::new();
        self.in_flight.retain(|f| {
            if f.index == i {
                gone.push(*f);
                false
            } else {
                true
            }
        });
        gone
    }

    pub(crate) fn start(
        &mut self,
        peer: PeerId,
        index: u32,
        deadline: Instant,
        straggle_at: Instant,
    ) {
        self.need.clear(index);
        self.in_flight.push(InFlight {
            peer,
            index,
            deadline,
            straggle_at,
        });
    }

    /// Ends the fetch of `index` from `peer`; returns whether it was in flight.
    pub(crate) fn finish(&mut self, peer: &PeerId, index: u32) -> bool {
        let before = self.in_flight.len();
        self.in_flight
            .retain(|f| !(f.peer == *peer && f.index == index));
        let was = self.in_flight.len() != before;
        self.release_chunk(index);
        was
    }

    /// Marks chunk `i` stored; returns whether it was new.
    pub(crate) fn store(&mut self, i: u32) -> bool {
        self.need.clear(i);
        self.again.clear(i);
        self.have.set(i)
    }

    /// Removes and returns the fetches whose deadline is at or before `now`.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<InFlight> {
        let mut gone = Vec::new();
        self.in_flight.retain(|f| {
            if f.deadline <= now {
                gone.push(*f);
                false
            } else {
                true
            }
        });
        for f in &gone {
            self.release_chunk(f.index);
        }
        gone
    }

    /// The next fetch deadline or straggler time.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let wake = self
            .peer_have
            .values()
            .filter_map(|a| a.suspended_until)
            .min();
        self.in_flight
            .iter()
            .map(|f| f.deadline.min(f.straggle_at))
            .chain(wake)
            .min()
    }

    /// Drops every in-flight fetch (the release was superseded or halted).
    pub(crate) fn cancel_all(&mut self) -> Vec<InFlight> {
        let gone = std::mem::take(&mut self.in_flight);
        for f in &gone {
            self.release_chunk(f.index);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_testing::device_key;

    fn peer(n: u64) -> PeerId {
        PeerId::from(device_key(500 + n).public_key())
    }

    fn random_bits(rng: &mut Rng, len: u32) -> Bitfield {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            if rng.below(3) == 0 {
                b.set(i);
            }
        }
        b
    }

    #[test]
    fn every_chunk_has_one_importer_with_a_full_view_and_at_least_one_without() {
        let mut rng = Rng::new(9);
        let points: Vec<u64> = (0..25).map(|_| rng.next_u64()).collect();
        let share_of = |me: usize, seen: &[usize]| {
            let mut others: Vec<u64> = seen.iter().map(|&j| points[j]).collect();
            Share::new(points[me], &mut others, &mut [], 77, Idle::No)
        };
        let full: Vec<Share> = (0..25)
            .map(|me| share_of(me, &(0..25).filter(|j| *j != me).collect::<Vec<_>>()))
            .collect();
        for i in 0..1000 {
            assert_eq!(full.iter().filter(|s| s.mine(i)).count(), 1, "chunk {i}");
        }
        // Each node sees 8 random others.
        let partial: Vec<Share> = (0..25)
            .map(|me| {
                let mut seen = Vec::new();
                while seen.len() < 8 {
                    let j = rng.below(25) as usize;
                    if j != me && !seen.contains(&j) {
                        seen.push(j);
                    }
                }
                share_of(me, &seen)
            })
            .collect();
        let owners: Vec<usize> = (0..1000)
            .map(|i| partial.iter().filter(|s| s.mine(i)).count())
            .collect();
        assert!(
            owners.iter().all(|o| *o >= 1),
            "no chunk is left without an importer"
        );
        let mean = owners.iter().sum::<usize>() as f64 / owners.len() as f64;
        // 3.3 measured: the owner, plus the nodes before it on the ring that do not see it.
        assert!(
            mean < 4.0,
            "a few importers per chunk with a third of the site seen: {mean}"
        );
    }

    #[test]
    fn replacing_bitfields_keeps_counts_exact() {
        let mut rng = Rng::new(3);
        let len = 300;
        let mut s = Scheduler::new(Bitfield::new(len));
        let classes = [Class::Local, Class::Remote, Class::Local, Class::Origin];
        let mut last = Vec::new();
        for round in 0..5 {
            last.clear();
            for (k, class) in classes.iter().enumerate() {
                let b = random_bits(&mut rng, len);
                s.set_peer_have(peer(k as u64), *class, b.clone());
                last.push((*class, b));
            }
            if round == 2 {
                s.peer_has(peer(0), Class::Local, 7);
                last[0].1.set(7);
            }
        }
        let mut fresh = Scheduler::new(Bitfield::new(len));
        for (k, (class, b)) in last.iter().enumerate() {
            fresh.set_peer_have(peer(k as u64), *class, b.clone());
        }
        assert_eq!(s.count_any, fresh.count_any);
        assert_eq!(s.count_local, fresh.count_local);
    }

    #[test]
    fn a_straggling_fetch_is_asked_of_another_peer_and_the_first_copy_wins() {
        let mut rng = Rng::new(1);
        let mut s = Scheduler::new(Bitfield::new(1));
        let (slow, other) = (peer(1), peer(2));
        s.set_peer_have(slow, Class::Local, Bitfield::full(1));
        s.set_peer_have(other, Class::Local, Bitfield::full(1));
        assert_eq!(s.pick(&slow, &mut rng, 8), Some(0));
        s.start(slow, 0, Instant(5_000), Instant(100));
        assert_eq!(s.pick(&other, &mut rng, 8), None, "in flight: not needed");
        s.straggle(Instant(99), 2);
        assert_eq!(s.pick(&other, &mut rng, 8), None, "not late yet");
        s.straggle(Instant(100), 2);
        assert_eq!(
            s.next_deadline(),
            Some(Instant(100 + SUSPEND_MS)),
            "the straggler's claims come back after a while"
        );
        assert_eq!(
            s.pick(&slow, &mut rng, 8),
            None,
            "never twice from the straggler"
        );
        assert_eq!(s.pick(&other, &mut rng, 8), Some(0));
        s.start(other, 0, Instant(5_000), Instant(200));
        assert!(s.store(0));
        let cancelled = s.take_duplicates(0);
        assert_eq!(cancelled.len(), 2, "both copies end once one arrived");
        assert!(s.is_complete());
    }

    /// A share whose own arc holds every chunk (no other member on the ring).
    fn whole_share() -> Share {
        Share::new(0, &mut [], &mut [], 77, Idle::No)
    }

    #[test]
    fn claims_of_a_same_site_peer_that_never_delivered_do_not_hold_back_imports() {
        let mut rng = Rng::new(4);
        let mut s = Scheduler::new(Bitfield::new(2));
        s.set_share(whole_share());
        let (liar, remote) = (peer(1), peer(2));
        s.set_peer_have(liar, Class::Local, Bitfield::full(2));
        s.set_peer_have(remote, Class::Remote, Bitfield::full(2));
        // The same-site claim alone does not keep the remote peer from being asked.
        let first = s
            .pick(&remote, &mut rng, 8)
            .expect("remote asked despite the claim");
        s.start(remote, first, Instant(5_000), Instant(5_000));
        // Once the same-site peer delivers a verified chunk, its claims count.
        let other = 1 - first;
        s.finish(&remote, first);
        assert!(s.store(first));
        assert!(s.vouch(&liar));
        assert!(!s.vouch(&liar), "vouching twice is no news");
        assert_eq!(
            s.pick(&remote, &mut rng, 8),
            None,
            "chunk {other} is held on the site by a peer that delivered"
        );
        assert_eq!(s.pick(&liar, &mut rng, 8), Some(other));
        // Distrusted again (it failed to deliver): its claims no longer count.
        s.distrust(&liar);
        assert_eq!(s.pick(&remote, &mut rng, 8), Some(other));
    }

    #[test]
    fn the_origin_keeps_its_claims_when_a_fetch_from_it_times_out() {
        let mut rng = Rng::new(5);
        let mut s = Scheduler::new(Bitfield::new(1));
        s.set_share(whole_share());
        let origin = peer(9);
        s.set_peer_have(origin, Class::Origin, Bitfield::full(1));
        s.distrust(&origin);
        assert_eq!(s.pick(&origin, &mut rng, 8), Some(0));
    }

    #[test]
    fn a_chunk_whose_copies_all_straggle_is_asked_of_yet_another_peer() {
        let mut rng = Rng::new(6);
        let mut s = Scheduler::new(Bitfield::new(1));
        let peers = [peer(1), peer(2), peer(3)];
        for p in peers {
            s.set_peer_have(p, Class::Local, Bitfield::full(1));
        }
        s.start(peers[0], 0, Instant(5_000), Instant(100));
        s.straggle(Instant(100), 2);
        assert_eq!(s.pick(&peers[1], &mut rng, 8), Some(0));
        s.start(peers[1], 0, Instant(5_000), Instant(200));
        s.straggle(Instant(200), 2);
        // Two copies in flight, both late: neither counts, so a third peer is asked.
        assert_eq!(s.pick(&peers[2], &mut rng, 8), Some(0));
    }

    #[test]
    fn a_stragglers_claims_are_set_aside_and_come_back() {
        let mut rng = Rng::new(7);
        let mut s = Scheduler::new(Bitfield::new(2));
        s.set_share(whole_share());
        let (slow, origin) = (peer(1), peer(9));
        s.set_peer_have(slow, Class::Remote, Bitfield::full(2));
        s.set_peer_have(origin, Class::Origin, Bitfield::full(2));
        s.start(slow, 0, Instant(5_000), Instant(100));
        s.straggle(Instant(100), 2);
        assert_eq!(s.holders(0), 0, "set aside: it holds nothing up");
        assert_eq!(s.pick(&slow, &mut rng, 8), None, "and it is not asked");
        assert!(
            s.pick(&origin, &mut rng, 8).is_some(),
            "no other holder: the origin is asked"
        );
        s.wake(Instant(100 + SUSPEND_MS - 1));
        assert_eq!(s.holders(0), 0);
        s.wake(Instant(100 + SUSPEND_MS));
        assert_eq!(s.holders(0), 1, "back after the suspension");
        assert!(s.pick(&slow, &mut rng, 8).is_some(), "and asked again");
        // A second suspension lasts twice as long; a HAVE ends it at once.
        s.suspend(&slow, Instant(2_000));
        assert_eq!(s.holders(0), 0);
        s.wake(Instant(2_000 + 2 * SUSPEND_MS - 1));
        assert_eq!(s.holders(0), 0, "twice as long the second time");
        s.peer_has(slow, Class::Remote, 1);
        assert_eq!(s.holders(0), 1, "a HAVE ends it at once");
        // The origin's claims are set aside too, and come back: it never advertises again.
        s.suspend(&origin, Instant(3_000));
        assert_eq!(s.pick(&origin, &mut rng, 8), None);
        assert_eq!(s.next_deadline(), Some(Instant(3_000 + SUSPEND_MS)));
    }

    #[test]
    fn in_the_endgame_a_chunk_whose_copies_all_straggle_goes_past_three_copies() {
        let mut rng = Rng::new(8);
        let mut s = Scheduler::new(Bitfield::new(1));
        let peers = [peer(1), peer(2), peer(3), peer(4)];
        for p in peers {
            s.set_peer_have(p, Class::Local, Bitfield::full(1));
        }
        for (k, p) in peers[..3].iter().enumerate() {
            let t = 100 * (k as u64 + 1);
            assert_eq!(s.pick(p, &mut rng, 8), Some(0));
            s.start(*p, 0, Instant(5_000), Instant(t));
            s.straggle(Instant(t), 2);
        }
        assert_eq!(
            s.pick(&peers[3], &mut rng, 8),
            Some(0),
            "three tricklers do not hold the last chunk until their deadlines"
        );
    }

    #[test]
    fn a_straggling_chunk_goes_to_a_same_site_peer_that_delivered_before() {
        let mut rng = Rng::new(9);
        let mut s = Scheduler::new(Bitfield::new(2));
        let (slow, unproven, proven) = (peer(1), peer(2), peer(3));
        for p in [slow, unproven, proven] {
            s.set_peer_have(p, Class::Local, Bitfield::full(2));
        }
        s.start(proven, 1, Instant(5_000), Instant(5_000));
        s.finish(&proven, 1);
        s.store(1);
        assert!(s.vouch(&proven));
        s.start(slow, 0, Instant(5_000), Instant(100));
        s.straggle(Instant(100), 2);
        assert_eq!(s.pick(&unproven, &mut rng, 8), None);
        assert_eq!(s.pick(&proven, &mut rng, 8), Some(0));
    }

    #[test]
    fn idleness_widens_in_two_steps_and_only_when_starved_before_the_long_wait() {
        let fb = 500;
        assert_eq!(Idle::after(0, 0, 0, fb, true), Idle::No);
        assert_eq!(Idle::after(999, 999, 0, fb, true), Idle::No);
        assert_eq!(Idle::after(1_000, 1_000, 0, fb, true), Idle::Vouched);
        assert_eq!(
            Idle::after(1_000, 1_000, 0, fb, false),
            Idle::No,
            "not starved: it keeps fetching from its site"
        );
        assert_eq!(Idle::after(1_500, 1_500, 0, fb, true), Idle::All);
        assert_eq!(Idle::after(1_500, 1_500, 0, fb, false), Idle::No);
        assert_eq!(
            Idle::after(1_500, 1_500, 1_500, fb, false),
            Idle::All,
            "no progress at all for long: everything"
        );
        let t = |ms| Instant(ms);
        assert_eq!(
            Idle::No.next_step_at(t(0), t(0), t(0), t(0), fb),
            Some(t(1_000))
        );
        assert_eq!(
            Idle::No.next_step_at(t(1_200), t(0), t(0), t(1_100), fb),
            Some(t(1_500)),
            "the vouched step passed while not starved: the next is the long one"
        );
        assert_eq!(Idle::All.next_step_at(t(0), t(0), t(0), t(0), fb), None);
    }

    #[test]
    fn while_the_site_imports_a_starved_node_does_not_import_everything() {
        let fb = 500;
        // Its own imports are slow (a thin WAN link), the site's importers make progress.
        assert_eq!(
            Idle::after(2_000, 200, 200, fb, true),
            Idle::Vouched,
            "the members that import nothing are still covered"
        );
        assert_eq!(Idle::after(2_000, 1_500, 200, fb, true), Idle::All);
        let t = |ms| Instant(ms);
        assert_eq!(
            Idle::Vouched.next_step_at(t(2_000), t(0), t(1_800), t(1_800), fb),
            Some(t(3_300)),
            "the last step counts from the site's last import"
        );
    }

    #[test]
    fn an_idle_share_adds_the_arc_among_vouched_peers_and_then_everything() {
        let me = u64::MAX / 4;
        let mut others = [u64::MAX / 2, 3 * (u64::MAX / 4)];
        let mut vouched = [3 * (u64::MAX / 4)];
        let share = |idle| Share::new(me, &mut others.clone(), &mut vouched.clone(), 77, idle);
        let count = |sh: Share| (0..4000).filter(|&i| sh.mine(i)).count();
        let (no, v, all) = (
            count(share(Idle::No)),
            count(share(Idle::Vouched)),
            count(share(Idle::All)),
        );
        assert!((800..1200).contains(&no), "a quarter of the ring: {no}");
        assert!(
            (1800..2200).contains(&v),
            "half with the unvouched member's arc: {v}"
        );
        assert_eq!(all, 4000);
        others.sort_unstable();
        vouched.sort_unstable();
    }

    #[test]
    fn an_exhausted_peer_is_picked_again_once_it_has_something_needed() {
        let mut rng = Rng::new(1);
        let mut s = Scheduler::new(Bitfield::new(10));
        let p = peer(1);
        s.set_peer_have(p, Class::Local, Bitfield::new(10));
        assert_eq!(s.pick(&p, &mut rng, 8), None);
        s.peer_has(p, Class::Local, 4);
        assert_eq!(s.pick(&p, &mut rng, 8), Some(4));
        s.start(p, 4, Instant(10), Instant(10));
        assert_eq!(s.pick(&p, &mut rng, 8), None);
        // The fetch fails: chunk 4 is needed again and the peer is asked again.
        s.finish(&p, 4);
        assert_eq!(s.pick(&p, &mut rng, 8), Some(4));
    }
}
