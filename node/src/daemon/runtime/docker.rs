//! [`DockerRuntime`]: activates releases on the Docker Engine (the daemon's [`Runtime`]), set up
//! by the `[runtime]` section of the configuration ([`RuntimeConfig`]).
//!
//! **Apply** is a sequence of steps planned from the release and each service's update strategy
//! ([`UpdateStrategy`]), recorded in a journal before each runs ([`journal`]):
//!
//! 1. `prepare`: the node's network and the release's named volumes.
//! 2. `load <service>` for every `download-then-kill` and `hand-over` service: the image is
//!    streamed from the store into the Engine ([`archive`](super::archive), verified chunk by
//!    chunk).
//! 3. `lock`: while the update lock file exists (and the operator's override file does not),
//!    nothing that is running is stopped: the step waits.
//! 4. per service, in `depends_on` order: `download-then-kill`: stop the old container, start
//!    the new; `kill-then-download`: stop the old, load, start; `delete-then-download`: stop the
//!    old, remove its image, load, start; `hand-over`: start the new beside the old, then stop the
//!    old once the new container has created `/tmp/shoal/handover-complete` or after the
//!    hand-over timeout.
//! 5. `cleanup`: containers of other releases (services the release dropped) are removed.
//!
//! **Health**: a service with a healthcheck must report healthy; every service must keep
//! running without a restart for the health window. **Rollback** and **recovery** converge the
//! Engine to one release: the node's containers of any other release are removed, and the
//! release's containers are created (images reloaded from the store when missing) and started.
//! On start the daemon calls [`Runtime::recover`] with the committed release of its saved
//! state, which finishes or undoes whatever a crash interrupted; the core then reports the
//! interrupted release as failed and rolled back.
//!
//! Every Engine object carries the labels of [`spec`] and a per-node name, so several nodes can
//! share one Engine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use serde::{Deserialize, Serialize};
use shoal_protocol::{DeviceId, ReleaseManifest, ReleaseSeq, UpdateStrategy};

use super::engine::{self, EngineError, Observed, Running};
use super::journal::{self, Files, Journal, Op};
use super::spec::{self, Names};
use super::{BoxFuture, Runtime, RuntimeKind, ServiceStatus};
use crate::daemon::store::Store;

/// The file a `hand-over` service's new container creates to say it has taken over.
pub const HANDOVER_FILE: &str = "/tmp/shoal/handover-complete";

/// The `[runtime]` section of the node's configuration.
///
/// ```toml
/// [runtime]
/// kind = "docker"                       # or "stage-only"
/// socket = "/var/run/docker.sock"       # default: DOCKER_HOST, else the standard socket
/// prefix = "shoal"                      # first part of every container/network/volume name
/// update_lock = "/tmp/shoal/updates.lock"  # while this file exists, services are not restarted
/// health_window_ms = 10000              # running without restarts this long = healthy
/// health_timeout_ms = 120000            # a healthcheck must pass within this
/// handover_timeout_ms = 60000           # hand-over: old container stopped after this at most
/// stop_timeout_s = 10                   # SIGTERM grace before SIGKILL when stopping
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Docker or stage-only.
    pub kind: RuntimeKind,
    /// The Engine's Unix socket (default: `DOCKER_HOST`, else `/var/run/docker.sock`).
    pub socket: Option<PathBuf>,
    /// Prefix of every Engine object's name.
    pub prefix: String,
    /// The update lock file: while it exists, running services are not stopped or restarted.
    pub update_lock: Option<PathBuf>,
    /// How long every service must run without a restart to count as healthy.
    pub health_window_ms: u64,
    /// How long healthchecks may take to pass.
    pub health_timeout_ms: u64,
    /// Most time a `hand-over` service's old container keeps running beside the new.
    pub handover_timeout_ms: u64,
    /// Seconds a stopped container gets between SIGTERM and SIGKILL.
    pub stop_timeout_s: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            kind: RuntimeKind::Docker,
            socket: None,
            prefix: "shoal".into(),
            update_lock: None,
            health_window_ms: 10_000,
            health_timeout_ms: 120_000,
            handover_timeout_ms: 60_000,
            stop_timeout_s: 10,
        }
    }
}

