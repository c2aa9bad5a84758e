//! Attacks on a device's trust, one test each: the node answers with a typed refusal (a
//! `Reject` verdict, a `Refused` event) and its trusted state — highest and applied sequence,
//! committed release, trust-root version — is the same afterwards (or, for a rotation, moves
//! only forwards). docs/SECURITY.md maps every attack to its test.

use shoal_protocol::encoding::encode;
use shoal_protocol::{
    Digest, Envelope, ReleaseSeq, RolloutPlan, SigningKey, TrustRoot, UnixTime, WaveAction,
    WaveControl,
};

use super::harness::{Harness, info, peer};
use shoal_node_core::{
    Bitfield, Event, FetchError, GossipMessage, Input, Instant, Node, Output, Phase, Snapshot,
    TrustRootError, Verdict,
};
use shoal_testing::{TEST_EPOCH, TestFleet, TestRelease, device_key, synthetic_chunks};

/// What a device trusts.
#[derive(Debug, Clone, PartialEq)]
struct Trusted {
    highest: Option<(ReleaseSeq, Digest)>,
    applied: Option<ReleaseSeq>,
    committed: Option<ReleaseSeq>,
    trust_version: u64,
}

fn trusted(n: &Node) -> Trusted {
    Trusted {
        highest: n.highest(),
        applied: n.applied(),
        committed: n.committed(),
        trust_version: n.trust().version,
    }
}

fn last_snapshot(out: &[Output]) -> Snapshot {
    out.iter()
        .rev()
        .find_map(|o| match o {
            Output::Persist(s) => Some((**s).clone()),
            _ => None,
        })
        .expect("a snapshot was persisted")
}

fn applied(out: &[Output]) -> Vec<ReleaseSeq> {
    out.iter()
        .filter_map(|o| match o {
            Output::Apply { sequence, .. } => Some(*sequence),
            _ => None,
        })
        .collect()
}

/// Stages `rel` from one peer that has every chunk, and opens wave 0 (signed by `fleet`).
fn stage_and_open(h: &mut Harness, rel: &TestRelease, fleet: &TestFleet) {
    let p = peer(1);
    h.connect(p, info(Some("here"), 1, false));
    h.announce_and_serve_manifest(rel, p);
    h.input(Input::PeerHave {
        peer: p,
        sequence: rel.announcement.sequence,
        have: Bitfield::full(rel.chunks.len() as u32),
    });
    for i in 0..rel.chunks.len() as u32 {
        h.ok(p, rel, i);
    }
    let open = fleet.wave_control(rel, 1, WaveAction::Open { wave: 0 });
    assert_eq!(h.gossip(peer(99), open), Verdict::Accept);
}

/// The fleet's version-2 trust root: new root key, and the release key replaced by a new one
/// (the old one is revoked). Returns the signed rotation and a fleet that signs with the new key.
fn rotate(fleet: &TestFleet, signers: &[&SigningKey]) -> (Vec<u8>, TestFleet) {
    let new_root = SigningKey::from_bytes(&[0x53; 32]);
    let new_release = SigningKey::from_bytes(&[0x4d; 32]);
    let v2 = TrustRoot {
        version: 2,
        root_keys: vec![new_root.public_key()],
        release_keys: vec![new_release.public_key()],
        ..fleet.trust.clone()
    };
    let keys: Vec<&SigningKey> = if signers.is_empty() {
        vec![&fleet.root_key, &new_root]
    } else {
        signers.to_vec()
    };
    let env = Envelope::seal(&v2, &keys);
    let next = TestFleet {
        fleet: fleet.fleet.clone(),
        root_key: new_root,
        release_key: new_release,
        trust: v2,
    };
    (GossipMessage::TrustRoot(encode(&env)).encode(), next)
}

