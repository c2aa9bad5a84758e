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
//! Once registered, the daemon asks the same builder where the fleet's origin is ([`bootstrap`]:
//! `GET` of the answer's `bootstrap_url`, retried on the same schedule) and dials the addresses
//! it gets, so a device configured with `[enroll]` alone joins the fleet.
//!
//! [`post`] and [`get`] are a reqwest client over rustls (the ring provider, the webpki root certificates):
//! `http://` and `https://` builder URLs ([`HttpUrl`], parsed by the `url` crate), no proxy from
//! the environment, no redirects, [`REQUEST_TIMEOUT`] for the whole exchange and an answer of at
//! most [`MAX_RESPONSE`] bytes. The retry schedule is backon's exponential backoff.

pub mod bootstrap;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use serde::Deserialize;
use shoal_protocol::registration::{Registered, Registration};
use tokio::sync::watch;

/// The first retry delay.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// The longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long one request to the builder may take (connect, send, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read.
pub const MAX_RESPONSE: usize = 256 * 1024;
/// The registry's route.
pub const REGISTER_PATH: &str = "/api/v1/devices/register";

/// Where and how a daemon registers.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    /// The builder's base URL (`http://HOST:PORT` or `https://HOST:PORT`, optionally with a
    /// path prefix).
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
            EnrollError::BadUrl { .. }
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

/// A builder URL: `http://` or `https://`, a host, an optional port, an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(url::Url);

impl HttpUrl {
    /// Parses `http[s]://HOST[:PORT][/PREFIX]` (no user information, query or fragment).
    pub fn parse(text: &str) -> Result<HttpUrl, EnrollError> {
        let bad = |message: &str| EnrollError::BadUrl {
            url: text.to_string(),
            message: message.to_string(),
        };
        // The url crate would drop or escape these; a URL from a configuration file has none.
        if text.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("the URL has spaces or control characters"));
        }
        let lower = text.to_ascii_lowercase();
        if !lower.starts_with("http://") && !lower.starts_with("https://") {
            return Err(bad("must start with http:// or https://"));
        }
        let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("no query or fragment allowed"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("no user information allowed"));
        }
        if url.host().is_none() {
            return Err(bad("no valid host"));
        }
        if url.port() == Some(0) {
            return Err(bad("the port must be 1-65535"));
        }
        Ok(HttpUrl(url))
    }

    /// The host name or address (IPv6 without brackets).
    pub fn host(&self) -> String {
        match self.0.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => String::new(),
        }
    }

    /// The port (default 80 or 443).
    pub fn port(&self) -> u16 {
        self.0.port_or_known_default().unwrap_or(80)
    }

    /// The path prefix, without a trailing `/` (often empty).
    pub fn prefix(&self) -> &str {
        self.0.path().trim_end_matches('/')
    }

    /// `host:port` (IPv6 in brackets).
    pub fn authority(&self) -> String {
        match self.0.host() {
            Some(url::Host::Ipv6(a)) => format!("[{a}]:{}", self.port()),
            _ => format!("{}:{}", self.host(), self.port()),
        }
    }

    /// The URL of `path` under the prefix.
    fn join(&self, path: &str) -> url::Url {
        let mut url = self.0.clone();
        url.set_path(&format!("{}{path}", self.prefix()));
        url
    }
}

/// The client's settings: rustls with the ring provider (installed here, as the daemon does at
/// start), [`REQUEST_TIMEOUT`] for the whole exchange, no redirects, no proxy.
fn client_builder() -> reqwest::ClientBuilder {
    super::quic::install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("shoal-node/", env!("CARGO_PKG_VERSION")))
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
}

/// Sends `body` (JSON) with `POST` to `path` under `url`; returns the status and the body.
pub async fn post(url: &HttpUrl, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), EnrollError> {
    let client = client_builder().build().map_err(|e| EnrollError::BadUrl {
        url: url.0.to_string(),
        message: format!("no HTTP client: {}", chain(&e)),
    })?;
    post_with(&client, url, path, body).await
}

/// Sends `GET` to `path` under `url`; returns the status and the body.
pub async fn get(url: &HttpUrl, path: &str) -> Result<(u16, Vec<u8>), EnrollError> {
    let client = client_builder().build().map_err(|e| EnrollError::BadUrl {
        url: url.0.to_string(),
        message: format!("no HTTP client: {}", chain(&e)),
    })?;
    let request = client
        .get(url.join(path))
        .header(reqwest::header::ACCEPT, "application/json");
    send(url, request).await
}

/// [`post`] with a given client.
async fn post_with(
    client: &reqwest::Client,
    url: &HttpUrl,
    path: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), EnrollError> {
    let request = client
        .post(url.join(path))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body.to_vec());
    send(url, request).await
}

