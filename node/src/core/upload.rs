//! Serving: whether to answer a peer's chunk request now.
//!
//! Every node bounds its concurrent uploads ([`super::Config::max_uploads`]). The origin node
//! (the builder) also *super-seeds*: it serves each chunk once before it serves any chunk
//! twice, so in the first round the builder sends the release about once, and the devices
//! spread it among themselves; a request for a chunk already served in the current round gets
//! [`Admission::Busy`] (the requester backs off briefly and asks for another). Rounds advance
//! when every chunk has been served, so a chunk whose only copy left the fleet is served again.

use shoal_protocol::ReleaseSeq;

use super::node::Node;
use super::types::PeerId;

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

/// Per-chunk serve counts of the origin, for super-seeding.
#[derive(Debug, Clone)]
pub(super) struct Served {
    counts: Vec<u16>,
    round: u16,
    done_in_round: u32,
}

impl Served {
    pub(super) fn new(len: u32) -> Served {
        Served {
            counts: vec![0; len as usize],
            round: 0,
            done_in_round: 0,
        }
    }

    /// Counts a serve of chunk `i` if it is its turn in this round.
    fn take(&mut self, i: u32) -> bool {
        let Some(c) = self.counts.get_mut(i as usize) else {
            return false;
        };
        if *c > self.round {
            return false;
        }
        *c += 1;
        if *c == self.round + 1 {
            self.done_in_round += 1;
            if self.done_in_round as usize == self.counts.len() {
                self.round = self.round.saturating_add(1);
                self.done_in_round = 0;
            }
        }
        true
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
            let served = cur.served.get_or_insert_with(|| Served::new(len));
            if !served.take(index) {
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
