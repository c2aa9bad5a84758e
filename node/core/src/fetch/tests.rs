//! The scheduler's unit tests.

use super::*;
use crate::ring::{Idle, Share};
use crate::rng::Rng;
use shoal_testing::device_key;

fn peer(n: u64) -> PeerId {
    PeerId::from(device_key(500 + n).public_key())
}

fn random_bits(rng: &mut Rng, len: u32) -> Bitfield {
    let mut b = Bitfield::new(len);
    for i in 0..len {
        if rng.below(3) == 0 {
            b.set(i);
        }
    }
    b
}

#[test]
fn replacing_bitfields_keeps_counts_exact() {
    let mut rng = Rng::new(3);
    let len = 300;
    let mut s = Scheduler::new(Bitfield::new(len));
    let classes = [Class::Local, Class::Remote, Class::Local, Class::Origin];
    let mut last = Vec::new();
    for round in 0..5 {
        last.clear();
        for (k, class) in classes.iter().enumerate() {
            let b = random_bits(&mut rng, len);
            s.set_peer_have(peer(k as u64), *class, b.clone());
            last.push((*class, b));
        }
        if round == 2 {
            s.peer_has(peer(0), Class::Local, 7);
            last[0].1.set(7);
        }
    }
    let mut fresh = Scheduler::new(Bitfield::new(len));
    for (k, (class, b)) in last.iter().enumerate() {
        fresh.set_peer_have(peer(k as u64), *class, b.clone());
    }
    assert_eq!(s.count_any, fresh.count_any);
    assert_eq!(s.count_local, fresh.count_local);
}

#[test]
fn a_straggling_fetch_is_asked_of_another_peer_and_the_first_copy_wins() {
    let mut rng = Rng::new(1);
    let mut s = Scheduler::new(Bitfield::new(1));
    let (slow, other) = (peer(1), peer(2));
    s.set_peer_have(slow, Class::Local, Bitfield::full(1));
    s.set_peer_have(other, Class::Local, Bitfield::full(1));
    assert_eq!(s.pick(&slow, &mut rng, 8), Some(0));
    s.start(slow, 0, Instant(5_000), Instant(100));
    assert_eq!(s.pick(&other, &mut rng, 8), None, "in flight: not needed");
    s.straggle(Instant(99), 2);
    assert_eq!(s.pick(&other, &mut rng, 8), None, "not late yet");
    s.straggle(Instant(100), 2);
    assert_eq!(
        s.next_deadline(),
        Some(Instant(100 + SUSPEND_MS)),
        "the straggler's claims come back after a while"
    );
    assert_eq!(
        s.pick(&slow, &mut rng, 8),
        None,
        "never twice from the straggler"
    );
    assert_eq!(s.pick(&other, &mut rng, 8), Some(0));
    s.start(other, 0, Instant(5_000), Instant(200));
    assert!(s.store(0));
    let cancelled = s.take_duplicates(0);
    assert_eq!(cancelled.len(), 2, "both copies end once one arrived");
    assert!(s.is_complete());
}

/// A share whose own arc holds every chunk (no other member on the ring).
fn whole_share() -> Share {
    Share::new(0, &mut [], &mut [], 77, Idle::No)
}

#[test]
fn claims_of_a_same_site_peer_that_never_delivered_do_not_hold_back_imports() {
    let mut rng = Rng::new(4);
    let mut s = Scheduler::new(Bitfield::new(2));
    s.set_share(whole_share());
    let (liar, remote) = (peer(1), peer(2));
    s.set_peer_have(liar, Class::Local, Bitfield::full(2));
    s.set_peer_have(remote, Class::Remote, Bitfield::full(2));
    // The same-site claim alone does not keep the remote peer from being asked.
    let first = s
        .pick(&remote, &mut rng, 8)
        .expect("remote asked despite the claim");
    s.start(remote, first, Instant(5_000), Instant(5_000));
    // Once the same-site peer delivers a verified chunk, its claims count.
    let other = 1 - first;
    s.finish(&remote, first);
    assert!(s.store(first));
    assert!(s.vouch(&liar));
    assert!(!s.vouch(&liar), "vouching twice is no news");
    assert_eq!(
        s.pick(&remote, &mut rng, 8),
        None,
        "chunk {other} is held on the site by a peer that delivered"
    );
    assert_eq!(s.pick(&liar, &mut rng, 8), Some(other));
    // Distrusted again (it failed to deliver): its claims no longer count.
    s.distrust(&liar);
    assert_eq!(s.pick(&remote, &mut rng, 8), Some(other));
}

#[test]
fn the_origin_keeps_its_claims_when_a_fetch_from_it_times_out() {
    let mut rng = Rng::new(5);
    let mut s = Scheduler::new(Bitfield::new(1));
    s.set_share(whole_share());
    let origin = peer(9);
    s.set_peer_have(origin, Class::Origin, Bitfield::full(1));
    s.distrust(&origin);
    assert_eq!(s.pick(&origin, &mut rng, 8), Some(0));
}

