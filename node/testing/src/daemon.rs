//! For tests that run daemons (the `daemon` feature): the test fleets' wall clock and logs.

use std::sync::Arc;

use shoal_node::daemon::WallClock;

use crate::TEST_EPOCH;

/// The test fleets' wall clock: a minute after [`TEST_EPOCH`] when the test started, then
/// real seconds.
pub fn clock() -> WallClock {
    let start = std::time::Instant::now();
    Arc::new(move || TEST_EPOCH.plus_secs(60 + start.elapsed().as_secs()))
}

/// Logs to the test's output when `RUST_LOG` is set.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
