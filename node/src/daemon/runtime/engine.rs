//! The Engine calls the runtime makes, each idempotent so a step interrupted by a crash can be
//! run again: load an image (skipped when the tag already names the same image id), ensure the
//! node's network and volumes, create-and-start a container (reusing one of the same name),
//! stop-and-remove containers, and read a container's health.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerSummary, NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, DownloadFromContainerOptions, ImportImageOptions,
    ListContainersOptions, RemoveContainerOptions, RemoveImageOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use shoal_protocol::{ImageRef, ReleaseManifest};

use super::archive::{self, ArchiveError};
use super::spec::{self, LABEL_RELEASE, LABEL_SERVICE, Names, SpecError};
use crate::daemon::store::Store;

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The Engine cannot be reached or answered with an error.
    #[error("Docker Engine: {0}")]
    Docker(#[from] bollard::errors::Error),
    /// The image could not be assembled from the store.
    #[error("image of service {service}: {source}")]
    Archive {
        /// The service.
        service: String,
        /// Why.
        source: Box<ArchiveError>,
    },
    /// The Engine refused the image archive.
    #[error("image of service {service} did not load: {message}")]
    Load {
        /// The service.
        service: String,
        /// The Engine's message.
        message: String,
    },
    /// The release's settings cannot be applied.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The runtime's files could not be written or read.
    #[error(transparent)]
    State(#[from] crate::daemon::state::StateError),
    /// A release the runtime needs is not known to it.
    #[error("release {0} is not known to the runtime")]
    UnknownRelease(u64),
}

/// A container of this node, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// Container id.
    pub id: String,
    /// Its name (without the leading `/`).
    pub name: String,
    /// Its release.
    pub release: Option<u64>,
    /// Its service.
    pub service: String,
    /// The Engine's state (`running`, `exited`, ...).
    pub state: String,
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn conflict(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

/// The node's containers (running or not).
pub async fn containers(docker: &Docker, names: &Names) -> Result<Vec<Running>, EngineError> {
    let list: Vec<ContainerSummary> = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(names.filter()),
            ..Default::default()
        }))
        .await?;
    let mut out: Vec<Running> = list
        .into_iter()
        .map(|c| {
            let labels = c.labels.unwrap_or_default();
            Running {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                release: labels.get(LABEL_RELEASE).and_then(|r| r.parse().ok()),
                service: labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Stops (waiting `stop_timeout_s`) and removes a container; a missing one is fine.
pub async fn remove(docker: &Docker, id: &str, stop_timeout_s: u32) -> Result<(), EngineError> {
    match docker
        .stop_container(
            id,
            Some(StopContainerOptions {
                t: Some(stop_timeout_s as i32),
                ..Default::default()
            }),
        )
        .await
    {
        Ok(()) => {}
        Err(e) if not_found(&e) => return Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        }) => {}
        Err(e) => return Err(e.into()),
    }
    match docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if not_found(&e) || conflict(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes an image tag; an image still used or already gone is left alone.
pub async fn untag(docker: &Docker, tag: &str) {
    let _ = docker
        .remove_image(
            tag,
            Some(RemoveImageOptions {
                noprune: false,
                ..Default::default()
            }),
            None,
        )
        .await;
}

/// Whether `tag` names the image `image` already.
pub async fn has_image(docker: &Docker, tag: &str, image: &ImageRef) -> bool {
    match docker.inspect_image(tag).await {
        Ok(i) => i.id.as_deref() == Some(archive::image_id(image).as_str()),
        Err(_) => false,
    }
}

/// Loads `service`'s image of `manifest` from the store under its tag, unless it is loaded.
pub async fn load_image(
    docker: &Docker,
    names: &Names,
    store: &Arc<Store>,
    manifest: &ReleaseManifest,
    service: &str,
) -> Result<(), EngineError> {
    let svc = manifest
        .services
        .get(service)
        .ok_or_else(|| SpecError::DependsOn(format!("no service {service}")))?;
    let tag = names.image(service, manifest.sequence);
    if has_image(docker, &tag, &svc.image).await {
        return Ok(());
    }
    let arch = |source| EngineError::Archive {
        service: service.to_string(),
        source: Box::new(source),
    };
    let image = Arc::new(svc.image.clone());
    {
        let store = store.clone();
        let image = image.clone();
        tokio::task::spawn_blocking(move || archive::check_image(&store, &image))
            .await
            .map_err(|e| EngineError::Load {
                service: service.to_string(),
                message: e.to_string(),
            })?
            .map_err(arch)?;
    }
    let (body, failure) = archive::stream(store.clone(), image.clone(), tag.clone());
    let mut progress = docker.import_image_stream(
        ImportImageOptions {
            quiet: true,
            ..Default::default()
        },
        body,
        None,
    );
    let mut engine_error = None;
    while let Some(item) = progress.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    engine_error.get_or_insert(e);
                }
            }
            Err(e) => {
                engine_error.get_or_insert(e.to_string());
            }
        }
    }
    if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(arch(e));
    }
    if let Some(message) = engine_error {
        return Err(EngineError::Load {
            service: service.to_string(),
            message,
        });
    }
    if !has_image(docker, &tag, &image).await {
        return Err(EngineError::Load {
            service: service.to_string(),
            message: format!("{tag} is not the image the manifest names after loading"),
        });
    }
    Ok(())
}

