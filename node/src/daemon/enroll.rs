//! Enrollment: the daemon registers itself with the builder's device registry using the fleet's
//! provisioning key (`shoal-builder fleet provisioning-key FLEET` prints one).
//!
//! At start, a daemon configured with an [`Enrollment`] (`[enroll]` in the configuration file,
//! [`super::Launcher::enroll`] when embedded) sends a [`Registration`] signed by its device key,
//! with its name, site, architecture and device type, to `POST /api/v1/devices/register`. It
//! retries in the background with exponential backoff ([`INITIAL_BACKOFF`] doubling up to
//! [`MAX_BACKOFF`]) while the builder cannot be reached or answers 5xx, 408 or 429, and stops
//! for good on a definite refusal (any other 4xx: an unknown provisioning key, a taken name, a
//! wrong architecture), logging the typed [`EnrollError`]. Registering again on every start is
//! harmless: the builder updates the device's labels.
//!
//! The node has no HTTP client library: [`post`] is a minimal HTTP/1.1 client over a tokio
//! `TcpStream` for `http://` URLs (one request per connection, `Connection: close`, bounded
//! answer). `https://` URLs are refused with [`EnrollError::Https`]; put the builder behind
//! plain HTTP on the device network or a local TLS-terminating proxy.

use std::time::Duration;

use serde::Deserialize;
use shoal_protocol::registration::{Registered, Registration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// The first retry delay.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// The longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long one registration request may take (connect, send, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read.
const MAX_RESPONSE: usize = 256 * 1024;
/// The registry's route.
pub const REGISTER_PATH: &str = "/api/v1/devices/register";

/// Where and how a daemon registers.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    /// The builder's base URL (`http://HOST:PORT`, optionally with a path prefix).
    pub builder_url: String,
    /// The fleet's provisioning key.
    pub provisioning_key: String,
    /// The device's name, unique in the fleet (default `device-<first 8 hex digits of its id>`).
    #[serde(default)]
    pub name: Option<String>,
    /// The device type (default `generic-<arch>`).
    #[serde(default)]
    pub device_type: Option<String>,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The provisioning key is a secret: never in logs.
        f.debug_struct("Enrollment")
            .field("builder_url", &self.builder_url)
            .field("name", &self.name)
            .field("device_type", &self.device_type)
            .finish_non_exhaustive()
    }
}

impl Enrollment {
    /// Registers with the builder at `builder_url` using `provisioning_key`.
    pub fn new(builder_url: impl Into<String>, provisioning_key: impl Into<String>) -> Enrollment {
        Enrollment {
            builder_url: builder_url.into(),
            provisioning_key: provisioning_key.into(),
            name: None,
            device_type: None,
        }
    }
    /// The device's name in the fleet.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// The device type.
    pub fn device_type(mut self, t: impl Into<String>) -> Self {
        self.device_type = Some(t.into());
        self
    }
}

/// Why a registration did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The builder URL is `https://` (the node's client speaks plain HTTP only).
    #[error(
        "builder URL {0:?}: https:// is not supported by the node; use an http:// URL (the registration is signed by the device key; only the provisioning key travels in clear)"
    )]
    Https(String),
    /// The builder URL cannot be used.
    #[error("builder URL {url:?}: {message}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// No connection, or it broke or timed out (retried).
    #[error("cannot reach the builder at {addr}: {message}")]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// The builder refused the registration (a 4xx other than 408 and 429; not retried).
    #[error("the builder refused the registration (HTTP {status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The builder's message.
        message: String,
    },
    /// The builder could not answer now (5xx, 408, 429; retried).
    #[error("the builder could not register the device now (HTTP {status}): {message}")]
    Unavailable {
        /// The HTTP status.
        status: u16,
        /// The builder's message.
        message: String,
    },
    /// The answer is not HTTP or not the registry's (retried).
    #[error("malformed answer from the builder: {0}")]
    BadResponse(String),
    /// The builder registered the device in another fleet than the node's trust root names.
    #[error(
        "the builder registered the device in fleet {registered:?}, the node runs fleet {node:?}"
    )]
    WrongFleet {
        /// The fleet the builder named.
        registered: String,
        /// The node's fleet.
        node: String,
    },
}

impl EnrollError {
    /// Whether retrying cannot help (the daemon stops trying).
    pub fn is_definite(&self) -> bool {
        matches!(
            self,
            EnrollError::Https(_)
                | EnrollError::BadUrl { .. }
                | EnrollError::Refused { .. }
                | EnrollError::WrongFleet { .. }
        )
    }
}

/// Where enrollment stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnrollState {
    /// Not registered yet; still trying (`last_error`: why the last attempt failed).
    Pending {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last_error: Option<EnrollError>,
    },
    /// Registered.
    Enrolled {
        /// The fleet the builder registered the device in.
        fleet: String,
        /// The release the builder says the device should run.
        target_sequence: Option<i64>,
    },
    /// Refused for good; the daemon runs on without registering.
    Refused(EnrollError),
}