/// Sends `request` (to `url`) and reads the answer: its status and at most [`MAX_RESPONSE`]
/// bytes of body.
async fn send(
    url: &HttpUrl,
    request: reqwest::RequestBuilder,
) -> Result<(u16, Vec<u8>), EnrollError> {
    let failed = |e: reqwest::Error| classify(url, e);
    let mut answer = request.send().await.map_err(failed)?;
    let too_long = || EnrollError::BadResponse(format!("more than {MAX_RESPONSE} bytes"));
    if answer
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE as u64)
    {
        return Err(too_long());
    }
    let status = answer.status().as_u16();
    let mut bytes = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(failed)? {
        if bytes.len() + chunk.len() > MAX_RESPONSE {
            return Err(too_long());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((status, bytes))
}

/// Sorts a client error: no connection, a broken one or a timeout is
/// [`EnrollError::Unreachable`]; an answer that is not HTTP or a malformed body is
/// [`EnrollError::BadResponse`].
fn classify(url: &HttpUrl, e: reqwest::Error) -> EnrollError {
    let mut io = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        io |= s.is::<std::io::Error>();
        source = s.source();
    }
    if e.is_connect() || e.is_timeout() || (io && !e.is_body() && !e.is_decode()) {
        let message = if e.is_timeout() {
            format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())
        } else {
            chain(&e)
        };
        EnrollError::Unreachable {
            addr: url.authority(),
            message,
        }
    } else {
        EnrollError::BadResponse(chain(&e))
    }
}

/// An error and its causes, `: `-separated (reqwest's own message names only the request).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// Sends one registration; the builder's answer or why there is none.
pub async fn register(url: &HttpUrl, r: &Registration) -> Result<Registered, EnrollError> {
    let body = serde_json::to_vec(r).map_err(|e| EnrollError::BadResponse(e.to_string()))?;
    let (status, answer) = post(url, REGISTER_PATH, &body).await?;
    if (200..300).contains(&status) {
        return serde_json::from_slice::<Registered>(&answer)
            .map_err(|e| EnrollError::BadResponse(format!("not a registration answer: {e}")));
    }
    let message = error_message(&answer);
    if is_refusal(status) {
        Err(EnrollError::Refused { status, message })
    } else {
        Err(EnrollError::Unavailable { status, message })
    }
}

/// The builder's reason in an error answer: its JSON `error`, else the start of the body.
fn error_message(answer: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(answer);
            text.chars().take(200).collect()
        })
}

