//! Controller rules, one by one.

use shoal_protocol::waves::wave_of;
use shoal_protocol::{
    DeviceId, DeviceState, Digest, ReleaseSeq, RolloutPlan, SigningKey, StatusReport, UnixTime,
    Wave, WaveAction,
};

use shoal_rollout::{Action, Controller, PauseReason, State};

const FLEET: &str = "fleet";
const SEQ: ReleaseSeq = ReleaseSeq(7);

fn digest() -> Digest {
    Digest::of(b"manifest")
}

fn device(n: u32) -> DeviceId {
    let mut s = [7u8; 32];
    s[..4].copy_from_slice(&n.to_le_bytes());
    DeviceId::from(SigningKey::from_bytes(&s).public_key())
}

fn plan(bake_time_s: u64) -> RolloutPlan {
    let w = |percent| Wave {
        percent,
        min_sample: 5,
        success_threshold_pct: 90,
        error_threshold_pct: 20,
        bake_time_s,
    };
    RolloutPlan {
        waves: vec![w(20), w(30), w(50)],
        progress_deadline_s: 600,
    }
}

struct Fleet {
    c: Controller,
    by_wave: Vec<Vec<DeviceId>>,
    time: u64,
}

impl Fleet {
    fn new(plan: RolloutPlan) -> Fleet {
        let devices: Vec<DeviceId> = (0..200).map(device).collect();
        let mut by_wave = vec![Vec::new(); plan.waves.len()];
        for d in &devices {
            by_wave[wave_of(&plan, d, FLEET, SEQ) as usize].push(*d);
        }
        let c =
            Controller::with_devices(FLEET, SEQ, digest(), plan, devices, Some(ReleaseSeq(6)), 0);
        Fleet {
            c,
            by_wave,
            time: 0,
        }
    }

    fn report(&mut self, now_ms: u64, d: DeviceId, state: DeviceState) {
        self.time += 1;
        let r = StatusReport {
            fleet: FLEET.into(),
            device: d,
            sequence: SEQ,
            manifest_digest: digest(),
            state,
            time: UnixTime(self.time),
            nonce: self.time,
            detail: String::new(),
        };
        self.c.handle_report(now_ms, &r);
    }

    /// `healthy` healthy and `failed` failed reports from distinct devices of `wave`.
    fn reports(&mut self, now_ms: u64, wave: usize, healthy: usize, failed: usize) {
        let ds: Vec<DeviceId> = self.by_wave[wave]
            .iter()
            .copied()
            .take(healthy + failed)
            .collect();
        assert_eq!(ds.len(), healthy + failed, "wave {wave} is large enough");
        for (i, d) in ds.into_iter().enumerate() {
            let s = if i < healthy {
                DeviceState::Healthy
            } else {
                DeviceState::Failed
            };
            self.report(now_ms, d, s);
        }
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.c.poll_action()).collect()
    }
}

#[test]
fn wave_zero_opens_at_start() {
    let mut f = Fleet::new(plan(0));
    assert_eq!(f.actions(), vec![Action::OpenWave(0)]);
    assert_eq!(f.c.state(), &State::Running);
}

#[test]
fn too_few_reports_wait() {
    let mut f = Fleet::new(plan(0));
    f.actions();
    f.reports(1_000, 0, 4, 0);
    // Progress reports conclude nothing either.
    let d = f.by_wave[0][10];
    f.report(1_000, d, DeviceState::Running);
    assert_eq!(f.actions(), vec![]);
    assert_eq!(f.c.open_wave(), 0);
    f.c.handle_timeout(500_000);
    assert_eq!(f.actions(), vec![], "no decision before the deadline");
}

