//! Real host faults with the Docker Engine (issue 7): runs `scripts/faults.sh`, which starts the
//! builder and six node daemons as containers of the project's own image on two private Docker
//! networks and cuts a site off, stops the builder mid-rollout, kills nodes mid-transfer and
//! restarts the whole fleet, asserting after each that every node runs the expected release.
//!
//! The image is made from the `shoal-builder` and `shoal-node` executables in this target
//! directory (`cargo test --workspace` builds them). Without a Docker Engine the test skips and
//! says why. The script's own output (one line per step, PASS/FAIL per scenario) goes straight to
//! the terminal.
//!
//! Ignored until the kill scenario passes: after `docker kill` and a restart with the same peer
//! id, a node hears no gossip sent after it came back (the announcement and wave controls it
//! has come by direct sync when its data-plane connections are made), so when its wave opens
//! later it never activates. The other three scenarios pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Why the Engine cannot be used, if it cannot.
fn engine_missing() -> Option<String> {
    match Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("`docker info` failed ({s})")),
        Err(e) => Some(format!("no docker client ({e})")),
    }
}

/// `target/<profile>/NAME` next to this test's executable (`target/<profile>/deps/...`).
fn sibling_exe(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .expect("the test runs from target/<profile>/deps")
}

#[test]
#[ignore = "fails on main: a node killed and restarted mid-rollout misses the wave controls \
            gossiped after its restart and stays staged (kill scenario of scripts/faults.sh); \
            run with `cargo test -p shoal-tests --test host_faults -- --ignored`"]
fn builder_and_nodes_in_containers_survive_partition_builder_stop_kills_and_restart() {
    if let Some(why) = engine_missing() {
        println!("SKIPPED host_faults: {why}; start one with scripts/engine.sh");
        return;
    }
    let builder = std::env::var_os("SHOAL_BUILDER_EXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| sibling_exe("shoal-builder"));
    let node = std::env::var_os("SHOAL_NODE_EXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| sibling_exe("shoal-node"));
    for exe in [&builder, &node] {
        assert!(
            exe.is_file(),
            "{} is missing: build it first (`cargo build -p shoal-builder -p shoal-node`; \
             `cargo test --workspace` does) or set SHOAL_BUILDER_EXE / SHOAL_NODE_EXE",
            exe.display()
        );
    }
    let status = Command::new("bash")
        .arg(root().join("scripts/faults.sh"))
        .env("SHOAL_BUILDER_EXE", &builder)
        .env("SHOAL_NODE_EXE", &node)
        .status()
        .expect("run bash scripts/faults.sh");
    assert!(
        status.success(),
        "scripts/faults.sh failed ({status}); its output above names the scenario and the reason"
    );
}
