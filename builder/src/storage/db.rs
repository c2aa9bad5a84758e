//! The releases database: fleets, push tokens and releases in SQLite (`<data>/builder.db`).
//!
//! The schema lives in `builder/migrations/` and is embedded in the binary; it is applied when
//! the database is opened. The database runs in WAL mode so the operator CLI can write (create a
//! fleet, a token) while the server runs. Only token hashes (BLAKE3) are stored.

use std::str::FromStr;

use serde::Serialize;
use shoal_protocol::RolloutPlan;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// A database failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// SQLite said no.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// Applying the embedded migrations failed.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A fleet with that name already exists.
    #[error("fleet {0:?} already exists")]
    FleetExists(String),
    /// A stored value could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Where a release is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// Building or publishing.
    Running,
    /// Built, signed and published.
    Success,
    /// The project failed to build.
    Failed,
    /// The builder itself failed (Engine unreachable, disk full, ...).
    Error,
    /// The pusher went away before the build finished.
    Cancelled,
    /// The builder restarted while the release was running.
    Interrupted,
}

impl Status {
    /// The name stored and shown.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Success => "success",
            Status::Failed => "failed",
            Status::Error => "error",
            Status::Cancelled => "cancelled",
            Status::Interrupted => "interrupted",
        }
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "running" => Status::Running,
            "success" => Status::Success,
            "failed" => Status::Failed,
            "error" => Status::Error,
            "cancelled" => Status::Cancelled,
            "interrupted" => Status::Interrupted,
            other => return Err(format!("unknown status {other:?}")),
        })
    }
}

/// A fleet.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    /// Row id.
    pub id: i64,
    /// Its name (also the git repository name).
    pub name: String,
    /// Target architecture (`amd64`, `aarch64`, `armv7hf`, ...).
    pub arch: String,
    /// Device type (`generic-amd64`, `raspberrypi4-64`, ...).
    pub device_type: String,
    /// The rollout plan every release of the fleet carries.
    pub rollout_plan: RolloutPlanJson,
    /// Unix seconds.
    pub created: i64,
}

/// A rollout plan as stored (JSON), with its parsed form.
pub type RolloutPlanJson = serde_json::Value;

impl Fleet {
    /// The fleet's rollout plan; the canary plan when the stored one does not parse.
    pub fn plan(&self) -> RolloutPlan {
        plan_from_json(&self.rollout_plan).unwrap_or_else(RolloutPlan::canary)
    }
}

fn plan_from_json(v: &serde_json::Value) -> Option<RolloutPlan> {
    let plan: RolloutPlan = serde_json::from_value(v.clone()).ok()?;
    plan.check().ok()?;
    Some(plan)
}

/// A rollout plan as JSON.
pub fn plan_to_json(plan: &RolloutPlan) -> serde_json::Value {
    serde_json::to_value(plan).unwrap_or(serde_json::Value::Null)
}

/// A release as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    /// Release id.
    pub id: i64,
    /// Fleet name.
    pub fleet: String,
    /// Sequence number, once published.
    pub sequence: Option<i64>,
    /// Git commit (hex).
    pub commit: String,
    /// The ref that was pushed.
    pub git_ref: String,
    /// Status.
    pub status: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds, when finished.
    pub completed: Option<i64>,
    /// Milliseconds from start to finish.
    pub duration_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The compose file the release was built from, if any.
    pub compose: Option<String>,
    /// Per-service summary (JSON array).
    pub services: serde_json::Value,
    /// Sum of the image sizes (layer bytes).
    pub image_bytes: i64,
    /// Unique chunk bytes of the release.
    pub release_bytes: i64,
    /// Bytes this release added to the store.
    pub new_bytes: i64,
    /// BLAKE3 of the signed manifest envelope.
    pub manifest_digest: Option<String>,
    /// Its size in bytes.
    pub manifest_size: Option<i64>,
}

/// What a finished release records.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Sequence when published.
    pub sequence: Option<i64>,
    /// Error message.
    pub error: Option<String>,
    /// Compose file.
    pub compose: Option<String>,
    /// Per-service summary.
    pub services: serde_json::Value,
    /// Sum of image sizes.
    pub image_bytes: i64,
    /// Unique chunk bytes.
    pub release_bytes: i64,
    /// New bytes.
    pub new_bytes: i64,
    /// Manifest digest.
    pub manifest_digest: Option<String>,
    /// Manifest size.
    pub manifest_size: Option<i64>,
}