#[test]
fn success_opens_next_wave_after_bake_time() {
    let mut f = Fleet::new(plan(60));
    f.actions();
    f.reports(10_000, 0, 5, 0);
    assert_eq!(f.actions(), vec![], "sample met, still baking");
    assert_eq!(f.c.poll_timeout(), Some(60_000));
    f.c.handle_timeout(60_000);
    assert_eq!(f.actions(), vec![Action::OpenWave(1)]);
    f.reports(70_000, 1, 5, 0);
    f.c.handle_timeout(130_000);
    assert_eq!(f.actions(), vec![Action::OpenWave(2)]);
    f.reports(140_000, 2, 10, 0);
    f.c.handle_timeout(190_000);
    assert_eq!(f.actions(), vec![Action::Complete]);
    assert_eq!(f.c.state(), &State::Complete);
}

#[test]
fn below_success_threshold_does_not_advance() {
    let mut f = Fleet::new(plan(60));
    f.actions();
    // 17 healthy and 3 failed: 85% healthy is under the 90% success threshold, 15% failed is
    // under the 20% error threshold. The wave neither advances nor pauses.
    f.reports(1_000, 0, 17, 3);
    f.c.handle_timeout(60_000);
    assert_eq!(f.actions(), vec![]);
    assert_eq!(f.c.open_wave(), 0);
    assert_eq!(f.c.state(), &State::Running);
}

#[test]
fn error_threshold_pauses() {
    let mut f = Fleet::new(plan(0));
    f.actions();
    f.reports(1_000, 0, 0, 1);
    assert_eq!(
        f.actions(),
        vec![Action::Pause {
            reason: PauseReason::ErrorThreshold {
                wave: 0,
                failed: 1,
                concluded: 1
            }
        }]
    );
    // One failure in a minimum sample of five is 20%: the threshold.
    assert!(matches!(f.c.state(), State::Paused(_)));
    // Paused: further success does not advance.
    f.reports(2_000, 0, 0, 0);
    let healthy: Vec<DeviceId> = f.by_wave[0][1..30].to_vec();
    for d in healthy {
        f.report(3_000, d, DeviceState::Healthy);
    }
    assert_eq!(f.actions(), vec![]);
    assert_eq!(f.c.open_wave(), 0);
}

#[test]
fn a_device_counts_once_latest_report_wins() {
    let mut f = Fleet::new(plan(0));
    f.actions();
    let d = f.by_wave[0][0];
    for _ in 0..10 {
        f.report(1_000, d, DeviceState::Healthy);
    }
    assert_eq!(f.c.stats(0).map(|s| (s.reported, s.healthy)), Some((1, 1)));
    f.report(1_000, d, DeviceState::Failed);
    assert_eq!(f.c.stats(0).map(|s| (s.healthy, s.failed)), Some((0, 1)));
}

#[test]
fn reports_for_other_releases_and_strangers_are_ignored() {
    let mut f = Fleet::new(plan(0));
    f.actions();
    let d = f.by_wave[0][0];
    let mut r = StatusReport {
        fleet: FLEET.into(),
        device: d,
        sequence: ReleaseSeq(6),
        manifest_digest: digest(),
        state: DeviceState::Failed,
        time: UnixTime(1),
        nonce: 1,
        detail: String::new(),
    };
    f.c.handle_report(1, &r);
    r.sequence = SEQ;
    r.device = device(10_000);
    f.c.handle_report(1, &r);
    assert_eq!(f.c.stats(0).map(|s| s.reported), Some(0));
    assert_eq!(f.actions(), vec![]);
}

#[test]
fn deadline_pauses() {
    let mut f = Fleet::new(plan(0));
    f.actions();
    f.reports(1_000, 0, 3, 0);
    assert_eq!(f.c.poll_timeout(), Some(600_000));
    f.c.handle_timeout(600_000);
    assert_eq!(
        f.actions(),
        vec![Action::Pause {
            reason: PauseReason::Deadline { wave: 0 }
        }]
    );
    // Resume restarts the deadline; enough reports then advance.
    f.c.resume(700_000);
    f.reports(710_000, 0, 6, 0);
    assert_eq!(f.actions(), vec![Action::Resume, Action::OpenWave(1)]);
}

