//! The Docker Engine as the tests that need one find it: whether one answers (through the
//! `docker` CLI, so no async client is needed), the local base image `busybox:latest` that
//! `scripts/base-image.sh` makes (no registry can be reached), and [`docker_lines`] for the
//! clean-ups that list and remove a test's Engine objects. A test that finds no Engine returns
//! early after [`crate::skip::skip`] recorded why (under `CI=true` it fails instead).

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The workspace root (the directory of the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Whether a Docker Engine answers `docker info`; when none does, the running test is skipped
/// ([`crate::skip::skip`]: a failure under `CI=true`). `test` names it in the message.
pub fn available(test: &str) -> bool {
    match Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            crate::skip::skip(
                "a Docker Engine",
                &format!(
                    "{test}: none reachable (start one with scripts/engine.sh): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            );
            false
        }
        Err(e) => {
            crate::skip::skip("a Docker Engine", &format!("{test}: no docker client: {e}"));
            false
        }
    }
}

/// Runs `scripts/base-image.sh`, which makes `busybox:latest` when it is missing (and does
/// nothing without an Engine); whether the script succeeded.
pub fn make_base_image() -> bool {
    Command::new("bash")
        .arg(workspace_root().join("scripts/base-image.sh"))
        .status()
        .is_ok_and(|s| s.success())
}

/// [`make_base_image`], failing the test when the script fails.
pub fn ensure_base_image() {
    assert!(make_base_image(), "scripts/base-image.sh failed");
}

/// The non-empty output lines of `docker ARGS` (none if it fails).
pub fn docker_lines(args: &[&str]) -> Vec<String> {
    Command::new("docker")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}
