//! The update-framework attacks against the verification functions, one table row each: every
//! forged, replayed or mixed input gets a typed [`VerifyError`], and a device's trusted context
//! (trust root, highest sequence) is an input the functions never change.
//!
//! Node-level consequences (nothing fetched, nothing applied, state unchanged) are in
//! `node/core/tests/core/attacks.rs`; docs/SECURITY.md maps each attack to its test.

mod common;

use common::{ARCH, FLEET, NOW, key, manifest, signed_release, signed_release_by, trust_root};
use shoal_protocol::encoding::{decode, encode};
use shoal_protocol::verify::{self, Context, VerifyError};
use shoal_protocol::{
    Announcement, Digest, Envelope, ReleaseSeq, SignatureError, TrustRoot, UnixTime,
};

fn ctx(trust: &TrustRoot, highest: Option<(ReleaseSeq, Digest)>, now: UnixTime) -> Context<'_> {
    Context {
        trust,
        arch: ARCH,
        highest_seen: highest,
        now,
    }
}

/// Re-signs the announcement inside `ann_bytes` after `f` changed it.
fn reannounce(ann_bytes: &[u8], f: impl FnOnce(&mut Announcement)) -> Vec<u8> {
    let env: Envelope = decode(ann_bytes).unwrap();
    let mut ann: Announcement = decode(&env.payload).unwrap();
    f(&mut ann);
    encode(&Envelope::seal(&ann, &[&key(11)]))
}

/// Flips one byte of the first signature.
fn corrupt_signature(bytes: &[u8]) -> Vec<u8> {
    let mut env: Envelope = decode(bytes).unwrap();
    env.signatures[0].signature.0[17] ^= 0x01;
    encode(&env)
}

/// Relabels the first signature with another key's id, and adds a copy of it under a second id.
fn one_key_two_ids(bytes: &[u8]) -> Vec<u8> {
    let mut env: Envelope = decode(bytes).unwrap();
    let mut copy = env.signatures[0].clone();
    copy.key_id = key(12).id();
    env.signatures.push(copy);
    encode(&env)
}

