//! Pins as the fleet's newest rollout sees them (see the module docs of [`crate::live`]): the
//! fleet's and its devices' pins ([`load`]), whether a pinned release runs the rollout's content
//! ([`same_content`]), and which devices a rollout holds ([`held_for`]). The task brings its
//! rollout in line with them ([`super::task::FleetTask::reconcile_pins`]).

use std::collections::{BTreeMap, BTreeSet};

use shoal_protocol::{DeviceId, Digest, ReleaseSeq};

use super::LiveError;
use super::controller::content_key;
use super::persist;
use crate::app::App;
use crate::pipeline::publish;
use crate::storage::db::{DbError, Fleet};

/// A fleet's pins.
pub(super) struct Pins {
    /// The fleet's own.
    pub(super) fleet: Option<ReleaseSeq>,
    /// Its registered devices'.
    pub(super) devices: Vec<(DeviceId, ReleaseSeq)>,
}

/// Whether published release `pin` of `fleet` runs the content of the rollout's release (`seq`,
/// content `content`); when unknown (its manifest cannot be read), it does not.
pub(super) async fn same_content(
    app: &App,
    fleet: &Fleet,
    pin: ReleaseSeq,
    seq: ReleaseSeq,
    content: Digest,
) -> bool {
    if pin == seq {
        return true;
    }
    match publish::published_manifest(app, fleet, pin).await {
        Ok((m, _)) => content_key(&m) == content,
        Err(e) => {
            tracing::warn!(fleet = %fleet.name, pinned = pin.0, error = %e, "cannot read a pinned release");
            false
        }
    }
}

/// The fleet's pins: its own and its registered devices'.
pub(super) async fn load(app: &App, fleet: &Fleet) -> Result<Pins, LiveError> {
    let internal = |e: DbError| LiveError::Internal(e.to_string());
    let own = persist::fleet_pin(&app.db, fleet).await.map_err(internal)?;
    let devices = crate::registry::devices_of_fleet(&app.db, fleet.id)
        .await
        .map_err(internal)?
        .into_iter()
        .filter_map(|d| {
            let pin = ReleaseSeq(u64::try_from(d.pinned_sequence?).ok()?);
            Some((d.id.parse().ok()?, pin))
        })
        .collect();
    Ok(Pins {
        fleet: own,
        devices,
    })
}

/// The devices the rollout of `seq` (content `content`) holds: those pinned to a release of
/// other content.
pub(super) async fn held_for(
    app: &App,
    fleet: &Fleet,
    pins: &Pins,
    seq: ReleaseSeq,
    content: Digest,
) -> BTreeSet<DeviceId> {
    let mut same = BTreeMap::new();
    let mut held = BTreeSet::new();
    for (d, p) in &pins.devices {
        let s = match same.get(p) {
            Some(s) => *s,
            None => {
                let s = same_content(app, fleet, *p, seq, content).await;
                same.insert(*p, s);
                s
            }
        };
        if !s {
            held.insert(*d);
        }
    }
    held
}

/// The devices registered in the fleet.
pub(super) async fn registered(app: &App, fleet: &Fleet) -> Result<BTreeSet<DeviceId>, LiveError> {
    Ok(crate::registry::devices_of_fleet(&app.db, fleet.id)
        .await
        .map_err(|e| LiveError::Internal(e.to_string()))?
        .into_iter()
        .filter_map(|d| d.id.parse().ok())
        .collect())
}