/// Whether an HTTP status (not 2xx) is a definite no: a 4xx other than 408 and 429. Anything
/// else may change if asked again.
fn is_refusal(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

/// The retry delays: [`INITIAL_BACKOFF`] doubling up to [`MAX_BACKOFF`], without end. Devices
/// started together should not retry in lockstep: up to a quarter of each delay more, from the
/// device id.
fn retry_delays(device: &shoal_protocol::DeviceId) -> impl Iterator<Item = Duration> + use<> {
    let jitter = u32::from(device.0[0]);
    ExponentialBuilder::default()
        .with_min_delay(INITIAL_BACKOFF)
        .with_factor(2.0)
        .with_max_delay(MAX_BACKOFF)
        .without_max_times()
        .build()
        .map(move |delay| delay + delay * jitter / 1024)
}

/// Registers until it succeeds or is refused for good, publishing the state on `state`.
/// `fleet`: the node's fleet (the builder must register the device in it). Returns the
/// builder's answer once registered (`None`: refused for good).
pub(super) async fn run(
    url: HttpUrl,
    registration: Registration,
    fleet: String,
    state: watch::Sender<EnrollState>,
) -> Option<Registered> {
    let delays = retry_delays(&registration.device);
    let attempts = AtomicU32::new(0);
    let attempt = || async {
        attempts.fetch_add(1, Ordering::Relaxed);
        let reg = register(&url, &registration).await?;
        if reg.fleet == fleet {
            Ok(reg)
        } else {
            Err(EnrollError::WrongFleet {
                registered: reg.fleet,
                node: fleet.clone(),
            })
        }
    };
    let result = attempt
        .retry(delays)
        .sleep(tokio::time::sleep)
        .when(|e: &EnrollError| !e.is_definite())
        .notify(|e: &EnrollError, wait: Duration| {
            let attempts = attempts.load(Ordering::Relaxed);
            tracing::warn!(error = %e, attempts, retry_in_ms = wait.as_millis() as u64, "enrollment failed; retrying");
            state.send_replace(EnrollState::Pending {
                attempts,
                last_error: Some(e.clone()),
            });
        })
        .await;
    match result {
        Ok(reg) => {
            tracing::info!(
                builder = %url.authority(),
                name = %registration.name,
                fleet = %reg.fleet,
                attempts = attempts.load(Ordering::Relaxed),
                "registered with the builder"
            );
            state.send_replace(EnrollState::Enrolled {
                fleet: reg.fleet.clone(),
                target_sequence: reg.target_sequence,
            });
            Some(reg)
        }
        Err(e) => {
            tracing::error!(error = %e, name = %registration.name, "enrollment refused; not retrying");
            state.send_replace(EnrollState::Refused(e));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_junk_is_refused() {
        let u = HttpUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (u.host().as_str(), u.port(), u.prefix()),
            ("127.0.0.1", 8080, "")
        );
        let u = HttpUrl::parse("HTTP://builder.lan/shoal/").unwrap();
        assert_eq!(
            (u.host().as_str(), u.port(), u.prefix()),
            ("builder.lan", 80, "/shoal")
        );
        let u = HttpUrl::parse("http://[::1]:9/").unwrap();
        assert_eq!((u.host().as_str(), u.port()), ("::1", 9));
        assert_eq!(u.authority(), "[::1]:9");
        let u = HttpUrl::parse("https://b:1").unwrap();
        assert_eq!((u.host().as_str(), u.port()), ("b", 1));
        assert_eq!(HttpUrl::parse("https://b").unwrap().port(), 443);
        for bad in [
            "ftp://x",
            "builder:80",
            "http:builder",
            "http://",
            "http://:80",
            "http://h:0",
            "http://h:99999",
            "http://u:p@h",
            "http://h/a b",
            "http://h/?q",
            "http://h/#f",
            "http://[::1",
            "http://a:b:80",
            "http://h\r\nX: y",
        ] {
            let e = HttpUrl::parse(bad).unwrap_err();
            assert!(matches!(e, EnrollError::BadUrl { .. }), "{bad}: {e}");
            assert!(e.is_definite());
        }
    }

    #[tokio::test]
    async fn answers_are_read_with_length_chunked_or_until_close() {
        for (answer, want) in [
            (
                &b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}junk"[..],
                (201, &b"{}"[..]),
            ),
            (
                b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
                (401, b"abcde"),
            ),
            (b"HTTP/1.0 500 Oops\r\n\r\nall of it", (500, b"all of it")),
        ] {
            let (url, _server) = serve_once(answer).await;
            let (status, body) = post(&url, "/x", b"{}").await.unwrap();
            assert_eq!((status, body.as_slice()), want);
        }
    }

    #[tokio::test]
    async fn malformed_answers_are_bad_responses() {
        for bad in [
            &b"garbage"[..],
            b"HTTP/1.1 200 \xff\r\n\r\n",
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 99 Low\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            // A chunk size of usize::MAX (and MAX - 1) once overflowed a hand-written reader.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffe\r\nab\r\n",
        ] {
            let (url, _server) = serve_once(bad).await;
            let e = register(&url, &registration()).await.unwrap_err();
            assert!(
                matches!(e, EnrollError::BadResponse(_)),
                "{}: {e}",
                String::from_utf8_lossy(bad)
            );
            assert!(!e.is_definite());
        }
        let mut long = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_RESPONSE + 1
        )
        .into_bytes();
        long.resize(long.len() + MAX_RESPONSE + 1, b' ');
        let (url, _server) = serve_once(&long).await;
        let e = register(&url, &registration()).await.unwrap_err();
        assert!(
            matches!(&e, EnrollError::BadResponse(m) if m.contains("bytes")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn https_builders_are_reached_over_rustls() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key.into())
        .unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let s = tls.accept(s).await.unwrap();
            answer(
                s,
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            )
            .await
        });
        let url = HttpUrl::parse(&format!("https://localhost:{port}/p")).unwrap();
        // The builder's certificate is self-signed: trusted here besides the webpki roots.
        let client = client_builder()
            .add_root_certificate(reqwest::Certificate::from_der(cert.cert.der()).unwrap())
            .build()
            .unwrap();
        let (status, body) = post_with(&client, &url, REGISTER_PATH, b"{}")
            .await
            .unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
        let req = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(
            req.starts_with("POST /p/api/v1/devices/register HTTP/1.1\r\n"),
            "{req}"
        );
        // Without that trust, the same builder is refused (and retried: it may be renewed).
        let e = post(&url, REGISTER_PATH, b"{}").await.unwrap_err();
        assert!(!e.is_definite(), "{e}");
    }

    /// Answers `answer` to the first request on `l` (read whole first); returns the request.
    fn answer_once(
        l: tokio::net::TcpListener,
        answer: Vec<u8>,
    ) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            self::answer(s, answer).await
        })
    }

    /// Reads one whole request from `s`, writes `answer` and closes; returns the request.
    async fn answer(
        mut s: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        answer: Vec<u8>,
    ) -> Vec<u8> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
        let _ = s.shutdown().await;
        req
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
