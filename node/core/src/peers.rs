//! Peers: connections, preference order, failures and bans, and their availability (bitfields
//! and HAVEs, kept even before the manifest is known).

use shoal_protocol::ReleaseSeq;

use super::bitfield::Bitfield;
use super::fetch::Class;
use super::node::{MAX_BANNED, MAX_EARLY_HAVE_BITS, Node, Peer, per_peer_cap};
use super::snapshot::Phase;
use super::types::{DropReason, GossipMessage, Instant, Output, PeerId, PeerInfo};

/// The part of a peer's id its point on the site's import ring is made from (its first eight
/// bytes; ids are public keys, so these are as random as the rest).
pub(super) fn id_prefix(id: &PeerId) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[..8]);
    u64::from_le_bytes(b)
}

impl Node {
    // ----- peers -----

    pub(super) fn class_of(&self, info: &PeerInfo) -> Class {
        if info.origin {
            Class::Origin
        } else if info.site.is_some() && info.site == self.config.site {
            Class::Local
        } else {
            Class::Remote
        }
    }

    /// Puts `peer` (connected, its class and RTT set; `known`: already listed) in its place in [`Node::order`]: the
    /// order is by (class, RTT, id), and ids are unique, so a binary search finds the one place
    /// a full sort would give it (a full sort per connection cost the origin, a peer of every
    /// device, O(n² log n) over a fleet).
    pub(super) fn reorder(&mut self, peer: PeerId, known: bool) {
        self.order_meta.clear();
        if known {
            self.order.retain(|p| *p != peer);
        }
        let key = |id: &PeerId| {
            let p = &self.peers[id];
            (p.class, p.info.rtt_ms, *id)
        };
        let k = key(&peer);
        let at = self.order.partition_point(|id| key(id) < k);
        self.order.insert(at, peer);
        self.update_share();
    }

