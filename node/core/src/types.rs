//! The plain values that cross the core's boundary: time, peers, inputs, outputs, errors.

use std::fmt;
use std::sync::Arc;

use shoal_protocol::{
    ChunkRef, DeviceId, Digest, ReleaseManifest, ReleaseSeq, StatusReport, UnixTime,
};

use super::bitfield::Bitfield;
use super::snapshot::Snapshot;

/// Monotonic time in milliseconds since an origin the driver chooses (process start, simulation
/// start). The core never reads a clock: every `now` is an argument.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant(0);

    /// `ms` milliseconds after the origin.
    pub fn from_millis(ms: u64) -> Instant {
        Instant(ms)
    }

    /// Milliseconds since the origin.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + ms`, saturating.
    pub fn plus_ms(self, ms: u64) -> Instant {
        Instant(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, 0 if `earlier` is later.
    pub fn ms_since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// A peer's identity: its device key (the builder's origin node has one too).
pub type PeerId = DeviceId;

/// What the driver knows about a connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's site label (from mDNS on a LAN or configuration); compared with
    /// [`super::Config::site`]. `None`: unknown, treated as another site.
    pub site: Option<String>,
    /// Smoothed round-trip time, in milliseconds.
    pub rtt_ms: u32,
    /// The builder's origin node: used last, and only for chunks no other peer has.
    pub origin: bool,
}

/// The transport's handle for one received gossip message, echoed in its
/// [`Output::GossipVerdict`]. The driver assigns it (a counter is enough).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

/// What the transport should do with a gossip message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Verified and new: forward it to the mesh.
    Accept,
    /// Invalid (bad signature, expired, replayed, malformed): drop it and penalise the sender.
    Reject,
    /// Valid or not, nothing to do (a duplicate, another fleet's release not worth a penalty, no
    /// wall clock yet): drop it without penalty.
    Ignore,
}

/// A successful fetch: the driver verified the bytes (BLAKE3 against the chunk digest) and stored
/// them before reporting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchStats {
    /// Bytes received.
    pub bytes: u64,
    /// From the request to the last byte, in milliseconds.
    pub elapsed_ms: u64,
}

/// Why a fetch failed, as the driver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The bytes did not hash to the requested digest (or did not decompress to its size): the
    /// peer is banned and the chunk fetched elsewhere.
    #[error("received bytes do not match the digest")]
    DigestMismatch,
    /// No complete answer in time (the driver's own timeout; the core has one too).
    #[error("timed out")]
    Timeout,
    /// The transfer ran below the minimum rate and the driver gave up on it.
    #[error("transfer below the minimum rate")]
    TooSlow,
    /// The peer does not hold it.
    #[error("peer does not have it")]
    NotFound,
    /// The peer is at its upload limit; try again later (no penalty).
    #[error("peer is busy")]
    Busy,
    /// The connection or the local store failed.
    #[error("I/O error")]
    Io,
}

/// Why the core asks the driver to disconnect a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// It sent bytes that do not match their digest, or a manifest that does not verify.
    BadData,
    /// It served below the minimum rate.
    TooSlow,
    /// Too many of its requests timed out or failed.
    Unresponsive,
    /// Over [`super::Config::max_peers`].
    TooManyPeers,
}

/// Largest signed trust-root envelope accepted from gossip.
pub const MAX_TRUST_ROOT_SIGNED_BYTES: usize = 12 * 1024;

/// A gossip message as it travels on the gossip topic: one tag byte and a signed envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipMessage {
    /// Tag 1: a signed [`shoal_protocol::Announcement`] envelope (encoded bytes).
    Announcement(Vec<u8>),
    /// Tag 2: a signed [`shoal_protocol::WaveControl`] envelope (encoded bytes).
    WaveControl(Vec<u8>),
    /// Tag 3: the signed envelope of the fleet's next [`shoal_protocol::TrustRoot`] version.
    TrustRoot(Vec<u8>),
}

impl GossipMessage {
    const ANNOUNCEMENT: u8 = 1;
    const WAVE_CONTROL: u8 = 2;
    const TRUST_ROOT: u8 = 3;
    /// Largest gossip message, in bytes (a signed trust root is the largest kind).
    pub const MAX_BYTES: usize = 1 + MAX_TRUST_ROOT_SIGNED_BYTES;

    /// The bytes to publish.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, body) = match self {
            GossipMessage::Announcement(b) => (Self::ANNOUNCEMENT, b),
            GossipMessage::WaveControl(b) => (Self::WAVE_CONTROL, b),
            GossipMessage::TrustRoot(b) => (Self::TRUST_ROOT, b),
        };
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(tag);
        out.extend_from_slice(body);
        out
    }

    /// Splits received bytes into tag and envelope; `None` for an empty, oversized or unknown
    /// message. The envelope is verified later.
    pub fn decode(bytes: &[u8]) -> Option<GossipMessage> {
        if bytes.len() > Self::MAX_BYTES {
            return None;
        }
        let (&tag, body) = bytes.split_first()?;
        match tag {
            Self::ANNOUNCEMENT => Some(GossipMessage::Announcement(body.to_vec())),
            Self::WAVE_CONTROL => Some(GossipMessage::WaveControl(body.to_vec())),
            Self::TRUST_ROOT => Some(GossipMessage::TrustRoot(body.to_vec())),
            _ => None,
        }
    }
}

