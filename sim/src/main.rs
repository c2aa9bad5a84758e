//! `shoal-sim`: run a fleet scenario and print its report.
//!
//! `shoal-sim run [--scenario FILE] [--seed N] [--json]` with overrides for the fleet and the
//! network (see `--help`). Exits with status 1 when an invariant breaks (printing the replay
//! command) and 2 when the liveness phase fails.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use shoal_sim::{Overrides, RunError, Scenario};

#[derive(Debug, Parser)]
#[command(name = "shoal-sim", about = "Deterministic fleet simulator for Shoal")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Scenario TOML file (default: the built-in 100-device scenario).
    #[arg(long)]
    scenario: Option<String>,
    /// Master seed (default: the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Number of devices (spread round-robin over the sites).
    #[arg(long)]
    devices: Option<u32>,
    /// Number of sites.
    #[arg(long)]
    sites: Option<u32>,
    /// Release size in MiB.
    #[arg(long)]
    release_mib: Option<f64>,
    /// The builder's uplink, Mbit/s.
    #[arg(long)]
    builder_up_mbps: Option<f64>,
    /// Each site's WAN downlink, Mbit/s.
    #[arg(long)]
    wan_down_mbps: Option<f64>,
    /// Each site's WAN uplink, Mbit/s.
    #[arg(long)]
    wan_up_mbps: Option<f64>,
    /// A site's LAN port speed, Mbit/s (caps each device's up and down).
    #[arg(long)]
    lan_mbps: Option<f64>,
    /// Each device's upload, Mbit/s.
    #[arg(long)]
    device_up_mbps: Option<f64>,
    /// Each device's download, Mbit/s.
    #[arg(long)]
    device_down_mbps: Option<f64>,
    /// Share of byzantine devices (0..=1).
    #[arg(long)]
    byzantine_ratio: Option<f64>,
    /// Share of devices that go offline once (0..=1).
    #[arg(long)]
    churn: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let Command::Run(a) = Cli::parse().command;
    let mut scenario = match &a.scenario {
        Some(path) => Scenario::load(path)?,
        None => Scenario::default(),
    };
    scenario.apply(&Overrides {
        devices: a.devices,
        sites: a.sites,
        release_mib: a.release_mib,
        builder_up_mbps: a.builder_up_mbps,
        wan_down_mbps: a.wan_down_mbps,
        wan_up_mbps: a.wan_up_mbps,
        lan_mbps: a.lan_mbps,
        device_up_mbps: a.device_up_mbps,
        device_down_mbps: a.device_down_mbps,
        byzantine_ratio: a.byzantine_ratio,
        churn: a.churn,
    })?;
    let seed = a.seed.unwrap_or(scenario.seed);
    let name = a.scenario.clone().unwrap_or_else(|| scenario.name.clone());
    let report = match shoal_sim::run(&scenario, seed, &name) {
        Ok(r) => r,
        Err(RunError::Invariant(v)) => {
            eprintln!("{v}");
            std::process::exit(1);
        }
        Err(e) => return Err(e).context("simulation failed"),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if !report.liveness_ok {
        eprintln!(
            "liveness failed: {} of {} online devices staged; replay: shoal-sim run --scenario {name} --seed {seed}",
            report.staged_devices, report.online_devices
        );
        std::process::exit(2);
    }
    Ok(())
}
