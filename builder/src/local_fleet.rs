//! A whole fleet on this machine: a `shoal-builder serve` process and N node daemons on
//! loopback, in a fresh temporary directory. `shoal-builder local-fleet` shows it; the
//! end-to-end tests drive it.
//!
//! [`LocalFleet::start`] creates the data directory, the fleet (with a quick rollout plan, see
//! [`quick_plan`]) and a push token with the builder executable, starts `serve` on ephemeral
//! loopback ports, reads `GET /api/v1/fleets/{fleet}/bootstrap`, and starts the devices in this
//! process, each with the runtime [`RuntimeFactory`] makes (the Docker Engine runtime for real
//! use, stage-only for tests without an Engine), bootstrapped to the builder's origin node and
//! registered in the device registry with a provisioning key made by `fleet provisioning-key`.
//! [`LocalFleet::push`] pushes a directory with the stock git client.

pub mod demo;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_node::daemon::enroll::{EnrollState, Enrollment};
use shoal_node::daemon::identity::DeviceKey;
use shoal_node::daemon::runtime::{DockerRuntime, RuntimeConfig};
use shoal_node::daemon::{BoxFuture, Handle, Runtime};
use shoal_protocol::{DeviceId, Envelope, RolloutPlan, TrustRoot, Wave, encoding};

use crate::steering::Progress;

/// The fleet's name.
pub const FLEET: &str = "local";

/// Makes a device's runtime: (fleet, device, device data directory).
pub type RuntimeFactory =
    Arc<dyn Fn(&str, DeviceId, &Path) -> BoxFuture<Result<Arc<dyn Runtime>, String>> + Send + Sync>;

/// The Docker runtimes a [`docker_runtimes`] factory made, by device.
pub type DockerRuntimes = Arc<Mutex<BTreeMap<DeviceId, DockerRuntime>>>;

/// A [`RuntimeFactory`] that connects each device's Docker Engine runtime with the
/// configuration `config(device)` returns, and the runtimes it made (to list or purge them).
pub fn docker_runtimes(
    config: impl Fn(DeviceId) -> RuntimeConfig + Send + Sync + 'static,
) -> (RuntimeFactory, DockerRuntimes) {
    let runtimes = DockerRuntimes::default();
    let made = runtimes.clone();
    let factory: RuntimeFactory = Arc::new(move |fleet, device, dir| {
        let cfg = config(device);
        let (fleet, dir, made) = (fleet.to_string(), dir.to_path_buf(), made.clone());
        Box::pin(async move {
            let rt = DockerRuntime::connect(cfg, &fleet, device, &dir)
                .await
                .map_err(|e| e.to_string())?;
            made.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(device, rt.clone());
            Ok(Arc::new(rt) as Arc<dyn Runtime>)
        })
    });
    (factory, runtimes)
}

/// Why the local fleet failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// Running a program (the builder, git) failed.
    #[error("{what}: {message}")]
    Run {
        /// What was run.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// The builder's API answered something unexpected.
    #[error("builder API {path}: {message}")]
    Api {
        /// The request path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A device did not start.
    #[error("device {name}: {message}")]
    Device {
        /// The device.
        name: String,
        /// What went wrong.
        message: String,
    },
}

fn run_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let what = what.into();
    move |e| LocalError::Run {
        what,
        message: e.to_string(),
    }
}

/// The local fleet's rollout plan: a canary wave, then 10%, 50% and 100% of the fleet in
/// cumulative terms, each wave concluding on one healthy device after a short bake.
pub fn quick_plan(bake_time_s: u64) -> RolloutPlan {
    let wave = |percent| Wave {
        percent,
        min_sample: 1,
        success_threshold_pct: 100,
        error_threshold_pct: 50,
        bake_time_s,
    };
    RolloutPlan {
        waves: vec![wave(20), wave(20), wave(20), wave(40)],
        progress_deadline_s: 600,
    }
}

