//! From a configuration file to a running daemon: what `shoal-node run` does, as a library
//! function so tests can run the same path in their own processes.

use std::sync::Arc;

use shoal_protocol::{Envelope, TrustRoot, encoding};

use super::config::FileConfig;
use super::handle::Handle;
use super::identity::{DeviceKey, KeyFileError};
use super::launcher::{Launcher, StartError};
use super::runtime::{ConnectError, DockerRuntime, Runtime, RuntimeKind, StageOnly};

/// Why the daemon could not be launched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The device key could not be read.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The trust root file could not be read or does not verify.
    #[error("trust root {path}: {message}")]
    Trust {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The trust root is for another fleet.
    #[error("trust root is for fleet {trust:?}, config says {config:?}")]
    FleetMismatch {
        /// The trust root's fleet.
        trust: String,
        /// The configuration's fleet.
        config: String,
    },
    /// A listen or bootstrap address is not a multiaddr.
    #[error("bad multiaddr {0:?}")]
    Multiaddr(String),
    /// The Docker runtime is configured and no Engine answers.
    #[error("{0}; start the Docker Engine, or set `kind = \"stage-only\"` in [runtime]")]
    Engine(#[from] ConnectError),
    /// The daemon did not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Reads a trust root file (an encoded envelope).
pub fn load_trust(path: &std::path::Path) -> Result<TrustRoot, LaunchError> {
    let err = |message: String| LaunchError::Trust {
        path: path.to_owned(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let envelope: Envelope = encoding::decode(&bytes).map_err(|e| err(e.to_string()))?;
    TrustRoot::open_initial(&envelope).map_err(|e| err(e.to_string()))
}

/// The [`Launcher`] of the daemon a configuration describes (connecting the runtime), not
/// started yet.
pub async fn launcher(cfg: &FileConfig) -> Result<Launcher, LaunchError> {
    let key = DeviceKey::load(&cfg.key_path())?;
    let trust = load_trust(&cfg.trust_root)?;
    if trust.fleet != cfg.fleet {
        return Err(LaunchError::FleetMismatch {
            trust: trust.fleet,
            config: cfg.fleet.clone(),
        });
    }
    let parse = |addrs: &[String]| -> Result<Vec<libp2p::Multiaddr>, LaunchError> {
        addrs
            .iter()
            .map(|a| a.parse().map_err(|_| LaunchError::Multiaddr(a.clone())))
            .collect()
    };
    let runtime: Arc<dyn Runtime> = match cfg.runtime.kind {
        RuntimeKind::StageOnly => Arc::new(StageOnly),
        RuntimeKind::Docker => Arc::new(
            DockerRuntime::connect(
                cfg.runtime.clone(),
                &cfg.fleet,
                key.device_id(),
                &cfg.data_dir,
            )
            .await?,
        ),
    };
    let mut launcher = Launcher::new(key, trust, &cfg.data_dir);
    if let Some(e) = &cfg.enroll {
        launcher = launcher.enroll(e.clone());
    }
    Ok(launcher
        .arch(cfg.arch.clone())
        .site(cfg.site.clone())
        .listen(parse(&cfg.listen)?)
        .data_listen(cfg.data_listen)
        .bootstrap(parse(&cfg.bootstrap)?)
        .store_quota_bytes(cfg.store_quota_bytes)
        .mdns(cfg.mdns)
        .metrics(cfg.metrics)
        .control_socket(true)
        .runtime(runtime))
}

/// Starts the daemon a configuration describes.
pub async fn launch(cfg: &FileConfig) -> Result<Handle, LaunchError> {
    Ok(launcher(cfg).await?.start().await?)
}
