//! Scenario files: what fleet, network, release, rollout and faults a run simulates.
//!
//! A scenario is a TOML file (see `sim/scenarios/*.toml`); every section and key is optional and
//! falls back to [`Scenario::default`]. Rates are in Mbit/s (10^6 bit/s), sizes in MiB, times in
//! seconds unless the key says otherwise. The CLI's overrides ([`Overrides`]) are applied on top.

use serde::{Deserialize, Serialize};

/// A complete simulation setup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Short name, shown in reports and replay commands.
    pub name: String,
    /// Master seed used when the command line gives none.
    pub seed: u64,
    /// Fleet shape.
    pub fleet: Fleet,
    /// Link capacities, latencies and losses.
    pub network: Network,
    /// The release being rolled out.
    pub release: Release,
    /// Gossip mesh model.
    pub gossip: Gossip,
    /// Device runtime model (apply, health).
    pub runtime: Runtime,
    /// Rollout plan.
    pub rollout: Rollout,
    /// Faults drawn from the seed.
    pub faults: Faults,
    /// Safety limits of the run.
    pub limits: Limits,
}

/// Fleet shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fleet {
    /// Number of devices (the builder is extra).
    pub devices: u32,
    /// Number of sites; devices are spread round-robin.
    pub sites: u32,
    /// Peers on the same site each device is introduced to.
    pub local_peers: u32,
    /// Peers on other sites each device is introduced to.
    pub remote_peers: u32,
    /// Whether each device knows every device of its site, connected or not (as mDNS on a LAN
    /// gives it), and tells its core (`Input::SiteMembers`), which then splits the site's
    /// imports exactly. Off: a core knows only its connected same-site peers.
    pub site_discovery: bool,
}

/// Link capacities (Mbit/s), latencies (ms) and loss (probability per message).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    /// Builder uplink.
    pub builder_up_mbps: f64,
    /// Each site's WAN downlink.
    pub wan_down_mbps: f64,
    /// Each site's WAN uplink.
    pub wan_up_mbps: f64,
    /// Each site's LAN port speed (a non-blocking switch): caps every device's up and down.
    pub lan_mbps: f64,
    /// Device upload capacity.
    pub device_up_mbps: f64,
    /// Device download capacity.
    pub device_down_mbps: f64,
    /// One-way latency between two devices of a site.
    pub lan_latency_ms: f64,
    /// One-way latency between sites, and between a site and the builder.
    pub wan_latency_ms: f64,
    /// Probability that a control message (not a chunk) on the LAN is lost.
    pub lan_loss: f64,
    /// Probability that a control message (not a chunk) crossing a WAN is lost.
    pub wan_loss: f64,
}

/// The release: its size and how it is cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Release {
    /// Total unique bytes, in MiB (fractions allowed).
    pub size_mib: f64,
    /// Chunk size in KiB (the average of content-defined chunking; the simulator uses it as a
    /// fixed size, the last chunk holding the remainder).
    pub chunk_kib: u32,
}

/// Gossip mesh model (announcements, wave control).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gossip {
    /// Mesh degree: each node forwards to this many mesh neighbours.
    pub mesh_degree: u32,
    /// Per-hop delay in milliseconds (validation + queueing), on top of link latency.
    pub hop_delay_ms: f64,
    /// Probability a gossip hop is lost.
    pub loss: f64,
}

/// Device runtime model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Runtime {
    /// Time to load images and start the release, in seconds.
    pub apply_s: f64,
    /// Time until the health verdict after start, in seconds.
    pub health_s: f64,
    /// Chance that an activation of the release fails its health check.
    pub fail_chance: f64,
    /// Waves (0-based) whose every device fails the health check (a bad release caught there).
    pub fail_in_waves: Vec<u32>,
}

/// Rollout plan of the release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rollout {
    /// Waves, each a share of the fleet in percent; must add up to 100.
    pub waves: Vec<WaveSpec>,
    /// Seconds after which a wave that has not succeeded pauses the rollout.
    pub progress_deadline_s: u64,
}

