//! Where the fleet is, from the builder: after registering, a daemon configured with `[enroll]`
//! fetches the origin's libp2p addresses from the registration answer's `bootstrap_url`
//! (`/api/v1/fleets/FLEET/bootstrap`) and dials them, so a device needs no `bootstrap` in its
//! configuration (any configured there are dialed as well).
//!
//! [`run`] asks until it gets at least one address, on the registration's retry schedule
//! (the builder may not run yet, or its origin node may be starting: 5xx), and stops for good on
//! a definite refusal (any other 4xx) or a `bootstrap_url` that is not a path on the builder,
//! logging the typed [`BootstrapError`]. The answer (JSON, at most [`super::MAX_RESPONSE`]
//! bytes, fetched from the configured builder URL and nowhere else) is trusted for addresses
//! only: its `multiaddrs`, at most [`MAX_ADDRS`], each ending in `/p2p/<peer id>`. The trust
//! root it also carries is ignored: the node keeps the one it was configured with, and every
//! peer it reaches this way is checked against it like any other.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::Retryable;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use serde::Deserialize;
use shoal_protocol::DeviceId;

use super::{EnrollError, HttpUrl};

/// Most addresses taken from one answer (the rest are ignored).
pub const MAX_ADDRS: usize = 32;
/// The longest `bootstrap_url` accepted.
pub const MAX_PATH: usize = 1024;

/// Why the origin's addresses could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The registration answer's `bootstrap_url` is not a path on the builder (not retried).
    #[error("bootstrap URL {0:?} is not a path on the builder")]
    BadPath(String),
    /// No HTTP client could be made (not retried).
    #[error("no HTTP client: {0}")]
    Client(String),
    /// No connection, or it broke or timed out (retried).
    #[error("cannot reach the builder at {addr}: {message}")]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// The builder refused (a 4xx other than 408 and 429; not retried).
    #[error("the builder refused the bootstrap request (HTTP {status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The builder's message.
        message: String,
    },
    /// The builder could not answer now, e.g. its origin node is not running (5xx, 408, 429;
    /// retried).
    #[error("the builder cannot tell where the origin is now (HTTP {status}): {message}")]
    Unavailable {
        /// The HTTP status.
        status: u16,
        /// The builder's message.
        message: String,
    },
    /// The answer is not HTTP or not bootstrap information (retried).
    #[error("malformed bootstrap answer: {0}")]
    BadResponse(String),
    /// The answer lists no usable address (retried: the origin may not listen yet).
    #[error("the bootstrap answer has no usable address{0}")]
    NoAddresses(String),
}

impl BootstrapError {
    /// Whether retrying cannot help.
    pub fn is_definite(&self) -> bool {
        matches!(
            self,
            BootstrapError::BadPath(_) | BootstrapError::Client(_) | BootstrapError::Refused { .. }
        )
    }
}

impl From<EnrollError> for BootstrapError {
    /// The HTTP exchange's failures ([`super::get`] reports them as [`EnrollError`]s).
    fn from(e: EnrollError) -> BootstrapError {
        match e {
            EnrollError::BadUrl { message, .. } => BootstrapError::Client(message),
            EnrollError::Unreachable { addr, message } => {
                BootstrapError::Unreachable { addr, message }
            }
            EnrollError::Refused { status, message } => BootstrapError::Refused { status, message },
            EnrollError::Unavailable { status, message } => {
                BootstrapError::Unavailable { status, message }
            }
            other => BootstrapError::BadResponse(other.to_string()),
        }
    }
}

/// The part of the builder's answer that is used.
#[derive(Deserialize)]
struct Answer {
    /// The origin's libp2p addresses.
    multiaddrs: Vec<String>,
}

