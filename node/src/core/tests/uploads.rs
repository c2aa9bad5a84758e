//! Serving: upload slots and the origin's super-seeding.

use std::sync::Arc;

use super::harness::{Harness, info, peer};
use crate::core::{Admission, Bitfield, Input, Instant, Node};
use crate::testing::TEST_EPOCH;

#[test]
fn the_origin_serves_each_chunk_once_then_only_what_no_peer_holds() {
    let h = Harness::new();
    let rel = h.release(1, 3);
    let seq = rel.announcement.sequence;
    let mut config = h.fleet.config(50);
    config.origin = true;
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
    assert_eq!(origin.admit_upload(a, seq, 0), Admission::Serve);
    assert_eq!(
        origin.admit_upload(b, seq, 0),
        Admission::Busy,
        "chunk 0 already went out"
    );
    assert_eq!(origin.admit_upload(b, seq, 1), Admission::Serve);
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
        origin.admit_upload(b, seq, 0),
        Admission::Busy,
        "a peer holds it"
    );
    // Nobody holds chunk 1 long after it went out (its fetcher left): it is served again.
    assert_eq!(origin.admit_upload(a, seq, 1), Admission::Serve);
    assert_eq!(origin.admit_upload(a, seq, 9), Admission::NotFound);
    assert_eq!(origin.uploads(), 3);
    origin.upload_finished(a, seq, 0);
    assert_eq!(origin.uploads(), 2);
}

#[test]
fn a_device_serves_what_it_has_within_its_upload_slots() {
    let mut h = Harness::with(|c| c.max_uploads = 1);
    let p = peer(1);
    h.connect(p, info(Some("here"), 1, false));
    let rel = h.release(1, 2);
    let seq = rel.announcement.sequence;
    h.announce_and_serve_manifest(&rel, p);
    assert_eq!(h.node.admit_upload(peer(2), seq, 0), Admission::NotFound);
    h.ok(p, &rel, 0);
    assert_eq!(h.node.admit_upload(peer(2), seq, 0), Admission::Serve);
    assert_eq!(
        h.node.admit_upload(peer(3), seq, 0),
        Admission::Busy,
        "one upload slot"
    );
    h.node.upload_finished(peer(2), seq, 0);
    assert_eq!(h.node.admit_upload(peer(3), seq, 0), Admission::Serve);
}
