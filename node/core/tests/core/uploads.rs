//! Serving: upload slots and the origin's super-seeding.

use std::sync::Arc;

use super::harness::{Harness, info, peer};
use shoal_node_core::{Admission, Bitfield, Input, Instant, Node};
use shoal_testing::TEST_EPOCH;

#[test]
fn the_origin_serves_each_chunk_once_then_only_what_no_peer_holds() {
    let h = Harness::new();
    let rel = h.release(1, 3);
    let seq = rel.announcement.sequence;
    let mut config = h.fleet.config(50);
    config.origin = true;
    config.origin_max_copies = 1;
    let mut origin = Node::new(config, 1);
    origin.handle(Instant::ZERO, Input::WallClock(TEST_EPOCH));
    origin
        .seed(
            Instant::ZERO,
            rel.announcement_gossip[1..].to_vec(),
            Arc::clone(&rel.manifest_bytes),
        )
        .expect("a valid release seeds");
    assert_eq!(origin.have(), Some(&Bitfield::full(3)));
    let (a, b) = (peer(1), peer(2));
    origin.handle(
        Instant::ZERO,
        Input::PeerConnected {
            peer: a,
            info: info(None, 5, false),
        },
    );
    origin.handle(
        Instant::ZERO,
        Input::PeerConnected {
            peer: b,
            info: info(None, 5, false),
        },
    );
    assert_eq!(
        origin.admit_upload(Instant::ZERO, a, seq, 0),
        Admission::Serve
    );
    assert_eq!(
        origin.admit_upload(Instant::ZERO, b, seq, 0),
        Admission::Busy,
        "chunk 0 already went out"
    );
    assert_eq!(
        origin.admit_upload(Instant::ZERO, b, seq, 1),
        Admission::Serve
    );
    // Later, a holds chunk 0 (its HAVE reached the origin): still not served twice.
    origin.handle(
        Instant(20_000),
        Input::PeerHaveChunk {
            peer: a,
            sequence: seq,
            index: 0,
        },
    );
    assert_eq!(
        origin.admit_upload(Instant::ZERO, b, seq, 0),
        Admission::Busy,
        "a peer holds it"
    );
    // Nobody holds chunk 1 long after it went out (its fetcher left): it is served again.
    assert_eq!(
        origin.admit_upload(Instant::ZERO, a, seq, 1),
        Admission::Serve
    );
    assert_eq!(
        origin.admit_upload(Instant::ZERO, a, seq, 9),
        Admission::NotFound
    );
    assert_eq!(origin.uploads(), 3);
    origin.upload_finished(a, seq, 0, true);
    assert_eq!(origin.uploads(), 2);
}

/// An origin holding a 3-chunk release, connected to peers 1..=4.
fn seeded_origin(
    h: &Harness,
    max_uploads: u32,
    max_copies: u32,
) -> (Node, shoal_protocol::ReleaseSeq) {
    let rel = h.release(1, 3);
    let mut config = h.fleet.config(50);
    config.origin = true;
    config.max_uploads = max_uploads;
    config.origin_max_copies = max_copies;
    let mut origin = Node::new(config, 1);
    origin.handle(Instant::ZERO, Input::WallClock(TEST_EPOCH));
    origin
        .seed(
            Instant::ZERO,
            rel.announcement_gossip[1..].to_vec(),
            Arc::clone(&rel.manifest_bytes),
        )
        .expect("a valid release seeds");
    for n in 1..=4 {
        origin.handle(
            Instant::ZERO,
            Input::PeerConnected {
                peer: peer(n),
                info: info(None, 5, false),
            },
        );
    }
    (origin, rel.announcement.sequence)
}

