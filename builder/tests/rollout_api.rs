//! Rollout commands over HTTP (`POST /api/v1/fleets/{fleet}/rollout/{command}`) against the live
//! rollout loop, whose gossip is recorded instead of sent: each refused without a token (401) and
//! with a push token (403) with nothing changed, accepted with an operator token, audited, and
//! seen by the gossip as signed wave control.

mod support;

use std::sync::{Arc, Mutex};

use serde_json::json;
use shoal_builder::gossip::{Gossip, Seeded};
use shoal_builder::live::{Rollouts, system_clock_ms};
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
        let _ = b.app.rollouts.set(Arc::new(rollouts));
        let bytes = b
            .app
            .store
            .get(shoal_builder::storage::blobs::Kind::Manifest, &r2.digest)
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

/// Pins over the API act on the rollout: a pinned device is held out of a new release by a
/// signed hold list while the others' wave opens, unpinning releases it; a fleet pin holds a new
/// release's waves shut until it is removed. Each pin is audited and shown in the registry.
#[test]
fn pins_hold_devices_and_fleets_out_of_new_releases() {
    let b = InProc::start_with_plan(shoal_protocol::RolloutPlan::all_at_once());
    let devs: Vec<Dev> = (0..4).map(|i| Dev::new(40 + i, &format!("p{i}"))).collect();
    for d in &devs {
        b.register(d, "");
    }
    let r1 = b.publish("1111111111111111111111111111111111111111", true, "");
    let recorder = Arc::new(Recorder::default());
    *recorder.devices.lock().unwrap() = devs.iter().map(|d| d.id()).collect();
    let (seed_tx, seed_rx) = tokio::sync::broadcast::channel(8);
    let (_report_tx, report_rx) = tokio::sync::broadcast::channel(8);
    let env: shoal_protocol::Envelope =
        shoal_protocol::encoding::decode(&std::fs::read(b.app.trust_root_path("demo")).unwrap())
            .unwrap();
    let trust = shoal_protocol::TrustRoot::open_initial(&env).unwrap();
    let seed = |r: &support::inproc::Published| {
        let bytes = b
            .app
            .store
            .get(shoal_builder::storage::blobs::Kind::Manifest, &r.digest)
            .unwrap()
            .unwrap();
        let env: shoal_protocol::Envelope = shoal_protocol::encoding::decode(&bytes).unwrap();
        let manifest: ReleaseManifest = shoal_protocol::encoding::decode(&env.payload).unwrap();
        seed_tx
            .send(Seeded {
                fleet: "demo".into(),
                manifest: Arc::new(manifest),
                manifest_digest: r.digest,
            })
            .unwrap();
        support::wait_for(|| {
            let p = b.get("/api/v1/fleets/demo/rollout");
            (p.status == 200 && p.json()["sequence"] == r.sequence).then_some(())
        });
    };
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
        let _ = b.app.rollouts.set(Arc::new(rollouts));
    });
    seed(&r1);
    // The wave control messages of release `seq`, checked against the fleet's trust root.
    let controls = |seq: u64| -> Vec<shoal_protocol::WaveAction> {
        recorder
            .published
            .lock()
            .unwrap()
            .iter()
            .map(|m| {
                let now = shoal_protocol::UnixTime(shoal_builder::app::now_s() as u64);
                shoal_protocol::verify::wave_control(&trust, &m[1..], now).unwrap()
            })
            .filter(|w| w.sequence.0 == seq)
            .map(|w| w.action)
            .collect()
    };
    let op = Some(b.operator_token.as_str());
    let pinned = &devs[0];
    let path = format!("/api/v1/devices/{}/pin", pinned.id());
    let pin = json!({ "sequence": r1.sequence }).to_string();
    // Refused without a token and with a push token, nothing changed.
    assert_eq!(b.request("PUT", &path, None, pin.as_bytes()).status, 401);
    let r = b.request("PUT", &path, Some(&b.push_token), pin.as_bytes());
    assert_eq!(r.status, 403);
    assert_eq!(
        b.get_json(&format!("/api/v1/devices/{}", pinned.id()))["pinned_sequence"],
        serde_json::Value::Null
    );
    let r = b.request("PUT", &path, op, pin.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());

    // A new release: the pinned device is held (the signed hold goes out before wave 0 opens),
    // the others may activate it.
    let r2 = b.publish("2222222222222222222222222222222222222222", true, "");
    seed(&r2);
    let p = support::wait_for(|| {
        let p = b.get_json("/api/v1/fleets/demo/rollout");
        (p["held_devices"].as_array().is_some_and(|h| h.len() == 1)).then_some(p)
    });
    assert_eq!(p["held_devices"][0], pinned.id().to_string());
    assert_eq!(p["waves"][0]["devices"], 3, "{p}");
    assert_eq!(
        controls(r2.sequence),
        vec![
            shoal_protocol::WaveAction::Hold {
                devices: vec![pinned.id()]
            },
            shoal_protocol::WaveAction::Open { wave: 0 }
        ]
    );
    let d = b.get_json(&format!("/api/v1/devices/{}", pinned.id()));
    assert_eq!(d["pinned_sequence"], r1.sequence, "{d}");
    assert_eq!(d["target_sequence"], r1.sequence, "{d}");

    // Unpinned: a new hold list without it lets it activate the release.
    let r = b.request("PUT", &path, op, br#"{"sequence": null}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    support::wait_for(|| {
        let c = controls(r2.sequence);
        (c.len() == 3).then_some(())
    });
    assert_eq!(
        controls(r2.sequence)[2],
        shoal_protocol::WaveAction::Hold { devices: vec![] }
    );
    let p = b.get_json("/api/v1/fleets/demo/rollout");
    assert_eq!(p["waves"][0]["devices"], 4, "{p}");

    // A fleet pin to release 2: release 3 is seeded but its wave stays shut until unpinned.
    let fleet_pin = json!({ "sequence": r2.sequence }).to_string();
    let r = b.request("PUT", "/api/v1/fleets/demo/pin", op, fleet_pin.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let r3 = b.publish("3333333333333333333333333333333333333333", true, "");
    seed(&r3);
    let p = b.get_json("/api/v1/fleets/demo/rollout");
    assert_eq!(p["state"], "held", "{p}");
    assert_eq!(p["waves"][0]["open"], false, "{p}");
    assert_eq!(controls(r3.sequence), vec![]);
    let r = b.request(
        "PUT",
        "/api/v1/fleets/demo/pin",
        op,
        br#"{"sequence": null}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let p = support::wait_for(|| {
        let p = b.get_json("/api/v1/fleets/demo/rollout");
        (p["state"] != "held").then_some(p)
    });
    assert_eq!(p["waves"][0]["open"], true, "{p}");
    assert_eq!(
        controls(r3.sequence),
        vec![shoal_protocol::WaveAction::Open { wave: 0 }]
    );

    let audit = b.get_json("/api/v1/fleets/demo/audit");
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec!["fleet.pin", "fleet.pin", "device.pin", "device.pin"]
    );
}