/// How to start a local fleet.
#[derive(Clone)]
pub struct Options {
    /// The `shoal-builder` executable (its `serve` is the builder; its `hook` the git hook).
    pub builder_exe: PathBuf,
    /// Device keys (one device each).
    pub keys: Vec<DeviceKey>,
    /// Makes each device's runtime.
    pub runtime: RuntimeFactory,
    /// The fleet's rollout plan.
    pub plan: RolloutPlan,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("builder_exe", &self.builder_exe)
            .field("devices", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// One device of the local fleet.
#[derive(Debug)]
pub struct Device {
    /// `device-1`, ...
    pub name: String,
    /// The running daemon.
    pub handle: Handle,
    /// Its data directory.
    pub dir: PathBuf,
}

/// A running local fleet. [`LocalFleet::shutdown`] stops it; dropping it kills the builder.
#[derive(Debug)]
pub struct LocalFleet {
    /// The temporary directory holding everything.
    pub dir: tempfile::TempDir,
    /// The builder's base URL.
    pub url: String,
    /// The push token.
    pub token: String,
    /// The devices.
    pub devices: Vec<Device>,
    /// The fleet's trust root.
    pub trust: TrustRoot,
    _builder: BuilderProcess,
}

/// The builder process; killed when dropped.
#[derive(Debug)]
struct BuilderProcess(Child);

impl Drop for BuilderProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a push printed and whether git accepted it.
#[derive(Debug, Clone)]
pub struct PushOutcome {
    /// Whether the push was accepted.
    pub ok: bool,
    /// Git's standard error (the `remote:` lines).
    pub stderr: String,
}

fn builder_cmd(exe: &Path, data: &Path, args: &[&str]) -> Result<String, LocalError> {
    let out = Command::new(exe)
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .map_err(run_err(format!("shoal-builder {}", args.join(" "))))?;
    if !out.status.success() {
        return Err(LocalError::Run {
            what: format!("shoal-builder {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

impl LocalFleet {
    /// Starts the builder and the devices.
    pub async fn start(opts: Options) -> Result<LocalFleet, LocalError> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-local-")
            .tempdir()
            .map_err(run_err("create a temporary directory"))?;
        let data = dir.path().join("builder");
        let exe = opts.builder_exe.clone();
        let token = builder_cmd(&exe, &data, &["token", "create", "--name", "local-fleet"])?
            .trim()
            .to_string();
        let mut builder = Command::new(&exe)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--p2p-listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
                "--data-listen",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(&data)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("builder.log"))
                    .map_err(run_err("create builder.log"))?,
            ))
            .spawn()
            .map_err(run_err("start shoal-builder serve"))?;
        let stdout = builder.stdout.take().ok_or_else(|| LocalError::Run {
            what: "shoal-builder serve".into(),
            message: "no stdout".into(),
        })?;
        let url = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut url = None;
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(u) = line.strip_prefix("shoal-builder listening on ") {
                    url = Some(u.trim().to_string());
                    break;
                }
            }
            // Keep draining so the builder never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            url
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| LocalError::Run {
            what: "shoal-builder serve".into(),
            message: format!(
                "exited before listening; see {}",
                dir.path().join("builder.log").display()
            ),
        })?;
        let builder = BuilderProcess(builder);
        let body = serde_json::json!({
            "name": FLEET,
            "arch": "amd64",
            "device_type": "generic-amd64",
            "rollout": opts.plan,
        })
        .to_string();
        let (status, reply) = http_request(&url, &token, "POST", "/api/v1/fleets", &body).await?;
        if status != 201 {
            return Err(LocalError::Api {
                path: "/api/v1/fleets".into(),
                message: format!("status {status}: {}", String::from_utf8_lossy(&reply)),
            });
        }
        let boot = get_json(&url, &token, &format!("/api/v1/fleets/{FLEET}/bootstrap")).await?;
        let provisioning = builder_cmd(&exe, &data, &["fleet", "provisioning-key", FLEET])?;
        let provisioning = provisioning.trim();
        let api = |message: &str| LocalError::Api {
            path: "bootstrap".into(),
            message: message.into(),
        };
        let trust_bytes = boot["trust_root_hex"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| api("no trust root"))?;
        let env: Envelope = encoding::decode(&trust_bytes).map_err(|e| api(&e.to_string()))?;
        let trust = TrustRoot::open_initial(&env).map_err(|e| api(&e.to_string()))?;
        let mut fleet = LocalFleet {
            dir,
            url,
            token,
            devices: Vec::new(),
            trust,
            _builder: builder,
        };
        let addrs: Vec<libp2p::Multiaddr> = boot["multiaddrs"]
            .as_array()
            .ok_or_else(|| api("no multiaddrs"))?
            .iter()
            .filter_map(|a| a.as_str()?.parse().ok())
            .collect();
        for (i, key) in opts.keys.into_iter().enumerate() {
            let name = format!("device-{}", i + 1);
            let dir = fleet.dir.path().join(&name);
            let dev_err = |message: String| LocalError::Device {
                name: name.clone(),
                message,
            };
            std::fs::create_dir_all(&dir).map_err(|e| dev_err(e.to_string()))?;
            let runtime = (opts.runtime)(FLEET, key.device_id(), &dir)
                .await
                .map_err(dev_err)?;
            let handle = shoal_node::daemon::Launcher::new(key, fleet.trust.clone(), &dir)
                .arch("amd64")
                .bootstrap(addrs.clone())
                .runtime(runtime)
                .enroll(Enrollment::new(&fleet.url, provisioning).name(&name))
                .start()
                .await
                .map_err(|e| dev_err(e.to_string()))?;
            fleet.devices.push(Device { name, handle, dir });
        }
        for d in &fleet.devices {
            match d.handle.wait_enrollment(Duration::from_secs(60)).await {
                Some(EnrollState::Enrolled { .. }) => {}
                other => {
                    return Err(LocalError::Device {
                        name: d.name.clone(),
                        message: format!("not registered with the builder: {other:?}"),
                    });
                }
            }
        }
        Ok(fleet)
    }

    /// The git remote with the token as credentials.
    pub fn remote(&self) -> String {
        let endpoint = format!("/git/{FLEET}.git");
        let Ok(mut remote) = url::Url::parse(&self.url).and_then(|u| u.join(&endpoint)) else {
            // Not a URL (the builder printed something else): git will say so.
            return format!("{}{endpoint}", self.url);
        };
        // Both fail only for URLs that cannot have credentials, which `http://` URLs can.
        let _ = remote.set_username("git");
        let _ = remote.set_password(Some(&self.token));
        remote.into()
    }

    /// Pushes `project` (a git repository) to the fleet's master, calling `on_line` with each
    /// line git prints (the build log arrives as `remote:` lines).
    pub async fn push(
        &self,
        project: &Path,
        mut on_line: impl FnMut(&str) + Send + 'static,
    ) -> Result<PushOutcome, LocalError> {
        let mut child = git(project)
            .args(["push", "--progress", &self.remote(), "HEAD:master"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(run_err("git push"))?;
        let stderr = child.stderr.take().ok_or_else(|| LocalError::Run {
            what: "git push".into(),
            message: "no stderr".into(),
        })?;
        tokio::task::spawn_blocking(move || {
            let mut all = String::new();
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            // git ends progress lines with \r; treat it as a line end too.
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf).to_string();
                        for part in text.split('\r') {
                            let line = part.trim_end_matches('\n');
                            if !line.trim().is_empty() {
                                on_line(line);
                            }
                        }
                        all.push_str(&text);
                    }
                }
            }
            let ok = child.wait().map(|s| s.success()).unwrap_or(false);
            PushOutcome { ok, stderr: all }
        })
        .await
        .map_err(|e| LocalError::Run {
            what: "git push".into(),
            message: e.to_string(),
        })
    }

    /// `GET path` as JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, LocalError> {
        get_json(&self.url, &self.token, path).await
    }

    /// The fleet's rollout progress, if it has one.
    pub async fn progress(&self) -> Option<Progress> {
        let v = self
            .get_json(&format!("/api/v1/fleets/{FLEET}/rollout"))
            .await
            .ok()?;
        serde_json::from_value(v).ok()
    }

    /// The newest release (JSON as the API shows it).
    pub async fn latest_release(&self) -> Result<serde_json::Value, LocalError> {
        let v = self
            .get_json(&format!("/api/v1/fleets/{FLEET}/releases?limit=1"))
            .await?;
        Ok(v["releases"][0].clone())
    }

    /// A request to the builder's API; returns status and body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, Vec<u8>), LocalError> {
        http_request(&self.url, &self.token, method, path, body).await
    }

    /// Stops the devices and the builder.
    pub async fn shutdown(mut self) {
        for d in std::mem::take(&mut self.devices) {
            d.handle.shutdown().await;
        }
    }
}