#[test]
fn forged_and_replayed_announcements_get_typed_errors() {
    let trust = trust_root();
    let m5 = manifest(5);
    let (ann5, _) = signed_release(&m5);
    let digest5 = {
        let env: Envelope = decode(&ann5).unwrap();
        decode::<Announcement>(&env.payload)
            .unwrap()
            .manifest_digest
    };
    let (ann4, _) = signed_release(&manifest(4));
    let mut other5 = manifest(5);
    other5.commit = "ffffffffffffffffffffffffffffffffffffffff".into();
    let (ann5_other, _) = signed_release(&other5);
    let mut strict = trust.clone();
    strict.release_threshold = 2;
    let mut x86 = manifest(6);
    x86.arch = "amd64".into();
    let (ann_x86, _) = signed_release(&x86);
    let seen5 = Some((ReleaseSeq(5), digest5));
    let in_1970 = UnixTime(0);

    // (attack, trust root, highest seen, now, signed announcement, expected error)
    type Check = fn(&VerifyError) -> bool;
    type Row<'a> = (
        &'static str,
        &'a TrustRoot,
        Option<(ReleaseSeq, Digest)>,
        UnixTime,
        Vec<u8>,
        Check,
    );
    let rows: Vec<Row<'_>> = vec![
        (
            "unknown key",
            &trust,
            None,
            NOW,
            signed_release_by(&m5, &[&key(99)]).0,
            |e| matches!(e, VerifyError::Signature(SignatureError::UnknownKey(_))),
        ),
        (
            "wrong role: a root key signs a release",
            &trust,
            None,
            NOW,
            signed_release_by(&m5, &[&key(1)]).0,
            |e| matches!(e, VerifyError::Signature(SignatureError::UnknownKey(_))),
        ),
        (
            "one corrupted signature byte",
            &trust,
            None,
            NOW,
            corrupt_signature(&ann5),
            |e| matches!(e, VerifyError::Signature(SignatureError::BadSignature(_))),
        ),
        (
            "threshold k-1 of k",
            &strict,
            None,
            NOW,
            ann5.clone(),
            |e| {
                *e == VerifyError::Signature(SignatureError::BelowThreshold {
                    valid: 1,
                    threshold: 2,
                })
            },
        ),
        (
            "the same key twice",
            &strict,
            None,
            NOW,
            signed_release_by(&m5, &[&key(11), &key(11)]).0,
            |e| matches!(e, VerifyError::Signature(SignatureError::DuplicateKey(_))),
        ),
        (
            "one key under two ids",
            &strict,
            None,
            NOW,
            one_key_two_ids(&ann5),
            |e| matches!(e, VerifyError::Signature(SignatureError::BadSignature(_))),
        ),
        (
            "replay of an older release",
            &trust,
            seen5,
            NOW,
            ann4,
            |e| matches!(e, VerifyError::Rollback { .. }),
        ),
        (
            "same sequence, other bytes",
            &trust,
            seen5,
            NOW,
            ann5_other,
            |e| matches!(e, VerifyError::Equivocation { .. }),
        ),
        (
            "expired announcement",
            &trust,
            None,
            NOW.plus_secs(8 * 86_400),
            ann5.clone(),
            |e| matches!(e, VerifyError::Expired { .. }),
        ),
        (
            "announcement for another fleet",
            &trust,
            None,
            NOW,
            reannounce(&ann5, |a| a.fleet = "other".into()),
            |e| matches!(e, VerifyError::WrongFleet { .. }),
        ),
        ("wrong architecture", &trust, None, NOW, ann_x86, |e| {
            matches!(e, VerifyError::WrongArch { .. })
        }),
        (
            "oversized announcement",
            &trust,
            None,
            NOW,
            vec![0u8; 64 * 1024],
            |e| matches!(e, VerifyError::Oversized { .. }),
        ),
        (
            "expired trust root",
            &trust,
            None,
            trust.expires,
            ann5.clone(),
            |e| matches!(e, VerifyError::TrustRootExpired { version: 1 }),
        ),
    ];
    for (name, trust, highest, now, bytes, check) in rows {
        let before = trust.clone();
        match verify::announcement(&ctx(trust, highest, now), &bytes) {
            Err(e) => assert!(check(&e), "{name}: unexpected error {e:?}"),
            Ok(a) => panic!("{name}: accepted {a:?}"),
        }
        assert_eq!(*trust, before, "{name}: the trust root moved");
    }
    // A device clock reset to 1970 does not make the announcement invalid on its own: the node
    // keeps its clock from going backwards (node core test `a_clock_reset_to_1970_...`).
    assert!(verify::announcement(&ctx(&trust, None, in_1970), &ann5).is_ok());
}

#[test]
fn mix_and_match_manifests_are_refused() {
    let trust = trust_root();
    let m5 = manifest(5);
    let m6 = manifest(6);
    let (ann6, bytes6) = signed_release(&m6);
    let ann6: Announcement = decode(&decode::<Envelope>(&ann6).unwrap().payload).unwrap();
    let (_, bytes5) = signed_release(&m5);
    // Release 6's signatures on a payload with release 5's layers: the signature fails.
    let mut mixed = m6.clone();
    mixed.services.get_mut("main").unwrap().image.layers = m5.services["main"].image.layers.clone();
    let mut env: Envelope = decode(&bytes6).unwrap();
    env.payload = encode(&mixed);
    let mixed_bytes = encode(&env);
    let as_announced = Announcement {
        manifest_digest: Digest::of(&mixed_bytes),
        manifest_size: mixed_bytes.len() as u64,
        ..ann6.clone()
    };
    let c = ctx(&trust, None, NOW);
    assert!(matches!(
        verify::manifest(&c, &as_announced, &mixed_bytes),
        Err(VerifyError::Signature(SignatureError::BadSignature(_)))
    ));
    // Release 5's whole manifest under release 6's announcement: wrong digest.
    assert!(matches!(
        verify::manifest(&c, &ann6, &bytes5),
        Err(VerifyError::DigestMismatch { .. } | VerifyError::SizeMismatch { .. })
    ));
    // Release 5's manifest announced (and signed) as release 6: the sequences differ.
    let lying = Announcement {
        manifest_digest: Digest::of(&bytes5),
        manifest_size: bytes5.len() as u64,
        ..ann6.clone()
    };
    assert!(matches!(
        verify::manifest(&c, &lying, &bytes5),
        Err(VerifyError::ManifestMismatch { .. })
    ));
    // A truncated manifest: its size is not the announced one.
    assert!(matches!(
        verify::manifest(&c, &ann6, &bytes6[..bytes6.len() - 1]),
        Err(VerifyError::SizeMismatch { .. })
    ));
    assert!(verify::manifest(&c, &ann6, &bytes6).is_ok());
}

