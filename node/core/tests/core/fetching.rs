//! What the node fetches, from whom, and what it does about bad peers.

use std::collections::BTreeSet;

use super::harness::{Harness, fetches, info, peer};
use shoal_node_core::{Bitfield, DropReason, FetchError, Input, Instant, Output, PeerId};
use shoal_protocol::ReleaseSeq;

fn bits(len: u32, ones: &[u32]) -> Bitfield {
    let mut b = Bitfield::new(len);
    for &i in ones {
        b.set(i);
    }
    b
}

#[test]
fn same_site_first_then_remote_then_origin() {
    let mut h = Harness::with(|c| c.max_in_flight_per_peer = 8);
    let (local, remote, origin) = (peer(1), peer(2), peer(3));
    h.connect(origin, info(None, 1, true));
    h.connect(remote, info(Some("elsewhere"), 2, false));
    h.connect(local, info(Some("here"), 50, false));
    let rel = h.release(1, 12);
    let seq = rel.announcement.sequence;
    h.gossip(origin, rel.announcement_gossip.clone());
    h.input(Input::PeerHave {
        peer: origin,
        sequence: seq,
        have: Bitfield::full(12),
    });
    h.input(Input::PeerHave {
        peer: remote,
        sequence: seq,
        have: bits(12, &[0, 1, 2, 3, 4, 5, 6, 7]),
    });
    h.input(Input::PeerHave {
        peer: local,
        sequence: seq,
        have: bits(12, &[0, 1, 2, 3]),
    });
    // The manifest is asked of the preferred peer that holds it: the same-site one.
    assert!(
        h.out
            .iter()
            .any(|o| matches!(o, Output::FetchManifest { peer, .. } if *peer == local))
    );
    h.out.clear();
    let out = h.input(Input::ManifestFetched {
        peer: local,
        sequence: seq,
        result: Ok(rel.manifest_bytes.clone()),
    });
    let f = fetches(&out);
    let of = |f: &[(PeerId, u32)], p| {
        f.iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, i)| *i)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        of(&f, local),
        BTreeSet::from([0, 1, 2, 3]),
        "local serves all it has"
    );
    // With one same-site peer, this node imports its half of what the site lacks: from the
    // remote peer one chunk it has (its rate is not known yet, and a remote peer's queue is
    // kept short), from the origin the rest, what only the remote peer has included. The
    // same-site peer has not delivered anything yet, so its claims do not count against the
    // remote peer.
    let (r, o) = (of(&f, remote), of(&f, origin));
    assert!(
        r.len() <= 1 && r.iter().all(|i| (0..8).contains(i)),
        "remote: one chunk it has: {r:?}"
    );
    assert!(
        o.iter().all(|i| (4..12).contains(i)) && r.is_disjoint(&o),
        "origin: what the same-site peer does not have and the remote peer was not asked for: {o:?}"
    );
    assert!(r.len() + o.len() < 8, "only this node's share: {r:?} {o:?}");
    // Nothing arrives for the idle fallback's 2 s: then the rest of what the site lacks too.
    let out = h
        .advance(Instant::from_millis(2_000))
        .expect("the idle timer fires");
    let later = fetches(&out);
    let all_r: BTreeSet<u32> = r.union(&of(&later, remote)).copied().collect();
    let all_o: BTreeSet<u32> = o.union(&of(&later, origin)).copied().collect();
    assert!(all_r.iter().all(|i| *i < 8), "{all_r:?}");
    assert!(
        all_o.is_superset(&BTreeSet::from([8, 9, 10, 11])),
        "{all_o:?}"
    );
    let all: BTreeSet<u32> = all_r.union(&all_o).copied().collect();
    assert!(all.is_superset(&(4..12).collect()), "{all:?}");
}

