//! # Operator actions and the audit log
//!
//! The changes an operator makes ([`Change`]) and the audit log that records each ([`apply`],
//! [`audit_log`]); their HTTP routes, which check the token's role, are
//! [`crate::http::operator`]'s.
//!
//! Tokens have a role ([`crate::app::Role`]): `push` tokens push code and save views;
//! `operator` tokens (`shoal-builder token create --operator`) also steer rollouts (pause,
//! resume, abort, promote), pin a fleet or a device to a release and change a fleet's rollout
//! policy. A request without a valid token gets 401, a push token asking for an operator action
//! 403; a refused request changes nothing.
//!
//! Every accepted action is written to the `audit_log` table in the same transaction as the
//! change it makes ([`Action`] names them), so the log cannot miss a change nor record one that
//! did not happen.
//!
//! **Pins.** Pinning a fleet to release N makes N the fleet's *target release* instead of the
//! latest published one; pinning a device overrides its fleet's target for that device alone.
//! The target is what the builder tells a device when it registers and in the answer to each of
//! its status reports, and what the dashboard shows beside the device's current release. Trust
//! never moves backwards: a device never re-activates an older sequence, so pinning to an older
//! release means publishing its content again as a new sequence (as abort does). See
//! `docs/ROLLOUT.md`.

pub mod views;

use serde::Serialize;
use shoal_protocol::RolloutPlan;

use crate::storage::db::{Db, DbError, plan_to_json};

/// An audited operator action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Pin or unpin a fleet.
    FleetPin,
    /// Pin or unpin a device.
    DevicePin,
    /// Change a fleet's rollout policy.
    RolloutPolicy,
    /// Pause a release's rollout.
    Pause,
    /// Resume it.
    Resume,
    /// Open its next wave now.
    Promote,
    /// Abort it.
    Abort,
    /// Save a view.
    SaveView,
    /// Delete a view.
    DeleteView,
}

impl Action {
    /// The name stored in the audit log.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::FleetPin => "fleet.pin",
            Action::DevicePin => "device.pin",
            Action::RolloutPolicy => "fleet.rollout_policy",
            Action::Pause => "rollout.pause",
            Action::Resume => "rollout.resume",
            Action::Promote => "rollout.promote",
            Action::Abort => "rollout.abort",
            Action::SaveView => "view.save",
            Action::DeleteView => "view.delete",
        }
    }
}

/// One audit log entry.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    /// Row id.
    pub id: i64,
    /// Unix seconds.
    pub time: i64,
    /// The token's name.
    pub actor: String,
    /// What was done (`rollout.pause`, ...).
    pub action: String,
    /// The fleet.
    pub fleet: Option<String>,
    /// What it was done to (a release id, a device id, a view name).
    pub target: Option<String>,
    /// Details (JSON).
    pub detail: String,
}

/// What an audited change records.
#[derive(Debug, Clone)]
pub struct Audit<'a> {
    /// Who.
    pub actor: &'a str,
    /// What.
    pub action: Action,
    /// Which fleet.
    pub fleet: &'a str,
    /// To what.
    pub target: String,
    /// Details.
    pub detail: serde_json::Value,
}

/// One change of an audited action.
#[derive(Debug, Clone)]
pub enum Change {
    /// Set a fleet's pin.
    FleetPin {
        /// Fleet row id.
        fleet_id: i64,
        /// The release, or `None` to unpin.
        sequence: Option<i64>,
    },
    /// Set a device's pin.
    DevicePin {
        /// Device id.
        device: String,
        /// The release, or `None` to unpin.
        sequence: Option<i64>,
    },
    /// Replace a fleet's rollout plan.
    Policy {
        /// Fleet row id.
        fleet_id: i64,
        /// The plan (checked).
        plan: RolloutPlan,
    },
    /// Save (or replace) a view.
    SaveView {
        /// Fleet row id.
        fleet_id: i64,
        /// Name.
        name: String,
        /// Filters (normalised).
        filters: views::Filters,
        /// Unix seconds.
        now: i64,
    },
    /// Delete a view; `false` from [`apply`] when there was none.
    DeleteView {
        /// Fleet row id.
        fleet_id: i64,
        /// Name.
        name: String,
    },
    /// Nothing to change here (a rollout action carried out by the live loop), only the record.
    None,
}

/// Makes `change` and records `audit` in one transaction; returns whether a row changed.
pub async fn apply(db: &Db, change: &Change, audit: &Audit<'_>) -> Result<bool, DbError> {
    let mut tx = db.pool().begin().await?;
    let changed = match change {
        Change::FleetPin { fleet_id, sequence } => {
            sqlx::query("UPDATE fleets SET pinned_sequence = ?2 WHERE id = ?1")
                .bind(fleet_id)
                .bind(sequence)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        }
        Change::DevicePin { device, sequence } => {
            sqlx::query("UPDATE devices SET pinned_sequence = ?2 WHERE id = ?1")
                .bind(device)
                .bind(sequence)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        }
        Change::Policy { fleet_id, plan } => {
            sqlx::query("UPDATE fleets SET rollout_plan = ?2 WHERE id = ?1")
                .bind(fleet_id)
                .bind(plan_to_json(plan).to_string())
                .execute(&mut *tx)
                .await?
                .rows_affected()
        }
        Change::SaveView {
            fleet_id,
            name,
            filters,
            now,
        } => {
            sqlx::query(
                "INSERT INTO saved_views (fleet_id, name, filters, created) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (fleet_id, name) DO UPDATE SET filters = excluded.filters",
            )
            .bind(fleet_id)
            .bind(name)
            .bind(serde_json::to_string(filters).unwrap_or_else(|_| "{}".into()))
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        }
        Change::DeleteView { fleet_id, name } => {
            sqlx::query("DELETE FROM saved_views WHERE fleet_id = ?1 AND name = ?2")
                .bind(fleet_id)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        }
        Change::None => 1,
    };
    if changed == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO audit_log (time, actor, action, fleet, target, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(crate::app::now_s())
    .bind(audit.actor)
    .bind(audit.action.as_str())
    .bind(audit.fleet)
    .bind(&audit.target)
    .bind(audit.detail.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// The newest `limit` audit entries of `fleet`, newest first.
pub async fn audit_log(db: &Db, fleet: &str, limit: i64) -> Result<Vec<AuditEntry>, DbError> {
    Ok(sqlx::query_as(
        "SELECT id, time, actor, action, fleet, target, detail FROM audit_log WHERE fleet = ?1 ORDER BY id DESC LIMIT ?2",
    )
    .bind(fleet)
    .bind(limit)
    .fetch_all(db.pool())
    .await?)
}

/// The fleet's pin.
pub async fn fleet_pin(db: &Db, fleet_id: i64) -> Result<Option<i64>, DbError> {
    let row: Option<(Option<i64>,)> =
        sqlx::query_as("SELECT pinned_sequence FROM fleets WHERE id = ?1")
            .bind(fleet_id)
            .fetch_optional(db.pool())
            .await?;
    Ok(row.and_then(|r| r.0))
}
