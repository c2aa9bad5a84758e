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
use shoal_protocol::verify::{self, Context, VerifyError};
use shoal_protocol::{Envelope, TrustRoot, UnixTime};

use super::node::Node;
use super::release::ReleaseCache;
use super::snapshot::MAX_TRUST_CHAIN;
use super::types::{Event, GossipMessage, MAX_TRUST_ROOT_SIGNED_BYTES, Output, Refusal, Verdict};

/// Why a trust-root rotation was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustRootError {
    /// The node has no wall-clock reading yet, so it cannot check expiry.
    #[error("no wall-clock reading yet")]
    NoClock,
    /// Larger than [`MAX_TRUST_ROOT_SIGNED_BYTES`].
    #[error("rotation envelope of {size} bytes exceeds the cap")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// Another fleet's trust root.
    #[error("trust root of fleet {fleet:?}")]
    WrongFleet {
        /// The fleet it names.
        fleet: String,
    },
    /// A version the node already holds or walked past: trusted state never moves back.
    #[error("trust root version {version} is not newer than the current version {current}")]
    Stale {
        /// Its version.
        version: u64,
        /// The node's version.
        current: u64,
    },
    /// More than one version ahead: the versions between must come first.
    #[error("trust root version {version} skips versions after the current version {current}")]
    Ahead {
        /// Its version.
        version: u64,
        /// The node's version.
        current: u64,
    },
    /// Expired already.
    #[error("trust root version {version} has expired")]
    Expired {
        /// Its version.
        version: u64,
    },
    /// A relayed chain does not end at the node's trust root.
    #[error(
        "the rotation chain ends at version {version}, not at the current root (version {current})"
    )]
    NotCurrent {
        /// The chain's last version.
        version: u64,
        /// The node's version.
        current: u64,
    },
    /// Malformed, or not signed by a threshold of the current and the new root keys.
    #[error(transparent)]
    Invalid(#[from] VerifyError),
}

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

    /// Judges a rotation envelope against the current trust root: the next version, signed by
    /// a threshold of the current and of the new root keys, not expired.
    pub fn check_trust_root(&self, bytes: &[u8]) -> Result<TrustRoot, TrustRootError> {
        let now = self.wall_now().ok_or(TrustRootError::NoClock)?;
        if bytes.len() > MAX_TRUST_ROOT_SIGNED_BYTES {
            return Err(TrustRootError::TooLarge { size: bytes.len() });
        }
        let env = decode::<Envelope>(bytes).map_err(|e| TrustRootError::Invalid(e.into()))?;
        let candidate =
            decode::<TrustRoot>(&env.payload).map_err(|e| TrustRootError::Invalid(e.into()))?;
        let current = &self.config.trust;
        if candidate.fleet != current.fleet {
            return Err(TrustRootError::WrongFleet {
                fleet: candidate.fleet,
            });
        }
        if candidate.version <= current.version {
            return Err(TrustRootError::Stale {
                version: candidate.version,
                current: current.version,
            });
        }
        if candidate.version > current.version + 1 {
            return Err(TrustRootError::Ahead {
                version: candidate.version,
                current: current.version,
            });
        }
        let next = current
            .verify_successor(&env)
            .map_err(TrustRootError::Invalid)?;
        if now >= next.expires {
            return Err(TrustRootError::Expired {
                version: next.version,
            });
        }
        Ok(next)
    }

    /// Takes a rotation envelope offered locally (the builder's origin installing a rotation):
    /// as from gossip, with the reason when it is refused. Returns the new version.
    pub fn offer_trust_root(&mut self, bytes: Vec<u8>) -> Result<u64, TrustRootError> {
        let next = self.check_trust_root(&bytes)?;
        let relayed = GossipMessage::TrustRoot(bytes.clone()).encode();
        let version = self.adopt_trust_root(next, bytes);
        let me = self.id;
        self.relay(me, &relayed);
        Ok(version)
    }

    /// Sets the rotations that led to the configured trust root, oldest first, to hand on to
    /// peers that connect (the builder's origin starts on its fleet's newest root, and devices
    /// provisioned with an older one learn the versions between from it). Each must be the
    /// successor of the one before it, and the last one the configured root.
    pub fn relay_trust_chain(&mut self, chain: Vec<Vec<u8>>) -> Result<(), TrustRootError> {
        let mut prev: Option<TrustRoot> = None;
        let mut last = None;
        for bytes in &chain {
            let env = decode::<Envelope>(bytes).map_err(|e| TrustRootError::Invalid(e.into()))?;
            let root = match &prev {
                Some(p) => p.verify_successor(&env),
                None => TrustRoot::open_initial(&env),
            }
            .map_err(TrustRootError::Invalid)?;
            if root.fleet != self.config.trust.fleet {
                return Err(TrustRootError::WrongFleet { fleet: root.fleet });
            }
            last = Some(root.version);
            prev = Some(root);
        }
        if let Some(v) = last
            && (v != self.config.trust.version
                || prev.as_ref().map(ReleaseCache::trust_digest) != Some(self.trust_digest))
        {
            return Err(TrustRootError::NotCurrent {
                version: v,
                current: self.config.trust.version,
            });
        }
        let skip = chain.len().saturating_sub(MAX_TRUST_CHAIN);
        self.trust_chain = chain.into_iter().skip(skip).collect();
        Ok(())
    }

    fn adopt_trust_root(&mut self, next: TrustRoot, bytes: Vec<u8>) -> u64 {
        let revoked = self
            .config
            .trust
            .release_keys
            .iter()
            .any(|k| !next.release_keys.contains(k));
        let version = next.version;
        self.set_trust(next, bytes);
        if revoked && let Some(now) = self.wall_now() {
            self.recheck_after_revocation(now);
        }
        self.outputs
            .push_back(Output::Event(Event::TrustRotated { version }));
        self.persist();
        version
    }

    pub(super) fn on_trust_root(&mut self, bytes: Vec<u8>) -> Verdict {
        match self.check_trust_root(&bytes) {
            Ok(next) => {
                self.adopt_trust_root(next, bytes);
                Verdict::Accept
            }
            // Already walked past it, or it needs versions we have not seen yet, or no clock
            // yet: not ours to judge.
            Err(
                TrustRootError::NoClock
                | TrustRootError::Stale { .. }
                | TrustRootError::Ahead { .. },
            ) => Verdict::Ignore,
            Err(_) => Verdict::Reject,
        }
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