impl EnrollState {
    /// Whether enrollment is over (registered or refused).
    pub fn is_final(&self) -> bool {
        !matches!(self, EnrollState::Pending { .. })
    }
}

/// A parsed `http://` builder URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (default 80).
    pub port: u16,
    /// The path prefix, without a trailing `/` (often empty).
    pub prefix: String,
}

impl HttpUrl {
    /// Parses `http://HOST[:PORT][/PREFIX]`.
    pub fn parse(url: &str) -> Result<HttpUrl, EnrollError> {
        let bad = |message: &str| EnrollError::BadUrl {
            url: url.to_string(),
            message: message.to_string(),
        };
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(EnrollError::Https(url.to_string()));
        }
        if !lower.starts_with("http://") {
            return Err(bad("must start with http://"));
        }
        let rest = &url["http://".len()..];
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) {
            return Err(bad("no query or fragment allowed"));
        }
        if authority.contains('@') {
            return Err(bad("no user information allowed"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(|| bad("unclosed '['"))?;
            let after = &v6[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("junk after the IPv6 address")),
            };
            (&v6[..end], port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty()
            || (host.contains(':') && !authority.starts_with('['))
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        {
            return Err(bad("no valid host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port must be 1-65535"))?,
            None => 80,
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("the path has spaces or control characters"));
        }
        Ok(HttpUrl {
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Sends `body` (JSON) with `POST` to `path` under `url`; returns the status and the body.
pub async fn post(url: &HttpUrl, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), EnrollError> {
    let addr = url.authority();
    let unreachable = |message: String| EnrollError::Unreachable {
        addr: addr.clone(),
        message,
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let head = format!(
            "POST {}{path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: shoal-node/{}\r\n\
             Content-Type: application/json\r\nAccept: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            url.prefix,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        stream
            .write_all(body)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if answer.len() > MAX_RESPONSE {
            return Err(EnrollError::BadResponse(format!(
                "more than {MAX_RESPONSE} bytes"
            )));
        }
        parse_response(&answer)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(unreachable(format!(
                "no answer within {} s",
                REQUEST_TIMEOUT.as_secs()
            )))
        })
}

/// Parses the builder's whole answer ([`crate::wire::http::parse_answer`]).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), EnrollError> {
    crate::wire::http::parse_answer(raw).map_err(|e| EnrollError::BadResponse(e.to_string()))
}

/// Sends one registration; the builder's answer or why there is none.
pub async fn register(url: &HttpUrl, r: &Registration) -> Result<Registered, EnrollError> {
    let body = serde_json::to_vec(r).map_err(|e| EnrollError::BadResponse(e.to_string()))?;
    let (status, answer) = post(url, REGISTER_PATH, &body).await?;
    if (200..300).contains(&status) {
        return serde_json::from_slice::<Registered>(&answer)
            .map_err(|e| EnrollError::BadResponse(format!("not a registration answer: {e}")));
    }
    let message = serde_json::from_slice::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&answer);
            text.chars().take(200).collect()
        });
    if (400..500).contains(&status) && status != 408 && status != 429 {
        Err(EnrollError::Refused { status, message })
    } else {
        Err(EnrollError::Unavailable { status, message })
    }
}

