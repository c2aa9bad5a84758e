//! The site's import ring: which chunks this node imports into its site ([`Share`]).
//!
//! Consistent hashing: each node of the site and each chunk get a point on a ring (salted per
//! release, with [`mix64`]); a node imports the chunks whose points fall in its [`RingArc`],
//! from its own point to the next point of a same-site peer it sees. How long the node has
//! gone without storing a chunk ([`Idle`]) widens its share so that a site never stalls. The
//! scheduler ([`super::fetch`]) asks remote peers and the origin only for this node's share;
//! the manifest's point on the same ring names the site's manifest importer
//! (`Node::manifest_importer`).

use super::types::Instant;

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
    pub(crate) arc: RingArc,
    /// This node's arc among the vouched same-site peers, used while `idle`.
    pub(crate) idle_arc: RingArc,
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
pub(crate) struct RingArc {
    pub(crate) lo: u64,
    pub(crate) hi: u64,
    pub(crate) all: bool,
}

impl RingArc {
    /// The arc of the point `me` on a ring with the points `others` (any order).
    pub(crate) fn new(me: u64, others: &mut [u64]) -> RingArc {
        others.sort_unstable();
        let hi = others
            .iter()
            .copied()
            .find(|p| *p > me)
            .or_else(|| others.first().copied())
            .unwrap_or(me);
        RingArc {
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
            arc: RingArc::new(me, others),
            idle_arc: RingArc::new(me, vouched),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

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
}
