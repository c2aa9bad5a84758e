//! The storage layer: what the builder keeps on disk, below every service.
//!
//! - [`db`]: the releases database (SQLite): fleets, tokens, releases, and the tables the
//!   services add through their migrations.
//! - [`blobs`]: the content-addressed store of chunks, signed manifests and announcements
//!   ([`blobs::Store`]).

pub mod blobs;
pub mod db;
