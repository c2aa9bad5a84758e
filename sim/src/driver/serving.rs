//! Serving chunk and manifest requests: the server's core admits an upload (or a byzantine
//! server misbehaves), the transfer becomes a flow in the [`crate::net`] model, and its answer
//! reaches the requester one latency after the last byte.

use shoal_node_core::{Admission, FetchError};

use super::effects::core_instant;
use super::{BUILDER, Event, Sim, Transfer};
use crate::faults::Byzantine;

/// Rate of a trickling peer, bytes per second.
const TRICKLE_BYTES_PER_S: f64 = 1.0;

impl Sim {
    pub(crate) fn serve_chunk(&mut self, to: u32, from: u32, index: u32) {
        self.metrics.chunk_requests += 1;
        if from != BUILDER && self.devices[from as usize].site != self.devices[to as usize].site {
            self.metrics.remote_requests += 1;
        }
        if from == BUILDER {
            self.metrics.origin_requests += 1;
        }
        if self.devices[to as usize].stored.get(index) {
            self.push(
                self.now,
                Event::Chunk {
                    to,
                    from,
                    index,
                    result: Ok((0, self.now)),
                },
            );
            return;
        }
        if !self.connected(to, from) || !self.reachable(to, from) {
            self.reply_chunk(to, from, index, FetchError::Io);
            return;
        }
        let size = match self.release.chunks.get(index as usize) {
            Some(c) => u64::from(c.size),
            None => {
                self.reply_chunk(to, from, index, FetchError::NotFound);
                return;
            }
        };
        let mut cap = f64::INFINITY;
        let mut corrupt = false;
        let byzantine = (from != BUILDER)
            .then(|| self.devices[from as usize].byzantine)
            .flatten();
        let admitted = match byzantine {
            Some(Byzantine::Corrupt) => {
                corrupt = true;
                false
            }
            Some(Byzantine::FalseAdverts) => {
                self.reply_chunk(to, from, index, FetchError::NotFound);
                return;
            }
            Some(Byzantine::Trickle) => {
                cap = TRICKLE_BYTES_PER_S;
                false
            }
            None => {
                // The server's core decides: serve, busy (upload slots, super-seeding) or not here.
                let peer = self.devices[to as usize].id;
                let seq = self.release.announcement.sequence;
                let now = core_instant(self.now);
                let admission = if from == BUILDER {
                    self.origin.admit_upload(now, peer, seq, index)
                } else {
                    match self.devices[from as usize].node.as_mut() {
                        Some(n) => n.admit_upload(now, peer, seq, index),
                        None => Admission::NotFound,
                    }
                };
                match admission {
                    Admission::Serve => true,
                    Admission::Busy => {
                        if from == BUILDER {
                            self.metrics.origin_busy += 1;
                        }
                        self.reply_chunk(to, from, index, FetchError::Busy);
                        return;
                    }
                    _ => {
                        self.reply_chunk(to, from, index, FetchError::NotFound);
                        return;
                    }
                }
            }
        };
        let transfer = Transfer {
            to,
            from,
            index,
            started: self.now,
            bytes: size,
            corrupt,
            admitted,
        };
        self.start_transfer(transfer, cap);
    }

    pub(crate) fn reply_chunk(&mut self, to: u32, from: u32, index: u32, err: FetchError) {
        let t = self.now + 2 * self.latency(to, from);
        self.push(
            t,
            Event::Chunk {
                to,
                from,
                index,
                result: Err(err),
            },
        );
    }

