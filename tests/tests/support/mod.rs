//! Shared set-up for the runtime tests: a real Docker Engine, a release made from
//! `busybox:latest` (exported and cut into chunks by the builder), an origin daemon that seeds
//! it, and device daemons with the Docker runtime. Every Engine object a test makes is named
//! after its fleet (unique per test and process) and removed when the [`Env`] drops.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use shoal_node::daemon::identity::DeviceKey;
use shoal_node::daemon::runtime::{DockerRuntime, RuntimeConfig};
use shoal_node::daemon::{Handle, Status, WallClock};
use shoal_protocol::{
    Digest, ImageRef, ReleaseManifest, ReleaseSeq, RolloutPlan, Service, ServiceSettings,
    WaveAction,
};
use shoal_testing::{TEST_ARCH, TEST_EPOCH, TestFleet, TestRelease};

/// Generous bound on every wait (these tests assert outcomes, never timings).
pub const WAIT: Duration = Duration::from_secs(60);
/// The prefix of every Engine object these tests create.
pub const PREFIX: &str = "shoaltest";

pub use shoal_testing::daemon::{clock, logs};

/// The Engine, with `busybox:latest` present; `None` (after saying why) when there is none.
pub async fn engine() -> Option<Docker> {
    let docker = match Docker::connect_with_defaults() {
        Ok(d) => d,
        Err(e) => {
            shoal_testing::skip::skip("a Docker Engine", &format!("none ({e})"));
            return None;
        }
    };
    let docker = match docker.negotiate_version().await {
        Ok(d) => d,
        Err(e) => {
            shoal_testing::skip::skip("a Docker Engine", &format!("none reachable ({e})"));
            return None;
        }
    };
    if docker.inspect_image("busybox:latest").await.is_err() {
        let _ = shoal_testing::engine::make_base_image();
    }
    if let Err(e) = docker.inspect_image("busybox:latest").await {
        shoal_testing::skip::skip(
            "the base image busybox:latest",
            &format!("scripts/base-image.sh could not make it ({e})"),
        );
        return None;
    }
    Some(docker)
}

/// busybox as a release image, with its chunks' bytes.
#[derive(Debug, Clone)]
pub struct Image {
    pub image: ImageRef,
    pub blobs: Vec<Vec<u8>>,
}

/// Exports `busybox:latest` with the builder's exporter.
pub async fn busybox(docker: &Docker, dir: &Path) -> Image {
    let store =
        Arc::new(shoal_builder::storage::blobs::Store::open(&dir.join("builder-store")).unwrap());
    let exported = shoal_builder::pipeline::engine::export(docker, "busybox:latest", store.clone())
        .await
        .unwrap();
    let mut blobs = Vec::new();
    for l in &exported.image.layers {
        for c in &l.chunks {
            let bytes = store
                .get(shoal_builder::storage::blobs::Kind::Chunk, &c.digest)
                .unwrap()
                .unwrap();
            blobs.push(bytes);
        }
    }
    Image {
        image: exported.image,
        blobs,
    }
}

/// A busybox service running `sh -c script`.
pub fn sh(script: &str) -> ServiceSettings {
    ServiceSettings {
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..Default::default()
    }
}

/// A test's fleet, origin, devices, and the clean-up of its Engine objects.
pub struct Env {
    pub fleet: TestFleet,
    pub dir: tempfile::TempDir,
    pub clock: WallClock,
    pub docker: Docker,
    pub image: Image,
    pub origin: Handle,
}

impl Env {
    /// A fleet named `shoaltest-<name>-<pid>`; `None` when no Engine is reachable.
    pub async fn new(name: &str) -> Option<Env> {
        logs();
        let docker = engine().await?;
        let fleet = TestFleet::new(&format!("{name}-{}", std::process::id()));
        let dir = tempfile::tempdir().unwrap();
        let image = busybox(&docker, dir.path()).await;
        let clock = clock();
        let origin = fleet
            .daemon(DeviceKey::generate(), dir.path().join("origin"), &clock)
            .origin(true)
            .start()
            .await
            .unwrap();
        cleanup(&fleet.fleet);
        Some(Env {
            fleet,
            dir,
            clock,
            docker,
            image,
            origin,
        })
    }