#[test]
fn operator_commands() {
    let mut f = Fleet::new(plan(0));
    f.actions();
    f.c.pause();
    f.c.promote(5);
    assert_eq!(
        f.actions(),
        vec![
            Action::Pause {
                reason: PauseReason::Operator
            },
            Action::Resume,
            Action::OpenWave(1)
        ]
    );
    f.c.abort();
    assert_eq!(
        f.actions(),
        vec![
            Action::Halt,
            Action::RollBack {
                to_content_of: Some(ReleaseSeq(6))
            }
        ]
    );
    assert_eq!(f.c.state(), &State::Halted);
    f.c.resume(10);
    f.c.promote(10);
    assert_eq!(f.actions(), vec![], "halted is final");
}

#[test]
fn wave_control_counters_strictly_increase() {
    let mut f = Fleet::new(plan(0));
    let a = f.actions();
    let first =
        f.c.wave_control(&a[0], UnixTime(5))
            .expect("open is wave control");
    assert_eq!(
        (first.counter, first.action),
        (1, WaveAction::Open { wave: 0 })
    );
    let second =
        f.c.wave_control(&Action::Halt, UnixTime(6))
            .expect("halt is wave control");
    assert_eq!((second.counter, second.action), (2, WaveAction::Halt));
    assert_eq!(f.c.wave_control(&Action::Complete, UnixTime(7)), None);
}

#[test]
fn held_devices_go_out_before_the_first_wave_and_count_in_no_wave() {
    let mut f = Fleet::new(plan(0));
    // Wave 0 has 5 devices too many for a sample of 5 unless the held are excluded.
    let held: Vec<DeviceId> = f.by_wave[0].iter().copied().take(3).collect();
    let before = f.c.stats(0).unwrap().devices;
    f.c.set_held(held.iter().copied().collect());
    // The hold is published before the wave opens, so no held device activates in between.
    let mut sorted = held.clone();
    sorted.sort();
    assert_eq!(
        f.actions(),
        vec![Action::Hold(sorted.clone()), Action::OpenWave(0)]
    );
    assert_eq!(
        Action::Hold(sorted.clone()).wave_action(),
        Some(WaveAction::Hold { devices: sorted })
    );
    assert_eq!(f.c.stats(0).unwrap().devices, before - 3);
    // Reports of held devices do not count.
    for d in &held {
        f.report(1_000, *d, DeviceState::Healthy);
    }
    assert_eq!(f.c.stats(0).unwrap().healthy, 0);
    assert_eq!(f.actions(), vec![]);
    // The same set again changes nothing; releasing them counts their latest reports.
    f.c.set_held(held.iter().copied().collect());
    assert_eq!(f.actions(), vec![]);
    f.c.set_held(held[..1].iter().copied().collect());
    assert_eq!(f.actions(), vec![Action::Hold(vec![held[0]])]);
    assert_eq!(f.c.stats(0).unwrap().healthy, 2);
    assert_eq!(f.c.stats(0).unwrap().devices, before - 1);
    // Three more healthy devices make the sample of 5: the next wave opens.
    let more: Vec<DeviceId> = f.by_wave[0].iter().copied().skip(3).take(3).collect();
    for d in more {
        f.report(2_000, d, DeviceState::Healthy);
    }
    assert_eq!(f.actions(), vec![Action::OpenWave(1)]);
}

#[test]
fn a_held_device_failing_does_not_pause_the_rollout() {
    let mut f = Fleet::new(plan(0));
    f.actions();
    let bad: Vec<DeviceId> = f.by_wave[0].iter().copied().take(5).collect();
    f.c.set_held(bad.iter().copied().collect());
    f.actions();
    for d in &bad {
        f.report(1_000, *d, DeviceState::Failed);
    }
    assert_eq!(f.c.state(), &State::Running);
}

