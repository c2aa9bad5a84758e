//! # The device registry
//!
//! Devices of a fleet register with the fleet's **provisioning key**
//! (`shoal-builder fleet provisioning-key FLEET` prints one; only its BLAKE3 hash is stored).
//! A registration names the device by its ed25519 public key ([`DeviceId`], also its libp2p
//! identity) and is signed by that key ([`sign_registration`]), so nobody registers a key they
//! do not hold. The builder records the device's name, site, architecture and device type; the
//! answer ([`Registered`]) carries what the device needs to join: its fleet, the signed trust
//! root and where to find the origin's bootstrap addresses.
//!
//! Devices then send signed [`shoal_protocol::StatusReport`]s, either to
//! `POST /api/v1/devices/{id}/status` or through the peer-to-peer network to the builder's origin
//! node. [`Registry::ingest`] checks, in order: the signature (the report's device key); that the
//! device is registered, in the report's fleet, and is the one the URL names; the per-device rate
//! limit ([`Limiter`]); that the release exists and the report's manifest digest is that
//! release's (the report is bound to the exact release); that the report is fresh (within
//! [`FRESHNESS_S`] of the builder's clock); that its nonce was not seen before (a replay). Only
//! then does it update the device: last seen, its latest report, its state on that release
//! (latest by report time, then state order, as the rollout controller counts), and its current
//! release, the highest one it reported healthy.
//!
//! Its HTTP routes are [`crate::http::registry`]'s.
//!
//! A device's **target release** is its pin if it has one, else the fleet's pin, else the fleet's
//! latest published release; see `docs/ROLLOUT.md`.

mod progress;
pub(crate) mod tables;

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use shoal_protocol::{DeviceId, StatusReport, verify};

// The request and answer are the protocol's (the node sends them too).
pub use shoal_protocol::registration::{
    REGISTRATION_KIND, Registered, Registration, registration_payload, sign_registration,
};

pub use progress::{DeviceOnRelease, Progress, WaveProgress, progress, release_plan};
pub use tables::{Device, DeviceRelease};

use crate::app::App;
use crate::storage::db::DbError;

