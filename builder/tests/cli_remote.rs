//! The operator CLI against a running builder: `releases list|show|logs`, `devices list`, with
//! and without `--json`, and its errors.

mod support;

use shoal_protocol::DeviceState;
use support::inproc::{Dev, InProc};

fn cli(b: &InProc, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(support::BIN)
        .args(args)
        .args(["--url", &b.url()])
        .env_remove("SHOAL_TOKEN")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn releases_and_devices_are_listed_shown_and_logged() {
    let b = InProc::start();
    b.publish(
        "1111111111111111111111111111111111111111",
        true,
        "step one\n",
    );
    b.publish(
        "dead000000000000000000000000000000000000",
        false,
        "it broke\n",
    );
    let r3 = b.publish(
        "3333333333333333333333333333333333333333",
        true,
        "step three\n",
    );
    let dev = Dev::new(1, "kiosk-1");
    b.register(&dev, "depot");
    b.post_report(&dev, &dev.report(&r3, DeviceState::Healthy, 1));

    let (ok, out, err) = cli(&b, &["releases", "list"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("DEVICES"),
        "{out}"
    );
    assert!(
        lines[1].contains("3333333333")
            && lines[1].contains("success")
            && lines[1].trim_end().ends_with('1'),
        "{out}"
    );
    assert!(
        lines[2].contains("dead000000") && lines[2].contains("failed"),
        "{out}"
    );

    let (ok, out, err) = cli(&b, &["releases", "list", "--status", "failed", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["releases"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["releases"][0]["commit"],
        "dead000000000000000000000000000000000000"
    );

    let (ok, out, err) = cli(&b, &["releases", "show", &r3.id.to_string()]);
    assert!(ok, "{err}");
    assert!(out.contains("sequence    2"), "{out}");
    assert!(
        out.contains("WAVE") && out.lines().count() >= 8 + 4,
        "{out}"
    );

    let (ok, out, _) = cli(&b, &["releases", "logs", &r3.id.to_string()]);
    assert!(ok);
    assert_eq!(out, "step three\n");

    let (ok, out, err) = cli(&b, &["devices", "list", "--fleet", "demo", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["devices"][0]["name"], "kiosk-1");
    assert_eq!(v["devices"][0]["current_sequence"], r3.sequence);
    let (ok, out, _) = cli(&b, &["devices", "list"]);
    assert!(ok);
    assert!(out.lines().nth(1).unwrap().starts_with("kiosk-1"), "{out}");
    assert!(out.contains("healthy") && out.contains("depot"), "{out}");

    let (ok, _, err) = cli(&b, &["releases", "show", "99"]);
    assert!(!ok);
    assert!(err.contains("404: no release 99"), "{err}");
    let out = std::process::Command::new(support::BIN)
        .args(["releases", "list", "--url", "https://example.invalid"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported builder URL"));
}
