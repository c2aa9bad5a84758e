//! The builder's HTTP server: git endpoint, hook callback, JSON API and read-only store.
//!
//! | route | what |
//! |---|---|
//! | `/git/FLEET.git/...` | git smart HTTP (token required), see [`crate::githttp`] |
//! | `POST /internal/hooks/pre-receive` | the pre-receive hook's callback (secret required) |
//! | `GET /api/v1/fleets`, `POST /api/v1/fleets` | list, create (token required) |
//! | `GET /api/v1/fleets/{fleet}` | one fleet |
//! | `GET /api/v1/fleets/{fleet}/releases` | releases with their device counts, filters `status`, `commit`, `since`, `until`, `text`, `limit` |
//! | `GET /api/v1/fleets/{fleet}/trust-root` | the signed trust root (canonical bytes) |
//! | `GET /api/v1/fleets/{fleet}/rollout` | the live rollout's progress, see [`crate::live::Progress`] |
//! | `GET /api/v1/fleets/{fleet}/bootstrap` | the origin peer to join from and the trust root, see [`crate::origin::Bootstrap`] |
//! | `GET /api/v1/releases/{id}` | one release |
//! | `GET /api/v1/releases/{id}/logs` | its log; follows a running build (`follow=false` not to) |
//! | `GET /api/v1/releases/{id}/manifest` | the signed manifest envelope |
//! | `GET /api/v1/releases/{id}/announcement` | the signed announcement envelope |
//! | `GET /chunks/{digest}` | a chunk's bytes |
//!
//! The device registry's routes are in [`crate::registry`], the operator's in
//! [`crate::operator`], the dashboard's in [`crate::dashboard`].
//!
//! Every error is JSON `{"error": "..."}` with a fitting status code.

// Handlers return ready error responses; they are built once per failed request.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Deserialize;
use shoal_protocol::{Digest, RolloutPlan};
use tokio::sync::watch;

use crate::app::{App, AppError};
use crate::db::{ReleaseFilter, Status};
use crate::githttp;
use crate::hook;
use crate::store::Kind;

/// Largest JSON request body (a hook call lists up to 1,000 ref updates).
const MAX_JSON_BODY: usize = 1024 * 1024;
/// Most releases in one list.
const MAX_LIST: i64 = 500;

/// Shared server state.
#[derive(Debug, Clone)]
pub struct Server {
    /// The data directory.
    pub app: Arc<App>,
    /// The hook callback base URL.
    pub hook_url: String,
    /// The hook callback secret (random per process).
    pub hook_secret: String,
    /// Cancel switches of the pushes in progress, by push id.
    pub pushes: Arc<Mutex<HashMap<String, Arc<watch::Sender<bool>>>>>,
    /// The device registry (report rate limits).
    pub registry: Arc<crate::registry::Registry>,
}

/// Most pushes in progress at once.
const MAX_PUSHES: usize = 64;

/// Removes a push's cancel switch when its response ends; flips it if the client went away.
struct PushEntry {
    id: String,
    pushes: Arc<Mutex<HashMap<String, Arc<watch::Sender<bool>>>>>,
    done: bool,
}

impl githttp::PushGuard for PushEntry {
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

/// A JSON error response.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response()
}

pub(crate) fn json_ok(v: impl serde::Serialize) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&v).unwrap_or_else(|_| "null".into()),
    )
        .into_response()
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Response {
    json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
}

