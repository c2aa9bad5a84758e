//! The release pipeline: one push, from a pushed commit to a signed release seeded to the fleet.
//!
//! [`start`] records a `running` release and runs [`build`] on its own task: read the pushed
//! commit's tree with gix ([`git_tree`]), resolve the project ([`project`], from a
//! [`compose`] file, a Dockerfile or a `package.json`, with the build configuration of
//! [`build_config`]), build each service with the Docker Engine ([`engine`]) from its build
//! [`context`] (minus what [`dockerignore`] excludes, with build [`secrets`] mounted), export and
//! chunk every image into the blob store (the `docker save` stream read by [`image_archive`]),
//! then [`publish`]: sign the manifest and its announcement with the release key, store both and
//! seed the release through the fleet's origin node. A rollback (an aborted rollout, a fleet
//! pinned to an older release) is published here too: a new, higher sequence with the content
//! of an earlier release ([`publish::roll_back`]).
//!
//! The decoders of untrusted bytes ([`compose`], [`dockerignore`], [`build_config`],
//! [`image_archive`]) build with the `parse` feature alone, for `builder/fuzz`.

pub mod build_config;
pub mod compose;
pub mod dockerignore;
pub mod image_archive;

#[cfg(feature = "server")]
pub mod build;
#[cfg(feature = "server")]
pub mod context;
#[cfg(feature = "server")]
pub mod engine;
#[cfg(feature = "server")]
pub mod git_tree;
#[cfg(feature = "server")]
pub mod project;
#[cfg(feature = "server")]
pub mod publish;
#[cfg(feature = "server")]
pub mod secrets;

#[cfg(feature = "server")]
pub use build::{LOG_SAVE_INTERVAL, Push, ServiceSummary, human, start};
#[cfg(feature = "server")]
pub use publish::{RELEASE_VALIDITY_S, sign};
