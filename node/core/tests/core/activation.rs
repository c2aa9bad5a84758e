//! When the node applies, rolls back and reports.

use shoal_protocol::{DeviceState, ReleaseSeq, RolloutPlan, Wave, WaveAction, verify};

use super::harness::{Harness, info, peer};
use shoal_node_core::{Bitfield, Input, Output, Phase, Verdict};
use shoal_testing::{TestRelease, synthetic_chunks};

fn two_waves() -> RolloutPlan {
    let w = |percent| Wave {
        percent,
        min_sample: 1,
        success_threshold_pct: 90,
        error_threshold_pct: 10,
        bake_time_s: 0,
    };
    RolloutPlan {
        waves: vec![w(50), w(50)],
        progress_deadline_s: 3600,
    }
}

/// Stages `rel` from one same-site peer that has everything.
fn stage(h: &mut Harness, rel: &TestRelease) {
    let p = peer(1);
    h.connect(p, info(Some("here"), 1, false));
    let seq = rel.announcement.sequence;
    let n = rel.chunks.len() as u32;
    h.gossip(p, rel.announcement_gossip.clone());
    h.input(Input::PeerHave {
        peer: p,
        sequence: seq,
        have: Bitfield::full(n),
    });
    h.input(Input::ManifestFetched {
        peer: p,
        sequence: seq,
        result: Ok(rel.manifest_bytes.clone()),
    });
    for i in 0..n {
        h.ok(p, rel, i);
    }
    let phase = h.node.progress().map(|p| p.phase);
    assert!(
        matches!(phase, Some(Phase::Staged | Phase::Applying)),
        "{phase:?}"
    );
}

fn applies(out: &[Output]) -> Vec<ReleaseSeq> {
    out.iter()
        .filter_map(|o| match o {
            Output::Apply { sequence, .. } => Some(*sequence),
            _ => None,
        })
        .collect()
}

