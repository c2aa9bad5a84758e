//! Hostile peers against real daemons on loopback: a peer flooding invalid announcements, and a
//! peer trickling a chunk at 1 byte per second. Each test binds ephemeral loopback ports only and
//! bounds every wait; none asserts a wall-clock duration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shoal_node::daemon::identity::DeviceKey;
use shoal_node::daemon::metrics::PeerClass;
use shoal_node::daemon::store::{Store, StoredBlob};
use shoal_node::daemon::transfer::{BlobKind, BlobSource};
use shoal_node::daemon::{Launcher, WallClock};
use shoal_protocol::Digest;
use shoal_testing::TestFleet;
use shoal_testing::daemon::{clock, logs};

const WAIT: Duration = Duration::from_secs(120);

fn launcher(fleet: &TestFleet, dir: &std::path::Path, name: &str, clock: &WallClock) -> Launcher {
    fleet.daemon(DeviceKey::generate(), dir.join(name), clock)
}

/// CPU time (user + system) spent so far by this process's threads named `name`, in
/// milliseconds, from `/proc/self/task/*/stat` (clock ticks of 10 ms).
fn thread_cpu_ms(name: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(name) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        total += ticks * 10;
    }
    total
}

/// Flood rate and length: about 10,000 invalid announcements a second for three seconds.
const FLOOD_PER_TICK: u64 = 100;
const FLOOD_TICK: Duration = Duration::from_millis(10);
const FLOOD_TICKS: u64 = 300;