/// Filters of the release list.
#[derive(Debug, Clone, Default)]
pub struct ReleaseFilter {
    /// Only this status.
    pub status: Option<String>,
    /// Only commits starting with this hex prefix.
    pub commit: Option<String>,
    /// Created at or after (unix seconds).
    pub since: Option<i64>,
    /// Created at or before (unix seconds).
    pub until: Option<i64>,
    /// Free text found (case-insensitively) in the commit, ref, error, services or compose file.
    pub text: Option<String>,
}

/// The database handle.
#[derive(Debug, Clone)]
pub struct Db {
    pool: SqlitePool,
}

#[derive(sqlx::FromRow)]
struct ReleaseRow {
    id: i64,
    fleet: String,
    sequence: Option<i64>,
    commit_hash: String,
    git_ref: String,
    status: String,
    created: i64,
    completed: Option<i64>,
    duration_ms: Option<i64>,
    error: Option<String>,
    compose: Option<String>,
    services: String,
    image_bytes: i64,
    release_bytes: i64,
    new_bytes: i64,
    manifest_digest: Option<String>,
    manifest_size: Option<i64>,
}

fn release_from(t: ReleaseRow) -> Release {
    Release {
        id: t.id,
        fleet: t.fleet,
        sequence: t.sequence,
        commit: t.commit_hash,
        git_ref: t.git_ref,
        status: t.status,
        created: t.created,
        completed: t.completed,
        duration_ms: t.duration_ms,
        error: t.error,
        compose: t.compose,
        services: serde_json::from_str(&t.services).unwrap_or(serde_json::Value::Null),
        image_bytes: t.image_bytes,
        release_bytes: t.release_bytes,
        new_bytes: t.new_bytes,
        manifest_digest: t.manifest_digest,
        manifest_size: t.manifest_size,
    }
}

