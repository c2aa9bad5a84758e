//! [`Config`]: how a [`Node`](super::Node) behaves: its identity and trust root, and every
//! bound and timeout of the state machine, with the defaults of [`Config::new`].

use shoal_protocol::{SigningKey, TrustRoot};

use super::release::ReleaseCache;

/// How a node behaves. [`Config::new`] gives the defaults; every bound is a field.
#[derive(Debug, Clone)]
pub struct Config {
    /// The device's key: its identity ([`Node::id`](super::Node::id)) and what signs its
    /// reports.
    pub key: SigningKey,
    /// The fleet's trust root (already rotated to the current version by the driver).
    pub trust: TrustRoot,
    /// The device's architecture, as manifests name it.
    pub arch: String,
    /// The device's site label; peers with the same label are preferred.
    pub site: Option<String>,
    /// Most bytes of chunks the store may hold: the committed release plus the one being fetched.
    pub store_quota_bytes: u64,
    /// Most connected peers; more are dropped.
    pub max_peers: usize,
    /// Most chunk fetches in flight from one nearby peer; a distant peer gets one more per
    /// 10 ms of RTT (to fill the bandwidth-delay product), up to four times this.
    pub max_in_flight_per_peer: u32,
    /// Most chunk fetches in flight overall.
    pub max_in_flight_total: u32,
    /// Shortest deadline of a fetch, in milliseconds.
    pub fetch_timeout_ms: u64,
    /// Shortest deadline of a manifest fetch, in milliseconds.
    pub manifest_timeout_ms: u64,
    /// How long a node that is not its site's manifest importer waits for a peer to hold the
    /// manifest before asking peers that have not said they hold it, and then the origin (see
    /// [`Node::fetch_manifest`](super::Node)).
    pub manifest_wait_ms: u64,
    /// A peer serving below this rate is dropped; a fetch's deadline is at least its size at
    /// this rate.
    pub min_rate_bytes_per_s: u64,
    /// First retry delay after a failure, doubled per consecutive failure.
    pub backoff_base_ms: u64,
    /// Longest retry delay.
    pub backoff_max_ms: u64,
    /// How long a peer that answered [`FetchError::Busy`](super::FetchError::Busy) is left alone
    /// (no penalty), on average: each wait is drawn between half and one and a half times this.
    pub busy_backoff_ms: u64,
    /// A fetch that takes this many times the node's average fetch time (at least
    /// `straggler_min_ms`) is asked of another peer too; the first copy to arrive wins.
    pub straggler_factor: u32,
    /// Shortest straggler time, in milliseconds.
    pub straggler_min_ms: u64,
    /// Nor is a fetch a straggler before this many times the time the peer took per chunk
    /// lately, times its place in that peer's queue: a peer behind a thin WAN link is slow
    /// and fine, and asking another for the chunk wastes the bytes already sent.
    pub straggler_peer_factor: u32,
    /// A peer on another site gets at most this many milliseconds of chunks in flight at the
    /// time per chunk it took lately (at least one chunk), one until it has delivered.
    /// 0: no such cap.
    pub remote_horizon_ms: u64,
    /// Consecutive failures (timeouts, I/O errors, false advertisements) before a peer is dropped.
    pub max_peer_failures: u32,
    /// How long a peer that sent bad bytes stays banned.
    pub ban_ms: u64,
    /// Chunk progress is persisted at most this often.
    pub persist_interval_ms: u64,
    /// Candidates examined per rarest-first pick (see *Fetching* in the [crate docs](crate)).
    pub rarest_sample: u32,
    /// With no chunk stored for this long, the node also imports its share among the same-site
    /// peers that delivered to it, and after three times as long any chunk its site lacks (see
    /// *Fetching* in the [crate docs](crate)).
    pub idle_fallback_ms: u64,
    /// Most uploads served at once (see [`Node::admit_upload`](super::Node::admit_upload)).
    pub max_uploads: u32,
    /// On the origin: times each chunk is served before it is served only when no peer holds
    /// it (see [`super::Admission`]).
    pub origin_copies: u32,
    /// On the origin: most times one chunk is served while fewer than half of the upload
    /// slots are busy (see [`super::Admission`]); no limit by default.
    pub origin_max_copies: u32,
    /// Verified releases shared with other nodes of this process (the simulator); a fresh cache
    /// by default.
    pub releases: ReleaseCache,
    /// The builder's origin node: it gets releases through [`Node::seed`](super::Node::seed),
    /// serves and advertises them, and never fetches, applies or reports.
    pub origin: bool,
}

impl Config {
    /// Defaults: 16 GiB quota, 64 peers, 2 fetches per peer (plus one per 10 ms of RTT) and 64
    /// overall, 5 s minimum deadline (1 s for the manifest, waited for 250 ms by all but the
    /// site's manifest importer), 64 KiB/s minimum rate, backoff 500 ms doubling to 30 s
    /// (15 to 45 ms after Busy), stragglers asked elsewhere after 8× the average fetch (250 ms at
    /// least, and twice the peer's own time per chunk times its place in the queue), remote
    /// peers' queues 500 ms deep at their own rate,
    /// 3 failures, 1 h bans, persist every 5 s, rarest of 32, idle fallback
    /// after 500 ms, 16 uploads, the origin serves each chunk once (and as often as asked while
    /// it has spare upload slots).
    pub fn new(key: SigningKey, trust: TrustRoot, arch: impl Into<String>) -> Config {
        Config {
            key,
            trust,
            arch: arch.into(),
            site: None,
            store_quota_bytes: 16 << 30,
            max_peers: 64,
            max_in_flight_per_peer: 2,
            max_in_flight_total: 64,
            fetch_timeout_ms: 5_000,
            manifest_timeout_ms: 1_000,
            manifest_wait_ms: 250,
            min_rate_bytes_per_s: 64 * 1024,
            backoff_base_ms: 500,
            backoff_max_ms: 30_000,
            busy_backoff_ms: 30,
            straggler_factor: 8,
            straggler_min_ms: 250,
            straggler_peer_factor: 2,
            remote_horizon_ms: 500,
            max_peer_failures: 3,
            ban_ms: 3_600_000,
            persist_interval_ms: 5_000,
            rarest_sample: 32,
            idle_fallback_ms: 500,
            max_uploads: 16,
            origin_copies: 1,
            origin_max_copies: u32::MAX,
            releases: ReleaseCache::default(),
            origin: false,
        }
    }
}
