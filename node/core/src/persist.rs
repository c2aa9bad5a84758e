//! Persistence: snapshots out, and resuming from one.

use shoal_protocol::verify::{self, Context};

use super::bitfield::Bitfield;
use super::fetch::Scheduler;
use super::node::{Current, ManifestFetch, Node, Waves};
use super::snapshot::{Phase, ReleaseSnapshot};
use super::types::{Instant, Output};

impl Node {
    // ----- persistence -----

    pub(super) fn persist(&mut self) {
        self.persist_due = None;
        let snap = self.snapshot();
        self.outputs.push_back(Output::Persist(Box::new(snap)));
    }

    /// Re-verifies a resumed release at the first wall clock.
    pub(super) fn restore(&mut self, snap: ReleaseSnapshot) {
        let Some(ctx) = self.ctx() else { return };
        // The snapshot's own release is the highest seen; verify as if it were new.
        let ctx = Context {
            highest_seen: None,
            ..ctx
        };
        let Ok(ann) = verify::announcement(&ctx, &snap.announcement) else {
            return;
        };
        if self.highest != Some((ann.sequence, ann.manifest_digest)) {
            return;
        }
        let release = match &snap.manifest {
            Some(bytes) => {
                match self
                    .config
                    .releases
                    .verify(&ctx, self.trust_digest, &ann, bytes.clone())
                {
                    Ok(r) => Some(r),
                    Err(_) => return,
                }
            }
            None => None,
        };
        let mut cur = Current {
            ann,
            ann_bytes: snap.announcement,
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
        for c in &snap.controls {
            if let Ok(wc) = verify::wave_control(&self.config.trust, c, ctx.now)
                && wc.sequence == cur.ann.sequence
                && wc.manifest_digest == cur.ann.manifest_digest
                && cur.waves.counter.is_none_or(|k| wc.counter > k)
            {
                cur.waves.apply(&wc, c.clone(), &self.id);
            }
        }
        self.cur = Some(cur);
        match (release, snap.have) {
            (Some(release), Some(have)) if have.len() as usize == release.chunks.len() => {
                let committed_here = self.committed == Some(release.manifest.sequence);
                if let Some(cur) = &mut self.cur {
                    cur.wave = Some(shoal_protocol::waves::wave_of(
                        &release.manifest.rollout,
                        &self.id,
                        &release.manifest.fleet,
                        release.manifest.sequence,
                    ));
                    cur.release = Some(release.clone());
                }
                if committed_here {
                    self.committed_release = Some(release);
                }
                match snap.phase {
                    Phase::FetchingManifest | Phase::Fetching | Phase::Staged => {
                        self.install_have(have)
                    }
                    Phase::Applying | Phase::Running => {
                        // Interrupted mid-apply: the runtime is back on the committed release,
                        // and this sequence may not be applied again. It failed.
                        self.finish_restore(have, snap.phase);
                        self.fail("interrupted by a restart while applying".to_string());
                    }
                    other => self.finish_restore(have, other),
                }
            }
            _ => self.fetch_manifest(),
        }
    }

    pub(super) fn finish_restore(&mut self, have: Bitfield, phase: Phase) {
        if let Some(cur) = &mut self.cur {
            cur.sched = Some(Scheduler::new(have));
            cur.phase = phase;
        }
    }
}
