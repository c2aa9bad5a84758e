//! Wave assignment follows the plan's percentages and cannot be chosen.

use shoal_protocol::waves::{position, wave_of, wave_of_position};
use shoal_protocol::{DeviceId, ReleaseSeq, RolloutPlan, Wave};

fn plan(percents: &[u8]) -> RolloutPlan {
    RolloutPlan {
        waves: percents
            .iter()
            .map(|&percent| Wave {
                percent,
                min_sample: 1,
                success_threshold_pct: 90,
                error_threshold_pct: 10,
                bake_time_s: 0,
            })
            .collect(),
        progress_deadline_s: 60,
    }
}

fn device(i: u32) -> DeviceId {
    DeviceId(*blake3::hash(&i.to_le_bytes()).as_bytes())
}

#[test]
fn wave_sizes_are_within_2_percent_over_100k_devices() {
    for percents in [&[1u8, 10, 40, 49][..], &[25, 25, 25, 25], &[5, 95]] {
        let p = plan(percents);
        assert_eq!(p.check(), Ok(()));
        let mut counts = vec![0u32; percents.len()];
        let n = 100_000;
        for i in 0..n {
            counts[wave_of(&p, &device(i), "garden", ReleaseSeq(9)) as usize] += 1;
        }
        for (wave, (&count, &pct)) in counts.iter().zip(percents).enumerate() {
            let share = f64::from(count) * 100.0 / f64::from(n);
            assert!(
                (share - f64::from(pct)).abs() <= 2.0,
                "wave {wave}: {share:.2}% for a plan of {pct}%"
            );
        }
    }
}

#[test]
fn assignment_is_deterministic_and_changes_between_releases() {
    let p = plan(&[50, 50]);
    let same = (0..1000)
        .filter(|&i| {
            wave_of(&p, &device(i), "garden", ReleaseSeq(1))
                == wave_of(&p, &device(i), "garden", ReleaseSeq(2))
        })
        .count();
    // Independent halves agree about half the time, not always.
    assert!((350..650).contains(&same), "{same}");
    assert_eq!(
        position(&device(3), "garden", ReleaseSeq(1)),
        position(&device(3), "garden", ReleaseSeq(1))
    );
}

#[test]
fn boundaries_are_exact() {
    let p = plan(&[50, 50]);
    assert_eq!(wave_of_position(&p, 0), 0);
    assert_eq!(wave_of_position(&p, u64::MAX / 2), 0);
    assert_eq!(wave_of_position(&p, u64::MAX / 2 + 1), 1);
    assert_eq!(wave_of_position(&p, u64::MAX), 1);
}
