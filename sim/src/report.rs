//! The report of a run: the figures the CLI prints as JSON (`--json`) or as a table.

use serde::Serialize;

/// When a wave opened and when its last device became healthy, seconds after the announcement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaveTimes {
    /// Wave index (0-based).
    pub wave: u32,
    /// Devices assigned to the wave.
    pub devices: u32,
    /// When the controller opened it.
    pub opened_s: Option<f64>,
    /// When every online device of the wave reported healthy.
    pub finished_s: Option<f64>,
}

/// The terms of the lower bound, seconds (see `sim/README.md`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BoundTerms {
    /// `F / d_min`.
    pub single_device: f64,
    /// The largest site term.
    pub site: f64,
    /// The all-devices term.
    pub all_devices: f64,
    /// `S·F / (u_s + Σ WAN up)`.
    pub import: f64,
}

/// Where the time of a run went: when the devices reached each step (seconds after the
/// announcement was published; p50 / p99 / max over the devices that staged), and how busy the
/// links were.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Timeline {
    /// The node accepted the announcement.
    pub announced_s: [f64; 3],
    /// The manifest verified.
    pub manifest_s: [f64; 3],
    /// The first chunk stored.
    pub first_chunk_s: [f64; 3],
    /// Staged.
    pub staged_s: [f64; 3],
    /// Per device, `F / d / (staged - first chunk)`: how close its download came to its line
    /// rate once chunks flowed (p50, p1, min).
    pub download_efficiency: [f64; 3],
    /// Builder egress over `u_s ·` completion.
    pub origin_utilisation: f64,
    /// Bytes moved over the network in all (cancelled transfers included), in units of
    /// `devices · F`.
    pub total_bytes_per_device_release: f64,
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Master seed.
    pub seed: u64,
    /// Devices in the fleet.
    pub devices: u32,
    /// Sites.
    pub sites: u32,
    /// Unique bytes of the release.
    pub release_bytes: u64,
    /// Chunks of the release.
    pub chunks: u64,
    /// When the last online honest device had the whole release staged (s after announcement).
    pub completion_s: Option<f64>,
    /// Median staging time.
    pub median_s: Option<f64>,
    /// 99th percentile staging time.
    pub p99_s: Option<f64>,
    /// 99.9th percentile staging time.
    pub p999_s: Option<f64>,
    /// The lower bound (see `sim/README.md`).
    pub lower_bound_s: f64,
    /// The client-server time.
    pub client_server_s: f64,
    /// The terms of the lower bound: single device, largest site, all devices, site imports.
    pub bound_terms_s: BoundTerms,
    /// Bytes the builder sent.
    pub builder_egress_bytes: u64,
    /// The most bytes that entered one site over its WAN.
    pub max_site_ingress_bytes: u64,
    /// Chunks stored whose bytes did not match their digest (must be 0).
    pub corrupt_chunks_stored: u64,
    /// Peers banned by devices (sum over devices).
    pub peers_banned: u64,
    /// Chunk requests devices made (answered or not).
    pub chunk_requests: u64,
    /// Of those, to a device on another site.
    pub remote_chunk_requests: u64,
    /// Of those, to the builder's origin.
    pub origin_chunk_requests: u64,
    /// Origin requests answered `Busy` (all upload slots taken).
    pub origin_busy: u64,
    /// Wave open and finish times.
    pub waves: Vec<WaveTimes>,
    /// Whether the controller paused the rollout.
    pub rollout_paused: bool,
    /// Devices running the release at the end.
    pub activated_devices: u32,
    /// Devices that rolled back.
    pub rolled_back_devices: u32,
    /// Online honest devices that staged the release.
    pub staged_devices: u32,
    /// Online honest devices at the end.
    pub online_devices: u32,
    /// Processed events.
    pub events: u64,
    /// Virtual time at the end of the run.
    pub end_s: f64,
    /// Wall-clock duration of the run.
    pub wall_ms: u64,
    /// Peak resident memory of the process (VmHWM).
    pub peak_rss_bytes: u64,
    /// BLAKE3 over the ordered event trace (hex).
    pub trace_hash: String,
    /// Whether every online device converged after the faults healed.
    pub liveness_ok: bool,
    /// Where the time went.
    pub timeline: Timeline,
}