/// One wave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WaveSpec {
    /// Share of the fleet.
    pub percent: u8,
    /// Reports needed before the wave can be judged.
    pub min_sample: u32,
    /// Healthy share needed to advance.
    pub success_threshold_pct: u8,
    /// Failed share that pauses the rollout.
    pub error_threshold_pct: u8,
    /// Wait after success before opening the next wave.
    pub bake_time_s: u64,
}

/// Faults, drawn from the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of devices that go offline once during the transfer and come back.
    pub churn: f64,
    /// How long a churned device stays offline, in seconds.
    pub churn_offline_s: f64,
    /// Share of devices that crash once and restart from their last snapshot.
    pub crash: f64,
    /// Share of devices that are byzantine (corrupt chunks, false advertisements, trickling).
    pub byzantine_ratio: f64,
    /// Number of sites partitioned from everything outside them for a while.
    pub partitioned_sites: u32,
    /// When the partition starts, in seconds after the announcement.
    pub partition_start_s: f64,
    /// How long the partition lasts, in seconds.
    pub partition_s: f64,
    /// Faults start within this window after the announcement (seconds).
    pub window_s: f64,
}

/// Safety limits of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Virtual time after which the run stops and liveness is judged, in seconds.
    pub max_time_s: f64,
    /// Processed events after which the run stops.
    pub max_events: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "default".into(),
            seed: 1,
            fleet: Fleet::default(),
            network: Network::default(),
            release: Release::default(),
            gossip: Gossip::default(),
            runtime: Runtime::default(),
            rollout: Rollout::default(),
            faults: Faults::default(),
            limits: Limits::default(),
        }
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            devices: 100,
            sites: 4,
            local_peers: 8,
            remote_peers: 3,
            site_discovery: true,
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Network {
            builder_up_mbps: 1000.0,
            wan_down_mbps: 1000.0,
            wan_up_mbps: 1000.0,
            lan_mbps: 1000.0,
            device_up_mbps: 1000.0,
            device_down_mbps: 1000.0,
            lan_latency_ms: 0.5,
            wan_latency_ms: 20.0,
            lan_loss: 0.0,
            wan_loss: 0.0,
        }
    }
}

impl Default for Release {
    fn default() -> Self {
        Release {
            size_mib: 64.0,
            chunk_kib: 256,
        }
    }
}

impl Default for Gossip {
    fn default() -> Self {
        Gossip {
            mesh_degree: 6,
            hop_delay_ms: 5.0,
            loss: 0.0,
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            apply_s: 5.0,
            health_s: 10.0,
            fail_chance: 0.0,
            fail_in_waves: Vec::new(),
        }
    }
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            waves: vec![WaveSpec::default()],
            progress_deadline_s: 3600,
        }
    }
}

impl Default for WaveSpec {
    fn default() -> Self {
        WaveSpec {
            percent: 100,
            min_sample: 1,
            success_threshold_pct: 90,
            error_threshold_pct: 10,
            bake_time_s: 0,
        }
    }
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            churn: 0.0,
            churn_offline_s: 20.0,
            crash: 0.0,
            byzantine_ratio: 0.0,
            partitioned_sites: 0,
            partition_start_s: 1.0,
            partition_s: 30.0,
            window_s: 30.0,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_time_s: 7200.0,
            max_events: 2_000_000_000,
        }
    }
}

/// Why a scenario cannot be loaded or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid scenario TOML.
    #[error("invalid scenario TOML: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value is out of range; the string says which and why.
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