/// The router.
pub fn router(s: Server) -> Router {
    Router::new()
        .route("/git/{*path}", any(git))
        .route("/internal/hooks/pre-receive", post(pre_receive))
        .route("/api/v1/fleets", get(list_fleets).post(create_fleet))
        .route("/api/v1/fleets/{fleet}", get(get_fleet))
        .route("/api/v1/fleets/{fleet}/releases", get(list_releases))
        .route("/api/v1/fleets/{fleet}/trust-root", get(trust_root))
        .route("/api/v1/fleets/{fleet}/bootstrap", get(bootstrap))
        .route("/api/v1/fleets/{fleet}/rollout", get(rollout_progress))
        .route("/api/v1/releases/{id}", get(get_release))
        .route("/api/v1/releases/{id}/logs", get(release_logs))
        .route("/api/v1/releases/{id}/manifest", get(release_manifest))
        .route(
            "/api/v1/releases/{id}/announcement",
            get(release_announcement),
        )
        .route("/chunks/{digest}", get(chunk))
        .merge(crate::registry::routes())
        .merge(crate::operator::routes())
        .merge(crate::dashboard::routes())
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(s)
}

async fn authenticate(s: &Server, headers: &HeaderMap) -> Result<String, Response> {
    let Some(token) = githttp::basic_token(headers) else {
        return Err(githttp::unauthorized("a push token is required"));
    };
    match s.app.check_token(&token).await {
        Ok(Some(name)) => Ok(name),
        Ok(None) => Err(githttp::unauthorized("invalid token")),
        Err(e) => Err(internal(e)),
    }
}

async fn git(
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
    githttp::run_backend(
        githttp::CgiRequest {
            project_root: &project_root,
            path_info: format!("/{fleet}.git/{rest}"),
            method: method.as_str(),
            query: uri.query().unwrap_or(""),
            headers: &headers,
            remote_user: &user,
            env: vec![
                (githttp::HOOK_URL_ENV, s.hook_url.clone()),
                (githttp::HOOK_SECRET_ENV, s.hook_secret.clone()),
                (githttp::HOOK_FLEET_ENV, fleet.to_string()),
                (githttp::PUSH_ID_ENV, push_id),
            ],
        },
        body,
        entry,
    )
    .await
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    if body.len() > MAX_JSON_BODY {
        return Err(json_error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"));
    }
    serde_json::from_slice(body)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, &format!("bad JSON body: {e}")))
}

/// Sends a short text reply ending with a verdict.
fn hook_reply(lines: &[String], verdict: crate::log::Verdict) -> Response {
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
        hook::Plan::Reject(m) => hook_reply(&[], crate::log::Verdict::Reject(m)),
        hook::Plan::Accept(notes) => hook_reply(&notes, crate::log::Verdict::Accept),
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

async fn list_fleets(State(s): State<Server>) -> Response {
    match s.app.db.fleets().await {
        Ok(f) => json_ok(serde_json::json!({ "fleets": f })),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewFleet {
    name: String,
    arch: String,
    device_type: String,
    #[serde(default)]
    rollout: Option<RolloutPlan>,
}

async fn create_fleet(State(s): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authenticate(&s, &headers).await {
        return r;
    }
    let req: NewFleet = match parse_json(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let plan = req.rollout.unwrap_or_else(RolloutPlan::canary);
    if let Err(e) = plan.check() {
        return json_error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string());
    }
    match s
        .app
        .create_fleet(&req.name, &req.arch, &req.device_type, &plan)
        .await
    {
        Ok(f) => (StatusCode::CREATED, json_ok(f)).into_response(),
        Err(AppError::InvalidName { .. }) => json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid fleet, arch or device type name",
        ),
        Err(AppError::Db(crate::db::DbError::FleetExists(n))) => {
            json_error(StatusCode::CONFLICT, &format!("fleet {n:?} already exists"))
        }
        Err(e) => internal(e),
    }
}

async fn get_fleet(State(s): State<Server>, Path(fleet): Path<String>) -> Response {
    match s.app.db.fleet(&fleet).await {
        Ok(Some(f)) => json_ok(f),
        Ok(None) => json_error(StatusCode::NOT_FOUND, &format!("no fleet {fleet:?}")),
        Err(e) => internal(e),
    }
}

async fn trust_root(State(s): State<Server>, Path(fleet): Path<String>) -> Response {
    if !crate::app::valid_name(&fleet) {
        return json_error(StatusCode::NOT_FOUND, "no such fleet");
    }
    match std::fs::read(s.app.trust_root_path(&fleet)) {
        Ok(b) => octets(b),
        Err(_) => json_error(StatusCode::NOT_FOUND, &format!("no fleet {fleet:?}")),
    }
}

async fn bootstrap(State(s): State<Server>, Path(fleet): Path<String>) -> Response {
    let Some(origins) = s.app.origins.get() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "no origin nodes run");
    };
    let f = match s.app.db.fleet(&fleet).await {
        Ok(Some(f)) => f,
        Ok(None) => return json_error(StatusCode::NOT_FOUND, &format!("no fleet {fleet:?}")),
        Err(e) => return internal(e),
    };
    match origins.bootstrap(&s.app, &f).await {
        Ok(b) => json_ok(b),
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn rollout_progress(State(s): State<Server>, Path(fleet): Path<String>) -> Response {
    let Some(rollouts) = s.app.rollouts.get() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "no rollout loop runs");
    };
    match rollouts.progress(&fleet) {
        Some(p) => json_ok(p),
        None => json_error(
            StatusCode::NOT_FOUND,
            &format!("fleet {fleet:?} has no rollout"),
        ),
    }
}

