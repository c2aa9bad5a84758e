//! The live loop against a fake gossip: reports in, signed wave control out, abort, restart.

use std::sync::Mutex;

use shoal_protocol::{Service, SigningKey, TrustRoot, Wave, WaveAction, WaveControl, verify};

use std::sync::Arc;
use std::time::Duration;

use shoal_node::daemon::BoxFuture;
use shoal_protocol::waves::wave_of;
use shoal_protocol::{
    DeviceId, DeviceState, Digest, Envelope, ReleaseManifest, ReleaseSeq, RolloutPlan,
    StatusReport, UnixTime, encoding,
};
use tokio::sync::broadcast;

use super::*;
use crate::app::{App, now_s};
use crate::storage::blobs::Kind;
use crate::storage::db::Fleet;
use crate::storage::db::Outcome;

const WAIT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct FakeGossip {
    published: Mutex<Vec<Vec<u8>>>,
    seeded: Mutex<Vec<Arc<ReleaseManifest>>>,
    connected: Mutex<Vec<DeviceId>>,
}

impl FakeGossip {
    /// The wave control messages published, verified against the fleet's trust root.
    fn wave_controls(&self, trust: &TrustRoot) -> Vec<WaveControl> {
        self.published
            .lock()
            .unwrap()
            .iter()
            .map(|b| {
                let (tag, env) = b.split_first().unwrap();
                assert_eq!(*tag, 2, "a wave control gossip message");
                verify::wave_control(trust, env, UnixTime(now_s() as u64)).unwrap()
            })
            .collect()
    }
}

impl Gossip for Arc<FakeGossip> {
    fn publish(&self, _fleet: &str, bytes: Vec<u8>) -> BoxFuture<Result<(), String>> {
        self.published.lock().unwrap().push(bytes);
        Box::pin(async { Ok(()) })
    }
    fn seed(
        &self,
        _fleet: &str,
        _a: Vec<u8>,
        _m: Vec<u8>,
        manifest: Arc<ReleaseManifest>,
    ) -> BoxFuture<Result<(), String>> {
        self.seeded.lock().unwrap().push(manifest);
        Box::pin(async { Ok(()) })
    }
    fn connected(&self, _fleet: &str) -> BoxFuture<Vec<DeviceId>> {
        let d = self.connected.lock().unwrap().clone();
        Box::pin(async move { d })
    }
}

fn plan() -> RolloutPlan {
    let w = |percent| Wave {
        percent,
        min_sample: 1,
        success_threshold_pct: 100,
        error_threshold_pct: 50,
        bake_time_s: 0,
    };
    RolloutPlan {
        waves: vec![w(30), w(30), w(40)],
        progress_deadline_s: 3600,
    }
}

/// Devices `0..REGISTERED` are registered in the fleet by [`Harness::new`].
const REGISTERED: u32 = 64;

fn key(n: u32) -> SigningKey {
    let mut s = [9u8; 32];
    s[..4].copy_from_slice(&n.to_le_bytes());
    SigningKey::from_bytes(&s)
}

fn device(n: u32) -> DeviceId {
    DeviceId::from(key(n).public_key())
}

/// Two devices in each wave of release `seq`.
fn devices_per_wave(seq: u64) -> Vec<Vec<DeviceId>> {
    let mut by_wave = vec![Vec::new(); 3];
    let mut n = 0;
    while by_wave.iter().any(|w: &Vec<DeviceId>| w.len() < 2) {
        let d = device(n);
        let w = wave_of(&plan(), &d, "live", ReleaseSeq(seq)) as usize;
        if by_wave[w].len() < 2 {
            by_wave[w].push(d);
        }
        n += 1;
        assert!(n < REGISTERED, "only registered devices count");
    }
    by_wave
}

struct Rel {
    m: Arc<ReleaseManifest>,
    digest: Digest,
}

struct Harness {
    _dir: tempfile::TempDir,
    app: Arc<App>,
    fleet: Fleet,
    trust: TrustRoot,
    gossip: Arc<FakeGossip>,
    rollouts: Rollouts,
    seeded: broadcast::Sender<Seeded>,
    reports: broadcast::Sender<StatusReport>,
}

impl Harness {
    async fn new() -> Harness {
        Harness::with_registered(REGISTERED).await
    }