#[test]
fn rarest_chunk_first() {
    let mut h = Harness::with(|c| c.max_in_flight_per_peer = 1);
    let (a, b, c) = (peer(1), peer(2), peer(3));
    h.connect(a, info(Some("here"), 1, false));
    h.connect(b, info(Some("here"), 2, false));
    h.connect(c, info(Some("here"), 3, false));
    let rel = h.release(1, 3);
    let seq = rel.announcement.sequence;
    h.gossip(a, rel.announcement_gossip.clone());
    h.input(Input::PeerHave {
        peer: a,
        sequence: seq,
        have: bits(3, &[0, 1, 2]),
    });
    h.input(Input::PeerHave {
        peer: b,
        sequence: seq,
        have: bits(3, &[0, 2]),
    });
    h.input(Input::PeerHave {
        peer: c,
        sequence: seq,
        have: bits(3, &[0]),
    });
    let out = h.input(Input::ManifestFetched {
        peer: a,
        sequence: seq,
        result: Ok(rel.manifest_bytes.clone()),
    });
    // Chunk 1 is held by one peer, chunk 2 by two, chunk 0 by three.
    assert_eq!(fetches(&out), vec![(a, 1), (b, 2), (c, 0)]);
}

#[test]
fn bad_bytes_ban_the_peer_and_the_chunk_is_fetched_elsewhere() {
    let mut h = Harness::with(|c| c.max_in_flight_per_peer = 1);
    let (bad, good) = (peer(1), peer(2));
    h.connect(bad, info(Some("here"), 1, false));
    h.connect(good, info(Some("here"), 2, false));
    let rel = h.release(1, 2);
    let seq = rel.announcement.sequence;
    h.gossip(bad, rel.announcement_gossip.clone());
    h.input(Input::PeerHave {
        peer: bad,
        sequence: seq,
        have: Bitfield::full(2),
    });
    h.input(Input::PeerHave {
        peer: good,
        sequence: seq,
        have: Bitfield::full(2),
    });
    let out = h.input(Input::ManifestFetched {
        peer: bad,
        sequence: seq,
        result: Ok(rel.manifest_bytes.clone()),
    });
    let f = fetches(&out);
    let (_, from_bad) = *f
        .iter()
        .find(|(p, _)| *p == bad)
        .expect("the preferred peer is asked");
    let out = h.input(Input::ChunkFetched {
        peer: bad,
        sequence: seq,
        index: from_bad,
        result: Err(FetchError::DigestMismatch),
    });
    assert!(out.iter().any(
        |o| matches!(o, Output::BanPeer { peer, reason: DropReason::BadData, .. } if *peer == bad)
    ));
    let (_, other) = *f
        .iter()
        .find(|(p, _)| *p == good)
        .expect("the other peer is asked too");
    h.ok(good, &rel, other);
    let refetch = fetches(&h.out);
    assert_eq!(
        refetch.last(),
        Some(&(good, from_bad)),
        "refetched from the honest peer"
    );
    h.ok(good, &rel, from_bad);
    assert_eq!(h.node.progress().map(|p| p.have_chunks), Some(2));
    // A banned peer that reconnects is refused.
    let out = h.connect(bad, info(Some("here"), 1, false));
    assert!(matches!(out.as_slice(), [Output::BanPeer { .. }]));
}

#[test]
fn slow_and_silent_peers_are_dropped() {
    let mut h = Harness::with(|c| c.max_in_flight_per_peer = 1);
    let (slow, silent) = (peer(1), peer(2));
    h.connect(slow, info(Some("here"), 1, false));
    h.connect(silent, info(Some("here"), 2, false));
    let rel = h.release(1, 4);
    let seq = rel.announcement.sequence;
    h.gossip(slow, rel.announcement_gossip.clone());
    for p in [slow, silent] {
        h.input(Input::PeerHave {
            peer: p,
            sequence: seq,
            have: Bitfield::full(4),
        });
    }
    let out = h.input(Input::ManifestFetched {
        peer: slow,
        sequence: seq,
        result: Ok(rel.manifest_bytes.clone()),
    });
    let f = fetches(&out);
    let idx = |p| {
        f.iter()
            .find(|(q, _)| *q == p)
            .map(|(_, i)| *i)
            .expect("asked")
    };
    // 256 KiB in 60 s is about 4 KiB/s, under the 64 KiB/s minimum.
    let out = h.input(Input::ChunkFetched {
        peer: slow,
        sequence: seq,
        index: idx(slow),
        result: Ok(shoal_node_core::FetchStats {
            bytes: 256 * 1024,
            elapsed_ms: 60_000,
        }),
    });
    assert!(out.iter().any(
        |o| matches!(o, Output::DropPeer { peer, reason: DropReason::TooSlow } if *peer == slow)
    ));
    // The silent peer never answers: at the deadline the fetch is cancelled and its claims
    // are set aside for a while (1 s, then 2 s), so they hold nothing up meanwhile; then it is
    // asked again, and three timeouts in a row drop it.
    while h.advance(Instant::from_millis(60_000)).is_some() {}
    let cancels = h
        .out
        .iter()
        .filter(|o| matches!(o, Output::CancelFetch { peer, .. } if *peer == silent))
        .count();
    assert_eq!(cancels, 3, "asked again after each suspension");
    assert_eq!(h.node.progress().map(|p| p.in_flight), Some(0));
    assert!(
        h.out.iter().any(|o| matches!(o, Output::DropPeer { peer, reason: DropReason::Unresponsive } if *peer == silent)),
        "the silent peer is dropped after failing three times in a row"
    );
    assert_eq!(h.node.peer_count(), 0);
}

