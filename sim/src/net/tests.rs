use super::*;

fn topo() -> Topology {
    // builder 100 B/s; site 0: WAN up 50 down 30; site 1: WAN up 50 down 1000.
    Topology {
        builder_up: 100.0,
        sites: vec![(50.0, 30.0), (50.0, 1000.0)],
        devices: vec![
            (0, 1000.0, 1000.0),
            (0, 1000.0, 1000.0),
            (1, 1000.0, 1000.0),
            (1, 40.0, 1000.0),
        ],
    }
}

fn run_all(net: &mut Net, mut now: Nanos) -> Vec<(Nanos, Done)> {
    let mut out = Vec::new();
    loop {
        net.flush(now);
        let Some(t) = net.next_time() else { break };
        now = t;
        while let Some(d) = net.pop_done(now) {
            out.push((now, d));
        }
    }
    out
}

const B: Endpoint = Endpoint::Builder;
fn d(i: u32) -> Endpoint {
    Endpoint::Device(i)
}

#[test]
fn max_min_fair_across_bottlenecks() {
    let mut net = Net::new(&topo());
    assert!(net.start(0, B, d(0), 300, 1, f64::INFINITY));
    assert!(net.start(0, B, d(2), 700, 2, f64::INFINITY));
    net.flush(0);
    // Site 0's WAN down (30) limits the first; the second takes the rest of the builder (70).
    assert_eq!(net.rate(B, d(0)), Some(30.0));
    assert_eq!(net.rate(B, d(2)), Some(70.0));
    let done = run_all(&mut net, 0);
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].0, 10 * SECOND);
    assert_eq!(done[1].0, 10 * SECOND);
    let c = net.counters();
    assert!((c.builder_egress - 1000.0).abs() < 1e-6);
    assert!((c.site_ingress[0] - 300.0).abs() < 1e-6);
    assert!((c.site_ingress[1] - 700.0).abs() < 1e-6);
}

#[test]
fn rates_are_recomputed_when_a_flow_leaves() {
    let mut net = Net::new(&topo());
    net.start(0, B, d(2), 100, 1, f64::INFINITY);
    net.start(0, B, d(3), 500, 2, f64::INFINITY);
    net.flush(0);
    assert_eq!(net.rate(B, d(2)), Some(50.0));
    let done = run_all(&mut net, 0);
    // First finishes at 2 s (100 B at 50 B/s); the second then has 400 B left at 100 B/s.
    assert_eq!(
        done[0],
        (
            2 * SECOND,
            Done {
                from: B,
                to: d(2),
                tag: 1
            }
        )
    );
    assert_eq!(
        done[1],
        (
            6 * SECOND,
            Done {
                from: B,
                to: d(3),
                tag: 2
            }
        )
    );
}

#[test]
fn pipelined_transfers_of_a_pair_finish_in_order() {
    let mut net = Net::new(&topo());
    for tag in 0..3 {
        net.start(0, d(0), d(1), 1000, tag, f64::INFINITY);
    }
    assert_eq!(net.flow_count(), 1);
    let done = run_all(&mut net, 0);
    let times: Vec<_> = done.iter().map(|(t, d)| (*t, d.tag)).collect();
    assert_eq!(times, vec![(SECOND, 0), (2 * SECOND, 1), (3 * SECOND, 2)]);
    assert_eq!(net.flow_count(), 0);
    assert_eq!(net.counters().site_ingress, vec![0.0, 0.0]);
}

#[test]
fn cross_site_flows_take_wan_and_local_flows_get_the_leftover() {
    let mut net = Net::new(&topo());
    // Cross-site into device 1 is limited by site 0's WAN down (30).
    net.start(0, d(2), d(1), 30, 1, f64::INFINITY);
    // Local into device 1 gets what is left of its 1000 B/s down.
    net.start(0, d(0), d(1), 970, 2, f64::INFINITY);
    net.flush(0);
    assert_eq!(net.rate(d(2), d(1)), Some(30.0));
    assert_eq!(net.rate(d(0), d(1)), Some(970.0));
    // A slow sender's upload (40) bounds its flow.
    net.start(0, d(3), d(0), 40, 3, f64::INFINITY);
    net.flush(0);
    assert_eq!(net.rate(d(3), d(0)), Some(15.0));
    assert_eq!(net.rate(d(2), d(1)), Some(15.0));
}

#[test]
fn cancel_and_cap() {
    let mut net = Net::new(&topo());
    net.start(0, d(0), d(1), 1000, 1, 1.0);
    net.start(0, d(0), d(1), 1000, 2, 1.0);
    net.flush(0);
    assert_eq!(net.rate(d(0), d(1)), Some(1.0));
    assert!(net.cancel(5 * SECOND, d(0), d(1), 1));
    assert!(!net.cancel(5 * SECOND, d(0), d(1), 1));
    let gone = net.cancel_where(6 * SECOND, |a, _| a == d(0));
    assert_eq!(
        gone,
        vec![Done {
            from: d(0),
            to: d(1),
            tag: 2
        }]
    );
    assert_eq!(net.flow_count(), 0);
    net.flush(6 * SECOND);
    assert_eq!(net.next_time(), None);
    assert!((net.counters().total - 6.0).abs() < 1e-9);
    assert!(!net.start(0, d(0), d(0), 10, 9, f64::INFINITY));
    assert!(!net.start(0, d(0), d(99), 10, 9, f64::INFINITY));
}

#[test]
fn no_link_is_ever_over_capacity_under_random_churn() {
    let topo = Topology {
        builder_up: 300.0,
        sites: vec![(80.0, 120.0), (50.0, 70.0), (200.0, 40.0)],
        devices: (0..12)
            .map(|i| (i % 3, 30.0 + f64::from(i) * 7.0, 60.0 + f64::from(i) * 5.0))
            .collect(),
    };
    let mut net = Net::new(&topo);
    let mut rng = crate::rng::Rng::new(9);
    let mut now = 0;
    let mut tag = 0;
    for _ in 0..400 {
        let from = if rng.chance(0.2) {
            B
        } else {
            d(rng.below(12) as u32)
        };
        let to = d(rng.below(12) as u32);
        tag += 1;
        net.start(now, from, to, 1 + rng.below(500), tag, f64::INFINITY);
        if rng.chance(0.3) {
            net.cancel_where(now, |a, b| a == from && b != to);
        }
        net.flush(now);
        let mut per_link = vec![0.0; net.caps.len()];
        for f in net.flows.iter().filter(|f| f.live) {
            for &l in &f.links[..f.nlinks as usize] {
                per_link[l as usize] += f.rate;
            }
        }
        for (l, used) in per_link.iter().enumerate() {
            assert!(
                *used <= net.caps[l] * (1.0 + 1e-9) + 1e-9,
                "link {l}: {used} > {}",
                net.caps[l]
            );
            assert!((net.used[l] - used).abs() < 1e-6, "link {l} use drifted");
        }
        if let Some(t) = net.next_time() {
            now = t;
            while net.pop_done(now).is_some() {}
        }
    }
    // Everything drains.
    loop {
        net.flush(now);
        let Some(t) = net.next_time() else { break };
        now = t;
        while net.pop_done(now).is_some() {}
    }
    assert_eq!(net.flow_count(), 0);
}
