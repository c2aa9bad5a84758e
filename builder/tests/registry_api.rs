//! The device registry over HTTP: registration with a provisioning key, signed status reports
//! and every way a report is refused (nothing changes on refusal).

mod support;

use shoal_protocol::{DeviceState, SigningKey};
use support::inproc::{Dev, InProc};
use support::now;

#[test]
fn a_registered_device_reports_and_the_builder_records_its_state_and_counts() {
    let b = InProc::start();
    let r1 = b.publish("1111111111111111111111111111111111111111", true, "built\n");
    let dev = Dev::new(1, "pi-kitchen");
    let reg = b.register(&dev, "home");
    assert_eq!(reg["fleet"], "demo");
    assert_eq!(reg["device"], dev.id().to_string());
    assert_eq!(reg["target_sequence"], r1.sequence);
    assert_eq!(reg["bootstrap_url"], "/api/v1/fleets/demo/bootstrap");
    // The trust root handed over is the fleet's signed one.
    let served = b.get("/api/v1/fleets/demo/trust-root").body;
    assert_eq!(reg["trust_root"], hex(&served));

    let d = b.get_json(&format!("/api/v1/devices/{}", dev.id()));
    assert_eq!(d["name"], "pi-kitchen");
    assert_eq!(d["site"], "home");
    assert_eq!(d["arch"], "amd64");
    assert!(d["last_seen"].is_null());
    assert!(d["current_sequence"].is_null());

    for (i, state) in [
        DeviceState::Staged,
        DeviceState::Applying,
        DeviceState::Healthy,
    ]
    .into_iter()
    .enumerate()
    {
        let r = b.post_report(&dev, &dev.report(&r1, state, 100 + i as u64));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["updated"], true);
    }
    let d = b.get_json(&format!("/api/v1/devices/{}", dev.id()));
    assert_eq!(d["state"], "healthy");
    assert_eq!(d["current_sequence"], r1.sequence);
    assert_eq!(d["detail"], "pi-kitchen is healthy");
    assert!(d["last_seen"].as_i64().unwrap() >= now() as i64 - 5);

    // An older report (earlier device time) does not move the state back.
    let r = b.post_report(
        &dev,
        &dev.report_at(&r1, DeviceState::Applying, 999, now() - 60),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["updated"], false);
    let d = b.get_json(&format!("/api/v1/devices/{}", dev.id()));
    assert_eq!(d["state"], "healthy");

    // Device counts per release in the releases list.
    let list = b.get_json("/api/v1/fleets/demo/releases");
    assert_eq!(list["releases"][0]["device_count"], 1);
    let progress = b.get_json(&format!("/api/v1/releases/{}/devices", r1.id));
    let wave = progress["devices"][0]["wave"].as_u64().unwrap() as usize;
    assert_eq!(progress["devices"][0]["state"], "healthy");
    assert_eq!(progress["waves"][wave]["healthy"], 1);
    assert_eq!(progress["waves"].as_array().unwrap().len(), 4);

    // A failed second release rolled back: the device is on release 1 again.
    let r2 = b.publish("2222222222222222222222222222222222222222", true, "built\n");
    b.post_report(&dev, &dev.report(&r2, DeviceState::Healthy, 7));
    assert_eq!(
        b.get_json(&format!("/api/v1/devices/{}", dev.id()))["current_sequence"],
        r2.sequence
    );
    let r = b.post_report(&dev, &dev.report(&r2, DeviceState::RolledBack, 8));
    assert_eq!(r.status, 200, "{}", r.text());
    let d = b.get_json(&format!("/api/v1/devices/{}", dev.id()));
    assert_eq!(d["state"], "rolled_back");
    assert_eq!(d["report_sequence"], r2.sequence);
    assert_eq!(d["current_sequence"], r1.sequence);
    let list = b.get_json("/api/v1/fleets/demo/devices");
    assert_eq!(list["devices"].as_array().unwrap().len(), 1);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn registrations_are_refused_without_the_key_a_signature_or_with_a_taken_name() {
    let b = InProc::start();
    let dev = Dev::new(1, "a");
    let good = |d: &Dev, key: &str, name: &str, arch: &str| {
        serde_json::to_value(shoal_builder::registry::sign_registration(
            &d.key,
            key,
            name,
            "",
            arch,
            "generic-amd64",
        ))
        .unwrap()
    };
    let post = |v: serde_json::Value| b.send_json("POST", "/api/v1/devices/register", None, v);

    let r = post(good(&dev, "shoalprov_wrong", "a", "amd64"));
    assert_eq!(r.status, 401, "{}", r.text());
    // Signed by another key than the one it names.
    let mut forged = good(&Dev::new(2, "x"), &b.provisioning_key, "a", "amd64");
    forged["device"] = serde_json::json!(dev.id().to_string());
    assert_eq!(post(forged).status, 403);
    // Signed, then a field changed.
    let mut changed = good(&dev, &b.provisioning_key, "a", "amd64");
    changed["name"] = serde_json::json!("b");
    assert_eq!(post(changed).status, 403);
    assert_eq!(
        post(good(&dev, &b.provisioning_key, "a", "aarch64")).status,
        422
    );
    assert_eq!(
        post(good(&dev, &b.provisioning_key, "<script>", "amd64")).status,
        422
    );
    assert_eq!(post(serde_json::json!({"name": 1})).status, 400);
    let devices = b.get_json("/api/v1/fleets/demo/devices");
    assert_eq!(devices["devices"].as_array().unwrap().len(), 0);

    b.register(&dev, "");
    let r = post(good(
        &Dev::new(3, "other"),
        &b.provisioning_key,
        "a",
        "amd64",
    ));
    assert_eq!(r.status, 409, "{}", r.text());
    // Re-registering the same key updates its labels.
    b.register(&Dev::new(1, "a2"), "lab");
    let devices = b.get_json("/api/v1/fleets/demo/devices");
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1);
    assert_eq!(devices["devices"][0]["name"], "a2");
    assert_eq!(devices["devices"][0]["site"], "lab");
}