#[test]
fn a_chunk_whose_copies_all_straggle_is_asked_of_yet_another_peer() {
    let mut rng = Rng::new(6);
    let mut s = Scheduler::new(Bitfield::new(1));
    let peers = [peer(1), peer(2), peer(3)];
    for p in peers {
        s.set_peer_have(p, Class::Local, Bitfield::full(1));
    }
    s.start(peers[0], 0, Instant(5_000), Instant(100));
    s.straggle(Instant(100), 2);
    assert_eq!(s.pick(&peers[1], &mut rng, 8), Some(0));
    s.start(peers[1], 0, Instant(5_000), Instant(200));
    s.straggle(Instant(200), 2);
    // Two copies in flight, both late: neither counts, so a third peer is asked.
    assert_eq!(s.pick(&peers[2], &mut rng, 8), Some(0));
}

#[test]
fn a_stragglers_claims_are_set_aside_and_come_back() {
    let mut rng = Rng::new(7);
    let mut s = Scheduler::new(Bitfield::new(2));
    s.set_share(whole_share());
    let (slow, origin) = (peer(1), peer(9));
    s.set_peer_have(slow, Class::Remote, Bitfield::full(2));
    s.set_peer_have(origin, Class::Origin, Bitfield::full(2));
    s.start(slow, 0, Instant(5_000), Instant(100));
    s.straggle(Instant(100), 2);
    assert_eq!(s.holders(0), 0, "set aside: it holds nothing up");
    assert_eq!(s.pick(&slow, &mut rng, 8), None, "and it is not asked");
    assert!(
        s.pick(&origin, &mut rng, 8).is_some(),
        "no other holder: the origin is asked"
    );
    s.wake(Instant(100 + SUSPEND_MS - 1));
    assert_eq!(s.holders(0), 0);
    s.wake(Instant(100 + SUSPEND_MS));
    assert_eq!(s.holders(0), 1, "back after the suspension");
    assert!(s.pick(&slow, &mut rng, 8).is_some(), "and asked again");
    // A second suspension lasts twice as long; a HAVE ends it at once.
    s.suspend(&slow, Instant(2_000));
    assert_eq!(s.holders(0), 0);
    s.wake(Instant(2_000 + 2 * SUSPEND_MS - 1));
    assert_eq!(s.holders(0), 0, "twice as long the second time");
    s.peer_has(slow, Class::Remote, 1);
    assert_eq!(s.holders(0), 1, "a HAVE ends it at once");
    // The origin's claims are set aside too, and come back: it never advertises again.
    s.suspend(&origin, Instant(3_000));
    assert_eq!(s.pick(&origin, &mut rng, 8), None);
    assert_eq!(s.next_deadline(), Some(Instant(3_000 + SUSPEND_MS)));
}

#[test]
fn in_the_endgame_a_chunk_whose_copies_all_straggle_goes_past_three_copies() {
    let mut rng = Rng::new(8);
    let mut s = Scheduler::new(Bitfield::new(1));
    let peers = [peer(1), peer(2), peer(3), peer(4)];
    for p in peers {
        s.set_peer_have(p, Class::Local, Bitfield::full(1));
    }
    for (k, p) in peers[..3].iter().enumerate() {
        let t = 100 * (k as u64 + 1);
        assert_eq!(s.pick(p, &mut rng, 8), Some(0));
        s.start(*p, 0, Instant(5_000), Instant(t));
        s.straggle(Instant(t), 2);
    }
    assert_eq!(
        s.pick(&peers[3], &mut rng, 8),
        Some(0),
        "three tricklers do not hold the last chunk until their deadlines"
    );
}

#[test]
fn a_straggling_chunk_goes_to_a_same_site_peer_that_delivered_before() {
    let mut rng = Rng::new(9);
    let mut s = Scheduler::new(Bitfield::new(2));
    let (slow, unproven, proven) = (peer(1), peer(2), peer(3));
    for p in [slow, unproven, proven] {
        s.set_peer_have(p, Class::Local, Bitfield::full(2));
    }
    s.start(proven, 1, Instant(5_000), Instant(5_000));
    s.finish(&proven, 1);
    s.store(1);
    assert!(s.vouch(&proven));
    s.start(slow, 0, Instant(5_000), Instant(100));
    s.straggle(Instant(100), 2);
    assert_eq!(s.pick(&unproven, &mut rng, 8), None);
    assert_eq!(s.pick(&proven, &mut rng, 8), Some(0));
}

#[test]
fn an_exhausted_peer_is_picked_again_once_it_has_something_needed() {
    let mut rng = Rng::new(1);
    let mut s = Scheduler::new(Bitfield::new(10));
    let p = peer(1);
    s.set_peer_have(p, Class::Local, Bitfield::new(10));
    assert_eq!(s.pick(&p, &mut rng, 8), None);
    s.peer_has(p, Class::Local, 4);
    assert_eq!(s.pick(&p, &mut rng, 8), Some(4));
    s.start(p, 4, Instant(10), Instant(10));
    assert_eq!(s.pick(&p, &mut rng, 8), None);
    // The fetch fails: chunk 4 is needed again and the peer is asked again.
    s.finish(&p, 4);
    assert_eq!(s.pick(&p, &mut rng, 8), Some(4));
}
