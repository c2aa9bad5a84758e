//! The registry's tables (`migrations/0002_registry.sql`): devices, provisioning keys, each
//! device's state per release, recent report nonces.

use std::collections::BTreeMap;

use serde::Serialize;
use shoal_protocol::{DeviceState, StatusReport};

use super::{RegisterError, Registration, ReportError};
use crate::storage::db::{Db, DbError, Fleet};

/// A registered device as the API and dashboard show it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Device {
    /// Its id: the ed25519 public key, hex.
    pub id: String,
    /// Fleet name.
    pub fleet: String,
    /// Name, unique in the fleet.
    pub name: String,
    /// Site label.
    pub site: String,
    /// Architecture.
    pub arch: String,
    /// Device type.
    pub device_type: String,
    /// When it registered (unix seconds).
    pub registered: i64,
    /// When its latest accepted report arrived.
    pub last_seen: Option<i64>,
    /// The highest release it reported healthy.
    pub current_sequence: Option<i64>,
    /// The release of its latest report.
    pub report_sequence: Option<i64>,
    /// The state of its latest report.
    pub state: Option<String>,
    /// The detail of its latest report.
    pub detail: String,
    /// Its own pin.
    pub pinned_sequence: Option<i64>,
    /// The release it should run: its pin, the fleet's pin, or the latest published release.
    pub target_sequence: Option<i64>,
}

/// A device's state on one release.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeviceRelease {
    /// Device id.
    pub device: String,
    /// Device name.
    pub name: String,
    /// Site label.
    pub site: String,
    /// Its latest state on the release (`None`: it has not reported on it).
    pub state: Option<String>,
    /// Device time of that report.
    pub report_time: Option<i64>,
    /// Its detail.
    pub detail: Option<String>,
}

/// `SELECT` of a [`Device`] from `devices d JOIN fleets f`, followed by `$rest`.
macro_rules! select_device {
    ($rest:literal) => {
        concat!(
            "SELECT d.id, f.name AS fleet, d.name, d.site, d.arch, d.device_type, d.registered, d.last_seen, d.current_sequence, d.report_sequence, d.state, d.detail, d.pinned_sequence, COALESCE(d.pinned_sequence, f.pinned_sequence, (SELECT MAX(r.sequence) FROM releases r WHERE r.fleet_id = f.id AND r.status = 'success')) AS target_sequence FROM devices d JOIN fleets f ON f.id = d.fleet_id ",
            $rest
        )
    };
}

pub(super) fn rank(s: DeviceState) -> i64 {
    match s {
        DeviceState::Staged => 0,
        DeviceState::Applying => 1,
        DeviceState::Running => 2,
        DeviceState::Healthy => 3,
        DeviceState::Failed => 4,
        DeviceState::RolledBack => 5,
    }
}

pub(super) async fn fleet_of_provisioning_key(
    db: &Db,
    key_hash: &str,
) -> Result<Option<Fleet>, DbError> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT f.name FROM provisioning_keys k JOIN fleets f ON f.id = k.fleet_id WHERE k.key_hash = ?1",
    )
    .bind(key_hash)
    .fetch_optional(db.pool())
    .await?;
    match row {
        Some((name,)) => db.fleet(&name).await,
        None => Ok(None),
    }
}

pub(super) async fn add_provisioning_key(
    db: &Db,
    fleet_id: i64,
    key_hash: &str,
    now: i64,
) -> Result<(), DbError> {
    sqlx::query("INSERT INTO provisioning_keys (fleet_id, key_hash, created) VALUES (?1, ?2, ?3)")
        .bind(fleet_id)
        .bind(key_hash)
        .bind(now)
        .execute(db.pool())
        .await?;
    Ok(())
}

