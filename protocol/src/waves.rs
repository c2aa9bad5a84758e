//! Which wave of a rollout a device is in.
//!
//! A device's position in `[0, 1)` is the first 8 bytes of
//! `BLAKE3("shoal-wave-v1\0" || device id || fleet || 0 || sequence)` read as a fraction of 2^64.
//! Its wave is the first whose cumulative percent covers that position. Anyone can recompute it, no
//! one can choose it, and it changes from release to release, so the same devices are not always
//! the canaries.

use crate::{DeviceId, ReleaseSeq, RolloutPlan};

/// The device's position in `[0, 1)` as a raw 64-bit fraction.
pub fn position(device: &DeviceId, fleet: &str, sequence: ReleaseSeq) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"shoal-wave-v1\0");
    h.update(&device.0);
    h.update(fleet.as_bytes());
    h.update(&[0]);
    h.update(&sequence.0.to_le_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// The wave (0-based) a position falls into. Positions past a plan whose percents fall short of
/// 100 land in the last wave.
pub fn wave_of_position(plan: &RolloutPlan, position: u64) -> u32 {
    let mut cumulative: u128 = 0;
    for (i, w) in plan.waves.iter().enumerate() {
        cumulative += u128::from(w.percent);
        // position / 2^64 < cumulative / 100
        if u128::from(position) * 100 < cumulative << 64 {
            return i as u32;
        }
    }
    plan.waves.len().saturating_sub(1) as u32
}

/// The wave (0-based) of `device` for release `sequence` of `fleet`.
pub fn wave_of(plan: &RolloutPlan, device: &DeviceId, fleet: &str, sequence: ReleaseSeq) -> u32 {
    wave_of_position(plan, position(device, fleet, sequence))
}
