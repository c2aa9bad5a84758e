//! Start-up: a fleet's newest rollout rebuilt from its stored events (see "Restarts" in the
//! module docs of [`crate::live`]).

use shoal_protocol::Digest;
use shoal_rollout::State;

use super::LiveError;
use super::controller::{apply, content_key, drain_replayed, new_live};
use super::persist::{self, Event};
use super::task::FleetTask;
use crate::pipeline::publish;
use crate::storage::db::DbError;

impl FleetTask {
    /// Rebuilds the fleet's newest rollout from its stored events.
    /// Rebuilds the fleet's newest rollout from its stored events.
    pub(super) async fn resume(&mut self) {
        if let Err(e) = self.try_resume().await {
            tracing::error!(fleet = %self.fleet.name, error = %e, "cannot resume the rollout");
        }
    }

    async fn try_resume(&mut self) -> Result<(), LiveError> {
        let app = self.inner.app.clone();
        let db = &app.db;
        let internal = |e: DbError| LiveError::Internal(e.to_string());
        let Some(row) = persist::latest_rollout(db, &self.fleet)
            .await
            .map_err(internal)?
        else {
            return Ok(());
        };
        let digest: Digest = row
            .manifest_digest
            .parse()
            .map_err(|_| LiveError::Internal("stored manifest digest does not parse".into()))?;
        // The stored manifest says what the release runs (for pins); without it, only the
        // release itself counts as the same.
        let content = publish::stored_manifest(&self.inner.app, &digest)
            .map(|m| content_key(&m))
            .unwrap_or(digest);
        let mut live = new_live(&self.fleet.name, &row, digest, content);
        let events = persist::events(db, &self.fleet, row.sequence)
            .await
            .map_err(internal)?;
        // Drain after each event, as the live loop did, so the action queue never overflows and
        // the wave control counter lands where it was; the pins fed at the start went in before
        // the first drain.
        let leading = events.iter().take_while(|(_, e)| e.at_start()).count();
        for (at, event) in &events[..leading] {
            apply(&mut live, *at, event);
        }
        drain_replayed(&mut live);
        for (at, event) in &events[leading..] {
            apply(&mut live, *at, event);
            drain_replayed(&mut live);
        }
        self.live = Some(live);
        self.act(true).await;
        // Gossip the published wave control messages again, in order.
        for bytes in persist::wave_controls(db, &self.fleet, row.sequence)
            .await
            .map_err(internal)?
        {
            let _ = self.inner.gossip.publish(&self.fleet.name, bytes).await;
        }
        // An abort (or a fleet pin) whose rollback never went out is finished now.
        let back_to = events.iter().rev().find_map(|(_, e)| match e {
            Event::Abort => Some(self.live.as_ref().and_then(|l| l.controller.previous())),
            Event::PinFleet(p) => Some(Some(*p)),
            _ => None,
        });
        if let Some(live) = &self.live
            && *live.controller.state() == State::Halted
            && let Some(to) = back_to
            && !persist::has_newer(db, &self.fleet, row.sequence)
                .await
                .map_err(internal)?
        {
            self.roll_back(to).await?;
        }
        // Pins changed while the builder was down act now.
        self.reconcile_pins().await?;
        tracing::info!(
            fleet = %self.fleet.name,
            sequence = row.sequence.0,
            events = events.len(),
            "rollout resumed"
        );
        Ok(())
    }
}
