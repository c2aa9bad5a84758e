//! What the node believes.

use shoal_protocol::Announcement;

use super::harness::{Harness, info, peer};
use shoal_node_core::{Output, PeerId, Verdict};
use shoal_protocol::WaveAction;

#[test]
fn valid_announcement_is_accepted_and_its_manifest_fetched() {
    let mut h = Harness::new();
    h.connect(peer(1), info(Some("here"), 5, false));
    let rel = h.release(1, 10);
    assert_eq!(
        h.gossip(peer(1), rel.announcement_gossip.clone()),
        Verdict::Accept
    );
    assert!(h.out.iter().any(|o| matches!(o,
        Output::FetchManifest { peer: p, digest, .. } if *p == peer(1) && *digest == rel.announcement.manifest_digest)));
}

#[test]
fn forged_announcement_is_rejected_and_nothing_fetched() {
    let mut h = Harness::new();
    h.connect(peer(1), info(Some("here"), 5, false));
    let rel = h.release(1, 10);
    let mut forged = rel.announcement_gossip.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(h.gossip(peer(1), forged), Verdict::Reject);
    // Signed by a key the trust root does not know.
    let mut other = shoal_testing::TestFleet::new("test-fleet");
    other.release_key = shoal_protocol::SigningKey::from_bytes(&[9; 32]);
    assert_eq!(
        h.gossip(peer(1), other.announce(&rel.announcement)),
        Verdict::Reject
    );
    assert_eq!(h.gossip(peer(1), vec![]), Verdict::Reject);
    assert!(
        !h.out
            .iter()
            .any(|o| matches!(o, Output::FetchManifest { .. }))
    );
    assert_eq!(h.node.highest(), None);
}

#[test]
fn expired_and_replayed_announcements_are_rejected() {
    let mut h = Harness::new();
    h.connect(peer(1), info(None, 5, false));
    let expired = Announcement {
        expires: shoal_testing::TEST_EPOCH,
        ..h.release(1, 4).announcement
    };
    assert_eq!(
        h.gossip(peer(1), h.fleet.announce(&expired)),
        Verdict::Reject
    );
    let r2 = h.release(2, 4);
    h.announce_and_serve_manifest(&r2, peer(1));
    let fetches_before = h
        .out
        .iter()
        .filter(|o| matches!(o, Output::FetchManifest { .. }))
        .count();
    // An older release (replay of #1) and a second copy of #2.
    let r1 = h.release(1, 4);
    assert_eq!(
        h.gossip(peer(1), r1.announcement_gossip.clone()),
        Verdict::Reject
    );
    assert_eq!(
        h.gossip(peer(1), r2.announcement_gossip.clone()),
        Verdict::Ignore
    );
    let fetches_after = h
        .out
        .iter()
        .filter(|o| matches!(o, Output::FetchManifest { .. }))
        .count();
    assert_eq!(fetches_before, fetches_after);
    assert_eq!(h.node.highest().map(|(s, _)| s.0), Some(2));
}

/// Relayed to the data-plane peers of `out`, as (peer, message).
fn relayed(out: &[Output]) -> Vec<(PeerId, Vec<u8>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::SyncGossip { peer, messages } => Some(
                messages
                    .iter()
                    .map(|m| (*peer, m.clone()))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn new_announcements_and_wave_control_are_relayed_to_data_plane_peers_once() {
    let mut h = Harness::new();
    let (a, b, c) = (peer(1), peer(2), peer(3));
    for p in [a, b, c] {
        h.connect(p, info(Some("here"), 1, false));
    }
    let rel = h.release(1, 2);
    h.out.clear();
    assert_eq!(
        h.gossip(a, rel.announcement_gossip.clone()),
        Verdict::Accept
    );
    let mut to: Vec<PeerId> = relayed(&h.out)
        .into_iter()
        .filter(|(_, m)| *m == rel.announcement_gossip)
        .map(|(p, _)| p)
        .collect();
    to.sort();
    let mut want = vec![b, c];
    want.sort();
    assert_eq!(to, want, "to every peer but the sender");
    // The same bytes again (from gossip or a relay) are not relayed again.
    h.out.clear();
    assert_eq!(
        h.gossip(b, rel.announcement_gossip.clone()),
        Verdict::Ignore
    );
    assert!(relayed(&h.out).is_empty());
    // A new wave control is relayed; a stale one is not.
    h.out.clear();
    assert_eq!(h.open_wave(&rel, 1, 0), Verdict::Accept);
    assert_eq!(
        relayed(&h.out).len(),
        3,
        "peer(99) is not connected: all three"
    );
    h.out.clear();
    let stale = h.fleet.wave_control(&rel, 1, WaveAction::Open { wave: 1 });
    assert_eq!(h.gossip(c, stale), Verdict::Ignore);
    assert!(relayed(&h.out).is_empty());
}