fn octets(b: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        b,
    )
        .into_response()
}

async fn list_releases(
    State(s): State<Server>,
    Path(fleet): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let f = match s.app.db.fleet(&fleet).await {
        Ok(Some(f)) => f,
        Ok(None) => return json_error(StatusCode::NOT_FOUND, &format!("no fleet {fleet:?}")),
        Err(e) => return internal(e),
    };
    let mut filter = ReleaseFilter::default();
    let mut limit = 100;
    for (k, v) in &q {
        let int = |v: &str| {
            v.parse::<i64>().map_err(|_| {
                json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("{k} must be unix seconds"),
                )
            })
        };
        match k.as_str() {
            "status" => {
                if v.parse::<Status>().is_err() {
                    return json_error(StatusCode::BAD_REQUEST, &format!("unknown status {v:?}"));
                }
                filter.status = Some(v.clone());
            }
            "text" => {
                if v.len() > crate::operator::views::MAX_TEXT {
                    return json_error(StatusCode::BAD_REQUEST, "text filter too long");
                }
                filter.text = Some(v.clone());
            }
            "commit" => {
                if v.is_empty() || v.len() > 40 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return json_error(StatusCode::BAD_REQUEST, "commit must be a hex prefix");
                }
                filter.commit = Some(v.to_ascii_lowercase());
            }
            "since" => match int(v) {
                Ok(n) => filter.since = Some(n),
                Err(r) => return r,
            },
            "until" => match int(v) {
                Ok(n) => filter.until = Some(n),
                Err(r) => return r,
            },
            "limit" => match v.parse::<i64>() {
                Ok(n) if (1..=MAX_LIST).contains(&n) => limit = n,
                _ => {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        &format!("limit must be 1..={MAX_LIST}"),
                    );
                }
            },
            other => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown filter {other:?}"),
                );
            }
        }
    }
    let counts = match crate::registry::device_counts(&s.app.db, f.id).await {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    match s.app.db.releases(f.id, &filter, limit).await {
        Ok(r) => {
            let r: Vec<serde_json::Value> = r
                .into_iter()
                .map(|r| {
                    let n = r.sequence.and_then(|q| counts.get(&q)).copied();
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    v["device_count"] = serde_json::json!(n.unwrap_or(0));
                    v
                })
                .collect();
            json_ok(serde_json::json!({ "fleet": fleet, "releases": r }))
        }
        Err(e) => internal(e),
    }
}

fn release_id(id: &str) -> Result<i64, Response> {
    id.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        json_error(
            StatusCode::BAD_REQUEST,
            "a release id is a positive integer",
        )
    })
}