#[test]
fn a_clock_reset_to_1970_does_not_revive_expired_announcements() {
    let mut h = Harness::new();
    h.connect(peer(1), info(None, 5, false));
    // A day and a half on: release 1 (valid for a day after the epoch) has expired.
    let later = TEST_EPOCH.plus_secs(36 * 3600);
    h.input(Input::WallClock(later));
    let rel = h.release(1, 4);
    assert_eq!(
        h.gossip(peer(1), rel.announcement_gossip.clone()),
        Verdict::Reject
    );
    let before = trusted(&h.node);
    // The device's clock resets to 1970.
    h.input(Input::WallClock(UnixTime(0)));
    assert_eq!(
        h.gossip(peer(1), rel.announcement_gossip.clone()),
        Verdict::Reject
    );
    assert_eq!(trusted(&h.node), before);

    // And after a restart: the snapshot's time is the floor.
    h.input(Input::WallClock(later));
    let r2 =
        h.fleet
            .release_from_layers(2, vec![], RolloutPlan::all_at_once(), later.plus_secs(60));
    assert_eq!(h.gossip(peer(1), r2.announcement_gossip), Verdict::Accept);
    let snap = last_snapshot(&h.out);
    assert!(snap.saved_at >= later);
    h.node = Node::resume(h.fleet.config(1), snap, 2);
    h.input(Input::WallClock(UnixTime(0)));
    h.connect(peer(1), info(None, 5, false));
    let before = trusted(&h.node);
    assert_eq!(h.gossip(peer(1), rel.announcement_gossip), Verdict::Reject);
    assert_eq!(trusted(&h.node), before);
}

#[test]
fn replays_and_equivocation_are_refused_also_after_a_restart() {
    let mut h = Harness::new();
    let r1 = h.release(1, 4);
    let r2 = h.release(2, 4);
    h.connect(peer(1), info(None, 5, false));
    h.announce_and_serve_manifest(&r2, peer(1));
    let snap = last_snapshot(&h.out);
    // Same sequence 2, other bytes (another chunk list).
    let r2_other = h
        .fleet
        .release(2, synthetic_chunks(77, 4, 1024), RolloutPlan::all_at_once());
    for node_restarted in [false, true] {
        if node_restarted {
            h.node = Node::resume(h.fleet.config(1), snap.clone(), 3);
            h.input(Input::WallClock(TEST_EPOCH));
            h.connect(peer(1), info(None, 5, false));
        }
        let before = trusted(&h.node);
        assert_eq!(before.highest.map(|(s, _)| s), Some(ReleaseSeq(2)));
        let fetches = h.out.len();
        assert_eq!(
            h.gossip(peer(1), r1.announcement_gossip.clone()),
            Verdict::Reject,
            "replay of release 1 (restarted: {node_restarted})"
        );
        assert_eq!(
            h.gossip(peer(1), r2_other.announcement_gossip.clone()),
            Verdict::Reject,
            "release 2 with other bytes (restarted: {node_restarted})"
        );
        assert!(
            !h.out[fetches..]
                .iter()
                .any(|o| matches!(o, Output::FetchManifest { .. } | Output::Apply { .. }))
        );
        assert_eq!(trusted(&h.node), before);
    }
}

#[test]
fn forged_wave_control_is_refused_and_nothing_applies() {
    let mut h = Harness::new();
    let rel = h.release(1, 4);
    let p = peer(1);
    h.connect(p, info(Some("here"), 1, false));
    h.announce_and_serve_manifest(&rel, p);
    h.input(Input::PeerHave {
        peer: p,
        sequence: rel.announcement.sequence,
        have: Bitfield::full(4),
    });
    for i in 0..4 {
        h.ok(p, &rel, i);
    }
    let before = trusted(&h.node);
    let open = WaveControl {
        fleet: h.fleet.fleet.clone(),
        sequence: rel.announcement.sequence,
        manifest_digest: rel.announcement.manifest_digest,
        counter: 1,
        action: WaveAction::Open { wave: 0 },
        issued_at: TEST_EPOCH,
    };
    let seal = |keys: &[&SigningKey]| {
        GossipMessage::WaveControl(encode(&Envelope::seal(&open, keys))).encode()
    };
    let forgeries = [
        ("unknown key", seal(&[&SigningKey::from_bytes(&[9; 32])])),
        ("the root key", seal(&[&h.fleet.root_key.clone()])),
        ("a device key", seal(&[&device_key(5)])),
        ("no signature", seal(&[])),
    ];
    for (name, bytes) in forgeries {
        assert_eq!(h.gossip(peer(2), bytes), Verdict::Reject, "{name}");
    }
    assert!(applied(&h.out).is_empty());
    assert_eq!(h.node.progress().map(|p| p.phase), Some(Phase::Staged));
    assert_eq!(trusted(&h.node), before);
    // The real one opens the wave.
    assert_eq!(h.open_wave(&rel, 1, 0), Verdict::Accept);
    assert_eq!(applied(&h.out), vec![rel.announcement.sequence]);
}

