//! A node process killed with SIGKILL (so it closes no connection) and restarted under the same
//! identity on the same address: the peer that kept its dead data-plane connection learns of the
//! restart from the first packet it sends there (a QUIC stateless reset under keys the device key
//! derives, `shoal_node::daemon::quic::endpoint_config`), drops the dead connection, dials the node
//! again, and the node gets the next release from it. No Docker Engine needed: the node is
//! `shoal-test-node` (the `shoal-node run` launch path) with the stage-only runtime.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal_node::daemon::identity::DeviceKey;
use shoal_node::daemon::{Handle, Status, status};
use shoal_protocol::Envelope;
use shoal_testing::{TEST_ARCH, TEST_EPOCH, TestFleet};
use support::{WAIT, clock, logs};

/// The node process, killed when dropped.
struct NodeProcess {
    config: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

impl NodeProcess {
    fn spawn(&mut self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let offset = TEST_EPOCH.0 as i64 + 60 - now;
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_shoal-test-node"))
                .arg(&self.config)
                .env("SHOAL_TEST_CLOCK_OFFSET", offset.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start shoal-test-node"),
        );
    }

    /// SIGKILL: the process closes nothing, its peers' connections to it stay open.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (at most [`WAIT`]) for `pred` to hold for the node's status; the last status read.
    async fn wait(&mut self, mut pred: impl FnMut(&Status) -> bool) -> (Option<Status>, bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                assert!(
                    c.try_wait().unwrap().is_none(),
                    "the node process exited: {last:#?}"
                );
            }
            if let Ok(s) = status::read(&self.socket).await {
                let done = pred(&s);
                last = Some(s);
                if done {
                    return (last, true);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (last, false)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free UDP port on loopback (bound and released).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, fleet: &TestFleet, data_port: u16, origin: &Handle) -> PathBuf {
    let root = dir.join("root.bin");
    std::fs::write(
        &root,
        shoal_protocol::encoding::encode(&Envelope::seal(&fleet.trust, &[&fleet.root_key])),
    )
    .unwrap();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nfleet = {:?}\ntrust_root = {root:?}\narch = \"{TEST_ARCH}\"\n\
             listen = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\ndata_listen = \"127.0.0.1:{data_port}\"\n\
             mdns = false\nbootstrap = [\"{}\"]\n[runtime]\nkind = \"stage-only\"\n",
            dir.join("data"),
            fleet.fleet,
            origin.listen_addrs()[0],
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_is_reconnected_at_once_and_gets_the_next_release() {
    logs();
    let fleet = TestFleet::new("restart");
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node");
    std::fs::create_dir_all(node_dir.join("data")).unwrap();
    let node_key = DeviceKey::create(&node_dir.join("data/device.key")).unwrap();
    let node_id = node_key.device_id();
    // The origin's id is the lower, so the origin is the side that dials the node and, before
    // the node's restart, holds the connection the kill left dead.
    let origin_key = loop {
        let k = DeviceKey::generate();
        if k.device_id() < node_id {
            break k;
        }
    };
    let origin = fleet
        .daemon(origin_key, dir.path().join("origin"), &clock())
        .origin(true)
        .start()
        .await
        .unwrap();
    let r1 = fleet.random_release(1, 2 << 20, 1);
    r1.seed(&origin).await.unwrap();

    let mut node = NodeProcess {
        config: write_config(&node_dir, &fleet, free_udp_port(), &origin),
        socket: node_dir.join("data/control.sock"),
        child: None,
    };
    node.spawn();
    let (s, ok) = node.wait(|s| s.has_staged(1)).await;
    assert!(ok, "the node did not stage release 1: {s:#?}");
    let id = node_id.to_string();
    let (s, ok) = origin
        .wait_for(WAIT, |s| s.peers.iter().any(|p| p.device == id))
        .await;
    assert!(
        ok,
        "the origin has no data-plane connection to the node: {s:#?}"
    );

    node.kill();
    node.spawn();
    let (s, ok) = node.wait(|s| s.has_staged(1)).await;
    assert!(ok, "the restarted node lost release 1: {s:#?}");
    // The origin's next packet on the dead connection (a keep-alive at the latest) reaches the
    // restarted node, which answers with a stateless reset the origin accepts.
    let deadline = tokio::time::Instant::now() + WAIT;
    while origin.counters().peer_resets.load(Ordering::Relaxed) == 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        origin.counters().peer_resets.load(Ordering::Relaxed),
        1,
        "the origin did not learn from a stateless reset that the node restarted: {:#?}",
        origin.status()
    );

    let r2 = fleet.random_release(2, 2 << 20, 2);
    r2.seed(&origin).await.unwrap();
    let (s, ok) = node.wait(|s| s.has_staged(2)).await;
    assert!(
        ok,
        "the restarted node did not get release 2 from the origin: {s:#?}"
    );
    let (s, ok) = origin
        .wait_for(WAIT, |s| s.peers.iter().any(|p| p.device == id))
        .await;
    assert!(ok, "the origin is not connected to the node again: {s:#?}");
    origin.shutdown().await;
}