/// Reports this far from the builder's clock (either way) are refused as stale or future.
pub const FRESHNESS_S: i64 = 600;
/// Reports a device may burst.
pub const RATE_BURST: u32 = 20;
/// Reports per second a device may sustain.
pub const RATE_PER_S: u32 = 2;
/// Longest device name or site label.
pub const MAX_LABEL: usize = 63;

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The provisioning key is not one of any fleet's.
    #[error("unknown provisioning key")]
    UnknownKey,
    /// The registration is not signed by the device key it names.
    #[error("the registration is not signed by the device's key")]
    BadSignature,
    /// A name, site, architecture or device type that cannot be used.
    #[error("invalid {0}: use 1-63 characters of [A-Za-z0-9._-]")]
    InvalidLabel(&'static str),
    /// The architecture is not the fleet's.
    #[error("the fleet builds for {fleet}, the device is {device}")]
    WrongArch {
        /// The fleet's.
        fleet: String,
        /// The device's.
        device: String,
    },
    /// Another device of the fleet has this name.
    #[error("another device of the fleet is named {0:?}")]
    NameTaken(String),
    /// The device is registered in another fleet.
    #[error("the device is registered in another fleet")]
    OtherFleet,
    /// Database.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Why a status report was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Not a signed status report, or the signature does not verify.
    #[error("bad report: {0}")]
    Invalid(#[from] verify::VerifyError),
    /// Signed by a device that is not registered.
    #[error("device {0} is not registered")]
    Unregistered(String),
    /// Signed by another device than the one the request names.
    #[error("the report is signed by {signed}, not by {named}")]
    WrongDevice {
        /// The device the request names.
        named: String,
        /// The device whose key signed.
        signed: String,
    },
    /// The device belongs to another fleet than the report names.
    #[error("device {device} is not in fleet {fleet:?}")]
    WrongFleet {
        /// Device.
        device: String,
        /// The report's fleet.
        fleet: String,
    },
    /// The device sends too often.
    #[error("too many reports from device {0}; slow down")]
    RateLimited(String),
    /// No published release of the fleet has this sequence.
    #[error("fleet {fleet:?} has no published release {sequence}")]
    UnknownRelease {
        /// Fleet.
        fleet: String,
        /// Sequence.
        sequence: u64,
    },
    /// The manifest digest is not the release's.
    #[error("the report's manifest digest is not release {0}'s")]
    DigestMismatch(u64),
    /// The report's time is too far from now.
    #[error("report time {time} is more than {FRESHNESS_S} s from the builder's clock {now}")]
    Stale {
        /// Report time.
        time: i64,
        /// Builder time.
        now: i64,
    },
    /// The nonce was seen before.
    #[error("replayed report (nonce seen before)")]
    Replay,
    /// Database.
    #[error(transparent)]
    Db(#[from] DbError),
}

fn valid_label(s: &str, allow_empty: bool) -> bool {
    (allow_empty || !s.is_empty())
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A token bucket per device: [`RATE_BURST`] reports, refilled at [`RATE_PER_S`] a second.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<DeviceId, (f64, std::time::Instant)>>,
}

/// Most devices the limiter tracks before it forgets the idle ones.
const MAX_BUCKETS: usize = 100_000;

impl Limiter {
    /// Takes one report from `device`'s bucket; `false` when it is empty.
    pub fn allow(&self, device: &DeviceId, now: std::time::Instant) -> bool {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() >= MAX_BUCKETS && !b.contains_key(device) {
            let full_after = f64::from(RATE_BURST) / f64::from(RATE_PER_S);
            b.retain(|_, (_, t)| now.duration_since(*t).as_secs_f64() < full_after);
        }
        let (tokens, at) = b.entry(*device).or_insert((f64::from(RATE_BURST), now));
        let refill = now.duration_since(*at).as_secs_f64() * f64::from(RATE_PER_S);
        *tokens = (*tokens + refill).min(f64::from(RATE_BURST));
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The registry: the database tables and the rate limiter.
#[derive(Debug, Default)]
pub struct Registry {
    limiter: Limiter,
}

/// What an accepted report changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accepted {
    /// The device.
    pub device: String,
    /// Whether it changed the device's state on the release (an older report does not).
    pub updated: bool,
    /// The release the device should run.
    pub target_sequence: Option<i64>,
}

impl Registry {
    /// A registry with an empty rate limiter.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers (or re-registers, updating its labels) a device.
    pub async fn register(
        &self,
        app: &App,
        r: &Registration,
        now: i64,
    ) -> Result<Registered, RegisterError> {
        for (what, v, empty) in [
            ("name", &r.name, false),
            ("site", &r.site, true),
            ("arch", &r.arch, false),
            ("device type", &r.device_type, false),
        ] {
            if !valid_label(v, empty) {
                return Err(RegisterError::InvalidLabel(what));
            }
        }
        let fleet = tables::fleet_of_provisioning_key(
            &app.db,
            &crate::app::token_hash(&r.provisioning_key),
        )
        .await?
        .ok_or(RegisterError::UnknownKey)?;
        if !r.verify_signature() {
            return Err(RegisterError::BadSignature);
        }
        if r.arch != fleet.arch {
            return Err(RegisterError::WrongArch {
                fleet: fleet.arch,
                device: r.arch.clone(),
            });
        }
        tables::upsert_device(&app.db, fleet.id, r, now).await?;
        let trust_root = std::fs::read(app.trust_root_path(&fleet.name)).unwrap_or_default();
        Ok(Registered {
            device: r.device.to_string(),
            fleet: fleet.name.clone(),
            trust_root: hex::encode(trust_root),
            trust_root_url: format!("/api/v1/fleets/{}/trust-root", fleet.name),
            bootstrap_url: format!("/api/v1/fleets/{}/bootstrap", fleet.name),
            target_sequence: tables::target(&app.db, &r.device.to_string()).await?,
        })
    }

    /// Checks a signed report (`signed`: the encoded envelope) and records it. `named`: the device
    /// the request is for (the URL's), if any.
    pub async fn ingest(
        &self,
        app: &App,
        signed: &[u8],
        named: Option<&DeviceId>,
        now: i64,
    ) -> Result<Accepted, ReportError> {
        let report = verify::status_report(signed)?;
        if let Some(n) = named
            && *n != report.device
        {
            return Err(ReportError::WrongDevice {
                named: n.to_string(),
                signed: report.device.to_string(),
            });
        }
        self.record(app, &report, now).await
    }

    /// Records a report whose signature was already checked (by the origin node).
    pub async fn record(
        &self,
        app: &App,
        report: &StatusReport,
        now: i64,
    ) -> Result<Accepted, ReportError> {
        let id = report.device.to_string();
        let device = tables::device(&app.db, &id)
            .await?
            .ok_or_else(|| ReportError::Unregistered(id.clone()))?;
        if device.fleet != report.fleet {
            return Err(ReportError::WrongFleet {
                device: id,
                fleet: report.fleet.clone(),
            });
        }
        if !self
            .limiter
            .allow(&report.device, std::time::Instant::now())
        {
            return Err(ReportError::RateLimited(id));
        }
        let sequence = report.sequence.0;
        let digest = tables::release_digest(&app.db, &report.fleet, sequence as i64)
            .await?
            .ok_or_else(|| ReportError::UnknownRelease {
                fleet: report.fleet.clone(),
                sequence,
            })?;
        if digest != report.manifest_digest.to_string() {
            return Err(ReportError::DigestMismatch(sequence));
        }
        let time = i64::try_from(report.time.0).unwrap_or(i64::MAX);
        if (time - now).abs() > FRESHNESS_S {
            return Err(ReportError::Stale { time, now });
        }
        let updated = tables::apply_report(&app.db, report, now).await?;
        Ok(Accepted {
            device: id.clone(),
            updated,
            target_sequence: tables::target(&app.db, &id).await?,
        })
    }
}

impl Registry {
    /// Records the reports the origin nodes received and verified, until `reports` closes.
    /// Reports from unregistered devices and replays (the same report also posted over HTTP)
    /// are dropped.
    pub async fn follow(
        self: std::sync::Arc<Self>,
        app: std::sync::Arc<App>,
        mut reports: tokio::sync::broadcast::Receiver<StatusReport>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match reports.recv().await {
                Ok(r) => {
                    if let Err(e) = self.record(&app, &r, crate::app::now_s()).await {
                        tracing::debug!(device = %r.device.short(), "report not recorded: {e}");
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!("the registry missed {n} device reports (too many at once)");
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

impl App {
    /// Creates a provisioning key for `fleet`; returns it (shown once; its hash is stored).
    pub async fn create_provisioning_key(&self, fleet: &str) -> Result<String, ProvisionError> {
        let f = self
            .db
            .fleet(fleet)
            .await?
            .ok_or_else(|| ProvisionError::NoFleet(fleet.to_string()))?;
        let key = format!("shoalprov_{}", crate::app::random_hex(24));
        tables::add_provisioning_key(
            &self.db,
            f.id,
            &crate::app::token_hash(&key),
            crate::app::now_s(),
        )
        .await?;
        Ok(key)
    }
}

/// Why no provisioning key was made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// No such fleet.
    #[error("no fleet {0:?}")]
    NoFleet(String),
    /// Database.
    #[error(transparent)]
    Db(#[from] DbError),
}

pub use tables::{device_counts, devices_of_fleet, devices_of_release, target_of_fleet};