/// Everything that happens to a node, as the driver tells it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Input {
    /// Wall-clock time now (for expiry checks). Send it once at start and whenever the clock
    /// may have stepped; between two, the core extrapolates with the monotonic `now`. Until the
    /// first one, gossip gets [`Verdict::Ignore`].
    WallClock(UnixTime),
    /// A peer connected (or its info changed). Answered with [`Output::SendBitfield`] and
    /// [`Output::SyncGossip`].
    PeerConnected {
        /// Who.
        peer: PeerId,
        /// Its site, RTT and role.
        info: PeerInfo,
    },
    /// The devices known to share this node's site (found on the LAN, e.g. by mDNS), connected
    /// or not; replaces the previous list (at most [`super::MAX_SITE_MEMBERS`] are kept). The
    /// site's imports are split among them (see [`super::Config::idle_fallback_ms`]): with the
    /// whole site known, each chunk is imported into the site once, even when each node is
    /// connected to only a few of its neighbours. Without it, only connected same-site peers
    /// count.
    SiteMembers {
        /// The other devices of the site (this node's own id is ignored).
        peers: Vec<PeerId>,
    },
    /// A peer disconnected: its in-flight fetches are failed and its availability forgotten.
    PeerDisconnected {
        /// Who.
        peer: PeerId,
    },
    /// A gossip message from `from` (the peer that delivered it, not necessarily its author).
    Gossip {
        /// The delivering peer.
        from: PeerId,
        /// The transport's handle, echoed in the verdict.
        id: MessageId,
        /// [`GossipMessage::encode`]d bytes.
        bytes: Vec<u8>,
    },
    /// A peer's full availability for a release: bit `i` is chunk `i` of the release's unique
    /// chunk list ([`ReleaseManifest::unique_chunks`]). Replaces what was known. Sending it also
    /// says the peer holds the release's manifest.
    PeerHave {
        /// Who.
        peer: PeerId,
        /// The release.
        sequence: ReleaseSeq,
        /// Its chunks.
        have: Bitfield,
    },
    /// A peer stored one more chunk (a HAVE).
    PeerHaveChunk {
        /// Who.
        peer: PeerId,
        /// The release.
        sequence: ReleaseSeq,
        /// Index into the release's unique chunk list.
        index: u32,
    },
    /// The answer to [`Output::FetchManifest`]: the manifest envelope's bytes, unverified (the
    /// core verifies them). `Arc` so a simulator can hand one allocation to many nodes.
    ManifestFetched {
        /// Who served it.
        peer: PeerId,
        /// The release asked for.
        sequence: ReleaseSeq,
        /// The bytes, or why not.
        result: Result<Arc<[u8]>, FetchError>,
    },
    /// The answer to [`Output::FetchChunk`]. `Ok` means the driver verified the chunk's BLAKE3
    /// and stored it; the core never sees chunk bytes.
    ChunkFetched {
        /// Who served it.
        peer: PeerId,
        /// The release asked for.
        sequence: ReleaseSeq,
        /// Index into the release's unique chunk list.
        index: u32,
        /// What happened.
        result: Result<FetchStats, FetchError>,
    },
    /// The answer to [`Output::Apply`]: the release's containers run (`Ok`) or applying failed.
    ApplyFinished {
        /// The release.
        sequence: ReleaseSeq,
        /// `Err` carries a short human-readable reason (it goes into the status report).
        result: Result<(), String>,
    },
    /// The health verdict on an applied release.
    HealthResult {
        /// The release.
        sequence: ReleaseSeq,
        /// Whether its health checks passed.
        healthy: bool,
        /// A short detail for the report.
        detail: String,
    },
}

