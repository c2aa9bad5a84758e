//! Publishing a release: the last step of a build, and a rollback.
//!
//! Under the app's publish lock (so sequences are taken and published in order), a release takes
//! the fleet's next sequence number; its manifest and an announcement are signed with the
//! release key ([`sign`]) and stored in the blob store, and the release is seeded through the
//! fleet's origin node ([`crate::gossip::Gossip::seed`]). [`release`] does this for a build;
//! [`roll_back`] for a rollback: a new, higher sequence whose services are those of an earlier
//! release, recorded as a release with git ref `rollback` (devices never accept an older
//! signature, so going back is publishing forward).

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal_protocol::{
    Announcement, Digest, Envelope, ReleaseManifest, ReleaseSeq, RolloutPlan, Service, UnixTime,
    encoding,
};

use crate::app::{App, now_s};
use crate::build_log::BuildLog;
use crate::gossip::{Gossip, Seeded};
use crate::storage::blobs::Kind;
use crate::storage::db::{Db, DbError, Fleet};

/// How long a release and its announcement stay valid.
pub const RELEASE_VALIDITY_S: u64 = 365 * 24 * 3600;

/// Why a release could not be published or read back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// Database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The signed manifest could not be stored.
    #[error("store manifest: {0}")]
    StoreManifest(std::io::Error),
    /// The signed announcement could not be stored.
    #[error("store announcement: {0}")]
    StoreAnnouncement(std::io::Error),
    /// The fleet's origin node could not be started.
    #[error("origin node: {0}")]
    Origin(String),
    /// The fleet's origin node did not seed the release.
    #[error("seeding through the origin node: {0}")]
    Seed(String),
    /// A published release's manifest is missing or does not decode.
    #[error("{0}")]
    Stored(String),
}

/// A release published by [`release`].
#[derive(Debug, Clone)]
pub struct Published {
    /// Its sequence.
    pub sequence: i64,
    /// BLAKE3 of the signed manifest envelope.
    pub manifest_digest: Digest,
    /// Size of the signed manifest envelope.
    pub manifest_size: usize,
    /// The release's unique chunk bytes.
    pub release_bytes: u64,
}

/// A manifest and its announcement, signed and stored.
struct Stored {
    manifest_bytes: Vec<u8>,
    announcement: Vec<u8>,
    manifest_digest: Digest,
}

/// Signs a manifest and its announcement with the release key; returns both envelopes' bytes.
pub fn sign(app: &App, manifest: &ReleaseManifest) -> (Vec<u8>, Vec<u8>) {
    let env = Envelope::seal(manifest, &app.keys.reloaded().release_signers());
    let manifest_bytes = encoding::encode(&env);
    let ann = Announcement {
        fleet: manifest.fleet.clone(),
        sequence: manifest.sequence,
        arch: manifest.arch.clone(),
        manifest_digest: Digest::of(&manifest_bytes),
        manifest_size: manifest_bytes.len() as u64,
        release_bytes: manifest.unique_bytes(),
        expires: manifest.expires,
    };
    let ann_bytes = encoding::encode(&Envelope::seal(
        &ann,
        &app.keys.reloaded().release_signers(),
    ));
    (manifest_bytes, ann_bytes)
}

/// Signs `manifest` and its announcement and stores both.
fn sign_and_store(app: &App, manifest: &ReleaseManifest) -> Result<Stored, PublishError> {
    let (manifest_bytes, announcement) = sign(app, manifest);
    let manifest_digest = app
        .store
        .put_blob(Kind::Manifest, &manifest_bytes)
        .map_err(PublishError::StoreManifest)?;
    app.store
        .put(Kind::Announcement, &manifest_digest, &announcement)
        .map_err(PublishError::StoreAnnouncement)?;
    Ok(Stored {
        manifest_bytes,
        announcement,
        manifest_digest,
    })
}

/// Publishes the build `id` of `commit` with `services`: takes the fleet's next sequence,
/// signs and stores the manifest and announcement, and seeds them through the fleet's origin
/// node when the server runs them.
pub async fn release(
    app: &App,
    id: i64,
    fleet: &Fleet,
    commit: &str,
    services: BTreeMap<String, Service>,
    log: &BuildLog,
) -> Result<Published, PublishError> {
    let _publish = app.publish_lock.lock().await;
    let sequence = app.db.next_sequence(fleet.id).await?;
    app.db.set_sequence(id, sequence).await?;
    let created = UnixTime(now_s() as u64);
    let manifest = ReleaseManifest {
        fleet: fleet.name.clone(),
        sequence: ReleaseSeq(sequence as u64),
        commit: commit.to_string(),
        created,
        expires: created.plus_secs(RELEASE_VALIDITY_S),
        arch: fleet.arch.clone(),
        device_type: fleet.device_type.clone(),
        services,
        rollout: fleet.plan(),
    };
    let stored = sign_and_store(app, &manifest)?;
    let manifest_size = stored.manifest_bytes.len();
    if let Some(origins) = app.origins.get() {
        origins.ensure(fleet).await.map_err(PublishError::Origin)?;
        origins
            .seed(
                &fleet.name,
                stored.announcement,
                stored.manifest_bytes,
                Arc::new(manifest.clone()),
            )
            .await
            .map_err(PublishError::Seed)?;
        log.line(&format!(
            "Seeded sequence {sequence} through the fleet's origin node"
        ));
    }
    Ok(Published {
        sequence,
        manifest_digest: stored.manifest_digest,
        manifest_size,
        release_bytes: manifest.unique_bytes(),
    })
}