    /// A harness where devices `0..registered` are registered in the fleet.
    async fn with_registered(registered: u32) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let app = Arc::new(App::open(dir.path()).await.unwrap());
        let fleet = app
            .create_fleet("live", "amd64", "generic-amd64", &plan())
            .await
            .unwrap();
        let env: Envelope =
            encoding::decode(&std::fs::read(app.trust_root_path("live")).unwrap()).unwrap();
        let trust = TrustRoot::open_initial(&env).unwrap();
        let registry = crate::registry::Registry::new();
        let provisioning = app.create_provisioning_key("live").await.unwrap();
        for n in 0..registered {
            let r = crate::registry::sign_registration(
                &key(n),
                &provisioning,
                &format!("d{n}"),
                "",
                "amd64",
                "generic-amd64",
            );
            registry.register(&app, &r, now_s()).await.unwrap();
        }
        let gossip: Arc<FakeGossip> = Arc::default();
        let seeded = broadcast::channel(16).0;
        let reports = broadcast::channel(256).0;
        let rollouts = Rollouts::start(
            app.clone(),
            Arc::new(gossip.clone()),
            seeded.subscribe(),
            reports.subscribe(),
            system_clock_ms(),
        )
        .await
        .unwrap();
        Harness {
            _dir: dir,
            app,
            fleet,
            trust,
            gossip,
            rollouts,
            seeded,
            reports,
        }
    }

    /// A new loop over the same database (a builder restart), with a fresh fake gossip.
    async fn restart(&mut self) {
        self.gossip = Arc::default();
        self.seeded = broadcast::channel(16).0;
        self.reports = broadcast::channel(256).0;
        self.rollouts = Rollouts::start(
            self.app.clone(),
            Arc::new(self.gossip.clone()),
            self.seeded.subscribe(),
            self.reports.subscribe(),
            system_clock_ms(),
        )
        .await
        .unwrap();
    }

    /// Stores and records a release as the pipeline would, and announces it as seeded.
    async fn publish(&self, seq: u64, marker: &str) -> Rel {
        let chunk = format!("chunk of {marker}");
        let digest = self
            .app
            .store
            .put_blob(Kind::Chunk, chunk.as_bytes())
            .unwrap();
        let layer = shoal_protocol::LayerRef::from_chunks(vec![shoal_protocol::ChunkRef {
            digest,
            size: chunk.len() as u32,
        }]);
        let config = format!("{{\"marker\":\"{marker}\"}}").into_bytes();
        let image = shoal_protocol::ImageRef {
            config_digest: Digest::of(&config),
            config,
            layers: vec![layer],
        };
        let created = UnixTime(now_s() as u64);
        let manifest = ReleaseManifest {
            fleet: "live".into(),
            sequence: ReleaseSeq(seq),
            commit: format!("{marker:0>40}"),
            created,
            expires: created.plus_secs(3600),
            arch: "amd64".into(),
            device_type: "generic-amd64".into(),
            services: BTreeMap::from([(
                "main".to_string(),
                Service {
                    image,
                    settings: Default::default(),
                },
            )]),
            rollout: plan(),
        };
        let (mb, ab) = crate::pipeline::sign(&self.app, &manifest);
        let md = self.app.store.put_blob(Kind::Manifest, &mb).unwrap();
        self.app.store.put(Kind::Announcement, &md, &ab).unwrap();
        let id = self
            .app
            .db
            .start_release(&self.fleet, &manifest.commit, "refs/heads/master", now_s())
            .await
            .unwrap();
        let outcome = Outcome {
            sequence: Some(seq as i64),
            manifest_digest: Some(md.to_string()),
            manifest_size: Some(mb.len() as i64),
            services: serde_json::json!([]),
            ..Outcome::default()
        };
        self.app
            .db
            .finish_release(
                id,
                crate::storage::db::Status::Success,
                now_s(),
                1,
                "",
                &outcome,
            )
            .await
            .unwrap();
        let manifest = Arc::new(manifest);
        self.seeded
            .send(Seeded {
                fleet: "live".into(),
                manifest: manifest.clone(),
                manifest_digest: md,
            })
            .unwrap();
        Rel {
            m: manifest,
            digest: md,
        }
    }

    fn report(&self, d: DeviceId, r: &Rel, state: DeviceState) {
        self.reports
            .send(StatusReport {
                fleet: "live".into(),
                device: d,
                sequence: r.m.sequence,
                manifest_digest: r.digest,
                state,
                time: UnixTime(now_s() as u64),
                nonce: rand_nonce(),
                detail: String::new(),
            })
            .unwrap();
    }

    async fn wait(&self, what: &str, mut f: impl FnMut(&Progress) -> bool) -> Progress {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(p) = self.rollouts.progress("live")
                && f(&p)
            {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:#?}",
                self.rollouts.progress("live")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Pins a device (`None`: unpins) as the operator API does, and tells the loop.
    async fn pin_device(&self, d: DeviceId, seq: Option<u64>) {
        let change = crate::operator::Change::DevicePin {
            device: d.to_string(),
            sequence: seq.map(|s| s as i64),
        };
        self.change(change).await;
    }

    /// Pins the fleet (`None`: unpins) as the operator API does, and tells the loop.
    async fn pin_fleet(&self, seq: Option<u64>) {
        let change = crate::operator::Change::FleetPin {
            fleet_id: self.fleet.id,
            sequence: seq.map(|s| s as i64),
        };
        self.change(change).await;
    }

    async fn change(&self, change: crate::operator::Change) {
        let audit = crate::operator::Audit {
            actor: "test",
            action: crate::operator::Action::DevicePin,
            fleet: "live",
            target: String::new(),
            detail: serde_json::Value::Null,
        };
        assert!(
            crate::operator::apply(&self.app.db, &change, &audit)
                .await
                .unwrap()
        );
        self.rollouts.pins_changed("live").await.unwrap();
    }

    fn actions(&self) -> Vec<(u64, WaveAction)> {
        self.gossip
            .wave_controls(&self.trust)
            .into_iter()
            .map(|w| (w.counter, w.action))
            .collect()
    }
}

fn rand_nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn healthy_waves_open_in_order_until_complete() {
    let h = Harness::new().await;
    let waves = devices_per_wave(1);
    *h.gossip.connected.lock().unwrap() = waves.concat();
    let m = h.publish(1, "a").await;
    let p = h
        .wait("devices joined", |p| p.waves.iter().all(|w| w.devices == 2))
        .await;
    assert_eq!(p.open_wave, 0);
    assert_eq!(p.state, "running");
    assert_eq!(h.actions(), vec![(1, WaveAction::Open { wave: 0 })]);

    // Reports from a later wave's devices do not open anything early.
    for d in &waves[2] {
        h.report(*d, &m, DeviceState::Staged);
    }
    h.report(waves[0][0], &m, DeviceState::Healthy);
    h.wait("one healthy", |p| p.waves[0].healthy == 1).await;
    // min_sample 1 is met, success threshold 100% met: wave 1 opens.
    h.wait("wave 1", |p| p.open_wave == 1).await;
    h.report(waves[0][1], &m, DeviceState::Healthy);
    h.report(waves[1][0], &m, DeviceState::Healthy);
    h.wait("wave 2", |p| p.open_wave == 2).await;
    h.report(waves[2][0], &m, DeviceState::Healthy);
    let p = h.wait("complete", |p| p.state == "complete").await;
    assert_eq!(p.waves[2].healthy, 1);
    assert_eq!(
        h.actions(),
        vec![
            (1, WaveAction::Open { wave: 0 }),
            (2, WaveAction::Open { wave: 1 }),
            (3, WaveAction::Open { wave: 2 }),
        ]
    );
    let staged: Vec<_> = p.devices.iter().filter(|d| d.state == "staged").collect();
    assert_eq!(staged.len(), 1, "{p:#?}");
}

#[tokio::test]
async fn a_failing_first_wave_pauses_and_abort_rolls_back_to_the_previous_content() {
    let h = Harness::new().await;
    let w1 = devices_per_wave(1);
    *h.gossip.connected.lock().unwrap() = w1.concat();
    let good = h.publish(1, "good").await;
    h.wait("rollout 1", |p| p.sequence == 1 && p.waves[0].devices == 2)
        .await;
    for w in &w1 {
        for d in w {
            h.report(*d, &good, DeviceState::Healthy);
        }
    }
    h.wait("release 1 complete", |p| p.state == "complete")
        .await;

    let bad = h.publish(2, "bad").await;
    let p = h
        .wait("rollout 2 with every device", |p| {
            p.sequence == 2 && p.waves.iter().map(|w| w.devices).sum::<u32>() == 6
        })
        .await;
    assert_eq!(p.previous, Some(1));
    let w2 = devices_per_wave(2);
    let first = p.waves[0].devices;
    assert!(first > 0, "{p:#?}");
    // Known devices of wave 0 of release 2 fail: the error threshold (50%) pauses the rollout.
    let in_wave0: Vec<DeviceId> = w1
        .concat()
        .into_iter()
        .filter(|d| wave_of(&plan(), d, "live", ReleaseSeq(2)) == 0)
        .collect();
    let _ = w2;
    for d in &in_wave0 {
        h.report(*d, &bad, DeviceState::RolledBack);
    }
    let p = h.wait("paused", |p| p.state == "paused").await;
    assert_eq!(p.open_wave, 0, "later waves never open");
    assert!(
        p.pause_reason.as_deref().unwrap().contains("failed"),
        "{p:?}"
    );

    let p = h.rollouts.abort("live").await.unwrap();
    assert_eq!(p.sequence, 3, "the rollback is a new sequence: {p:#?}");
    assert_eq!(p.waves.len(), 1, "a rollback goes to every device at once");
    let seeded = h.gossip.seeded.lock().unwrap().clone();
    assert_eq!(seeded.len(), 1);
    assert_eq!(seeded[0].sequence, ReleaseSeq(3));
    assert_eq!(
        seeded[0].services, good.m.services,
        "the content of release 1"
    );
    let releases = h
        .app
        .db
        .releases(h.fleet.id, &Default::default(), 10)
        .await
        .unwrap();
    assert_eq!(releases[0].sequence, Some(3));
    assert_eq!(releases[0].git_ref, "rollback");
    // Wave control of release 2: open 0, pause (threshold), halt.
    let actions: Vec<_> = h
        .gossip
        .wave_controls(&h.trust)
        .into_iter()
        .filter(|w| w.sequence == ReleaseSeq(2))
        .map(|w| w.action)
        .collect();
    assert_eq!(
        actions,
        vec![
            WaveAction::Open { wave: 0 },
            WaveAction::Pause,
            WaveAction::Halt
        ]
    );
    let err = h.rollouts.resume("live").await.unwrap_err();
    assert!(matches!(err, LiveError::NotNow { .. }), "{err}");
}

#[tokio::test]
async fn a_restart_resumes_the_rollout_without_reopening_waves() {
    let mut h = Harness::new().await;
    let waves = devices_per_wave(1);
    *h.gossip.connected.lock().unwrap() = waves.concat();
    let m = h.publish(1, "a").await;
    h.wait("joined", |p| p.waves[0].devices == 2).await;
    h.report(waves[0][0], &m, DeviceState::Healthy);
    h.wait("wave 1", |p| p.open_wave == 1).await;
    h.rollouts.pause("live").await.unwrap();
    let before = h.rollouts.progress("live").unwrap();
    let published_before = h.gossip.published.lock().unwrap().clone();

    h.restart().await;
    let after = h.rollouts.progress("live").unwrap();
    assert_eq!(after, before);
    // The same signed messages go out again, and nothing new.
    assert_eq!(*h.gossip.published.lock().unwrap(), published_before);
    // Reports while paused open nothing; resume continues from wave 1.
    h.report(waves[1][0], &m, DeviceState::Healthy);
    h.wait("report counted", |p| p.waves[1].healthy == 1).await;
    assert_eq!(h.rollouts.progress("live").unwrap().open_wave, 1);
    let p = h.rollouts.resume("live").await.unwrap();
    assert_eq!(p.open_wave, 2, "{p:#?}");
    let counters: Vec<u64> = h.actions().iter().map(|(c, _)| *c).collect();
    assert_eq!(
        counters,
        vec![1, 2, 3, 4, 5],
        "open0 open1 pause | resume open2"
    );
}

#[tokio::test]
async fn reports_from_unregistered_devices_cannot_open_a_wave() {
    let h = Harness::new().await;
    let waves = devices_per_wave(1);
    *h.gossip.connected.lock().unwrap() = waves.concat();
    let m = h.publish(1, "a").await;
    h.wait("joined", |p| p.waves.iter().all(|w| w.devices == 2))
        .await;
    // Strangers with keys of their own, in wave 0 of release 1, report healthy.
    let strangers: Vec<DeviceId> = (REGISTERED..REGISTERED + 200)
        .map(device)
        .filter(|d| wave_of(&plan(), d, "live", ReleaseSeq(1)) == 0)
        .take(5)
        .collect();
    assert_eq!(strangers.len(), 5);
    for d in &strangers {
        h.report(*d, &m, DeviceState::Healthy);
    }
    // A registered device's report after them is counted; theirs were not.
    h.report(waves[2][0], &m, DeviceState::Staged);
    let p = h
        .wait("the registered report", |p| p.devices.len() == 1)
        .await;
    assert_eq!(p.open_wave, 0, "{p:#?}");
    assert_eq!(p.waves[0].devices, 2);
    assert_eq!(p.waves[0].healthy, 0);
    assert_eq!(h.actions(), vec![(1, WaveAction::Open { wave: 0 })]);
    let known = persist::devices(&h.app.db, &h.fleet).await.unwrap();
    assert!(strangers.iter().all(|d| !known.contains(d)));
}

#[tokio::test]
async fn a_pinned_device_is_held_out_of_a_new_release_until_unpinned() {
    let h = Harness::new().await;
    let w1 = devices_per_wave(1);
    let all = w1.concat();
    *h.gossip.connected.lock().unwrap() = all.clone();
    let one = h.publish(1, "one").await;
    h.wait("joined", |p| p.waves.iter().all(|w| w.devices == 2))
        .await;
    for d in &all {
        h.report(*d, &one, DeviceState::Healthy);
    }
    h.wait("release 1 complete", |p| p.state == "complete")
        .await;
    // Pinned to release 1, which the rollout steers: nobody is held.
    let pinned = all
        .iter()
        .copied()
        .find(|d| wave_of(&plan(), d, "live", ReleaseSeq(2)) == 0)
        .expect("a device in wave 0 of release 2");
    h.pin_device(pinned, Some(1)).await;
    assert!(h.rollouts.progress("live").unwrap().held_devices.is_empty());

    let two = h.publish(2, "two").await;
    let p = h
        .wait("rollout 2", |p| {
            p.sequence == 2 && p.waves.iter().map(|w| w.devices).sum::<u32>() == 5
        })
        .await;
    assert_eq!(p.held_devices, vec![pinned.to_string()]);
    // The hold went out before wave 0 opened (later waves may open as wave 0, empty without
    // the held device or not, succeeds).
    let of2: Vec<(u64, WaveAction)> = h
        .gossip
        .wave_controls(&h.trust)
        .into_iter()
        .filter(|w| w.sequence == ReleaseSeq(2))
        .map(|w| (w.counter, w.action))
        .collect();
    assert_eq!(
        of2[..2],
        [
            (
                1,
                WaveAction::Hold {
                    devices: vec![pinned]
                }
            ),
            (2, WaveAction::Open { wave: 0 })
        ]
    );
    assert!(
        of2[2..]
            .iter()
            .all(|(_, a)| matches!(a, WaveAction::Open { .. })),
        "{of2:?}"
    );
    // Its reports count nowhere while held.
    h.report(pinned, &two, DeviceState::Failed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let p = h.rollouts.progress("live").unwrap();
    assert_eq!(p.state, "running", "{p:#?}");
    assert_eq!(p.waves.iter().map(|w| w.failed).sum::<u32>(), 0);

    // Unpinned: a new hold list without it.
    h.pin_device(pinned, None).await;
    let p = h.wait("released", |p| p.held_devices.is_empty()).await;
    assert_eq!(p.waves.iter().map(|w| w.devices).sum::<u32>(), 6);
    let holds: Vec<(ReleaseSeq, WaveAction)> = h
        .gossip
        .wave_controls(&h.trust)
        .into_iter()
        .filter(|w| matches!(w.action, WaveAction::Hold { .. }))
        .map(|w| (w.sequence, w.action))
        .collect();
    assert_eq!(
        holds,
        vec![
            (
                ReleaseSeq(2),
                WaveAction::Hold {
                    devices: vec![pinned]
                }
            ),
            (ReleaseSeq(2), WaveAction::Hold { devices: vec![] })
        ]
    );
}

#[tokio::test]
async fn a_fleet_pin_holds_new_releases_and_goes_back_by_rolling_forward() {
    let mut h = Harness::new().await;
    let all = devices_per_wave(1).concat();
    *h.gossip.connected.lock().unwrap() = all.clone();
    let one = h.publish(1, "one").await;
    h.wait("joined", |p| p.waves.iter().all(|w| w.devices == 2))
        .await;
    for d in &all {
        h.report(*d, &one, DeviceState::Healthy);
    }
    h.wait("release 1 complete", |p| p.state == "complete")
        .await;
    h.pin_fleet(Some(1)).await;

    // A push while pinned: seeded (the devices stage it), but no wave opens.
    let two = h.publish(2, "two").await;
    let p = h
        .wait("rollout 2 held", |p| p.sequence == 2 && p.state == "held")
        .await;
    assert!(p.waves.iter().all(|w| !w.open), "{p:#?}");
    for d in &all {
        h.report(*d, &two, DeviceState::Staged);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.rollouts.progress("live").unwrap().state, "held");
    let of2 = |h: &Harness| -> Vec<WaveAction> {
        h.gossip
            .wave_controls(&h.trust)
            .into_iter()
            .filter(|w| w.sequence == ReleaseSeq(2))
            .map(|w| w.action)
            .collect()
    };
    assert_eq!(of2(&h), vec![], "no wave control for a held release");
    // Still held across a restart.
    h.restart().await;
    assert_eq!(h.rollouts.progress("live").unwrap().state, "held");
    assert!(h.gossip.published.lock().unwrap().is_empty());

    // Unpinned: wave 0 opens.
    h.pin_fleet(None).await;
    let p = h.wait("rollout 2 running", |p| p.state == "running").await;
    assert!(p.waves[0].open);
    assert_eq!(of2(&h), vec![WaveAction::Open { wave: 0 }]);

    // Pinned back to release 1 while 2 rolls out: 2 halts, and a new sequence carries 1's
    // content to every device at once.
    h.pin_fleet(Some(1)).await;
    let p = h.wait("rolled forward", |p| p.sequence == 3).await;
    assert_eq!(p.state, "running", "the pinned content is not held");
    assert_eq!(p.waves.len(), 1);
    assert_eq!(
        of2(&h),
        vec![WaveAction::Open { wave: 0 }, WaveAction::Halt]
    );
    let seeded = h.gossip.seeded.lock().unwrap().clone();
    assert_eq!(seeded.last().unwrap().sequence, ReleaseSeq(3));
    assert_eq!(seeded.last().unwrap().services, one.m.services);

    // Release 4 is held on 3 (1's content); the pin moved to 2 sends the fleet to 2's content.
    h.publish(4, "four").await;
    h.wait("rollout 4 held", |p| p.sequence == 4 && p.state == "held")
        .await;
    h.pin_fleet(Some(2)).await;
    let p = h.wait("rolled forward to 2", |p| p.sequence == 5).await;
    assert_eq!(p.state, "running", "{p:#?}");
    let seeded = h.gossip.seeded.lock().unwrap().clone();
    assert_eq!(seeded.last().unwrap().services, two.m.services);
    // Pinning it again changes nothing.
    h.pin_fleet(Some(2)).await;
    h.pin_fleet(Some(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.gossip.seeded.lock().unwrap().len(), seeded.len());
    assert_eq!(h.rollouts.progress("live").unwrap().sequence, 5);
}

#[tokio::test]
async fn a_fleet_without_registered_devices_counts_the_devices_it_hears_of() {
    let h = Harness::with_registered(0).await;
    let waves = devices_per_wave(1);
    *h.gossip.connected.lock().unwrap() = waves.concat();
    let m = h.publish(1, "a").await;
    h.wait("joined", |p| p.waves.iter().all(|w| w.devices == 2))
        .await;
    h.report(waves[0][0], &m, DeviceState::Healthy);
    h.wait("wave 1", |p| p.open_wave == 1).await;
}
