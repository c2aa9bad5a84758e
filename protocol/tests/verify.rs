//! The release verification entry point: one typed error per way a release can be wrong.

mod common;

use common::{ARCH, NOW, key, manifest, signed_release, trust_root};
use shoal_protocol::encoding::{decode, encode};
use shoal_protocol::verify::{self, Context, VerifyError};
use shoal_protocol::{Announcement, Digest, Envelope, ReleaseSeq, TrustRoot, UnixTime};

fn ctx<'a>(trust: &'a TrustRoot, highest: Option<(ReleaseSeq, Digest)>) -> Context<'a> {
    Context {
        trust,
        arch: ARCH,
        highest_seen: highest,
        now: NOW,
    }
}

#[test]
fn a_good_release_verifies_end_to_end() {
    let trust = trust_root();
    let m = manifest(5);
    let (ann_bytes, man_bytes) = signed_release(&m);
    let ann = verify::announcement(&ctx(&trust, None), &ann_bytes).unwrap();
    assert_eq!(ann.sequence, ReleaseSeq(5));
    let got = verify::manifest(&ctx(&trust, None), &ann, &man_bytes).unwrap();
    assert_eq!(got, m);
    // The device now holds #5: the same announcement is still accepted (idempotent).
    let seen = Some((ReleaseSeq(5), ann.manifest_digest));
    assert!(verify::announcement(&ctx(&trust, seen), &ann_bytes).is_ok());
    assert!(verify::manifest(&ctx(&trust, seen), &ann, &man_bytes).is_ok());
}

#[test]
fn rollback_and_equivocation_are_refused() {
    let trust = trust_root();
    let (ann4, _) = signed_release(&manifest(4));
    let seen = Some((ReleaseSeq(5), Digest::of(b"the real #5")));
    assert_eq!(
        verify::announcement(&ctx(&trust, seen), &ann4),
        Err(VerifyError::Rollback {
            highest: ReleaseSeq(5),
            found: ReleaseSeq(4)
        })
    );
    let (ann5, _) = signed_release(&manifest(5));
    assert_eq!(
        verify::announcement(&ctx(&trust, seen), &ann5),
        Err(VerifyError::Equivocation {
            sequence: ReleaseSeq(5)
        })
    );
}

#[test]
fn expiry_fleet_and_arch_are_checked() {
    let trust = trust_root();
    let (ann, _) = signed_release(&manifest(5));
    let later = Context {
        now: UnixTime(NOW.0 + 8 * 86_400),
        ..ctx(&trust, None)
    };
    assert!(matches!(
        verify::announcement(&later, &ann),
        Err(VerifyError::Expired {
            kind: "announcement",
            ..
        })
    ));
    let armv7 = Context {
        arch: "armv7hf",
        ..ctx(&trust, None)
    };
    assert!(matches!(
        verify::announcement(&armv7, &ann),
        Err(VerifyError::WrongArch { .. })
    ));
    let mut other = manifest(5);
    other.fleet = "orchard".into();
    let (ann_other, _) = signed_release(&other);
    assert!(matches!(
        verify::announcement(&ctx(&trust, None), &ann_other),
        Err(VerifyError::WrongFleet { .. })
    ));
    let mut expired_trust = trust.clone();
    expired_trust.expires = NOW;
    assert_eq!(
        verify::announcement(&ctx(&expired_trust, None), &ann),
        Err(VerifyError::TrustRootExpired { version: 1 })
    );
}

#[test]
fn manifest_must_match_its_announcement() {
    let trust = trust_root();
    let (ann_bytes, man_bytes) = signed_release(&manifest(5));
    let ann = verify::announcement(&ctx(&trust, None), &ann_bytes).unwrap();

    let mut longer = man_bytes.clone();
    longer.push(0);
    assert_eq!(
        verify::manifest(&ctx(&trust, None), &ann, &longer),
        Err(VerifyError::SizeMismatch {
            expected: man_bytes.len() as u64,
            found: man_bytes.len() as u64 + 1
        })
    );
    let mut flipped = man_bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    assert!(matches!(
        verify::manifest(&ctx(&trust, None), &ann, &flipped),
        Err(VerifyError::DigestMismatch { .. })
    ));
    // Another release's manifest, correctly signed, under this announcement's digest and size.
    let (_, other) = signed_release(&manifest(6));
    assert!(verify::manifest(&ctx(&trust, None), &ann, &other).is_err());

    // A signed announcement that points at a manifest of another sequence.
    let mut lying: Announcement = decode(&decode::<Envelope>(&ann_bytes).unwrap().payload).unwrap();
    lying.sequence = ReleaseSeq(9);
    assert_eq!(
        verify::manifest(&ctx(&trust, None), &lying, &man_bytes),
        Err(VerifyError::ManifestMismatch {
            expected: ReleaseSeq(9),
            found: ReleaseSeq(5)
        })
    );
    // An announced size beyond any manifest is refused before anything is fetched or hashed.
    lying.manifest_size = u64::MAX;
    assert!(matches!(
        verify::manifest(&ctx(&trust, None), &lying, &man_bytes),
        Err(VerifyError::Oversized { .. })
    ));
}

#[test]
fn oversized_announcement_is_refused_unparsed() {
    let trust = trust_root();
    let big = vec![1u8; 5000];
    assert!(matches!(
        verify::announcement(&ctx(&trust, None), &big),
        Err(VerifyError::Oversized { .. })
    ));
}

#[test]
fn wave_control_is_release_signed() {
    use shoal_protocol::{WaveAction, WaveControl};
    let trust = trust_root();
    let wc = WaveControl {
        fleet: "garden".into(),
        sequence: ReleaseSeq(5),
        manifest_digest: Digest::of(b"m"),
        counter: 1,
        action: WaveAction::Open { wave: 1 },
        issued_at: NOW,
    };
    let good = encode(&Envelope::seal(&wc, &[&key(12)]));
    assert_eq!(verify::wave_control(&trust, &good, NOW), Ok(wc.clone()));
    let by_root = encode(&Envelope::seal(&wc, &[&key(1)]));
    assert!(verify::wave_control(&trust, &by_root, NOW).is_err());
    // An announcement's signature cannot be replayed as a wave control message.
    let (ann, _) = signed_release(&manifest(5));
    assert!(verify::wave_control(&trust, &ann, NOW).is_err());
}
