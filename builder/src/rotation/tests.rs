//! Rotations made on the builder verify as devices verify them.

use std::fs;

use shoal_protocol::encoding::{decode, encode};
use shoal_protocol::verify::{self, Context, VerifyError};
use shoal_protocol::{
    Announcement, Digest, Envelope, ReleaseSeq, SignatureError, TrustRoot, UnixTime,
};

use super::*;
use crate::keys::Keys;

const NOW: UnixTime = UnixTime(1_800_000_000);

/// A data directory with keys and fleet `demo` at version 1.
fn setup() -> (tempfile::TempDir, TrustRoot) {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::load_or_generate(&dir.path().join("keys")).unwrap();
    let env = keys.initial_trust_root("demo", NOW).unwrap();
    let fleet = fleet_dir(dir.path(), "demo");
    fs::create_dir_all(&fleet).unwrap();
    fs::write(fleet.join("trust-root.bin"), encode(&env)).unwrap();
    let v1 = TrustRoot::open_initial(&env).unwrap();
    (dir, v1)
}

fn announcement_by(keys: &[&SigningKey]) -> Vec<u8> {
    let ann = Announcement {
        fleet: "demo".into(),
        sequence: ReleaseSeq(9),
        arch: "amd64".into(),
        manifest_digest: Digest::of(b"m"),
        manifest_size: 1,
        release_bytes: 1,
        expires: NOW.plus_secs(3600),
    };
    encode(&Envelope::seal(&ann, keys))
}

fn check(trust: &TrustRoot, ann: &[u8]) -> Result<Announcement, VerifyError> {
    let ctx = Context {
        trust,
        arch: "amd64",
        highest_seen: None,
        now: NOW,
    };
    verify::announcement(&ctx, ann)
}

#[test]
fn online_rotation_replaces_root_and_release_keys_and_devices_accept_it() {
    let (dir, v1) = setup();
    let data = dir.path();
    let before = Keys::load_or_generate(&data.join("keys")).unwrap();
    let r = rotate_online(data, "demo", true, NOW).unwrap();
    assert_eq!(r.root.version, 2);
    // A device on version 1 accepts it, and it is now what the fleet serves.
    let env: Envelope = decode(&r.envelope).unwrap();
    assert_eq!(v1.verify_successor(&env).unwrap(), r.root);
    assert_eq!(current(data, "demo").unwrap().0, r.root);
    assert_eq!(chain(data, "demo").unwrap(), vec![r.envelope.clone()]);

    // New root and release keys on the builder; the old release key co-signs for other fleets.
    let after = Keys::load_or_generate(&data.join("keys")).unwrap();
    let old_release = before.release.clone();
    assert_ne!(after.release.public_key(), old_release.public_key());
    assert_eq!(
        after.previous_release.as_ref().map(SigningKey::public_key),
        Some(old_release.public_key())
    );
    assert_ne!(
        after.root.as_ref().unwrap().public_key(),
        before.root.as_ref().unwrap().public_key()
    );
    assert_eq!(
        r.root.root_keys,
        vec![after.root.as_ref().unwrap().public_key()]
    );

    // The revoked key alone is refused by the rotated fleet; what the builder signs now passes
    // both the rotated fleet and a fleet still on version 1.
    assert!(matches!(
        check(&r.root, &announcement_by(&[&old_release])),
        Err(VerifyError::Signature(SignatureError::UnknownKey(_)))
    ));
    let signed_now = announcement_by(&after.release_signers());
    assert!(check(&r.root, &signed_now).is_ok());
    assert!(check(&v1, &signed_now).is_ok());
    // A server that loaded its keys before the rotation signs with the new ones too.
    let reloaded = announcement_by(&before.reloaded().release_signers());
    assert!(check(&r.root, &reloaded).is_ok());
    assert!(check(&v1, &reloaded).is_ok());
}

#[test]
fn an_offline_root_signs_a_rotation_made_on_the_builder() {
    let (dir, v1) = setup();
    let data = dir.path();
    let away = tempfile::tempdir().unwrap();
    // The root key leaves the builder; a second root key is made offline.
    let old_root = away.path().join("root.key");
    fs::rename(data.join("keys/root.key"), &old_root).unwrap();
    let new_root = keys::generate(&away.path().join("new-root.key")).unwrap();
    assert!(
        Keys::load_or_generate(&data.join("keys"))
            .unwrap()
            .root
            .is_none()
    );
    assert!(matches!(
        rotate_online(data, "demo", false, NOW),
        Err(RotationError::Key(KeyError::RootOffline { .. }))
    ));

    let mut env = propose(
        &v1,
        Changes {
            root_keys: Some(vec![new_root.public_key()]),
            root_threshold: Some(1),
            ..Changes::default()
        },
    )
    .unwrap();
    // Installing it unsigned, or signed only by the new key, fails and changes nothing.
    let served = fs::read(fleet_dir(data, "demo").join("trust-root.bin")).unwrap();
    assert!(matches!(
        install(data, "demo", &env, NOW),
        Err(RotationError::Invalid { .. })
    ));
    let mut new_only = env.clone();
    sign(&mut new_only, &new_root).unwrap();
    assert!(matches!(
        install(data, "demo", &new_only, NOW),
        Err(RotationError::Invalid {
            source: VerifyError::Signature(_),
            ..
        })
    ));
    assert!(matches!(
        sign(&mut new_only, &new_root),
        Err(RotationError::Refused(_))
    ));
    assert_eq!(
        fs::read(fleet_dir(data, "demo").join("trust-root.bin")).unwrap(),
        served
    );
    assert!(chain(data, "demo").unwrap().is_empty());

    // Signed by the old root (offline) and the new one: installed.
    sign(&mut env, &keys::load(&old_root).unwrap()).unwrap();
    sign(&mut env, &new_root).unwrap();
    let v2 = install(data, "demo", &env, NOW).unwrap();
    assert_eq!(v2.root_keys, vec![new_root.public_key()]);
    assert_eq!(v1.rotate_through(&[env.clone()], NOW).unwrap(), v2);
    // The same rotation again is not the next version any more.
    assert!(matches!(
        install(data, "demo", &env, NOW),
        Err(RotationError::Invalid {
            source: VerifyError::TrustRootVersion { .. },
            ..
        })
    ));
}

#[test]
fn a_rotation_the_builder_could_not_sign_under_is_refused() {
    let (dir, v1) = setup();
    let data = dir.path();
    let root = keys::load(&data.join("keys/root.key")).unwrap();
    let stranger = SigningKey::from_bytes(&[3; 32]);
    let mut env = propose(
        &v1,
        Changes {
            release_keys: Some(vec![stranger.public_key()]),
            ..Changes::default()
        },
    )
    .unwrap();
    sign(&mut env, &root).unwrap();
    assert!(matches!(
        install(data, "demo", &env, NOW),
        Err(RotationError::Refused(_))
    ));
    assert_eq!(current(data, "demo").unwrap().0, v1);
}