#[test]
fn a_release_with_a_withheld_chunk_never_activates() {
    let mut h = Harness::new();
    let rel = h.release(1, 8);
    let p = peer(1);
    h.connect(p, info(Some("here"), 1, false));
    h.announce_and_serve_manifest(&rel, p);
    h.input(Input::PeerHave {
        peer: p,
        sequence: rel.announcement.sequence,
        have: Bitfield::full(8),
    });
    for i in 0..7 {
        h.ok(p, &rel, i);
    }
    // Chunk 7: the peer says it has it, then never delivers a good copy.
    for result in [Err(FetchError::DigestMismatch), Err(FetchError::Timeout)] {
        h.input(Input::ChunkFetched {
            peer: p,
            sequence: rel.announcement.sequence,
            index: 7,
            result,
        });
    }
    assert_eq!(h.open_wave(&rel, 1, 0), Verdict::Accept);
    // An hour of timers.
    while h.advance(Instant::from_millis(3_600_000)).is_some() {}
    assert!(applied(&h.out).is_empty());
    assert!(!h.node.has_chunk(rel.announcement.sequence, 7));
    assert_eq!(h.node.progress().map(|p| p.phase), Some(Phase::Fetching));
    assert_eq!(h.node.applied(), None);
}

#[test]
fn a_flood_of_invalid_announcements_does_not_block_an_honest_one() {
    let mut h = Harness::new();
    h.connect(peer(1), info(None, 5, false));
    h.connect(peer(2), info(None, 5, false));
    let rel = h.release(1, 4);
    let forger = {
        let mut f = h.fleet.clone();
        f.release_key = SigningKey::from_bytes(&[9; 32]);
        f
    };
    let before = trusted(&h.node);
    for i in 0..10_000u64 {
        let mut ann = rel.announcement.clone();
        ann.sequence = ReleaseSeq(1 + i);
        let bytes = match i % 3 {
            0 => forger.announce(&ann),
            1 => vec![1, 0xff, 0x00, (i & 0xff) as u8],
            _ => {
                let mut b = h.fleet.announce(&ann);
                let last = b.len() - 1;
                b[last] ^= 0x40;
                b
            }
        };
        assert_eq!(h.gossip(peer(1), bytes), Verdict::Reject, "message {i}");
    }
    assert_eq!(trusted(&h.node), before);
    assert!(
        !h.out
            .iter()
            .any(|o| matches!(o, Output::FetchManifest { .. }))
    );
    assert_eq!(
        h.gossip(peer(2), rel.announcement_gossip.clone()),
        Verdict::Accept
    );
    assert_eq!(
        h.node.highest(),
        Some((ReleaseSeq(1), rel.announcement.manifest_digest))
    );
}