    pub(crate) fn serve_manifest(&mut self, to: u32, from: u32) {
        let size = self.release.manifest_bytes.len() as u64;
        if !self.connected(to, from) || !self.reachable(to, from) {
            let t = self.now + 2 * self.latency(to, from);
            self.push(
                t,
                Event::Manifest {
                    to,
                    from,
                    result: Err(FetchError::Io),
                },
            );
            return;
        }
        let (corrupt, cap) = match from {
            BUILDER => (false, f64::INFINITY),
            f => match self.devices[f as usize].byzantine {
                Some(Byzantine::Corrupt) => (true, f64::INFINITY),
                Some(Byzantine::Trickle) => (false, TRICKLE_BYTES_PER_S),
                Some(Byzantine::FalseAdverts) => {
                    let t = self.now + 2 * self.latency(to, from);
                    self.push(
                        t,
                        Event::Manifest {
                            to,
                            from,
                            result: Err(FetchError::NotFound),
                        },
                    );
                    return;
                }
                None => {
                    let has = self.devices[f as usize].node.as_ref().is_some_and(|n| {
                        n.release().is_some_and(|r| {
                            r.manifest.sequence == self.release.announcement.sequence
                        })
                    });
                    if !has {
                        let t = self.now + 2 * self.latency(to, from);
                        self.push(
                            t,
                            Event::Manifest {
                                to,
                                from,
                                result: Err(FetchError::NotFound),
                            },
                        );
                        return;
                    }
                    (false, f64::INFINITY)
                }
            },
        };
        let transfer = Transfer {
            to,
            from,
            index: u32::MAX,
            started: self.now,
            bytes: size,
            corrupt,
            admitted: false,
        };
        self.start_transfer(transfer, cap);
    }

    /// Start the transfer `transfer` (its `started` is now) at most at `cap` bytes/s.
    pub(crate) fn start_transfer(&mut self, transfer: Transfer, cap: f64) {
        let (to, from, index, size) = (transfer.to, transfer.from, transfer.index, transfer.bytes);
        if let Some(old) = self.fetches.get(&(to, from, index)).copied() {
            // A repeated request for the same chunk from the same peer replaces the old one.
            self.net.cancel(
                self.now,
                Self::endpoint(from),
                Self::endpoint(to),
                u64::from(old),
            );
            self.free_transfer(old, false);
        }
        let r = self.transfers.insert(transfer) as u32;
        self.fetches.insert((to, from, index), r);
        let ok = self.net.start(
            self.now,
            Self::endpoint(from),
            Self::endpoint(to),
            size,
            u64::from(r),
            cap,
        );
        if !ok {
            self.free_transfer(r, false);
            self.reply_chunk(to, from, index, FetchError::Io);
        }
    }

    /// The net finished transfer `r`: the answer reaches the receiver one latency later.
    pub(crate) fn transfer_done(&mut self, r: u64) {
        let Some(&transfer) = self.transfers.get(r as usize) else {
            return;
        };
        self.free_transfer(r as u32, true);
        let t = self.now + self.latency(transfer.to, transfer.from);
        if transfer.index == u32::MAX {
            self.push(
                t,
                Event::Manifest {
                    to: transfer.to,
                    from: transfer.from,
                    result: Ok(transfer.corrupt),
                },
            );
        } else {
            let result = if transfer.corrupt {
                Err(FetchError::DigestMismatch)
            } else {
                Ok((transfer.bytes, transfer.started))
            };
            self.push(
                t,
                Event::Chunk {
                    to: transfer.to,
                    from: transfer.from,
                    index: transfer.index,
                    result,
                },
            );
        }
    }

    /// Forget transfer `r`; `sent` if its receiver got every byte.
    pub(crate) fn free_transfer(&mut self, r: u32, sent: bool) {
        let Some(transfer) = self.transfers.try_remove(r as usize) else {
            return;
        };
        let (to, from, index, admitted) = (
            transfer.to,
            transfer.from,
            transfer.index,
            transfer.admitted,
        );
        if admitted {
            let peer = self.devices[to as usize].id;
            let seq = self.release.announcement.sequence;
            if from == BUILDER {
                self.origin.upload_finished(peer, seq, index, sent);
            } else if let Some(n) = self.devices[from as usize].node.as_mut() {
                n.upload_finished(peer, seq, index, sent);
            }
        }
        self.fetches.remove(&(to, from, index));
    }
}