impl Db {
    /// Opens (creating) the database file and applies the migrations.
    pub async fn open(path: &std::path::Path) -> Result<Db, DbError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Db { pool })
    }

    /// Creates a fleet.
    pub async fn create_fleet(
        &self,
        name: &str,
        arch: &str,
        device_type: &str,
        plan: &RolloutPlan,
        now: i64,
    ) -> Result<Fleet, DbError> {
        let plan_json = plan_to_json(plan).to_string();
        let res = sqlx::query(
            "INSERT INTO fleets (name, arch, device_type, rollout_plan, created) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(name)
        .bind(arch)
        .bind(device_type)
        .bind(&plan_json)
        .bind(now)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(DbError::FleetExists(name.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
        self.fleet(name)
            .await?
            .ok_or_else(|| DbError::Corrupt(format!("fleet {name} vanished")))
    }

    /// A fleet by name.
    pub async fn fleet(&self, name: &str) -> Result<Option<Fleet>, DbError> {
        let row: Option<(i64, String, String, String, String, i64)> = sqlx::query_as(
            "SELECT id, name, arch, device_type, rollout_plan, created FROM fleets WHERE name = ?1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Fleet {
            id: r.0,
            name: r.1,
            arch: r.2,
            device_type: r.3,
            rollout_plan: serde_json::from_str(&r.4).unwrap_or(serde_json::Value::Null),
            created: r.5,
        }))
    }

    /// All fleets by name.
    pub async fn fleets(&self) -> Result<Vec<String>, DbError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT name FROM fleets ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// The connection pool, for the modules that keep their own tables (registry, operator,
    /// live rollouts).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Stores a push token's hash.
    pub async fn add_token(&self, name: &str, token_hash: &str, now: i64) -> Result<(), DbError> {
        self.add_token_with_role(name, token_hash, "push", now)
            .await
    }

    /// Stores a token's hash with its role (`push` or `operator`).
    pub async fn add_token_with_role(
        &self,
        name: &str,
        token_hash: &str,
        role: &str,
        now: i64,
    ) -> Result<(), DbError> {
        sqlx::query("INSERT INTO tokens (name, token_hash, created, role) VALUES (?1, ?2, ?3, ?4)")
            .bind(name)
            .bind(token_hash)
            .bind(now)
            .bind(role)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The name and role of the token with this hash, if any.
    pub async fn token_identity(
        &self,
        token_hash: &str,
    ) -> Result<Option<(String, String)>, DbError> {
        Ok(
            sqlx::query_as("SELECT name, role FROM tokens WHERE token_hash = ?1")
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The name of the token with this hash, if any.
    pub async fn token_name(&self, token_hash: &str) -> Result<Option<String>, DbError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT name FROM tokens WHERE token_hash = ?1")
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Marks every `running` release `interrupted`; returns how many.
    pub async fn interrupt_running(&self, now: i64) -> Result<u64, DbError> {
        let r = sqlx::query(
            "UPDATE releases SET status = 'interrupted', completed = ?1, error = 'the builder restarted during the build' WHERE status = 'running'",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Records a new running release; returns its id.
    pub async fn start_release(
        &self,
        fleet: &Fleet,
        commit: &str,
        git_ref: &str,
        now: i64,
    ) -> Result<i64, DbError> {
        let r = sqlx::query(
            "INSERT INTO releases (fleet_id, commit_hash, git_ref, status, created) VALUES (?1, ?2, ?3, 'running', ?4)",
        )
        .bind(fleet.id)
        .bind(commit)
        .bind(git_ref)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.last_insert_rowid())
    }

    /// The next sequence number of a fleet.
    pub async fn next_sequence(&self, fleet_id: i64) -> Result<i64, DbError> {
        let (max,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(sequence) FROM releases WHERE fleet_id = ?1")
                .bind(fleet_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(max.unwrap_or(0) + 1)
    }

    /// Reserves a sequence number for a release about to be published.
    pub async fn set_sequence(&self, id: i64, sequence: i64) -> Result<(), DbError> {
        sqlx::query("UPDATE releases SET sequence = ?2 WHERE id = ?1")
            .bind(id)
            .bind(sequence)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Saves the log of a running release so far.
    pub async fn save_log(&self, id: i64, log: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE releases SET log = ?2 WHERE id = ?1")
            .bind(id)
            .bind(log)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records how a release ended.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_release(
        &self,
        id: i64,
        status: Status,
        now: i64,
        duration_ms: i64,
        log: &str,
        o: &Outcome,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE releases SET status = ?2, completed = ?3, duration_ms = ?4, log = ?5, sequence = ?6, error = ?7, compose = ?8, services = ?9, image_bytes = ?10, release_bytes = ?11, new_bytes = ?12, manifest_digest = ?13, manifest_size = ?14 WHERE id = ?1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(now)
        .bind(duration_ms)
        .bind(log)
        .bind(o.sequence)
        .bind(&o.error)
        .bind(&o.compose)
        .bind(o.services.to_string())
        .bind(o.image_bytes)
        .bind(o.release_bytes)
        .bind(o.new_bytes)
        .bind(&o.manifest_digest)
        .bind(o.manifest_size)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A release by id.
    pub async fn release(&self, id: i64) -> Result<Option<Release>, DbError> {
        let row: Option<ReleaseRow> = sqlx::query_as(
            "SELECT r.id, f.name AS fleet, r.sequence, r.commit_hash, r.git_ref, r.status, r.created, r.completed, r.duration_ms, r.error, r.compose, r.services, r.image_bytes, r.release_bytes, r.new_bytes, r.manifest_digest, r.manifest_size FROM releases r JOIN fleets f ON f.id = r.fleet_id WHERE r.id = ?1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(release_from))
    }

    /// The stored log of a release.
    pub async fn release_log(&self, id: i64) -> Result<Option<String>, DbError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT log FROM releases WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.0))
    }

    /// A fleet's releases, newest first, filtered.
    pub async fn releases(
        &self,
        fleet_id: i64,
        f: &ReleaseFilter,
        limit: i64,
    ) -> Result<Vec<Release>, DbError> {
        let commit_like = f.commit.as_ref().map(|c| format!("{c}%"));
        let rows: Vec<ReleaseRow> = sqlx::query_as(
            "SELECT r.id, f.name AS fleet, r.sequence, r.commit_hash, r.git_ref, r.status, r.created, r.completed, r.duration_ms, r.error, r.compose, r.services, r.image_bytes, r.release_bytes, r.new_bytes, r.manifest_digest, r.manifest_size FROM releases r JOIN fleets f ON f.id = r.fleet_id WHERE r.fleet_id = ?1 AND (?2 IS NULL OR r.status = ?2) AND (?3 IS NULL OR r.commit_hash LIKE ?3) AND (?4 IS NULL OR r.created >= ?4) AND (?5 IS NULL OR r.created <= ?5) AND (?7 IS NULL OR instr(lower(r.commit_hash || ' ' || r.git_ref || ' ' || coalesce(r.error, '') || ' ' || r.services || ' ' || coalesce(r.compose, '')), lower(?7)) > 0) ORDER BY r.id DESC LIMIT ?6",
        )
        .bind(fleet_id)
        .bind(&f.status)
        .bind(commit_like)
        .bind(f.since)
        .bind(f.until)
        .bind(limit)
        .bind(&f.text)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(release_from).collect())
    }
}
