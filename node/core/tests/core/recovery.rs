//! Snapshots, resume, the store quota, deltas between releases and sequence bounds.

use shoal_protocol::{DeviceState, ReleaseSeq, RolloutPlan};

use super::harness::{Harness, fetches, info, peer};
use shoal_node_core::{
    Bitfield, Event, Input, Instant, Node, Output, Phase, Refusal, Snapshot, Verdict,
};
use shoal_testing::{TEST_EPOCH, synthetic_chunks};

fn last_snapshot(out: &[Output]) -> Snapshot {
    out.iter()
        .rev()
        .find_map(|o| match o {
            Output::Persist(s) => Some((**s).clone()),
            _ => None,
        })
        .expect("a snapshot was persisted")
}

#[test]
fn resume_continues_without_refetching_stored_chunks() {
    let mut h = Harness::new();
    let p = peer(1);
    h.connect(p, info(Some("here"), 1, false));
    let rel = h.release(1, 20);
    let seq = rel.announcement.sequence;
    h.gossip(p, rel.announcement_gossip.clone());
    h.input(Input::PeerHave {
        peer: p,
        sequence: seq,
        have: Bitfield::full(20),
    });
    h.input(Input::ManifestFetched {
        peer: p,
        sequence: seq,
        result: Ok(rel.manifest_bytes.clone()),
    });
    let first: Vec<u32> = fetches(&h.out).into_iter().map(|(_, i)| i).collect();
    for &i in &first {
        h.ok(p, &rel, i);
    }
    // Chunk progress is persisted on a timer, not per chunk.
    while h.advance(Instant::from_millis(6_000)).is_some() {}
    let snap = last_snapshot(&h.out);
    let stored = snap
        .release
        .as_ref()
        .and_then(|r| r.have.clone())
        .expect("have is persisted");
    assert!(stored.count_ones() >= first.len() as u32);
    // The snapshot survives its canonical encoding.
    let bytes = shoal_protocol::encoding::encode(&snap);
    let snap: Snapshot = shoal_protocol::encoding::decode(&bytes).expect("decodes");

    let mut node = Node::resume(h.fleet.config(1), snap, 8);
    node.handle(Instant::ZERO, Input::WallClock(TEST_EPOCH.plus_secs(60)));
    node.handle(
        Instant::ZERO,
        Input::PeerConnected {
            peer: p,
            info: info(Some("here"), 1, false),
        },
    );
    node.handle(
        Instant::ZERO,
        Input::PeerHave {
            peer: p,
            sequence: seq,
            have: Bitfield::full(20),
        },
    );
    let out: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::SendBitfield { have, .. } if *have == stored))
    );
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::FetchManifest { .. })),
        "manifest kept"
    );
    let refetched: Vec<u32> = fetches(&out).into_iter().map(|(_, i)| i).collect();
    assert!(!refetched.is_empty());
    assert!(
        refetched.iter().all(|i| !stored.get(*i)),
        "no stored chunk is fetched again"
    );
    assert_eq!(node.highest().map(|(s, _)| s), Some(seq));
}

#[test]
fn a_release_over_the_quota_is_refused() {
    let mut h = Harness::with(|c| c.store_quota_bytes = 1024 * 1024);
    let p = peer(1);
    h.connect(p, info(Some("here"), 1, false));
    let rel = h.release(1, 8); // 8 x 256 KiB = 2 MiB
    h.announce_and_serve_manifest(&rel, p);
    assert!(fetches(&h.out).is_empty());
    assert!(h.out.iter().any(|o| matches!(
        o,
        Output::Event(Event::Refused {
            reason: Refusal::Quota {
                needed_bytes: 2_097_152,
                quota_bytes: 1_048_576
            },
            ..
        })
    )));
    let detail = h.out.iter().find_map(|o| match o {
        Output::Report { report, .. } => Some((report.state, report.detail.clone())),
        _ => None,
    });
    assert_eq!(
        detail,
        Some((
            DeviceState::Failed,
            "refused: needs 2097152 bytes of store, quota is 1048576".into()
        ))
    );
    assert_eq!(h.node.progress().map(|p| p.phase), Some(Phase::Refused));
}

