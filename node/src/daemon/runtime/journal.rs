//! The runtime's persisted state: the release manifests it may need again and the journal of
//! the operation in progress.
//!
//! Files live in `<data_dir>/runtime/`: `journal.json` (the operation and the step about to
//! run, rewritten atomically before every step) and `releases/<seq>.json` (the manifests of the
//! releases applied, so a rollback or a restart can recreate their containers). On start the
//! runtime reads the journal, logs what was interrupted, and converges the Engine to the
//! committed release the node's state names (see [`super::DockerRuntime`]).
//!
//! Test-only fault hook: with `SHOAL_FAULT_KILL_AT=<seq>:<step>` in the environment, the process
//! sends itself SIGKILL right after the journal records step `<step>` (counted from 0) of the
//! apply of release `<seq>`, before the step runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shoal_protocol::{ReleaseManifest, ReleaseSeq};

use crate::daemon::state::{StateError, load_json, save_json};

/// The environment variable of the fault hook.
pub const FAULT_ENV: &str = "SHOAL_FAULT_KILL_AT";

/// An operation in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum Op {
    /// Applying `sequence` over `from`.
    Apply {
        /// The release being applied.
        sequence: u64,
        /// The release running before (if any).
        from: Option<u64>,
        /// The step about to run (counted from 0).
        step: u32,
        /// What the step does.
        what: String,
    },
    /// Converging to `to` (a rollback, or recovery after a restart).
    Converge {
        /// The release to run (none: no containers).
        to: Option<u64>,
    },
}

/// The journal file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The operation in progress; `None` when idle.
    pub op: Option<Op>,
    /// The release the runtime last converged to or applied completely.
    pub running: Option<u64>,
}

/// The runtime's directory.
#[derive(Debug, Clone)]
pub struct Files {
    dir: PathBuf,
}

impl Files {
    /// Files under `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Files {
        Files { dir: dir.into() }
    }
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    fn journal_path(&self) -> PathBuf {
        self.dir.join("journal.json")
    }
    fn release_path(&self, seq: ReleaseSeq) -> PathBuf {
        self.dir.join("releases").join(format!("{}.json", seq.0))
    }
    /// Reads the journal (empty if none).
    pub fn journal(&self) -> Result<Journal, StateError> {
        Ok(load_json(&self.journal_path())?.unwrap_or_default())
    }
    /// Writes the journal atomically.
    pub fn save_journal(&self, j: &Journal) -> Result<(), StateError> {
        save_json(&self.journal_path(), j)
    }
    /// Keeps a release's manifest for later rollbacks and restarts.
    pub fn save_release(&self, m: &ReleaseManifest) -> Result<(), StateError> {
        let path = self.release_path(m.sequence);
        if path.exists() {
            return Ok(());
        }
        save_json(&path, m)
    }
    /// A kept manifest.
    pub fn release(&self, seq: ReleaseSeq) -> Result<Option<Arc<ReleaseManifest>>, StateError> {
        Ok(load_json::<ReleaseManifest>(&self.release_path(seq))?.map(Arc::new))
    }
    /// Drops kept manifests other than `keep`.
    pub fn prune_releases(&self, keep: &[u64]) {
        let Ok(entries) = std::fs::read_dir(self.dir.join("releases")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let seq = name
                .strip_suffix(".json")
                .and_then(|s| s.parse::<u64>().ok());
            if seq.is_some_and(|s| !keep.contains(&s)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Runs the fault hook for step `step` of the apply of `sequence`.
pub fn fault_point(sequence: u64, step: u32) {
    let Ok(v) = std::env::var(FAULT_ENV) else {
        return;
    };
    if v == format!("{sequence}:{step}") {
        tracing::warn!(
            sequence,
            step,
            "fault hook: killing the process with SIGKILL"
        );
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status();
        // `kill` does not return once the signal lands; wait for it.
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = Files::new(dir.path().join("runtime"));
        assert_eq!(f.journal().unwrap(), Journal::default());
        let j = Journal {
            op: Some(Op::Apply {
                sequence: 2,
                from: Some(1),
                step: 3,
                what: "start web".into(),
            }),
            running: Some(1),
        };
        f.save_journal(&j).unwrap();
        assert_eq!(f.journal().unwrap(), j);
    }
}
