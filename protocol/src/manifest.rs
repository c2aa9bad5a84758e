//! [`ReleaseManifest`]: what a release is, as signed by the builder.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::chunking::LayerRef;
use crate::encoding::{LimitError, Wire, limit};
use crate::{Digest, ReleaseSeq, UnixTime};

/// Longest name (fleet, service, architecture, device type, label key), in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest free-text value (a command argument, an environment value, a commit message), in bytes.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// Most services in one release.
pub const MAX_SERVICES: usize = 64;
/// Most layers in one image.
pub const MAX_LAYERS: usize = 256;
/// Most chunks in one layer (at the 1 MiB maximum chunk size, 256 GiB).
pub const MAX_CHUNKS_PER_LAYER: usize = 262_144;
/// Most entries in a list or map of service settings.
pub const MAX_SETTINGS_ENTRIES: usize = 256;
/// Largest image config, in bytes.
pub const MAX_IMAGE_CONFIG_BYTES: usize = 256 * 1024;
/// Most waves in a rollout plan.
pub const MAX_WAVES: usize = 16;

/// A release, signed by the fleet's release keys and named by the digest of its envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseManifest {
    /// The fleet it belongs to.
    pub fleet: String,
    /// Strictly increasing per fleet.
    pub sequence: ReleaseSeq,
    /// The git commit it was built from (hex).
    pub commit: String,
    /// When the builder made it.
    pub created: UnixTime,
    /// After this instant no device accepts it.
    pub expires: UnixTime,
    /// Target architecture, as the fleet names it (`amd64`, `aarch64`, `armv7hf`, ...).
    pub arch: String,
    /// Target device type (`generic-amd64`, `raspberrypi4-64`, ...).
    pub device_type: String,
    /// Services by name. A single-image release has one service, `main`.
    pub services: BTreeMap<String, Service>,
    /// How the release rolls out.
    pub rollout: RolloutPlan,
}

/// One service of a release: its image and how to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// The image.
    pub image: ImageRef,
    /// The compose settings a device needs.
    pub settings: ServiceSettings,
}

/// A container image as the device reassembles it: its config and its layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// The image config JSON, verbatim (its SHA-256 is the Engine's image id).
    pub config: Vec<u8>,
    /// BLAKE3 of `config`.
    pub config_digest: Digest,
    /// Layers, bottom first; each an uncompressed layer tar cut into chunks.
    pub layers: Vec<LayerRef>,
}

impl ImageRef {
    /// Total bytes of the image's layers.
    pub fn size_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// How a service is updated when a new release is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateStrategy {
    /// Fetch the new image, then stop the old container and start the new one (default).
    #[default]
    DownloadThenKill,
    /// Stop the old container, then fetch and start the new one.
    KillThenDownload,
    /// Stop and delete the old container and image, then fetch and start the new one.
    DeleteThenDownload,
    /// Start the new container beside the old; stop the old after a timeout or a signal.
    HandOver,
}

impl UpdateStrategy {
    /// The label value (`download-then-kill`, ...).
    pub fn as_label(&self) -> &'static str {
        match self {
            UpdateStrategy::DownloadThenKill => "download-then-kill",
            UpdateStrategy::KillThenDownload => "kill-then-download",
            UpdateStrategy::DeleteThenDownload => "delete-then-download",
            UpdateStrategy::HandOver => "hand-over",
        }
    }

    /// Parses a label value; `None` for an unknown one.
    pub fn from_label(s: &str) -> Option<Self> {
        Some(match s {
            "download-then-kill" => UpdateStrategy::DownloadThenKill,
            "kill-then-download" => UpdateStrategy::KillThenDownload,
            "delete-then-download" => UpdateStrategy::DeleteThenDownload,
            "hand-over" => UpdateStrategy::HandOver,
            _ => return None,
        })
    }
}

/// A container healthcheck, as compose writes it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HealthCheck {
    /// The test, e.g. `["CMD", "true"]` or `["CMD-SHELL", "curl -f localhost"]`.
    pub test: Vec<String>,
    /// Seconds between checks.
    pub interval_s: u32,
    /// Seconds before a check counts as failed.
    pub timeout_s: u32,
    /// Consecutive failures before unhealthy.
    pub retries: u32,
    /// Grace period after start, in seconds.
    pub start_period_s: u32,
}

/// The compose settings of a service that a device applies.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceSettings {
    /// Overrides the image's command.
    pub command: Option<Vec<String>>,
    /// Overrides the image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Environment variables.
    pub environment: BTreeMap<String, String>,
    /// Published ports (`"8080:80"`, `"53/udp"`).
    pub ports: Vec<String>,
    /// Volumes (`"data:/var/lib/app"`); named volumes persist across releases.
    pub volumes: Vec<String>,
    /// Restart policy (`no`, `always`, `on-failure`, `unless-stopped`).
    pub restart: Option<String>,
    /// Container labels.
    pub labels: BTreeMap<String, String>,
    /// Network mode (`bridge`, `host`, ...).
    pub network_mode: Option<String>,
    /// Healthcheck.
    pub healthcheck: Option<HealthCheck>,
    /// Services that must start first.
    pub depends_on: Vec<String>,
    /// How the service is updated.
    pub update_strategy: UpdateStrategy,
}