#[test]
fn a_new_release_fetches_only_changed_chunks() {
    let mut h = Harness::new();
    let p = peer(1);
    h.connect(p, info(Some("here"), 1, false));
    let r1 = h
        .fleet
        .release(1, synthetic_chunks(0, 10, 1024), RolloutPlan::all_at_once());
    h.announce_and_serve_manifest(&r1, p);
    for i in 0..10 {
        h.ok(p, &r1, i);
    }
    h.open_wave(&r1, 1, 0);
    h.input(Input::ApplyFinished {
        sequence: r1.announcement.sequence,
        result: Ok(()),
    });
    h.input(Input::HealthResult {
        sequence: r1.announcement.sequence,
        healthy: true,
        detail: String::new(),
    });
    assert_eq!(h.node.committed(), Some(ReleaseSeq(1)));
    // Release 2 keeps chunks 4..10 and adds four new ones.
    let r2 = h
        .fleet
        .release(2, synthetic_chunks(4, 10, 1024), RolloutPlan::all_at_once());
    h.out.clear();
    h.announce_and_serve_manifest(&r2, p);
    assert!(h.out.iter().any(|o| matches!(
        o,
        Output::Event(Event::ManifestAccepted {
            missing: 4,
            total: 10,
            ..
        })
    )));
}

#[test]
fn never_applies_at_or_below_the_highest_applied() {
    let mut h = Harness::new();
    let p = peer(1);
    h.connect(p, info(Some("here"), 1, false));
    // A device that already applied release 3 (its snapshot says so) but lost the rest.
    let snap = Snapshot {
        highest: None,
        applied: Some(ReleaseSeq(3)),
        committed: None,
        release: None,
        saved_at: TEST_EPOCH,
        trust_chain: Vec::new(),
    };
    h.node = Node::resume(h.fleet.config(1), snap, 9);
    h.input(Input::WallClock(TEST_EPOCH));
    h.connect(p, info(Some("here"), 1, false));
    let r3 = h.release(3, 2);
    h.announce_and_serve_manifest(&r3, p);
    h.ok(p, &r3, 0);
    h.ok(p, &r3, 1);
    h.open_wave(&r3, 1, 0);
    assert_eq!(h.node.progress().map(|p| p.phase), Some(Phase::Staged));
    assert!(!h.out.iter().any(|o| matches!(o, Output::Apply { .. })));
    // Release 4 applies; release 3 announced again afterwards is refused.
    let r4 = h.release(4, 2);
    h.announce_and_serve_manifest(&r4, p);
    h.ok(p, &r4, 0);
    h.ok(p, &r4, 1);
    h.open_wave(&r4, 1, 0);
    assert!(
        h.out
            .iter()
            .any(|o| matches!(o, Output::Apply { sequence, .. } if sequence.0 == 4))
    );
    assert_eq!(h.gossip(p, r3.announcement_gossip.clone()), Verdict::Reject);
    assert_eq!(h.node.highest().map(|(s, _)| s.0), Some(4));
}

#[test]
fn a_restart_while_applying_rolls_back_and_never_reapplies() {
    let mut h = Harness::new();
    let p = peer(1);
    h.connect(p, info(Some("here"), 1, false));
    let rel = h.release(1, 2);
    h.announce_and_serve_manifest(&rel, p);
    h.ok(p, &rel, 0);
    h.ok(p, &rel, 1);
    h.open_wave(&rel, 1, 0);
    assert!(h.out.iter().any(|o| matches!(o, Output::Apply { .. })));
    // The device crashes during the apply; it restarts from its last snapshot.
    let snap = last_snapshot(&h.out);
    assert_eq!(snap.applied, Some(rel.announcement.sequence));
    let mut node = Node::resume(h.fleet.config(1), snap, 3);
    node.handle(Instant::ZERO, Input::WallClock(TEST_EPOCH.plus_secs(30)));
    let out: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert!(out.iter().any(
        |o| matches!(o, Output::Rollback { from, to: None } if *from == rel.announcement.sequence)
    ));
    let states: Vec<DeviceState> = out
        .iter()
        .filter_map(|o| match o {
            Output::Report { report, .. } => Some(report.state),
            _ => None,
        })
        .collect();
    assert_eq!(states, vec![DeviceState::Failed, DeviceState::RolledBack]);
    // Wave control again does not re-apply it.
    let open = h
        .fleet
        .wave_control(&rel, 2, shoal_protocol::WaveAction::Open { wave: 0 });
    node.handle(
        Instant::ZERO,
        Input::Gossip {
            from: p,
            id: shoal_node_core::MessageId(5),
            bytes: open,
        },
    );
    let out: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert!(!out.iter().any(|o| matches!(o, Output::Apply { .. })));
}
