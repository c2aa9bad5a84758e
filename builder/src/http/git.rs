//! git smart HTTP, delegated to git's own `http-backend` (CGI).
//!
//! `http://HOST:PORT/git/FLEET.git/...` is authenticated first (HTTP Basic; the password — or the
//! user name when the password is empty — must be a push token; otherwise 401 with
//! `WWW-Authenticate: Basic`, and git never runs). Each request gets a push id ([`PUSH_ID_ENV`]);
//! if the client goes away before the backend's response ends, the build started by that push
//! is cancelled through it (receive-pack itself would not notice: git's sideband thread ignores
//! a broken pipe, and the hook would run on). The request is then handed to
//! `git http-backend` with the CGI environment, its body streamed to the backend's stdin and the
//! backend's output streamed back as it comes, so the `remote:` lines of the pre-receive hook
//! reach the pusher live. The environment also carries the hook's callback address and secret
//! ([`HOOK_URL_ENV`], [`HOOK_SECRET_ENV`]): receive-pack passes it to the fleet repository's
//! `pre-receive` hook, which is `shoal-builder hook pre-receive` (see [`super::hook`]), written
//! by [`crate::app::configure_repo`].

use std::path::Path;
use std::process::Stdio;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::state::{Server, internal, json_error};

/// The hook's callback base URL.
pub const HOOK_URL_ENV: &str = "SHOAL_HOOK_URL";
/// The hook's callback secret.
pub const HOOK_SECRET_ENV: &str = "SHOAL_HOOK_SECRET";
/// The push (HTTP request) a hook runs for.
pub const PUSH_ID_ENV: &str = "SHOAL_PUSH_ID";
/// The fleet the push is for.
pub const HOOK_FLEET_ENV: &str = "SHOAL_FLEET";
/// Largest CGI header block accepted from the backend.
const MAX_CGI_HEADER_BYTES: usize = 64 * 1024;

/// The token in an `Authorization: Basic` (or `Bearer`) header, if any
/// ([`crate::http::auth_header::token`]).
pub fn basic_token(headers: &HeaderMap) -> Option<String> {
    crate::http::auth_header::token(headers.get("authorization")?.to_str().ok()?)
}

/// The name of the push (or operator) token the request carries, or the 401 (or 500) reply.
pub(crate) async fn authenticate(s: &Server, headers: &HeaderMap) -> Result<String, Response> {
    let Some(token) = basic_token(headers) else {
        return Err(unauthorized("a push token is required"));
    };
    match s.app.check_token(&token).await {
        Ok(Some(name)) => Ok(name),
        Ok(None) => Err(unauthorized("invalid token")),
        Err(e) => Err(internal(e)),
    }
}

/// A 401 asking for Basic credentials.
pub fn unauthorized(message: &str) -> Response {
    let mut r = json_error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("Basic realm=\"shoal\""),
    );
    r
}

/// What the backend needs for one request.
#[derive(Debug)]
pub struct CgiRequest<'a> {
    /// `GIT_PROJECT_ROOT`.
    pub project_root: &'a Path,
    /// `PATH_INFO` (`/FLEET.git/info/refs`).
    pub path_info: String,
    /// Method.
    pub method: &'a str,
    /// Query string.
    pub query: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Authenticated token name.
    pub remote_user: &'a str,
    /// Extra environment (hook callback).
    pub env: Vec<(&'static str, String)>,
}

/// Something told when a response ended: [`PushGuard::finished`] when the backend finished,
/// dropped unfinished when the client went away.
pub trait PushGuard: Send + 'static {
    /// The backend finished and its whole response was read.
    fn finished(&mut self);
}

/// Runs `git http-backend` for one request, streaming both ways. `guard` lives as long as the
/// response stream.
pub async fn run_backend(req: CgiRequest<'_>, body: Body, guard: impl PushGuard) -> Response {
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .env("GIT_PROJECT_ROOT", req.project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", &req.path_info)
        .env("REQUEST_METHOD", req.method)
        .env("QUERY_STRING", req.query)
        .env("REMOTE_USER", req.remote_user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("GATEWAY_INTERFACE", "CGI/1.1");
    if let Ok(home) = std::env::var("HOME") {
        cmd.env("HOME", home);
    }
    for (h, var) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-length", "CONTENT_LENGTH"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(v) = req.headers.get(h).and_then(|v| v.to_str().ok()) {
            cmd.env(var, v);
        }
    }
    for (k, v) in &req.env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot run git http-backend: {e}"),
            );
        }
    };
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "no pipes");
    };
    tokio::spawn(async move {
        let mut s = body.into_data_stream();
        while let Some(chunk) = s.next().await {
            let Ok(chunk) = chunk else { break };
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = stdin.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf).await;
        if !buf.is_empty() {
            tracing::warn!(
                "git http-backend: {}",
                String::from_utf8_lossy(&buf).trim_end()
            );
        }
        // Drain the rest so the backend never blocks on a full pipe.
        let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
    });

    // Read the CGI header block.
    let mut head = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let (header_end, body_start) = loop {
        if let Some(p) = find(&head, b"\r\n\r\n") {
            break (p, p + 4);
        }
        if let Some(p) = find(&head, b"\n\n") {
            break (p, p + 2);
        }
        if head.len() > MAX_CGI_HEADER_BYTES {
            return json_error(StatusCode::BAD_GATEWAY, "oversized CGI header");
        }
        match stdout.read(&mut buf).await {
            Ok(0) | Err(_) => {
                return json_error(
                    StatusCode::BAD_GATEWAY,
                    "git http-backend ended without a response",
                );
            }
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    let mut builder = Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(&head[..header_end]).lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code = v
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            builder = builder.status(code);
        } else {
            builder = builder.header(k.trim(), v);
        }
    }
    let first = Bytes::copy_from_slice(&head[body_start..]);
    let rest = futures_util::stream::unfold(
        Some((stdout, child, vec![0u8; 64 * 1024], guard)),
        |state| async move {
            let (mut stdout, mut child, mut buf, mut guard) = state?;
            match stdout.read(&mut buf).await {
                Ok(0) => {
                    let _ = child.wait().await;
                    guard.finished();
                    None
                }
                Ok(n) => Some((
                    Ok::<Bytes, std::io::Error>(Bytes::copy_from_slice(&buf[..n])),
                    Some((stdout, child, buf, guard)),
                )),
                Err(e) => Some((Err(e), None)),
            }
        },
    );
    let stream = futures_util::stream::once(async move { Ok(first) }).chain(rest);
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| json_error(StatusCode::BAD_GATEWAY, &e.to_string()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials() {
        let mut h = HeaderMap::new();
        // "git:tok" and "tok:" in base64.
        h.insert(
            "authorization",
            HeaderValue::from_static("Basic Z2l0OnRvaw=="),
        );
        assert_eq!(basic_token(&h).as_deref(), Some("tok"));
        h.insert("authorization", HeaderValue::from_static("Basic dG9rOg=="));
        assert_eq!(basic_token(&h).as_deref(), Some("tok"));
        h.insert("authorization", HeaderValue::from_static("Basic !!!"));
        assert_eq!(basic_token(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(basic_token(&h).as_deref(), Some("abc"));
    }
}
