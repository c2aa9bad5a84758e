//! The live loop's tables (`builder/migrations/0010_live_rollouts.sql`): rollouts, the events
//! fed to their controllers, the wave control messages published, the devices heard of. (A
//! rollback's release row is the pipeline's, [`crate::pipeline::publish`].)

use serde::{Deserialize, Serialize};
use shoal_protocol::{DeviceId, ReleaseSeq, RolloutPlan, StatusReport};
use sqlx::Row;

use crate::storage::db::{Db, DbError, Fleet};

/// One input of a rollout's controller, stored before it is fed (so a restart replays exactly
/// what the controller saw, and takes the same decisions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A device joined the rollout.
    Device(DeviceId),
    /// A verified status report for the release.
    Report(StatusReport),
    /// A timer fired and changed something.
    Timeout,
    /// Operator: pause.
    Pause,
    /// Operator: resume.
    Resume,
    /// Operator: open the next wave now.
    Promote,
    /// Operator: abort.
    Abort,
    /// Pins: exactly these devices are held out of the release (pinned to another one).
    Hold(Vec<DeviceId>),
    /// Pins: the fleet is pinned to another release; the rollout, not started, waits.
    HoldFleet,
    /// Pins: the fleet pin no longer holds the rollout; wave 0 opens.
    ReleaseFleet,
    /// Pins: the fleet was pinned to this older release while the rollout ran: halt it and
    /// roll forward to that release's content.
    PinFleet(ReleaseSeq),
}

impl Event {
    /// Whether the event is fed before the rollout's first action is taken (so a replay takes
    /// it before draining the controller's first actions, as the live loop did).
    pub fn at_start(&self) -> bool {
        matches!(self, Event::Hold(_) | Event::HoldFleet)
    }
}

/// A rollout row.
#[derive(Debug, Clone)]
pub struct RolloutRow {
    /// The release.
    pub sequence: ReleaseSeq,
    /// Its manifest digest (hex).
    pub manifest_digest: String,
    /// Its plan.
    pub plan: RolloutPlan,
    /// The release an abort returns to.
    pub previous: Option<ReleaseSeq>,
    /// Wall-clock milliseconds when wave 0 opened.
    pub started_ms: u64,
    /// Last recorded state name.
    pub state: String,
}

fn corrupt(e: impl std::fmt::Display) -> DbError {
    DbError::Corrupt(e.to_string())
}

/// Records a new rollout.
pub async fn insert_rollout(db: &Db, fleet: &Fleet, r: &RolloutRow) -> Result<(), DbError> {
    sqlx::query(
        "INSERT OR IGNORE INTO live_rollouts (fleet_id, sequence, manifest_digest, rollout_plan, previous, started_ms, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(fleet.id)
    .bind(r.sequence.0 as i64)
    .bind(&r.manifest_digest)
    .bind(serde_json::to_string(&r.plan).map_err(corrupt)?)
    .bind(r.previous.map(|p| p.0 as i64))
    .bind(r.started_ms as i64)
    .bind(&r.state)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Updates a rollout's state name.
pub async fn set_state(
    db: &Db,
    fleet: &Fleet,
    seq: ReleaseSeq,
    state: &str,
) -> Result<(), DbError> {
    sqlx::query("UPDATE live_rollouts SET state = ?3 WHERE fleet_id = ?1 AND sequence = ?2")
        .bind(fleet.id)
        .bind(seq.0 as i64)
        .bind(state)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// The fleet's newest rollout.
pub async fn latest_rollout(db: &Db, fleet: &Fleet) -> Result<Option<RolloutRow>, DbError> {
    let row = sqlx::query(
        "SELECT sequence, manifest_digest, rollout_plan, previous, started_ms, state FROM live_rollouts WHERE fleet_id = ?1 ORDER BY sequence DESC LIMIT 1",
    )
    .bind(fleet.id)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let plan: String = row.try_get("rollout_plan")?;
    Ok(Some(RolloutRow {
        sequence: ReleaseSeq(row.try_get::<i64, _>("sequence")? as u64),
        manifest_digest: row.try_get("manifest_digest")?,
        plan: serde_json::from_str(&plan).map_err(corrupt)?,
        previous: row
            .try_get::<Option<i64>, _>("previous")?
            .map(|p| ReleaseSeq(p as u64)),
        started_ms: row.try_get::<i64, _>("started_ms")? as u64,
        state: row.try_get("state")?,
    }))
}

/// The newest rollout before `seq` (sequence, state name), if any.
pub async fn rollout_before(
    db: &Db,
    fleet: &Fleet,
    seq: ReleaseSeq,
) -> Result<Option<(ReleaseSeq, String)>, DbError> {
    let row: Option<(i64, String)> = sqlx::query_as(
        "SELECT sequence, state FROM live_rollouts WHERE fleet_id = ?1 AND sequence < ?2 ORDER BY sequence DESC LIMIT 1",
    )
    .bind(fleet.id)
    .bind(seq.0 as i64)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(|(s, st)| (ReleaseSeq(s as u64), st)))
}

/// The newest rollout before `seq` that completed, if any.
pub async fn last_complete_before(
    db: &Db,
    fleet: &Fleet,
    seq: ReleaseSeq,
) -> Result<Option<ReleaseSeq>, DbError> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT sequence FROM live_rollouts WHERE fleet_id = ?1 AND sequence < ?2 AND state = 'complete' ORDER BY sequence DESC LIMIT 1",
    )
    .bind(fleet.id)
    .bind(seq.0 as i64)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(|r| ReleaseSeq(r.0 as u64)))
}

