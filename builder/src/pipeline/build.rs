//! One build, from a pushed commit to a published release.
//!
//! [`start`] records a `running` release; its task reads the commit's tree, resolves the
//! project, builds each service with the Engine, exports and chunks every image into the store,
//! then publishes the release ([`publish::release`]: the next sequence number, the signed
//! manifest and announcement, seeded through the fleet's origin node) and records it as
//! `success`. Every step writes to the release's
//! [`BuildLog`], which the pusher follows live; the log is saved to the database every
//! [`LOG_SAVE_INTERVAL`] and when the release ends. A failure of the project (it does not build)
//! ends `failed`, a failure of the builder `error`, a pusher who went away `cancelled`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_protocol::Service;

use super::engine::{self, EngineError};
use super::git_tree::Objects;
use super::project::{self, Recipe, Target};
use super::publish;
use crate::app::{App, now_s};
use crate::build_log::{BuildLog, Verdict};
use crate::storage::db::{Fleet, Outcome, Status};

/// How often a running build's log is saved.
pub const LOG_SAVE_INTERVAL: Duration = Duration::from_secs(2);

/// A push to build.
#[derive(Debug, Clone)]
pub struct Push {
    /// The fleet.
    pub fleet: Fleet,
    /// The commit (hex).
    pub commit: String,
    /// The ref pushed (`refs/heads/master`).
    pub git_ref: String,
    /// Object directories to read the commit from, in order.
    pub object_dirs: Vec<PathBuf>,
}

/// A failure, and which status it gives the release.
#[derive(Debug)]
struct Failure {
    status: Status,
    message: String,
}

impl Failure {
    fn failed(m: impl ToString) -> Failure {
        Failure {
            status: Status::Failed,
            message: m.to_string(),
        }
    }
    fn error(m: impl ToString) -> Failure {
        Failure {
            status: Status::Error,
            message: m.to_string(),
        }
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Failure {
        match e {
            EngineError::BuildFailed(_) => Failure::failed(e),
            _ => Failure::error(e),
        }
    }
}

/// Per-service summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceSummary {
    /// Service name.
    pub service: String,
    /// Layer bytes of the image.
    pub image_bytes: u64,
    /// Bytes newly stored for it.
    pub new_bytes: u64,
    /// Milliseconds spent building and publishing it.
    pub build_ms: u64,
    /// The part of `build_ms` spent exporting the image, chunking and storing it.
    pub export_ms: u64,
}

/// Human-readable bytes.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Starts a release; returns its id and log. The build runs on its own task; `cancel` going to
/// `true` (the pusher went away) stops it as `cancelled`.
pub async fn start(
    app: Arc<App>,
    push: Push,
    cancel: tokio::sync::watch::Receiver<bool>,
) -> Result<(i64, Arc<BuildLog>), crate::storage::db::DbError> {
    let id = app
        .db
        .start_release(&push.fleet, &push.commit, &push.git_ref, now_s())
        .await?;
    let log = Arc::new(BuildLog::default());
    app.running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, log.clone());
    let task_log = log.clone();
    tokio::spawn(async move { run(app, id, push, task_log, cancel).await });
    Ok((id, log))
}

async fn run(
    app: Arc<App>,
    id: i64,
    push: Push,
    log: Arc<BuildLog>,
    mut cancel: tokio::sync::watch::Receiver<bool>,
) {
    let started = Instant::now();
    let saver = {
        let (app, log) = (app.clone(), log.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOG_SAVE_INTERVAL).await;
                let _ = app.db.save_log(id, &log.text()).await;
            }
        })
    };
    let mut outcome = Outcome {
        services: serde_json::Value::Array(Vec::new()),
        ..Outcome::default()
    };
    let result = tokio::select! {
        r = build_and_publish(&app, id, &push, &log, &mut outcome) => r,
        _ = cancel.wait_for(|c| *c) => Err(Failure {
            status: Status::Cancelled,
            message: "the pusher disconnected".into(),
        }),
    };
    saver.abort();
    let (status, verdict) = match result {
        Ok(()) => (Status::Success, Verdict::Accept),
        Err(f) => {
            log.line(&format!("error: {}", f.message));
            outcome.error = Some(f.message.clone());
            (f.status, Verdict::Reject(f.message))
        }
    };
    let duration_ms = started.elapsed().as_millis() as i64;
    if let Err(e) = app
        .db
        .finish_release(id, status, now_s(), duration_ms, &log.text(), &outcome)
        .await
    {
        log.line(&format!("error: recording the release failed: {e}"));
    }
    log.finish(verdict);
    app.running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
}