#[test]
fn reports_that_are_forged_replayed_stale_or_for_another_release_change_nothing() {
    let b = InProc::start();
    let r1 = b.publish("1111111111111111111111111111111111111111", true, "");
    let dev = Dev::new(1, "a");
    let other = Dev::new(2, "b");
    b.register(&dev, "");
    let ok = b.post_report(&dev, &dev.report(&r1, DeviceState::Staged, 1));
    assert_eq!(ok.status, 200, "{}", ok.text());
    let before = b.get_json(&format!("/api/v1/devices/{}", dev.id()));

    // Unregistered device.
    let r = b.post_report(&other, &other.report(&r1, DeviceState::Healthy, 2));
    assert_eq!(r.status, 403, "{}", r.text());
    // A registered device's URL, another device's signature.
    let r = b.request(
        "POST",
        &format!("/api/v1/devices/{}/status", dev.id()),
        None,
        &other.report(&r1, DeviceState::Healthy, 3),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // Claims to be `dev` but signed by another key.
    let mut forged: shoal_protocol::Envelope =
        shoal_protocol::encoding::decode(&dev.report(&r1, DeviceState::Healthy, 4)).unwrap();
    let imposter = SigningKey::from_bytes(&[9; 32]);
    forged.signatures.clear();
    forged.add_signature("status-report", &imposter);
    let r = b.post_report(&dev, &shoal_protocol::encoding::encode(&forged));
    assert_eq!(r.status, 400, "{}", r.text());
    // Wrong manifest digest for the sequence.
    let mut wrong = r1;
    wrong.digest = shoal_protocol::Digest::of(b"another manifest");
    let r = b.post_report(&dev, &dev.report(&wrong, DeviceState::Healthy, 5));
    assert_eq!(r.status, 422, "{}", r.text());
    // A release that does not exist.
    let mut missing = r1;
    missing.sequence = 42;
    let r = b.post_report(&dev, &dev.report(&missing, DeviceState::Healthy, 6));
    assert_eq!(r.status, 422, "{}", r.text());
    // Stale, and from the future.
    let r = b.post_report(
        &dev,
        &dev.report_at(&r1, DeviceState::Healthy, 7, now() - 3600),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let r = b.post_report(
        &dev,
        &dev.report_at(&r1, DeviceState::Healthy, 8, now() + 3600),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    // Garbage.
    assert_eq!(b.post_report(&dev, b"not an envelope").status, 400);
    // A replay of the accepted report (same nonce).
    let r = b.post_report(&dev, &dev.report(&r1, DeviceState::Staged, 1));
    assert_eq!(r.status, 409, "{}", r.text());
    // A replay with a new state is a new signature; the same nonce still gives it away.
    let r = b.post_report(&dev, &dev.report(&r1, DeviceState::Healthy, 1));
    assert_eq!(r.status, 409, "{}", r.text());

    let after = b.get_json(&format!("/api/v1/devices/{}", dev.id()));
    assert_eq!(before, after);
    assert_eq!(
        b.get(&format!("/api/v1/devices/{}", other.id())).status,
        404,
        "an unregistered device must not be created"
    );
}

#[test]
fn a_device_that_reports_too_often_is_slowed_down() {
    let b = InProc::start();
    let r1 = b.publish("1111111111111111111111111111111111111111", true, "");
    let dev = Dev::new(1, "a");
    b.register(&dev, "");
    let mut statuses = Vec::new();
    for n in 0..(shoal_builder::registry::RATE_BURST as u64 + 5) {
        statuses.push(
            b.post_report(&dev, &dev.report(&r1, DeviceState::Staged, 1000 + n))
                .status,
        );
    }
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        accepted >= shoal_builder::registry::RATE_BURST as usize,
        "{statuses:?}"
    );
    assert!(limited >= 1, "{statuses:?}");
    // Another device is not affected.
    let dev2 = Dev::new(2, "b");
    b.register(&dev2, "");
    let r = b.post_report(&dev2, &dev2.report(&r1, DeviceState::Staged, 1));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn reports_the_origin_verified_update_the_registry_too() {
    let b = InProc::start();
    let r1 = b.publish("1111111111111111111111111111111111111111", true, "");
    let dev = Dev::new(1, "a");
    b.register(&dev, "");
    let (tx, rx) = tokio::sync::broadcast::channel(8);
    let registry = std::sync::Arc::new(shoal_builder::registry::Registry::new());
    b.rt.spawn(registry.follow(b.app.clone(), rx));
    let signed = dev.report(&r1, DeviceState::Healthy, 77);
    let env: shoal_protocol::Envelope = shoal_protocol::encoding::decode(&signed).unwrap();
    let report: shoal_protocol::StatusReport =
        shoal_protocol::encoding::decode(&env.payload).unwrap();
    // An unregistered device's report is dropped; the registered one's recorded.
    let stranger = Dev::new(5, "s");
    let env: shoal_protocol::Envelope =
        shoal_protocol::encoding::decode(&stranger.report(&r1, DeviceState::Healthy, 1)).unwrap();
    tx.send(shoal_protocol::encoding::decode(&env.payload).unwrap())
        .unwrap();
    tx.send(report).unwrap();
    support::wait_for(|| {
        let d = b.get_json(&format!("/api/v1/devices/{}", dev.id()));
        (d["state"] == "healthy").then_some(())
    });
    assert_eq!(
        b.get_json(&format!("/api/v1/devices/{}", dev.id()))["current_sequence"],
        r1.sequence
    );
    assert_eq!(
        b.get(&format!("/api/v1/devices/{}", stranger.id())).status,
        404
    );
    // The same report posted over HTTP afterwards is a replay.
    assert_eq!(b.post_report(&dev, &signed).status, 409);
}

#[test]
fn a_daemon_started_with_enrollment_registers_itself_and_a_wrong_key_is_refused() {
    use shoal_node::daemon::Launcher;
    use shoal_node::daemon::enroll::{EnrollError, EnrollState, Enrollment};
    use shoal_node::daemon::identity::DeviceKey;
    use std::time::Duration;

    let b = InProc::start();
    let dir = tempfile::tempdir().unwrap();
    let env: shoal_protocol::Envelope =
        shoal_protocol::encoding::decode(&std::fs::read(b.app.trust_root_path("demo")).unwrap())
            .unwrap();
    let trust = shoal_protocol::TrustRoot::open_initial(&env).unwrap();
    let wait = Duration::from_secs(60);
    let good_id = b.rt.block_on(async {
        let key = DeviceKey::generate();
        let id = key.device_id();
        let node = Launcher::new(key, trust.clone(), dir.path().join("good"))
            .arch("amd64")
            .site(Some("kitchen".into()))
            .enroll(Enrollment::new(b.url(), &b.provisioning_key).name("pi-kitchen"))
            .start()
            .await
            .unwrap();
        assert_eq!(
            node.wait_enrollment(wait).await,
            Some(EnrollState::Enrolled {
                fleet: "demo".into(),
                target_sequence: None
            })
        );
        let (s, ok) = node.wait_for(wait, |s| s.enrolled == Some(true)).await;
        assert!(ok, "status: {s:?}");
        assert_eq!(s.enroll_error, None);

        // A key that is no fleet's: refused for good, with the builder's reason.
        let bad = Launcher::new(DeviceKey::generate(), trust.clone(), dir.path().join("bad"))
            .arch("amd64")
            .enroll(Enrollment::new(b.url(), "shoalprov_wrong").name("intruder"))
            .start()
            .await
            .unwrap();
        let state = bad.wait_enrollment(wait).await.unwrap();
        let EnrollState::Refused(EnrollError::Refused { status, message }) = &state else {
            panic!("{state:?}");
        };
        assert_eq!(*status, 401);
        assert_eq!(message, "unknown provisioning key");
        let (s, ok) = bad
            .wait_for(wait, |s| {
                s.enroll_error.is_some() && s.enrolled == Some(false)
            })
            .await;
        assert!(ok, "status: {s:?}");
        assert!(
            s.enroll_error.unwrap().contains("unknown provisioning key"),
            "the status says why"
        );

        // A builder URL the node cannot use (not http:// or https://) is a typed error at start.
        let err = Launcher::new(DeviceKey::generate(), trust.clone(), dir.path().join("tls"))
            .enroll(Enrollment::new("ftp://builder.example", "k"))
            .start()
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                shoal_node::daemon::StartError::Enroll(EnrollError::BadUrl { .. })
            ),
            "{err}"
        );
        node.shutdown().await;
        bad.shutdown().await;
        id
    });
    let devices = b.get_json("/api/v1/fleets/demo/devices");
    let devices = devices["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "only the good device: {devices:?}");
    assert_eq!(devices[0]["id"], good_id.to_string());
    assert_eq!(devices[0]["name"], "pi-kitchen");
    assert_eq!(devices[0]["site"], "kitchen");
    assert_eq!(devices[0]["arch"], "amd64");
    assert_eq!(devices[0]["device_type"], "generic-amd64");
}

#[test]
fn the_local_fleets_devices_register_themselves() {
    use shoal_builder::local_fleet::{self, FLEET, LocalFleet, Options, RuntimeFactory};
    use shoal_node::daemon::identity::DeviceKey;
    use shoal_node::daemon::{Runtime, StageOnly};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let runtime: RuntimeFactory = std::sync::Arc::new(|_, _, _| {
            Box::pin(async { Ok(std::sync::Arc::new(StageOnly) as std::sync::Arc<dyn Runtime>) })
        });
        let keys: Vec<DeviceKey> = (0..2).map(|_| DeviceKey::generate()).collect();
        let ids: Vec<String> = keys.iter().map(|k| k.device_id().to_string()).collect();
        let fleet = LocalFleet::start(Options {
            builder_exe: support::BIN.into(),
            keys,
            runtime,
            plan: local_fleet::quick_plan(1),
        })
        .await
        .unwrap();
        let list = fleet
            .get_json(&format!("/api/v1/fleets/{FLEET}/devices"))
            .await
            .unwrap();
        let mut got: Vec<(String, String)> = list["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["name"].as_str().unwrap().to_string(),
                    d["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("device-1".to_string(), ids[0].clone()),
                ("device-2".to_string(), ids[1].clone())
            ]
        );
        for d in &fleet.devices {
            let (s, ok) = d
                .handle
                .wait_for(std::time::Duration::from_secs(10), |s| {
                    s.enrolled == Some(true)
                })
                .await;
            assert!(ok, "{}: {s:?}", d.name);
        }
        fleet.shutdown().await;
    });
}

