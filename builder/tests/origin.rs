//! The builder's embedded origin node, end to end: a real `shoal-builder serve`, the stock git
//! client, the real Docker Engine, and a `shoal_node` daemon (stage-only runtime) that joins the
//! fleet from `GET /api/v1/fleets/{fleet}/bootstrap` alone.

mod support;

use std::time::Duration;

use shoal_node::daemon::identity::DeviceKey;
use shoal_node::daemon::metrics::PeerClass;
use shoal_protocol::{Envelope, TrustRoot, encoding};
use shoal_testing::pseudo_random;
use support::*;

const WAIT: Duration = Duration::from_secs(180);

#[test]
fn a_device_bootstrapped_from_the_builder_stages_a_pushed_release_from_the_origin() {
    let Some(b) = Builder::start_with_engine("origin_publish") else {
        return;
    };
    let boot = b.get_json("/api/v1/fleets/demo/bootstrap");
    assert_eq!(boot["fleet"], "demo");
    assert_eq!(boot["arch"], "amd64");
    let trust_hex = boot["trust_root_hex"].as_str().unwrap();
    assert_eq!(
        trust_hex,
        hex::encode(b.get_bytes("/api/v1/fleets/demo/trust-root")),
        "the bootstrap carries the fleet's trust root"
    );
    let env: Envelope = encoding::decode(&hex::decode(trust_hex).unwrap()).unwrap();
    let trust = TrustRoot::open_initial(&env).unwrap();
    let addrs: Vec<libp2p::Multiaddr> = boot["multiaddrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(!addrs.is_empty());
    let peer_id = boot["origin_peer_id"].as_str().unwrap();
    assert!(
        addrs.iter().all(|a| a.to_string().ends_with(peer_id)),
        "{addrs:?}"
    );

    // Four 300 KiB files of incompressible bytes: the image has several chunks.
    let mut files = vec![(
        "Dockerfile".to_string(),
        "FROM busybox\nCOPY blob* /data/\n".to_string(),
    )];
    for i in 0..4 {
        files.push((format!("blob{i}"), String::new()));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let p = Project::new(&refs);
    for i in 0..4 {
        p.write_bytes(
            &format!("blob{i}"),
            &pseudo_random(300 << 10, 7 + i + nonce().len() as u64),
        );
    }
    p.write("nonce", &nonce());
    p.commit("data");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let node = shoal_node::daemon::Launcher::new(DeviceKey::generate(), trust, dir.path())
            .arch("amd64")
            .bootstrap(addrs)
            .start()
            .await
            .unwrap();
        let (s, ok) = node.wait_for(WAIT, |s| !s.peers.is_empty()).await;
        assert!(ok, "the device never connected to the origin: {s:#?}");

        let remote = b.remote();
        let p = &p;
        let out = tokio::task::block_in_place(|| p.push(&remote, "master"));
        assert!(out.ok, "push failed:\n{}", out.stderr);
        assert!(
            out.stderr
                .contains("Seeded sequence 1 through the fleet's origin node"),
            "{}",
            out.stderr
        );

        let (s, ok) = node.wait_for(WAIT, |s| s.has_staged(1)).await;
        assert!(ok, "the device did not stage release 1: {s:#?}");
        let release = tokio::task::block_in_place(|| b.latest_release());
        let manifest =
            tokio::task::block_in_place(|| b.verified_release(release["id"].as_i64().unwrap()));
        let chunks = manifest.unique_chunks();
        assert!(chunks.len() >= 4, "{} chunks", chunks.len());
        for c in &chunks {
            let got = node.store().read(&c.digest).unwrap();
            assert_eq!(
                got.map(|b| b.len()),
                Some(c.size as usize),
                "chunk {} on the device",
                c.digest
            );
        }
        // Every byte came from the builder's origin peer.
        let counters = node.counters();
        assert!(counters.bytes_in(PeerClass::Origin) > 0);
        assert_eq!(
            counters.bytes_in(PeerClass::Origin),
            counters.total_in(),
            "bytes from peers other than the origin"
        );
        node.shutdown().await;
    });

    // The origin keeps no second copy of the chunks: its own store stays empty.
    let origin_store = b.data.path().join("origin/demo/store/blobs");
    assert!(
        walk_files(&origin_store).is_empty(),
        "origin store holds {:?}",
        walk_files(&origin_store)
    );
}