async fn get_json(url: &str, token: &str, path: &str) -> Result<serde_json::Value, LocalError> {
    let (status, body) = http_request(url, token, "GET", path, "").await?;
    if status != 200 {
        return Err(LocalError::Api {
            path: path.into(),
            message: format!("status {status}: {}", String::from_utf8_lossy(&body)),
        });
    }
    serde_json::from_slice(&body).map_err(|e| LocalError::Api {
        path: path.into(),
        message: e.to_string(),
    })
}

/// A request with the token as bearer credentials; returns status and body.
async fn http_request(
    url: &str,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, Vec<u8>), LocalError> {
    let api = |message: String| LocalError::Api {
        path: path.into(),
        message,
    };
    let endpoint = url::Url::parse(url)
        .and_then(|u| u.join(path))
        .map_err(|e| api(e.to_string()))?;
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| api(e.to_string()))?;
    // reqwest is built without a rustls provider: ring, as everywhere in Shoal.
    shoal_node::daemon::quic::install_crypto_provider();
    let resp = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| api(e.to_string()))?
        .request(method, endpoint)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| api(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| api(e.to_string()))?;
    Ok((status, body.to_vec()))
}

/// A git command in `dir` with a clean, non-interactive environment.
pub fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Shoal local fleet")
        .env("GIT_AUTHOR_EMAIL", "local-fleet@example.invalid")
        .env("GIT_COMMITTER_NAME", "Shoal local fleet")
        .env("GIT_COMMITTER_EMAIL", "local-fleet@example.invalid");
    c
}