/// What the core asks the driver to do. Each output is one effect; the comment says what the
/// driver sends back.
///
/// Deliberately exhaustive: a new output must fail to compile in every driver (the daemon and
/// the simulator) until it carries it out.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Forward (`Accept`) or drop the gossip message `id`. Exactly one per [`Input::Gossip`].
    GossipVerdict {
        /// The message.
        id: MessageId,
        /// What to do with it.
        verdict: Verdict,
    },
    /// Send `messages` (each [`GossipMessage::encode`]d) to `peer` directly, so a peer that
    /// missed them (just joined, was offline) catches up; it feeds them in as [`Input::Gossip`].
    SyncGossip {
        /// To whom.
        peer: PeerId,
        /// The latest announcement and wave control, oldest first.
        messages: Vec<Vec<u8>>,
    },
    /// Send our full availability for `sequence` to `peer` (it becomes its [`Input::PeerHave`]).
    SendBitfield {
        /// To whom.
        peer: PeerId,
        /// The release.
        sequence: ReleaseSeq,
        /// Our chunks.
        have: Bitfield,
    },
    /// We stored chunk `index`: send a HAVE to every connected peer (it becomes their
    /// [`Input::PeerHaveChunk`]).
    Advertise {
        /// The release.
        sequence: ReleaseSeq,
        /// Index into its unique chunk list.
        index: u32,
    },
    /// Fetch the manifest envelope from `peer`; answer with [`Input::ManifestFetched`].
    FetchManifest {
        /// From whom.
        peer: PeerId,
        /// The release.
        sequence: ReleaseSeq,
        /// The announced digest of the manifest envelope bytes.
        digest: Digest,
        /// The announced size; do not read more.
        size: u64,
    },
    /// Fetch, verify (BLAKE3 = `chunk.digest`, size = `chunk.size`) and store a chunk; answer
    /// with [`Input::ChunkFetched`]. If it is already in the local store, answer `Ok` at once.
    FetchChunk {
        /// From whom.
        peer: PeerId,
        /// The release.
        sequence: ReleaseSeq,
        /// Index into the release's unique chunk list.
        index: u32,
        /// What to fetch.
        chunk: ChunkRef,
    },
    /// Abort an outstanding [`Output::FetchChunk`] (it timed out in the core, or the release was
    /// superseded). A late answer is ignored; no answer is needed.
    CancelFetch {
        /// From whom.
        peer: PeerId,
        /// The release.
        sequence: ReleaseSeq,
        /// The chunk.
        index: u32,
    },
    /// Disconnect `peer`. Its fetches are already failed in the core; no answer needed
    /// (a later [`Input::PeerDisconnected`] is fine).
    DropPeer {
        /// Who.
        peer: PeerId,
        /// Why.
        reason: DropReason,
    },
    /// Disconnect `peer` and refuse it until `until`; it sent bad data.
    BanPeer {
        /// Who.
        peer: PeerId,
        /// Why.
        reason: DropReason,
        /// When the ban ends.
        until: Instant,
    },
    /// Write this snapshot durably before carrying out any later output; resume from the last
    /// one with [`super::Node::resume`].
    Persist(Box<Snapshot>),
    /// Activate the release (load its images, apply the update strategies); answer with
    /// [`Input::ApplyFinished`] and then [`Input::HealthResult`]. Its snapshot is persisted just
    /// before.
    Apply {
        /// The release.
        sequence: ReleaseSeq,
        /// Its verified manifest.
        manifest: Arc<ReleaseManifest>,
    },
    /// Go back to the last committed release (`to`; `None`: the device's initial state). The
    /// core reports `RolledBack` right after; no answer needed.
    Rollback {
        /// The release that failed.
        from: ReleaseSeq,
        /// The release to return to.
        to: Option<ReleaseSeq>,
    },
    /// Deliver a signed status report to the builder.
    Report {
        /// The [`shoal_protocol::Envelope`] bytes, signed by the device key.
        envelope: Vec<u8>,
        /// The report inside, for local use.
        report: StatusReport,
    },
    /// Something worth logging or counting happened; no answer needed.
    Event(Event),
}

/// Observable milestones, for logs, the local CLI and the simulator's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A verified announcement of a new release; fetching its manifest.
    Announced {
        /// The release.
        sequence: ReleaseSeq,
    },
    /// The manifest verified; fetching `chunks` chunks (of `total` in the release).
    ManifestAccepted {
        /// The release.
        sequence: ReleaseSeq,
        /// Chunks still to fetch.
        missing: u32,
        /// Unique chunks in the release.
        total: u32,
    },
    /// Every chunk is stored.
    Staged {
        /// The release.
        sequence: ReleaseSeq,
    },
    /// The release will not be fetched or applied.
    Refused {
        /// The release.
        sequence: ReleaseSeq,
        /// Why.
        reason: Refusal,
    },
    /// A newer release replaced one still being fetched.
    Superseded {
        /// The old release.
        old: ReleaseSeq,
        /// The new one.
        new: ReleaseSeq,
    },
    /// The release was halted by wave control; it will not activate here.
    Halted {
        /// The release.
        sequence: ReleaseSeq,
    },
    /// The fleet's trust root was rotated to `version`.
    TrustRotated {
        /// The new version.
        version: u64,
    },
}

/// Why a release was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// It does not fit in the store beside the active release.
    #[error("needs {needed_bytes} bytes of store, quota is {quota_bytes}")]
    Quota {
        /// Bytes the store would hold with it.
        needed_bytes: u64,
        /// The configured quota.
        quota_bytes: u64,
    },
    /// Its manifest expired before it could be applied.
    #[error("expired")]
    Expired,
    /// The announced manifest bytes themselves do not verify (a bad release, not a bad peer).
    #[error("invalid manifest: {reason}")]
    Invalid {
        /// The verification error.
        reason: String,
    },
}