#[test]
fn rotation_attacks_are_refused() {
    let v1 = trust_root();
    let mut v2 = v1.clone();
    v2.version = 2;
    v2.root_keys = vec![key(4).public_key(), key(5).public_key()];
    v2.root_threshold = 2;
    // The compromised release key 11 is revoked in v2.
    v2.release_keys = vec![key(13).public_key()];
    let good = Envelope::seal(&v2, &[&key(1), &key(2), &key(4), &key(5)]);
    let new_only = Envelope::seal(&v2, &[&key(4), &key(5)]);
    let old_only = Envelope::seal(&v2, &[&key(1), &key(2)]);
    let mut other_fleet = v2.clone();
    other_fleet.fleet = "other".into();
    let other_fleet = Envelope::seal(&other_fleet, &[&key(1), &key(2), &key(4), &key(5)]);
    let mut replay = v1.clone();
    replay.version = 1;
    let replay = Envelope::seal(&replay, &[&key(1), &key(2)]);

    assert!(matches!(
        v1.verify_successor(&new_only),
        Err(VerifyError::Signature(SignatureError::UnknownKey(_)))
    ));
    assert!(matches!(
        v1.verify_successor(&old_only),
        Err(VerifyError::Signature(_))
    ));
    assert!(matches!(
        v1.verify_successor(&other_fleet),
        Err(VerifyError::WrongFleet { .. })
    ));
    assert_eq!(
        v1.verify_successor(&replay),
        Err(VerifyError::TrustRootVersion {
            current: 1,
            found: 1
        })
    );
    let too_many = vec![good.clone(); shoal_protocol::trust::MAX_ROTATIONS_AT_ONCE + 1];
    assert!(matches!(
        v1.rotate_through(&too_many, NOW),
        Err(VerifyError::TooManyRotations { .. })
    ));
    let v2 = v1.rotate_through(&[good], NOW).unwrap();

    // After the rotation the revoked key's releases are refused, even at u64::MAX, and the new
    // key's are accepted.
    let mut max = manifest(5);
    max.sequence = ReleaseSeq(u64::MAX);
    let (ann_max, _) = signed_release_by(&max, &[&key(11)]);
    assert!(verify::announcement(&ctx(&v1, None, NOW), &ann_max).is_ok());
    assert!(matches!(
        verify::announcement(&ctx(&v2, None, NOW), &ann_max),
        Err(VerifyError::Signature(SignatureError::UnknownKey(_)))
    ));
    let (ann_new, _) = signed_release_by(&manifest(6), &[&key(13)]);
    assert!(verify::announcement(&ctx(&v2, None, NOW), &ann_new).is_ok());
    assert_eq!(v2.fleet, FLEET);
}

#[test]
fn digest_names_cannot_carry_path_tricks() {
    // Stores name files by `Digest` only; a name from a peer or a URL is parsed into one first.
    let tricks = [
        "../../../../etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "/etc/passwd",
        "",
        "0000000000000000000000000000000000000000000000000000000000000../",
        "000000000000000000000000000000000000000000000000000000000000000g",
        "00000000000000000000000000000000000000000000000000000000000000000",
    ];
    for t in tricks {
        assert!(t.parse::<Digest>().is_err(), "{t:?} parsed as a digest");
    }
    for bytes in [&b"../x"[..], b"/", b"\0"] {
        let name = Digest::of(bytes).to_string();
        assert_eq!(name.len(), 64);
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
}