/// Creates the node's network and the release's named volumes when missing.
pub async fn ensure_network_and_volumes(
    docker: &Docker,
    names: &Names,
    manifest: &ReleaseManifest,
) -> Result<(), EngineError> {
    let net = names.network();
    if docker.inspect_network(&net, None).await.is_err() {
        match docker
            .create_network(NetworkCreateRequest {
                name: net.clone(),
                driver: Some("bridge".into()),
                labels: Some(names.node_labels()),
                ..Default::default()
            })
            .await
        {
            Ok(_) => {}
            Err(e) if conflict(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for v in spec::release_volumes(manifest)? {
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(names.volume(&v)),
                labels: Some(names.node_labels()),
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

/// Creates (unless it exists) and starts `service`'s container of `manifest`.
pub async fn start(
    docker: &Docker,
    names: &Names,
    manifest: &ReleaseManifest,
    service: &str,
) -> Result<(), EngineError> {
    let name = names.container(service, manifest.sequence);
    let exists = docker.inspect_container(&name, None).await.is_ok();
    if !exists {
        let body = spec::container(names, manifest, service)?;
        match docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if conflict(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match docker.start_container(&name, None).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What a container's state says about its health now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Running; its healthcheck (if any) says healthy; with its restart count.
    Healthy(i64),
    /// Running, healthcheck still starting (or none), with its restart count.
    Running(i64),
    /// Not running, restarting, or its healthcheck says unhealthy.
    Failed(String),
}

/// Reads a container's state.
pub async fn observe(docker: &Docker, name: &str) -> Observed {
    let c = match docker.inspect_container(name, None).await {
        Ok(c) => c,
        Err(e) => return Observed::Failed(format!("{name}: {e}")),
    };
    let restarts = c.restart_count.unwrap_or(0);
    let Some(state) = c.state else {
        return Observed::Failed(format!("{name}: no state"));
    };
    if state.restarting == Some(true) {
        return Observed::Failed(format!("{name} is restarting"));
    }
    if state.running != Some(true) {
        return Observed::Failed(format!(
            "{name} is not running (exit code {})",
            state.exit_code.unwrap_or(-1)
        ));
    }
    match state.health.and_then(|h| h.status).map(|s| s.to_string()) {
        Some(s) if s == "healthy" => Observed::Healthy(restarts),
        Some(s) if s == "unhealthy" => Observed::Failed(format!("{name} healthcheck: unhealthy")),
        _ => Observed::Running(restarts),
    }
}

/// Whether `path` exists inside the container.
pub async fn file_exists(docker: &Docker, container: &str, path: &str) -> bool {
    let mut s = docker.download_from_container(
        container,
        Some(DownloadFromContainerOptions {
            path: path.to_string(),
        }),
    );
    matches!(s.next().await, Some(Ok(_)))
}

/// Waits `d`.
pub async fn pause(d: Duration) {
    tokio::time::sleep(d).await
}

/// Removes every container, volume, network and image tag of this node (for tests and
/// decommissioning).
pub async fn purge(docker: &Docker, names: &Names) -> Result<(), EngineError> {
    for c in containers(docker, names).await? {
        remove(docker, &c.id, 0).await?;
    }
    let filters: HashMap<String, Vec<String>> = names.filter();
    if let Ok(v) = docker
        .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
            filters: Some(filters.clone()),
        }))
        .await
    {
        for vol in v.volumes.unwrap_or_default() {
            let _ = docker
                .remove_volume(
                    &vol.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await;
        }
    }
    let _ = docker.remove_network(&names.network()).await;
    // The node's image tags (other nodes' tags of the same image keep it).
    if let Ok(images) = docker
        .list_images(None::<bollard::query_parameters::ListImagesOptions>)
        .await
    {
        for tag in images
            .iter()
            .flat_map(|i| i.repo_tags.iter())
            .filter(|t| names.is_own_image(t))
        {
            untag(docker, tag).await;
        }
    }
    Ok(())
}
