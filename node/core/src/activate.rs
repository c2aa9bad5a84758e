//! Activation and reports: when a staged release may be applied, what happens when applying or
//! health fails, and the signed status report sent at each state change.

use shoal_protocol::{DeviceState, Envelope, StatusReport, encoding};

use super::node::Node;
use super::snapshot::Phase;
use super::types::{Event, Output, Refusal};

/// Longest report detail, in bytes.
const MAX_DETAIL_BYTES: usize = 1024;

impl Node {
    /// After a chunk is stored: if every chunk is, the release is staged.
    pub(super) fn check_staged(&mut self) {
        let Some(cur) = &mut self.cur else { return };
        if cur.phase != Phase::Fetching || !cur.sched.as_ref().is_some_and(|s| s.is_complete()) {
            return;
        }
        cur.phase = Phase::Staged;
        let sequence = cur.ann.sequence;
        self.outputs
            .push_back(Output::Event(Event::Staged { sequence }));
        self.persist();
        self.report(DeviceState::Staged, String::new());
        self.try_activate();
    }

    /// Applies the staged release if the device's wave is open and the device is not held
    /// (pinned by an operator to another release: [`shoal_protocol::WaveAction::Hold`]).
    pub(super) fn try_activate(&mut self) {
        if self.config.origin {
            return;
        }
        let Some(now) = self.wall_now() else { return };
        let Some(cur) = &mut self.cur else { return };
        let (Some(release), Some(wave)) = (&cur.release, cur.wave) else {
            return;
        };
        let seq = cur.ann.sequence;
        let open = cur.waves.open.is_some_and(|o| wave <= o);
        let w = &cur.waves;
        if cur.phase != Phase::Staged || !open || w.paused || w.halted || w.held {
            return;
        }
        if self.applied.is_some_and(|a| seq <= a) {
            return;
        }
        if now >= release.manifest.expires {
            self.refuse(Refusal::Expired);
            return;
        }
        let manifest = release.manifest.clone();
        cur.phase = Phase::Applying;
        self.applied = Some(seq);
        // The new highest applied sequence is durable before anything is applied.
        self.persist();
        self.outputs.push_back(Output::Apply {
            sequence: seq,
            manifest,
        });
        self.report(DeviceState::Applying, String::new());
    }

    pub(super) fn on_apply_finished(
        &mut self,
        sequence: shoal_protocol::ReleaseSeq,
        result: Result<(), String>,
    ) {
        let Some(cur) = &mut self.cur else { return };
        if cur.ann.sequence != sequence || cur.phase != Phase::Applying {
            return;
        }
        match result {
            Ok(()) => {
                cur.phase = Phase::Running;
                self.persist();
                self.report(DeviceState::Running, String::new());
            }
            Err(e) => self.fail(format!("apply failed: {e}")),
        }
    }

    pub(super) fn on_health(
        &mut self,
        sequence: shoal_protocol::ReleaseSeq,
        healthy: bool,
        detail: String,
    ) {
        let Some(cur) = &mut self.cur else { return };
        if cur.ann.sequence != sequence || cur.phase != Phase::Running {
            return;
        }
        if healthy {
            cur.phase = Phase::Healthy;
            self.committed = Some(sequence);
            self.committed_release = cur.release.clone();
            self.persist();
            self.report(DeviceState::Healthy, detail);
        } else {
            self.fail(format!("health checks failed: {detail}"));
        }
    }

    /// Applying or health failed: report, roll back to the committed release, report again.
    pub(super) fn fail(&mut self, detail: String) {
        let Some(cur) = &mut self.cur else { return };
        let from = cur.ann.sequence;
        cur.phase = Phase::RolledBack;
        self.report(DeviceState::Failed, detail);
        self.outputs.push_back(Output::Rollback {
            from,
            to: self.committed,
        });
        self.persist();
        self.report(DeviceState::RolledBack, String::new());
    }

    /// The current release will not be fetched or applied.
    pub(super) fn refuse(&mut self, reason: Refusal) {
        let Some(cur) = &mut self.cur else { return };
        let sequence = cur.ann.sequence;
        cur.phase = Phase::Refused;
        cur.manifest_fetch.in_flight = None;
        let cancelled = cur
            .sched
            .as_mut()
            .map(|s| s.cancel_all())
            .unwrap_or_default();
        for f in cancelled {
            self.outputs.push_back(Output::CancelFetch {
                peer: f.peer,
                sequence,
                index: f.index,
            });
        }
        let detail = format!("refused: {reason}");
        self.outputs
            .push_back(Output::Event(Event::Refused { sequence, reason }));
        self.persist();
        self.report(DeviceState::Failed, detail);
    }

    /// Signs and emits a status report on the current release.
    pub(super) fn report(&mut self, state: DeviceState, mut detail: String) {
        let Some(cur) = &self.cur else { return };
        if self.config.origin {
            return;
        }
        if detail.len() > MAX_DETAIL_BYTES {
            let mut cut = MAX_DETAIL_BYTES;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        self.last_report = Some((cur.ann.sequence, state, detail.clone()));
        let report = StatusReport {
            fleet: self.config.trust.fleet.clone(),
            device: self.id,
            sequence: cur.ann.sequence,
            manifest_digest: cur.ann.manifest_digest,
            state,
            time: self.wall_now().unwrap_or_default(),
            nonce: self.rng.next_u64(),
            detail,
        };
        let envelope = encoding::encode(&Envelope::seal(&report, &[&self.config.key]));
        self.outputs.push_back(Output::Report { envelope, report });
    }

    /// Reports the last reported state on the current release again, with a fresh time and
    /// nonce (the builder refuses a replayed or stale report).
    pub(super) fn report_again(&mut self) {
        let Some(cur) = &self.cur else { return };
        if let Some((seq, state, detail)) = self.last_report.clone()
            && seq == cur.ann.sequence
        {
            self.report(state, detail);
        }
    }
}
