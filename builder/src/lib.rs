//! # shoal-builder
//!
//! What a developer pushes to. `git push shoal master` reaches the builder's git smart HTTP
//! endpoint ([`githttp`]); the fleet repository's pre-receive hook ([`hook`]) calls back into the
//! server, which runs the release [`pipeline`] before git accepts the ref: read the pushed tree
//! with gix ([`tree`]), resolve the project ([`project`], [`compose`]), build each service with
//! the Docker Engine ([`engine`], [`context`], [`dockerignore`]), export and chunk the images
//! into the content [`store`], sign the [`shoal_protocol::ReleaseManifest`] and an
//! [`shoal_protocol::Announcement`] with the builder's [`keys`], and record the release in the
//! [`db`], then seed it through the fleet's embedded origin node ([`origin`]), whose devices'
//! reports drive the rollout wave by wave ([`live`]). Build output streams to the pusher as
//! `remote:` lines ([`log`]). The JSON API and the read-only store are served by [`http`]; [`app`]
//! holds the data directory.
//!
//! The rollout controller is its own crate, `shoal-rollout` (`builder/rollout/`), pure, so the
//! simulator uses it without the builder. Everything here needs the `server` feature (default),
//! except what the `parse` feature adds
//! only the decoders of untrusted bytes, without git, Docker, SQLite or libp2p (what
//! `builder/fuzz` links): [`compose`], [`dockerignore`], the build configuration
//! ([`buildconfig`]), the `docker save` archive reader ([`save`]) and the `Authorization` header
//! ([`authheader`]).

#[cfg(feature = "server")]
pub mod app;
#[cfg(any(feature = "server", feature = "parse"))]
pub mod authheader;
#[cfg(any(feature = "server", feature = "parse"))]
pub mod buildconfig;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(any(feature = "server", feature = "parse"))]
pub mod compose;
#[cfg(feature = "server")]
pub mod context;
#[cfg(feature = "server")]
pub mod dashboard;
#[cfg(feature = "server")]
pub mod db;
#[cfg(any(feature = "server", feature = "parse"))]
pub mod dockerignore;
#[cfg(feature = "server")]
pub mod engine;
#[cfg(feature = "server")]
pub mod githttp;
#[cfg(feature = "server")]
pub mod hook;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod keys;
#[cfg(feature = "server")]
pub mod live;
#[cfg(feature = "server")]
pub mod localfleet;
#[cfg(feature = "server")]
pub mod log;
#[cfg(feature = "server")]
pub mod operator;
#[cfg(feature = "server")]
pub mod origin;
#[cfg(feature = "server")]
pub mod pipeline;
#[cfg(feature = "server")]
pub mod project;
#[cfg(feature = "server")]
pub mod registry;
#[cfg(any(feature = "server", feature = "parse"))]
pub mod save;
#[cfg(feature = "server")]
pub mod secrets;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod tree;

#[cfg(feature = "server")]
pub mod rotation;
