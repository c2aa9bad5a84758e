//! The core never reads a clock or an ambient RNG: time and randomness are arguments. (A
//! workspace `clippy.toml` could ban these methods, but the daemon legitimately calls them.)

const SOURCES: &[(&str, &str)] = &[
    ("core.rs", include_str!("../../core.rs")),
    ("activate.rs", include_str!("../activate.rs")),
    ("bitfield.rs", include_str!("../bitfield.rs")),
    ("fetch.rs", include_str!("../fetch.rs")),
    ("node.rs", include_str!("../node.rs")),
    ("release.rs", include_str!("../release.rs")),
    ("rng.rs", include_str!("../rng.rs")),
    ("snapshot.rs", include_str!("../snapshot.rs")),
    ("types.rs", include_str!("../types.rs")),
    ("upload.rs", include_str!("../upload.rs")),
];

#[test]
fn no_clock_and_no_ambient_randomness_in_the_core() {
    let forbidden = [
        concat!("Instant", "::now"),
        concat!("SystemTime", "::now"),
        concat!("thread", "_rng"),
        concat!("rand", "::random"),
        concat!("std::", "net"),
        concat!("std::", "fs"),
        concat!("tok", "io"),
    ];
    for (file, text) in SOURCES {
        for f in forbidden {
            assert!(!text.contains(f), "{file} mentions {f}");
        }
    }
}

#[test]
fn outputs_in_a_defined_order_use_ordered_maps() {
    for (file, text) in SOURCES {
        assert!(
            !text.contains(concat!("Hash", "Map")),
            "{file} uses a HashMap"
        );
        assert!(
            !text.contains(concat!("Hash", "Set")),
            "{file} uses a HashSet"
        );
    }
}