/// Command-line overrides (`shoal-sim run --devices N ...`); `None` keeps the scenario's value.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct Overrides {
    /// Number of devices (spread round-robin over the sites).
    #[arg(long)]
    pub devices: Option<u32>,
    /// Number of sites.
    #[arg(long)]
    pub sites: Option<u32>,
    /// Release size in MiB.
    #[arg(long)]
    pub release_mib: Option<f64>,
    /// The builder's uplink, Mbit/s.
    #[arg(long)]
    pub builder_up_mbps: Option<f64>,
    /// Each site's WAN downlink, Mbit/s.
    #[arg(long)]
    pub wan_down_mbps: Option<f64>,
    /// Each site's WAN uplink, Mbit/s.
    #[arg(long)]
    pub wan_up_mbps: Option<f64>,
    /// A site's LAN port speed, Mbit/s (caps each device's up and down).
    #[arg(long)]
    pub lan_mbps: Option<f64>,
    /// Each device's upload, Mbit/s.
    #[arg(long)]
    pub device_up_mbps: Option<f64>,
    /// Each device's download, Mbit/s.
    #[arg(long)]
    pub device_down_mbps: Option<f64>,
    /// Share of byzantine devices (0..=1).
    #[arg(long)]
    pub byzantine_ratio: Option<f64>,
    /// Share of devices that go offline once (0..=1).
    #[arg(long)]
    pub churn: Option<f64>,
}

impl Scenario {
    /// Parse a scenario from TOML text and check it.
    pub fn from_toml(text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text)?;
        s.check()?;
        Ok(s)
    }

    /// Read and parse a scenario file.
    pub fn load(path: &str) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_string(),
            source,
        })?;
        Scenario::from_toml(&text)
    }

    /// Apply command-line overrides, then check the result.
    pub fn apply(&mut self, o: &Overrides) -> Result<(), ScenarioError> {
        let n = &mut self.network;
        macro_rules! set {
            ($dst:expr, $src:expr) => {
                if let Some(v) = $src {
                    $dst = v;
                }
            };
        }
        set!(self.fleet.devices, o.devices);
        set!(self.fleet.sites, o.sites);
        set!(self.release.size_mib, o.release_mib);
        set!(n.builder_up_mbps, o.builder_up_mbps);
        set!(n.wan_down_mbps, o.wan_down_mbps);
        set!(n.wan_up_mbps, o.wan_up_mbps);
        set!(n.lan_mbps, o.lan_mbps);
        set!(n.device_up_mbps, o.device_up_mbps);
        set!(n.device_down_mbps, o.device_down_mbps);
        set!(self.faults.byzantine_ratio, o.byzantine_ratio);
        set!(self.faults.churn, o.churn);
        self.check()
    }

    /// Check ranges and consistency.
    pub fn check(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if self.fleet.devices == 0 || self.fleet.devices > 1_000_000 {
            return bad(format!(
                "devices must be 1..=1000000, not {}",
                self.fleet.devices
            ));
        }
        if self.fleet.sites == 0 || self.fleet.sites > self.fleet.devices {
            return bad(format!(
                "sites must be 1..=devices ({}), not {}",
                self.fleet.devices, self.fleet.sites
            ));
        }
        let n = &self.network;
        for (what, v) in [
            ("builder_up_mbps", n.builder_up_mbps),
            ("wan_down_mbps", n.wan_down_mbps),
            ("wan_up_mbps", n.wan_up_mbps),
            ("lan_mbps", n.lan_mbps),
            ("device_up_mbps", n.device_up_mbps),
            ("device_down_mbps", n.device_down_mbps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{what} must be a positive number, not {v}"));
            }
        }
        for (what, v) in [
            ("lan_loss", n.lan_loss),
            ("wan_loss", n.wan_loss),
            ("gossip.loss", self.gossip.loss),
            ("runtime.fail_chance", self.runtime.fail_chance),
            ("faults.churn", self.faults.churn),
            ("faults.crash", self.faults.crash),
            ("faults.byzantine_ratio", self.faults.byzantine_ratio),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{what} must be within 0..=1, not {v}"));
            }
        }
        for (what, v) in [
            ("lan_loss", n.lan_loss),
            ("wan_loss", n.wan_loss),
            ("gossip.loss", self.gossip.loss),
        ] {
            if v >= 0.5 {
                return bad(format!("{what} must be below 0.5, not {v}"));
            }
        }
        if !(self.release.size_mib.is_finite() && self.release.size_mib > 0.0) {
            return bad("release.size_mib must be positive".into());
        }
        if self.release.chunk_kib == 0 || self.release.chunk_kib > 16 * 1024 {
            return bad("release.chunk_kib must be 1..=16384".into());
        }
        if self.chunk_count() > 262_144 {
            return bad("release has more than 262144 chunks".into());
        }
        if self.gossip.mesh_degree == 0 {
            return bad("gossip.mesh_degree must be at least 1".into());
        }
        if self.fleet.sites as usize > usize::MAX / 2 {
            return bad("too many sites".into());
        }
        if self.faults.partitioned_sites > self.fleet.sites {
            return bad("faults.partitioned_sites exceeds sites".into());
        }
        let total: u32 = self
            .rollout
            .waves
            .iter()
            .map(|w| u32::from(w.percent))
            .sum();
        if self.rollout.waves.is_empty() || total != 100 || self.rollout.waves.len() > 16 {
            return bad(format!(
                "rollout needs 1..=16 waves adding up to 100%, has {} adding up to {total}",
                self.rollout.waves.len()
            ));
        }
        for (what, v) in [
            ("runtime.apply_s", self.runtime.apply_s),
            ("runtime.health_s", self.runtime.health_s),
            ("network.lan_latency_ms", n.lan_latency_ms),
            ("network.wan_latency_ms", n.wan_latency_ms),
            ("gossip.hop_delay_ms", self.gossip.hop_delay_ms),
            ("faults.churn_offline_s", self.faults.churn_offline_s),
            ("faults.partition_start_s", self.faults.partition_start_s),
            ("faults.partition_s", self.faults.partition_s),
            ("faults.window_s", self.faults.window_s),
            ("limits.max_time_s", self.limits.max_time_s),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{what} must be a non-negative number, not {v}"));
            }
        }
        Ok(())
    }

    /// Release size in bytes.
    pub fn release_bytes(&self) -> u64 {
        (self.release.size_mib * 1024.0 * 1024.0).round() as u64
    }

    /// Chunk size in bytes.
    pub fn chunk_bytes(&self) -> u64 {
        u64::from(self.release.chunk_kib) * 1024
    }

    /// Number of chunks of the release.
    pub fn chunk_count(&self) -> u64 {
        self.release_bytes().div_ceil(self.chunk_bytes()).max(1)
    }
}

