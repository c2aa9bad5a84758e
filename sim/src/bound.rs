//! The lower bound on completion time, and the client-server time for comparison.
//!
//! For a set `X` of receivers, `c(X)` is the capacity into `X` from outside it and `U_X` the
//! upload capacity of `X`'s own members. Every member needs all `F` bytes, so
//! `T ≥ max{ F/c(X), |X|·F/(c(X)+U_X) }`: the release must cross the cut once, and all `|X|·F`
//! bytes come either across the cut or from members' uploads. We evaluate it for
//!
//! - each single device: `c = d_i` (its download), `U = 0`: `F/d_min`;
//! - each site `s`: `c = WAN down_s`, `U = Σ up` of its devices;
//! - all devices: `c = u_s` (builder uplink), `U = Σ up` of all devices;
//! - the inter-site import term: each of `S` sites must import `F` over its WAN down, supplied
//!   by the builder and the other sites' WAN uplinks: `S·F / (u_s + Σ WAN up)`;
//!
//! and take the largest. The client-server time `max{N·F/u_s, F/d_min}` is what the builder
//! alone would need. Device capacities are the device's own capped by the site's LAN port speed.
//! Latency is not part of the bound (it adds a few round trips).

use crate::scenario::{Scenario, mbps_to_bytes_per_s};

/// Bound figures of a scenario, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    /// The largest of all terms.
    pub lower_bound_s: f64,
    /// `F / d_min`.
    pub single_device_s: f64,
    /// The largest site term.
    pub site_s: f64,
    /// The all-devices term.
    pub all_devices_s: f64,
    /// The inter-site import term.
    pub import_s: f64,
    /// `max{N·F/u_s, F/d_min}`.
    pub client_server_s: f64,
}

/// Compute the bound of a scenario (all sites alike, devices spread round-robin).
pub fn of(s: &Scenario) -> Bound {
    let f = s.release_bytes() as f64;
    let n = f64::from(s.fleet.devices);
    let sites = s.fleet.sites;
    let net = &s.network;
    let lan = mbps_to_bytes_per_s(net.lan_mbps);
    let up = mbps_to_bytes_per_s(net.device_up_mbps).min(lan);
    let down = mbps_to_bytes_per_s(net.device_down_mbps).min(lan);
    let us = mbps_to_bytes_per_s(net.builder_up_mbps);
    let wan_down = mbps_to_bytes_per_s(net.wan_down_mbps);
    let wan_up = mbps_to_bytes_per_s(net.wan_up_mbps);
    let term = |x: f64, c: f64, u: f64| (f / c).max(x * f / (c + u));

    let single = f / down;
    let mut site = 0.0f64;
    for i in 0..sites {
        let members = f64::from(s.fleet.devices / sites + u32::from(i < s.fleet.devices % sites));
        if members > 0.0 {
            site = site.max(term(members, wan_down, members * up));
        }
    }
    let all = term(n, us, n * up);
    let import = f64::from(sites) * f / (us + f64::from(sites) * wan_up);
    let lower = single.max(site).max(all).max(import);
    Bound {
        lower_bound_s: lower,
        single_device_s: single,
        site_s: site,
        all_devices_s: all,
        import_s: import,
        client_server_s: (n * f / us).max(single),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_10k_shape_is_bounded_by_the_site_wan() {
        let mut s = Scenario::default();
        s.fleet.devices = 10_000;
        s.fleet.sites = 100;
        s.release.size_mib = 1024.0;
        s.network.builder_up_mbps = 10_000.0;
        let b = of(&s);
        let f = 1024.0 * 1024.0 * 1024.0;
        let gbit = 1e9 / 8.0;
        assert!((b.site_s - f / gbit).abs() < 1e-9);
        assert!((b.import_s - 100.0 * f / (10.0 * gbit + 100.0 * gbit)).abs() < 1e-9);
        assert_eq!(b.lower_bound_s, b.site_s.max(b.all_devices_s));
        assert!((b.client_server_s - 10_000.0 * f / (10.0 * gbit)).abs() < 1e-6);
    }

    #[test]
    fn slow_builder_and_slow_wan_dominate_when_they_are_the_cut() {
        let mut s = Scenario::default();
        s.fleet.devices = 10;
        s.fleet.sites = 2;
        s.network.builder_up_mbps = 1.0;
        s.network.wan_up_mbps = 1.0;
        let b = of(&s);
        let f = s.release_bytes() as f64;
        assert!((b.lower_bound_s - f / 125_000.0).abs() < 1e-6);
        s.network.builder_up_mbps = 1000.0;
        s.network.wan_down_mbps = 8.0;
        let b = of(&s);
        assert!((b.lower_bound_s - f / 1e6).abs() < 1e-6);
    }
}
