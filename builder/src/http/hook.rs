//! The pre-receive hook: the push waits for the build.
//!
//! receive-pack runs `shoal-builder hook pre-receive` ([`client_main`]) in the fleet repository
//! with the pushed ref updates on stdin and the new objects in a quarantine directory. The hook
//! posts the updates and the object directories to the server ([`Request`], authenticated by the
//! per-process secret the CGI environment carried), prints the server's streamed reply line by
//! line (git shows them to the pusher as `remote:` lines while the build runs) and exits 0 only
//! if the reply ends with the accept verdict. If the pusher disconnects, the response stream is
//! dropped and the build is cancelled.
//!
//! Only `refs/heads/master` builds; other refs are accepted without a build, and the pusher is
//! told so. Deleting master is refused.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::build_log::{BuildLog, Verdict};

/// The ref that builds.
pub const BUILD_REF: &str = "refs/heads/master";
/// Starts the last line of the reply: `<marker> accept` or `<marker> reject <message>`.
pub const VERDICT_MARKER: &str = "\u{1e}shoal-verdict";
/// Most ref updates in one push.
pub const MAX_UPDATES: usize = 1000;

/// One ref update as receive-pack reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefUpdate {
    /// Old object id (zeros when created).
    pub old: String,
    /// New object id (zeros when deleted).
    pub new: String,
    /// Full ref name.
    pub name: String,
}

/// What the hook posts to the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The fleet.
    pub fleet: String,
    /// The updates.
    pub updates: Vec<RefUpdate>,
    /// Object directories to read new objects from, quarantine first.
    pub object_dirs: Vec<PathBuf>,
    /// The push (HTTP request) this hook runs for.
    #[serde(default)]
    pub push_id: Option<String>,
}

fn is_zero(id: &str) -> bool {
    id.bytes().all(|b| b == b'0')
}

/// What a push asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Build this commit of master; `notes` are told to the pusher first.
    Build {
        /// The commit.
        commit: String,
        /// Notes about other refs.
        notes: Vec<String>,
    },
    /// Accept without building.
    Accept(Vec<String>),
    /// Refuse.
    Reject(String),
}

/// Decides what to do with a push.
pub fn plan(updates: &[RefUpdate]) -> Plan {
    let mut notes = Vec::new();
    let mut build = None;
    for u in updates {
        let valid = |s: &str| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid(&u.old) || !valid(&u.new) {
            return Plan::Reject(format!("malformed update of {}", u.name));
        }
        if u.name == BUILD_REF {
            if is_zero(&u.new) {
                return Plan::Reject("deleting master is not allowed".into());
            }
            build = Some(u.new.to_ascii_lowercase());
        } else {
            let short = u.name.strip_prefix("refs/heads/").unwrap_or(&u.name);
            notes.push(format!(
                "{short}: accepted without a build (only master builds; `git push shoal {short}:master` builds it)"
            ));
        }
    }
    match build {
        Some(commit) => Plan::Build { commit, notes },
        None => Plan::Accept(notes),
    }
}

