//! What peers claim to hold: availability counts per chunk, vouching (a peer that delivered),
//! and claims set aside ([`Scheduler::suspend`]) or forgotten ([`Scheduler::distrust`]).

use super::{Avail, Class, SUSPEND_MS, Scheduler};
use crate::bitfield::Bitfield;
use crate::types::{Instant, PeerId};

impl Scheduler {
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

    /// Whether no needed chunk is held by a vouched same-site peer (see
    /// [`Idle::after`](crate::ring::Idle::after)).
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
    pub(super) fn forget_peer_have(&mut self, peer: &PeerId) -> bool {
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

    pub(super) fn unexhaust_all(&mut self) {
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
}
