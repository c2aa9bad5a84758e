//! Sequence numbers and wall-clock instants as plain values.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A release sequence number: strictly increasing per fleet. A device never accepts a sequence at
/// or below the highest it has seen (except the very same release again).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReleaseSeq(pub u64);

impl fmt::Display for ReleaseSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Debug for ReleaseSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReleaseSeq({})", self.0)
    }
}

/// Wall-clock time in whole seconds since the Unix epoch, as given by the caller.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixTime(pub u64);

impl UnixTime {
    /// `self + secs`, saturating.
    pub fn plus_secs(self, secs: u64) -> UnixTime {
        UnixTime(self.0.saturating_add(secs))
    }
}
