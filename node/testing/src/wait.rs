//! Bounded waits for tests that poll: [`until`] retries a probe until it yields a value or a
//! generous deadline passes (tests assert outcomes, never timings).

use std::time::{Duration, Instant};

/// How often [`until`] probes.
pub const POLL: Duration = Duration::from_millis(100);

/// Calls `probe` every [`POLL`] until it returns `Some`, and returns that; panics with `what`
/// when `timeout` passes first.
pub fn until<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value_and_times_out_with_the_name() {
        let mut n = 0;
        let v = until(Duration::from_secs(5), "three probes", || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(v, 3);
        let err = std::panic::catch_unwind(|| until(Duration::ZERO, "nothing", || None::<()>));
        let msg = err.unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.contains("timed out waiting for nothing"), "{msg}");
    }
}
