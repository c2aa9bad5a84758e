//! The one place a device decides whether to believe a release.
//!
//! [`announcement`] checks a gossiped announcement, [`manifest`] the manifest it names,
//! [`wave_control`] a rollout control message, and [`status_report`] a device's report. Each
//! returns the decoded value or a typed [`VerifyError`]; none of them panics on any input.

use crate::encoding::{DecodeError, decode};
use crate::envelope::SignatureError;
use crate::manifest::PlanError;
use crate::trust::TrustRootError;
use crate::{
    Announcement, Digest, Envelope, ReleaseManifest, ReleaseSeq, StatusReport, TrustRoot, UnixTime,
    WaveControl,
};

/// What a device knows when it checks a release.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The fleet's current trust root.
    pub trust: &'a TrustRoot,
    /// The device's architecture.
    pub arch: &'a str,
    /// The highest release the device has accepted, with its manifest digest.
    pub highest_seen: Option<(ReleaseSeq, Digest)>,
    /// Wall-clock time.
    pub now: UnixTime,
}

/// Why a message or release was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The bytes are not a well-formed value.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The signatures are not enough (unknown key, bad signature, duplicate key, below threshold).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The trust root itself is malformed.
    #[error(transparent)]
    TrustRoot(#[from] TrustRootError),
    /// The rollout plan cannot be followed.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The input is larger than allowed for its kind.
    #[error("{kind} is {len} bytes, more than {max}")]
    Oversized {
        /// What it was.
        kind: &'static str,
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The message has expired.
    #[error("{kind} expired at {expires}, now is {now}")]
    Expired {
        /// What it was.
        kind: &'static str,
        /// When it expired (seconds since epoch).
        expires: u64,
        /// Now (seconds since epoch).
        now: u64,
    },
    /// The device's trust root has expired and must be rotated first.
    #[error("trust root version {version} has expired")]
    TrustRootExpired {
        /// The expired version.
        version: u64,
    },
    /// A trust root that is not the next version.
    #[error("trust root version {found} does not follow version {current}")]
    TrustRootVersion {
        /// The device's version.
        current: u64,
        /// The offered version.
        found: u64,
    },
    /// More rotations at once than allowed.
    #[error("{len} trust-root rotations at once, at most {max}")]
    TooManyRotations {
        /// Offered.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Another fleet's message.
    #[error("for fleet {found:?}, this device is in {expected:?}")]
    WrongFleet {
        /// The device's fleet.
        expected: String,
        /// The message's fleet.
        found: String,
    },
    /// Built for another architecture.
    #[error("built for {found:?}, this device is {expected:?}")]
    WrongArch {
        /// The device's architecture.
        expected: String,
        /// The release's architecture.
        found: String,
    },
    /// The sequence is below the highest the device has seen.
    #[error("release {found} is older than {highest}, the highest seen")]
    Rollback {
        /// Highest seen.
        highest: ReleaseSeq,
        /// Offered.
        found: ReleaseSeq,
    },
    /// The same sequence as a release already seen, with other content.
    #[error("release {sequence} was already seen with another manifest")]
    Equivocation {
        /// The sequence.
        sequence: ReleaseSeq,
    },
    /// The manifest's bytes do not hash to the announced digest.
    #[error("manifest digest {found} is not the announced {expected}")]
    DigestMismatch {
        /// Announced.
        expected: Digest,
        /// Computed.
        found: Digest,
    },
    /// The manifest's size is not the announced size.
    #[error("manifest is {found} bytes, announced {expected}")]
    SizeMismatch {
        /// Announced.
        expected: u64,
        /// Received.
        found: u64,
    },
    /// The manifest's fleet or sequence differs from its announcement.
    #[error("manifest says {found}, its announcement {expected}")]
    ManifestMismatch {
        /// The announced sequence.
        expected: ReleaseSeq,
        /// The manifest's sequence.
        found: ReleaseSeq,
    },
}

fn check_expiry(kind: &'static str, expires: UnixTime, now: UnixTime) -> Result<(), VerifyError> {
    if now >= expires {
        return Err(VerifyError::Expired {
            kind,
            expires: expires.0,
            now: now.0,
        });
    }
    Ok(())
}

fn check_fleet(ctx: &TrustRoot, fleet: &str) -> Result<(), VerifyError> {
    if fleet != ctx.fleet {
        return Err(VerifyError::WrongFleet {
            expected: ctx.fleet.clone(),
            found: fleet.to_string(),
        });
    }
    Ok(())
}

fn check_arch(ctx: &Context<'_>, arch: &str) -> Result<(), VerifyError> {
    if arch != ctx.arch {
        return Err(VerifyError::WrongArch {
            expected: ctx.arch.to_string(),
            found: arch.to_string(),
        });
    }
    Ok(())
}

fn check_sequence(ctx: &Context<'_>, seq: ReleaseSeq, digest: Digest) -> Result<(), VerifyError> {
    match ctx.highest_seen {
        Some((highest, _)) if seq < highest => Err(VerifyError::Rollback {
            highest,
            found: seq,
        }),
        Some((highest, seen)) if seq == highest && seen != digest => {
            Err(VerifyError::Equivocation { sequence: seq })
        }
        _ => Ok(()),
    }
}

fn open_release_signed<T: crate::Wire>(
    trust: &TrustRoot,
    signed: &[u8],
    now: UnixTime,
) -> Result<T, VerifyError> {
    if now >= trust.expires {
        return Err(VerifyError::TrustRootExpired {
            version: trust.version,
        });
    }
    let envelope: Envelope = decode(signed)?;
    envelope.open(&trust.release_keys, usize::from(trust.release_threshold))
}

/// Checks a signed announcement (the bytes of an [`Envelope`]). The same announcement as the
/// highest seen is accepted again (the caller deduplicates); an older one, or another one with
/// the same sequence, is not.
pub fn announcement(ctx: &Context<'_>, signed: &[u8]) -> Result<Announcement, VerifyError> {
    if signed.len() > Announcement::MAX_SIGNED_BYTES {
        return Err(VerifyError::Oversized {
            kind: "signed announcement",
            len: signed.len() as u64,
            max: Announcement::MAX_SIGNED_BYTES as u64,
        });
    }
    let ann: Announcement = open_release_signed(ctx.trust, signed, ctx.now)?;
    check_fleet(ctx.trust, &ann.fleet)?;
    check_expiry("announcement", ann.expires, ctx.now)?;
    check_arch(ctx, &ann.arch)?;
    check_sequence(ctx, ann.sequence, ann.manifest_digest)?;
    Ok(ann)
}

/// Checks manifest bytes fetched for `ann` (already verified with [`announcement`]): size and
/// digest as announced, signatures, fleet, sequence, architecture, expiry and rollout plan.
pub fn manifest(
    ctx: &Context<'_>,
    ann: &Announcement,
    bytes: &[u8],
) -> Result<ReleaseManifest, VerifyError> {
    let len = bytes.len() as u64;
    let max = <Envelope as crate::Wire>::MAX_BYTES as u64;
    if ann.manifest_size > max || len > max {
        return Err(VerifyError::Oversized {
            kind: "manifest",
            len: len.max(ann.manifest_size),
            max,
        });
    }
    if len != ann.manifest_size {
        return Err(VerifyError::SizeMismatch {
            expected: ann.manifest_size,
            found: len,
        });
    }
    let found = Digest::of(bytes);
    if found != ann.manifest_digest {
        return Err(VerifyError::DigestMismatch {
            expected: ann.manifest_digest,
            found,
        });
    }
    let m: ReleaseManifest = open_release_signed(ctx.trust, bytes, ctx.now)?;
    check_fleet(ctx.trust, &m.fleet)?;
    if m.sequence != ann.sequence {
        return Err(VerifyError::ManifestMismatch {
            expected: ann.sequence,
            found: m.sequence,
        });
    }
    check_arch(ctx, &m.arch)?;
    check_expiry("manifest", m.expires, ctx.now)?;
    check_sequence(ctx, m.sequence, ann.manifest_digest)?;
    m.rollout.check()?;
    Ok(m)
}

/// Checks a signed wave control message against the trust root.
pub fn wave_control(
    trust: &TrustRoot,
    signed: &[u8],
    now: UnixTime,
) -> Result<WaveControl, VerifyError> {
    let wc: WaveControl = open_release_signed(trust, signed, now)?;
    check_fleet(trust, &wc.fleet)?;
    Ok(wc)
}

/// Checks a device's status report: signed by exactly the device it names.
pub fn status_report(signed: &[u8]) -> Result<StatusReport, VerifyError> {
    let envelope: Envelope = decode(signed)?;
    let report: StatusReport = decode(&envelope.payload)?;
    envelope.verify_threshold(
        <StatusReport as crate::Wire>::KIND,
        &[report.device.public_key()],
        1,
    )?;
    Ok(report)
}
