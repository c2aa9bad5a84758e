//! Tests that cannot run here, made visible.
//!
//! A test that needs something this machine may lack (a Docker Engine, Chromium) calls
//! [`skip`] and returns when it is missing. Under `CI=true` that is a failure: CI installs
//! everything the tests need, so a missing Engine or browser there must fail the run, never pass
//! it quietly. Elsewhere the test prints `SKIPPED <test>: <why>` and, when `SHOAL_SKIP_LOG`
//! names a file, appends that line to it; `scripts/test.sh` (the README's test command) sets it
//! and ends the run with a line counting the skipped tests.

use std::io::Write;

/// The environment variable naming the file skipped tests are recorded in.
pub const LOG_ENV: &str = "SHOAL_SKIP_LOG";

/// Whether this run is CI's (`CI=true`, as CI services set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The running test's name: libtest runs each test on a thread named after it.
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("a test")
        .to_string()
}

/// Records that the running test cannot run because it `needs` something that is missing
/// (`why`): panics under CI, otherwise prints and records the skip. The caller then returns.
pub fn skip(needs: &str, why: &str) {
    let log = std::env::var_os(LOG_ENV).map(std::path::PathBuf::from);
    if let Err(failure) = record(in_ci(), log.as_deref(), &current_test(), needs, why) {
        panic!("{failure}");
    }
}

/// What [`skip`] does, with the environment as arguments: under CI the skip is an `Err` (the
/// message to fail with); otherwise it is printed and appended to `log`.
pub fn record(
    ci: bool,
    log: Option<&std::path::Path>,
    test: &str,
    needs: &str,
    why: &str,
) -> Result<(), String> {
    let line = format!("SKIPPED {test}: needs {needs}: {why}");
    if ci {
        return Err(format!("{line} (CI=true: the run must provide it)"));
    }
    eprintln!("{line}");
    if let Some(path) = log {
        // One short line per write with O_APPEND: parallel test processes do not interleave.
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_name_comes_from_the_test_thread() {
        assert!(
            current_test().ends_with("the_test_name_comes_from_the_test_thread"),
            "{}",
            current_test()
        );
    }

    #[test]
    fn under_ci_a_skip_is_a_failure_and_elsewhere_it_is_counted() {
        let dir = std::env::temp_dir().join(format!("shoal-skip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips");
        let failure = record(true, Some(&log), "t1", "a Docker Engine", "none").unwrap_err();
        assert!(
            failure.contains("SKIPPED t1: needs a Docker Engine: none"),
            "{failure}"
        );
        assert!(!log.exists(), "a CI failure is not a counted skip");
        record(false, Some(&log), "t1", "a Docker Engine", "none").unwrap();
        record(false, Some(&log), "t2", "Chromium", "not installed").unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "SKIPPED t1: needs a Docker Engine: none",
                "SKIPPED t2: needs Chromium: not installed"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
