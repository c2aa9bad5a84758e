//! What activates a release on the device: the [`Runtime`] trait the daemon drives, the
//! [`StageOnly`] runtime (stage and serve, start nothing) and the Docker Engine runtime
//! ([`DockerRuntime`], in [`docker`], with its Engine calls in [`engine`], image archives in
//! [`archive`], container settings in [`spec`] and its crash journal in [`journal`]).
//!
//! The daemon calls [`Runtime::recover`] once at start, then [`Runtime::apply`] when the core
//! says to activate a release, [`Runtime::health`] after a successful apply and
//! [`Runtime::rollback`] when the core gives up on one; [`Runtime::services`] goes into the
//! daemon's status.

pub mod archive;
pub mod docker;
pub mod engine;
pub mod journal;
pub mod spec;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shoal_protocol::{ReleaseManifest, ReleaseSeq};

pub use self::docker::{
    ConnectError, DockerRuntime, HANDOVER_FILE, RuntimeConfig, lock_override_path,
};
use super::store::Store;

/// A boxed future, for [`Runtime`] methods.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What activates a release on the device (loads images, starts containers) and judges its
/// health. The Docker Engine runtime implements it; [`StageOnly`] is for nodes that only stage
/// and serve.
pub trait Runtime: Send + Sync + 'static {
    /// Activates `sequence`; `Err` carries a short reason.
    fn apply(
        &self,
        sequence: ReleaseSeq,
        manifest: Arc<ReleaseManifest>,
        store: Arc<Store>,
    ) -> BoxFuture<Result<(), String>>;
    /// Health verdict on the applied release, with a short detail.
    fn health(&self, sequence: ReleaseSeq) -> BoxFuture<(bool, String)>;
    /// Returns to the committed release `to`.
    fn rollback(&self, from: ReleaseSeq, to: Option<ReleaseSeq>) -> BoxFuture<()>;
    /// Called once when the daemon starts, before any release is applied, with the committed
    /// release of the saved state: finishes or undoes whatever a crash interrupted, so the
    /// device runs `committed` again. The default does nothing.
    fn recover(
        &self,
        _committed: Option<ReleaseSeq>,
        _store: Arc<Store>,
    ) -> BoxFuture<Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    /// The service containers the runtime runs now (for `shoal-node status`). The default: none.
    fn services(&self) -> Vec<ServiceStatus> {
        Vec::new()
    }
}

/// A runtime that starts nothing: activation succeeds once every chunk of the release reads
/// back from the store and verifies again, and health is reported as passing with a detail
/// saying no containers run. For seeders, relays and tests of distribution.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageOnly;

impl Runtime for StageOnly {
    fn apply(
        &self,
        _sequence: ReleaseSeq,
        manifest: Arc<ReleaseManifest>,
        store: Arc<Store>,
    ) -> BoxFuture<Result<(), String>> {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                for chunk in manifest.unique_chunks() {
                    match store.read(&chunk.digest) {
                        Ok(Some(_)) => {}
                        Ok(None) => return Err(format!("chunk {} missing", chunk.digest.short())),
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok(())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
        })
    }

    fn health(&self, _sequence: ReleaseSeq) -> BoxFuture<(bool, String)> {
        Box::pin(async { (true, "stage-only node: no containers to check".to_string()) })
    }

    fn rollback(&self, _from: ReleaseSeq, _to: Option<ReleaseSeq>) -> BoxFuture<()> {
        Box::pin(async {})
    }
}

/// Which runtime `shoal-node run` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// The Docker Engine ([`DockerRuntime`]).
    #[default]
    Docker,
    /// Stage releases only ([`StageOnly`]).
    StageOnly,
}

/// A service container of the node, as `shoal-node status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The service.
    pub service: String,
    /// Its release.
    pub release: Option<u64>,
    /// The container's name.
    pub container: String,
    /// The Engine's state (`running`, `exited`, ...).
    pub state: String,
}