/// The operator's override of the update lock: while `<data_dir>/runtime/lock-override`
/// exists, the next apply goes ahead despite the lock (the file is removed once used).
/// `shoal-node lock-override --config FILE` creates it.
pub fn lock_override_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("runtime").join("lock-override")
}

/// Why the Docker runtime could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No Engine answers.
    #[error("no Docker Engine reachable{}: {source}", .socket.as_ref().map(|s| format!(" at {}", s.display())).unwrap_or_default())]
    Unreachable {
        /// The socket tried (None: the default).
        socket: Option<PathBuf>,
        /// bollard's error.
        source: bollard::errors::Error,
    },
}

/// The Docker Engine runtime. Build one with [`DockerRuntime::connect`] and pass it to
/// [`Launcher::runtime`](crate::daemon::Launcher::runtime).
#[derive(Clone)]
pub struct DockerRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    cfg: RuntimeConfig,
    names: Names,
    files: Files,
    override_path: PathBuf,
    store: Mutex<Option<Arc<Store>>>,
    services: Mutex<Vec<ServiceStatus>>,
    /// Serialises operations (an apply and a rollback never interleave).
    op: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("names", &self.inner.names)
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

/// One step of an apply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Prepare,
    Load(String),
    Lock,
    StopOld(String),
    RemoveOldImage(String),
    Start(String),
    HandOver(String),
    Cleanup,
}

impl Step {
    fn describe(&self) -> String {
        match self {
            Step::Prepare => "prepare".into(),
            Step::Load(s) => format!("load {s}"),
            Step::Lock => "lock".into(),
            Step::StopOld(s) => format!("stop old {s}"),
            Step::RemoveOldImage(s) => format!("remove old image {s}"),
            Step::Start(s) => format!("start {s}"),
            Step::HandOver(s) => format!("hand over {s}"),
            Step::Cleanup => "cleanup".into(),
        }
    }
}

/// The steps applying `manifest` (services in `order`).
fn plan(manifest: &ReleaseManifest, order: &[String]) -> Vec<Step> {
    let strategy = |s: &str| {
        manifest
            .services
            .get(s)
            .map(|s| s.settings.update_strategy)
            .unwrap_or_default()
    };
    let mut steps = vec![Step::Prepare];
    for s in order {
        if matches!(
            strategy(s),
            UpdateStrategy::DownloadThenKill | UpdateStrategy::HandOver
        ) {
            steps.push(Step::Load(s.clone()));
        }
    }
    steps.push(Step::Lock);
    for s in order {
        match strategy(s) {
            UpdateStrategy::DownloadThenKill => {
                steps.extend([Step::StopOld(s.clone()), Step::Start(s.clone())]);
            }
            UpdateStrategy::KillThenDownload => steps.extend([
                Step::StopOld(s.clone()),
                Step::Load(s.clone()),
                Step::Start(s.clone()),
            ]),
            UpdateStrategy::DeleteThenDownload => steps.extend([
                Step::StopOld(s.clone()),
                Step::RemoveOldImage(s.clone()),
                Step::Load(s.clone()),
                Step::Start(s.clone()),
            ]),
            UpdateStrategy::HandOver => {
                steps.extend([Step::Start(s.clone()), Step::HandOver(s.clone())]);
            }
        }
    }
    steps.push(Step::Cleanup);
    steps
}

