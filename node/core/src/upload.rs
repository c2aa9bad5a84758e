//! Serving: whether to answer a peer's chunk request now.
//!
//! Every node bounds its concurrent uploads ([`super::Config::max_uploads`]). The origin node
//! (the builder) also *super-seeds*: it serves each chunk [`super::Config::origin_copies`] times
//! (default once) while the devices spread it among themselves, and again only when no peer is
//! known to hold it (it sees its peers' HAVEs like any node) and its last upload is older than
//! [`super::Config::fetch_timeout_ms`] (so it is not still on its way), or at once when the
//! driver reports that upload failed ([`Node::upload_finished`] with `sent == false`).
//!
//! Super-seeding saves the builder's uplink when it is the bottleneck; when it is not, copying
//! each chunk once leaves the uplink idle while sites wait for a peer elsewhere to hold the
//! chunk. So while fewer than half of its upload slots are busy, the origin serves further
//! copies, up to [`super::Config::origin_max_copies`] per chunk (no limit by default): spare
//! capacity goes to the sites that still lack a chunk (requesters only ask the origin for what
//! no peer they know holds), and a busy origin falls back to one copy. A declined request gets
//! [`Admission::Busy`]; the requester backs off briefly (a jittered 30 ms) and asks a peer, or
//! the origin for another chunk. (A cap of 8 copies left the origin of constrained-wan, whose
//! 20 sites relay over 20 Mbit/s uplinks, idle 86% of the time while it answered `Busy` to
//! nearly every request: at 200 devices / 64 MiB, 31.3 s with the cap, 14.1 s without.)

use shoal_protocol::ReleaseSeq;

use super::node::Node;
use super::served::{CopyPolicy, Served};
use super::types::{Instant, PeerId};

/// The answer to [`Node::admit_upload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Admission {
    /// Serve it; call [`Node::upload_finished`] when done (or failed).
    Serve,
    /// Not now: answer the peer with [`super::FetchError::Busy`].
    Busy,
    /// Not stored here: answer with [`super::FetchError::NotFound`].
    NotFound,
}

impl Node {
    /// Whether to serve chunk `index` of release `sequence` to `peer` at `now`. A
    /// [`Admission::Serve`] counts as an upload in progress until [`Node::upload_finished`].
    pub fn admit_upload(
        &mut self,
        now: Instant,
        peer: PeerId,
        sequence: ReleaseSeq,
        index: u32,
    ) -> Admission {
        let _ = peer;
        self.now = self.now.max(now);
        if !self.has_chunk(sequence, index) {
            return Admission::NotFound;
        }
        if self.uploads >= self.config.max_uploads {
            return Admission::Busy;
        }
        if self.config.origin {
            let policy = CopyPolicy {
                copies: self.config.origin_copies,
                spare: self.uploads < self.config.max_uploads / 2,
                spare_copies: self.config.origin_max_copies,
                in_flight_ms: self.config.fetch_timeout_ms,
            };
            let now = self.now;
            let Some(cur) = &mut self.cur else {
                return Admission::NotFound;
            };
            let len = cur.release.as_ref().map_or(0, |r| r.chunks.len() as u32);
            let held = cur.sched.as_ref().is_some_and(|s| s.holders(index) > 0);
            let served = cur.served.get_or_insert_with(|| Served::new(len));
            if !served.take(index, now, policy, held) {
                return Admission::Busy;
            }
        }
        self.uploads += 1;
        Admission::Serve
    }

    /// An upload admitted by [`Node::admit_upload`] ended: `sent` if the peer got every byte,
    /// not if it failed or was cancelled (then the origin may serve that chunk again at once).
    pub fn upload_finished(&mut self, peer: PeerId, sequence: ReleaseSeq, index: u32, sent: bool) {
        let _ = peer;
        self.uploads = self.uploads.saturating_sub(1);
        if !sent
            && let Some(cur) = &mut self.cur
            && cur.ann.sequence == sequence
            && let Some(served) = &mut cur.served
        {
            served.lost(index);
        }
    }

    /// Uploads in progress.
    pub fn uploads(&self) -> u32 {
        self.uploads
    }
}
