//! Crash safety of the Docker runtime: a node process (`shoal-test-node`, the `shoal-node run`
//! launch path) is killed with SIGKILL at each step of an apply in turn, restarted, and must end
//! on its committed release each time: the containers of exactly that release running, and its
//! state (read through `shoal-node status`'s control socket) agreeing.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shoal_node::daemon::identity::DeviceKey;
use shoal_node::daemon::{Status, status};
use shoal_protocol::{Envelope, ServiceSettings, UpdateStrategy, encoding};
use shoal_testing::TEST_EPOCH;
use support::*;

/// Steps of the apply of release 2 below (prepare, load a, lock, stop old a, start a, stop old
/// b, remove old image b, load b, start b, cleanup).
const STEPS: u32 = 10;

fn service(strategy: UpdateStrategy, version: &str) -> ServiceSettings {
    ServiceSettings {
        update_strategy: strategy,
        environment: [("VERSION".to_string(), version.to_string())].into(),
        volumes: vec!["data:/data".into()],
        ..sh("echo $VERSION >> /data/log; exec sleep 3600")
    }
}

struct Node {
    config: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self, fault: Option<String>) {
        let offset = TEST_EPOCH.0 as i64 + 60
            - std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal-test-node"));
        cmd.arg(&self.config)
            .env("SHOAL_TEST_CLOCK_OFFSET", offset.to_string())
            .env_remove("SHOAL_FAULT_KILL_AT")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(f) = fault {
            cmd.env("SHOAL_FAULT_KILL_AT", f);
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    async fn status(&self) -> Option<Status> {
        status::read(&self.socket).await.ok()
    }

    /// Waits for `pred`, or for the process to exit; returns the last status and whether the
    /// process is still alive.
    async fn wait(&mut self, mut pred: impl FnMut(&Status) -> bool) -> (Option<Status>, bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && c.try_wait().unwrap().is_some()
            {
                return (last, false);
            }
            if let Some(s) = self.status().await {
                let done = pred(&s);
                last = Some(s);
                if done {
                    return (last, true);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (last, true)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a node that will be killed at `step` of the apply of release 2.
fn start(env: &Env, step: u32) -> Node {
    let dir = env.dir.path().join(format!("node-{step}"));
    std::fs::create_dir_all(&dir).unwrap();
    let root = dir.join("root.bin");
    std::fs::write(
        &root,
        encoding::encode(&Envelope::seal(&env.fleet.trust, &[&env.fleet.root_key])),
    )
    .unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    DeviceKey::create(&data.join("device.key")).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\nfleet = {:?}\ntrust_root = {root:?}\n\
             listen = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\ndata_listen = \"127.0.0.1:0\"\n\
             mdns = false\nbootstrap = [\"{}\"]\n\
             [runtime]\nprefix = \"{PREFIX}\"\nhealth_window_ms = 1000\nstop_timeout_s = 1\n",
            env.fleet.fleet,
            env.origin.listen_addrs()[0],
        ),
    )
    .unwrap();
    let mut node = Node {
        config,
        socket: data.join("control.sock"),
        child: None,
    };
    node.spawn(Some(format!("2:{step}")));
    node
}

fn node_containers(env: &Env, device: &str) -> Vec<(String, String, String)> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=io.shoal.fleet={}", env.fleet.fleet),
            "--filter",
            &format!("label=io.shoal.node={device}"),
            "--format",
            "{{.Label \"io.shoal.service\"}} {{.Label \"io.shoal.release\"}} {{.State}}",
        ])
        .output()
        .unwrap();
    let mut v: Vec<(String, String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((
                p.next()?.to_string(),
                p.next()?.to_string(),
                p.next()?.to_string(),
            ))
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_apply_step_leaves_a_committed_release() {
    let Some(env) = Env::new("crash").await else {
        return;
    };
    let r1 = env.release(
        1,
        vec![
            ("a", service(UpdateStrategy::DownloadThenKill, "v1")),
            ("b", service(UpdateStrategy::DeleteThenDownload, "v1")),
        ],
    );
    env.publish(&r1).await;
    let mut nodes: Vec<Node> = (0..=STEPS).map(|step| start(&env, step)).collect();
    let mut devices = Vec::new();
    for (step, node) in nodes.iter_mut().enumerate() {
        let (s, alive) = node.wait(|s| s.committed == Some(1)).await;
        assert!(alive, "node {step} exited before release 2");
        let s = s.unwrap_or_default();
        assert_eq!(
            s.committed,
            Some(1),
            "node {step}: release 1 not committed: {s:#?}"
        );
        devices.push(s.device);
    }
    let r2 = env.release(
        2,
        vec![
            ("a", service(UpdateStrategy::DownloadThenKill, "v2")),
            ("b", service(UpdateStrategy::DeleteThenDownload, "v2")),
        ],
    );
    env.publish(&r2).await;
    for (step, node) in nodes.iter_mut().enumerate() {
        let device = devices[step].clone();
        let step = step as u32;
        let (s, alive) = node.wait(|s| s.committed == Some(2)).await;
        if step < STEPS {
            assert!(!alive, "step {step}: the node was not killed: {s:#?}");
            node.child = None;
            node.spawn(None);
            let (s, alive) = node
                .wait(|s| s.committed == Some(1) && s.phase.as_deref() == Some("rolled_back"))
                .await;
            assert!(alive, "step {step}: the restarted node exited");
            let s = s.unwrap();
            assert_eq!(s.committed, Some(1), "step {step}: {s:#?}");
            assert_eq!(s.phase.as_deref(), Some("rolled_back"), "step {step}");
            let mut last = Vec::new();
            for _ in 0..80 {
                last = node_containers(&env, &device);
                if last
                    == [
                        ("a".into(), "1".into(), "running".into()),
                        ("b".into(), "1".into(), "running".into()),
                    ]
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            assert_eq!(
                last,
                [
                    ("a".to_string(), "1".to_string(), "running".to_string()),
                    ("b".to_string(), "1".to_string(), "running".to_string())
                ],
                "step {step}: not back on release 1 alone"
            );
        } else {
            assert!(alive, "past the last step the node must not be killed");
            assert_eq!(s.and_then(|s| s.committed), Some(2));
            assert_eq!(
                node_containers(&env, &device),
                [
                    ("a".to_string(), "2".to_string(), "running".to_string()),
                    ("b".to_string(), "2".to_string(), "running".to_string())
                ]
            );
        }
        node.stop();
    }
}