fn reported(out: &[Output]) -> Vec<DeviceState> {
    out.iter()
        .filter_map(|o| match o {
            Output::Report { envelope, report } => {
                // Every report is signed by the device and verifies as such.
                let checked = verify::status_report(envelope).expect("report verifies");
                assert_eq!(&checked, report);
                Some(report.state)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn applies_only_when_own_wave_is_open() {
    let mut h = Harness::new();
    // A release in which this device is in wave 1 of 2.
    let rel = (1..100)
        .map(|s| {
            h.fleet
                .release(s, synthetic_chunks(0, 8, 1024), two_waves())
        })
        .find(|r| {
            shoal_protocol::waves::wave_of(
                &r.manifest.rollout,
                &h.node.id(),
                &r.manifest.fleet,
                r.manifest.sequence,
            ) == 1
        })
        .expect("some release puts this device in wave 1");
    stage(&mut h, &rel);
    assert_eq!(reported(&h.out), vec![DeviceState::Staged]);
    assert!(applies(&h.out).is_empty(), "no wave open yet");
    assert_eq!(h.open_wave(&rel, 1, 0), Verdict::Accept);
    assert!(
        applies(&h.out).is_empty(),
        "wave 0 open, the device is in wave 1"
    );
    // A replayed older counter changes nothing.
    assert_eq!(h.open_wave(&rel, 1, 1), Verdict::Ignore);
    assert!(applies(&h.out).is_empty());
    let pause = h.fleet.wave_control(&rel, 2, WaveAction::Pause);
    assert_eq!(h.gossip(peer(9), pause), Verdict::Accept);
    assert_eq!(h.open_wave(&rel, 3, 1), Verdict::Accept);
    assert!(applies(&h.out).is_empty(), "paused");
    let resume = h.fleet.wave_control(&rel, 4, WaveAction::Resume);
    h.gossip(peer(9), resume);
    assert_eq!(applies(&h.out), vec![rel.announcement.sequence]);
    // The applied sequence was persisted before the Apply.
    let persist_pos = h.out.iter().rposition(
        |o| matches!(o, Output::Persist(s) if s.applied == Some(rel.announcement.sequence)),
    );
    let apply_pos = h.out.iter().position(|o| matches!(o, Output::Apply { .. }));
    assert!(persist_pos.is_some() && persist_pos < apply_pos);
    h.input(Input::ApplyFinished {
        sequence: rel.announcement.sequence,
        result: Ok(()),
    });
    h.input(Input::HealthResult {
        sequence: rel.announcement.sequence,
        healthy: true,
        detail: String::new(),
    });
    assert_eq!(
        reported(&h.out),
        vec![
            DeviceState::Staged,
            DeviceState::Applying,
            DeviceState::Running,
            DeviceState::Healthy
        ]
    );
    assert_eq!(h.node.committed(), Some(rel.announcement.sequence));
}

#[test]
fn an_origin_that_connects_gets_the_last_report_again_freshly_signed() {
    // The builder was down while the device became healthy: that report reached nobody. When
    // an origin connects, the device reports its state again, with a new nonce (the builder
    // refuses replays), so the rollout does not wait for a report that never comes.
    let mut h = Harness::new();
    let rel = h.release(1, 4);
    stage(&mut h, &rel);
    h.open_wave(&rel, 1, 0);
    let seq = rel.announcement.sequence;
    h.input(Input::ApplyFinished {
        sequence: seq,
        result: Ok(()),
    });
    h.input(Input::HealthResult {
        sequence: seq,
        healthy: true,
        detail: "ok".into(),
    });
    let nonce_of = |out: &[Output]| {
        out.iter().rev().find_map(|o| match o {
            Output::Report { report, .. } => Some(report.nonce),
            _ => None,
        })
    };
    let first = nonce_of(&h.out).expect("reported healthy");
    h.out.clear();
    // Another device connecting changes nothing.
    h.connect(peer(7), info(Some("here"), 1, false));
    assert!(reported(&h.out).is_empty());
    h.connect(peer(8), info(None, 30, true));
    assert_eq!(reported(&h.out), vec![DeviceState::Healthy]);
    let again = h.out.iter().find_map(|o| match o {
        Output::Report { report, .. } => Some(report.clone()),
        _ => None,
    });
    let again = again.expect("a report");
    assert_eq!((again.sequence, again.detail.as_str()), (seq, "ok"));
    assert_ne!(Some(again.nonce), Some(first));
    // The same origin refreshing its round-trip time is no new connection.
    h.out.clear();
    h.connect(peer(8), info(None, 90, true));
    assert!(reported(&h.out).is_empty());
}

#[test]
fn halted_release_never_applies() {
    let mut h = Harness::new();
    let rel = h.release(1, 4);
    stage(&mut h, &rel);
    let halt = h.fleet.wave_control(&rel, 1, WaveAction::Halt);
    assert_eq!(h.gossip(peer(9), halt), Verdict::Accept);
    assert_eq!(h.open_wave(&rel, 2, 0), Verdict::Accept);
    assert!(applies(&h.out).is_empty());
    assert_eq!(h.node.progress().map(|p| p.phase), Some(Phase::Halted));
}

#[test]
fn failed_health_rolls_back_and_reports() {
    let mut h = Harness::new();
    let rel = h.release(1, 4);
    stage(&mut h, &rel);
    h.open_wave(&rel, 1, 0);
    let seq = rel.announcement.sequence;
    assert_eq!(applies(&h.out), vec![seq]);
    h.input(Input::ApplyFinished {
        sequence: seq,
        result: Ok(()),
    });
    h.out.clear();
    h.input(Input::HealthResult {
        sequence: seq,
        healthy: false,
        detail: "exit 1".into(),
    });
    assert!(
        h.out
            .iter()
            .any(|o| matches!(o, Output::Rollback { from, to: None } if *from == seq))
    );
    assert_eq!(
        reported(&h.out),
        vec![DeviceState::Failed, DeviceState::RolledBack]
    );
    let detail = h.out.iter().find_map(|o| match o {
        Output::Report { report, .. } if report.state == DeviceState::Failed => {
            Some(report.detail.clone())
        }
        _ => None,
    });
    assert_eq!(detail.as_deref(), Some("health checks failed: exit 1"));
    assert_eq!(h.node.committed(), None);
    // More wave control for it does not re-apply it.
    h.open_wave(&rel, 2, 0);
    assert_eq!(applies(&h.out), Vec::<ReleaseSeq>::new());
}

#[test]
fn wave_control_before_announcement_is_kept() {
    let mut h = Harness::new();
    let rel = h.release(1, 4);
    assert_eq!(h.open_wave(&rel, 1, 0), Verdict::Accept);
    stage(&mut h, &rel);
    assert_eq!(applies(&h.out), vec![rel.announcement.sequence]);
}

#[test]
fn wave_control_for_another_manifest_is_rejected() {
    let mut h = Harness::new();
    let rel = h.release(1, 4);
    stage(&mut h, &rel);
    let mut other = rel.clone();
    other.announcement.manifest_digest = shoal_protocol::Digest::of(b"other");
    let b = h
        .fleet
        .wave_control(&other, 1, WaveAction::Open { wave: 0 });
    assert_eq!(h.gossip(peer(9), b), Verdict::Reject);
    assert!(applies(&h.out).is_empty());
}

fn hold(
    h: &Harness,
    rel: &TestRelease,
    counter: u64,
    devices: &[shoal_protocol::DeviceId],
) -> Vec<u8> {
    let mut devices = devices.to_vec();
    devices.sort();
    h.fleet
        .wave_control(rel, counter, WaveAction::Hold { devices })
}

#[test]
fn a_held_device_does_not_activate_until_released() {
    let mut h = Harness::new();
    let rel = h.release(1, 4);
    let seq = rel.announcement.sequence;
    let me = h.node.id();
    let other = shoal_protocol::DeviceId([0xee; 32]);
    stage(&mut h, &rel);
    let nobody = hold(&h, &rel, 1, &[]);
    assert_eq!(h.gossip(peer(9), nobody.clone()), Verdict::Accept);
    // Held before its wave opens: it stays staged.
    assert_eq!(
        h.gossip(peer(9), hold(&h, &rel, 2, &[other, me])),
        Verdict::Accept
    );
    assert_eq!(h.open_wave(&rel, 3, 0), Verdict::Accept);
    assert!(applies(&h.out).is_empty(), "held while its wave is open");
    assert_eq!(h.node.progress().map(|p| p.phase), Some(Phase::Staged));
    // The older, empty list replayed does not release it.
    assert_eq!(h.gossip(peer(8), nobody), Verdict::Ignore);
    assert!(applies(&h.out).is_empty());
    // Another device's hold does not concern it: a newer list without it releases it.
    assert_eq!(
        h.gossip(peer(9), hold(&h, &rel, 4, &[other])),
        Verdict::Accept
    );
    assert_eq!(applies(&h.out), vec![seq]);
}

#[test]
fn a_hold_survives_a_restart_and_is_resent_to_late_peers() {
    let mut h = Harness::new();
    let rel = h.release(1, 4);
    let me = h.node.id();
    stage(&mut h, &rel);
    let held = hold(&h, &rel, 1, &[me]);
    h.gossip(peer(9), held.clone());
    let open = h.fleet.wave_control(&rel, 2, WaveAction::Open { wave: 0 });
    h.gossip(peer(9), open.clone());
    assert!(applies(&h.out).is_empty());
    let snap = h
        .out
        .iter()
        .rev()
        .find_map(|o| match o {
            Output::Persist(s) => Some((**s).clone()),
            _ => None,
        })
        .expect("a snapshot");
    // Both envelopes (the gossip bytes without their tag) are kept, in counter order, for
    // peers that join later.
    assert_eq!(
        snap.release.as_ref().map(|r| r.controls.clone()),
        Some(vec![held[1..].to_vec(), open[1..].to_vec()])
    );
    let mut node = shoal_node_core::Node::resume(h.fleet.config(1), snap, 3);
    node.handle(
        shoal_node_core::Instant::ZERO,
        Input::WallClock(shoal_testing::TEST_EPOCH.plus_secs(30)),
    );
    let out: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert!(applies(&out).is_empty(), "still held after a restart");
    // A newer hold without it releases it.
    let release = hold(&h, &rel, 3, &[]);
    node.handle(
        shoal_node_core::Instant::ZERO,
        Input::Gossip {
            from: peer(9),
            id: shoal_node_core::MessageId(77),
            bytes: release,
        },
    );
    let out: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert_eq!(applies(&out), vec![rel.announcement.sequence]);
}