pub(super) async fn upsert_device(
    db: &Db,
    fleet_id: i64,
    r: &Registration,
    now: i64,
) -> Result<(), RegisterError> {
    let id = r.device.to_string();
    let existing: Option<(i64,)> = sqlx::query_as("SELECT fleet_id FROM devices WHERE id = ?1")
        .bind(&id)
        .fetch_optional(db.pool())
        .await
        .map_err(DbError::from)?;
    let res = match existing {
        Some((f,)) if f != fleet_id => return Err(RegisterError::OtherFleet),
        Some(_) => {
            sqlx::query(
                "UPDATE devices SET name = ?2, site = ?3, arch = ?4, device_type = ?5 WHERE id = ?1",
            )
            .bind(&id)
            .bind(&r.name)
            .bind(&r.site)
            .bind(&r.arch)
            .bind(&r.device_type)
            .execute(db.pool())
            .await
        }
        None => {
            sqlx::query(
                "INSERT INTO devices (id, fleet_id, name, site, arch, device_type, registered) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(&id)
            .bind(fleet_id)
            .bind(&r.name)
            .bind(&r.site)
            .bind(&r.arch)
            .bind(&r.device_type)
            .bind(now)
            .execute(db.pool())
            .await
        }
    };
    match res {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(RegisterError::NameTaken(r.name.clone()))
        }
        Err(e) => Err(DbError::from(e).into()),
    }
}

/// A device by id (hex).
pub(crate) async fn device(db: &Db, id: &str) -> Result<Option<Device>, DbError> {
    Ok(sqlx::query_as(select_device!("WHERE d.id = ?1"))
        .bind(id)
        .fetch_optional(db.pool())
        .await?)
}

/// A fleet's devices by name.
pub async fn devices_of_fleet(db: &Db, fleet_id: i64) -> Result<Vec<Device>, DbError> {
    Ok(
        sqlx::query_as(select_device!("WHERE d.fleet_id = ?1 ORDER BY d.name"))
            .bind(fleet_id)
            .fetch_all(db.pool())
            .await?,
    )
}

/// Every device of the fleet with its state on release `sequence`, by name.
pub async fn devices_of_release(
    db: &Db,
    fleet_id: i64,
    sequence: i64,
) -> Result<Vec<DeviceRelease>, DbError> {
    Ok(sqlx::query_as(
        "SELECT d.id AS device, d.name, d.site, dr.state, dr.report_time, dr.detail FROM devices d LEFT JOIN device_releases dr ON dr.device_id = d.id AND dr.sequence = ?2 WHERE d.fleet_id = ?1 ORDER BY d.name",
    )
    .bind(fleet_id)
    .bind(sequence)
    .fetch_all(db.pool())
    .await?)
}

/// How many devices run each release (their current release), by sequence.
pub async fn device_counts(db: &Db, fleet_id: i64) -> Result<BTreeMap<i64, i64>, DbError> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT current_sequence, COUNT(*) FROM devices WHERE fleet_id = ?1 AND current_sequence IS NOT NULL GROUP BY current_sequence",
    )
    .bind(fleet_id)
    .fetch_all(db.pool())
    .await?;
    Ok(rows.into_iter().collect())
}

/// How many devices are registered in the fleet.
pub(crate) async fn registered_in_fleet(db: &Db, fleet_id: i64) -> Result<i64, DbError> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM devices WHERE fleet_id = ?1")
        .bind(fleet_id)
        .fetch_one(db.pool())
        .await?;
    Ok(n)
}

/// How many devices of the fleet are pinned.
pub(crate) async fn pinned_in_fleet(db: &Db, fleet: &str) -> Result<i64, DbError> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM devices d JOIN fleets f ON f.id = d.fleet_id WHERE f.name = ?1 AND d.pinned_sequence IS NOT NULL",
    )
    .bind(fleet)
    .fetch_one(db.pool())
    .await?;
    Ok(n)
}

