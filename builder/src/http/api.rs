//! The JSON API of fleets and releases, and the read-only store: the routes of [`routes`] (see
//! the table in [`crate::http`]).

// Handlers return ready error responses; they are built once per failed request.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use shoal_protocol::{Digest, RolloutPlan};

use super::git::authenticate;
use super::hook;
use super::state::{Server, internal, json_error, json_ok, parse_json, release_or_404};
use crate::app::AppError;
use crate::storage::blobs::Kind;
use crate::storage::db::{ReleaseFilter, Status};

/// Most releases in one list.
const MAX_LIST: i64 = 500;

/// The API's routes.
pub fn routes() -> Router<Server> {
    Router::new()
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
        Err(AppError::Db(crate::storage::db::DbError::FleetExists(n))) => {
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
    match origins.bootstrap(&f).await {
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
