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
    /// Overrides of the scenario's fleet, network and faults.
    #[command(flatten)]
    overrides: Overrides,
}

fn main() -> anyhow::Result<()> {
    let Command::Run(a) = Cli::parse().command;
    let mut scenario = match &a.scenario {
        Some(path) => Scenario::load(path)?,
        None => Scenario::default(),
    };
    scenario.apply(&a.overrides)?;
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
