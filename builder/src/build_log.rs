//! A running build's log: appended by the pipeline, followed live by the pusher and the API.
//!
//! The text is kept up to [`MAX_LOG_BYTES`]; past that one truncation marker is appended and
//! further lines are dropped, so a chatty build cannot exhaust memory or the database. Followers
//! read by byte offset and wait on a [`tokio::sync::watch`] generation counter, so a slow follower
//! never holds up the build.

use std::sync::Mutex;

use tokio::sync::watch;

/// The most log bytes kept per release.
pub const MAX_LOG_BYTES: usize = 1024 * 1024;
/// Appended once when the log is cut.
pub const TRUNCATION_MARKER: &str = "\n[log truncated at 1 MiB]\n";

/// How a build ended, as the pusher is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accept the push.
    Accept,
    /// Reject the push with this message.
    Reject(String),
}

#[derive(Debug, Default)]
struct Inner {
    text: String,
    truncated: bool,
    verdict: Option<Verdict>,
}

/// The shared log.
#[derive(Debug)]
pub struct BuildLog {
    inner: Mutex<Inner>,
    generation: watch::Sender<u64>,
}

impl Default for BuildLog {
    fn default() -> Self {
        BuildLog {
            inner: Mutex::new(Inner::default()),
            generation: watch::channel(0).0,
        }
    }
}

impl BuildLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Appends one line (a newline is added).
    pub fn line(&self, line: &str) {
        {
            let mut i = self.lock();
            if i.truncated {
                return;
            }
            if i.text.len() + line.len() + 1 + TRUNCATION_MARKER.len() > MAX_LOG_BYTES {
                i.text.push_str(TRUNCATION_MARKER);
                i.truncated = true;
            } else {
                i.text.push_str(line);
                i.text.push('\n');
            }
        }
        self.bump();
    }

    /// Ends the log with a verdict; followers stop after reading the rest.
    pub fn finish(&self, verdict: Verdict) {
        self.lock().verdict = Some(verdict);
        self.bump();
    }

    /// The whole text so far.
    pub fn text(&self) -> String {
        self.lock().text.clone()
    }

    /// The text from `offset` on, and the verdict when the log is finished.
    pub fn read_from(&self, offset: usize) -> (String, Option<Verdict>) {
        let i = self.lock();
        let tail = i.text.get(offset..).unwrap_or("").to_string();
        (tail, i.verdict.clone())
    }

    /// A receiver that changes whenever the log does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_capped_with_one_marker() {
        let log = BuildLog::default();
        let line = "x".repeat(1000);
        for _ in 0..2000 {
            log.line(&line);
        }
        let t = log.text();
        assert!(t.len() <= MAX_LOG_BYTES);
        assert!(t.ends_with(TRUNCATION_MARKER));
        assert_eq!(t.matches("truncated").count(), 1);
    }

    #[tokio::test]
    async fn followers_see_lines_then_the_verdict() {
        let log = std::sync::Arc::new(BuildLog::default());
        let mut rx = log.subscribe();
        let l2 = log.clone();
        let writer = tokio::spawn(async move {
            l2.line("one");
            l2.line("two");
            l2.finish(Verdict::Accept);
        });
        let mut seen = String::new();
        loop {
            let (tail, verdict) = log.read_from(seen.len());
            seen.push_str(&tail);
            if verdict.is_some() {
                assert_eq!(verdict, Some(Verdict::Accept));
                break;
            }
            rx.changed().await.unwrap();
        }
        writer.await.unwrap();
        assert_eq!(seen, "one\ntwo\n");
    }
}
