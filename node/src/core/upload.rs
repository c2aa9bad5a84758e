//! Serving: whether to answer a peer's chunk request now.
//!
//! Every node bounds its concurrent uploads ([`super::Config::max_uploads`]). The origin node
//! (the builder) also *super-seeds*: it serves each chunk at most
//! [`super::Config::origin_copies`] times (default once) while the devices spread it among
//! themselves, and again only when no peer is known to hold it (it sees its peers' HAVEs like any
//! node) and its last upload is older than [`super::Config::fetch_timeout_ms`] (so it is not
//! still on its way). A request it declines gets [`Admission::Busy`]; the requester backs off
//! briefly and asks a peer, or the origin for another chunk.

use shoal_protocol::ReleaseSeq;

use super::node::Node;
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

/// Per-chunk serve counts and last serve times of the origin, for super-seeding.
#[derive(Debug, Clone)]
pub(super) struct Served {
    counts: Vec<u16>,
    last: Vec<Instant>,
}

impl Served {
    pub(super) fn new(len: u32) -> Served {
        Served {
            counts: vec![0; len as usize],
            last: vec![Instant::ZERO; len as usize],
        }
    }

    /// Counts a serve of chunk `i` if the policy allows it now.
    fn take(&mut self, i: u32, now: Instant, copies: u32, held: bool, in_flight_ms: u64) -> bool {
        let (Some(c), Some(last)) = (
            self.counts.get_mut(i as usize),
            self.last.get_mut(i as usize),
        ) else {
            return false;
        };
        let again = !held && *c > 0 && now.ms_since(*last) >= in_flight_ms;
        if u32::from(*c) < copies || again {
            *c = c.saturating_add(1);
            *last = now;
            return true;
        }
        false
    }
}

impl Node {
    /// Whether to serve chunk `index` of release `sequence` to `peer` now. A [`Admission::Serve`]
    /// counts as an upload in progress until [`Node::upload_finished`].
    pub fn admit_upload(&mut self, peer: PeerId, sequence: ReleaseSeq, index: u32) -> Admission {
        let _ = peer;
        if !self.has_chunk(sequence, index) {
            return Admission::NotFound;
        }
        if self.uploads >= self.config.max_uploads {
            return Admission::Busy;
        }
        if self.config.origin {
            let Some(cur) = &mut self.cur else {
                return Admission::NotFound;
            };
            let len = cur.release.as_ref().map_or(0, |r| r.chunks.len() as u32);
            let held = cur.sched.as_ref().is_some_and(|s| s.holders(index) > 0);
            let served = cur.served.get_or_insert_with(|| Served::new(len));
            let (now, copies, wait) = (
                self.now,
                self.config.origin_copies,
                self.config.fetch_timeout_ms,
            );
            if !served.take(index, now, copies, held, wait) {
                return Admission::Busy;
            }
        }
        self.uploads += 1;
        Admission::Serve
    }

    /// An upload admitted by [`Node::admit_upload`] ended (sent or failed).
    pub fn upload_finished(&mut self, peer: PeerId, sequence: ReleaseSeq, index: u32) {
        let _ = (peer, sequence, index);
        self.uploads = self.uploads.saturating_sub(1);
    }

    /// Uploads in progress.
    pub fn uploads(&self) -> u32 {
        self.uploads
    }
}
