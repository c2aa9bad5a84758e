//! Canonical encoding: round trips, stable bytes, strict decoders.

mod common;

use proptest::prelude::*;
use shoal_protocol::encoding::{DecodeError, FORMAT_VERSION, decode, encode};
use shoal_protocol::{
    Announcement, DeviceId, DeviceState, Digest, Envelope, ReleaseManifest, ReleaseSeq,
    StatusReport, UnixTime, WaveAction, WaveControl, Wire,
};

fn arb_digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn arb_announcement() -> impl Strategy<Value = Announcement> {
    (
        "[a-z0-9-]{0,40}",
        any::<u64>(),
        "[a-z0-9]{0,12}",
        arb_digest(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(fleet, seq, arch, d, size, bytes, exp)| Announcement {
            fleet,
            sequence: ReleaseSeq(seq),
            arch,
            manifest_digest: d,
            manifest_size: size,
            release_bytes: bytes,
            expires: UnixTime(exp),
        })
}

fn arb_state() -> impl Strategy<Value = DeviceState> {
    prop_oneof![
        Just(DeviceState::Staged),
        Just(DeviceState::Applying),
        Just(DeviceState::Running),
        Just(DeviceState::Healthy),
        Just(DeviceState::Failed),
        Just(DeviceState::RolledBack),
    ]
}

fn arb_action() -> impl Strategy<Value = WaveAction> {
    prop_oneof![
        any::<u32>().prop_map(|wave| WaveAction::Open { wave }),
        Just(WaveAction::Pause),
        Just(WaveAction::Resume),
        Just(WaveAction::Halt),
        proptest::collection::vec(any::<[u8; 32]>(), 0..8).prop_map(|ds| WaveAction::Hold {
            devices: ds.into_iter().map(DeviceId).collect()
        }),
    ]
}

fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(v: &T) {
    let bytes = encode(v);
    assert_eq!(&decode::<T>(&bytes).unwrap(), v);
    // Canonical: encoding the decoded value gives the same bytes.
    assert_eq!(encode(&decode::<T>(&bytes).unwrap()), bytes);
}

proptest! {
    #[test]
    fn announcements_round_trip_and_stay_small(a in arb_announcement()) {
        round_trip(&a);
        let signed = encode(&Envelope::seal(&a, &[&common::key(11), &common::key(12)]));
        prop_assert!(signed.len() < 4096, "signed announcement is {} bytes", signed.len());
    }

    #[test]
    fn wave_controls_round_trip(seq in any::<u64>(), counter in any::<u64>(), action in arb_action(), d in arb_digest()) {
        round_trip(&WaveControl {
            fleet: "f".into(),
            sequence: ReleaseSeq(seq),
            manifest_digest: d,
            counter,
            action,
            issued_at: UnixTime(counter / 2),
        });
    }

    #[test]
    fn status_reports_round_trip(dev in any::<[u8; 32]>(), state in arb_state(), nonce in any::<u64>(), detail in ".{0,100}") {
        round_trip(&StatusReport {
            fleet: "f".into(),
            device: DeviceId(dev),
            sequence: ReleaseSeq(nonce % 1000),
            manifest_digest: Digest::of(&dev),
            state,
            time: UnixTime(nonce / 3),
            nonce,
            detail,
        });
    }

    #[test]
    fn manifests_round_trip(seq in 1u64..u64::MAX, env_value in ".{0,64}") {
        let mut m = common::manifest(seq);
        m.services.get_mut("main").unwrap().settings.environment.insert("X".into(), env_value);
        round_trip(&m);
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode::<Announcement>(&bytes);
        let _ = decode::<ReleaseManifest>(&bytes);
        let _ = decode::<Envelope>(&bytes);
        let _ = decode::<WaveControl>(&bytes);
        let _ = decode::<StatusReport>(&bytes);
        let _ = decode::<shoal_protocol::TrustRoot>(&bytes);
    }
}

/// The canonical bytes of a fixed manifest never change unnoticed: devices in the field hash
/// and verify these bytes, so a change here is a protocol change.
#[test]
fn canonical_bytes_are_stable() {
    let bytes = encode(&common::manifest(7));
    assert_eq!(bytes[0], FORMAT_VERSION);
    assert_eq!(
        Digest::of(&bytes).to_string(),
        "c276dfcbab9512971cd59923a6c9f4bbe135d079143f026e018b0c9313e64fdb",
        "canonical encoding of the fixture manifest changed"
    );
}

fn wave_control(counter: u64, action: WaveAction) -> WaveControl {
    WaveControl {
        fleet: "f".into(),
        sequence: ReleaseSeq(7),
        manifest_digest: Digest([3; 32]),
        counter,
        action,
        issued_at: UnixTime(1_700_000_000),
    }
}

/// Wave control bytes are signed and gossiped to devices in the field: the existing actions keep
/// their bytes (`Hold` was added at the end), and `Hold`'s are fixed here.
#[test]
fn wave_control_bytes_are_stable() {
    let head = |counter: u8| {
        let mut b = vec![FORMAT_VERSION, 1, b'f', 7];
        b.extend_from_slice(&[3; 32]);
        b.push(counter);
        b
    };
    // issued_at 1_700_000_000 as a postcard varint.
    let tail = [0x80, 0xe2, 0xcf, 0xaa, 0x06];
    let mut open = head(1);
    open.extend_from_slice(&[0, 2]); // variant 0 (Open), wave 2
    open.extend_from_slice(&tail);
    assert_eq!(encode(&wave_control(1, WaveAction::Open { wave: 2 })), open);
    let mut halt = head(2);
    halt.push(3); // variant 3 (Halt)
    halt.extend_from_slice(&tail);
    assert_eq!(encode(&wave_control(2, WaveAction::Halt)), halt);
    let mut hold = head(3);
    hold.extend_from_slice(&[4, 2]); // variant 4 (Hold), two devices
    hold.extend_from_slice(&[1; 32]);
    hold.extend_from_slice(&[2; 32]);
    hold.extend_from_slice(&tail);
    let held = WaveAction::Hold {
        devices: vec![DeviceId([1; 32]), DeviceId([2; 32])],
    };
    assert_eq!(encode(&wave_control(3, held)), hold);
}

/// A hold list is capped at `MAX_HELD_DEVICES`, and a full one, signed, fits in gossip.
#[test]
fn hold_lists_are_capped() {
    use shoal_protocol::MAX_HELD_DEVICES;
    let full = |n: usize| {
        wave_control(
            9,
            WaveAction::Hold {
                devices: (0..n)
                    .map(|i| {
                        let mut d = [0u8; 32];
                        d[..8].copy_from_slice(&(i as u64).to_be_bytes());
                        DeviceId(d)
                    })
                    .collect(),
            },
        )
    };
    round_trip(&full(MAX_HELD_DEVICES));
    let signed = encode(&Envelope::seal(
        &full(MAX_HELD_DEVICES),
        &[&common::key(11), &common::key(12)],
    ));
    assert!(signed.len() < 12 * 1024, "{} bytes", signed.len());
    let err = decode::<WaveControl>(&encode(&full(MAX_HELD_DEVICES + 1))).unwrap_err();
    assert!(matches!(err, DecodeError::Limit { .. }), "{err:?}");
}

#[test]
fn decoder_rejects_trailing_bytes_unknown_version_and_oversize() {
    let a = common::signed_release(&common::manifest(3)).0;
    let env: Envelope = decode(&a).unwrap();
    let mut ann_bytes = env.payload.clone();
    assert!(decode::<Announcement>(&ann_bytes).is_ok());

    ann_bytes.push(0);
    assert_eq!(
        decode::<Announcement>(&ann_bytes),
        Err(DecodeError::TrailingBytes {
            kind: "announcement",
            extra: 1
        })
    );
    ann_bytes.pop();

    ann_bytes[0] = 2;
    assert_eq!(
        decode::<Announcement>(&ann_bytes),
        Err(DecodeError::UnknownVersion {
            kind: "announcement",
            version: 2
        })
    );

    let huge = vec![FORMAT_VERSION; Announcement::MAX_BYTES + 1];
    assert!(matches!(
        decode::<Announcement>(&huge),
        Err(DecodeError::Oversized { .. })
    ));
    assert_eq!(
        decode::<Announcement>(&[]),
        Err(DecodeError::Empty {
            kind: "announcement"
        })
    );
}

#[test]
fn decoder_rejects_non_canonical_varints() {
    let ann = Announcement {
        fleet: "f".into(),
        sequence: ReleaseSeq(1),
        arch: "a".into(),
        manifest_digest: Digest::of(b"m"),
        manifest_size: 5,
        release_bytes: 5,
        expires: UnixTime(9),
    };
    let bytes = encode(&ann);
    // The fleet's length prefix (1) written as an over-long varint: 0x81 0x00.
    let mut long = vec![bytes[0], 0x81, 0x00];
    long.extend_from_slice(&bytes[2..]);
    let err = decode::<Announcement>(&long).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::NonCanonical { .. } | DecodeError::Malformed { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn oversized_collections_are_refused_with_a_typed_error() {
    let mut env: Envelope = decode(&common::signed_release(&common::manifest(3)).0).unwrap();
    let sig = env.signatures[0].clone();
    env.signatures = vec![sig; 33];
    let bytes = encode(&env);
    assert!(matches!(
        decode::<Envelope>(&bytes),
        Err(DecodeError::Limit { .. })
    ));
    // A length prefix claiming 2^60 elements is refused without allocating them.
    let mut lying = vec![FORMAT_VERSION];
    lying.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]);
    assert!(decode::<Envelope>(&lying).is_err());
}
