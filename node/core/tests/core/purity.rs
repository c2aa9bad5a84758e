//! The core never reads a clock, a socket, a file or an ambient RNG: time and randomness are
//! arguments. Its dependency list enforces that (no crate that does I/O can be reached), and its
//! `clippy.toml` bans the standard library's clocks and hash maps (whose order would reach the
//! outputs), which CI's `cargo clippy -D warnings` enforces; these tests keep both in place.

const MANIFEST: &str = include_str!("../../Cargo.toml");
const CLIPPY: &str = include_str!("../../clippy.toml");
const PROTOCOL_MANIFEST: &str = include_str!("../../../../protocol/Cargo.toml");

fn dependencies(manifest: &str) -> Vec<String> {
    let doc: toml::Table = manifest.parse().expect("a Cargo.toml parses");
    let mut deps: Vec<String> = doc
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    deps.sort();
    deps
}

#[test]
fn the_core_depends_on_pure_crates_only() {
    assert_eq!(
        dependencies(MANIFEST),
        ["rustc-hash", "serde", "shoal-protocol", "thiserror"],
        "node/core/Cargo.toml: the core may depend on nothing that does I/O"
    );
    let io = [
        "tokio",
        "async-std",
        "futures",
        "libp2p",
        "quinn",
        "bollard",
        "rand",
        "getrandom",
        "tracing",
        "sqlx",
        "reqwest",
    ];
    for dep in dependencies(PROTOCOL_MANIFEST) {
        assert!(
            !io.contains(&dep.as_str()),
            "shoal-protocol depends on {dep}, which the core would then reach"
        );
    }
}

#[test]
fn no_clock_and_no_ambient_randomness_in_the_core() {
    for banned in [
        "std::time::Instant::now",
        "std::time::SystemTime::now",
        "std::collections::HashMap",
        "std::collections::HashSet",
    ] {
        assert!(
            CLIPPY.contains(&format!("path = \"{banned}\"")),
            "node/core/clippy.toml no longer bans {banned}"
        );
    }
}
