//! The `shoal-node` binary: key creation, configuration errors, run and status.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use shoal_protocol::{Envelope, encoding};
use shoal_testing::TestFleet;

fn shoal_node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal-node"))
        .args(args)
        .output()
        .expect("run shoal-node")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A configuration with `extra` appended; without a `[runtime]` table in `extra`, the node
/// stages only (these tests do not need a Docker Engine).
fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let runtime = if extra.contains("[runtime]") {
        ""
    } else {
        "[runtime]\nkind = \"stage-only\"\n"
    };
    let fleet = TestFleet::new("cli");
    let root = dir.join("root.bin");
    std::fs::write(
        &root,
        encoding::encode(&Envelope::seal(&fleet.trust, &[&fleet.root_key])),
    )
    .unwrap();
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nfleet = \"cli\"\ntrust_root = {:?}\nlisten = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\n\
             data_listen = \"127.0.0.1:0\"\nmdns = false\n{extra}{runtime}",
            dir.join("data"),
            root
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn init_writes_a_private_key_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("device.key");
    let out = shoal_node(&["init", "--key", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8(out.stdout).unwrap();
    assert_eq!(id.trim().len(), 64, "prints the device id: {id:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let again = shoal_node(&["init", "--key", key.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("cannot create device key"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn missing_malformed_config_and_unreadable_key_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = shoal_node(&["run", "--config", "/nonexistent/node.toml"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot read config /nonexistent/node.toml"),
        "{}",
        stderr(&out)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "fleet = [\n").unwrap();
    let out = shoal_node(&["run", "--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is malformed"), "{}", stderr(&out));

    let cfg = write_config(dir.path(), "");
    let out = shoal_node(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot read device key"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_without_a_docker_engine_says_so_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[runtime]\nsocket = \"/nonexistent/docker.sock\"\n",
    );
    let init = shoal_node(&["init", "--config", cfg.to_str().unwrap()]);
    assert!(init.status.success(), "{}", stderr(&init));
    let out = shoal_node(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no Docker Engine reachable at /nonexistent/docker.sock"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn lock_override_writes_the_override_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[runtime]\nkind = \"stage-only\"\nupdate_lock = \"/tmp/x.lock\"\n",
    );
    let out = shoal_node(&["lock-override", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("/tmp/x.lock"), "{}", stderr(&out));
    assert!(shoal_node::daemon::runtime::lock_override_path(&dir.path().join("data")).exists());
}

#[test]
fn a_taken_data_port_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&cfg, text).unwrap();
    let init = shoal_node(&["init", "--config", cfg.to_str().unwrap()]);
    assert!(init.status.success(), "{}", stderr(&init));
    let out = shoal_node(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "cannot bind the QUIC endpoint to 127.0.0.1:{port}"
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn status_reads_the_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "metrics = \"127.0.0.1:0\"\n");
    let cfg_s = cfg.to_str().unwrap();
    let none = shoal_node(&["status", "--config", cfg_s]);
    assert!(!none.status.success());
    assert!(
        stderr(&none).contains("no daemon answers"),
        "{}",
        stderr(&none)
    );

    let init = shoal_node(&["init", "--config", cfg_s]);
    assert!(init.status.success(), "{}", stderr(&init));
    let device = String::from_utf8(init.stdout).unwrap().trim().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal-node"))
        .args(["run", "--config", cfg_s])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut answer = None;
    for _ in 0..200 {
        let out = shoal_node(&["status", "--config", cfg_s, "--json"]);
        if out.status.success() {
            answer = Some(String::from_utf8(out.stdout).unwrap());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let human = shoal_node(&["status", "--config", cfg_s]);
    let _ = child.kill();
    let _ = child.wait();
    let json: serde_json::Value = serde_json::from_str(&answer.expect("status answered")).unwrap();
    assert_eq!(json["device"], device.as_str());
    assert_eq!(json["fleet"], "cli");
    assert_eq!(json["target"], serde_json::Value::Null);
    let human = String::from_utf8(human.stdout).unwrap();
    assert!(human.contains(&format!("device   {device}")), "{human}");
    assert!(human.contains("release  none"), "{human}");
}
