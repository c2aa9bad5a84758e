//! The daemon's [`Status`] as the loop sees it, published on a watch channel after changes and
//! every 200 ms, with the [`Milestone`]s of recent releases.

use shoal_protocol::ReleaseSeq;

use super::Driver;
use crate::core;
use crate::daemon::enroll::EnrollState;
use crate::daemon::status::{MILESTONES_KEPT, Milestone, PeerStatus, Status};

impl Driver {
    /// Records that `what` happened to release `sequence` now (once per release and step).
    pub(super) fn milestone(&mut self, sequence: ReleaseSeq, what: &str) {
        if self
            .milestones
            .iter()
            .any(|m| m.sequence == sequence.0 && m.what == what)
        {
            return;
        }
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.milestones.push(Milestone {
            sequence: sequence.0,
            what: what.to_string(),
            at_ms,
        });
        if self.milestones.len() > MILESTONES_KEPT {
            self.milestones.remove(0);
        }
    }

    pub(super) fn publish_status(&mut self) {
        let progress = self.node.progress();
        let banned = {
            let now = tokio::time::Instant::now();
            let mut map = self.banned.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, until| *until > now);
            map.len() as u64
        };
        let (enrolled, enroll_error) = match self.enrollment.as_ref().map(|rx| rx.borrow().clone())
        {
            None => (None, None),
            Some(EnrollState::Enrolled { .. }) => (Some(true), None),
            Some(EnrollState::Pending { last_error, .. }) => {
                (Some(false), last_error.map(|e| e.to_string()))
            }
            Some(EnrollState::Refused(e)) => (Some(false), Some(e.to_string())),
        };
        let status = Status {
            device: self.device.to_string(),
            fleet: self.fleet.clone(),
            site: self.site.clone(),
            data_addr: self.data_addr.to_string(),
            listen_addrs: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
            peers: self
                .peers
                .iter()
                .filter(|(_, p)| p.info.is_some())
                .map(|(d, p)| PeerStatus {
                    device: d.to_string(),
                    addr: p.conn.remote_address().to_string(),
                    class: self.counters.class_of(d).as_str().to_string(),
                    rtt_ms: u32::try_from(p.conn.rtt().as_millis()).unwrap_or(u32::MAX),
                })
                .collect(),
            banned_peers: banned,
            highest: self.node.highest().map(|(s, _)| s.0),
            target: progress.map(|p| p.sequence.0),
            phase: progress.map(|p| phase_name(p.phase).to_string()),
            have_chunks: progress.map_or(0, |p| p.have_chunks),
            total_chunks: progress.map_or(0, |p| p.total_chunks),
            in_flight: progress.map_or(0, |p| p.in_flight),
            applied: self.node.applied().map(|s| s.0),
            committed: self.node.committed().map(|s| s.0),
            refused: self.refused.clone(),
            store_bytes: self.store.used_bytes(),
            store_quota_bytes: self.store.quota_bytes(),
            bytes_in: self.counters.total_in(),
            bytes_out: self.counters.total_out(),
            services: self.runtime.services(),
            trust_version: self.node.trust().version,
            milestones: self.milestones.clone(),
            enrolled,
            enroll_error,
        };
        self.status_tx.send_if_modified(|s| {
            if *s == status {
                false
            } else {
                *s = status;
                true
            }
        });
    }
}
pub(super) fn phase_name(p: core::Phase) -> &'static str {
    match p {
        core::Phase::FetchingManifest => "fetching_manifest",
        core::Phase::Fetching => "fetching",
        core::Phase::Staged => "staged",
        core::Phase::Applying => "applying",
        core::Phase::Running => "running",
        core::Phase::Healthy => "healthy",
        core::Phase::RolledBack => "rolled_back",
        core::Phase::Refused => "refused",
        core::Phase::Halted => "halted",
    }
}
