//! What every HTTP handler shares: the [`Server`] state, JSON replies and errors, and the
//! lookups that answer 404.

// Handlers return ready error responses; they are built once per failed request.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use crate::app::App;
use crate::storage::db::Release;

/// Largest JSON request body (a hook call lists up to 1,000 ref updates).
const MAX_JSON_BODY: usize = 1024 * 1024;

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

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    if body.len() > MAX_JSON_BODY {
        return Err(json_error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"));
    }
    serde_json::from_slice(body)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, &format!("bad JSON body: {e}")))
}

fn release_id(id: &str) -> Result<i64, Response> {
    id.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        json_error(
            StatusCode::BAD_REQUEST,
            "a release id is a positive integer",
        )
    })
}

/// The release `id` names, or the error reply (400, 404).
pub(crate) async fn release_or_404(s: &Server, id: &str) -> Result<Release, Response> {
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
