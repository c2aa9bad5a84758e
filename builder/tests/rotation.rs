//! Trust-root rotation reaching devices, end to end: a real `shoal-builder serve`, the real
//! `shoal-builder keys rotate` run while it serves, and `shoal_node` daemons (stage-only
//! runtime) on loopback that joined the fleet from its bootstrap information. No Docker Engine is
//! needed: the releases here are signed by the test with the builder's key files.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal_node::core::{GossipMessage, TrustRootError};
use shoal_node::daemon::identity::DeviceKey;
use shoal_node::daemon::{Handle, OfferError};
use shoal_protocol::{
    Announcement, ChunkParams, ChunkRef, Digest, Envelope, ImageRef, LayerRef, ReleaseManifest,
    ReleaseSeq, RolloutPlan, Service, ServiceSettings, SigningKey, TrustRoot, UnixTime, chunking,
    encoding,
};
use shoal_testing::pseudo_random;
use support::*;

const WAIT: Duration = Duration::from_secs(120);

fn keys_rotate(data: &Path, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["keys", "rotate", "--fleet", "demo"])
        .args(extra)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keys rotate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn key_file(data: &Path, name: &str) -> SigningKey {
    let bytes = std::fs::read(data.join("keys").join(name)).unwrap();
    SigningKey::from_bytes(&bytes.try_into().unwrap())
}

