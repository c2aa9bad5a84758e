//! A push over HTTP: the git smart HTTP route (`/git/FLEET.git/...`, token required), handed to
//! `git http-backend` ([`super::git`]), and the pre-receive hook's callback
//! (`POST /internal/hooks/pre-receive`, secret required), which starts the build
//! ([`crate::pipeline::start`]) and streams its log back to the hook ([`super::hook`]).

// Handlers return ready error responses; they are built once per failed request.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use tokio::sync::watch;

use super::git::{self, authenticate};
use super::hook;
use super::state::{Server, internal, json_error, parse_json};

/// The push routes.
pub fn routes() -> Router<Server> {
    Router::new()
        .route("/git/{*path}", any(git_request))
        .route("/internal/hooks/pre-receive", post(pre_receive))
}

/// Most pushes in progress at once.
const MAX_PUSHES: usize = 64;

/// Removes a push's cancel switch when its response ends; flips it if the client went away.
struct PushEntry {
    id: String,
    pushes: Arc<Mutex<HashMap<String, Arc<watch::Sender<bool>>>>>,
    done: bool,
}

impl git::PushGuard for PushEntry {
    fn finished(&mut self) {
        self.done = true;
    }
}

impl Drop for PushEntry {
    fn drop(&mut self) {
        let entry = self
            .pushes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        if let (Some(tx), false) = (entry, self.done) {
            let _ = tx.send(true);
        }
    }
}

async fn git_request(
    State(s): State<Server>,
    Path(path): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let user = match authenticate(&s, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some((repo, rest)) = path.split_once('/') else {
        return json_error(StatusCode::NOT_FOUND, "expected /git/FLEET.git/...");
    };
    let Some(fleet) = repo.strip_suffix(".git") else {
        return json_error(StatusCode::NOT_FOUND, "expected /git/FLEET.git/...");
    };
    if !matches!(
        rest,
        "info/refs" | "git-receive-pack" | "git-upload-pack" | "HEAD"
    ) {
        return json_error(StatusCode::NOT_FOUND, "only git smart HTTP is served");
    }
    match s.app.db.fleet(fleet).await {
        Ok(Some(_)) => {}
        Ok(None) => return json_error(StatusCode::NOT_FOUND, &format!("no fleet {fleet:?}")),
        Err(e) => return internal(e),
    }
    let project_root = s.app.root.join("repos");
    let push_id = {
        use rand::Rng;
        let mut b = [0u8; 16];
        rand::rng().fill_bytes(&mut b);
        hex::encode(b)
    };
    {
        let mut pushes = s.pushes.lock().unwrap_or_else(|p| p.into_inner());
        if pushes.len() >= MAX_PUSHES {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many pushes in progress",
            );
        }
        pushes.insert(push_id.clone(), Arc::new(watch::channel(false).0));
    }
    let entry = PushEntry {
        id: push_id.clone(),
        pushes: s.pushes.clone(),
        done: false,
    };
    git::run_backend(
        git::CgiRequest {
            project_root: &project_root,
            path_info: format!("/{fleet}.git/{rest}"),
            method: method.as_str(),
            query: uri.query().unwrap_or(""),
            headers: &headers,
            remote_user: &user,
            env: vec![
                (git::HOOK_URL_ENV, s.hook_url.clone()),
                (git::HOOK_SECRET_ENV, s.hook_secret.clone()),
                (git::HOOK_FLEET_ENV, fleet.to_string()),
                (git::PUSH_ID_ENV, push_id),
            ],
        },
        body,
        entry,
    )
    .await
}

/// Sends a short text reply ending with a verdict.
fn hook_reply(lines: &[String], verdict: crate::build_log::Verdict) -> Response {
    let mut text = String::new();
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str(&hook::verdict_line(&verdict));
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
}

async fn pre_receive(State(s): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    let secret = headers
        .get("x-shoal-hook-secret")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if secret.is_empty() || secret != s.hook_secret {
        return json_error(StatusCode::UNAUTHORIZED, "bad hook secret");
    }
    let req: hook::Request = match parse_json(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let fleet = match s.app.db.fleet(&req.fleet).await {
        Ok(Some(f)) => f,
        Ok(None) => return json_error(StatusCode::NOT_FOUND, "no such fleet"),
        Err(e) => return internal(e),
    };
    // Object directories must lie inside the fleet's repository.
    let repo = match s.app.repo_path(&fleet.name).canonicalize() {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let mut dirs = Vec::new();
    for d in &req.object_dirs {
        match d.canonicalize() {
            Ok(c) if c.starts_with(&repo) => dirs.push(c),
            Ok(_) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "object directory outside the repository",
                );
            }
            Err(_) => continue,
        }
    }
    match hook::plan(&req.updates) {
        hook::Plan::Reject(m) => hook_reply(&[], crate::build_log::Verdict::Reject(m)),
        hook::Plan::Accept(notes) => hook_reply(&notes, crate::build_log::Verdict::Accept),
        hook::Plan::Build { commit, notes } => {
            // The push's cancel switch: flipped when the pusher's HTTP request goes away, or
            // when this hook's own connection does.
            let switch = req
                .push_id
                .as_ref()
                .and_then(|id| {
                    s.pushes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(id)
                        .cloned()
                })
                .unwrap_or_else(|| Arc::new(watch::channel(false).0));
            let cancel_rx = switch.subscribe();
            let push = crate::pipeline::Push {
                fleet,
                commit,
                git_ref: hook::BUILD_REF.into(),
                object_dirs: dirs,
            };
            let (_, log) = match crate::pipeline::start(s.app.clone(), push, cancel_rx).await {
                Ok(x) => x,
                Err(e) => return internal(e),
            };
            for n in notes {
                log.line(&n);
            }
            // Dropping the stream before the verdict (the hook went away) cancels the build.
            struct CancelOnDrop(Arc<watch::Sender<bool>>);
            impl Drop for CancelOnDrop {
                fn drop(&mut self) {
                    let _ = self.0.send(true);
                }
            }
            impl std::fmt::Debug for CancelOnDrop {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("CancelOnDrop")
                }
            }
            let guard = CancelOnDrop(switch);
            let stream = hook::follow(log, guard);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain")],
                Body::from_stream(stream),
            )
                .into_response()
        }
    }
}