/// Follows a build log into a stream of text pieces ending with the verdict line.
pub fn follow(
    log: Arc<BuildLog>,
    guard: impl Send + 'static,
) -> impl futures_util::Stream<Item = Result<String, std::convert::Infallible>> + Send {
    futures_util::stream::unfold(
        Some((log.clone(), log.subscribe(), 0usize, guard)),
        |state| async move {
            let (log, mut rx, offset, guard) = state?;
            loop {
                let (tail, verdict) = log.read_from(offset);
                if !tail.is_empty() {
                    let next = offset + tail.len();
                    return Some((Ok(tail), Some((log, rx, next, guard))));
                }
                if let Some(v) = verdict {
                    drop(guard);
                    return Some((Ok(verdict_line(&v)), None));
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        },
    )
}

/// The final line for a verdict.
pub fn verdict_line(v: &Verdict) -> String {
    match v {
        Verdict::Accept => format!("{VERDICT_MARKER} accept\n"),
        Verdict::Reject(m) => format!("{VERDICT_MARKER} reject {}\n", m.replace('\n', " ")),
    }
}

/// `shoal-builder hook pre-receive`: returns the process exit code.
pub fn client_main() -> i32 {
    let (Ok(url), Ok(secret), Ok(fleet)) = (
        std::env::var(crate::http::git::HOOK_URL_ENV),
        std::env::var(crate::http::git::HOOK_SECRET_ENV),
        std::env::var(crate::http::git::HOOK_FLEET_ENV),
    ) else {
        println!(
            "shoal: push through the builder's HTTP endpoint (http://HOST:PORT/git/FLEET.git)"
        );
        return 1;
    };
    let mut updates = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut parts = line.split_whitespace();
        if let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) {
            updates.push(RefUpdate {
                old: old.into(),
                new: new.into(),
                name: name.into(),
            });
        }
        if updates.len() > MAX_UPDATES {
            println!("shoal: more than {MAX_UPDATES} ref updates in one push");
            return 1;
        }
    }
    let mut object_dirs = Vec::new();
    if let Ok(d) = std::env::var("GIT_OBJECT_DIRECTORY") {
        object_dirs.push(PathBuf::from(d));
    }
    if let Ok(alts) = std::env::var("GIT_ALTERNATE_OBJECT_DIRECTORIES") {
        object_dirs.extend(alts.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    if let Ok(cwd) = std::env::current_dir() {
        object_dirs.push(cwd.join("objects"));
    }
    let req = Request {
        fleet,
        updates,
        object_dirs,
        push_id: std::env::var(crate::http::git::PUSH_ID_ENV).ok(),
    };
    match post(&url, &secret, &req) {
        Ok(code) => code,
        Err(e) => {
            println!("shoal: the builder could not be reached: {e}");
            1
        }
    }
}

/// Why the hook could not reach the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostError {
    /// The hook URL is not an `http://` URL.
    #[error("unsupported hook URL {0}")]
    Url(String),
    /// Sending the request or receiving the answer's head.
    #[error(transparent)]
    Request(#[from] reqwest::Error),
    /// Reading the streamed answer, or writing it out.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn post(url: &str, secret: &str, req: &Request) -> Result<i32, PostError> {
    let endpoint = url::Url::parse(url)
        .ok()
        .filter(|u| u.scheme() == "http")
        .and_then(|u| u.join("/internal/hooks/pre-receive").ok())
        .ok_or_else(|| PostError::Url(url.to_string()))?;
    // reqwest is built without a rustls provider: ring, as everywhere in Shoal.
    shoal_node::daemon::quic::install_crypto_provider();
    // No timeout: the answer streams for as long as the build runs.
    let resp = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(None)
        .build()?
        .post(endpoint)
        .header("X-Shoal-Hook-Secret", secret)
        .json(req)
        .send()?;
    let status = resp.status();
    let mut r = BufReader::new(resp);
    if status != reqwest::StatusCode::OK {
        let mut rest = String::new();
        let _ = r.take(4096).read_to_string(&mut rest);
        println!(
            "shoal: the builder refused the push: {} {}",
            status,
            rest.trim()
        );
        return Ok(1);
    }
    let out = std::io::stdout();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            println!("shoal: the builder closed the connection before the build finished");
            return Ok(1);
        }
        if let Some(v) = line.strip_prefix(VERDICT_MARKER) {
            let v = v.trim();
            if v == "accept" {
                return Ok(0);
            }
            let msg = v.strip_prefix("reject").unwrap_or(v).trim();
            println!("shoal: push rejected: {msg}");
            return Ok(1);
        }
        let mut o = out.lock();
        o.write_all(line.as_bytes())?;
        o.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(name: &str, new: &str) -> RefUpdate {
        RefUpdate {
            old: "0".repeat(40),
            new: new.repeat(40),
            name: name.into(),
        }
    }

    #[test]
    fn only_master_builds() {
        assert!(matches!(
            plan(&[u("refs/heads/master", "a")]),
            Plan::Build { .. }
        ));
        let p = plan(&[u("refs/heads/dev", "b")]);
        assert!(matches!(&p, Plan::Accept(n) if n[0].contains("without a build")));
        assert!(matches!(
            plan(&[u("refs/heads/master", "0")]),
            Plan::Reject(_)
        ));
        assert!(matches!(
            plan(&[u("refs/heads/master", "x")]),
            Plan::Reject(_)
        ));
    }

    /// A one-request server answering `reply` after reading the request; returns its URL and
    /// the request it read.
    fn serve_once(reply: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            r.read_exact(&mut body).unwrap();
            r.get_mut().write_all(reply.as_bytes()).unwrap();
            head + &String::from_utf8(body).unwrap()
        });
        (url, server)
    }

    #[test]
    fn the_hook_posts_and_follows_the_verdict() {
        let req = Request {
            fleet: "demo".into(),
            updates: vec![u("refs/heads/master", "a")],
            object_dirs: vec![],
            push_id: None,
        };
        let ok =
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbuilding\n\u{1e}shoal-verdict accept\n";
        let (url, server) = serve_once(ok);
        assert_eq!(post(&url, "s3cret", &req).unwrap(), 0);
        let sent = server.join().unwrap();
        assert!(
            sent.starts_with("POST /internal/hooks/pre-receive "),
            "{sent}"
        );
        assert!(
            sent.to_ascii_lowercase()
                .contains("x-shoal-hook-secret: s3cret")
        );
        assert!(sent.contains("\"refs/heads/master\""));

        let rejected =
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n\u{1e}shoal-verdict reject no\n";
        let (url, server) = serve_once(rejected);
        assert_eq!(post(&url, "s3cret", &req).unwrap(), 1);
        server.join().unwrap();

        let cut = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbuilding\n";
        let (url, server) = serve_once(cut);
        assert_eq!(post(&url, "s3cret", &req).unwrap(), 1);
        server.join().unwrap();

        let refused = "HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\nbad secret";
        let (url, server) = serve_once(refused);
        assert_eq!(post(&url, "wrong", &req).unwrap(), 1);
        server.join().unwrap();

        assert!(matches!(
            post("https://x.invalid", "s", &req),
            Err(PostError::Url(_))
        ));
    }
}