async fn build_and_publish(
    app: &App,
    id: i64,
    push: &Push,
    log: &BuildLog,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
    let fleet = &push.fleet;
    let short = &push.commit[..push.commit.len().min(12)];
    log.line(&format!(
        "Building release {id} of fleet {} from {short} ({}) for {} / {}",
        fleet.name, push.git_ref, fleet.arch, fleet.device_type
    ));
    let _slot = match app.build_slots.try_acquire() {
        Ok(s) => s,
        Err(_) => {
            log.line("Waiting for a free build slot...");
            app.build_slots
                .acquire()
                .await
                .map_err(|e| Failure::error(format!("build slots closed: {e}")))?
        }
    };
    let dirs = push.object_dirs.clone();
    let commit = push.commit.clone();
    let tree = tokio::task::spawn_blocking(move || Objects::open(&dirs)?.read_commit(&commit))
        .await
        .map_err(|e| Failure::error(format!("reading the tree: {e}")))?
        .map_err(|e| Failure::error(format!("reading the pushed tree: {e}")))?;
    let target = Target {
        fleet: &fleet.name,
        arch: &fleet.arch,
        device_type: &fleet.device_type,
        commit: &push.commit,
    };
    let project = project::resolve(&tree, &target).map_err(Failure::failed)?;
    outcome.compose = project.compose.clone();
    log.line(&format!(
        "Project: {} ({} service{}: {})",
        project.kind,
        project.services.len(),
        if project.services.len() == 1 { "" } else { "s" },
        project
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let docker = engine::connect().await?;
    let platform = engine::platform(&fleet.arch);
    let compose = project.compose.is_some();
    let mut services = BTreeMap::new();
    let mut summaries = Vec::new();
    for plan in &project.services {
        let t0 = Instant::now();
        let prefix = if compose {
            format!("[{}] ", plan.name)
        } else {
            String::new()
        };
        let tag = format!("shoal-build/{}-{}:latest", fleet.name, plan.name);
        let mut temporary_tag = None;
        let image_name = match &plan.recipe {
            Recipe::Image(image) => {
                log.line(&format!("{prefix}Using image {image} from the Engine"));
                image.clone()
            }
            Recipe::Dockerfile { text, source } => {
                log.line(&format!("{prefix}Building from {source}"));
                let names: Vec<String> = plan.secrets.keys().cloned().collect();
                let text = if names.is_empty() {
                    text.clone()
                } else {
                    super::secrets::mount_secrets(text, &names)
                };
                let context = super::context::tar(&tree, &plan.context, &text)
                    .map_err(|e| Failure::error(format!("build context: {e}")))?;
                let req = engine::BuildRequest {
                    context,
                    dockerfile: super::context::DOCKERFILE_PATH,
                    tag: &tag,
                    build_args: &plan.build_args,
                    platform,
                    log_prefix: &prefix,
                };
                if names.is_empty() {
                    engine::build(&docker, req, log).await?
                } else {
                    let t = engine::build_with_secrets(req, &plan.secrets, log).await?;
                    temporary_tag = Some(t.clone());
                    t
                }
            }
        };
        log.line(&format!("{prefix}Publishing image: export, chunk, store"));
        let t_export = Instant::now();
        let exported = engine::export(&docker, &image_name, app.store.clone()).await;
        if let Some(t) = temporary_tag.take() {
            engine::remove_image(&docker, &t).await;
        }
        let exported = exported?;
        let image_bytes = exported.image.size_bytes();
        let summary = ServiceSummary {
            service: plan.name.clone(),
            image_bytes,
            new_bytes: exported.new_bytes,
            build_ms: t0.elapsed().as_millis() as u64,
            export_ms: t_export.elapsed().as_millis() as u64,
        };
        log.line(&format!(
            "{prefix}Image {}: {} in {} layers, {} new",
            plan.name,
            human(image_bytes),
            exported.image.layers.len(),
            human(exported.new_bytes)
        ));
        summaries.push(summary);
        services.insert(
            plan.name.clone(),
            Service {
                image: exported.image,
                settings: plan.settings.clone(),
            },
        );
    }
    outcome.services = serde_json::to_value(&summaries).unwrap_or_default();
    outcome.image_bytes = summaries.iter().map(|s| s.image_bytes as i64).sum();
    outcome.new_bytes = summaries.iter().map(|s| s.new_bytes as i64).sum();

    let published = publish::release(app, id, fleet, &push.commit, services, log)
        .await
        .map_err(Failure::error)?;
    let (sequence, manifest_digest) = (published.sequence, published.manifest_digest);
    outcome.sequence = Some(sequence);
    outcome.release_bytes = published.release_bytes as i64;
    outcome.manifest_digest = Some(manifest_digest.to_string());
    outcome.manifest_size = Some(published.manifest_size as i64);

    log.line("");
    log.line(&format!(
        "{:<20} {:>12} {:>12} {:>10}",
        "service", "image size", "new bytes", "build time"
    ));
    for s in &summaries {
        log.line(&format!(
            "{:<20} {:>12} {:>12} {:>9.1}s",
            s.service,
            human(s.image_bytes),
            human(s.new_bytes),
            s.build_ms as f64 / 1000.0
        ));
    }
    log.line("");
    log.line(&format!(
        "Release {id} published as sequence {sequence} of fleet {} (manifest {})",
        fleet.name,
        manifest_digest.short()
    ));
    Ok(())
}
