//! Gossip: announcements and wave control, verified before anything else happens.

use shoal_protocol::verify::{self, VerifyError};
use shoal_protocol::{DeviceId, ReleaseSeq, WaveAction, WaveControl};

use super::node::{Current, ManifestFetch, Node, Waves};
use super::snapshot::Phase;
use super::types::{Event, GossipMessage, Instant, Output, PeerId, Verdict};

impl Node {
    // ----- gossip -----

    pub(super) fn on_gossip(&mut self, from: PeerId, bytes: &[u8]) -> Verdict {
        let Some(msg) = GossipMessage::decode(bytes) else {
            return Verdict::Reject;
        };
        if self.wall.is_none() {
            return Verdict::Ignore;
        }
        // The same bytes again (another mesh path, a sync on connect): already judged, and
        // not worth a signature check.
        if let Some(cur) = &self.cur {
            let seen = match &msg {
                GossipMessage::Announcement(b) => *b == cur.ann_bytes,
                GossipMessage::WaveControl(b) => [
                    &cur.waves.last_open,
                    &cur.waves.last_hold,
                    &cur.waves.last_other,
                ]
                .into_iter()
                .flatten()
                .any(|(_, seen)| seen == b),
                GossipMessage::TrustRoot(_) => false,
            };
            if seen {
                return Verdict::Ignore;
            }
        }
        match msg {
            GossipMessage::Announcement(b) => {
                let v = self.on_announcement(from, b);
                // A valid announcement for another architecture is accepted (forwarded by
                // gossip) without being recorded: relaying it would loop.
                if v == Verdict::Accept
                    && self.cur.as_ref().is_some_and(|c| {
                        GossipMessage::Announcement(c.ann_bytes.clone()).encode() == bytes
                    })
                {
                    self.relay(from, bytes);
                }
                v
            }
            GossipMessage::WaveControl(b) => {
                let v = self.on_wave_control(b);
                if v == Verdict::Accept {
                    self.relay(from, bytes);
                }
                v
            }
            GossipMessage::TrustRoot(b) => {
                let v = self.on_trust_root(b);
                if v == Verdict::Accept {
                    self.relay(from, bytes);
                }
                v
            }
        }
    }

    /// Passes a message that changed this node's state on to its data-plane peers (all but the
    /// one it came from), besides gossip: a peer that gossip does not reach (a node restarted
    /// under the same identity, which the gossip mesh can leave out for good) still learns of
    /// new releases, waves and rotations. Each node relays a message once, when it is new to
    /// it, so this is a flood bounded by the number of connections; receivers see the same
    /// bytes again as already judged.
    pub(super) fn relay(&mut self, from: PeerId, bytes: &[u8]) {
        for peer in self.order.iter().filter(|p| **p != from) {
            self.outputs.push_back(Output::SyncGossip {
                peer: *peer,
                messages: vec![bytes.to_vec()],
            });
        }
    }

    pub(super) fn on_announcement(&mut self, from: PeerId, bytes: Vec<u8>) -> Verdict {
        let Some(ctx) = self.ctx() else {
            return Verdict::Ignore;
        };
        let ann = match verify::announcement(&ctx, &bytes) {
            Ok(ann) => ann,
            // Valid and signed, just not for this device's architecture: forward, do nothing.
            Err(VerifyError::WrongArch { .. }) => return Verdict::Accept,
            Err(_) => return Verdict::Reject,
        };
        if self.highest == Some((ann.sequence, ann.manifest_digest)) {
            return Verdict::Ignore;
        }
        let new_seq = ann.sequence;
        if let Some(old) = self.cur.take() {
            self.abandon(old, new_seq);
        }
        self.highest = Some((ann.sequence, ann.manifest_digest));
        let mut cur = Current {
            ann,
            ann_bytes: bytes,
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
        };
        if let Some((wc, b)) = self.pending_control.take()
            && wc.sequence == cur.ann.sequence
            && wc.manifest_digest == cur.ann.manifest_digest
        {
            cur.waves.apply(&wc, b, &self.id);
        }
        for p in self.peers.values_mut() {
            p.has_manifest = false;
            p.early_have = None;
            p.early_chunks = Vec::new();
        }
        // The peer it came from accepted the announcement, which says nothing about the
        // manifest: a peer says it holds that with its availability (bitfield or HAVE).
        let _ = from;
        self.cur = Some(cur);
        self.outputs
            .push_back(Output::Event(Event::Announced { sequence: new_seq }));
        self.persist();
        self.fetch_manifest();
        Verdict::Accept
    }