/// Checks that `path` (a registration answer's `bootstrap_url`) is an absolute path with no
/// query, fragment, `.` or `..` segment, so the request stays on the configured builder.
pub fn check_path(path: &str) -> Result<(), BootstrapError> {
    let ok = path.len() <= MAX_PATH
        && path.starts_with('/')
        && !path.starts_with("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'\\' | b'%'))
        && !path.split('/').any(|s| s == "." || s == "..");
    if ok {
        Ok(())
    } else {
        Err(BootstrapError::BadPath(path.chars().take(200).collect()))
    }
}

/// The usable addresses of an answer: those that parse and end in `/p2p/<peer id>`, at most
/// [`MAX_ADDRS`], duplicates dropped.
pub fn parse_addrs(answer: &[u8]) -> Result<Vec<Multiaddr>, BootstrapError> {
    let answer: Answer = serde_json::from_slice(answer)
        .map_err(|e| BootstrapError::BadResponse(format!("not bootstrap information: {e}")))?;
    let listed = answer.multiaddrs.len();
    let mut addrs: Vec<Multiaddr> = Vec::new();
    for text in answer.multiaddrs {
        let Ok(addr) = text.parse::<Multiaddr>() else {
            tracing::warn!(addr = %text.chars().take(200).collect::<String>(), "bootstrap answer: not a multiaddr; ignored");
            continue;
        };
        if !matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
            tracing::warn!(%addr, "bootstrap answer: no /p2p/<peer id>; ignored");
            continue;
        }
        if addrs.contains(&addr) {
            continue;
        }
        if addrs.len() == MAX_ADDRS {
            tracing::warn!(
                listed,
                kept = MAX_ADDRS,
                "bootstrap answer: too many addresses; the rest ignored"
            );
            break;
        }
        addrs.push(addr);
    }
    if addrs.is_empty() {
        return Err(BootstrapError::NoAddresses(if listed == 0 {
            String::new()
        } else {
            format!(" ({listed} listed, none usable)")
        }));
    }
    Ok(addrs)
}

/// Fetches the origin's addresses once from `path` on the builder at `url`.
pub async fn fetch(url: &HttpUrl, path: &str) -> Result<Vec<Multiaddr>, BootstrapError> {
    check_path(path)?;
    let (status, answer) = super::get(url, path).await?;
    if (200..300).contains(&status) {
        return parse_addrs(&answer);
    }
    let message = super::error_message(&answer);
    if super::is_refusal(status) {
        Err(BootstrapError::Refused { status, message })
    } else {
        Err(BootstrapError::Unavailable { status, message })
    }
}

