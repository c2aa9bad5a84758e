//! Signatures and the trust root.

mod common;

use common::{NOW, key, trust_root};
use proptest::prelude::*;
use shoal_protocol::encoding::{decode, encode};
use shoal_protocol::envelope::SignatureError;
use shoal_protocol::trust::{MAX_ROTATIONS_AT_ONCE, TrustRootError};
use shoal_protocol::verify::{self, Context, VerifyError};
use shoal_protocol::{Envelope, TrustRoot, UnixTime};

fn ctx(trust: &TrustRoot) -> Context<'_> {
    Context {
        trust,
        arch: common::ARCH,
        highest_seen: None,
        now: NOW,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Flipping any single bit of a signed announcement (payload or signature) fails verification.
    #[test]
    fn any_bit_flip_fails(bit in 0usize..4096) {
        let trust = trust_root();
        let (ann, _) = common::signed_release(&common::manifest(5));
        let env: Envelope = decode(&ann).unwrap();
        let mut payload_flip = env.clone();
        let i = bit % (payload_flip.payload.len() * 8);
        payload_flip.payload[i / 8] ^= 1 << (i % 8);
        prop_assert!(verify::announcement(&ctx(&trust), &encode(&payload_flip)).is_err());

        let mut sig_flip = env.clone();
        let j = bit % 512;
        sig_flip.signatures[0].signature.0[j / 8] ^= 1 << (j % 8);
        prop_assert!(verify::announcement(&ctx(&trust), &encode(&sig_flip)).is_err());

        // And of the whole encoded envelope.
        let mut raw = ann.clone();
        let k = bit % (raw.len() * 8);
        raw[k / 8] ^= 1 << (k % 8);
        prop_assert!(verify::announcement(&ctx(&trust), &raw).is_err());
    }
}

#[test]
fn root_keys_cannot_sign_releases() {
    let trust = trust_root();
    let (ann, _) = common::signed_release_by(&common::manifest(5), &[&key(1)]);
    assert_eq!(
        verify::announcement(&ctx(&trust), &ann),
        Err(VerifyError::Signature(SignatureError::UnknownKey(
            key(1).id()
        )))
    );
}

#[test]
fn release_threshold_counts_distinct_keys() {
    let mut trust = trust_root();
    trust.release_threshold = 2;
    let m = common::manifest(5);
    let (one, _) = common::signed_release_by(&m, &[&key(11)]);
    assert_eq!(
        verify::announcement(&ctx(&trust), &one),
        Err(VerifyError::Signature(SignatureError::BelowThreshold {
            valid: 1,
            threshold: 2
        }))
    );
    let (twice, _) = common::signed_release_by(&m, &[&key(11), &key(11)]);
    assert_eq!(
        verify::announcement(&ctx(&trust), &twice),
        Err(VerifyError::Signature(SignatureError::DuplicateKey(
            key(11).id()
        )))
    );
    let (both, _) = common::signed_release_by(&m, &[&key(11), &key(12)]);
    assert!(verify::announcement(&ctx(&trust), &both).is_ok());
}

fn next_root(from: &TrustRoot, root_keys: &[u8], threshold: u8) -> TrustRoot {
    TrustRoot {
        version: from.version + 1,
        root_keys: root_keys.iter().map(|&n| key(n).public_key()).collect(),
        root_threshold: threshold,
        ..from.clone()
    }
}

#[test]
fn initial_root_must_be_self_signed_to_threshold() {
    let root = trust_root();
    let ok = Envelope::seal(&root, &[&key(1), &key(2)]);
    assert_eq!(TrustRoot::open_initial(&ok), Ok(root.clone()));
    let short = Envelope::seal(&root, &[&key(1)]);
    assert!(matches!(
        TrustRoot::open_initial(&short),
        Err(VerifyError::Signature(
            SignatureError::BelowThreshold { .. }
        ))
    ));
    let mut dup = root.clone();
    dup.root_keys.push(key(1).public_key());
    let env = Envelope::seal(&dup, &[&key(1), &key(2)]);
    assert!(matches!(
        TrustRoot::open_initial(&env),
        Err(VerifyError::TrustRoot(TrustRootError::DuplicateKey { .. }))
    ));
}

