//! Chunks: filling fetch slots (see [`super::fetch`] for the choice of chunk), the endgame,
//! and fetch results.

use shoal_protocol::ReleaseSeq;

use super::node::{ENDGAME_COPIES, Node, per_peer_cap};
use super::snapshot::Phase;
use super::types::{DropReason, FetchError, FetchStats, Instant, Output, PeerId};

impl Node {
    pub(super) fn deadline_for(&self, size: u64) -> Instant {
        let rate = self.config.min_rate_bytes_per_s.max(1);
        let at_rate = size.saturating_mul(1000) / rate;
        self.now.plus_ms(self.config.fetch_timeout_ms.max(at_rate))
    }

    // ----- chunks -----

    pub(super) fn start_fetch(&mut self, peer: PeerId, index: u32) {
        let Some(cur) = &self.cur else { return };
        let Some(release) = &cur.release else { return };
        let chunk = release.chunks[index as usize];
        let sequence = cur.ann.sequence;
        let deadline = self.deadline_for(u64::from(chunk.size));
        let straggle_at = match self.fetch_ms_avg {
            Some(avg) => self.now.plus_ms(
                avg.saturating_mul(u64::from(self.config.straggler_factor))
                    .max(self.config.straggler_min_ms),
            ),
            None => deadline,
        };
        // Not before the peer's own time per chunk (twice, by default) for each fetch queued
        // at it, this one included: a WAN peer that takes 2 s a chunk is not straggling at
        // 8x a mostly-LAN average of 10 ms.
        let straggle_at = match self.peers.get(&peer).and_then(|p| p.chunk_ms) {
            Some(per_chunk) => {
                let queued = self
                    .cur
                    .as_ref()
                    .and_then(|c| c.sched.as_ref())
                    .map_or(0, |s| s.in_flight_of(&peer));
                let own = per_chunk
                    .saturating_mul(u64::from(self.config.straggler_peer_factor))
                    .saturating_mul(u64::from(queued) + 1);
                straggle_at.max(self.now.plus_ms(own))
            }
            None => straggle_at,
        };
        if let Some(s) = self.cur.as_mut().and_then(|c| c.sched.as_mut()) {
            s.start(peer, index, deadline, straggle_at.min(deadline));
        }
        self.outputs.push_back(Output::FetchChunk {
            peer,
            sequence,
            index,
            chunk,
        });
    }

    /// Updates the idleness of the site share (no chunk stored for `idle_fallback_ms`, or three
    /// times that).
    pub(super) fn refresh_idle(&mut self) {
        let (now, idle_ms) = (self.now, self.config.idle_fallback_ms);
        if let Some(cur) = &mut self.cur
            && let site_import = cur.last_import.max(cur.last_site_import)
            && let Some(s) = &mut cur.sched
        {
            let idle = super::ring::Idle::after(
                now.ms_since(cur.last_import),
                now.ms_since(site_import),
                now.ms_since(cur.last_progress),
                idle_ms,
                s.starved(),
            );
            let share = s.share();
            if share.idle != idle {
                s.set_share(super::ring::Share { idle, ..share });
            }
        }
    }

    /// Fills free fetch slots, peers in preference order, one chunk per peer per round.
    pub(super) fn schedule(&mut self) {
        self.refresh_idle();
        let now = self.now;
        let (per_peer, total, sample, horizon) = (
            self.config.max_in_flight_per_peer,
            self.config.max_in_flight_total,
            self.config.rarest_sample,
            self.config.remote_horizon_ms,
        );
        if !self.cur.as_ref().is_some_and(|c| {
            c.phase == Phase::Fetching
                && c.sched
                    .as_ref()
                    .is_some_and(|s| (s.in_flight.len() as u32) < total)
        }) {
            return;
        }
        // Each peer's cap, or `None` while it is in backoff: neither changes during the pass,
        // and looking them up once per peer instead of twice per round spares most of the
        // pass's cache misses.
        if self.order_meta.len() != self.order.len() {
            self.order_meta.clear();
            self.order_meta.extend(self.order.iter().map(|id| {
                let p = &self.peers[id];
                (p.backoff_until, per_peer_cap(per_peer, p, horizon))
            }));
        }
        debug_assert!(
            self.order.iter().zip(&self.order_meta).all(|(id, m)| {
                let p = &self.peers[id];
                *m == (p.backoff_until, per_peer_cap(per_peer, p, horizon))
            }),
            "order_meta out of date"
        );
        let mut caps = std::mem::take(&mut self.order_caps);
        caps.clear();
        caps.extend(
            self.order_meta
                .iter()
                .map(|&(backoff_until, cap)| (backoff_until <= now).then_some(cap)),
        );
        let go_on =
            self.fill_slots(&caps, total, sample) && self.overflow_to_origin(&caps, total, sample);
        self.order_caps = caps;
        if go_on {
            self.endgame();
        }
    }

    /// Rounds over the peers until none takes another fetch; false if fetching cannot go on
    /// (no slot left overall, or not fetching).
    fn fill_slots(&mut self, caps: &[Option<u32>], total: u32, sample: u32) -> bool {
        loop {
            let mut progressed = false;
            for (k, cap) in caps.iter().enumerate() {
                let Some(cur) = &mut self.cur else {
                    return false;
                };
                if cur.phase != Phase::Fetching {
                    return false;
                }
                let Some(s) = &mut cur.sched else {
                    return false;
                };
                if s.in_flight.len() as u32 >= total {
                    return false;
                }
                let peer = self.order[k];
                if cap.is_none_or(|c| s.in_flight_of(&peer) >= c) {
                    continue;
                }
                if let Some(i) = s.pick(&peer, &mut self.rng, sample) {
                    self.start_fetch(peer, i);
                    progressed = true;
                }
            }
            if !progressed {
                return true;
            }
        }
    }

