//! Which chunk to ask a peer for: sampled rarest-first within the class rules, straggler
//! re-requests, and the endgame (see the [module docs](super)).

use super::{Avail, Class, InFlight, Scheduler};
use crate::rng::Rng;
use crate::types::{Instant, PeerId};

impl Scheduler {
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
}
