//! End-to-end with real nodes (issues 5 and 6): the local fleet — a `shoal-builder serve`
//! process and 5 node daemons whose Docker runtimes share this machine's Engine — takes
//! `examples/hello` pushed with the stock git client, a one-line change in waves, a release
//! whose healthcheck fails (rolled back by the first wave, the rollout paused, the later wave
//! never activating it) and a release deferred by one device's update lock.
//!
//! Skips, saying why, when no Docker Engine answers.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_builder::local_fleet::{self, FLEET, LocalFleet, Options};
use shoal_builder::steering::Progress;
use shoal_node::daemon::Status;
use shoal_node::daemon::identity::DeviceKey;
use shoal_node::daemon::runtime::spec::LABEL_NODE;
use shoal_node::daemon::runtime::{DockerRuntime, RuntimeConfig};
use shoal_protocol::waves::wave_of;
use shoal_protocol::{DeviceId, ReleaseSeq, RolloutPlan, Wave};
use shoal_testing::engine::docker_lines;

const DEVICES: usize = 5;
const WAIT: Duration = Duration::from_secs(120);

/// Two waves: 40% of the fleet first, then the rest; a wave concludes on one healthy device
/// after a one-second bake and pauses the rollout when half its concluded devices failed.
fn plan() -> RolloutPlan {
    let wave = |percent| Wave {
        percent,
        min_sample: 1,
        success_threshold_pct: 100,
        error_threshold_pct: 50,
        bake_time_s: 1,
    };
    RolloutPlan {
        waves: vec![wave(40), wave(60)],
        progress_deadline_s: 300,
    }
}

fn wave(plan: &RolloutPlan, key: &DeviceKey, seq: u64) -> u32 {
    wave_of(plan, &key.device_id(), FLEET, ReleaseSeq(seq))
}

/// Device keys for which releases 2 and 3 have devices in both waves and release 4 has one in
/// the first wave (the device that holds the update lock, returned as an index).
fn pick_keys(plan: &RolloutPlan) -> (Vec<DeviceKey>, usize) {
    loop {
        let keys: Vec<DeviceKey> = (0..DEVICES).map(|_| DeviceKey::generate()).collect();
        let both = |seq| (0..2).all(|w| keys.iter().any(|k| wave(plan, k, seq) == w));
        if !both(2) || !both(3) {
            continue;
        }
        if let Some(lock) = keys.iter().position(|k| wave(plan, k, 4) == 0) {
            return (keys, lock);
        }
    }
}

/// Removes every Engine object of this test's nodes (by node label and name prefix), also
/// when the test fails.
struct Cleanup {
    prefix: String,
    nodes: Vec<DeviceId>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for node in &self.nodes {
            let label = format!("label={LABEL_NODE}={node}");
            let ids = docker_lines(&["ps", "-aq", "--filter", &label]);
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids.iter().map(String::as_str));
                docker_lines(&args);
            }
            for v in docker_lines(&["volume", "ls", "-q", "--filter", &label]) {
                docker_lines(&["volume", "rm", "-f", &v]);
            }
            for n in docker_lines(&["network", "ls", "-q", "--filter", &label]) {
                docker_lines(&["network", "rm", &n]);
            }
        }
        let ours = format!("{}-{FLEET}/", self.prefix);
        for tag in docker_lines(&["images", "--format", "{{.Repository}}:{{.Tag}}"]) {
            if tag.starts_with(&ours) {
                docker_lines(&["rmi", &tag]);
            }
        }
    }
}

struct Fleet {
    fleet: LocalFleet,
    keys: Vec<DeviceId>,
    runtimes: local_fleet::DockerRuntimes,
    project: PathBuf,
    plan: RolloutPlan,
}

impl Fleet {
    fn statuses(&self) -> Vec<Status> {
        self.fleet
            .devices
            .iter()
            .map(|d| d.handle.status())
            .collect()
    }

    fn runtime(&self, i: usize) -> DockerRuntime {
        self.runtimes.lock().unwrap()[&self.keys[i]].clone()
    }

    /// `(service, release, state)` of device `i`'s containers, from the Engine.
    async fn containers(&self, i: usize) -> Vec<(String, Option<u64>, String)> {
        let mut v: Vec<_> = self
            .runtime(i)
            .containers()
            .await
            .expect("list containers")
            .into_iter()
            .map(|c| (c.service, c.release, c.state))
            .collect();
        v.sort();
        v
    }

