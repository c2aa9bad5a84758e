//! The Docker runtime with a real Engine: a busybox release seeded by an origin daemon, applied
//! by device daemons. Each test skips (saying why) when no Engine is reachable.

mod support;

use shoal_node::daemon::runtime::spec::{LABEL_FLEET, LABEL_NODE, LABEL_RELEASE, LABEL_SERVICE};
use shoal_protocol::{HealthCheck, ServiceSettings, UpdateStrategy};
use support::*;

fn db(version: &str) -> ServiceSettings {
    ServiceSettings {
        environment: [("VERSION".to_string(), version.to_string())].into(),
        volumes: vec!["data:/data".into()],
        ports: vec!["127.0.0.1::8080".into()],
        restart: Some("unless-stopped".into()),
        labels: [("com.example.role".to_string(), "db".to_string())].into(),
        ..sh("echo $VERSION >> /data/log; exec sleep 3600")
    }
}

fn web() -> ServiceSettings {
    ServiceSettings {
        depends_on: vec!["db".into()],
        // Healthy only once the `db` service answers to its name on the node's network.
        healthcheck: Some(HealthCheck {
            test: vec!["CMD-SHELL".into(), "ping -c 1 -W 1 db".into()],
            interval_s: 1,
            timeout_s: 2,
            retries: 3,
            start_period_s: 0,
        }),
        ..sh("exec sleep 3600")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_run_with_their_settings_and_volumes_outlive_releases() {
    let Some(env) = Env::new("settings").await else {
        return;
    };
    let (dev, rt) = env.device("dev", env.runtime_config()).await;
    let r1 = env.release(1, vec![("db", db("v1")), ("web", web())]);
    env.publish(&r1).await;
    let s = committed(&dev, 1).await;

    let names = rt.names().clone();
    let db1 = names.container("db", shoal_protocol::ReleaseSeq(1));
    let c = inspect(&db1);
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels[LABEL_FLEET], env.fleet.fleet.as_str());
    assert_eq!(labels[LABEL_RELEASE], "1");
    assert_eq!(labels[LABEL_SERVICE], "db");
    assert_eq!(labels[LABEL_NODE], s.device.as_str());
    assert_eq!(labels["com.example.role"], "db");
    let env_vars: Vec<String> = serde_json::from_value(c["Config"]["Env"].clone()).unwrap();
    assert!(env_vars.contains(&"VERSION=v1".to_string()), "{env_vars:?}");
    assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
    let port = &c["NetworkSettings"]["Ports"]["8080/tcp"][0];
    assert_eq!(port["HostIp"], "127.0.0.1", "{port}");
    assert!(port["HostPort"].as_str().is_some_and(|p| !p.is_empty()));
    assert_eq!(c["Mounts"][0]["Name"], names.volume("data").as_str());
    assert_eq!(c["State"]["Running"], true);
    let web1 = inspect(&names.container("web", shoal_protocol::ReleaseSeq(1)));
    assert_eq!(web1["State"]["Health"]["Status"], "healthy");

    let running = containers(&rt).await;
    assert_eq!(
        running,
        [
            ("db".to_string(), Some(1), "running".to_string()),
            ("web".to_string(), Some(1), "running".to_string())
        ]
    );
    let (s, ok) = dev.wait_for(WAIT, |s| s.services.len() == 2).await;
    assert!(ok, "status shows no services: {s:#?}");

    // Release 2: the old containers go, the named volume (and what v1 wrote) stays.
    let r2 = env.release(2, vec![("db", db("v2")), ("web", web())]);
    env.publish(&r2).await;
    committed(&dev, 2).await;
    let db2 = names.container("db", shoal_protocol::ReleaseSeq(2));
    assert_eq!(exec(&db2, "cat /data/log"), "v1\nv2\n");
    assert_eq!(
        containers(&rt).await,
        [
            ("db".to_string(), Some(2), "running".to_string()),
            ("web".to_string(), Some(2), "running".to_string())
        ]
    );
    assert_eq!(inspect(&db1), serde_json::Value::Null, "old container left");
    dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_healthcheck_rolls_back_to_the_committed_release() {
    let Some(env) = Env::new("rollback").await else {
        return;
    };
    let (dev, rt) = env.device("dev", env.runtime_config()).await;
    env.publish(&env.release(1, vec![("db", db("v1")), ("web", web())]))
        .await;
    committed(&dev, 1).await;

    let mut broken = web();
    broken.healthcheck = Some(HealthCheck {
        test: vec!["CMD".into(), "false".into()],
        interval_s: 1,
        timeout_s: 1,
        retries: 1,
        start_period_s: 0,
    });
    broken.update_strategy = UpdateStrategy::DeleteThenDownload;
    env.publish(&env.release(2, vec![("db", db("v2")), ("web", broken)]))
        .await;
    let (s, ok) = dev
        .wait_for(WAIT, |s| {
            s.target == Some(2) && s.phase.as_deref() == Some("rolled_back")
        })
        .await;
    assert!(ok, "release 2 not rolled back: {s:#?}");
    assert_eq!(s.committed, Some(1));
    // The rollback runs after the core reports; wait for the Engine to show release 1 only.
    let mut last = Vec::new();
    for _ in 0..120 {
        last = containers(&rt).await;
        if last
            == [
                ("db".to_string(), Some(1), "running".to_string()),
                ("web".to_string(), Some(1), "running".to_string()),
            ]
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(
        last,
        [
            ("db".to_string(), Some(1), "running".to_string()),
            ("web".to_string(), Some(1), "running".to_string())
        ]
    );
    // The volume kept both releases' writes: v2 ran, then v1 came back.
    let db1 = rt.names().container("db", shoal_protocol::ReleaseSeq(1));
    assert_eq!(exec(&db1, "cat /data/log"), "v1\nv2\nv1\n");
    dev.shutdown().await;
}

/// A service that logs its start and its stop (SIGTERM) to its volume.
fn logger(release: &str, strategy: UpdateStrategy) -> ServiceSettings {
    ServiceSettings {
        update_strategy: strategy,
        environment: [("R".to_string(), release.to_string())].into(),
        volumes: vec![format!("{}:/data", strategy.as_label())],
        ..sh(
            "trap 'echo stop $R >> /data/events; exit 0' TERM; echo start $R >> /data/events; \
              mkdir -p /tmp/shoal; touch /tmp/shoal/handover-complete; \
              while true; do sleep 1; done",
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_update_strategy_orders_stop_and_start_as_named() {
    let Some(env) = Env::new("strategies").await else {
        return;
    };
    let (dev, rt) = env.device("dev", env.runtime_config()).await;
    let all = [
        ("dtk", UpdateStrategy::DownloadThenKill),
        ("ktd", UpdateStrategy::KillThenDownload),
        ("dtd", UpdateStrategy::DeleteThenDownload),
        ("handover", UpdateStrategy::HandOver),
    ];
    for seq in 1..=2u64 {
        let services = all
            .iter()
            .map(|(n, st)| (*n, logger(&seq.to_string(), *st)))
            .collect();
        env.publish(&env.release(seq, services)).await;
        committed(&dev, seq).await;
    }
    let names = rt.names().clone();
    let events = |svc: &str| {
        exec(
            &names.container(svc, shoal_protocol::ReleaseSeq(2)),
            "cat /data/events",
        )
    };
    assert_eq!(events("dtk"), "start 1\nstop 1\nstart 2\n");
    assert_eq!(events("ktd"), "start 1\nstop 1\nstart 2\n");
    assert_eq!(events("dtd"), "start 1\nstop 1\nstart 2\n");
    // Hand-over: the new container starts beside the old, which stops once it has taken over.
    assert_eq!(events("handover"), "start 1\nstart 2\nstop 1\n");
    // Delete-then-download removed the old image; download-then-kill kept it.
    let r1 = shoal_protocol::ReleaseSeq(1);
    assert!(
        env.docker
            .inspect_image(&names.image("dtd", r1))
            .await
            .is_err(),
        "delete-then-download kept its old image"
    );
    assert!(
        env.docker
            .inspect_image(&names.image("dtk", r1))
            .await
            .is_ok()
    );
    assert_eq!(containers(&rt).await.len(), 4);
    dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_update_lock_defers_restarts_until_released_or_overridden() {
    let Some(env) = Env::new("lock").await else {
        return;
    };
    let lock = env.dir.path().join("updates.lock");
    let mut cfg = env.runtime_config();
    cfg.update_lock = Some(lock.clone());
    let (dev, rt) = env.device("dev", cfg).await;
    let app = |v: &str| ServiceSettings {
        environment: [("V".to_string(), v.to_string())].into(),
        ..sh("exec sleep 3600")
    };
    env.publish(&env.release(1, vec![("app", app("1"))])).await;
    committed(&dev, 1).await;

    std::fs::write(&lock, b"").unwrap();
    env.publish(&env.release(2, vec![("app", app("2"))])).await;
    let names = rt.names().clone();
    let r2_image = names.image("app", shoal_protocol::ReleaseSeq(2));
    let mut loaded = false;
    for _ in 0..240 {
        if env.docker.inspect_image(&r2_image).await.is_ok() {
            loaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(loaded, "release 2 was not loaded while the lock was held");
    // Held for a while: release 1 keeps running, release 2 waits.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let s = dev.wait_for(WAIT, |_| true).await.0;
    assert_eq!(s.phase.as_deref(), Some("applying"), "{s:#?}");
    assert_eq!(s.committed, Some(1));
    assert_eq!(
        containers(&rt).await,
        [("app".to_string(), Some(1), "running".to_string())]
    );
    std::fs::remove_file(&lock).unwrap();
    committed(&dev, 2).await;
    assert_eq!(
        containers(&rt).await,
        [("app".to_string(), Some(2), "running".to_string())]
    );

    // The operator's override lets an update through while the lock is held.
    std::fs::write(&lock, b"").unwrap();
    env.publish(&env.release(3, vec![("app", app("3"))])).await;
    let (s, ok) = dev
        .wait_for(WAIT, |s| {
            s.target == Some(3) && s.phase.as_deref() == Some("applying")
        })
        .await;
    assert!(ok, "{s:#?}");
    let over = shoal_node::daemon::runtime::lock_override_path(&env.dir.path().join("dev"));
    std::fs::create_dir_all(over.parent().unwrap()).unwrap();
    std::fs::write(&over, b"").unwrap();
    committed(&dev, 3).await;
    assert!(lock.exists());
    assert!(!over.exists(), "the override is used once");
    assert_eq!(
        containers(&rt).await,
        [("app".to_string(), Some(3), "running".to_string())]
    );
    dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_service_without_healthcheck_is_rolled_back() {
    let Some(env) = Env::new("crashloop").await else {
        return;
    };
    let (dev, rt) = env.device("dev", env.runtime_config()).await;
    let app = |script: &str| ServiceSettings {
        restart: Some("always".into()),
        ..sh(script)
    };
    env.publish(&env.release(1, vec![("app", app("exec sleep 3600"))]))
        .await;
    committed(&dev, 1).await;
    env.publish(&env.release(2, vec![("app", app("sleep 0.2; exit 3"))]))
        .await;
    let (s, ok) = dev
        .wait_for(WAIT, |s| {
            s.target == Some(2) && s.phase.as_deref() == Some("rolled_back")
        })
        .await;
    assert!(ok, "release 2 not rolled back: {s:#?}");
    assert_eq!(s.committed, Some(1));
    let mut last = Vec::new();
    for _ in 0..120 {
        last = containers(&rt).await;
        if last == [("app".to_string(), Some(1), "running".to_string())] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(last, [("app".to_string(), Some(1), "running".to_string())]);
    dev.shutdown().await;
}
