//! A builder server running in this test process (no Docker Engine needed): fleet `demo`,
//! releases recorded as the pipeline records them (with a signed manifest in the store), devices
//! with real keys that register and report over HTTP.

use std::sync::Arc;

use shoal_builder::app::{App, Role};
use shoal_builder::storage::blobs::Kind;
use shoal_builder::storage::db::{Outcome, Status};
use shoal_protocol::{
    DeviceId, DeviceState, Digest, Envelope, ReleaseManifest, ReleaseSeq, RolloutPlan, SigningKey,
    StatusReport, UnixTime, encoding,
};

use super::{http_request, now};

pub struct InProc {
    pub app: Arc<App>,
    pub addr: String,
    pub push_token: String,
    pub operator_token: String,
    pub provisioning_key: String,
    pub rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// A published release.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    pub id: i64,
    pub sequence: u64,
    pub digest: Digest,
}

/// A device with its own key.
pub struct Dev {
    pub key: SigningKey,
    pub name: String,
}

impl Dev {
    pub fn new(n: u8, name: &str) -> Dev {
        Dev {
            key: SigningKey::from_bytes(&[n; 32]),
            name: name.to_string(),
        }
    }
    pub fn id(&self) -> DeviceId {
        DeviceId::from(self.key.public_key())
    }
    /// A signed report on `r`, stamped now, with `nonce`.
    pub fn report(&self, r: &Published, state: DeviceState, nonce: u64) -> Vec<u8> {
        self.report_at(r, state, nonce, now())
    }
    pub fn report_at(&self, r: &Published, state: DeviceState, nonce: u64, time: u64) -> Vec<u8> {
        let report = StatusReport {
            fleet: "demo".into(),
            device: self.id(),
            sequence: ReleaseSeq(r.sequence),
            manifest_digest: r.digest,
            state,
            time: UnixTime(time),
            nonce,
            detail: format!("{} is {}", self.name, state.as_str()),
        };
        encoding::encode(&Envelope::seal(&report, &[&self.key]))
    }
}

impl InProc {
    pub fn start() -> InProc {
        Self::start_with_plan(RolloutPlan::canary())
    }

    pub fn start_with_plan(plan: RolloutPlan) -> InProc {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (app, addr, push_token, operator_token, provisioning_key) = rt.block_on(async {
            let app = Arc::new(App::open(dir.path()).await.unwrap());
            app.create_fleet("demo", "amd64", "generic-amd64", &plan)
                .await
                .unwrap();
            let push = app.create_token("dev").await.unwrap();
            let op = app
                .create_token_with_role("ops", Role::Operator)
                .await
                .unwrap();
            let prov = app.create_provisioning_key("demo").await.unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            tokio::spawn(shoal_builder::http::serve(app.clone(), listener));
            (app, addr, push, op, prov)
        });
        InProc {
            app,
            addr,
            push_token,
            operator_token,
            provisioning_key,
            rt,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn request(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Resp {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut headers = vec!["Content-Type: application/json"];
        if let Some(a) = &auth {
            headers.push(a);
        }
        let (status, _, body) = http_request(&self.addr, method, path, &headers, body);
        Resp { status, body }
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, None, b"")
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    pub fn send_json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        v: serde_json::Value,
    ) -> Resp {
        self.request(method, path, token, v.to_string().as_bytes())
    }

    /// Records a release as the pipeline does: running, then (when `ok`) published with a
    /// signed manifest in the store; `log` is its build log.
    pub fn publish(&self, commit: &str, ok: bool, log: &str) -> Published {
        self.rt.block_on(async {
            let fleet = self.app.db.fleet("demo").await.unwrap().unwrap();
            let t = now() as i64;
            let id = self
                .app
                .db
                .start_release(&fleet, commit, "refs/heads/master", t)
                .await
                .unwrap();
            if !ok {
                let o = Outcome {
                    error: Some("service web: build failed".into()),
                    services: serde_json::json!([]),
                    ..Outcome::default()
                };
                self.app
                    .db
                    .finish_release(id, Status::Failed, t, 1500, log, &o)
                    .await
                    .unwrap();
                return Published {
                    id,
                    sequence: 0,
                    digest: Digest::of(b"none"),
                };
            }
            let seq = self.app.db.next_sequence(fleet.id).await.unwrap();
            let manifest = ReleaseManifest {
                fleet: "demo".into(),
                sequence: ReleaseSeq(seq as u64),
                commit: commit.into(),
                created: UnixTime(t as u64),
                expires: UnixTime(t as u64 + 86_400),
                arch: "amd64".into(),
                device_type: "generic-amd64".into(),
                services: Default::default(),
                rollout: fleet.plan(),
            };
            let env = Envelope::seal(&manifest, &[&self.app.keys.release]);
            let bytes = encoding::encode(&env);
            let digest = self.app.store.put_blob(Kind::Manifest, &bytes).unwrap();
            let o = Outcome {
                sequence: Some(seq),
                services: serde_json::json!([{"name": "web", "image_bytes": 1000}]),
                compose: Some("services:\n  web:\n    build: .\n".into()),
                manifest_digest: Some(digest.to_string()),
                manifest_size: Some(bytes.len() as i64),
                ..Outcome::default()
            };
            self.app
                .db
                .finish_release(id, Status::Success, t, 2500, log, &o)
                .await
                .unwrap();
            Published {
                id,
                sequence: seq as u64,
                digest,
            }
        })
    }

    /// Registers `dev` on site `site`; panics unless it is accepted.
    pub fn register(&self, dev: &Dev, site: &str) -> serde_json::Value {
        let reg = shoal_builder::registry::sign_registration(
            &dev.key,
            &self.provisioning_key,
            &dev.name,
            site,
            "amd64",
            "generic-amd64",
        );
        let r = self.send_json(
            "POST",
            "/api/v1/devices/register",
            None,
            serde_json::to_value(&reg).unwrap(),
        );
        assert_eq!(r.status, 201, "register {}: {}", dev.name, r.text());
        r.json()
    }

    pub fn post_report(&self, dev: &Dev, body: &[u8]) -> Resp {
        self.request(
            "POST",
            &format!("/api/v1/devices/{}/status", dev.id()),
            None,
            body,
        )
    }
}