    /// The site's import ring for the current release: the ring salt, this node's point, and
    /// the points of the same-site peers and site members it knows (not banned), sorted.
    fn site_ring(&self) -> Option<(u64, u64, Vec<u64>)> {
        let cur = self.cur.as_ref()?;
        let salt = super::ring::mix64(cur.ann.sequence.0 ^ 0x5348_4f41_4c00_0000);
        let point = |prefix: u64| super::ring::mix64(prefix ^ salt);
        let me = point(id_prefix(&self.id));
        let now = self.now;
        let banned: Vec<u64> = self
            .banned
            .iter()
            .filter(|(_, u)| **u > now)
            .map(|(id, _)| id_prefix(id))
            .collect();
        let mut points: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| p.class == Class::Local)
            .map(|(id, _)| id_prefix(id))
            .chain(
                self.site_members
                    .iter()
                    .copied()
                    .filter(|p| !banned.contains(p)),
            )
            .map(point)
            .collect();
        points.sort_unstable();
        points.dedup();
        Some((salt, me, points))
    }

    /// Whether this node imports the manifest into its site: the manifest's point on the
    /// site's import ring falls in this node's arc (with the whole site known, exactly one node
    /// of the site; with partial views, a few).
    pub(super) fn manifest_importer(&self) -> bool {
        let Some((salt, me, mut points)) = self.site_ring() else {
            return true;
        };
        let arc = super::ring::RingArc::new(me, &mut points);
        arc.contains(super::ring::mix64(salt ^ 0x4d41_4e49_4645_5354))
    }

    /// Recomputes this node's share of its site's imports (see [`super::ring::Share`]).
    pub(super) fn update_share(&mut self) {
        let Some((salt, me, mut points)) = self.site_ring() else {
            return;
        };
        let point = |prefix: u64| super::ring::mix64(prefix ^ salt);
        let vouched: Vec<u64> = self
            .cur
            .as_ref()
            .and_then(|c| c.sched.as_ref())
            .map(|s| {
                s.vouched_local_peers()
                    .map(|id| point(id_prefix(id)))
                    .collect()
            })
            .unwrap_or_default();
        let mut vouched = vouched;
        vouched.sort_unstable();
        vouched.dedup();
        let chunk_salt = super::ring::mix64(salt);
        let (now, idle_ms) = (self.now, self.config.idle_fallback_ms);
        let Some(cur) = &mut self.cur else { return };
        let starved = cur.sched.as_ref().is_some_and(|s| s.starved());
        let idle = super::ring::Idle::after(
            now.ms_since(cur.last_import),
            now.ms_since(cur.last_import.max(cur.last_site_import)),
            now.ms_since(cur.last_progress),
            idle_ms,
            starved,
        );
        if let Some(s) = &mut cur.sched {
            s.set_share(super::ring::Share::new(
                me,
                &mut points,
                &mut vouched,
                chunk_salt,
                idle,
            ));
        }
    }

    /// The site's members changed (see [`super::Input::SiteMembers`]).
    pub(super) fn set_site_members(&mut self, peers: Vec<PeerId>) {
        let me = id_prefix(&self.id);
        let mut members: Vec<u64> = peers.iter().map(id_prefix).filter(|p| *p != me).collect();
        members.sort_unstable();
        members.dedup();
        members.truncate(super::node::MAX_SITE_MEMBERS);
        self.site_members = members;
        self.update_share();
    }

    pub(super) fn on_peer_connected(&mut self, peer: PeerId, info: PeerInfo) {
        if let Some(&until) = self.banned.get(&peer) {
            if until > self.now {
                self.outputs.push_back(Output::BanPeer {
                    peer,
                    reason: DropReason::BadData,
                    until,
                });
                return;
            }
            self.banned.remove(&peer);
        }
        let class = self.class_of(&info);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.info = info;
            p.class = class;
            if let Some(s) = self.cur.as_mut().and_then(|c| c.sched.as_mut()) {
                s.reclass_peer(peer, class);
            }
            self.reorder(peer, true);
            return;
        }
        if self.peers.len() >= self.config.max_peers {
            self.outputs.push_back(Output::DropPeer {
                peer,
                reason: DropReason::TooManyPeers,
            });
            return;
        }
        let origin = info.origin;
        if class != Class::Local
            && !self.peers.values().any(|p| p.class != Class::Local)
            && let Some(cur) = &mut self.cur
        {
            // The first way out of the site after none (a partition healed, the device came
            // back online): nothing could be imported meanwhile, so the idle fallback starts
            // over. Otherwise every node of a site that was cut off would import everything
            // the site lacks at once, each chunk once per node over the one WAN link.
            cur.last_import = self.now;
            cur.last_site_import = self.now;
            cur.last_progress = self.now;
        }
        self.peers.insert(
            peer,
            Peer {
                info,
                class,
                failures: 0,
                backoff_until: Instant::ZERO,
                has_manifest: false,
                early_have: None,
                early_chunks: Vec::new(),
                chunk_ms: None,
                last_delivery: Instant::ZERO,
            },
        );
        self.reorder(peer, false);
        let trust: Vec<Vec<u8>> = self.trust_sync().collect();
        if self.cur.is_none() && !trust.is_empty() {
            self.outputs.push_back(Output::SyncGossip {
                peer,
                messages: trust.clone(),
            });
        }
        if let Some(cur) = &self.cur {
            let mut messages = trust;
            messages.push(GossipMessage::Announcement(cur.ann_bytes.clone()).encode());
            messages.extend(
                cur.waves
                    .controls()
                    .into_iter()
                    .map(|c| GossipMessage::WaveControl(c).encode()),
            );
            self.outputs
                .push_back(Output::SyncGossip { peer, messages });
            if let Some(s) = &cur.sched {
                self.outputs.push_back(Output::SendBitfield {
                    peer,
                    sequence: cur.ann.sequence,
                    have: s.have.clone(),
                });
            }
        }
        if origin {
            // A report made while no origin was connected reached nobody.
            self.report_again();
        }
        self.fetch_manifest();
    }

    pub(super) fn remove_peer(&mut self, peer: &PeerId) {
        if self.peers.remove(peer).is_none() {
            return;
        }
        self.next_backoff.set(None);
        self.order_meta.clear();
        self.order.retain(|p| p != peer);
        if let Some(cur) = &mut self.cur {
            if let Some(s) = &mut cur.sched {
                s.remove_peer(peer);
            }
            if cur
                .manifest_fetch
                .in_flight
                .is_some_and(|(p, _)| p == *peer)
            {
                cur.manifest_fetch.in_flight = None;
            }
        }
    }

    pub(super) fn drop_peer(&mut self, peer: PeerId, reason: DropReason) {
        if self.peers.contains_key(&peer) {
            self.remove_peer(&peer);
            self.outputs.push_back(Output::DropPeer { peer, reason });
        }
    }

    pub(super) fn ban_peer(&mut self, peer: PeerId) {
        let until = self.now.plus_ms(self.config.ban_ms);
        if self.banned.len() >= MAX_BANNED {
            let now = self.now;
            self.banned.retain(|_, u| *u > now);
            if self.banned.len() >= MAX_BANNED
                && let Some((&first, _)) = self.banned.iter().min_by_key(|(_, u)| **u)
            {
                self.banned.remove(&first);
            }
        }
        self.banned.insert(peer, until);
        self.remove_peer(&peer);
        self.outputs.push_back(Output::BanPeer {
            peer,
            reason: DropReason::BadData,
            until,
        });
    }

    /// One more failure: back off, and drop after too many in a row.
    pub(super) fn peer_failed(&mut self, peer: &PeerId) {
        let (base, max, limit) = (
            self.config.backoff_base_ms,
            self.config.backoff_max_ms,
            self.config.max_peer_failures,
        );
        let now = self.now;
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        p.failures += 1;
        if p.failures >= limit {
            self.drop_peer(*peer, DropReason::Unresponsive);
            return;
        }
        let delay = base.saturating_mul(1 << (p.failures - 1).min(20)).min(max);
        self.set_backoff(peer, now.plus_ms(delay));
    }

    /// Leaves `peer` alone until `until`, keeping [`Node::poll_timeout`]'s cache of the next
    /// backoff to end exact.
    pub(super) fn set_backoff(&mut self, peer: &PeerId, until: Instant) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let old = std::mem::replace(&mut p.backoff_until, until);
        if !self.order_meta.is_empty()
            && let Some(k) = self.order.iter().position(|id| id == peer)
        {
            self.order_meta[k].0 = until;
        }
        self.backoff_horizon = self.backoff_horizon.max(until);
        let next = match self.next_backoff.get() {
            // This peer may have held the earliest: not known any more.
            Some(Some(t)) if t == old => None,
            Some(Some(t)) => Some(Some(t.min(until))),
            Some(None) => Some(Some(until)),
            None => None,
        };
        self.next_backoff.set(next);
    }

    // ----- availability -----

    pub(super) fn on_peer_have(&mut self, peer: PeerId, sequence: ReleaseSeq, have: Bitfield) {
        let Some(cur) = &mut self.cur else { return };
        if cur.ann.sequence != sequence {
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.has_manifest = true;
        // It holds the manifest now, whatever it answered before.
        cur.manifest_fetch.tried.remove(&peer);
        match &mut cur.sched {
            None => p.early_have = Some(have),
            Some(s) => {
                if have.len() == s.len() {
                    s.set_peer_have(peer, p.class, have);
                }
            }
        }
        self.fetch_manifest();
    }

    pub(super) fn on_peer_have_chunk(&mut self, peer: PeerId, sequence: ReleaseSeq, index: u32) {
        if self.ignores_have(&peer, sequence, index) {
            return;
        }
        self.on_peer_have_chunk_news(peer, sequence, index);
    }

    /// [`Node::on_peer_have_chunk`] of a HAVE that [`Node::ignores_have`] does not drop.
    pub(super) fn on_peer_have_chunk_news(
        &mut self,
        peer: PeerId,
        sequence: ReleaseSeq,
        index: u32,
    ) {
        let Some(cur) = &mut self.cur else { return };
        if cur.ann.sequence != sequence {
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !p.has_manifest {
            p.has_manifest = true;
            cur.manifest_fetch.tried.remove(&peer);
        }
        let class = p.class;
        let Some(s) = &mut cur.sched else {
            if index < MAX_EARLY_HAVE_BITS {
                let w = (index / 64) as usize;
                if p.early_chunks.len() <= w {
                    p.early_chunks.resize(w + 1, 0);
                }
                p.early_chunks[w] |= 1 << (index % 64);
            }
            self.fetch_manifest();
            return;
        };
        if index >= s.len() {
            return;
        }
        // A same-site peer holds a chunk this node lacks that no same-site peer held: the site
        // is importing (see `Current::last_site_import`).
        let site_import =
            class == Class::Local && !s.have.get(index) && s.local_holders(index) == 0;
        if !s.peer_has(peer, class, index) {
            return;
        }
        if site_import {
            cur.last_site_import = self.now;
        }
        // Starved and this peer may serve it: ask at once, without a full scheduling pass.
        if cur.phase == Phase::Fetching
            && s.is_needed(index)
            && s.class_may_serve(class, index)
            && (s.in_flight.len() as u32) < self.config.max_in_flight_total
            && s.in_flight_of(&peer)
                < per_peer_cap(
                    self.config.max_in_flight_per_peer,
                    p,
                    self.config.remote_horizon_ms,
                )
            && p.backoff_until <= self.now
        {
            self.start_fetch(peer, index);
        }
    }
}