/// Percentile `p` (0..=1) of sorted values, nearest-rank.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Peak resident set size of this process in bytes, from `/proc/self/status` (0 if unknown).
pub fn peak_rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.3}"))
}

impl Report {
    /// The report as a readable table.
    pub fn table(&self) -> String {
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
        let ratio = |v: Option<f64>| {
            v.map_or_else(
                || "-".to_string(),
                |x| format!("{:.3}× bound", x / self.lower_bound_s),
            )
        };
        let mut rows: Vec<(String, String)> = vec![
            (
                "scenario".into(),
                format!("{} (seed {})", self.scenario, self.seed),
            ),
            (
                "devices / sites".into(),
                format!("{} / {}", self.devices, self.sites),
            ),
            (
                "release".into(),
                format!("{} in {} chunks", mib(self.release_bytes), self.chunks),
            ),
            (
                "completion_s".into(),
                format!("{}  ({})", opt(self.completion_s), ratio(self.completion_s)),
            ),
            (
                "median_s".into(),
                format!("{}  ({})", opt(self.median_s), ratio(self.median_s)),
            ),
            ("p99_s".into(), opt(self.p99_s)),
            ("p999_s".into(), opt(self.p999_s)),
            ("lower_bound_s".into(), format!("{:.3}", self.lower_bound_s)),
            (
                "client_server_s".into(),
                format!("{:.3}", self.client_server_s),
            ),
            (
                "builder_egress".into(),
                format!(
                    "{} ({:.3}× release)",
                    mib(self.builder_egress_bytes),
                    self.builder_egress_bytes as f64 / self.release_bytes as f64
                ),
            ),
            (
                "max_site_ingress".into(),
                format!(
                    "{} ({:.3}× release)",
                    mib(self.max_site_ingress_bytes),
                    self.max_site_ingress_bytes as f64 / self.release_bytes as f64
                ),
            ),
            (
                "corrupt_chunks_stored".into(),
                self.corrupt_chunks_stored.to_string(),
            ),
            ("peers_banned".into(), self.peers_banned.to_string()),
            (
                "chunk requests".into(),
                format!(
                    "{} ({} remote, {} origin, {} origin busy)",
                    self.chunk_requests,
                    self.remote_chunk_requests,
                    self.origin_chunk_requests,
                    self.origin_busy
                ),
            ),
            (
                "staged / online".into(),
                format!("{} / {}", self.staged_devices, self.online_devices),
            ),
            (
                "activated / rolled back".into(),
                format!("{} / {}", self.activated_devices, self.rolled_back_devices),
            ),
            ("rollout paused".into(), self.rollout_paused.to_string()),
        ];
        for w in &self.waves {
            rows.push((
                format!("wave {} ({} devices)", w.wave, w.devices),
                format!("opened {}  finished {}", opt(w.opened_s), opt(w.finished_s)),
            ));
        }
        rows.extend([
            (
                "liveness".into(),
                if self.liveness_ok { "ok" } else { "FAILED" }.to_string(),
            ),
            ("events".into(), self.events.to_string()),
            ("virtual end_s".into(), format!("{:.3}", self.end_s)),
            ("wall_ms".into(), self.wall_ms.to_string()),
            ("peak_rss".into(), mib(self.peak_rss_bytes)),
            ("trace_hash".into(), self.trace_hash.clone()),
        ]);
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<width$}  {v}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(500.0));
        assert_eq!(percentile(&v, 0.99), Some(990.0));
        assert_eq!(percentile(&v, 0.999), Some(999.0));
        assert_eq!(percentile(&[3.0], 0.999), Some(3.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(peak_rss_bytes() > 0);
        }
    }
}