/// One wave of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    /// Share of the fleet in this wave, in percent (the waves add up to 100).
    pub percent: u8,
    /// Reports needed from this wave before a decision: fewer is inconclusive.
    pub min_sample: u32,
    /// Healthy share of reports (percent) needed to open the next wave.
    pub success_threshold_pct: u8,
    /// Failed share of reports (percent) at which the rollout pauses.
    pub error_threshold_pct: u8,
    /// Seconds to wait after the wave opens before the next may open.
    pub bake_time_s: u64,
}

/// How a release rolls out: waves in order, and a deadline for progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPlan {
    /// Waves, in order; their percents add up to 100.
    pub waves: Vec<Wave>,
    /// A wave that has not concluded this many seconds after it opened pauses the rollout.
    pub progress_deadline_s: u64,
}

impl RolloutPlan {
    /// One wave with the whole fleet.
    pub fn all_at_once() -> Self {
        RolloutPlan {
            waves: vec![Wave {
                percent: 100,
                min_sample: 1,
                success_threshold_pct: 90,
                error_threshold_pct: 10,
                bake_time_s: 0,
            }],
            progress_deadline_s: 3600,
        }
    }

    /// Canary (1%), 10%, 40%, then the rest (49%).
    pub fn canary() -> Self {
        let wave = |percent, min_sample, bake_time_s| Wave {
            percent,
            min_sample,
            success_threshold_pct: 95,
            error_threshold_pct: 5,
            bake_time_s,
        };
        RolloutPlan {
            waves: vec![
                wave(1, 1, 300),
                wave(10, 5, 300),
                wave(40, 20, 300),
                wave(49, 20, 0),
            ],
            progress_deadline_s: 3600,
        }
    }

    /// Checks the percents add up to 100 and the thresholds are percentages.
    pub fn check(&self) -> Result<(), PlanError> {
        if self.waves.is_empty() {
            return Err(PlanError::NoWaves);
        }
        let total: u32 = self.waves.iter().map(|w| u32::from(w.percent)).sum();
        if total != 100 {
            return Err(PlanError::PercentsDoNotAddUp(total));
        }
        for (i, w) in self.waves.iter().enumerate() {
            if w.percent == 0 || w.success_threshold_pct > 100 || w.error_threshold_pct > 100 {
                return Err(PlanError::BadWave(i));
            }
        }
        Ok(())
    }
}

/// A rollout plan that cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The plan has no waves.
    #[error("rollout plan has no waves")]
    NoWaves,
    /// The wave percents add up to something other than 100.
    #[error("wave percents add up to {0}, not 100")]
    PercentsDoNotAddUp(u32),
    /// A wave with 0% or a threshold above 100%.
    #[error("wave {0} has 0% of the fleet or a threshold above 100%")]
    BadWave(usize),
}

fn name(what: &'static str, s: &str) -> Result<(), LimitError> {
    limit(what, s.len(), MAX_NAME_BYTES)
}

fn strings<'a>(
    what: &'static str,
    items: impl ExactSizeIterator<Item = &'a String>,
) -> Result<(), LimitError> {
    limit(what, items.len(), MAX_SETTINGS_ENTRIES)?;
    for s in items {
        limit(what, s.len(), MAX_VALUE_BYTES)?;
    }
    Ok(())
}

impl ServiceSettings {
    fn validate(&self) -> Result<(), LimitError> {
        if let Some(c) = &self.command {
            strings("command", c.iter())?;
        }
        if let Some(e) = &self.entrypoint {
            strings("entrypoint", e.iter())?;
        }
        strings("environment", self.environment.keys())?;
        strings("environment", self.environment.values())?;
        strings("ports", self.ports.iter())?;
        strings("volumes", self.volumes.iter())?;
        strings("labels", self.labels.keys())?;
        strings("labels", self.labels.values())?;
        strings("depends_on", self.depends_on.iter())?;
        if let Some(h) = &self.healthcheck {
            strings("healthcheck", h.test.iter())?;
        }
        for s in [&self.restart, &self.network_mode].into_iter().flatten() {
            name("service setting", s)?;
        }
        Ok(())
    }
}

impl Wire for ReleaseManifest {
    const KIND: &'static str = "release-manifest";
    const MAX_BYTES: usize = 16 * 1024 * 1024;
    fn validate(&self) -> Result<(), LimitError> {
        name("fleet", &self.fleet)?;
        name("commit", &self.commit)?;
        name("arch", &self.arch)?;
        name("device_type", &self.device_type)?;
        limit("services", self.services.len(), MAX_SERVICES)?;
        for (service_name, s) in &self.services {
            name("service name", service_name)?;
            limit("image config", s.image.config.len(), MAX_IMAGE_CONFIG_BYTES)?;
            limit("layers", s.image.layers.len(), MAX_LAYERS)?;
            for l in &s.image.layers {
                limit("layer chunks", l.chunks.len(), MAX_CHUNKS_PER_LAYER)?;
            }
            s.settings.validate()?;
        }
        limit("waves", self.rollout.waves.len(), MAX_WAVES)
    }
}

impl ReleaseManifest {
    /// Every chunk of the release once, in first-use order.
    pub fn unique_chunks(&self) -> Vec<crate::ChunkRef> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for s in self.services.values() {
            for l in &s.image.layers {
                for c in &l.chunks {
                    if seen.insert(c.digest) {
                        out.push(*c);
                    }
                }
            }
        }
        out
    }

    /// Sum of the sizes of the unique chunks: what a device without any of them must fetch.
    pub fn unique_bytes(&self) -> u64 {
        self.unique_chunks().iter().map(|c| u64::from(c.size)).sum()
    }
}