impl DockerRuntime {
    /// Connects to the Engine (agreeing on an API version) for the node `device` of `fleet`,
    /// keeping the runtime's files in `<data_dir>/runtime`.
    pub async fn connect(
        cfg: RuntimeConfig,
        fleet: &str,
        device: DeviceId,
        data_dir: &std::path::Path,
    ) -> Result<DockerRuntime, ConnectError> {
        let unreachable = |source| ConnectError::Unreachable {
            socket: cfg.socket.clone(),
            source,
        };
        let docker = match &cfg.socket {
            Some(p) => {
                Docker::connect_with_unix(&p.to_string_lossy(), 120, bollard::API_DEFAULT_VERSION)
            }
            None => Docker::connect_with_defaults(),
        }
        .map_err(unreachable)?;
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        let names = Names {
            prefix: cfg.prefix.clone(),
            fleet: fleet.to_string(),
            node: device,
        };
        Ok(DockerRuntime {
            inner: Arc::new(Inner {
                docker,
                names,
                files: Files::new(data_dir.join("runtime")),
                override_path: lock_override_path(data_dir),
                cfg,
                store: Mutex::new(None),
                services: Mutex::new(Vec::new()),
                op: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The Engine client.
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    /// How this node names its Engine objects.
    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    /// The node's containers now.
    pub async fn containers(&self) -> Result<Vec<Running>, EngineError> {
        engine::containers(&self.inner.docker, &self.inner.names).await
    }

    /// Removes every container, volume, network and image tag of this node (decommissioning,
    /// tests).
    pub async fn purge(&self) -> Result<(), EngineError> {
        engine::purge(&self.inner.docker, &self.inner.names).await
    }

    /// The journal as last written.
    pub fn journal(&self) -> Result<Journal, EngineError> {
        Ok(self.inner.files.journal()?)
    }
}

impl Inner {
    async fn refresh_services(&self) {
        if let Ok(list) = engine::containers(&self.docker, &self.names).await {
            let services = list
                .into_iter()
                .map(|c| ServiceStatus {
                    service: c.service,
                    release: c.release,
                    container: c.name,
                    state: c.state,
                })
                .collect();
            *self.services.lock().unwrap_or_else(|p| p.into_inner()) = services;
        }
    }

    fn store(&self) -> Option<Arc<Store>> {
        self.store.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn manifest(&self, seq: ReleaseSeq) -> Result<Arc<ReleaseManifest>, EngineError> {
        self.files
            .release(seq)?
            .ok_or(EngineError::UnknownRelease(seq.0))
    }

    async fn old_of(&self, seq: ReleaseSeq, service: Option<&str>) -> Vec<Running> {
        engine::containers(&self.docker, &self.names)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.release != Some(seq.0) && service.is_none_or(|s| c.service == s))
            .collect()
    }

    async fn wait_lock(&self, seq: ReleaseSeq) {
        let Some(lock) = &self.cfg.update_lock else {
            return;
        };
        let mut logged = false;
        loop {
            if self.override_path.exists() {
                tracing::warn!(sequence = seq.0, "update lock overridden by the operator");
                let _ = std::fs::remove_file(&self.override_path);
                return;
            }
            let running = self
                .old_of(seq, None)
                .await
                .iter()
                .any(|c| c.state == "running");
            if !lock.exists() || !running {
                return;
            }
            if !logged {
                tracing::info!(
                    sequence = seq.0,
                    lock = %lock.display(),
                    "update lock held: release loaded, services not restarted until it is released"
                );
                logged = true;
            }
            engine::pause(Duration::from_millis(250)).await;
        }
    }

    async fn run_step(
        &self,
        step: &Step,
        manifest: &ReleaseManifest,
        store: &Arc<Store>,
    ) -> Result<(), EngineError> {
        let d = &self.docker;
        let seq = manifest.sequence;
        match step {
            Step::Prepare => engine::ensure_network_and_volumes(d, &self.names, manifest).await,
            Step::Load(s) => engine::load_image(d, &self.names, store, manifest, s).await,
            Step::Lock => {
                self.wait_lock(seq).await;
                Ok(())
            }
            Step::StopOld(s) => {
                for c in self.old_of(seq, Some(s)).await {
                    engine::remove(d, &c.id, self.cfg.stop_timeout_s).await?;
                }
                Ok(())
            }
            Step::RemoveOldImage(s) => {
                let journal = self.files.journal()?;
                if let Some(old) = journal.running.filter(|r| *r != seq.0) {
                    engine::untag(d, &self.names.image(s, ReleaseSeq(old))).await;
                }
                Ok(())
            }
            Step::Start(s) => engine::start(d, &self.names, manifest, s).await,
            Step::HandOver(s) => {
                let new = self.names.container(s, seq);
                let deadline = tokio::time::Instant::now()
                    + Duration::from_millis(self.cfg.handover_timeout_ms);
                while tokio::time::Instant::now() < deadline
                    && !self.old_of(seq, Some(s)).await.is_empty()
                    && !engine::file_exists(d, &new, HANDOVER_FILE).await
                {
                    engine::pause(Duration::from_millis(250)).await;
                }
                for c in self.old_of(seq, Some(s)).await {
                    engine::remove(d, &c.id, self.cfg.stop_timeout_s).await?;
                }
                Ok(())
            }
            Step::Cleanup => {
                for c in self.old_of(seq, None).await {
                    engine::remove(d, &c.id, self.cfg.stop_timeout_s).await?;
                }
                Ok(())
            }
        }
    }

    async fn apply(
        &self,
        manifest: Arc<ReleaseManifest>,
        store: Arc<Store>,
    ) -> Result<(), EngineError> {
        let _op = self.op.lock().await;
        *self.store.lock().unwrap_or_else(|p| p.into_inner()) = Some(store.clone());
        let seq = manifest.sequence;
        let order = spec::start_order(&manifest)?;
        // Every setting is checked before anything on the Engine changes.
        for s in &order {
            spec::container(&self.names, &manifest, s)?;
        }
        self.files.save_release(&manifest)?;
        let mut journal = self.files.journal()?;
        let from = journal.running;
        for (i, step) in plan(&manifest, &order).iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            journal.op = Some(Op::Apply {
                sequence: seq.0,
                from,
                step: i,
                what: step.describe(),
            });
            self.files.save_journal(&journal)?;
            journal::fault_point(seq.0, i);
            tracing::debug!(sequence = seq.0, step = i, what = %step.describe(), "apply step");
            self.run_step(step, &manifest, &store).await?;
        }
        journal.op = None;
        journal.running = Some(seq.0);
        self.files.save_journal(&journal)?;
        let mut keep = vec![seq.0];
        keep.extend(from);
        self.files.prune_releases(&keep);
        Ok(())
    }

    /// Makes the node run exactly the containers of `to`.
    async fn converge(&self, to: Option<ReleaseSeq>) -> Result<(), EngineError> {
        let _op = self.op.lock().await;
        let mut journal = self.files.journal()?;
        journal.op = Some(Op::Converge {
            to: to.map(|s| s.0),
        });
        self.files.save_journal(&journal)?;
        let d = &self.docker;
        let keep = to.map_or(u64::MAX, |s| s.0);
        for c in engine::containers(d, &self.names).await? {
            if c.release != Some(keep) {
                engine::remove(d, &c.id, self.cfg.stop_timeout_s).await?;
            }
        }
        if let Some(seq) = to {
            let manifest = self.manifest(seq).await?;
            engine::ensure_network_and_volumes(d, &self.names, &manifest).await?;
            for s in spec::start_order(&manifest)? {
                let tag = self.names.image(&s, seq);
                let loaded = match manifest.services.get(&s) {
                    Some(svc) => engine::has_image(d, &tag, &svc.image).await,
                    None => true,
                };
                if !loaded {
                    let store = self.store().ok_or(EngineError::UnknownRelease(seq.0))?;
                    engine::load_image(d, &self.names, &store, &manifest, &s).await?;
                }
                engine::start(d, &self.names, &manifest, &s).await?;
            }
        }
        journal.op = None;
        journal.running = to.map(|s| s.0);
        self.files.save_journal(&journal)?;
        Ok(())
    }

    async fn health(&self, seq: ReleaseSeq) -> (bool, String) {
        let manifest = match self.manifest(seq).await {
            Ok(m) => m,
            Err(e) => return (false, e.to_string()),
        };
        let start = tokio::time::Instant::now();
        let window = Duration::from_millis(self.cfg.health_window_ms);
        let deadline = start + Duration::from_millis(self.cfg.health_timeout_ms).max(window);
        let mut restarts: BTreeMap<String, i64> = BTreeMap::new();
        loop {
            let mut all_healthy = true;
            for (name, svc) in &manifest.services {
                let container = self.names.container(name, seq);
                let has_check = svc
                    .settings
                    .healthcheck
                    .as_ref()
                    .is_some_and(|h| h.test.first().is_some_and(|t| t != "NONE"));
                let (count, healthy) = match engine::observe(&self.docker, &container).await {
                    Observed::Failed(why) => return (false, why),
                    Observed::Healthy(n) => (n, true),
                    Observed::Running(n) => (n, !has_check),
                };
                let first = *restarts.entry(name.clone()).or_insert(count);
                if count > first {
                    return (
                        false,
                        format!("{container} restarted {} times", count - first),
                    );
                }
                all_healthy &= healthy;
            }
            let now = tokio::time::Instant::now();
            if all_healthy && now >= start + window {
                return (
                    true,
                    format!("{} services running and healthy", manifest.services.len()),
                );
            }
            if now >= deadline {
                return (false, "healthchecks did not pass in time".to_string());
            }
            engine::pause(Duration::from_millis(250)).await;
        }
    }
}

impl Runtime for DockerRuntime {
    fn apply(
        &self,
        sequence: ReleaseSeq,
        manifest: Arc<ReleaseManifest>,
        store: Arc<Store>,
    ) -> BoxFuture<Result<(), String>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let r = inner.apply(manifest, store).await;
            inner.refresh_services().await;
            r.map_err(|e| {
                tracing::warn!(sequence = sequence.0, error = %e, "apply failed");
                e.to_string()
            })
        })
    }

    fn health(&self, sequence: ReleaseSeq) -> BoxFuture<(bool, String)> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let r = inner.health(sequence).await;
            inner.refresh_services().await;
            r
        })
    }

    fn rollback(&self, from: ReleaseSeq, to: Option<ReleaseSeq>) -> BoxFuture<()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tracing::warn!(from = from.0, to = ?to.map(|s| s.0), "rolling back");
            if let Err(e) = inner.converge(to).await {
                tracing::error!(error = %e, "rollback failed");
            }
            inner.refresh_services().await;
        })
    }

    fn recover(
        &self,
        committed: Option<ReleaseSeq>,
        store: Arc<Store>,
    ) -> BoxFuture<Result<(), String>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            *inner.store.lock().unwrap_or_else(|p| p.into_inner()) = Some(store);
            let journal = inner.files.journal().map_err(|e| e.to_string())?;
            if let Some(op) = &journal.op {
                tracing::warn!(
                    ?op,
                    "an operation was interrupted; converging to the committed release"
                );
            }
            let r = inner.converge(committed).await.map_err(|e| e.to_string());
            inner.refresh_services().await;
            r
        })
    }

    fn services(&self) -> Vec<ServiceStatus> {
        self.inner
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::{Digest, ImageRef, RolloutPlan, Service, ServiceSettings, UnixTime};

    #[test]
    fn plans_follow_each_services_strategy() {
        let svc = |st| Service {
            image: ImageRef {
                config: vec![],
                config_digest: Digest::of(b""),
                layers: vec![],
            },
            settings: ServiceSettings {
                update_strategy: st,
                ..Default::default()
            },
        };
        let m = ReleaseManifest {
            fleet: "f".into(),
            sequence: ReleaseSeq(2),
            commit: "c".into(),
            created: UnixTime(0),
            expires: UnixTime(1),
            arch: "amd64".into(),
            device_type: "t".into(),
            services: [
                ("a".to_string(), svc(UpdateStrategy::DownloadThenKill)),
                ("b".to_string(), svc(UpdateStrategy::KillThenDownload)),
                ("c".to_string(), svc(UpdateStrategy::DeleteThenDownload)),
                ("d".to_string(), svc(UpdateStrategy::HandOver)),
            ]
            .into(),
            rollout: RolloutPlan::all_at_once(),
        };
        let order = spec::start_order(&m).unwrap();
        let steps: Vec<String> = plan(&m, &order).iter().map(Step::describe).collect();
        assert_eq!(
            steps,
            [
                "prepare",
                "load a",
                "load d",
                "lock",
                "stop old a",
                "start a",
                "stop old b",
                "load b",
                "start b",
                "stop old c",
                "remove old image c",
                "load c",
                "start c",
                "start d",
                "hand over d",
                "cleanup",
            ]
        );
    }
}
