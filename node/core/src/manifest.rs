//! The manifest: whom to ask for it, verifying it, and starting the chunk fetch.

use std::collections::BTreeSet;
use std::sync::Arc;

use shoal_protocol::{Digest, ReleaseSeq};

use super::bitfield::Bitfield;
use super::fetch::{Class, Scheduler};
use super::node::Node;
use super::release::Release;
use super::snapshot::Phase;
use super::types::{Event, FetchError, Output, PeerId, Refusal};

impl Node {
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
        // Non-origin peers known to hold it first. A node that is not its site's manifest
        // importer then waits a little for one of its peers to hold it (the importer fetches
        // it, and a peer that has it says so with its bitfield); the importer, or a node that
        // waited long enough, asks the other non-origin peers, then the origin: the builder
        // serves the manifest only when no peer can. (Asking every peer in turn right after the
        // announcement, when none has it yet, cost a round trip per peer: a quarter of a
        // second before the first chunk.)
        let not_origin = |id: &PeerId| self.peers[id].class != Class::Origin;
        let holder = self
            .order
            .iter()
            .find(|id| not_origin(id) && self.peers[*id].has_manifest && eligible(id))
            .copied();
        let since = mf.since.unwrap_or(now);
        let wait_until = since.plus_ms(self.config.manifest_wait_ms);
        let early = holder.is_none() && now < wait_until;
        let waits = early && !self.manifest_importer();
        let pick = if waits {
            None
        } else if early {
            // Right after the announcement nobody holds it: the importer goes straight to the
            // origin (to its other peers only if it cannot).
            let origin = self.order.iter().find(|id| !not_origin(id) && eligible(id));
            origin
                .or_else(|| self.order.iter().find(|id| eligible(id)))
                .copied()
        } else {
            holder
                .or_else(|| {
                    self.order
                        .iter()
                        .find(|id| not_origin(id) && eligible(id))
                        .copied()
                })
                .or_else(|| self.order.iter().find(|id| eligible(id)).copied())
        };
        if let Some(cur) = &mut self.cur {
            cur.manifest_fetch.since = Some(since);
            if waits {
                cur.manifest_fetch.wait_until = Some(wait_until);
                return;
            }
        }
        let Some(cur) = &self.cur else { return };
        let mf = &cur.manifest_fetch;
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
        // The manifest is small and everything waits for it: a short deadline, so a peer that
        // trickles it costs little before the next one is asked.
        let rate = self.config.min_rate_bytes_per_s.max(1);
        let at_rate = size.saturating_mul(1000) / rate;
        let deadline = now.plus_ms(self.config.manifest_timeout_ms.max(at_rate));
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

    pub(super) fn on_manifest_fetched(
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

    pub(super) fn accept_release_with(&mut self, release: Arc<Release>, stored: Option<Bitfield>) {
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
        cur.last_import = self.now;
        cur.last_site_import = self.now;
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
}
