//! Every scenario file at small size with fixed seeds, determinism of the trace, the CLI, and a
//! property test over seeds (invariants + liveness) on small fleets.

use proptest::prelude::*;
use shoal_sim::{Overrides, Scenario, Sim};

fn load(name: &str) -> Scenario {
    let path = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    Scenario::load(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn small(name: &str, devices: u32, sites: u32, mib: f64) -> Scenario {
    let mut s = load(name);
    s.apply(&Overrides {
        devices: Some(devices),
        sites: Some(sites),
        release_mib: Some(mib),
        ..Overrides::default()
    })
    .unwrap();
    s
}

fn run(s: &Scenario, seed: u64) -> shoal_sim::Report {
    shoal_sim::run(s, seed, &s.name).unwrap_or_else(|e| panic!("{e}"))
}

/// What every healthy run shows: everyone online staged, never faster than the bound, the
/// builder sent the release at least once, no corrupt chunk kept.
fn assert_converged(r: &shoal_sim::Report) {
    assert!(r.liveness_ok, "{}", r.table());
    assert_eq!(r.staged_devices, r.online_devices, "{}", r.table());
    let done = r.completion_s.expect("completion time");
    assert!(done >= r.lower_bound_s, "{}", r.table());
    assert!(r.median_s.unwrap() <= done);
    assert!(r.p99_s.unwrap() <= r.p999_s.unwrap());
    assert!(r.builder_egress_bytes >= r.release_bytes, "{}", r.table());
    assert_eq!(r.corrupt_chunks_stored, 0);
    assert!(r.lower_bound_s <= r.client_server_s);
}

#[test]
fn every_scenario_file_parses() {
    for name in [
        "smoke",
        "fleet-10k",
        "constrained-wan",
        "kraken",
        "hostile",
        "waves",
    ] {
        let s = load(name);
        assert_eq!(s.name, name);
    }
    let s = load("fleet-10k");
    assert_eq!((s.fleet.devices, s.fleet.sites), (10_000, 100));
    assert_eq!(s.release_bytes(), 1 << 30);
}

#[test]
fn smoke_small_converges_and_activates_everyone() {
    let r = run(&small("smoke", 20, 2, 2.0), 1);
    assert_converged(&r);
    assert_eq!(r.activated_devices, 20);
    assert_eq!(r.peers_banned, 0);
    assert!(!r.rollout_paused);
    assert!(r.waves[0].finished_s.is_some());
}

#[test]
fn fleet_10k_shape_small_converges() {
    let r = run(&small("fleet-10k", 30, 5, 4.0), 2);
    assert_converged(&r);
}

#[test]
fn constrained_wan_small_converges_above_its_bound() {
    let r = run(&small("constrained-wan", 24, 3, 2.0), 3);
    assert_converged(&r);
    // The thin WAN is the cut: the bound is the site's import over 100 Mbit/s.
    let f = r.release_bytes as f64;
    assert!(r.lower_bound_s >= f / (100e6 / 8.0) - 1e-9);
}

#[test]
fn kraken_small_converges() {
    let r = run(&small("kraken", 24, 1, 8.0), 4);
    assert_converged(&r);
}

#[test]
fn hostile_small_stores_no_corrupt_chunk_and_converges_after_healing() {
    let s = small("hostile", 40, 4, 4.0);
    assert!(s.faults.byzantine_ratio > 0.0 && s.faults.churn > 0.0);
    let r = run(&s, 5);
    assert_converged(&r);
    assert!(
        r.peers_banned > 0,
        "corrupt peers are banned: {}",
        r.table()
    );
    // Byzantine devices are not part of the honest fleet that must converge.
    assert_eq!(r.online_devices, 36);
}

#[test]
fn waves_small_pauses_in_wave_two_and_later_waves_never_activate() {
    let s = small("waves", 60, 3, 2.0);
    let out = Sim::new(&s, 6, String::new()).run().unwrap();
    assert!(out.liveness_ok);
    assert!(out.rollout_paused);
    let opened: Vec<bool> = out.waves.iter().map(|w| w.1.is_some()).collect();
    assert_eq!(opened, vec![true, true, false, false]);
    // Wave 1 (the second) activated and rolled back; waves 2 and 3 never activated.
    assert!(out.activations_by_wave[1] > 0);
    assert_eq!(out.rollbacks_by_wave[1], out.activations_by_wave[1]);
    assert_eq!(out.activations_by_wave[2], 0);
    assert_eq!(out.activations_by_wave[3], 0);
    assert_eq!(out.rollbacks_by_wave[0], 0);
}

#[test]
fn same_seed_same_trace_hash() {
    let s = small("hostile", 20, 2, 1.0);
    let a = run(&s, 11);
    let b = run(&s, 11);
    let c = run(&s, 12);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.events, b.events);
    assert_eq!(a.completion_s, b.completion_s);
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn cli_prints_the_json_report() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal-sim"))
        .args(["run", "--scenario"])
        .arg(format!(
            "{}/scenarios/smoke.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(["--seed", "3", "--json", "--devices", "20", "--sites", "2"])
        .args([
            "--release-mib",
            "1",
            "--wan-down-mbps",
            "500",
            "--churn",
            "0",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "devices",
        "sites",
        "release_bytes",
        "completion_s",
        "median_s",
        "p99_s",
        "p999_s",
        "lower_bound_s",
        "client_server_s",
        "builder_egress_bytes",
        "max_site_ingress_bytes",
        "corrupt_chunks_stored",
        "peers_banned",
        "waves",
        "events",
        "wall_ms",
        "peak_rss_bytes",
        "trace_hash",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["devices"], 20);
    assert_eq!(v["release_bytes"], 1 << 20);
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_shoal-sim"))
        .args([
            "run",
            "--devices",
            "10",
            "--sites",
            "1",
            "--release-mib",
            "1",
        ])
        .output()
        .unwrap();
    assert!(table.status.success());
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("lower_bound_s") && text.contains("trace_hash"),
        "{text}"
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_shoal-sim"))
        .args(["run", "--byzantine-ratio", "2"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("byzantine_ratio"));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any seed, faults included: no invariant breaks and every online device converges.
    #[test]
    fn invariants_and_liveness_hold_over_seeds(seed in any::<u64>()) {
        let mut s = Scenario {
            name: "proptest".into(),
            ..Scenario::default()
        };
        s.fleet.devices = 16;
        s.fleet.sites = 2;
        s.release.size_mib = 1.0;
        s.faults.byzantine_ratio = 0.1;
        s.faults.churn = 0.15;
        s.faults.crash = 0.1;
        s.faults.partitioned_sites = 1;
        s.faults.partition_s = 5.0;
        s.faults.churn_offline_s = 3.0;
        s.faults.window_s = 2.0;
        let r = shoal_sim::run(&s, seed, "proptest");
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        let r = r.unwrap();
        prop_assert!(r.liveness_ok, "seed {seed}: {}", r.table());
        prop_assert_eq!(r.corrupt_chunks_stored, 0);
    }
}