/// Appends an event.
pub async fn append_event(
    db: &Db,
    fleet: &Fleet,
    seq: ReleaseSeq,
    at_ms: u64,
    event: &Event,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO live_events (fleet_id, sequence, at_ms, event) VALUES (?1, ?2, ?3, ?4)",
    )
    .bind(fleet.id)
    .bind(seq.0 as i64)
    .bind(at_ms as i64)
    .bind(serde_json::to_string(event).map_err(corrupt)?)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// A rollout's events in order.
pub async fn events(db: &Db, fleet: &Fleet, seq: ReleaseSeq) -> Result<Vec<(u64, Event)>, DbError> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT at_ms, event FROM live_events WHERE fleet_id = ?1 AND sequence = ?2 ORDER BY id",
    )
    .bind(fleet.id)
    .bind(seq.0 as i64)
    .fetch_all(db.pool())
    .await?;
    rows.into_iter()
        .map(|(at, e)| Ok((at as u64, serde_json::from_str(&e).map_err(corrupt)?)))
        .collect()
}

/// Stores a signed wave control message.
pub async fn insert_wave_control(
    db: &Db,
    fleet: &Fleet,
    seq: ReleaseSeq,
    counter: u64,
    message: &[u8],
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT OR REPLACE INTO live_wave_controls (fleet_id, sequence, counter, message) VALUES (?1, ?2, ?3, ?4)",
    )
    .bind(fleet.id)
    .bind(seq.0 as i64)
    .bind(counter as i64)
    .bind(message)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// A rollout's wave control messages, by counter.
pub async fn wave_controls(
    db: &Db,
    fleet: &Fleet,
    seq: ReleaseSeq,
) -> Result<Vec<Vec<u8>>, DbError> {
    let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
        "SELECT message FROM live_wave_controls WHERE fleet_id = ?1 AND sequence = ?2 ORDER BY counter",
    )
    .bind(fleet.id)
    .bind(seq.0 as i64)
    .fetch_all(db.pool())
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Records a device; returns whether it was new.
pub async fn add_device(
    db: &Db,
    fleet: &Fleet,
    device: &DeviceId,
    now_s: i64,
) -> Result<bool, DbError> {
    let r = sqlx::query(
        "INSERT OR IGNORE INTO live_devices (fleet_id, device, first_seen) VALUES (?1, ?2, ?3)",
    )
    .bind(fleet.id)
    .bind(device.to_string())
    .bind(now_s)
    .execute(db.pool())
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Every device the fleet's origin has heard of.
pub async fn devices(db: &Db, fleet: &Fleet) -> Result<Vec<DeviceId>, DbError> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT device FROM live_devices WHERE fleet_id = ?1 ORDER BY device")
            .bind(fleet.id)
            .fetch_all(db.pool())
            .await?;
    rows.into_iter()
        .map(|(d,)| {
            let mut id = [0u8; 32];
            hex::decode_to_slice(&d, &mut id).map_err(corrupt)?;
            Ok(DeviceId(id))
        })
        .collect()
}

/// The fleet's pin, if any.
pub async fn fleet_pin(db: &Db, fleet: &Fleet) -> Result<Option<ReleaseSeq>, DbError> {
    let row: Option<(Option<i64>,)> =
        sqlx::query_as("SELECT pinned_sequence FROM fleets WHERE id = ?1")
            .bind(fleet.id)
            .fetch_optional(db.pool())
            .await?;
    Ok(row.and_then(|r| r.0).map(|s| ReleaseSeq(s as u64)))
}

/// Whether the fleet has a release with a higher sequence than `seq`.
pub async fn has_newer(db: &Db, fleet: &Fleet, seq: ReleaseSeq) -> Result<bool, DbError> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM releases WHERE fleet_id = ?1 AND sequence > ?2")
            .bind(fleet.id)
            .bind(seq.0 as i64)
            .fetch_one(db.pool())
            .await?;
    Ok(n > 0)
}
