//! Faults drawn from the seed: who is byzantine, who churns or crashes and when, which sites are
//! partitioned. The plan is fixed before the run starts, so a seed names a whole run.

use crate::net::{Nanos, SECOND};
use crate::rng::Rng;
use crate::scenario::Scenario;

/// How a byzantine device misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Byzantine {
    /// Serves chunks whose bytes do not match their digest.
    Corrupt,
    /// Advertises chunks it does not have (requests for them fail).
    FalseAdverts,
    /// Serves correct bytes at 1 B/s.
    Trickle,
}

/// One scheduled fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// The device goes offline (loses its connections, keeps its state).
    Offline(u32),
    /// The device comes back online.
    Online(u32),
    /// The device crashes (loses its in-memory state).
    Crash(u32),
    /// The device restarts from its last snapshot.
    Restart(u32),
    /// The site is cut off from everything outside it.
    PartitionStart(u32),
    /// The site's partition heals.
    PartitionEnd(u32),
}

/// The fault plan of a run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Per device: its byzantine behaviour, if any.
    pub byzantine: Vec<Option<Byzantine>>,
    /// Faults with their times, sorted by time.
    pub schedule: Vec<(Nanos, Fault)>,
    /// When the last fault heals.
    pub healed_at: Nanos,
}

fn truncated_nanos(s: f64) -> Nanos {
    (s * SECOND as f64) as Nanos
}

/// Draw the fault plan of `scenario` from `seed`.
pub fn plan(scenario: &Scenario, seed: u64) -> Plan {
    let n = scenario.fleet.devices as usize;
    let f = &scenario.faults;
    let mut rng = Rng::derive(seed, 0xFA17);
    let mut order: Vec<u32> = (0..n as u32).collect();
    rng.shuffle(&mut order);
    let take = |ratio: f64| ((ratio * n as f64).round() as usize).min(n);
    let mut byzantine = vec![None; n];
    let nbyz = take(f.byzantine_ratio);
    let kinds = [
        Byzantine::Corrupt,
        Byzantine::FalseAdverts,
        Byzantine::Trickle,
    ];
    for (k, &d) in order[..nbyz].iter().enumerate() {
        byzantine[d as usize] = Some(kinds[k % kinds.len()]);
    }
    let honest = &order[nbyz..];
    let mut schedule = Vec::new();
    let window = f.window_s.max(0.001);
    let nchurn = take(f.churn).min(honest.len());
    for &d in &honest[..nchurn] {
        let at = truncated_nanos(rng.unit() * window);
        schedule.push((at, Fault::Offline(d)));
        schedule.push((at + truncated_nanos(f.churn_offline_s), Fault::Online(d)));
    }
    let ncrash = take(f.crash).min(honest.len() - nchurn);
    for &d in &honest[nchurn..nchurn + ncrash] {
        let at = truncated_nanos(rng.unit() * window);
        schedule.push((at, Fault::Crash(d)));
        schedule.push((at + 2 * SECOND, Fault::Restart(d)));
    }
    let mut sites: Vec<u32> = (0..scenario.fleet.sites).collect();
    rng.shuffle(&mut sites);
    for &s in &sites[..scenario.faults.partitioned_sites as usize] {
        let at = truncated_nanos(f.partition_start_s);
        schedule.push((at, Fault::PartitionStart(s)));
        schedule.push((at + truncated_nanos(f.partition_s), Fault::PartitionEnd(s)));
    }
    schedule.sort();
    let healed_at = schedule.last().map_or(0, |e| e.0);
    Plan {
        byzantine,
        schedule,
        healed_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_deterministic_and_respects_ratios() {
        let mut s = Scenario::default();
        s.fleet.devices = 100;
        s.faults.byzantine_ratio = 0.1;
        s.faults.churn = 0.2;
        s.faults.crash = 0.05;
        s.faults.partitioned_sites = 1;
        let a = plan(&s, 42);
        assert_eq!(a, plan(&s, 42));
        assert_ne!(a, plan(&s, 43));
        assert_eq!(a.byzantine.iter().flatten().count(), 10);
        let count = |p: fn(&Fault) -> bool| a.schedule.iter().filter(|e| p(&e.1)).count();
        assert_eq!(count(|f| matches!(f, Fault::Offline(_))), 20);
        assert_eq!(count(|f| matches!(f, Fault::Online(_))), 20);
        assert_eq!(count(|f| matches!(f, Fault::Crash(_))), 5);
        assert_eq!(count(|f| matches!(f, Fault::PartitionStart(_))), 1);
        // No byzantine device also churns.
        for (_, f) in &a.schedule {
            if let Fault::Offline(d) | Fault::Crash(d) = f {
                assert!(a.byzantine[*d as usize].is_none());
            }
        }
        assert!(a.schedule.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(a.healed_at, a.schedule.last().unwrap().0);
    }
}