pub(crate) async fn release_or_404(s: &Server, id: &str) -> Result<crate::db::Release, Response> {
    let id = release_id(id)?;
    match s.app.db.release(id).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(json_error(
            StatusCode::NOT_FOUND,
            &format!("no release {id}"),
        )),
        Err(e) => Err(internal(e)),
    }
}

async fn get_release(State(s): State<Server>, Path(id): Path<String>) -> Response {
    match release_or_404(&s, &id).await {
        Ok(r) => json_ok(r),
        Err(r) => r,
    }
}

async fn release_logs(
    State(s): State<Server>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let r = match release_or_404(&s, &id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let follow = q
        .get("follow")
        .map(|v| v != "false" && v != "0")
        .unwrap_or(true);
    let live = s
        .app
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&r.id)
        .cloned();
    if let (Some(log), false) = (&live, follow) {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            log.text(),
        )
            .into_response();
    }
    if let (Some(log), true) = (live, follow) {
        let stream = futures_util::StreamExt::map(hook::follow(log, ()), |piece| {
            piece.map(|p| {
                if p.starts_with(hook::VERDICT_MARKER) {
                    String::new()
                } else {
                    p
                }
            })
        });
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    match s.app.db.release_log(r.id).await {
        Ok(Some(text)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text,
        )
            .into_response(),
        Ok(None) => json_error(StatusCode::NOT_FOUND, "no such release"),
        Err(e) => internal(e),
    }
}

async fn release_blob(s: &Server, id: &str, kind: Kind) -> Response {
    let r = match release_or_404(s, id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(digest) = r
        .manifest_digest
        .as_deref()
        .and_then(|d| d.parse::<Digest>().ok())
    else {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("release {} is {}, nothing was published", r.id, r.status),
        );
    };
    match s.app.store.get(kind, &digest) {
        Ok(Some(b)) => octets(b),
        Ok(None) => json_error(StatusCode::NOT_FOUND, "object missing from the store"),
        Err(e) => internal(e),
    }
}

async fn release_manifest(State(s): State<Server>, Path(id): Path<String>) -> Response {
    release_blob(&s, &id, Kind::Manifest).await
}

async fn release_announcement(State(s): State<Server>, Path(id): Path<String>) -> Response {
    release_blob(&s, &id, Kind::Announcement).await
}

async fn chunk(State(s): State<Server>, Path(digest): Path<String>) -> Response {
    let Ok(d) = digest.parse::<Digest>() else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "a chunk is named by 64 hex characters",
        );
    };
    match s.app.store.get(Kind::Chunk, &d) {
        Ok(Some(b)) => octets(b),
        Ok(None) => json_error(StatusCode::NOT_FOUND, "no such chunk"),
        Err(e) => internal(e),
    }
}

/// Runs the server on `listener` until the process ends.
pub async fn serve(app: Arc<App>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let local: SocketAddr = listener.local_addr()?;
    let host = if local.ip().is_unspecified() {
        if local.is_ipv6() {
            "[::1]".to_string()
        } else {
            "127.0.0.1".to_string()
        }
    } else if local.is_ipv6() {
        format!("[{}]", local.ip())
    } else {
        local.ip().to_string()
    };
    let hook_secret = {
        use rand::Rng;
        let mut b = [0u8; 24];
        rand::rng().fill_bytes(&mut b);
        hex::encode(b)
    };
    let s = Server {
        app,
        hook_url: format!("http://{host}:{}", local.port()),
        hook_secret,
        pushes: Arc::new(Mutex::new(HashMap::new())),
        registry: Arc::new(crate::registry::Registry::new()),
    };
    // Reports the origin nodes verified reach the registry too.
    if let Some(origins) = s.app.origins.get() {
        tokio::spawn(
            s.registry
                .clone()
                .follow(s.app.clone(), origins.subscribe_reports()),
        );
    }
    axum::serve(listener, router(s)).await
}