/// Records release `seq` of fleet `demo` in the builder's data directory as the pipeline does
/// (chunks in the store, the manifest and announcement signed with the builder's release key);
/// `serve` seeds it through the origin when it starts. Returns its sequence.
fn record_release(data: &std::path::Path, seq: u64) -> u64 {
    use shoal_builder::app::App;
    use shoal_protocol::RolloutPlan;

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let app = App::open(data).await.unwrap();
        let fleet = app.db.fleet("demo").await.unwrap().unwrap();
        support::store_release_with(&app, &fleet, seq, RolloutPlan::all_at_once()).await;
    });
    seq
}

#[test]
fn a_device_configured_with_enroll_alone_finds_the_origin_and_stages_the_release() {
    use shoal_node::daemon::config::FileConfig;
    use shoal_node::daemon::enroll::EnrollState;
    use std::time::Duration;

    // A real `shoal-builder serve` with a published release (recorded while it is down; `serve`
    // seeds it through the fleet's origin node when it starts).
    let mut b = support::Builder::start("enroll_join");
    b.kill();
    let seq = record_release(b.data.path(), 1);
    b.restart();
    let out = std::process::Command::new(support::BIN)
        .args(["fleet", "provisioning-key", "demo", "--data"])
        .arg(b.data.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let provisioning_key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let origin = b.get_json("/api/v1/fleets/demo/bootstrap")["origin_device"]
        .as_str()
        .unwrap()
        .to_string();

    // The device's configuration as its provisioner writes it: the trust root and `[enroll]`,
    // no `bootstrap`, and no LAN discovery to find the origin by.
    let dir = tempfile::tempdir().unwrap();
    let trust_root = b.data.path().join("fleets/demo/trust-root.bin");
    let text = format!(
        r#"
data_dir = "{data}"
fleet = "demo"
arch = "amd64"
trust_root = "{trust}"
listen = ["/ip4/127.0.0.1/udp/0/quic-v1"]
data_listen = "127.0.0.1:0"
mdns = false

[enroll]
builder_url = "{url}"
provisioning_key = "{provisioning_key}"
name = "pi-kitchen"

[runtime]
kind = "stage-only"
"#,
        data = dir.path().join("node").display(),
        trust = trust_root.display(),
        url = b.url,
    );
    let path = dir.path().join("node.toml");
    let cfg = FileConfig::parse(&path, &text).unwrap();
    assert!(cfg.bootstrap.is_empty());
    // `shoal-node init --config node.toml`: the device key.
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    shoal_node::daemon::identity::DeviceKey::create(&cfg.key_path()).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let wait = Duration::from_secs(120);
    rt.block_on(async {
        let node = shoal_node::daemon::launch::launch(&cfg).await.unwrap();
        let state = node.wait_enrollment(wait).await;
        assert!(
            matches!(state, Some(EnrollState::Enrolled { ref fleet, .. }) if fleet == "demo"),
            "{state:?}"
        );
        let (s, ok) = node
            .wait_for(wait, |s| s.peers.iter().any(|p| p.device == origin))
            .await;
        assert!(ok, "the origin never became a peer: {s:#?}");
        let (s, ok) = node.wait_for(wait, |s| s.has_staged(seq)).await;
        assert!(ok, "release {seq} was not staged: {s:#?}");
        assert_eq!(s.highest, Some(seq));
        node.shutdown().await;
    });
    let devices = b.get_json("/api/v1/fleets/demo/devices");
    assert_eq!(devices["devices"][0]["name"], "pi-kitchen");
}
