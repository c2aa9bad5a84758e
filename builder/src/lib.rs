//! # shoal-builder
//!
//! What a developer pushes to. `git push shoal master` reaches the builder's git smart HTTP
//! endpoint; the fleet repository's pre-receive hook calls back into the server, which runs the
//! release [`pipeline`] before git accepts the ref; the release is then seeded through the
//! fleet's embedded origin node ([`origin`]), whose devices' reports drive the rollout wave by
//! wave ([`live`]).
//!
//! The crate is built in layers; each uses only the layers below it:
//!
//! 1. **Storage**: the releases database and the content-addressed blob store ([`storage`]).
//! 2. **Services**: the builder's signing [`keys`] and trust-root [`rotation`]; the data
//!    directory with its database, store and running builds ([`app`]), which reaches the origin
//!    nodes through [`gossip::Gossip`] and the live rollouts through [`steering::Steering`],
//!    both defined below it; a build's log ([`build_log`]); the release [`pipeline`] (read the
//!    pushed tree, resolve the project, build with the Docker Engine, chunk into the store, sign
//!    and publish, which includes a rollback's new release); the fleets' [`origin`] nodes; the
//!    device [`registry`]; the audited [`operator`] actions; the [`live`] rollout loop.
//! 3. **HTTP** ([`http`]): the JSON API, git smart HTTP and its pre-receive hook, the device
//!    registry's and the operator's routes, and the dashboard, which reads the services.
//! 4. **The binary**: the operator CLI ([`cli`]) and a whole fleet on this machine
//!    ([`local_fleet`]), under `src/main.rs`.
//!
//! The rollout controller is its own crate, `shoal-rollout` (`builder/rollout/`), pure, so the
//! simulator uses it without the builder. Everything here needs the `server` feature (default),
//! except what the `parse` feature adds: only the decoders of untrusted bytes, without git,
//! Docker, SQLite or libp2p (what `builder/fuzz` links): [`pipeline::compose`],
//! [`pipeline::dockerignore`], the build configuration ([`pipeline::build_config`]), the
//! `docker save` archive reader ([`pipeline::image_archive`]) and the `Authorization` header
//! ([`http::auth_header`]).

#[cfg(feature = "server")]
pub mod storage;

#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod build_log;
#[cfg(feature = "server")]
pub mod gossip;
#[cfg(feature = "server")]
pub mod keys;
#[cfg(feature = "server")]
pub mod live;
#[cfg(feature = "server")]
pub mod operator;
#[cfg(feature = "server")]
pub mod origin;
#[cfg(any(feature = "server", feature = "parse"))]
pub mod pipeline;
#[cfg(feature = "server")]
pub mod registry;
#[cfg(feature = "server")]
pub mod rotation;
#[cfg(feature = "server")]
pub mod steering;

#[cfg(any(feature = "server", feature = "parse"))]
pub mod http;

#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod local_fleet;
