//! # shoal-node-core: the device's sans-IO state machine
//!
//! (The daemon re-exports it as `shoal_node::core`.) Its dependencies are `shoal-protocol`,
//! `serde` and `thiserror` only, so it cannot reach a clock, a socket, a file or an async
//! runtime; `clippy.toml` here also bans `Instant::now`, `SystemTime::now` and hash maps, whose
//! order would reach the outputs.
//!
//! [`Node`] decides everything a device decides about a release — what to trust, what to fetch
//! from whom, what to advertise, when to activate, what to report — and does nothing itself: no
//! clock, socket, disk or RNG of its own. The daemon maps each [`Output`] onto one real effect;
//! the simulator maps it onto a simulated one; so what the simulator measures is what devices run.
//!
//! ## How to drive it
//!
//! Like `quinn_proto::Connection`: feed an input, then drain the outputs, then arm one timer.
//!
//! ```text
//! let mut node = Node::new(config, seed);              // or Node::resume(config, snapshot, seed)
//! node.handle(now, Input::WallClock(unix_now));        // before anything else
//! loop {
//!     // 1. one input (a gossip message, a fetched chunk, a timer...)
//!     node.handle(now, input);                         // or node.handle_timeout(now)
//!     // 2. every output, in order (Persist must be durable before the outputs after it)
//!     while let Some(out) = node.poll_output() { carry_out(out) }
//!     // 3. the next wake-up
//!     if let Some(t) = node.poll_timeout() { arm_timer(t) }  // then handle_timeout(t)
//! }
//! ```
//!
//! `now` is monotonic milliseconds ([`Instant`]); wall-clock time for expiry checks comes in as
//! [`Input::WallClock`] and is extrapolated with `now` in between. Randomness (rarest-first tie
//! breaks, report nonces) comes from the seed. Same inputs and seed, same outputs.
//!
//! ## What it decides
//!
//! - **Trust**: every announcement, manifest and wave control message is verified with
//!   [`shoal_protocol::verify`] before anything else happens, and every gossip message gets a
//!   [`Verdict`] so the transport forwards only valid ones. The highest accepted sequence is
//!   persisted ([`Output::Persist`]) before any [`Output::Apply`]; nothing at or below it is
//!   applied again.
//! - **Fetching**: the manifest first, then the missing chunks. Peers in preference order: same
//!   site, then other peers by RTT, then the origin (builder) — and a chunk is asked of a remote
//!   peer only when no same-site peer has it, of the origin only when no other peer has it, so
//!   each site imports a chunk about once and the builder sends it about once. Among the chunks a
//!   peer has, rarest first (sampled, with a seeded random start). What a site lacks is split
//!   among its nodes by consistent hashing over the same-site peers each sees: a node imports
//!   (from remote peers or the origin) only its arc of the ring, until it has stored nothing
//!   for [`Config::idle_fallback_ms`]; with a full local mesh each chunk enters a site once. When every missing chunk is in flight, the oldest are fetched a second time from
//!   other peers (endgame) and the loser cancelled. In flight: at most
//!   [`Config::max_in_flight_per_peer`] per peer and [`Config::max_in_flight_total`] overall.
//!   A fetch that outlives its deadline (the larger of [`Config::fetch_timeout_ms`] and the time
//!   the chunk takes at [`Config::min_rate_bytes_per_s`]) is cancelled; failures put the peer in
//!   exponential backoff, and [`Config::max_peer_failures`] in a row drop it. A peer that sends
//!   bytes not matching their digest is banned and the chunk is fetched elsewhere.
//! - **Serving**: [`Node::admit_upload`] bounds concurrent uploads; the origin node
//!   ([`Config::origin`], filled with [`Node::seed`]) serves each chunk once before any twice.
//! - **Advertising**: [`Output::Advertise`] as soon as each chunk is stored; the full
//!   [`Bitfield`] to each peer on connect and when a manifest is accepted.
//! - **Activation**: prefetch on announcement; apply only when the device's own wave
//!   ([`shoal_protocol::waves::wave_of`]) is open per a verified wave control message (counter
//!   strictly increasing per release, Pause and Halt respected); roll back when applying or health
//!   fails.
//! - **Reporting**: a signed [`shoal_protocol::StatusReport`] at each state change.
//! - **Recovery**: [`Output::Persist`] snapshots and [`Node::resume`].
//! - **Store bound**: a release that does not fit [`Config::store_quota_bytes`] beside the
//!   committed one is refused ([`Event::Refused`] and a `failed` report saying why).

mod activate;
mod bitfield;
mod chunks;
mod config;
mod fetch;
mod gossip;
mod manifest;
mod node;
mod peermap;
mod peers;
mod persist;
mod release;
mod ring;
pub mod rng;
mod rotation;
mod served;
mod snapshot;
mod types;
mod upload;

pub use bitfield::{Bitfield, BitfieldError};
pub use config::Config;
pub use node::{MAX_BANNED, MAX_EARLY_HAVE_BITS, MAX_SITE_MEMBERS, Node, Progress};
pub use release::{RELEASE_CACHE_ENTRIES, Release, ReleaseCache};
pub use rotation::TrustRootError;
pub use snapshot::{MAX_TRUST_CHAIN, Phase, ReleaseSnapshot, Snapshot};
pub use types::{
    DropReason, Event, FetchError, FetchStats, GossipMessage, Input, Instant,
    MAX_TRUST_ROOT_SIGNED_BYTES, MessageId, Output, PeerId, PeerInfo, Refusal, Verdict,
};
pub use upload::Admission;