/// The release a fleet's devices should run: its pin, or its latest published release.
pub async fn target_of_fleet(db: &Db, fleet_id: i64) -> Result<Option<i64>, DbError> {
    let (t,): (Option<i64>,) = sqlx::query_as(
        "SELECT COALESCE(f.pinned_sequence, (SELECT MAX(r.sequence) FROM releases r WHERE r.fleet_id = f.id AND r.status = 'success')) FROM fleets f WHERE f.id = ?1",
    )
    .bind(fleet_id)
    .fetch_one(db.pool())
    .await?;
    Ok(t)
}

pub(super) async fn target(db: &Db, device_id: &str) -> Result<Option<i64>, DbError> {
    Ok(device(db, device_id).await?.and_then(|d| d.target_sequence))
}

/// The manifest digest of a published release of `fleet`.
pub(crate) async fn release_digest(
    db: &Db,
    fleet: &str,
    sequence: i64,
) -> Result<Option<String>, DbError> {
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT r.manifest_digest FROM releases r JOIN fleets f ON f.id = r.fleet_id WHERE f.name = ?1 AND r.sequence = ?2 AND r.status = 'success'",
    )
    .bind(fleet)
    .bind(sequence)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.and_then(|r| r.0))
}

/// Records a checked report in one transaction; `Ok(false)` when an already-recorded later
/// report keeps the device's state on that release.
pub(super) async fn apply_report(
    db: &Db,
    report: &StatusReport,
    now: i64,
) -> Result<bool, ReportError> {
    let id = report.device.to_string();
    let seq = report.sequence.0 as i64;
    let time = i64::try_from(report.time.0).unwrap_or(i64::MAX);
    let rank = rank(report.state);
    let mut tx = db.pool().begin().await.map_err(DbError::from)?;
    // Nonces older than twice the freshness window can go: a replay that old is stale anyway.
    sqlx::query("DELETE FROM report_nonces WHERE device_id = ?1 AND received < ?2")
        .bind(&id)
        .bind(now - 2 * super::FRESHNESS_S)
        .execute(&mut *tx)
        .await
        .map_err(DbError::from)?;
    let ins =
        sqlx::query("INSERT INTO report_nonces (device_id, nonce, received) VALUES (?1, ?2, ?3)")
            .bind(&id)
            .bind(report.nonce.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await;
    match ins {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(ReportError::Replay);
        }
        Err(e) => return Err(DbError::from(e).into()),
    }
    let old: Option<(i64, i64)> = sqlx::query_as(
        "SELECT report_time, state_rank FROM device_releases WHERE device_id = ?1 AND sequence = ?2",
    )
    .bind(&id)
    .bind(seq)
    .fetch_optional(&mut *tx)
    .await
    .map_err(DbError::from)?;
    let newer = old.is_none_or(|o| (time, rank) >= o);
    if newer {
        sqlx::query(
            "INSERT INTO device_releases (device_id, sequence, state, state_rank, report_time, received, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (device_id, sequence) DO UPDATE SET state = excluded.state, state_rank = excluded.state_rank, report_time = excluded.report_time, received = excluded.received, detail = excluded.detail",
        )
        .bind(&id)
        .bind(seq)
        .bind(report.state.as_str())
        .bind(rank)
        .bind(time)
        .bind(now)
        .bind(&report.detail)
        .execute(&mut *tx)
        .await
        .map_err(DbError::from)?;
    }
    // The device's latest report: the highest release, latest state on it.
    sqlx::query(
        "UPDATE devices SET last_seen = ?2, report_sequence = dr.sequence, state = dr.state, detail = dr.detail FROM (SELECT sequence, state, detail FROM device_releases WHERE device_id = ?1 ORDER BY sequence DESC LIMIT 1) AS dr WHERE devices.id = ?1",
    )
    .bind(&id)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(DbError::from)?;
    // Its current release: the highest it reported healthy and has not since rolled back from.
    sqlx::query(
        "UPDATE devices SET current_sequence = (SELECT MAX(sequence) FROM device_releases WHERE device_id = ?1 AND state = 'healthy') WHERE id = ?1",
    )
    .bind(&id)
    .execute(&mut *tx)
    .await
    .map_err(DbError::from)?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(newer)
}
