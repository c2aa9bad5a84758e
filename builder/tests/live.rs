//! The live rollout loop with real daemons: the builder's origin node seeds a release, stage-only
//! devices on loopback stage it, activate it when their wave opens and report healthy, and the
//! loop opens the waves one after another. No Docker Engine needed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use shoal_builder::app::{App, now_s};
use shoal_builder::live::{Rollouts, system_clock_ms};
use shoal_builder::origin::{OriginConfig, OriginGossip, Origins};
use shoal_builder::steering::Progress;
use shoal_node::daemon::identity::DeviceKey;
use shoal_protocol::waves::wave_of;
use shoal_protocol::{
    Envelope, ReleaseManifest, ReleaseSeq, RolloutPlan, TrustRoot, Wave, encoding,
};

mod support;
use support::store_release_with;

const WAIT: Duration = Duration::from_secs(120);

fn plan() -> RolloutPlan {
    let w = |percent| Wave {
        percent,
        min_sample: 1,
        success_threshold_pct: 100,
        error_threshold_pct: 50,
        bake_time_s: 1,
    };
    RolloutPlan {
        waves: vec![w(30), w(30), w(40)],
        progress_deadline_s: 3600,
    }
}

/// Stores, signs and records release `seq` over ~1 MiB of bytes, as the pipeline does.
async fn store_release(
    app: &App,
    fleet: &shoal_builder::storage::db::Fleet,
    seq: u64,
) -> (Vec<u8>, Vec<u8>, ReleaseManifest) {
    store_release_with(app, fleet, seq, plan()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_open_in_order_as_stage_only_devices_report_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let app = Arc::new(App::open(&dir.path().join("builder")).await.unwrap());
    let fleet = app
        .create_fleet("waves", "amd64", "generic-amd64", &plan())
        .await
        .unwrap();
    let env: Envelope =
        encoding::decode(&std::fs::read(app.trust_root_path("waves")).unwrap()).unwrap();
    let trust = TrustRoot::open_initial(&env).unwrap();

    let origins = Arc::new(Origins::new(&app, OriginConfig::loopback_ephemeral()));
    let _ = app.origins.set(Arc::new(OriginGossip(origins.clone())));
    let (seeded, reports) = (origins.subscribe_seeded(), origins.subscribe_reports());
    origins.start_all(&app).await.unwrap();
    let rollouts = Rollouts::start(
        app.clone(),
        Arc::new(OriginGossip(origins.clone())),
        seeded,
        reports,
        system_clock_ms(),
    )
    .await
    .unwrap();
    let boot: Vec<libp2p::Multiaddr> = origins
        .with("waves", |o| o.handle().listen_addrs().to_vec())
        .await
        .unwrap();

    // Two devices in each wave of release 1 (keys chosen so no wave is empty).
    let mut by_wave: Vec<Vec<DeviceKey>> = vec![Vec::new(), Vec::new(), Vec::new()];
    while by_wave.iter().any(|w| w.len() < 2) {
        let k = DeviceKey::generate();
        let w = wave_of(&plan(), &k.device_id(), "waves", ReleaseSeq(1)) as usize;
        if by_wave[w].len() < 2 {
            by_wave[w].push(k);
        }
    }
    let wave_of_device: BTreeMap<String, usize> = by_wave
        .iter()
        .enumerate()
        .flat_map(|(w, ks)| ks.iter().map(move |k| (k.device_id().to_string(), w)))
        .collect();
    // Only registered devices count in the rollout.
    let registry = shoal_builder::registry::Registry::new();
    let provisioning = app.create_provisioning_key("waves").await.unwrap();
    for (i, k) in by_wave.iter().flatten().enumerate() {
        let r = shoal_builder::registry::sign_registration(
            &k.signing_key(),
            &provisioning,
            &format!("d{i}"),
            "",
            "amd64",
            "generic-amd64",
        );
        registry.register(&app, &r, now_s()).await.unwrap();
    }
    let mut devices = Vec::new();
    for (i, k) in by_wave.into_iter().flatten().enumerate() {
        let d =
            shoal_node::daemon::Launcher::new(k, trust.clone(), dir.path().join(format!("d{i}")))
                .arch("amd64")
                .bootstrap(boot.clone())
                .start()
                .await
                .unwrap();
        devices.push(d);
    }
    for d in &devices {
        let (s, ok) = d.wait_for(WAIT, |s| !s.peers.is_empty()).await;
        assert!(ok, "not connected: {s:#?}");
    }

    let (ann, mb, manifest) = store_release(&app, &fleet, 1).await;
    origins
        .seed("waves", ann, mb, Arc::new(manifest))
        .await
        .unwrap();

    // Follow the rollout: each time a wave opens, no device of a later wave is active yet.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut opened = Vec::new();
    let last: Progress = loop {
        let p = rollouts.progress("waves");
        if let Some(p) = &p {
            if opened.last() != Some(&p.open_wave) {
                opened.push(p.open_wave);
                for d in &devices {
                    let s = d.status();
                    let w = wave_of_device[&s.device];
                    if w as u32 > p.open_wave {
                        assert_eq!(
                            s.applied, None,
                            "device of wave {w} activated while only waves ..={} were open",
                            p.open_wave
                        );
                    }
                }
            }
            if p.state == "complete" {
                break p.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout did not complete: {p:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(opened, vec![0, 1, 2]);
    for w in &last.waves {
        assert_eq!((w.devices, w.healthy), (2, 2), "{last:#?}");
    }
    let healthy: BTreeSet<_> = last
        .devices
        .iter()
        .filter(|d| d.state == "healthy")
        .map(|d| d.device.clone())
        .collect();
    assert_eq!(healthy.len(), 6);
    for d in &devices {
        let (s, ok) = d.wait_for(WAIT, |s| s.committed == Some(1)).await;
        assert!(ok, "device did not commit release 1: {s:#?}");
    }
    for d in devices {
        d.shutdown().await;
    }
    origins.shutdown().await;
}

/// Sets a pin as the operator API does (stored, audited) and tells the rollout loop.
async fn pin(app: &App, rollouts: &Rollouts, change: shoal_builder::operator::Change) {
    let audit = shoal_builder::operator::Audit {
        actor: "test",
        action: shoal_builder::operator::Action::DevicePin,
        fleet: "pins",
        target: String::new(),
        detail: serde_json::Value::Null,
    };
    assert!(
        shoal_builder::operator::apply(&app.db, &change, &audit)
            .await
            .unwrap()
    );
    rollouts.pins_changed("pins").await.unwrap();
}

/// Real devices obey pins: a device pinned to release 1 stages release 2 but does not activate
/// it while the other devices do; unpinned, it activates it. No Docker Engine needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_device_stays_on_its_release_while_the_others_move_on() {
    let dir = tempfile::tempdir().unwrap();
    let app = Arc::new(App::open(&dir.path().join("builder")).await.unwrap());
    let fleet = app
        .create_fleet(
            "pins",
            "amd64",
            "generic-amd64",
            &RolloutPlan::all_at_once(),
        )
        .await
        .unwrap();
    let env: Envelope =
        encoding::decode(&std::fs::read(app.trust_root_path("pins")).unwrap()).unwrap();
    let trust = TrustRoot::open_initial(&env).unwrap();
    let origins = Arc::new(Origins::new(&app, OriginConfig::loopback_ephemeral()));
    let _ = app.origins.set(Arc::new(OriginGossip(origins.clone())));
    let (seeded, reports) = (origins.subscribe_seeded(), origins.subscribe_reports());
    origins.start_all(&app).await.unwrap();
    let rollouts = Rollouts::start(
        app.clone(),
        Arc::new(OriginGossip(origins.clone())),
        seeded,
        reports,
        system_clock_ms(),
    )
    .await
    .unwrap();
    let boot: Vec<libp2p::Multiaddr> = origins
        .with("pins", |o| o.handle().listen_addrs().to_vec())
        .await
        .unwrap();
    let registry = shoal_builder::registry::Registry::new();
    let provisioning = app.create_provisioning_key("pins").await.unwrap();
    let mut devices = Vec::new();
    for i in 0..3 {
        let k = DeviceKey::generate();
        let r = shoal_builder::registry::sign_registration(
            &k.signing_key(),
            &provisioning,
            &format!("p{i}"),
            "",
            "amd64",
            "generic-amd64",
        );
        registry.register(&app, &r, now_s()).await.unwrap();
        let d =
            shoal_node::daemon::Launcher::new(k, trust.clone(), dir.path().join(format!("p{i}")))
                .arch("amd64")
                .bootstrap(boot.clone())
                .start()
                .await
                .unwrap();
        devices.push(d);
    }
    for d in &devices {
        let (s, ok) = d.wait_for(WAIT, |s| !s.peers.is_empty()).await;
        assert!(ok, "not connected: {s:#?}");
    }
    let all = RolloutPlan::all_at_once();
    let (ann, mb, manifest) = store_release_with(&app, &fleet, 1, all.clone()).await;
    origins
        .seed("pins", ann, mb, Arc::new(manifest))
        .await
        .unwrap();
    for d in &devices {
        let (s, ok) = d.wait_for(WAIT, |s| s.committed == Some(1)).await;
        assert!(ok, "device did not commit release 1: {s:#?}");
    }

    let pinned = &devices[0];
    let id: shoal_protocol::DeviceId = pinned.status().device.parse().unwrap();
    let change = |sequence| shoal_builder::operator::Change::DevicePin {
        device: id.to_string(),
        sequence,
    };
    pin(&app, &rollouts, change(Some(1))).await;
    let (ann, mb, manifest) = store_release_with(&app, &fleet, 2, all).await;
    origins
        .seed("pins", ann, mb, Arc::new(manifest))
        .await
        .unwrap();
    for d in &devices[1..] {
        let (s, ok) = d.wait_for(WAIT, |s| s.committed == Some(2)).await;
        assert!(ok, "an unpinned device did not commit release 2: {s:#?}");
    }
    // The pinned device has release 2 staged (its chunks are there) but runs release 1.
    let (s, ok) = pinned
        .wait_for(WAIT, |s| {
            s.target == Some(2) && s.phase.as_deref() == Some("staged")
        })
        .await;
    assert!(ok, "the pinned device did not stage release 2: {s:#?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = pinned.status();
    assert_eq!((s.applied, s.committed), (Some(1), Some(1)), "{s:#?}");
    let p = rollouts.progress("pins").unwrap();
    assert_eq!(p.held_devices, vec![id.to_string()]);

    pin(&app, &rollouts, change(None)).await;
    let (s, ok) = pinned.wait_for(WAIT, |s| s.committed == Some(2)).await;
    assert!(ok, "the unpinned device did not move to release 2: {s:#?}");
    for d in devices {
        d.shutdown().await;
    }
    origins.shutdown().await;
}
