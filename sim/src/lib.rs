//! # shoal-sim
//!
//! A deterministic discrete-event simulator of a Shoal fleet in virtual time. It drives the real
//! device core ([`shoal_node_core::Node`], one per device) and the rollout controller, and
//! measures a release's spread against the [`bound`] of the scenario.
//!
//! - [`scenario`]: what to simulate (TOML files in `sim/scenarios/`, CLI overrides);
//! - [`net`]: the flow-level network (max-min fair bandwidth per bottleneck group);
//! - [`faults`]: churn, crashes, partitions and byzantine peers drawn from the seed;
//! - [`driver`]: the event loop mapping core outputs to simulated effects ([`driver::Sim`]);
//! - [`bound`]: the lower bound and the client-server time;
//! - [`report`]: the figures of a run ([`run`] returns them).
//!
//! The same scenario and seed give the same event trace, whose BLAKE3 is the report's
//! `trace_hash`.

pub mod bound;
pub mod driver;
pub mod faults;
pub mod net;
pub mod report;
pub mod rng;
pub mod scenario;

pub use driver::{RunError, Sim, Violation};
pub use report::Report;
pub use scenario::{Overrides, Scenario, ScenarioError};

/// Run `scenario` with `seed` and build its report. `scenario_ref` is how the replay command
/// names the scenario (its file path, or its name).
pub fn run(scenario: &Scenario, seed: u64, scenario_ref: &str) -> Result<Report, RunError> {
    let started = std::time::Instant::now();
    let mut sim = Sim::new(scenario, seed, String::new());
    sim.set_replay(format!(
        "shoal-sim run --scenario {scenario_ref} --seed {seed}"
    ));
    let out = sim.run()?;
    let b = bound::of(scenario);
    let pct = |p| report::percentile(&out.staged_s, p);
    let timeline = timeline(scenario, &out);
    Ok(Report {
        scenario: scenario.name.clone(),
        seed,
        devices: scenario.fleet.devices,
        sites: scenario.fleet.sites,
        release_bytes: scenario.release_bytes(),
        chunks: scenario.chunk_count(),
        completion_s: if out.liveness_ok {
            out.staged_s.last().copied()
        } else {
            None
        },
        median_s: pct(0.5),
        p99_s: pct(0.99),
        p999_s: pct(0.999),
        lower_bound_s: b.lower_bound_s,
        client_server_s: b.client_server_s,
        bound_terms_s: report::BoundTerms {
            single_device: b.single_device_s,
            site: b.site_s,
            all_devices: b.all_devices_s,
            import: b.import_s,
        },
        builder_egress_bytes: out.builder_egress_bytes,
        max_site_ingress_bytes: out.max_site_ingress_bytes,
        corrupt_chunks_stored: out.corrupt_chunks_stored,
        peers_banned: out.peers_banned,
        chunk_requests: out.requests.0,
        remote_chunk_requests: out.requests.1,
        origin_chunk_requests: out.requests.2,
        origin_busy: out.requests.3,
        waves: out
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| report::WaveTimes {
                wave: i as u32,
                devices: w.0,
                opened_s: w.1,
                finished_s: w.2,
            })
            .collect(),
        rollout_paused: out.rollout_paused,
        activated_devices: out.activated,
        rolled_back_devices: out.rolled_back,
        staged_devices: out.staged_s.len() as u32,
        online_devices: out.online,
        events: out.events,
        end_s: out.end_s,
        wall_ms: started.elapsed().as_millis() as u64,
        peak_rss_bytes: report::peak_rss_bytes(),
        trace_hash: out.trace_hash,
        liveness_ok: out.liveness_ok,
        timeline,
    })
}

fn timeline(sc: &Scenario, out: &driver::Outcome) -> report::Timeline {
    let announced = 0.001;
    let column = |k: usize| {
        let mut v: Vec<f64> = out.milestones.iter().map(|m| m[k] - announced).collect();
        v.sort_by(f64::total_cmp);
        let p = |q| report::percentile(&v, q).unwrap_or(0.0);
        [p(0.5), p(0.99), v.last().copied().unwrap_or(0.0)]
    };
    let f = sc.release_bytes() as f64;
    let d = scenario::mbps_to_bytes_per_s(sc.network.device_down_mbps.min(sc.network.lan_mbps));
    let mut eff: Vec<f64> = out
        .milestones
        .iter()
        .map(|m| f / d / (m[3] - m[2]).max(1e-9))
        .collect();
    eff.sort_by(f64::total_cmp);
    let p = |q| report::percentile(&eff, q).unwrap_or(0.0);
    let completion = out.staged_s.last().copied().unwrap_or(0.0) - announced;
    let u_s = scenario::mbps_to_bytes_per_s(sc.network.builder_up_mbps);
    report::Timeline {
        announced_s: column(0),
        manifest_s: column(1),
        first_chunk_s: column(2),
        staged_s: column(3),
        download_efficiency: [p(0.5), p(0.01), eff.first().copied().unwrap_or(0.0)],
        origin_utilisation: out.builder_egress_bytes as f64 / (u_s * completion).max(1e-9),
        total_bytes_per_device_release: out.total_bytes as f64
            / (f * f64::from(sc.fleet.devices)).max(1.0),
    }
}