/// Mbit/s to bytes per second.
pub fn mbps_to_bytes_per_s(mbps: f64) -> f64 {
    mbps * 1e6 / 8.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_is_the_default_and_overrides_apply() {
        let mut s = Scenario::from_toml("").unwrap();
        assert_eq!(s, Scenario::default());
        s.apply(&Overrides {
            devices: Some(30),
            release_mib: Some(2.0),
            churn: Some(0.1),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(s.fleet.devices, 30);
        assert_eq!(s.release_bytes(), 2 * 1024 * 1024);
        assert_eq!(s.chunk_count(), 8);
        assert_eq!(s.faults.churn, 0.1);
    }

    #[test]
    fn bad_values_are_typed_errors() {
        assert!(matches!(
            Scenario::from_toml("[fleet]\ndevices = 0"),
            Err(ScenarioError::Invalid(_))
        ));
        assert!(matches!(
            Scenario::from_toml("[fleet]\nbogus = 1"),
            Err(ScenarioError::Parse(_))
        ));
        assert!(matches!(
            Scenario::from_toml("[[rollout.waves]]\npercent = 50"),
            Err(ScenarioError::Invalid(_))
        ));
        let mut s = Scenario::default();
        assert!(
            s.apply(&Overrides {
                byzantine_ratio: Some(1.5),
                ..Overrides::default()
            })
            .is_err()
        );
    }
}
