//! For tests that run daemons (the `daemon` feature): the test fleets' wall clock, logs, and
//! [`TestFleet::daemon`], a daemon builder of a test fleet.

use std::path::PathBuf;
use std::sync::Arc;

use shoal_node::daemon::identity::DeviceKey;
use shoal_node::daemon::{Launcher, WallClock};

use crate::{TEST_ARCH, TEST_EPOCH, TestFleet};

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

impl TestFleet {
    /// A daemon of this fleet: `key`, its data under `data_dir`, the test architecture and
    /// `clock`; the caller adds the rest (origin, bootstrap peers, runtime) and starts it.
    pub fn daemon(
        &self,
        key: DeviceKey,
        data_dir: impl Into<PathBuf>,
        clock: &WallClock,
    ) -> Launcher {
        Launcher::new(key, self.trust.clone(), data_dir)
            .arch(TEST_ARCH)
            .wall_clock(clock.clone())
    }
}
