//! Tests of the core through its public API, driven by a small harness.

mod activation;
mod attacks;
mod fetching;
mod harness;
mod purity;
mod recovery;
mod swarm;
mod trust;
mod uploads;