#[test]
fn endgame_fetches_the_last_chunk_twice_and_cancels_the_loser() {
    let mut h = Harness::with(|c| c.max_in_flight_per_peer = 1);
    let (slow, fast) = (peer(1), peer(2));
    h.connect(slow, info(Some("here"), 1, false));
    h.connect(fast, info(Some("here"), 2, false));
    let rel = h.release(1, 2);
    let seq = rel.announcement.sequence;
    h.gossip(slow, rel.announcement_gossip.clone());
    h.input(Input::PeerHave {
        peer: slow,
        sequence: seq,
        have: Bitfield::full(2),
    });
    h.input(Input::PeerHave {
        peer: fast,
        sequence: seq,
        have: Bitfield::full(2),
    });
    let out = h.input(Input::ManifestFetched {
        peer: slow,
        sequence: seq,
        result: Ok(rel.manifest_bytes.clone()),
    });
    let f = fetches(&out);
    assert_eq!(f.len(), 2, "one chunk from each peer");
    let (_, on_slow) = *f.iter().find(|(p, _)| *p == slow).expect("slow asked");
    let (_, on_fast) = *f.iter().find(|(p, _)| *p == fast).expect("fast asked");
    // The fast peer delivers; nothing is left to ask for, so it is asked for the slow one's chunk.
    let out = h.ok(fast, &rel, on_fast);
    assert_eq!(fetches(&out), vec![(fast, on_slow)]);
    // The duplicate arrives first: the slow fetch is cancelled, and the release is staged.
    let out = h.ok(fast, &rel, on_slow);
    assert!(out.iter().any(|o| matches!(o, Output::CancelFetch { peer, index, .. } if *peer == slow && *index == on_slow)));
    assert_eq!(
        h.node.progress().map(|p| (p.have_chunks, p.in_flight)),
        Some((2, 0))
    );
    // The slow peer's late failure is not held against it.
    h.input(Input::ChunkFetched {
        peer: slow,
        sequence: seq,
        index: on_slow,
        result: Err(FetchError::Timeout),
    });
    assert_eq!(h.node.peer_count(), 2);
}