#[test]
fn a_stolen_key_at_u64_max_is_recovered_by_rotating_it_out() {
    let mut h = Harness::new();
    h.connect(peer(1), info(Some("here"), 1, false));
    // A thief with the release key announces the last sequence there is.
    let stolen = h.fleet.release_from_layers(
        u64::MAX,
        vec![],
        RolloutPlan::all_at_once(),
        TEST_EPOCH.plus_secs(86_400),
    );
    assert_eq!(
        h.gossip(peer(1), stolen.announcement_gossip.clone()),
        Verdict::Accept
    );
    assert_eq!(h.node.highest().map(|(s, _)| s), Some(ReleaseSeq(u64::MAX)));
    let (_, next) = rotate(&h.fleet, &[]);
    let honest = next.release(
        7,
        synthetic_chunks(700, 4, 1024),
        RolloutPlan::all_at_once(),
    );
    // Before the rotation the builder's next release (sequence 7) is a rollback.
    assert_eq!(
        h.gossip(peer(1), honest.announcement_gossip.clone()),
        Verdict::Reject
    );

    // Rotations that must not take: signed by the new keys only, by the old root only, two
    // versions ahead.
    let before = trusted(&h.node);
    let new_root = SigningKey::from_bytes(&[0x53; 32]);
    let (new_only, _) = rotate(&h.fleet, &[&new_root]);
    let (old_only, _) = rotate(&h.fleet, &[&h.fleet.root_key.clone()]);
    assert_eq!(h.gossip(peer(1), new_only), Verdict::Reject);
    assert_eq!(h.gossip(peer(1), old_only), Verdict::Reject);
    let v3 = TrustRoot {
        version: 3,
        ..next.trust.clone()
    };
    let ahead = GossipMessage::TrustRoot(encode(&Envelope::seal(
        &v3,
        &[&h.fleet.root_key, &next.root_key],
    )))
    .encode();
    assert_eq!(h.gossip(peer(1), ahead), Verdict::Ignore);
    assert_eq!(trusted(&h.node), before);

    // The real rotation: accepted once, then ignored as already known.
    let (rotation, _) = rotate(&h.fleet, &[]);
    assert_eq!(h.gossip(peer(1), rotation.clone()), Verdict::Accept);
    assert!(
        h.out
            .iter()
            .any(|o| matches!(o, Output::Event(Event::TrustRotated { version: 2 })))
    );
    assert_eq!(h.gossip(peer(1), rotation.clone()), Verdict::Ignore);
    assert_eq!(h.node.trust().version, 2);
    assert_eq!(h.node.highest(), None, "the stolen key's floor is gone");

    // The revoked key is refused, whatever the sequence; the new key's release is accepted.
    assert_eq!(
        h.gossip(peer(1), stolen.announcement_gossip.clone()),
        Verdict::Reject
    );
    let stolen_later = h.fleet.release(
        8,
        synthetic_chunks(800, 4, 1024),
        RolloutPlan::all_at_once(),
    );
    assert_eq!(
        h.gossip(peer(1), stolen_later.announcement_gossip.clone()),
        Verdict::Reject
    );
    stage_and_open(&mut h, &honest, &next);
    assert_eq!(applied(&h.out), vec![ReleaseSeq(7)]);

    // After a restart the device is still on version 2: the revoked key stays refused, and a
    // new peer is sent the rotation on connect.
    let snap = last_snapshot(&h.out);
    h.node = Node::resume(h.fleet.config(1), snap, 4);
    h.input(Input::WallClock(TEST_EPOCH));
    assert_eq!(h.node.trust().version, 2);
    assert_eq!(h.node.highest().map(|(s, _)| s), Some(ReleaseSeq(7)));
    let out = h.connect(peer(3), info(None, 5, false));
    assert!(out.iter().any(|o| matches!(o,
        Output::SyncGossip { messages, .. } if messages.first() == Some(&rotation))));
    assert_eq!(
        h.gossip(peer(1), stolen_later.announcement_gossip),
        Verdict::Reject
    );
}

#[test]
fn a_rotation_that_keeps_the_release_key_keeps_the_floor() {
    let mut h = Harness::new();
    h.connect(peer(1), info(Some("here"), 1, false));
    let r3 = h.release(3, 4);
    h.announce_and_serve_manifest(&r3, peer(1));
    // Version 2 rotates the root key only.
    let new_root = SigningKey::from_bytes(&[0x53; 32]);
    let v2 = TrustRoot {
        version: 2,
        root_keys: vec![new_root.public_key()],
        ..h.fleet.trust.clone()
    };
    let env = Envelope::seal(&v2, &[&h.fleet.root_key, &new_root]);
    let before = trusted(&h.node);
    assert_eq!(
        h.gossip(peer(1), GossipMessage::TrustRoot(encode(&env)).encode()),
        Verdict::Accept
    );
    assert_eq!(
        trusted(&h.node),
        Trusted {
            trust_version: 2,
            ..before
        }
    );
    // Release 2 is still a rollback.
    let r2 = h.release(2, 4);
    assert_eq!(h.gossip(peer(1), r2.announcement_gossip), Verdict::Reject);
    assert_eq!(h.node.progress().map(|p| p.sequence), Some(ReleaseSeq(3)));
}

/// Strips the gossip tag off an encoded `GossipMessage::TrustRoot`.
fn envelope_of(gossip: &[u8]) -> Vec<u8> {
    match GossipMessage::decode(gossip) {
        Some(GossipMessage::TrustRoot(b)) => b,
        other => panic!("not a trust root message: {other:?}"),
    }
}