    /// The runtime settings tests use: short windows and the test prefix.
    pub fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            prefix: PREFIX.into(),
            health_window_ms: 1_500,
            health_timeout_ms: 30_000,
            handover_timeout_ms: 30_000,
            stop_timeout_s: 2,
            ..Default::default()
        }
    }

    /// A device daemon with the Docker runtime, bootstrapped from the origin.
    pub async fn device(&self, name: &str, cfg: RuntimeConfig) -> (Handle, DockerRuntime) {
        let key = DeviceKey::generate();
        let data = self.dir.path().join(name);
        let rt = DockerRuntime::connect(cfg, &self.fleet.fleet, key.device_id(), &data)
            .await
            .unwrap();
        let h = self
            .fleet
            .daemon(key, data, &self.clock)
            .bootstrap(vec![self.origin.listen_addrs()[0].clone()])
            .runtime(Arc::new(rt.clone()))
            .start()
            .await
            .unwrap();
        (h, rt)
    }

    /// Release `seq` with these services (all busybox), signed.
    pub fn release(&self, seq: u64, services: Vec<(&str, ServiceSettings)>) -> TestRelease {
        let services: BTreeMap<String, Service> = services
            .into_iter()
            .map(|(n, settings)| {
                (
                    n.to_string(),
                    Service {
                        image: self.image.image.clone(),
                        settings,
                    },
                )
            })
            .collect();
        self.fleet.release_of(ReleaseManifest {
            fleet: self.fleet.fleet.clone(),
            sequence: ReleaseSeq(seq),
            commit: format!("{seq:040x}"),
            created: TEST_EPOCH,
            expires: TEST_EPOCH.plus_secs(86_400),
            arch: TEST_ARCH.to_string(),
            device_type: "generic-amd64".to_string(),
            services,
            rollout: RolloutPlan::all_at_once(),
        })
    }

    /// Seeds `rel` from the origin and opens its only wave.
    pub async fn publish(&self, rel: &TestRelease) {
        for b in &self.image.blobs {
            self.origin.store().put_bytes(b).unwrap();
        }
        self.origin.store().put_bytes(&rel.manifest_bytes).unwrap();
        self.origin
            .seed(
                rel.announcement_gossip[1..].to_vec(),
                rel.manifest_bytes.clone(),
            )
            .await
            .unwrap();
        let open = self
            .fleet
            .wave_control(rel, 1, WaveAction::Open { wave: 0 });
        self.origin.publish(open).await.unwrap();
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        cleanup(&self.fleet.fleet);
    }
}

fn docker_cli(args: &[&str]) -> String {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Removes the containers, volumes, networks and images of `fleet` made with [`PREFIX`].
pub fn cleanup(fleet: &str) {
    let label = format!("label=io.shoal.fleet={fleet}");
    let ids = docker_cli(&["ps", "-aq", "--filter", &label]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        docker_cli(&args);
    }
    for kind in ["volume", "network"] {
        let names = docker_cli(&[kind, "ls", "-q", "--filter", &label]);
        for n in names.split_whitespace() {
            docker_cli(&[kind, "rm", n]);
        }
    }
    let repo = format!(
        "{PREFIX}-{}/*",
        shoal_node::daemon::runtime::spec::sanitize(fleet)
    );
    let images = docker_cli(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "--filter",
        &format!("reference={repo}"),
    ]);
    for i in images.split_whitespace() {
        docker_cli(&["rmi", i]);
    }
}

/// `docker exec CONTAINER sh -c SCRIPT`'s output.
pub fn exec(container: &str, script: &str) -> String {
    docker_cli(&["exec", container, "sh", "-c", script])
}

/// `docker inspect` of a container, as JSON.
pub fn inspect(container: &str) -> serde_json::Value {
    let out = docker_cli(&["inspect", container]);
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v.get(0).cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// Waits until the device has committed `seq`.
pub async fn committed(h: &Handle, seq: u64) -> Status {
    let (s, ok) = h.wait_for(WAIT, |s| s.committed == Some(seq)).await;
    assert!(ok, "release {seq} not committed: {s:#?}");
    s
}

/// The names of the device's containers with their release labels and states.
pub async fn containers(rt: &DockerRuntime) -> Vec<(String, Option<u64>, String)> {
    rt.containers()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.service, c.release, c.state))
        .collect()
}

/// `Digest` re-export for tests.
pub type D = Digest;