#[test]
fn a_fleet_pin_holds_every_wave_until_released() {
    let mut f = Fleet::new(plan(0));
    assert!(f.c.hold_fleet());
    assert_eq!(f.c.state(), &State::Held);
    assert_eq!(f.actions(), vec![], "no wave opens");
    assert_eq!(f.c.opened_at_ms(0), None);
    assert_eq!(f.c.poll_timeout(), None, "no deadline runs while held");
    // Healthy reports (devices staging it) open nothing, nor does time.
    f.reports(1_000, 0, 10, 0);
    f.c.handle_timeout(10_000_000);
    assert_eq!(f.actions(), vec![]);
    f.c.pause();
    assert_eq!(f.actions(), vec![], "nothing to pause");
    // Unpinned: wave 0 opens now, and its reports already count.
    f.c.release_fleet(20_000);
    assert_eq!(f.actions(), vec![Action::OpenWave(0), Action::OpenWave(1)]);
    assert_eq!(f.c.opened_at_ms(0), Some(20_000));
}

#[test]
fn only_an_unstarted_rollout_can_be_held() {
    let mut f = Fleet::new(plan(0));
    assert_eq!(f.actions(), vec![Action::OpenWave(0)]);
    assert!(!f.c.hold_fleet(), "wave 0 was published already");
    assert_eq!(f.c.state(), &State::Running);
    // A pin to an older release halts it and rolls forward to that release's content.
    f.c.abort_to(Some(ReleaseSeq(3)));
    assert_eq!(
        f.actions(),
        vec![
            Action::Halt,
            Action::RollBack {
                to_content_of: Some(ReleaseSeq(3))
            }
        ]
    );
    assert_eq!(f.c.state(), &State::Halted);
    f.c.set_held([device(1)].into_iter().collect());
    assert_eq!(f.actions(), vec![], "a halted release holds no one");
}

/// The first `n` devices (of the test's numbering) that fall in `wave` of `plan`.
fn in_wave(plan: &RolloutPlan, wave: u32, n: usize) -> Vec<DeviceId> {
    (0..)
        .map(device)
        .filter(|d| wave_of(plan, d, FLEET, SEQ) == wave)
        .take(n)
        .collect()
}

fn listed(plan: RolloutPlan, devices: &[DeviceId]) -> Controller {
    Controller::with_devices(FLEET, SEQ, digest(), plan, devices.iter().copied(), None, 0)
}

fn healthy(c: &mut Controller, now_ms: u64, d: DeviceId) {
    c.handle_report(
        now_ms,
        &StatusReport {
            fleet: FLEET.into(),
            device: d,
            sequence: SEQ,
            manifest_digest: digest(),
            state: DeviceState::Healthy,
            time: UnixTime(now_ms / 1000 + 1),
            nonce: now_ms,
            detail: String::new(),
        },
    );
}

fn drain(c: &mut Controller) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

#[test]
fn a_wave_with_no_device_is_skipped_without_its_bake_time() {
    let p = plan(600);
    let first = in_wave(&p, 0, 1)[0];
    let last = in_wave(&p, 2, 1)[0];
    let mut c = listed(p, &[first, last]);
    assert_eq!(c.stats(1).unwrap().devices, 0);
    assert_eq!(drain(&mut c), vec![Action::OpenWave(0)]);
    healthy(&mut c, 1_000, first);
    assert_eq!(drain(&mut c), vec![], "wave 0 bakes");
    assert_eq!(c.poll_timeout(), Some(600_000));
    c.handle_timeout(600_000);
    // Wave 1 has nobody: it opens and succeeds at once, and wave 2 opens with it.
    assert_eq!(
        drain(&mut c),
        vec![Action::OpenWave(1), Action::OpenWave(2)]
    );
    assert_eq!(c.opened_at_ms(1), Some(600_000));
    assert_eq!(c.opened_at_ms(2), Some(600_000));
    // The lone device's own wave still bakes.
    healthy(&mut c, 601_000, last);
    assert_eq!(drain(&mut c), vec![]);
    assert_eq!(c.poll_timeout(), Some(1_200_000));
    c.handle_timeout(1_200_000);
    assert_eq!(drain(&mut c), vec![Action::Complete]);
}

