//! `shoal-test-node CONFIG`: runs the node daemon a configuration file describes, exactly as
//! `shoal-node run` does ([`shoal_node::daemon::launch`]), except that the wall clock is shifted
//! by `SHOAL_TEST_CLOCK_OFFSET` seconds (the test fleets' releases are dated in the future). It
//! stops when its standard input closes, so it never outlives the test that started it.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use shoal_node::daemon::config::FileConfig;
use shoal_node::daemon::launch;
use shoal_protocol::UnixTime;

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: shoal-test-node CONFIG");
        return ExitCode::from(2);
    };
    let offset: i64 = std::env::var("SHOAL_TEST_CLOCK_OFFSET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cfg = match FileConfig::load(std::path::Path::new(&path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let launcher = match launch::launcher(&cfg).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let clock = Arc::new(move || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            UnixTime(now.saturating_add(offset).max(0) as u64)
        });
        let handle = match launcher.wall_clock(clock).start().await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await;
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}