/// Fetches until it gets addresses (retrying with the registration's backoff, jittered by
/// `device`) or meets a definite error; the addresses, or `None` when it gave up.
pub(crate) async fn run(url: &HttpUrl, path: &str, device: &DeviceId) -> Option<Vec<Multiaddr>> {
    let attempts = AtomicU32::new(0);
    let attempt = || async {
        attempts.fetch_add(1, Ordering::Relaxed);
        fetch(url, path).await
    };
    let result = attempt
        .retry(super::retry_delays(device))
        .sleep(tokio::time::sleep)
        .when(|e: &BootstrapError| !e.is_definite())
        .notify(|e: &BootstrapError, wait: Duration| {
            let attempts = attempts.load(Ordering::Relaxed);
            tracing::warn!(error = %e, attempts, retry_in_ms = wait.as_millis() as u64, "cannot learn the origin's addresses from the builder; retrying");
        })
        .await;
    match result {
        Ok(addrs) => {
            tracing::info!(
                builder = %url.authority(),
                addrs = ?addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "the origin's addresses from the builder; dialing"
            );
            Some(addrs)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot learn the origin's addresses from the builder; not retrying (set `bootstrap` in the configuration)");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "12D3KooWLRPJAA5o6Z6mBcqbhgT6W1fQnyZZCSVHwq1aW4p4gVPn";

    #[test]
    fn only_plain_paths_on_the_builder_are_fetched() {
        assert_eq!(check_path("/api/v1/fleets/demo/bootstrap"), Ok(()));
        for bad in [
            "",
            "api/v1/x",
            "//evil.example/x",
            "http://evil.example/x",
            "/a/../b",
            "/a/./b",
            "/a?b",
            "/a#b",
            "/a b",
            "/a\\b",
            "/a%2e%2e/b",
            "/a\nb",
        ] {
            let e = check_path(bad).unwrap_err();
            assert!(matches!(e, BootstrapError::BadPath(_)), "{bad:?}: {e}");
            assert!(e.is_definite());
        }
        assert!(check_path(&format!("/{}", "a".repeat(MAX_PATH))).is_err());
    }

    #[test]
    fn only_addresses_are_taken_and_bad_ones_are_skipped() {
        let good = format!("/ip4/10.0.0.1/udp/7481/quic-v1/p2p/{PEER}");
        let answer = serde_json::json!({
            "fleet": "demo",
            "origin_peer_id": PEER,
            "trust_root_hex": "00ff",
            "multiaddrs": [
                good,
                "not an address",
                "/ip4/10.0.0.2/udp/7481/quic-v1",
                good,
                format!("/ip6/::1/udp/7481/quic-v1/p2p/{PEER}"),
            ],
        });
        let addrs = parse_addrs(answer.to_string().as_bytes()).unwrap();
        assert_eq!(
            addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            vec![
                good.clone(),
                format!("/ip6/::1/udp/7481/quic-v1/p2p/{PEER}")
            ]
        );

        let many: Vec<String> = (0..MAX_ADDRS + 10)
            .map(|i| format!("/ip4/10.0.0.1/udp/{}/quic-v1/p2p/{PEER}", 1000 + i))
            .collect();
        let answer = serde_json::json!({ "multiaddrs": many });
        assert_eq!(
            parse_addrs(answer.to_string().as_bytes()).unwrap().len(),
            MAX_ADDRS
        );
    }

    #[test]
    fn answers_without_usable_addresses_are_typed_and_retried() {
        for (answer, none) in [
            (&br#"{"multiaddrs":[]}"#[..], true),
            (br#"{"multiaddrs":["/ip4/1.2.3.4/tcp/1"]}"#, true),
            (br#"{"fleet":"demo"}"#, false),
            (br#"{"multiaddrs":"x"}"#, false),
            (b"<html>", false),
        ] {
            let e = parse_addrs(answer).unwrap_err();
            let want = if none {
                matches!(e, BootstrapError::NoAddresses(_))
            } else {
                matches!(e, BootstrapError::BadResponse(_))
            };
            assert!(want, "{}: {e}", String::from_utf8_lossy(answer));
            assert!(!e.is_definite());
        }
    }

    /// A server answering each request on `l` with the next of `answers`; the requests.
    fn serve(
        l: tokio::net::TcpListener,
        answers: Vec<Vec<u8>>,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tokio::spawn(async move {
            let mut requests = Vec::new();
            for answer in answers {
                let (mut s, _) = l.accept().await.unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "request cut short");
                    req.extend_from_slice(&buf[..n]);
                }
                requests.push(String::from_utf8_lossy(&req).to_string());
                s.write_all(&answer).await.unwrap();
                let _ = s.shutdown().await;
            }
            requests
        })
    }

    fn http(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn the_builder_is_asked_again_until_the_origin_runs() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let addr = format!("/ip4/127.0.0.1/udp/7481/quic-v1/p2p/{PEER}");
        let server = serve(
            l,
            vec![
                http(
                    "503 Service Unavailable",
                    r#"{"error":"no origin nodes run"}"#,
                ),
                http(
                    "200 OK",
                    &serde_json::json!({ "multiaddrs": [addr] }).to_string(),
                ),
            ],
        );
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}/prefix")).unwrap();
        let device = DeviceId([0; 32]);
        let got = tokio::time::timeout(
            Duration::from_secs(30),
            run(&url, "/api/v1/fleets/demo/bootstrap", &device),
        )
        .await
        .expect("addresses after one retry");
        assert_eq!(got, Some(vec![addr.parse().unwrap()]));
        let requests = server.await.unwrap();
        assert_eq!(requests.len(), 2);
        for r in requests {
            assert!(
                r.starts_with("GET /prefix/api/v1/fleets/demo/bootstrap HTTP/1.1\r\n"),
                "{r}"
            );
        }
    }

    #[tokio::test]
    async fn a_refusal_or_a_foreign_path_is_final() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let _server = serve(
            l,
            vec![http("404 Not Found", r#"{"error":"no fleet \"demo\""}"#)],
        );
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let e = fetch(&url, "/api/v1/fleets/demo/bootstrap")
            .await
            .unwrap_err();
        assert_eq!(
            e,
            BootstrapError::Refused {
                status: 404,
                message: "no fleet \"demo\"".into()
            }
        );
        assert!(e.is_definite());
        let device = DeviceId([0; 32]);
        // Never leaves the configured builder, and gives up at once.
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            run(&url, "//evil.example/bootstrap", &device),
        )
        .await
        .unwrap();
        assert_eq!(got, None);
    }
}
