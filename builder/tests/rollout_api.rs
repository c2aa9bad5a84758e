//! Rollout commands over HTTP (`POST /api/v1/fleets/{fleet}/rollout/{command}`) against the live
//! rollout loop, whose gossip is recorded instead of sent: each refused without a token (401) and
//! with a push token (403) with nothing changed, accepted with an operator token, audited, and
//! seen by the gossip as signed wave control.

mod support;

use std::sync::{Arc, Mutex};

use serde_json::json;
use shoal_builder::live::{Gossip, Rollouts, system_clock_ms};
use shoal_builder::origin::Seeded;
use shoal_node::daemon::BoxFuture;
use shoal_protocol::{DeviceId, ReleaseManifest};
use support::inproc::{Dev, InProc};

/// Records what the loop gossips and seeds.
#[derive(Debug, Default)]
struct Recorder {
    published: Mutex<Vec<Vec<u8>>>,
    seeded: Mutex<Vec<u64>>,
    devices: Mutex<Vec<DeviceId>>,
}

impl Gossip for Recorder {
    fn publish(&self, _fleet: &str, bytes: Vec<u8>) -> BoxFuture<Result<(), String>> {
        self.published.lock().unwrap().push(bytes);
        Box::pin(async { Ok(()) })
    }
    fn seed(
        &self,
        _fleet: &str,
        _announcement: Vec<u8>,
        _manifest_bytes: Vec<u8>,
        manifest: Arc<ReleaseManifest>,
    ) -> BoxFuture<Result<(), String>> {
        self.seeded.lock().unwrap().push(manifest.sequence.0);
        Box::pin(async { Ok(()) })
    }
    fn connected(&self, _fleet: &str) -> BoxFuture<Vec<DeviceId>> {
        let d = self.devices.lock().unwrap().clone();
        Box::pin(async move { d })
    }
}

fn state(b: &InProc) -> serde_json::Value {
    let p = b.get_json("/api/v1/fleets/demo/rollout");
    json!({ "state": p["state"], "open_wave": p["open_wave"], "controls": p["wave_controls"] })
}

#[test]
fn rollout_commands_need_an_operator_token_and_steer_the_live_rollout() {
    let b = InProc::start();
    let devs: Vec<Dev> = (0..6).map(|i| Dev::new(20 + i, &format!("d{i}"))).collect();
    for d in &devs {
        b.register(d, "");
    }
    let _r1 = b.publish("1111111111111111111111111111111111111111", true, "");
    let r2 = b.publish("2222222222222222222222222222222222222222", true, "");
    let recorder = Arc::new(Recorder::default());
    *recorder.devices.lock().unwrap() = devs.iter().map(|d| d.id()).collect();
    let (seed_tx, seed_rx) = tokio::sync::broadcast::channel(8);
    let (_report_tx, report_rx) = tokio::sync::broadcast::channel(8);
    b.rt.block_on(async {
        let rollouts = Rollouts::start(
            b.app.clone(),
            recorder.clone(),
            seed_rx,
            report_rx,
            system_clock_ms(),
        )
        .await
        .unwrap();
        let _ = b.app.rollouts.set(rollouts);
        let bytes = b
            .app
            .store
            .get(shoal_builder::store::Kind::Manifest, &r2.digest)
            .unwrap()
            .unwrap();
        let env: shoal_protocol::Envelope = shoal_protocol::encoding::decode(&bytes).unwrap();
        let manifest: ReleaseManifest = shoal_protocol::encoding::decode(&env.payload).unwrap();
        seed_tx
            .send(Seeded {
                fleet: "demo".into(),
                manifest: Arc::new(manifest),
                manifest_digest: r2.digest,
            })
            .unwrap();
    });
    support::wait_for(|| {
        let r = b.get("/api/v1/fleets/demo/rollout");
        (r.status == 200 && r.json()["sequence"] == r2.sequence).then_some(())
    });
    assert_eq!(state(&b)["state"], "running");

    for command in ["pause", "resume", "promote", "abort"] {
        let path = format!("/api/v1/fleets/demo/rollout/{command}");
        let before = (state(&b), b.get_json("/api/v1/fleets/demo/audit"));
        let r = b.request("POST", &path, None, b"{}");
        assert_eq!(r.status, 401, "{command}: {}", r.text());
        let r = b.request("POST", &path, Some(&b.push_token), b"{}");
        assert_eq!(r.status, 403, "{command}: {}", r.text());
        assert_eq!(
            before,
            (state(&b), b.get_json("/api/v1/fleets/demo/audit")),
            "{command}"
        );
    }

    let op = Some(b.operator_token.as_str());
    let published = || recorder.published.lock().unwrap().len();
    let sent = published();
    let r = b.request("POST", "/api/v1/fleets/demo/rollout/pause", op, b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "paused");
    assert_eq!(published(), sent + 1, "a signed pause was gossiped");
    // Pausing twice is refused and changes nothing.
    let r = b.request("POST", "/api/v1/fleets/demo/rollout/pause", op, b"{}");
    assert_eq!(r.status, 409, "{}", r.text());
    let r = b.request("POST", "/api/v1/fleets/demo/rollout/resume", op, b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "running");
    let wave = r.json()["open_wave"].as_u64().unwrap();
    let r = b.request("POST", "/api/v1/fleets/demo/rollout/promote", op, b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["open_wave"].as_u64().unwrap(), wave + 1);
    let r = b.request("POST", "/api/v1/fleets/demo/rollout/abort", op, b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "halted");
    let r = b.request("POST", "/api/v1/fleets/demo/rollout/nonsense", op, b"{}");
    assert_eq!(r.status, 404, "{}", r.text());

    let audit = b.get_json("/api/v1/fleets/demo/audit");
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec![
            "rollout.abort",
            "rollout.promote",
            "rollout.resume",
            "rollout.pause"
        ]
    );
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == "ops"
                && e["target"].as_str() == Some(r2.sequence.to_string().as_str()))
    );
}