#[test]
fn an_older_trust_root_offered_later_is_refused_with_a_typed_error() {
    let mut h = Harness::new();
    h.connect(peer(1), info(None, 5, false));
    let (v2_gossip, v2_fleet) = rotate(&h.fleet, &[]);
    let v2 = envelope_of(&v2_gossip);
    assert_eq!(h.node.offer_trust_root(v2.clone()), Ok(2));
    // Version 3, signed by version 2's root key and its own.
    let newer_root = SigningKey::from_bytes(&[0x54; 32]);
    let v3_root = TrustRoot {
        version: 3,
        root_keys: vec![newer_root.public_key()],
        ..v2_fleet.trust.clone()
    };
    let v3 = encode(&Envelope::seal(
        &v3_root,
        &[&v2_fleet.root_key, &newer_root],
    ));
    assert_eq!(h.node.offer_trust_root(v3.clone()), Ok(3));
    let before = trusted(&h.node);

    // Version 2 again (a replay), and version 3 again: stale, typed, nothing moves.
    assert_eq!(
        h.node.offer_trust_root(v2.clone()),
        Err(TrustRootError::Stale {
            version: 2,
            current: 3
        })
    );
    assert_eq!(
        h.node.offer_trust_root(v3.clone()),
        Err(TrustRootError::Stale {
            version: 3,
            current: 3
        })
    );
    // From gossip the same replay is ignored (not forwarded, not a rejection of the peer).
    assert_eq!(h.gossip(peer(1), v2_gossip), Verdict::Ignore);
    assert_eq!(trusted(&h.node), before);
    // Version 5 skips 4; another fleet's root; garbage.
    let v5 = encode(&Envelope::seal(
        &TrustRoot {
            version: 5,
            ..v3_root.clone()
        },
        &[&newer_root],
    ));
    assert_eq!(
        h.node.offer_trust_root(v5),
        Err(TrustRootError::Ahead {
            version: 5,
            current: 3
        })
    );
    let other = encode(&Envelope::seal(
        &TrustRoot {
            fleet: "other".into(),
            version: 4,
            ..v3_root.clone()
        },
        &[&newer_root],
    ));
    assert!(matches!(
        h.node.offer_trust_root(other),
        Err(TrustRootError::WrongFleet { .. })
    ));
    assert!(matches!(
        h.node.offer_trust_root(vec![1, 2, 3]),
        Err(TrustRootError::Invalid(_))
    ));
    assert_eq!(trusted(&h.node), before);
}

#[test]
fn a_node_started_on_a_rotated_root_relays_the_chain_that_leads_to_it() {
    let fleet = TestFleet::new("test-fleet");
    let (v2_gossip, v2_fleet) = rotate(&fleet, &[]);
    let v2 = envelope_of(&v2_gossip);
    // The origin starts on version 2 (its fleet's current root file).
    let mut config = fleet.config(7);
    config.trust = v2_fleet.trust.clone();
    let mut origin = Node::new(config, 1);
    // A chain that does not end at its root is refused; the right one is kept.
    assert!(matches!(
        origin.relay_trust_chain(vec![vec![0; 8]]),
        Err(TrustRootError::Invalid(_))
    ));
    let self_signed_v1 = encode(&Envelope::seal(&fleet.trust, &[&fleet.root_key]));
    assert_eq!(
        origin.relay_trust_chain(vec![self_signed_v1]),
        Err(TrustRootError::NotCurrent {
            version: 1,
            current: 2
        })
    );
    origin.relay_trust_chain(vec![v2.clone()]).unwrap();
    origin.handle(Instant::ZERO, Input::WallClock(TEST_EPOCH));
    // A connecting device is sent the rotation, and a device on version 1 takes it.
    origin.handle(
        Instant::ZERO,
        Input::PeerConnected {
            peer: peer(2),
            info: info(None, 5, false),
        },
    );
    let mut sync = None;
    while let Some(o) = origin.poll_output() {
        if let Output::SyncGossip { peer: p, messages } = o
            && p == peer(2)
        {
            sync = Some(messages);
        }
    }
    let sync = sync.expect("the origin syncs the connecting peer");
    assert_eq!(sync, vec![v2_gossip.clone()]);
    let mut h = Harness::new();
    assert_eq!(h.gossip(peer(7), sync[0].clone()), Verdict::Accept);
    assert_eq!(h.node.trust().version, 2);
}