/// Runs git in `dir`; an error carries its stderr.
pub fn git_ok(dir: &Path, args: &[&str]) -> Result<(), LocalError> {
    let out = git(dir)
        .args(args)
        .output()
        .map_err(run_err(format!("git {}", args.join(" "))))?;
    if !out.status.success() {
        return Err(LocalError::Run {
            what: format!("git {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The bundled `examples/hello` app, file by file.
pub const HELLO: &[(&str, &str)] = &[
    (
        "docker-compose.yml",
        include_str!("../../examples/hello/docker-compose.yml"),
    ),
    (
        "web/Dockerfile",
        include_str!("../../examples/hello/web/Dockerfile"),
    ),
    (
        "web/index.html",
        include_str!("../../examples/hello/web/index.html"),
    ),
    (
        "worker/Dockerfile",
        include_str!("../../examples/hello/worker/Dockerfile"),
    ),
    (
        "worker/run.sh",
        include_str!("../../examples/hello/worker/run.sh"),
    ),
];

/// Writes `files` into a new git repository at `dir` and commits them.
pub fn init_project(dir: &Path, files: &[(&str, &str)]) -> Result<(), LocalError> {
    std::fs::create_dir_all(dir).map_err(run_err("create the project directory"))?;
    git_ok(dir, &["init", "-q", "-b", "master"])?;
    for (path, text) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(run_err("create a project directory"))?;
        }
        std::fs::write(&p, text).map_err(run_err(format!("write {path}")))?;
    }
    commit_all(dir, "hello")
}

/// Commits every change in `dir`.
pub fn commit_all(dir: &Path, message: &str) -> Result<(), LocalError> {
    git_ok(dir, &["add", "-A"])?;
    git_ok(dir, &["commit", "-q", "--allow-empty", "-m", message])
}

/// The script that makes the local `busybox:latest` base image when it is missing.
pub const BASE_IMAGE_SCRIPT: &str = include_str!("../../scripts/base-image.sh");