    /// After the rounds, the origin also takes what is left of this node's share that only
    /// peers on other sites hold: none of them had a free slot for it (a remote peer's queue is
    /// kept short, see [`super::Config::remote_horizon_ms`]). Without this, a chunk one remote
    /// peer holds waits for that peer however slow its site's uplink, while the origin idles
    /// (constrained-wan: the origin at 66% utilisation, remote fetches taking 3 s). The origin
    /// still decides (a busy origin serves each chunk once).
    fn overflow_to_origin(&mut self, caps: &[Option<u32>], total: u32, sample: u32) -> bool {
        for (k, cap) in caps.iter().enumerate() {
            let peer = self.order[k];
            if self.peers[&peer].class != super::fetch::Class::Origin {
                continue;
            }
            loop {
                let Some(s) = self.cur.as_mut().and_then(|c| c.sched.as_mut()) else {
                    return false;
                };
                if s.in_flight.len() as u32 >= total {
                    return false;
                }
                if cap.is_none_or(|c| s.in_flight_of(&peer) >= c) {
                    break;
                }
                match s.pick_overflow(&peer, &mut self.rng, sample) {
                    Some(i) => self.start_fetch(peer, i),
                    None => break,
                }
            }
        }
        true
    }

    /// When every missing chunk is in flight, free slots fetch the oldest ones again from other
    /// peers (at most two copies); the first copy to arrive cancels the rest.
    pub(super) fn endgame(&mut self) {
        if !self
            .cur
            .as_ref()
            .and_then(|c| c.sched.as_ref())
            .is_some_and(|s| !s.in_flight.is_empty() && s.nothing_needed())
        {
            return;
        }
        let now = self.now;
        let (per_peer, total, horizon) = (
            self.config.max_in_flight_per_peer,
            self.config.max_in_flight_total,
            self.config.remote_horizon_ms,
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
                || s.in_flight_of(&peer) >= per_peer_cap(per_peer, &self.peers[&peer], horizon)
            {
                continue;
            }
            if let Some(i) = s.pick_endgame(&peer, ENDGAME_COPIES) {
                self.start_fetch(peer, i);
            }
        }
    }

    pub(super) fn on_chunk_fetched(
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
                    if self
                        .peers
                        .get(&peer)
                        .is_some_and(|p| p.class != super::fetch::Class::Local)
                    {
                        cur.last_import = self.now;
                    }
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
                    if was_in_flight && stats.bytes > 0 {
                        // Its time for this chunk: from the request, or from its previous
                        // delivery if this one queued behind it.
                        let asked = self.now.0.saturating_sub(stats.elapsed_ms);
                        let took = self.now.0.saturating_sub(asked.max(p.last_delivery.0));
                        p.chunk_ms = Some(p.chunk_ms.map_or(took, |a| (a * 3 + took) / 4));
                        p.last_delivery = self.now;
                        if p.class == super::fetch::Class::Remote {
                            // Its cap depends on it (see `per_peer_cap`).
                            self.order_meta.clear();
                        }
                    }
                }
                let vouched = stats.bytes > 0 && s.vouch(&peer);
                if was_in_flight && stats.bytes > 0 {
                    // Moving average (1/8) of how long a fetch takes, for straggler times.
                    let avg = self.fetch_ms_avg.map_or(stats.elapsed_ms, |a| {
                        (a.saturating_mul(7) + stats.elapsed_ms) / 8
                    });
                    self.fetch_ms_avg = Some(avg);
                }
                let rate = stats.bytes.saturating_mul(1000) / stats.elapsed_ms.max(1);
                let slow = stats.elapsed_ms > self.config.fetch_timeout_ms
                    && rate < self.config.min_rate_bytes_per_s;
                if slow {
                    self.drop_peer(peer, DropReason::TooSlow);
                } else if vouched {
                    self.update_share();
                }
                self.check_staged();
            }
            // Bad bytes are bad bytes, even for a fetch we had given up on.
            Err(FetchError::DigestMismatch) => self.ban_peer(peer),
            Err(_) if !was_in_flight => {}
            Err(FetchError::TooSlow) => self.drop_peer(peer, DropReason::TooSlow),
            Err(FetchError::NotFound) => {
                // It advertised the chunk and does not have it: none of its claims is trusted
                // until it advertises again, so a peer claiming everything stops blocking the
                // site's imports after one request instead of one per chunk.
                s.distrust(&peer);
                self.peer_failed(&peer);
            }
            Err(FetchError::Busy) => {
                // Jittered (half to one and a half times the backoff): the devices a busy
                // origin turned away together do not all come back at the same instant. (With
                // a fixed 100 ms they did, in bursts that found its upload slots full again
                // while it idled in between: fleet-10k shape at 1,000 devices / 10 sites /
                // 64 MiB took 1.109 s instead of 0.938 s.) Short (30 ms on average): the origin's
                // slots turn over in tens of milliseconds, and at the start of a release every
                // site's importers ask it at once; with 100 ms it served its first 64 copies and
                // then idled until the retries came back (2,000 devices / 20 sites / 64 MiB,
                // seeds 1-4: 0.985 s on average with 100 ms, 0.947 s with 30 ms).
                let base = self.config.busy_backoff_ms;
                let wait = base / 2 + self.rng.below(base + 1);
                let until = self.now.plus_ms(wait);
                self.set_backoff(&peer, until);
            }
            Err(FetchError::Timeout) => {
                s.suspend(&peer, self.now);
                self.peer_failed(&peer);
            }
            Err(_) => self.peer_failed(&peer),
        }
    }
}
