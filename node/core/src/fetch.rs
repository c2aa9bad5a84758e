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
//!
//! The entry type is [`Scheduler`]; this file holds its state and the life of a fetch (start,
//! finish, expire, cancel). What peers claim to hold is in [`claims`], the picking in [`pick`],
//! and this node's share of its site's imports (the consistent-hashing ring) in
//! [`super::ring`].

mod claims;
mod pick;
#[cfg(test)]
mod tests;

use super::bitfield::Bitfield;
use super::peermap::PeerMap;
use super::ring::{Idle, RingArc, Share};
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
    peer_have: PeerMap<Avail>,
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
                arc: RingArc {
                    lo: 0,
                    hi: 0,
                    all: true,
                },
                idle_arc: RingArc {
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
            peer_have: PeerMap::default(),
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