#[test]
fn a_peer_lacking_a_chunk_it_advertised_loses_all_its_claims() {
    let mut h = Harness::with(|c| c.max_in_flight_per_peer = 1);
    let (liar, remote) = (peer(1), peer(2));
    h.connect(liar, info(Some("here"), 1, false));
    h.connect(remote, info(Some("elsewhere"), 2, false));
    let rel = h.release(1, 4);
    let seq = rel.announcement.sequence;
    h.announce_and_serve_manifest(&rel, liar);
    h.input(Input::PeerHave {
        peer: liar,
        sequence: seq,
        have: Bitfield::full(4),
    });
    let out = h.input(Input::PeerHave {
        peer: remote,
        sequence: seq,
        have: Bitfield::full(4),
    });
    let asked: Vec<(PeerId, u32)> = fetches(&h.out.clone())
        .into_iter()
        .chain(fetches(&out))
        .collect();
    let (_, first) = *asked.iter().find(|(p, _)| *p == liar).expect("liar asked");
    // It delivers one chunk: now its claims count, and keep the node from importing what it
    // claims from the remote peer.
    let out = h.ok(liar, &rel, first);
    let mut asked = fetches(&out);
    for (p, i) in fetches(&h.out.clone()) {
        if p == remote {
            // Asked of the remote peer before the same-site peer vouched: let those finish.
            asked.extend(fetches(&h.ok(remote, &rel, i)));
        }
    }
    assert!(asked.iter().all(|(p, _)| *p == liar), "{asked:?}");
    let Some(&(_, index)) = asked.first() else {
        panic!("the liar is asked for the next chunk: {asked:?}")
    };
    let out = h.input(Input::ChunkFetched {
        peer: liar,
        sequence: seq,
        index,
        result: Err(FetchError::NotFound),
    });
    let f = fetches(&out);
    assert!(
        f.iter().any(|(p, _)| *p == remote),
        "one false advertisement lifts every claim of that peer: {f:?}"
    );
}