    async fn assert_runs(&self, i: usize, seq: u64) {
        let want = vec![
            ("web".to_string(), Some(seq), "running".to_string()),
            ("worker".to_string(), Some(seq), "running".to_string()),
        ];
        let start = Instant::now();
        loop {
            let got = self.containers(i).await;
            if got == want {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "device-{} should run release {seq}: {got:?}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn push(&self, message: &str, expect_seq: u64) {
        local_fleet::commit_all(&self.project, message).unwrap();
        let out = self.fleet.push(&self.project, |_| {}).await.unwrap();
        assert!(out.ok, "push refused:\n{}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("published as sequence {expect_seq}")),
            "{}",
            out.stderr
        );
    }

    fn edit(&self, path: &str, from: &str, to: &str) {
        let p = self.project.join(path);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{path} lacks {from:?}");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    }

    async fn progress(&self, seq: u64) -> Option<Progress> {
        self.fleet.progress().await.filter(|p| p.sequence == seq)
    }

    /// Waits until `pred` holds for the statuses of the devices `which`.
    async fn wait_devices(
        &self,
        what: &str,
        which: &[usize],
        pred: impl Fn(&Status) -> bool,
    ) -> Vec<Status> {
        let start = Instant::now();
        loop {
            let all = self.statuses();
            if which.iter().all(|&i| pred(&all[i])) {
                return all;
            }
            if start.elapsed() > WAIT {
                let p = self.fleet.progress().await;
                panic!("timed out waiting for {what}:\nstatuses {all:#?}\nprogress {p:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn in_wave(&self, seq: u64, w: u32) -> Vec<usize> {
        (0..DEVICES)
            .filter(|&i| wave_of(&self.plan, &self.keys[i], FLEET, ReleaseSeq(seq)) == w)
            .collect()
    }
}

fn bytes_in(fleet: &LocalFleet) -> u64 {
    fleet
        .devices
        .iter()
        .map(|d| d.handle.counters().total_in())
        .sum()
}

fn at(s: &Status, seq: u64, what: &str) -> u64 {
    s.milestone(seq, what).unwrap_or_else(|| {
        panic!(
            "device {} has no {what} milestone for {seq}: {s:#?}",
            s.device
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_fleet_rolls_out_in_waves_rolls_back_a_failing_release_and_honours_the_update_lock() {
    if !support::engine_available("local_fleet") {
        return;
    }
    support::ensure_base_image();
    let plan = plan();
    let (keys, lock_dev) = pick_keys(&plan);
    let ids: Vec<DeviceId> = keys.iter().map(DeviceKey::device_id).collect();
    let prefix = format!("shoal-e2e-{}", std::process::id());
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
        nodes: ids.clone(),
    };
    let lock_dir = tempfile::tempdir().unwrap();
    let lock_file = lock_dir.path().join("updates.lock");
    let (lock_id, lock_path) = (ids[lock_dev], lock_file.clone());
    let (factory, runtimes) = local_fleet::docker_runtimes(move |device| RuntimeConfig {
        prefix: prefix.clone(),
        update_lock: (device == lock_id).then(|| lock_path.clone()),
        health_window_ms: 2_000,
        health_timeout_ms: 60_000,
        stop_timeout_s: 1,
        ..RuntimeConfig::default()
    });
    let fleet = LocalFleet::start(Options {
        builder_exe: PathBuf::from(support::BIN),
        keys,
        runtime: factory,
        plan: plan.clone(),
    })
    .await
    .expect("start the local fleet");
    let project = fleet.dir.path().join("hello");
    local_fleet::init_project(&project, local_fleet::HELLO).unwrap();
    let f = Fleet {
        fleet,
        keys: ids,
        runtimes,
        project,
        plan,
    };
    let everyone: Vec<usize> = (0..DEVICES).collect();

    // (a) examples/hello: every device runs both services.
    let out = f.fleet.push(&f.project, |_| {}).await.unwrap();
    assert!(out.ok, "push refused:\n{}", out.stderr);
    assert!(
        out.stderr.contains("published as sequence 1"),
        "{}",
        out.stderr
    );
    f.wait_devices("release 1 committed everywhere", &everyone, |s| {
        s.committed == Some(1)
    })
    .await;
    for i in 0..DEVICES {
        f.assert_runs(i, 1).await;
    }
    let p = f.progress(1).await.expect("progress of release 1");
    assert_eq!(p.state, "complete", "{p:#?}");
    assert_eq!(p.devices.len(), DEVICES, "{p:#?}");
    assert!(p.devices.iter().all(|d| d.state == "healthy"), "{p:#?}");

    // (b) a one-line change, in waves, moving little.
    let image_bytes = f.fleet.latest_release().await.unwrap()["image_bytes"]
        .as_u64()
        .unwrap();
    let before = bytes_in(&f.fleet);
    f.edit("web/index.html", "version 1", "version 2");
    f.push("web: version 2", 2).await;
    let st = f
        .wait_devices("release 2 committed everywhere", &everyone, |s| {
            s.committed == Some(2)
        })
        .await;
    let moved = bytes_in(&f.fleet) - before;
    for i in 0..DEVICES {
        f.assert_runs(i, 2).await;
    }
    let p = f.progress(2).await.expect("progress of release 2");
    assert_eq!(p.state, "complete", "{p:#?}");
    let (first, second) = (f.in_wave(2, 0), f.in_wave(2, 1));
    for d in &p.devices {
        let i = f
            .keys
            .iter()
            .position(|k| k.to_string() == d.device)
            .unwrap();
        assert_eq!(d.wave, u32::from(!first.contains(&i)), "{p:#?}");
    }
    let opened0 = p.waves[0].opened_at_ms.expect("wave 0 opened");
    let opened1 = p.waves[1].opened_at_ms.expect("wave 1 opened");
    let first_healthy = first
        .iter()
        .map(|&i| at(&st[i], 2, "healthy"))
        .min()
        .unwrap();
    assert!(
        first_healthy <= opened1,
        "wave 1 opened at {opened1} before any wave-0 device was healthy ({first_healthy})"
    );
    for &i in &second {
        let applying = at(&st[i], 2, "applying");
        assert!(
            applying >= opened1 && applying >= first_healthy,
            "device-{} of wave 1 activated at {applying}, wave 1 opened at {opened1}, \
             first wave-0 device healthy at {first_healthy}",
            i + 1
        );
    }
    eprintln!(
        "one-line change: {moved} bytes into {DEVICES} devices, image {image_bytes} bytes; \
         wave 1 opened {} ms after wave 0",
        opened1 - opened0
    );
    assert!(
        moved < image_bytes / 4,
        "the one-line change moved {moved} bytes (image {image_bytes})"
    );

    // (c) a failing healthcheck: wave 0 rolls back, the rollout pauses, wave 1 never runs it.
    f.edit(
        "docker-compose.yml",
        "test: [\"CMD\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8080/\"]\n      interval: 2s\n      timeout: 2s\n      retries: 5",
        "test: [\"CMD\", \"false\"]\n      interval: 1s\n      timeout: 1s\n      retries: 1",
    );
    f.push("web: a healthcheck that fails", 3).await;
    let (first, second) = (f.in_wave(3, 0), f.in_wave(3, 1));
    let start = Instant::now();
    let p = loop {
        match f.progress(3).await {
            Some(p) if p.state == "paused" => break p,
            p => assert!(start.elapsed() < WAIT, "release 3 never paused: {p:#?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(p.open_wave, 0, "{p:#?}");
    assert!(!p.waves[1].open, "{p:#?}");
    assert!(
        p.pause_reason
            .as_deref()
            .is_some_and(|r| r.contains("wave 0")),
        "{p:#?}"
    );
    f.wait_devices("wave 0 rolled back release 3", &first, |s| {
        s.milestone(3, "rolled_back").is_some() && s.committed == Some(2)
    })
    .await;
    for &i in &first {
        f.assert_runs(i, 2).await;
    }
    // The later wave staged it but, paused, never activates it.
    f.wait_devices("wave 1 staged release 3", &second, |s| s.has_staged(3))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = f.statuses();
    let p = f.progress(3).await.unwrap();
    assert_eq!(p.state, "paused", "{p:#?}");
    for d in p.devices.iter().filter(|d| d.wave == 0) {
        assert_eq!(d.state, "rolled_back", "{p:#?}");
    }
    for &i in &second {
        assert_eq!(st[i].milestone(3, "applying"), None, "{:#?}", st[i]);
        assert_eq!(st[i].committed, Some(2), "{:#?}", st[i]);
        assert_ne!(st[i].applied, Some(3), "{:#?}", st[i]);
        f.assert_runs(i, 2).await;
    }

    // (d) the update lock: the locked device loads release 4 but keeps running release 2
    // until the lock goes.
    std::fs::write(&lock_file, b"busy\n").unwrap();
    f.edit(
        "docker-compose.yml",
        "test: [\"CMD\", \"false\"]\n      interval: 1s\n      timeout: 1s\n      retries: 1",
        "test: [\"CMD\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8080/\"]\n      interval: 2s\n      timeout: 2s\n      retries: 5",
    );
    f.edit("web/index.html", "version 2", "version 4");
    f.push("web: version 4, healthcheck back", 4).await;
    let st = f
        .wait_devices("the locked device applying release 4", &[lock_dev], |s| {
            s.has_staged(4) && s.milestone(4, "applying").is_some()
        })
        .await;
    let rt = f.runtime(lock_dev);
    let names = rt.names().clone();
    for service in ["web", "worker"] {
        let tag = names.image(service, ReleaseSeq(4));
        let start = Instant::now();
        while rt.docker().inspect_image(&tag).await.is_err() {
            assert!(start.elapsed() < WAIT, "{tag} never loaded while locked");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The rest of its wave goes ahead meanwhile.
    let others: Vec<usize> = f
        .in_wave(4, 0)
        .into_iter()
        .filter(|&i| i != lock_dev)
        .collect();
    f.wait_devices("release 4 committed beside the lock", &others, |s| {
        s.committed == Some(4)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        f.containers(lock_dev).await,
        vec![
            ("web".to_string(), Some(2), "running".to_string()),
            ("worker".to_string(), Some(2), "running".to_string()),
        ],
        "the locked device restarted its services: {:#?}",
        st[lock_dev]
    );
    assert_eq!(f.statuses()[lock_dev].committed, Some(2));
    std::fs::remove_file(&lock_file).unwrap();
    f.wait_devices("the locked device committed release 4", &[lock_dev], |s| {
        s.committed == Some(4)
    })
    .await;
    for i in 0..DEVICES {
        f.assert_runs(i, 4).await;
    }

    let rts: Vec<DockerRuntime> = f.runtimes.lock().unwrap().values().cloned().collect();
    f.fleet.shutdown().await;
    for rt in rts {
        rt.purge().await.unwrap();
    }
}