#[test]
fn a_lone_device_in_the_last_wave_waits_for_no_empty_wave() {
    let p = plan(600);
    let lone = in_wave(&p, 2, 1)[0];
    let mut c = listed(p, &[lone]);
    // Wave 0 is empty too: due at once, not after its bake time or the progress deadline.
    assert_eq!(c.poll_timeout(), Some(0));
    c.handle_timeout(5);
    assert_eq!(
        drain(&mut c),
        vec![
            Action::OpenWave(0),
            Action::OpenWave(1),
            Action::OpenWave(2)
        ]
    );
    assert_eq!(c.open_wave(), 2);
    assert_eq!(
        c.state(),
        &State::Running,
        "the device's own wave waits for it"
    );
    c.handle_timeout(700_000);
    assert_eq!(
        c.state(),
        &State::Paused(PauseReason::Deadline { wave: 2 }),
        "a silent device still misses its deadline"
    );
}

#[test]
fn a_fleet_with_no_device_completes_at_the_first_timeout() {
    let mut c = listed(plan(600), &[]);
    assert_eq!(c.poll_timeout(), Some(0));
    c.handle_timeout(0);
    assert_eq!(
        drain(&mut c),
        vec![
            Action::OpenWave(0),
            Action::OpenWave(1),
            Action::OpenWave(2),
            Action::Complete
        ]
    );
    assert_eq!(c.state(), &State::Complete);
}

#[test]
fn a_wave_whose_devices_are_all_held_is_skipped() {
    let p = plan(600);
    let held = in_wave(&p, 0, 2);
    let later = in_wave(&p, 1, 1);
    let mut c = listed(p, &[held.clone(), later].concat());
    c.set_held(held.iter().copied().collect());
    let mut sorted = held.clone();
    sorted.sort();
    assert_eq!(
        drain(&mut c),
        vec![Action::Hold(sorted), Action::OpenWave(0)]
    );
    assert_eq!(c.poll_timeout(), Some(0));
    c.handle_timeout(10);
    assert_eq!(drain(&mut c), vec![Action::OpenWave(1)]);
    // Released again before wave 1 ended: they count in wave 0, which has succeeded already.
    c.set_held(Default::default());
    assert_eq!(c.open_wave(), 1);
}

#[test]
fn a_device_joining_an_empty_wave_before_it_opens_is_waited_for() {
    let p = plan(600);
    let first = in_wave(&p, 0, 1)[0];
    let joiner = in_wave(&p, 1, 1)[0];
    let mut c = listed(p, &[first]);
    assert!(c.add_device(joiner));
    drain(&mut c);
    healthy(&mut c, 1_000, first);
    c.handle_timeout(600_000);
    assert_eq!(drain(&mut c), vec![Action::OpenWave(1)]);
    assert_eq!(
        c.poll_timeout(),
        Some(1_200_000),
        "wave 1 has the joiner now"
    );
    c.handle_timeout(1_199_999);
    assert_eq!(drain(&mut c), vec![]);
}

#[test]
fn from_wave_sizes_alone_an_empty_wave_still_bakes() {
    let mut c = Controller::new(FLEET, SEQ, digest(), plan(60), &[0, 3, 3], None, 0);
    assert_eq!(drain(&mut c), vec![Action::OpenWave(0)]);
    assert_eq!(c.poll_timeout(), Some(60_000));
    c.handle_timeout(59_999);
    assert_eq!(drain(&mut c), vec![]);
    c.handle_timeout(60_000);
    assert_eq!(drain(&mut c), vec![Action::OpenWave(1)]);
}
