//! Pins and the fleet's newest rollout (see the module docs of [`crate::live`]): which devices a
//! rollout holds, whether a pinned release runs the same content, and bringing the rollout in
//! line when a pin changes.

use std::collections::{BTreeMap, BTreeSet};

use shoal_protocol::{DeviceId, Digest, ReleaseSeq};
use shoal_rollout::State;

use super::LiveError;
use super::controller::content_key;
use super::persist::{self, Event};
use super::task::FleetTask;

/// A fleet's pins.
pub(super) struct Pins {
    pub(super) fleet: Option<ReleaseSeq>,
    pub(super) devices: Vec<(DeviceId, ReleaseSeq)>,
}

impl FleetTask {
    /// Whether published release `pin` runs the content of the rollout's release (`seq`,
    /// content `content`); when unknown (its manifest cannot be read), it does not.
    pub(super) async fn same_content(
        &self,
        pin: ReleaseSeq,
        seq: ReleaseSeq,
        content: Digest,
    ) -> bool {
        if pin == seq {
            return true;
        }
        match self.manifest_of(pin).await {
            Ok((m, _)) => content_key(&m) == content,
            Err(e) => {
                tracing::warn!(fleet = %self.fleet.name, pinned = pin.0, error = %e, "cannot read a pinned release");
                false
            }
        }
    }

    /// The fleet's pins: its own and its registered devices'.
    pub(super) async fn pins(&self) -> Result<Pins, LiveError> {
        let internal = |e: crate::storage::db::DbError| LiveError::Internal(e.to_string());
        let db = &self.inner.app.db;
        let fleet = persist::fleet_pin(db, &self.fleet)
            .await
            .map_err(internal)?;
        let devices = crate::registry::devices_of_fleet(db, self.fleet.id)
            .await
            .map_err(internal)?
            .into_iter()
            .filter_map(|d| {
                let pin = ReleaseSeq(u64::try_from(d.pinned_sequence?).ok()?);
                Some((d.id.parse().ok()?, pin))
            })
            .collect();
        Ok(Pins { fleet, devices })
    }

    /// The devices the rollout of `seq` (content `content`) holds: those pinned to a release
    /// of other content.
    pub(super) async fn held_for(
        &self,
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
                    let s = self.same_content(*p, seq, content).await;
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
    pub(super) async fn registered(&self) -> Result<BTreeSet<DeviceId>, LiveError> {
        Ok(
            crate::registry::devices_of_fleet(&self.inner.app.db, self.fleet.id)
                .await
                .map_err(|e| LiveError::Internal(e.to_string()))?
                .into_iter()
                .filter_map(|d| d.id.parse().ok())
                .collect(),
        )
    }

    /// Brings the newest rollout in line with the pins (see the module docs).
    pub(super) async fn reconcile_pins(&mut self) -> Result<(), LiveError> {
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        let (seq, content) = (live.controller.sequence(), live.content);
        let pins = self.pins().await?;
        let held = self.held_for(&pins, seq, content).await;
        let now = self.now_ms();
        if let Some(live) = self.live.as_ref()
            && *live.controller.held() != held
            && *live.controller.state() != State::Halted
        {
            self.feed(now, Event::Hold(held.into_iter().collect()))
                .await?;
        }
        let fleet_pin = match pins.fleet {
            Some(p) if !self.same_content(p, seq, content).await => Some(p),
            _ => None,
        };
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        let state = live.controller.state().clone();
        match (fleet_pin, state) {
            (None, State::Held) => self.feed(now, Event::ReleaseFleet).await?,
            (None, _) => {}
            (Some(p), State::Held) => {
                // Held on what the rollout before it carried; pinned to other content now, the
                // fleet goes there (the held release, never activated, is superseded).
                let db = &self.inner.app.db;
                let before = persist::rollout_before(db, &self.fleet, seq)
                    .await
                    .map_err(|e| LiveError::Internal(e.to_string()))?;
                let there = match before {
                    Some((q, state)) if state != "halted" => match self.manifest_of(q).await {
                        Ok((m, _)) => self.same_content(p, q, content_key(&m)).await,
                        Err(_) => false,
                    },
                    _ => false,
                };
                if !there {
                    tracing::info!(fleet = %self.fleet.name, sequence = seq.0, pinned = p.0, "held fleet pinned to another release: rolling forward to it");
                    self.feed(now, Event::PinFleet(p)).await?;
                }
            }
            (Some(p), State::Running | State::Paused(_)) => {
                tracing::info!(fleet = %self.fleet.name, sequence = seq.0, pinned = p.0, "fleet pinned to an older release: rolling forward to it");
                self.feed(now, Event::PinFleet(p)).await?;
            }
            (Some(p), _) => {
                // Complete, or halted with nothing newer: roll forward to the pinned content.
                let db = &self.inner.app.db;
                let newer = persist::has_newer(db, &self.fleet, seq)
                    .await
                    .map_err(|e| LiveError::Internal(e.to_string()))?;
                if !newer {
                    tracing::info!(fleet = %self.fleet.name, sequence = seq.0, pinned = p.0, "fleet pinned to an older release: rolling forward to it");
                    self.roll_back(Some(p)).await?;
                }
            }
        }
        self.publish_progress();
        Ok(())
    }
}
