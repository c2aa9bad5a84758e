//! [`Served`]: the origin's per-chunk serve counts for super-seeding, and the [`CopyPolicy`]
//! that says how many copies of a chunk it may serve now (the rules are in [`super::upload`]).

use super::types::Instant;

/// Per-chunk serve counts and last serve times of the origin, for super-seeding.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    counts: Vec<u16>,
    last: Vec<Instant>,
}

impl Served {
    pub(crate) fn new(len: u32) -> Served {
        Served {
            counts: vec![0; len as usize],
            last: vec![Instant::ZERO; len as usize],
        }
    }

    /// Counts a serve of chunk `i` if the policy allows it now: fewer than `copies` so far,
    /// fewer than `spare_copies` while `spare`, or lost (nobody holds it and the last copy is
    /// older than `in_flight_ms`).
    pub(crate) fn take(&mut self, i: u32, now: Instant, policy: CopyPolicy, held: bool) -> bool {
        let (Some(c), Some(last)) = (
            self.counts.get_mut(i as usize),
            self.last.get_mut(i as usize),
        ) else {
            return false;
        };
        let n = u32::from(*c);
        let again = !held && n > 0 && now.ms_since(*last) >= policy.in_flight_ms;
        if n < policy.copies || (policy.spare && n < policy.spare_copies) || again {
            *c = c.saturating_add(1);
            *last = now;
            return true;
        }
        false
    }

    /// A copy of chunk `i` did not arrive: it no longer counts.
    pub(crate) fn lost(&mut self, i: u32) {
        if let Some(c) = self.counts.get_mut(i as usize) {
            *c = c.saturating_sub(1);
        }
    }
}

/// How many copies of a chunk the origin may serve now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CopyPolicy {
    pub(crate) copies: u32,
    pub(crate) spare: bool,
    pub(crate) spare_copies: u32,
    pub(crate) in_flight_ms: u64,
}
