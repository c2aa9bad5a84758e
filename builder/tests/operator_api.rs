//! Operator actions over HTTP: each refused without a token (401) and with a push token (403),
//! with nothing changed, and accepted with an operator token, recorded in the audit log.

mod support;

use serde_json::json;
use support::inproc::{Dev, InProc};

/// Every refusal leaves the fleet, its devices, views and audit log exactly as they were.
fn snapshot(b: &InProc, dev: &Dev) -> serde_json::Value {
    json!({
        "fleet": b.get_json("/api/v1/fleets/demo"),
        "device": b.get_json(&format!("/api/v1/devices/{}", dev.id())),
        "views": b.get_json("/api/v1/fleets/demo/views"),
        "audit": b.get_json("/api/v1/fleets/demo/audit"),
    })
}

/// `method path body` is refused without a token and with a push token, changing nothing.
fn refused_without_operator(
    b: &InProc,
    dev: &Dev,
    method: &str,
    path: &str,
    body: serde_json::Value,
) {
    let before = snapshot(b, dev);
    let r = b.send_json(method, path, None, body.clone());
    assert_eq!(
        r.status,
        401,
        "{method} {path} without a token: {}",
        r.text()
    );
    let r = b.send_json(method, path, Some("shoal_not_a_token"), body.clone());
    assert_eq!(
        r.status,
        401,
        "{method} {path} with a bad token: {}",
        r.text()
    );
    let r = b.send_json(method, path, Some(&b.push_token), body);
    assert_eq!(
        r.status,
        403,
        "{method} {path} with a push token: {}",
        r.text()
    );
    assert_eq!(
        before,
        snapshot(b, dev),
        "{method} {path} changed something"
    );
}