#[test]
fn rotation_needs_old_and_new_thresholds() {
    let v1 = trust_root();
    let v2 = next_root(&v1, &[4, 5, 6], 2);
    // Old threshold (1, 2) and new threshold (4, 5): accepted.
    let good = Envelope::seal(&v2, &[&key(1), &key(2), &key(4), &key(5)]);
    assert_eq!(v1.verify_successor(&good), Ok(v2.clone()));
    // Only new keys: refused.
    let new_only = Envelope::seal(&v2, &[&key(4), &key(5), &key(6)]);
    assert!(matches!(
        v1.verify_successor(&new_only),
        Err(VerifyError::Signature(SignatureError::UnknownKey(_)))
    ));
    // Only old keys: refused (the new root must accept itself).
    let old_only = Envelope::seal(&v2, &[&key(1), &key(2), &key(3)]);
    assert!(matches!(
        v1.verify_successor(&old_only),
        Err(VerifyError::Signature(_))
    ));
    // One old key short of threshold.
    let short = Envelope::seal(&v2, &[&key(1), &key(4), &key(5)]);
    assert_eq!(
        v1.verify_successor(&short),
        Err(VerifyError::Signature(SignatureError::BelowThreshold {
            valid: 1,
            threshold: 2
        }))
    );
    // Skipping a version.
    let mut v3 = next_root(&v2, &[4, 5, 6], 2);
    v3.version = 3;
    let skip = Envelope::seal(&v3, &[&key(1), &key(2), &key(4), &key(5)]);
    assert_eq!(
        v1.verify_successor(&skip),
        Err(VerifyError::TrustRootVersion {
            current: 1,
            found: 3
        })
    );
}

#[test]
fn rotation_chain_is_walked_and_capped() {
    let v1 = trust_root();
    let v2 = next_root(&v1, &[4, 5, 6], 2);
    let v3 = next_root(&v2, &[7, 8, 9], 2);
    let e2 = Envelope::seal(&v2, &[&key(1), &key(2), &key(4), &key(5)]);
    let e3 = Envelope::seal(&v3, &[&key(4), &key(5), &key(7), &key(8)]);
    assert_eq!(
        v1.rotate_through(&[e2.clone(), e3.clone()], NOW),
        Ok(v3.clone())
    );
    // Out of order fails.
    assert!(v1.rotate_through(&[e3, e2.clone()], NOW).is_err());
    let too_many = vec![e2; MAX_ROTATIONS_AT_ONCE + 1];
    assert!(matches!(
        v1.rotate_through(&too_many, NOW),
        Err(VerifyError::TooManyRotations { .. })
    ));
    // The final root must not have expired.
    assert_eq!(
        v1.rotate_through(&[], UnixTime(v1.expires.0)),
        Err(VerifyError::TrustRootExpired { version: 1 })
    );
}

#[test]
fn status_reports_are_bound_to_the_device_key() {
    use shoal_protocol::{DeviceId, DeviceState, Digest, ReleaseSeq, StatusReport};
    let dev = key(40);
    let report = StatusReport {
        fleet: "garden".into(),
        device: DeviceId::from(dev.public_key()),
        sequence: ReleaseSeq(3),
        manifest_digest: Digest::of(b"m"),
        state: DeviceState::Healthy,
        time: NOW,
        nonce: 7,
        detail: String::new(),
    };
    let good = encode(&Envelope::seal(&report, &[&dev]));
    assert_eq!(verify::status_report(&good), Ok(report.clone()));
    let forged = encode(&Envelope::seal(&report, &[&key(41)]));
    assert!(matches!(
        verify::status_report(&forged),
        Err(VerifyError::Signature(SignatureError::UnknownKey(_)))
    ));
}
