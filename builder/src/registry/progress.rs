//! A release's rollout progress as the registry sees it: every device of the fleet, its wave
//! (from the release's signed rollout plan and [`wave_of`]) and its state on the release, and
//! per-wave counts as the rollout controller counts them.

use serde::Serialize;
use shoal_protocol::waves::wave_of;
use shoal_protocol::{DeviceId, Digest, Envelope, ReleaseManifest, ReleaseSeq, RolloutPlan};

use super::tables::{self, DeviceRelease};
use crate::app::App;
use crate::storage::blobs::Kind;
use crate::storage::db::{DbError, Release};

/// One wave's counts.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct WaveProgress {
    /// 0-based.
    pub wave: u32,
    /// Its share of the fleet.
    pub percent: u8,
    /// Registered devices in it.
    pub devices: u32,
    /// Devices that reported on the release.
    pub reported: u32,
    /// Devices whose latest state is `healthy`.
    pub healthy: u32,
    /// Devices whose latest state is `failed` or `rolled_back`.
    pub failed: u32,
}

/// A device on the release page.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceOnRelease {
    /// Its wave for this release.
    pub wave: u32,
    /// Its state.
    #[serde(flatten)]
    pub device: DeviceRelease,
}

/// A release's progress.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// The rollout plan the release carries.
    pub plan: RolloutPlan,
    /// Per wave.
    pub waves: Vec<WaveProgress>,
    /// Per device, by name.
    pub devices: Vec<DeviceOnRelease>,
}

/// The plan signed into a release's manifest; the fleet's plan when it cannot be read.
pub fn release_plan(app: &App, release: &Release, fleet_plan: RolloutPlan) -> RolloutPlan {
    let manifest = release
        .manifest_digest
        .as_deref()
        .and_then(|d| d.parse::<Digest>().ok())
        .and_then(|d| app.store.get(Kind::Manifest, &d).ok().flatten())
        .and_then(|b| shoal_protocol::encoding::decode::<Envelope>(&b).ok())
        .and_then(|e| shoal_protocol::encoding::decode::<ReleaseManifest>(&e.payload).ok());
    manifest.map(|m| m.rollout).unwrap_or(fleet_plan)
}

/// The progress of `release` (published or not: an unpublished one has no reports).
pub async fn progress(app: &App, release: &Release) -> Result<Progress, DbError> {
    let fleet = app
        .db
        .fleet(&release.fleet)
        .await?
        .ok_or_else(|| DbError::Corrupt(format!("fleet {} vanished", release.fleet)))?;
    let plan = release_plan(app, release, fleet.plan());
    let seq = release.sequence.unwrap_or(0);
    let rows = tables::devices_of_release(&app.db, fleet.id, seq).await?;
    let mut waves: Vec<WaveProgress> = plan
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| WaveProgress {
            wave: i as u32,
            percent: w.percent,
            ..WaveProgress::default()
        })
        .collect();
    let mut devices = Vec::with_capacity(rows.len());
    for d in rows {
        let Ok(id) = d.device.parse::<DeviceId>() else {
            continue;
        };
        let wave = wave_of(&plan, &id, &fleet.name, ReleaseSeq(seq as u64));
        if let Some(w) = waves.get_mut(wave as usize) {
            w.devices += 1;
            if let Some(state) = d.state.as_deref() {
                w.reported += 1;
                match state {
                    "healthy" => w.healthy += 1,
                    "failed" | "rolled_back" => w.failed += 1,
                    _ => {}
                }
            }
        }
        devices.push(DeviceOnRelease { wave, device: d });
    }
    Ok(Progress {
        plan,
        waves,
        devices,
    })
}