    /// Stops work on `old` because `new` replaces it.
    pub(super) fn abandon(&mut self, mut old: Current, new: ReleaseSeq) {
        let seq = old.ann.sequence;
        if let Some(s) = &mut old.sched {
            for f in s.cancel_all() {
                self.outputs.push_back(Output::CancelFetch {
                    peer: f.peer,
                    sequence: seq,
                    index: f.index,
                });
            }
        }
        if matches!(
            old.phase,
            Phase::FetchingManifest | Phase::Fetching | Phase::Staged
        ) {
            self.outputs
                .push_back(Output::Event(Event::Superseded { old: seq, new }));
        }
    }

    pub(super) fn on_wave_control(&mut self, bytes: Vec<u8>) -> Verdict {
        let Some(now) = self.wall_now() else {
            return Verdict::Ignore;
        };
        let wc = match verify::wave_control(&self.config.trust, &bytes, now) {
            Ok(wc) => wc,
            Err(_) => return Verdict::Reject,
        };
        let Some(cur) = &mut self.cur else {
            return self.keep_pending_control(wc, bytes);
        };
        if wc.sequence > cur.ann.sequence {
            return self.keep_pending_control(wc, bytes);
        }
        if wc.sequence < cur.ann.sequence {
            return Verdict::Ignore;
        }
        if wc.manifest_digest != cur.ann.manifest_digest {
            return Verdict::Reject;
        }
        if cur.waves.counter.is_some_and(|c| wc.counter <= c) {
            return Verdict::Ignore;
        }
        cur.waves.apply(&wc, bytes, &self.id);
        if cur.waves.halted
            && matches!(
                cur.phase,
                Phase::FetchingManifest | Phase::Fetching | Phase::Staged
            )
        {
            let seq = cur.ann.sequence;
            cur.phase = Phase::Halted;
            let cancelled = cur
                .sched
                .as_mut()
                .map(|s| s.cancel_all())
                .unwrap_or_default();
            cur.manifest_fetch.in_flight = None;
            for f in cancelled {
                self.outputs.push_back(Output::CancelFetch {
                    peer: f.peer,
                    sequence: seq,
                    index: f.index,
                });
            }
            self.outputs
                .push_back(Output::Event(Event::Halted { sequence: seq }));
        }
        self.persist();
        self.try_activate();
        Verdict::Accept
    }

    pub(super) fn keep_pending_control(&mut self, wc: WaveControl, bytes: Vec<u8>) -> Verdict {
        let newer = match &self.pending_control {
            None => true,
            Some((p, _)) => (wc.sequence, wc.counter) > (p.sequence, p.counter),
        };
        if !newer {
            return Verdict::Ignore;
        }
        // Open messages are what late joiners need most; keep the latest of any kind.
        self.pending_control = Some((wc, bytes));
        Verdict::Accept
    }
}

impl Waves {
    /// Takes a verified message for the current release; `me`: this device.
    pub(super) fn apply(&mut self, wc: &WaveControl, bytes: Vec<u8>, me: &DeviceId) {
        self.counter = Some(wc.counter);
        match &wc.action {
            WaveAction::Open { wave } => {
                self.open = Some(*wave);
                self.last_open = Some((wc.counter, bytes));
                return;
            }
            WaveAction::Hold { devices } => {
                self.held = devices.contains(me);
                self.last_hold = Some((wc.counter, bytes));
                return;
            }
            WaveAction::Pause => self.paused = true,
            WaveAction::Resume => self.paused = false,
            WaveAction::Halt => self.halted = true,
        }
        self.last_other = Some((wc.counter, bytes));
    }

    pub(super) fn controls(&self) -> Vec<Vec<u8>> {
        let mut v: Vec<&(u64, Vec<u8>)> = self
            .last_open
            .iter()
            .chain(self.last_hold.iter())
            .chain(self.last_other.iter())
            .collect();
        v.sort_by_key(|(c, _)| *c);
        v.into_iter().map(|(_, b)| b.clone()).collect()
    }
}