#[test]
fn the_origin_serves_more_copies_only_while_half_its_slots_are_free() {
    let h = Harness::new();
    let (mut origin, seq) = seeded_origin(&h, 4, 3);
    let t = Instant(10);
    assert_eq!(origin.admit_upload(t, peer(1), seq, 0), Admission::Serve);
    assert_eq!(
        origin.admit_upload(t, peer(2), seq, 0),
        Admission::Serve,
        "one slot of four busy: a second copy"
    );
    assert_eq!(
        origin.admit_upload(t, peer(3), seq, 0),
        Admission::Busy,
        "half the slots busy: no more copies"
    );
    assert_eq!(
        origin.admit_upload(t, peer(3), seq, 1),
        Admission::Serve,
        "a first copy is served while any slot is free"
    );
    origin.upload_finished(peer(1), seq, 0, true);
    origin.upload_finished(peer(2), seq, 0, true);
    assert_eq!(origin.admit_upload(t, peer(3), seq, 0), Admission::Serve);
    assert_eq!(
        origin.admit_upload(t, peer(4), seq, 0),
        Admission::Busy,
        "at most origin_max_copies"
    );
}

#[test]
fn a_failed_upload_frees_its_copy_at_once() {
    let h = Harness::new();
    let (mut origin, seq) = seeded_origin(&h, 16, 1);
    let t = Instant(10);
    assert_eq!(origin.admit_upload(t, peer(1), seq, 2), Admission::Serve);
    assert_eq!(origin.admit_upload(t, peer(2), seq, 2), Admission::Busy);
    origin.upload_finished(peer(1), seq, 2, false);
    assert_eq!(origin.uploads(), 0);
    assert_eq!(
        origin.admit_upload(t, peer(2), seq, 2),
        Admission::Serve,
        "the lost copy no longer counts"
    );
    origin.upload_finished(peer(2), seq, 2, true);
    assert_eq!(origin.admit_upload(t, peer(3), seq, 2), Admission::Busy);
}

#[test]
fn a_device_serves_what_it_has_within_its_upload_slots() {
    let mut h = Harness::with(|c| c.max_uploads = 1);
    let p = peer(1);
    h.connect(p, info(Some("here"), 1, false));
    let rel = h.release(1, 2);
    let seq = rel.announcement.sequence;
    h.announce_and_serve_manifest(&rel, p);
    assert_eq!(
        h.node.admit_upload(Instant::ZERO, peer(2), seq, 0),
        Admission::NotFound
    );
    h.ok(p, &rel, 0);
    assert_eq!(
        h.node.admit_upload(Instant::ZERO, peer(2), seq, 0),
        Admission::Serve
    );
    assert_eq!(
        h.node.admit_upload(Instant::ZERO, peer(3), seq, 0),
        Admission::Busy,
        "one upload slot"
    );
    h.node.upload_finished(peer(2), seq, 0, true);
    assert_eq!(
        h.node.admit_upload(Instant::ZERO, peer(3), seq, 0),
        Admission::Serve
    );
}

#[test]
fn the_origin_sends_a_release_it_seeds_to_its_connected_peers_over_the_data_plane() {
    let h = Harness::new();
    let rel = h.release(1, 2);
    let mut config = h.fleet.config(51);
    config.origin = true;
    let mut origin = Node::new(config, 1);
    origin.handle(Instant::ZERO, Input::WallClock(TEST_EPOCH));
    let a = peer(1);
    origin.handle(
        Instant::ZERO,
        Input::PeerConnected {
            peer: a,
            info: info(None, 5, false),
        },
    );
    while origin.poll_output().is_some() {}
    origin
        .seed(
            Instant::ZERO,
            rel.announcement_gossip[1..].to_vec(),
            Arc::clone(&rel.manifest_bytes),
        )
        .expect("a valid release seeds");
    let mut sent = Vec::new();
    while let Some(o) = origin.poll_output() {
        if let shoal_node_core::Output::SyncGossip { peer, messages } = o {
            sent.extend(messages.into_iter().map(|m| (peer, m)));
        }
    }
    assert_eq!(sent, vec![(a, rel.announcement_gossip.clone())]);
}