#[test]
fn a_flood_of_invalid_announcements_keeps_cpu_bounded_and_the_honest_one_arrives() {
    logs();
    let fleet = TestFleet::new("flood");
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let payload = fleet.random_release(1, 2 << 20, 5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("others")
        .enable_all()
        .build()
        .unwrap();
    // The victim runs on threads of its own, so its CPU time can be told from the attacker's.
    let victim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("victim")
        .enable_all()
        .build()
        .unwrap();

    let origin = rt.block_on(
        launcher(&fleet, dir.path(), "origin", &clock)
            .origin(true)
            .start(),
    );
    let origin = origin.unwrap();
    let victim = rt
        .block_on(
            victim_rt.spawn(
                launcher(&fleet, dir.path(), "victim", &clock)
                    .bootstrap(vec![origin.listen_addrs()[0].clone()])
                    .start(),
            ),
        )
        .unwrap()
        .unwrap();
    let attacker = rt
        .block_on(
            launcher(&fleet, dir.path(), "attacker", &clock)
                .kademlia(false)
                .bootstrap(vec![victim.listen_addrs()[0].clone()])
                .start(),
        )
        .unwrap();

    rt.block_on(async {
        let (s, ok) = victim.wait_for(WAIT, |s| s.peers.len() >= 2).await;
        assert!(ok, "the victim never connected to both: {s:#?}");
        // Let gossipsub's mesh form (heartbeat 500 ms) so the flood reaches the victim.
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Invalid announcements: the honest one with one signature byte changed, each copy
        // different (message ids are the BLAKE3 of the bytes).
        let honest = payload.release.announcement_gossip.clone();
        let invalid = |n: u64| {
            let mut b = honest.clone();
            let len = b.len();
            b[len - 8..].copy_from_slice(&n.to_le_bytes());
            b
        };
        let cpu_before = thread_cpu_ms("victim");
        let start = std::time::Instant::now();
        let mut tick = tokio::time::interval(FLOOD_TICK);
        let mut sent = 0u64;
        for t in 0..FLOOD_TICKS {
            tick.tick().await;
            for _ in 0..FLOOD_PER_TICK {
                attacker.publish_unchecked(invalid(sent)).await;
                sent += 1;
            }
            // A third of the way in, the builder's origin announces the real release.
            if t == FLOOD_TICKS / 3 {
                payload.seed(&origin).await.unwrap();
            }
        }
        let flood_ms = start.elapsed().as_millis() as u64;
        let (s, ok) = victim.wait_for(WAIT, |s| s.has_staged(1)).await;
        assert!(
            ok,
            "the honest release did not stage during the flood: {s:#?}"
        );
        let cpu_ms = thread_cpu_ms("victim") - cpu_before;
        let judged = victim.counters().gossip_rejected.load(Ordering::Relaxed);
        eprintln!(
            "flood: {sent} invalid announcements in {flood_ms} ms; the victim judged {judged} \
             of them and spent {cpu_ms} ms of CPU until it had staged the honest release"
        );
        // Generous: the victim has two threads; it may use at most one core's worth over the
        // flood (measured far below that on loopback), and it stays responsive.
        assert!(
            cpu_ms <= flood_ms,
            "victim used {cpu_ms} ms CPU over a {flood_ms} ms flood"
        );
        assert!(
            judged >= 1,
            "no invalid announcement reached the victim's core"
        );
        // Peer scoring: after its first invalid messages the attacker is graylisted, so the
        // victim's core sees only a small part of the flood.
        assert!(
            judged < sent / 2,
            "the victim's core judged {judged} of {sent}: the flooder was not penalised"
        );
        assert_eq!(victim.status().highest, Some(1));
    });
    rt.block_on(async {
        attacker.shutdown().await;
        origin.shutdown().await;
    });
    victim_rt.block_on(victim.shutdown());
}

/// Serves the stored frames at 1 byte per second, and counts the requests.
struct Trickle {
    store: Arc<Store>,
    asked: Arc<AtomicU64>,
    manifests: Arc<AtomicU64>,
}

impl BlobSource for Trickle {
    fn get(&self, kind: BlobKind, digest: &Digest) -> Option<StoredBlob> {
        if kind == BlobKind::Chunk {
            self.asked.fetch_add(1, Ordering::Relaxed);
        } else {
            self.manifests.fetch_add(1, Ordering::Relaxed);
        }
        self.store.get_compressed(digest).ok()?
    }
    fn pace_bytes_per_s(&self, kind: BlobKind) -> Option<u32> {
        // The manifest at full speed, so the victim gets as far as asking for chunks.
        (kind == BlobKind::Chunk).then_some(1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_trickling_at_one_byte_per_second_is_dropped_for_another() {
    logs();
    let fleet = TestFleet::new("trickle");
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let payload = fleet.random_release(1, 1 << 20, 9);
    let origin = launcher(&fleet, dir.path(), "origin", &clock)
        .origin(true)
        .start()
        .await
        .unwrap();
    payload.seed(&origin).await.unwrap();
    // The trickler stages honestly from the origin, then serves chunks at 1 B/s.
    let asked = Arc::new(AtomicU64::new(0));
    let manifests = Arc::new(AtomicU64::new(0));
    let (a, m) = (asked.clone(), manifests.clone());
    let trickler = launcher(&fleet, dir.path(), "trickler", &clock)
        .site(Some("lab".into()))
        .bootstrap(vec![origin.listen_addrs()[0].clone()])
        .serve_from(move |store| {
            Arc::new(Trickle {
                store,
                asked: a,
                manifests: m,
            })
        })
        .start()
        .await
        .unwrap();
    let (s, ok) = trickler.wait_for(WAIT, |s| s.has_staged(1)).await;
    assert!(ok, "the trickler did not stage: {s:#?}");

    // The victim knows only the trickler until it has asked it for chunks; then it learns of
    // the origin. Each fetch that misses its deadline (5 s, or the chunk's size at 64 KiB/s)
    // is a failure; the trickler has two in flight, and two failures drop a peer here (three by
    // default, which a trickler reaches when it is asked again).
    let victim = launcher(&fleet, dir.path(), "victim", &clock)
        .site(Some("lab".into()))
        .kademlia(false)
        .tune_core(|c| c.max_peer_failures = 2)
        .bootstrap(vec![trickler.listen_addrs()[0].clone()])
        .start()
        .await
        .unwrap();
    let (s, ok) = victim.wait_for(WAIT, |s| s.in_flight > 0).await;
    assert!(
        ok,
        "the victim never asked the trickler for a chunk: {s:#?}"
    );
    victim.dial(origin.listen_addrs()[0].clone()).await;
    let (s, ok) = victim.wait_for(WAIT, |s| s.has_staged(1)).await;
    assert!(ok, "the victim did not stage past the trickler: {s:#?}");
    // Every chunk arrived, verified, from another peer.
    for (_, bytes) in &payload.blobs {
        assert_eq!(
            victim.store().read(&Digest::of(bytes)).unwrap().as_deref(),
            Some(&bytes[..])
        );
    }
    assert!(
        asked.load(Ordering::Relaxed) >= 1,
        "the victim never asked the trickler, so nothing was tested"
    );
    // It completed only the manifests it was asked for (sent at full speed), never a chunk:
    // every chunk the victim holds came from the origin.
    assert_eq!(
        trickler.counters().served.load(Ordering::Relaxed),
        manifests.load(Ordering::Relaxed),
        "the trickler finished sending a chunk at 1 B/s"
    );
    let dropped = victim.counters().peers_dropped.load(Ordering::Relaxed);
    assert!(dropped >= 1, "the trickler was never dropped");
    let counters = victim.counters();
    assert!(counters.bytes_in(PeerClass::Origin) > 0);
    eprintln!(
        "trickle: the trickler was asked for chunks {} time(s); the victim dropped {dropped} \
         peer(s) and took {} bytes from the origin",
        asked.load(Ordering::Relaxed),
        counters.bytes_in(PeerClass::Origin)
    );
    victim.shutdown().await;
    trickler.shutdown().await;
    origin.shutdown().await;
}
