//! Unit tests of the core, driven through a small harness.

mod activation;
mod attacks;
mod fetching;
mod harness;
mod purity;
mod recovery;
mod swarm;
mod trust;
mod uploads;
