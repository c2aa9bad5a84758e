//! placeholder

pub mod rollout;