#[test]
fn a_trickled_manifest_is_asked_elsewhere_after_the_short_manifest_deadline() {
    let mut h = Harness::with(|c| c.manifest_timeout_ms = 1_000);
    let (slow, other) = (peer(1), peer(2));
    h.connect(slow, info(Some("here"), 1, false));
    h.connect(other, info(Some("here"), 2, false));
    let rel = h.release(1, 2);
    h.gossip(slow, rel.announcement_gossip.clone());
    let asked = |out: &[Output]| {
        out.iter()
            .filter_map(|o| match o {
                Output::FetchManifest { peer, .. } => Some(*peer),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(asked(&h.out.clone()), vec![slow]);
    let out = h
        .advance(Instant::from_millis(1_000))
        .expect("the manifest deadline fires");
    assert_eq!(asked(&out), vec![other], "after 1 s, not the fetch timeout");
}

/// The manifest fetches among `out`, by peer.
fn manifest_asks(out: &[Output]) -> Vec<PeerId> {
    out.iter()
        .filter_map(|o| match o {
            Output::FetchManifest { peer, .. } => Some(*peer),
            _ => None,
        })
        .collect()
}

#[test]
fn only_the_sites_manifest_importer_asks_at_once_the_others_wait_for_a_holder() {
    let (a, b, origin) = (peer(1), peer(2), peer(3));
    // The same site seen from this node: two same-site peers and the origin. Which of the
    // three site members imports the manifest depends on the release; try releases until
    // this node is not the importer once and is it once.
    let (mut waited, mut imported) = (false, false);
    for seq in 1..40 {
        let mut h = Harness::with(|c| c.manifest_wait_ms = 250);
        h.connect(origin, info(None, 40, true));
        h.connect(a, info(Some("here"), 1, false));
        h.connect(b, info(Some("here"), 1, false));
        let rel = h.release(seq, 4);
        h.gossip(a, rel.announcement_gossip.clone());
        let asked = manifest_asks(&h.out);
        if asked.is_empty() {
            waited = true;
            // A peer that now says it holds the manifest is asked at once.
            let out = h.input(Input::PeerHave {
                peer: b,
                sequence: rel.announcement.sequence,
                have: Bitfield::new(4),
            });
            assert_eq!(manifest_asks(&out), vec![b], "release {seq}");
            // Without any holder, the wait ends after 250 ms and the peers are asked in turn.
            let mut h = Harness::with(|c| c.manifest_wait_ms = 250);
            h.connect(origin, info(None, 40, true));
            h.connect(a, info(Some("here"), 1, false));
            h.connect(b, info(Some("here"), 1, false));
            h.gossip(a, rel.announcement_gossip.clone());
            assert!(manifest_asks(&h.out).is_empty());
            let out = h.advance(Instant::from_millis(250)).expect("the wait ends");
            let asked = manifest_asks(&out);
            assert_eq!(asked.len(), 1);
            assert_ne!(
                asked[0], origin,
                "peers before the origin once the wait is over"
            );
        } else {
            imported = true;
            assert_eq!(
                asked,
                vec![origin],
                "the importer asks the origin at once, not peers that do not hold it yet"
            );
        }
        if waited && imported {
            return;
        }
    }
    panic!("waited {waited}, imported {imported}");
}

#[test]
fn a_busy_peer_is_asked_again_after_a_jittered_backoff() {
    let mut h = Harness::with(|c| c.busy_backoff_ms = 100);
    let origin = peer(3);
    h.connect(origin, info(None, 1, true));
    let rel = h.release(1, 1);
    let seq = rel.announcement.sequence;
    h.announce_and_serve_manifest(&rel, origin);
    h.input(Input::PeerHave {
        peer: origin,
        sequence: seq,
        have: Bitfield::full(1),
    });
    let mut asked_at = Vec::new();
    for _ in 0..12 {
        let mut out = h.out.clone();
        // Other timers (persistence, idleness) may come first.
        while fetches(&out).is_empty() {
            out = h.advance(Instant::from_millis(60_000)).expect("a retry");
        }
        assert_eq!(fetches(&out), vec![(origin, 0)]);
        asked_at.push(h.now.as_millis());
        h.out.clear();
        h.input(Input::ChunkFetched {
            peer: origin,
            sequence: seq,
            index: 0,
            result: Err(FetchError::Busy),
        });
    }
    let gaps: BTreeSet<u64> = asked_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| (50..=150).contains(g)),
        "half to one and a half times the backoff: {gaps:?}"
    );
    assert!(
        gaps.len() > 3,
        "not the same wait every time (devices turned away together spread out): {gaps:?}"
    );
}

#[test]
fn a_node_cut_off_from_outside_its_site_imports_only_its_share_when_reconnected() {
    let mut h = Harness::with(|c| c.max_in_flight_per_peer = 64);
    let (local, member, remote) = (peer(1), peer(2), peer(3));
    h.connect(local, info(Some("here"), 1, false));
    h.input(Input::SiteMembers {
        peers: vec![local, member],
    });
    let rel = h.release(1, 64);
    let seq = rel.announcement.sequence;
    h.gossip(local, rel.announcement_gossip.clone());
    h.input(Input::ManifestFetched {
        peer: local,
        sequence: seq,
        result: Ok(rel.manifest_bytes.clone()),
    });
    h.input(Input::PeerHave {
        peer: local,
        sequence: seq,
        have: Bitfield::new(64),
    });
    // Nothing to fetch for 3 s: long enough for the idle fallback to widen the share to
    // everything, had there been a way out of the site.
    while h.advance(Instant::from_millis(3_000)).is_some() {}
    h.now = Instant::from_millis(3_000);
    h.connect(remote, info(Some("there"), 1, false));
    let out = h.input(Input::PeerHave {
        peer: remote,
        sequence: seq,
        have: Bitfield::full(64),
    });
    let asked = fetches(&out).iter().filter(|(p, _)| *p == remote).count();
    assert!(
        asked > 0 && asked < 64,
        "its own arc of the site's imports, not all 64 chunks: {asked}"
    );
}

#[test]
fn a_have_of_a_held_chunk_from_a_known_peer_is_ignored_and_others_are_not() {
    let mut h = Harness::new();
    let (a, b) = (peer(1), peer(2));
    h.connect(a, info(Some("here"), 1, false));
    let rel = h.release(1, 4);
    let seq = rel.announcement.sequence;
    h.announce_and_serve_manifest(&rel, a);
    let out = h.input(Input::PeerHaveChunk {
        peer: a,
        sequence: seq,
        index: 0,
    });
    assert_eq!(fetches(&out), vec![(a, 0)]);
    assert!(
        !h.node.ignores_have(&a, seq, 1),
        "a chunk the node needs is news"
    );
    h.ok(a, &rel, 0);
    assert!(h.node.has_chunk(seq, 0));
    assert!(
        h.node.ignores_have(&a, seq, 0),
        "held, and a's claims are known"
    );
    assert!(
        !h.node.ignores_have(&a, ReleaseSeq(seq.0 + 1), 0),
        "another release"
    );
    h.connect(b, info(Some("here"), 1, false));
    assert!(
        !h.node.ignores_have(&b, seq, 0),
        "a peer's first claim is recorded even for a held chunk"
    );
    h.input(Input::PeerHaveChunk {
        peer: b,
        sequence: seq,
        index: 0,
    });
    assert!(h.node.ignores_have(&b, seq, 0));
    // A claim it ignores leaves b to be asked for what it needs when it has it.
    let out = h.input(Input::PeerHaveChunk {
        peer: b,
        sequence: seq,
        index: 2,
    });
    assert_eq!(fetches(&out), vec![(b, 2)]);
}

#[test]
fn the_next_timeout_follows_backoffs_as_they_are_set_replaced_and_dropped() {
    let mut h = Harness::with(|c| {
        c.busy_backoff_ms = 100;
        c.fetch_timeout_ms = 60_000;
    });
    let (a, b) = (peer(1), peer(2));
    h.connect(a, info(Some("here"), 1, false));
    h.connect(b, info(Some("here"), 1, false));
    let rel = h.release(1, 8);
    let seq = rel.announcement.sequence;
    h.announce_and_serve_manifest(&rel, a);
    for p in [a, b] {
        h.input(Input::PeerHave {
            peer: p,
            sequence: seq,
            have: Bitfield::full(8),
        });
    }
    let asked = fetches(&h.out);
    let of = |p: PeerId| {
        asked
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, i)| *i)
            .collect::<Vec<_>>()
    };
    let (fa, fb) = (of(a), of(b));
    assert!(fa.len() >= 2 && !fb.is_empty(), "{fa:?} {fb:?}");
    // The earliest backoff still running, found by scanning every peer: what the cache must
    // give. Other timers (deadlines after 60 s, idleness after 1 s) come later.
    let scan = |h: &Harness| {
        h.node
            .peer_order()
            .iter()
            .filter_map(|p| h.node.backoff_until(p))
            .filter(|t| *t > h.now)
            .min()
    };
    let busy = |h: &mut Harness, p: PeerId, index: u32| {
        h.input(Input::ChunkFetched {
            peer: p,
            sequence: seq,
            index,
            result: Err(FetchError::Busy),
        });
    };
    let t0 = h.now.as_millis();
    busy(&mut h, a, fa[0]);
    assert!(scan(&h).is_some());
    assert_eq!(h.node.poll_timeout(), scan(&h));
    h.now = Instant::from_millis(t0 + 40);
    busy(&mut h, b, fb[0]);
    assert_eq!(h.node.poll_timeout(), scan(&h));
    // a, which may hold the earliest end, is in backoff again.
    h.now = Instant::from_millis(t0 + 45);
    busy(&mut h, a, fa[1]);
    assert_eq!(h.node.poll_timeout(), scan(&h));
    // b leaves.
    h.input(Input::PeerDisconnected { peer: b });
    assert_eq!(h.node.poll_timeout(), scan(&h));
    // Past every backoff: none is left.
    h.now = Instant::from_millis(t0 + 400);
    h.input(Input::PeerDisconnected { peer: peer(9) });
    assert_eq!(scan(&h), None);
    assert!(
        h.node
            .poll_timeout()
            .is_none_or(|t| t > Instant::from_millis(t0 + 400)),
        "no backoff left"
    );
}

#[test]
fn peers_are_kept_in_order_of_class_rtt_and_id_as_they_connect() {
    let mut h = Harness::new();
    let rtts = [30u32, 5, 30, 1, 12, 5, 7, 30];
    for (k, rtt) in rtts.iter().enumerate() {
        let site = if k % 3 == 0 { "elsewhere" } else { "here" };
        h.connect(peer(k as u64), info(Some(site), *rtt, false));
    }
    // A peer whose RTT changed on reconnection moves.
    h.connect(peer(1), info(Some("here"), 40, false));
    let mut expected: Vec<(bool, u32, PeerId)> = (0..rtts.len())
        .map(|k| {
            let rtt = if k == 1 { 40 } else { rtts[k] };
            (k % 3 == 0, rtt, peer(k as u64))
        })
        .collect();
    expected.sort();
    let expected: Vec<PeerId> = expected.into_iter().map(|(_, _, p)| p).collect();
    assert_eq!(h.node.peer_order(), expected);
}
