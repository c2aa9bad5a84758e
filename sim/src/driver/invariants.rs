//! The safety invariants checked after every input of a device: sequences never go down,
//! the store stays under its quota, a chunk whose bytes did not verify is never stored. A broken
//! one becomes the run's [`super::Violation`] (see [`Sim::fail`]).

use super::Sim;

/// The store quota the simulated devices run with (the core's default).
pub(crate) const STORE_QUOTA_BYTES: u64 = 16 << 30;

impl Sim {
    /// Safety invariants of device `d`, after each of its inputs.
    pub(crate) fn check(&mut self, d: u32) {
        let Some(node) = self.devices[d as usize].node.as_ref() else {
            return;
        };
        let highest = node.highest().map_or(0, |h| h.0.0);
        let applied = node.applied().map_or(0, |s| s.0);
        let progress = node.progress();
        let have_chunks = progress.map_or(0, |p| p.have_chunks);
        let dev = &mut self.devices[d as usize];
        let now = self.now;
        let m = &mut dev.milestones;
        if let Some(p) = progress {
            m.announced.get_or_insert(now);
            if p.total_chunks > 0 {
                m.manifest.get_or_insert(now);
            }
            if have_chunks > 0 {
                m.first_chunk.get_or_insert(now);
            }
        }
        let dev = &self.devices[d as usize];
        let (last_highest, last_applied) = (dev.last_highest, dev.last_applied);
        if highest < last_highest {
            self.fail(
                d,
                format!("highest sequence went from {last_highest} down to {highest}"),
            );
        }
        if applied < last_applied {
            self.fail(
                d,
                format!("applied sequence went from {last_applied} down to {applied}"),
            );
        }
        let bytes = u64::from(have_chunks) * self.scenario.chunk_bytes();
        if bytes > STORE_QUOTA_BYTES {
            self.fail(
                d,
                format!("store holds {bytes} bytes, above its quota {STORE_QUOTA_BYTES}"),
            );
        }
        let dev = &mut self.devices[d as usize];
        dev.last_highest = dev.last_highest.max(highest);
        dev.last_applied = dev.last_applied.max(applied);
    }

    /// A corrupt chunk was reported: the node must not count it as stored.
    pub(crate) fn check_store(&mut self, d: u32, index: u32) {
        let dev = &self.devices[d as usize];
        let seq = self.release.announcement.sequence;
        if dev.node.as_ref().is_some_and(|n| n.has_chunk(seq, index)) && !dev.stored.get(index) {
            self.metrics.corrupt_stored += 1;
            self.fail(
                d,
                format!("chunk {index} stored although its bytes did not verify"),
            );
        }
    }
}