/// Publishes a new, higher sequence of `fleet` with the content of published release `to`, as
/// the rollback of `of` (to every wave at once), and seeds it through `gossip`.
pub async fn roll_back(
    app: &App,
    gossip: &dyn Gossip,
    fleet: &Fleet,
    of: ReleaseSeq,
    to: ReleaseSeq,
) -> Result<Seeded, PublishError> {
    let (old, commit) = published_manifest(app, fleet, to).await?;

    let _publish = app.publish_lock.lock().await;
    let sequence = app.db.next_sequence(fleet.id).await?;
    let created = UnixTime(now_s() as u64);
    let manifest = ReleaseManifest {
        sequence: ReleaseSeq(sequence as u64),
        created,
        expires: created.plus_secs(RELEASE_VALIDITY_S),
        rollout: RolloutPlan::all_at_once(),
        ..old
    };
    let stored = sign_and_store(app, &manifest)?;
    insert_rollback_release(
        &app.db,
        fleet,
        manifest.sequence,
        &commit,
        of,
        to,
        now_s(),
        manifest.unique_bytes(),
        &stored.manifest_digest.to_string(),
        stored.manifest_bytes.len(),
    )
    .await?;
    tracing::info!(
        fleet = %fleet.name,
        aborted = of.0,
        sequence,
        content_of = to.0,
        "publishing rollback release"
    );
    let manifest = Arc::new(manifest);
    gossip
        .seed(
            &fleet.name,
            stored.announcement,
            stored.manifest_bytes,
            manifest.clone(),
        )
        .await
        .map_err(PublishError::Seed)?;
    Ok(Seeded {
        fleet: fleet.name.clone(),
        manifest,
        manifest_digest: stored.manifest_digest,
    })
}

/// The stored manifest of published release `seq` of `fleet`, and its commit.
pub async fn published_manifest(
    app: &App,
    fleet: &Fleet,
    seq: ReleaseSeq,
) -> Result<(ReleaseManifest, String), PublishError> {
    let (digest_hex, commit) = published(&app.db, fleet, seq)
        .await?
        .ok_or_else(|| PublishError::Stored(format!("release {} is not stored", seq.0)))?;
    let digest: Digest = digest_hex
        .parse()
        .map_err(|_| PublishError::Stored("stored manifest digest does not parse".into()))?;
    Ok((stored_manifest(app, &digest)?, commit))
}

/// The stored manifest whose signed envelope has `digest`.
pub fn stored_manifest(app: &App, digest: &Digest) -> Result<ReleaseManifest, PublishError> {
    let stored = |e: String| PublishError::Stored(e);
    let bytes = app
        .store
        .get(Kind::Manifest, digest)
        .map_err(|e| stored(e.to_string()))?
        .ok_or_else(|| stored(format!("manifest {digest} missing")))?;
    let env: Envelope = encoding::decode(&bytes).map_err(|e| stored(e.to_string()))?;
    encoding::decode(&env.payload).map_err(|e| stored(e.to_string()))
}

/// The release row of a published sequence: (manifest digest hex, commit).
pub async fn published(
    db: &Db,
    fleet: &Fleet,
    seq: ReleaseSeq,
) -> Result<Option<(String, String)>, DbError> {
    let row: Option<(Option<String>, String)> = sqlx::query_as(
        "SELECT manifest_digest, commit_hash FROM releases WHERE fleet_id = ?1 AND sequence = ?2 AND status = 'success'",
    )
    .bind(fleet.id)
    .bind(seq.0 as i64)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.and_then(|(d, c)| d.map(|d| (d, c))))
}

/// Records a rollback release (already signed and stored) as a successful release.
#[allow(clippy::too_many_arguments)]
async fn insert_rollback_release(
    db: &Db,
    fleet: &Fleet,
    seq: ReleaseSeq,
    commit: &str,
    of: ReleaseSeq,
    to: ReleaseSeq,
    now_s: i64,
    release_bytes: u64,
    manifest_digest: &str,
    manifest_size: usize,
) -> Result<i64, DbError> {
    let log = format!(
        "Rollback: sequence {} aborted; sequence {} republishes the content of sequence {}\n",
        of.0, seq.0, to.0
    );
    let r = sqlx::query(
        "INSERT INTO releases (fleet_id, sequence, commit_hash, git_ref, status, created, completed, duration_ms, log, services, release_bytes, manifest_digest, manifest_size) VALUES (?1, ?2, ?3, 'rollback', 'success', ?4, ?4, 0, ?5, '[]', ?6, ?7, ?8)",
    )
    .bind(fleet.id)
    .bind(seq.0 as i64)
    .bind(commit)
    .bind(now_s)
    .bind(log)
    .bind(release_bytes as i64)
    .bind(manifest_digest)
    .bind(manifest_size as i64)
    .execute(db.pool())
    .await?;
    Ok(r.last_insert_rowid())
}
