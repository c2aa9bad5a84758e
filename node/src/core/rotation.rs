//! Trust-root rotation as the node sees it, and the floor under its wall clock.
//!
//! A new trust-root version travels as a gossip message ([`GossipMessage::TrustRoot`]: the signed
//! envelope of the next version). The node accepts exactly the next version, signed by a
//! threshold of its current root keys and of the new one's
//! ([`shoal_protocol::TrustRoot::verify_successor`]), and not yet expired; an older or equal
//! version is ignored, a version further ahead is ignored until the versions between arrive (a
//! peer sends the whole chain, oldest first, on connect). Accepted envelopes are kept in the
//! [`super::Snapshot`] and walked again from the configured root on [`super::Node::resume`], so a
//! restart never goes back to a revoked key.
//!
//! When a rotation removes a release key, everything the node believed on that key's word is
//! checked again: the current release (if its announcement no longer verifies it is dropped) and
//! the sequence floor (`highest` and `applied` fall back to the newest release that still
//! verifies, or to none). That is how a fleet recovers from a stolen release key that announced
//! sequence `u64::MAX`: rotate it out, and the builder's next release is accepted again. Releases
//! signed by the revoked key, older or newer, are refused from then on.
//!
//! The wall clock never goes backwards below the latest time the node knew, including the time
//! its last snapshot was saved: a device whose clock resets to 1970 does not start accepting
//! expired announcements.

use shoal_protocol::encoding::decode;
use shoal_protocol::verify::{self, Context};
use shoal_protocol::{Envelope, TrustRoot, UnixTime};

use super::node::Node;
use super::release::ReleaseCache;
use super::types::{Event, GossipMessage, Output, Refusal, Verdict};

/// Largest signed trust-root envelope accepted from gossip.
pub const MAX_TRUST_ROOT_SIGNED_BYTES: usize = 12 * 1024;
/// Most rotation envelopes a node keeps (and resends to a connecting peer).
pub const MAX_TRUST_CHAIN: usize = 256;

impl Node {
    /// The trust root the node verifies with now (the configured one, rotated).
    pub fn trust(&self) -> &TrustRoot {
        &self.config.trust
    }

    /// Walks rotation envelopes saved in a snapshot, from the configured root. Local data: no
    /// cap on the walk, no expiry check (expiry is checked when the root is used).
    pub(super) fn resume_trust(&mut self, chain: &[Vec<u8>]) {
        for bytes in chain {
            let Ok(env) = decode::<Envelope>(bytes) else {
                break;
            };
            match decode::<TrustRoot>(&env.payload) {
                Ok(r) if r.version <= self.config.trust.version => continue,
                Ok(_) => {}
                Err(_) => break,
            }
            let Ok(next) = self.config.trust.verify_successor(&env) else {
                break;
            };
            self.set_trust(next, bytes.clone());
        }
    }

    fn set_trust(&mut self, next: TrustRoot, bytes: Vec<u8>) {
        self.config.trust = next;
        self.trust_digest = ReleaseCache::trust_digest(&self.config.trust);
        self.trust_chain.push(bytes);
        if self.trust_chain.len() > MAX_TRUST_CHAIN {
            self.trust_chain.remove(0);
        }
    }

    /// The rotation envelopes to send a connecting peer, as gossip messages, oldest first.
    pub(super) fn trust_sync(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.trust_chain
            .iter()
            .map(|b| GossipMessage::TrustRoot(b.clone()).encode())
    }

    pub(super) fn on_trust_root(&mut self, bytes: Vec<u8>) -> Verdict {
        let Some(now) = self.wall_now() else {
            return Verdict::Ignore;
        };
        if bytes.len() > MAX_TRUST_ROOT_SIGNED_BYTES {
            return Verdict::Reject;
        }
        let Ok(env) = decode::<Envelope>(&bytes) else {
            return Verdict::Reject;
        };
        let Ok(candidate) = decode::<TrustRoot>(&env.payload) else {
            return Verdict::Reject;
        };
        let current = &self.config.trust;
        if candidate.fleet != current.fleet {
            return Verdict::Reject;
        }
        // Already walked past it, or it needs versions we have not seen yet: not ours to judge.
        if candidate.version <= current.version || candidate.version > current.version + 1 {
            return Verdict::Ignore;
        }
        let next = match current.verify_successor(&env) {
            Ok(next) if now < next.expires => next,
            _ => return Verdict::Reject,
        };
        let revoked = current
            .release_keys
            .iter()
            .any(|k| !next.release_keys.contains(k));
        let version = next.version;
        self.set_trust(next, bytes);
        if revoked {
            self.recheck_after_revocation(now);
        }
        self.outputs
            .push_back(Output::Event(Event::TrustRotated { version }));
        self.persist();
        Verdict::Accept
    }

    /// Drops what only a revoked release key vouched for.
    fn recheck_after_revocation(&mut self, now: UnixTime) {
        let ctx = Context {
            trust: &self.config.trust,
            arch: &self.config.arch,
            highest_seen: None,
            now,
        };
        let cur_ok = self
            .cur
            .as_ref()
            .is_some_and(|c| verify::announcement(&ctx, &c.ann_bytes).is_ok());
        let committed_ok = self.committed_release.as_ref().and_then(|r| {
            let env: Envelope = decode(&r.manifest_bytes).ok()?;
            env.verify_threshold(
                <shoal_protocol::ReleaseManifest as shoal_protocol::Wire>::KIND,
                &self.config.trust.release_keys,
                usize::from(self.config.trust.release_threshold),
            )
            .ok()?;
            Some((r.manifest.sequence, r.manifest_digest))
        });
        if !cur_ok {
            if let Some(mut old) = self.cur.take() {
                let sequence = old.ann.sequence;
                if let Some(s) = &mut old.sched {
                    for f in s.cancel_all() {
                        self.outputs.push_back(Output::CancelFetch {
                            peer: f.peer,
                            sequence,
                            index: f.index,
                        });
                    }
                }
                self.outputs.push_back(Output::Event(Event::Refused {
                    sequence,
                    reason: Refusal::Invalid {
                        reason: "signed by a revoked release key".to_string(),
                    },
                }));
            }
            self.pending_control = None;
            self.highest = committed_ok;
            let floor = committed_ok.map(|(s, _)| s);
            if self.applied > floor {
                self.applied = floor;
            }
        }
    }

    /// Takes a wall-clock reading, never below the latest time the node knew.
    pub(super) fn floor_wall_clock(&mut self, t: UnixTime) -> UnixTime {
        let known = self.wall_now().unwrap_or_default().max(self.wall_floor);
        t.max(known)
    }
}
