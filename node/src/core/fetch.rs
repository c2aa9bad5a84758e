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

use std::collections::BTreeMap;

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
}

#[derive(Debug)]
pub(crate) struct Scheduler {
    pub(crate) have: Bitfield,
    need: Bitfield,
    count_any: Vec<u16>,
    count_local: Vec<u16>,
    peer_have: BTreeMap<PeerId, (Class, Bitfield)>,
    pub(crate) in_flight: Vec<InFlight>,
}

impl Scheduler {
    pub(crate) fn new(have: Bitfield) -> Scheduler {
        let len = have.len();
        let mut need = Bitfield::full(len);
        for i in have.ones() {
            need.clear(i);
        }
        Scheduler {
            have,
            need,
            count_any: vec![0; len as usize],
            count_local: vec![0; len as usize],
            peer_have: BTreeMap::new(),
            in_flight: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> u32 {
        self.have.len()
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    fn count(&mut self, class: Class, i: u32, up: bool) {
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
        }
    }

    /// Replaces what `peer` is known to have.
    pub(crate) fn set_peer_have(&mut self, peer: PeerId, class: Class, have: Bitfield) {
        self.forget_peer_have(&peer);
        for i in have.ones() {
            self.count(class, i, true);
        }
        self.peer_have.insert(peer, (class, have));
    }

    /// `peer` has chunk `i` (a HAVE). Returns whether that was news.
    pub(crate) fn peer_has(&mut self, peer: PeerId, class: Class, i: u32) -> bool {
        let len = self.len();
        let entry = self
            .peer_have
            .entry(peer)
            .or_insert_with(|| (class, Bitfield::new(len)));
        if entry.1.set(i) {
            let class = entry.0;
            self.count(class, i, true);
            true
        } else {
            false
        }
    }

    /// `peer` turned out not to have chunk `i` after all.
    pub(crate) fn peer_lacks(&mut self, peer: &PeerId, i: u32) {
        if let Some((class, bits)) = self.peer_have.get_mut(peer)
            && bits.clear(i)
        {
            let class = *class;
            self.count(class, i, false);
        }
    }

    fn forget_peer_have(&mut self, peer: &PeerId) {
        if let Some((class, bits)) = self.peer_have.remove(peer) {
            for i in bits.ones() {
                self.count(class, i, false);
            }
        }
    }

    /// Changes a peer's class, keeping its availability.
    pub(crate) fn reclass_peer(&mut self, peer: PeerId, class: Class) {
        if let Some((old, bits)) = self.peer_have.get(&peer)
            && *old != class
        {
            let bits = bits.clone();
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
        if !self.have.get(i) && !self.in_flight.iter().any(|f| f.index == i) {
            self.need.set(i);
        }
    }

    pub(crate) fn in_flight_of(&self, peer: &PeerId) -> u32 {
        self.in_flight.iter().filter(|f| f.peer == *peer).count() as u32
    }

    pub(crate) fn is_needed(&self, i: u32) -> bool {
        self.need.get(i)
    }

    /// Whether a peer of `class` may be asked for chunk `i`.
    pub(crate) fn class_may_serve(&self, class: Class, i: u32) -> bool {
        match class {
            Class::Local => true,
            Class::Remote => self.count_local[i as usize] == 0,
            Class::Origin => self.count_any[i as usize] == 0,
        }
    }

    /// The chunk to ask `peer` for next, if any; see the module docs.
    pub(crate) fn pick(&self, peer: &PeerId, rng: &mut Rng, sample: u32) -> Option<u32> {
        let (class, bits) = self.peer_have.get(peer)?;
        let words = bits.words();
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
                if !self.class_may_serve(*class, i) {
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

    pub(crate) fn start(&mut self, peer: PeerId, index: u32, deadline: Instant) {
        self.need.clear(index);
        self.in_flight.push(InFlight {
            peer,
            index,
            deadline,
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

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.iter().map(|f| f.deadline).min()
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