/// The fleet's bootstrap: its trust root (as a device is provisioned with it) and the origin's
/// addresses.
fn bootstrap(b: &Builder) -> (TrustRoot, Vec<libp2p::Multiaddr>) {
    let boot = b.get_json("/api/v1/fleets/demo/bootstrap");
    let env: Envelope =
        encoding::decode(&hex::decode(boot["trust_root_hex"].as_str().unwrap()).unwrap()).unwrap();
    let addrs = boot["multiaddrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect();
    (TrustRoot::open_initial(&env).unwrap(), addrs)
}

/// A release of one service over 600 KiB of pseudo-random bytes, signed by `signers`: the
/// announcement envelope, the manifest envelope and the chunks.
struct Release {
    announcement: Vec<u8>,
    manifest: Vec<u8>,
    chunks: Vec<Vec<u8>>,
}

fn release(sequence: u64, signers: &[&SigningKey]) -> Release {
    let data = pseudo_random(600 << 10, 11 + sequence);
    let mut chunks = Vec::new();
    let mut refs = Vec::new();
    let mut start = 0;
    for len in chunking::cut_points(&data, ChunkParams::DEFAULT) {
        let bytes = data[start..start + len].to_vec();
        refs.push(ChunkRef {
            digest: Digest::of(&bytes),
            size: len as u32,
        });
        chunks.push(bytes);
        start += len;
    }
    let config = br#"{"architecture":"amd64"}"#.to_vec();
    let mut services = std::collections::BTreeMap::new();
    services.insert(
        "main".to_string(),
        Service {
            image: ImageRef {
                config_digest: Digest::of(&config),
                config,
                layers: vec![LayerRef::from_chunks(refs.clone())],
            },
            settings: ServiceSettings::default(),
        },
    );
    let t = now();
    let manifest = ReleaseManifest {
        fleet: "demo".into(),
        sequence: ReleaseSeq(sequence),
        commit: format!("{sequence:040x}"),
        created: UnixTime(t),
        expires: UnixTime(t + 86_400),
        arch: "amd64".into(),
        device_type: "generic-amd64".into(),
        services,
        rollout: RolloutPlan::all_at_once(),
    };
    let manifest_bytes = encoding::encode(&Envelope::seal(&manifest, signers));
    let ann = Announcement {
        fleet: "demo".into(),
        sequence: ReleaseSeq(sequence),
        arch: "amd64".into(),
        manifest_digest: Digest::of(&manifest_bytes),
        manifest_size: manifest_bytes.len() as u64,
        release_bytes: refs.iter().map(|c| u64::from(c.size)).sum(),
        expires: manifest.expires,
    };
    Release {
        announcement: encoding::encode(&Envelope::seal(&ann, signers)),
        manifest: manifest_bytes,
        chunks,
    }
}

async fn device(dir: &Path, name: &str, trust: &TrustRoot, boot: Vec<libp2p::Multiaddr>) -> Handle {
    shoal_node::daemon::Launcher::new(DeviceKey::generate(), trust.clone(), dir.join(name))
        .arch("amd64")
        .bootstrap(boot)
        .start()
        .await
        .unwrap()
}

async fn on_version(h: &Handle, version: u64, what: &str) {
    let (s, ok) = h.wait_for(WAIT, |s| s.trust_version == version).await;
    assert!(ok, "{what} did not move to trust root {version}: {s:#?}");
}

#[test]
fn a_rotation_made_while_the_builder_serves_reaches_running_and_late_devices() {
    let mut b = Builder::start("rotation_live");
    let data = b.data.path().to_path_buf();
    let (v1, origin_addrs) = bootstrap(&b);
    assert_eq!(v1.version, 1);
    let old_release_key = key_file(&data, "release.key");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let a = device(dir.path(), "a", &v1, origin_addrs.clone()).await;
        let mut boot = origin_addrs.clone();
        boot.push(a.listen_addrs()[0].clone());
        let d = device(dir.path(), "d", &v1, boot).await;
        for h in [&a, &d] {
            let (s, ok) = h.wait_for(WAIT, |s| s.peers.len() >= 2).await;
            assert!(
                ok,
                "not connected to the origin and the other device: {s:#?}"
            );
            assert_eq!(s.trust_version, 1);
        }

        // Rotate while the builder serves: new root key, new release key (the old one revoked).
        let out = tokio::task::block_in_place(|| keys_rotate(&data, &["--new-release-key"]));
        assert!(out.contains("version 2"), "{out}");
        on_version(&a, 2, "device a").await;
        on_version(&d, 2, "device d").await;
        let new_release_key = key_file(&data, "release.key");
        assert_ne!(new_release_key.public_key(), old_release_key.public_key());

        // A release signed by the new release key is accepted and staged.
        let good = release(1, &[&new_release_key]);
        for c in &good.chunks {
            a.store().put_bytes(c).unwrap();
        }
        a.store().put_bytes(&good.manifest).unwrap();
        a.seed(good.announcement.clone(), good.manifest.clone().into())
            .await
            .expect("a rotated device seeds a release of the new key");
        let (s, ok) = d.wait_for(WAIT, |s| s.has_staged(1)).await;
        assert!(ok, "device d did not stage the new key's release: {s:#?}");

        // One signed by the revoked key, with a higher sequence, is refused by both.
        let revoked = release(2, &[&old_release_key]);
        let err = a
            .seed(
                revoked.announcement.clone(),
                revoked.manifest.clone().into(),
            )
            .await
            .expect_err("the revoked key's release is refused");
        assert!(err.to_string().contains("refused"), "{err}");
        let rejected_before = d.counters().gossip_rejected.load(Ordering::Relaxed);
        a.publish_unchecked(GossipMessage::Announcement(revoked.announcement).encode())
            .await;
        let mut rejected = rejected_before;
        for _ in 0..1200 {
            rejected = d.counters().gossip_rejected.load(Ordering::Relaxed);
            if rejected > rejected_before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(rejected > rejected_before, "device d never judged it");
        for h in [&a, &d] {
            let s = h.status();
            assert_eq!(s.highest, Some(1), "{s:#?}");
            assert_eq!(s.target, Some(1), "{s:#?}");
        }

        // A second rotation; then version 2 comes back: refused with a typed error, and nothing
        // moves back.
        let out = tokio::task::block_in_place(|| keys_rotate(&data, &[]));
        assert!(out.contains("version 3"), "{out}");
        on_version(&a, 3, "device a").await;
        on_version(&d, 3, "device d").await;
        let v2 = std::fs::read(data.join("fleets/demo/rotations/2.bin")).unwrap();
        match a.offer_trust_root(v2.clone()).await {
            Err(OfferError::Refused(TrustRootError::Stale {
                version: 2,
                current: 3,
            })) => {}
            other => panic!("version 2 offered after 3: {other:?}"),
        }
        // (A gossiped copy of version 2 would not even reach the devices' cores: gossipsub
        // drops bytes it has seen; the core's answer to it is `core::attacks`'s.)
        assert_eq!(d.status().trust_version, 3);
        assert_eq!(a.status().trust_version, 3);

        // A device provisioned with version 1 joining now walks 2 and 3 from the origin.
        let late = device(dir.path(), "late", &v1, origin_addrs.clone()).await;
        on_version(&late, 3, "a late device").await;
        late.shutdown().await;
        a.shutdown().await;
        d.shutdown().await;
    });

    // The bootstrap now hands out version 3; after a restart the origin starts on it and still
    // relays the chain to a device provisioned with version 1.
    assert_eq!(bootstrap(&b).0.version, 3);
    b.restart();
    let (v3, origin_addrs) = bootstrap(&b);
    assert_eq!(v3.version, 3);
    rt.block_on(async {
        let late = device(dir.path(), "after-restart", &v1, origin_addrs).await;
        on_version(&late, 3, "a device joining after the restart").await;
        late.shutdown().await;
    });
}