#[test]
fn pins_need_an_operator_token_and_set_the_target_release() {
    let b = InProc::start();
    let r1 = b.publish("1111111111111111111111111111111111111111", true, "");
    let r2 = b.publish("2222222222222222222222222222222222222222", true, "");
    let dev = Dev::new(1, "a");
    let dev2 = Dev::new(2, "b");
    b.register(&dev, "");
    b.register(&dev2, "");
    let device_path = format!("/api/v1/devices/{}/pin", dev.id());
    refused_without_operator(
        &b,
        &dev,
        "PUT",
        "/api/v1/fleets/demo/pin",
        json!({"sequence": r1.sequence}),
    );
    refused_without_operator(
        &b,
        &dev,
        "PUT",
        &device_path,
        json!({"sequence": r1.sequence}),
    );
    let target =
        |d: &Dev| b.get_json(&format!("/api/v1/devices/{}", d.id()))["target_sequence"].clone();
    assert_eq!(target(&dev), r2.sequence);

    // Pin the fleet to release 1: every device's target follows.
    let op = Some(b.operator_token.as_str());
    let r = b.send_json(
        "PUT",
        "/api/v1/fleets/demo/pin",
        op,
        json!({"sequence": r1.sequence}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(target(&dev), r1.sequence);
    assert_eq!(target(&dev2), r1.sequence);
    // The answer to a report tells the device its target.
    let r = b.post_report(
        &dev,
        &dev.report(&r2, shoal_protocol::DeviceState::Staged, 1),
    );
    assert_eq!(r.json()["target_sequence"], r1.sequence);

    // A device pin overrides the fleet's, for that device only.
    let r = b.send_json("PUT", &device_path, op, json!({"sequence": r2.sequence}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(target(&dev), r2.sequence);
    assert_eq!(target(&dev2), r1.sequence);

    // Unknown releases cannot be pinned; nothing changes.
    let r = b.send_json(
        "PUT",
        "/api/v1/fleets/demo/pin",
        op,
        json!({"sequence": 99}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let failed = b.publish("3333333333333333333333333333333333333333", false, "");
    let r = b.send_json(
        "PUT",
        "/api/v1/fleets/demo/pin",
        op,
        json!({"sequence": failed.sequence}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(target(&dev2), r1.sequence);

    // Unpin: back to the latest release.
    let r = b.send_json(
        "PUT",
        "/api/v1/fleets/demo/pin",
        op,
        json!({"sequence": null}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(target(&dev2), r2.sequence);

    let audit = b.get_json("/api/v1/fleets/demo/audit");
    let actions: Vec<(String, String, serde_json::Value)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let detail: serde_json::Value =
                serde_json::from_str(e["detail"].as_str().unwrap()).unwrap();
            (
                e["action"].as_str().unwrap().to_string(),
                e["actor"].as_str().unwrap().to_string(),
                detail["sequence"].clone(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("fleet.pin".into(), "ops".into(), json!(null)),
            ("device.pin".into(), "ops".into(), json!(r2.sequence)),
            ("fleet.pin".into(), "ops".into(), json!(r1.sequence)),
        ]
    );
}

#[test]
fn the_rollout_policy_override_needs_an_operator_token_and_applies_to_the_fleet() {
    let b = InProc::start();
    let dev = Dev::new(1, "a");
    b.register(&dev, "");
    let plan = json!({
        "waves": [
            {"percent": 20, "min_sample": 1, "success_threshold_pct": 90, "error_threshold_pct": 10, "bake_time_s": 0},
            {"percent": 80, "min_sample": 2, "success_threshold_pct": 90, "error_threshold_pct": 10, "bake_time_s": 60}
        ],
        "progress_deadline_s": 600
    });
    let path = "/api/v1/fleets/demo/rollout-policy";
    refused_without_operator(&b, &dev, "PUT", path, json!({"plan": plan}));
    let op = Some(b.operator_token.as_str());
    // Percents that do not add up are refused.
    let mut bad = plan.clone();
    bad["waves"][0]["percent"] = json!(30);
    let r = b.send_json("PUT", path, op, json!({"plan": bad}));
    assert_eq!(r.status, 422, "{}", r.text());
    let r = b.send_json("PUT", path, op, json!({"preset": "everything"}));
    assert_eq!(r.status, 422, "{}", r.text());

    let r = b.send_json("PUT", path, op, json!({"plan": plan}));
    assert_eq!(r.status, 200, "{}", r.text());
    let fleet = b.get_json("/api/v1/fleets/demo");
    assert_eq!(fleet["rollout_plan"], plan);
    // The next release carries it.
    let r1 = b.publish("1111111111111111111111111111111111111111", true, "");
    let progress = b.get_json(&format!("/api/v1/releases/{}/devices", r1.id));
    assert_eq!(progress["waves"].as_array().unwrap().len(), 2);
    assert_eq!(progress["waves"][1]["percent"], 80);

    let r = b.send_json("PUT", path, op, json!({"preset": "all_at_once"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        b.get_json("/api/v1/fleets/demo")["rollout_plan"]["waves"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let audit = b.get_json("/api/v1/fleets/demo/audit");
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(
        entries
            .iter()
            .all(|e| e["action"] == "fleet.rollout_policy" && e["actor"] == "ops")
    );
}

#[test]
fn saved_views_need_a_token_persist_and_filter_the_releases() {
    let b = InProc::start();
    let dev = Dev::new(1, "a");
    b.register(&dev, "");
    b.publish("aaaa111111111111111111111111111111111111", true, "");
    b.publish("bbbb222222222222222222222222222222222222", false, "");
    let path = "/api/v1/fleets/demo/views";
    let view = json!({"name": "failures", "filters": {"status": "failed"}});
    let before = snapshot(&b, &dev);
    assert_eq!(b.send_json("POST", path, None, view.clone()).status, 401);
    assert_eq!(before, snapshot(&b, &dev));
    let r = b.send_json(
        "POST",
        path,
        Some(&b.push_token),
        json!({"name": "x", "filters": {"status": "nope"}}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let r = b.send_json(
        "POST",
        path,
        Some(&b.push_token),
        json!({"name": "x", "filters": {"from": "2026-13-01"}}),
    );
    assert_eq!(r.status, 422, "{}", r.text());

    let r = b.send_json("POST", path, Some(&b.push_token), view);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["query"], "status=failed");
    let views = b.get_json(path);
    assert_eq!(views["views"][0]["name"], "failures");
    let q = views["views"][0]["filters"]["status"].as_str().unwrap();
    let list = b.get_json(&format!("/api/v1/fleets/demo/releases?status={q}"));
    let commits: Vec<&str> = list["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["commit"].as_str().unwrap())
        .collect();
    assert_eq!(commits, vec!["bbbb222222222222222222222222222222222222"]);
    // Free text.
    let list = b.get_json("/api/v1/fleets/demo/releases?text=BUILD%20FAILED");
    assert_eq!(list["releases"].as_array().unwrap().len(), 1);

    assert_eq!(
        b.request("DELETE", &format!("{path}/failures"), None, b"")
            .status,
        401
    );
    assert_eq!(b.get_json(path)["views"].as_array().unwrap().len(), 1);
    let r = b.request(
        "DELETE",
        &format!("{path}/failures"),
        Some(&b.push_token),
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(b.get_json(path)["views"].as_array().unwrap().len(), 0);
    let audit = b.get_json("/api/v1/fleets/demo/audit");
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["view.delete", "view.save"]);
}

#[test]
fn the_cli_makes_operator_tokens_and_provisioning_keys() {
    let data = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(support::BIN)
            .args(args)
            .arg("--data")
            .arg(data.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, _, err) = run(&["fleet", "provisioning-key", "demo"]);
    assert!(!ok);
    assert!(err.contains("no fleet \"demo\""), "{err}");
    assert!(
        run(&[
            "fleet",
            "create",
            "demo",
            "--arch",
            "amd64",
            "--device-type",
            "generic-amd64"
        ])
        .0
    );
    let (ok, key, _) = run(&["fleet", "provisioning-key", "demo"]);
    assert!(ok);
    assert!(
        key.starts_with("shoalprov_") && key.len() == 10 + 48,
        "{key}"
    );
    let (ok, token, _) = run(&["token", "create", "--operator", "--name", "ops"]);
    assert!(ok && token.starts_with("shoal_"), "{token}");
    // Only hashes are stored.
    let db = std::fs::read(data.path().join("builder.db")).unwrap();
    let wal = std::fs::read(data.path().join("builder.db-wal")).unwrap_or_default();
    for secret in [&key, &token] {
        let needle = secret.as_bytes();
        assert!(!db.windows(needle.len()).any(|w| w == needle));
        assert!(!wal.windows(needle.len()).any(|w| w == needle));
    }
}