/// Registers until it succeeds or is refused for good, publishing the state on `state`.
/// `fleet`: the node's fleet (the builder must register the device in it).
pub(super) async fn run(
    url: HttpUrl,
    registration: Registration,
    fleet: String,
    state: watch::Sender<EnrollState>,
) {
    // Devices started together should not retry in lockstep: up to a quarter of the delay more,
    // from the device id.
    let jitter = u32::from(registration.device.0[0]);
    let mut delay = INITIAL_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts = attempts.saturating_add(1);
        let result = register(&url, &registration).await.and_then(|reg| {
            if reg.fleet == fleet {
                Ok(reg)
            } else {
                Err(EnrollError::WrongFleet {
                    registered: reg.fleet,
                    node: fleet.clone(),
                })
            }
        });
        match result {
            Ok(reg) => {
                tracing::info!(
                    builder = %url.authority(),
                    name = %registration.name,
                    fleet = %reg.fleet,
                    attempts,
                    "registered with the builder"
                );
                state.send_replace(EnrollState::Enrolled {
                    fleet: reg.fleet,
                    target_sequence: reg.target_sequence,
                });
                return;
            }
            Err(e) if e.is_definite() => {
                tracing::error!(error = %e, name = %registration.name, "enrollment refused; not retrying");
                state.send_replace(EnrollState::Refused(e));
                return;
            }
            Err(e) => {
                let wait = delay + delay * jitter / 1024;
                tracing::warn!(error = %e, attempts, retry_in_ms = wait.as_millis() as u64, "enrollment failed; retrying");
                state.send_replace(EnrollState::Pending {
                    attempts,
                    last_error: Some(e),
                });
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_https_or_junk_is_refused() {
        let u = HttpUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("127.0.0.1", 8080, "")
        );
        let u = HttpUrl::parse("HTTP://builder.lan/shoal/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("builder.lan", 80, "/shoal")
        );
        let u = HttpUrl::parse("http://[::1]:9/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert_eq!(u.authority(), "[::1]:9");
        assert!(matches!(
            HttpUrl::parse("https://b:1"),
            Err(EnrollError::Https(_))
        ));
        for bad in [
            "ftp://x",
            "builder:80",
            "http://",
            "http://:80",
            "http://h:0",
            "http://h:99999",
            "http://u:p@h",
            "http://h/a b",
            "http://h/?q",
            "http://[::1",
            "http://a:b:80",
            "http://h\r\nX: y",
        ] {
            let e = HttpUrl::parse(bad).unwrap_err();
            assert!(matches!(e, EnrollError::BadUrl { .. }), "{bad}: {e}");
            assert!(e.is_definite());
        }
    }

    #[test]
    fn a_malformed_answer_is_a_bad_response() {
        let (s, b) =
            parse_response(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_slice()), (201, &b"{}"[..]));
        let e = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab\r\n",
        )
        .unwrap_err();
        assert!(
            matches!(&e, EnrollError::BadResponse(m) if m == "bad chunked body"),
            "{e}"
        );
    }

    /// Answers `answer` to the first request on `l` (read whole first); returns the request.
    fn answer_once(
        l: tokio::net::TcpListener,
        answer: Vec<u8>,
    ) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "request cut short");
                req.extend_from_slice(&buf[..n]);
                if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&req[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    if req.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            s.write_all(&answer).await.unwrap();
            req
        })
    }

    /// A one-shot server answering `answer`; its URL (with a path prefix) and the request.
    async fn serve_once(answer: &[u8]) -> (HttpUrl, tokio::task::JoinHandle<Vec<u8>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = answer_once(l, answer.to_vec());
        (
            HttpUrl::parse(&format!("http://127.0.0.1:{port}/p")).unwrap(),
            task,
        )
    }

    fn registration() -> Registration {
        shoal_protocol::registration::sign_registration(
            &shoal_protocol::SigningKey::from_bytes(&[5; 32]),
            "shoalprov_k",
            "dev",
            "",
            "amd64",
            "generic-amd64",
        )
    }

    #[tokio::test]
    async fn refusals_are_typed_and_only_4xx_is_definite() {
        let (url, server) = serve_once(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 36\r\n\r\n{\"error\":\"unknown provisioning key\"}",
        )
        .await;
        let e = register(&url, &registration()).await.unwrap_err();
        let req = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(
            req.starts_with("POST /p/api/v1/devices/register HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(
            req.contains("\"provisioning_key\":\"shoalprov_k\""),
            "{req}"
        );
        assert_eq!(
            e,
            EnrollError::Refused {
                status: 401,
                message: "unknown provisioning key".into()
            }
        );
        assert!(e.is_definite());
        for answer in [
            &b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 429 Slow\r\nContent-Length: 0\r\n\r\n",
        ] {
            let (url, _server) = serve_once(answer).await;
            let e = register(&url, &registration()).await.unwrap_err();
            assert!(matches!(e, EnrollError::Unavailable { .. }), "{e}");
            assert!(!e.is_definite());
        }
        let (url, _server) = serve_once(b"HTTP/1.1 201 Created\r\n\r\n{\"nope\":1}").await;
        let e = register(&url, &registration()).await.unwrap_err();
        assert!(matches!(e, EnrollError::BadResponse(_)), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_builder_is_retried_until_it_answers() {
        // Reserve a port, then close it: connections are refused until the server binds it.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let (tx, mut rx) = watch::channel(EnrollState::Pending {
            attempts: 0,
            last_error: None,
        });
        let task = tokio::spawn(run(url, registration(), "demo".into(), tx));
        rx.wait_for(|s| matches!(s, EnrollState::Pending { attempts: 1.., .. }))
            .await
            .unwrap();
        let failed = rx.borrow().clone();
        let EnrollState::Pending {
            last_error: Some(EnrollError::Unreachable { .. }),
            ..
        } = failed
        else {
            panic!("{failed:?}");
        };
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let body = br#"{"device":"d","fleet":"demo","trust_root":"","trust_root_url":"/t","bootstrap_url":"/b","target_sequence":3}"#;
        let mut answer = format!(
            "HTTP/1.1 201 Created\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(body);
        let _server = answer_once(l, answer);
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("registered after the builder came up")
            .unwrap();
        assert_eq!(
            *rx.borrow(),
            EnrollState::Enrolled {
                fleet: "demo".into(),
                target_sequence: Some(3)
            }
        );
    }
}
