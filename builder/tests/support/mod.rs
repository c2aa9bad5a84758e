//! Test harness: a builder process on a free port with a fresh data directory, git projects in
//! temporary directories, and an HTTP helper over `reqwest`.

#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod inproc;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::BTreeMap;

use shoal_builder::app::{App, now_s};
use shoal_builder::storage::blobs::Kind;
use shoal_builder::storage::db::{Fleet, Outcome, Status};
use shoal_protocol::{
    ChunkRef, Digest, ImageRef, LayerRef, ReleaseManifest, ReleaseSeq, RolloutPlan, Service,
    TrustRoot, UnixTime, verify,
};

pub use shoal_testing::engine::{available as engine_available, ensure_base_image};

pub const BIN: &str = env!("CARGO_BIN_EXE_shoal-builder");

/// A value unique to this call, to defeat the Engine's build cache.
pub fn nonce() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}-{}", d.as_nanos(), std::process::id())
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Makes a local `node:latest` stand-in (busybox with an `npm` script) when missing.
pub fn ensure_node_image() {
    let have = Command::new("docker")
        .args(["image", "inspect", "node:latest"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    if have {
        return;
    }
    let mut child = Command::new("docker")
        .args(["build", "-t", "node:latest", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"FROM busybox\nRUN printf '#!/bin/sh\\necho npm \"$@\"\\n' > /bin/npm && chmod +x /bin/npm\n")
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "building the node stand-in failed"
    );
}

pub struct Builder {
    pub data: tempfile::TempDir,
    pub url: String,
    pub token: String,
    pub stdout_lines: Vec<String>,
    child: Option<Child>,
}

fn run_ok(data: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shoal-builder {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl Builder {
    /// A builder with fleet `demo` (amd64, generic-amd64) and a token.
    pub fn start(_name: &str) -> Builder {
        let data = tempfile::tempdir().unwrap();
        run_ok(
            data.path(),
            &[
                "fleet",
                "create",
                "demo",
                "--arch",
                "amd64",
                "--device-type",
                "generic-amd64",
            ],
        );
        let token = run_ok(data.path(), &["token", "create", "--name", "tests"])
            .trim()
            .to_string();
        let mut b = Builder {
            data,
            url: String::new(),
            token,
            stdout_lines: Vec::new(),
            child: None,
        };
        b.spawn();
        b
    }

    pub fn start_with_engine(name: &str) -> Option<Builder> {
        if !engine_available(name) {
            return None;
        }
        ensure_base_image();
        Some(Builder::start(name))
    }

    fn spawn(&mut self) {
        let mut child = Command::new(BIN)
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
            .arg(self.data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        self.stdout_lines.clear();
        loop {
            let line = lines.next().expect("builder exited").unwrap();
            self.stdout_lines.push(line.clone());
            if let Some(url) = line.strip_prefix("shoal-builder listening on ") {
                self.url = url.trim().to_string();
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// The git remote with the token as HTTP credentials.
    pub fn remote(&self) -> String {
        format!("http://git:{}@{}/git/demo.git", self.token, self.addr())
    }

    pub fn get_bytes(&self, path: &str) -> Vec<u8> {
        let (status, _, body) = http_request(&self.addr(), "GET", path, &[], b"");
        assert_eq!(
            status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    }

    pub fn get_text(&self, path: &str) -> String {
        String::from_utf8(self.get_bytes(path)).unwrap()
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        serde_json::from_slice(&self.get_bytes(path)).unwrap()
    }

    pub fn latest_release(&self) -> serde_json::Value {
        self.get_json("/api/v1/fleets/demo/releases?limit=1")["releases"][0].clone()
    }

    pub fn trust_root(&self) -> TrustRoot {
        let bytes = self.get_bytes("/api/v1/fleets/demo/trust-root");
        let env = shoal_protocol::encoding::decode(&bytes).unwrap();
        TrustRoot::open_initial(&env).unwrap()
    }

    /// Fetches a release's announcement and manifest and verifies them as a device would.
    pub fn verified_release(&self, id: i64) -> ReleaseManifest {
        let trust = self.trust_root();
        let ctx = verify::Context {
            trust: &trust,
            arch: "amd64",
            highest_seen: None,
            now: UnixTime(now()),
        };
        let ann = self.get_bytes(&format!("/api/v1/releases/{id}/announcement"));
        let ann = verify::announcement(&ctx, &ann).expect("announcement verifies");
        let manifest = self.get_bytes(&format!("/api/v1/releases/{id}/manifest"));
        verify::manifest(&ctx, &ann, &manifest).expect("manifest verifies")
    }

    /// Whether any stored chunk contains `needle`.
    pub fn store_contains(&self, needle: &[u8]) -> bool {
        fn walk(dir: &Path, needle: &[u8]) -> bool {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return false;
            };
            rd.flatten().any(|e| {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, needle)
                } else {
                    std::fs::read(&p)
                        .map(|b| b.windows(needle.len()).any(|w| w == needle))
                        .unwrap_or(false)
                }
            })
        }
        walk(&self.data.path().join("store"), needle)
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it yields a value (two minutes at most).
pub fn wait_for<T>(f: impl FnMut() -> Option<T>) -> T {
    shoal_testing::wait::until(Duration::from_secs(120), "a builder condition", f)
}

/// The tests' HTTP client (one per test process): plain HTTP to local servers, no proxy, no
/// redirects followed, no overall timeout (a followed log streams until its build ends).
pub fn http_client() -> &'static reqwest::blocking::Client {
    static CLIENT: std::sync::OnceLock<reqwest::blocking::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        // reqwest's rustls needs a crypto provider even when no request uses TLS.
        shoal_node::daemon::quic::install_crypto_provider();
        reqwest::blocking::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(None)
            .build()
            .unwrap()
    })
}

/// One HTTP request to `addr` (`headers` as `Name: value`); returns the status, the response
/// headers as `name: value` lines and the body.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http_client()
        .request(method, format!("http://{addr}{path}"))
        .body(body.to_vec());
    for h in headers {
        let (name, value) = h.split_once(':').expect("header as `Name: value`");
        req = req.header(name.trim(), value.trim());
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let head = resp
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}\r\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    (status, head, resp.bytes().unwrap().to_vec())
}

pub struct PushOutput {
    pub ok: bool,
    pub stderr: String,
}

pub struct Project {
    pub dir: tempfile::TempDir,
    home: tempfile::TempDir,
}

fn git_cmd(dir: &Path, home: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "")
        .env("SSH_ASKPASS", "")
        .env("GIT_AUTHOR_NAME", "Dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.invalid")
        .env("GIT_COMMITTER_NAME", "Dev")
        .env("GIT_COMMITTER_EMAIL", "dev@example.invalid");
    c
}

impl Project {
    pub fn new(files: &[(&str, &str)]) -> Project {
        let p = Project {
            dir: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
        };
        p.git(&["init", "-q", "-b", "master"]);
        for (path, text) in files {
            p.write(path, text);
        }
        p.commit("initial");
        p
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn write(&self, path: &str, text: &str) {
        self.write_bytes(path, text.as_bytes());
    }

    pub fn write_bytes(&self, path: &str, bytes: &[u8]) {
        let p = self.dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    pub fn git(&self, args: &[&str]) -> std::process::Output {
        git_cmd(self.dir.path(), self.home.path())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn commit(&self, msg: &str) {
        assert!(self.git(&["add", "-A"]).status.success());
        let out = self.git(&["commit", "-q", "--allow-empty", "-m", msg]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn head(&self) -> String {
        String::from_utf8(self.git(&["rev-parse", "HEAD"]).stdout)
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn push(&self, remote: &str, refspec: &str) -> PushOutput {
        let out = self.git(&["push", remote, refspec]);
        PushOutput {
            ok: out.status.success(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }
}

/// `git ls-remote` output of a remote (empty when it has no refs or refuses).
pub fn ls_remote(remote: &str) -> String {
    let home = tempfile::tempdir().unwrap();
    let out = git_cmd(Path::new("/"), home.path())
        .args(["ls-remote", remote])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A `git push` running in its own process group.
pub struct BackgroundPush(Child);

impl BackgroundPush {
    /// Kills git and its helpers (the whole process group), as a pusher pressing ^C would.
    pub fn kill_group(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for BackgroundPush {
    fn drop(&mut self) {
        self.kill_group();
    }
}

impl Project {
    pub fn push_in_background(&self, remote: &str, refspec: &str) -> BackgroundPush {
        use std::os::unix::process::CommandExt;
        let child = git_cmd(self.dir.path(), self.home.path())
            .args(["push", remote, refspec])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        BackgroundPush(child)
    }
}

/// Every file under `dir`.
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Stores, signs and records release `seq` of `fleet` over ~1 MiB of bytes with `rollout`, as
/// the pipeline does (chunks in the store, manifest and announcement signed with the builder's
/// release key, a `success` release row). Returns the announcement and manifest bytes and the
/// manifest.
pub async fn store_release_with(
    app: &App,
    fleet: &Fleet,
    seq: u64,
    rollout: RolloutPlan,
) -> (Vec<u8>, Vec<u8>, ReleaseManifest) {
    let mut chunks = Vec::new();
    for i in 0..4u64 {
        let bytes: Vec<u8> = (0..256 * 1024u64)
            .map(|j| ((j * 31 + i * 7 + seq) % 251) as u8)
            .collect();
        let digest = app.store.put_blob(Kind::Chunk, &bytes).unwrap();
        chunks.push(ChunkRef {
            digest,
            size: bytes.len() as u32,
        });
    }
    let config = br#"{"config":{}}"#.to_vec();
    let created = UnixTime(now_s() as u64);
    let manifest = ReleaseManifest {
        fleet: fleet.name.clone(),
        sequence: ReleaseSeq(seq),
        commit: "c".repeat(40),
        created,
        expires: created.plus_secs(3600),
        arch: "amd64".into(),
        device_type: "generic-amd64".into(),
        services: BTreeMap::from([(
            "main".to_string(),
            Service {
                image: ImageRef {
                    config_digest: Digest::of(&config),
                    config,
                    layers: vec![LayerRef::from_chunks(chunks)],
                },
                settings: Default::default(),
            },
        )]),
        rollout,
    };
    let (mb, ab) = shoal_builder::pipeline::sign(app, &manifest);
    let md = app.store.put_blob(Kind::Manifest, &mb).unwrap();
    app.store.put(Kind::Announcement, &md, &ab).unwrap();
    let id = app
        .db
        .start_release(fleet, &manifest.commit, "refs/heads/master", now_s())
        .await
        .unwrap();
    let outcome = Outcome {
        sequence: Some(seq as i64),
        manifest_digest: Some(md.to_string()),
        manifest_size: Some(mb.len() as i64),
        services: serde_json::json!([]),
        ..Outcome::default()
    };
    app.db
        .finish_release(id, Status::Success, now_s(), 1, "", &outcome)
        .await
        .unwrap();
    (ab, mb, manifest)
}
