//! The device registry's HTTP routes ([`crate::registry`]).
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/devices/register` | register with a provisioning key (JSON [`crate::registry::Registration`]) |
//! | `POST /api/v1/devices/{id}/status` | a signed status report (encoded envelope bytes) |
//! | `GET /api/v1/devices/{id}` | one device |
//! | `GET /api/v1/fleets/{fleet}/devices` | a fleet's devices |
//! | `GET /api/v1/releases/{id}/devices` | a release's rollout progress: waves and devices |

#![allow(clippy::result_large_err)]

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use shoal_protocol::DeviceId;

use super::state::{Server, internal, json_error, json_ok, release_or_404};
use crate::app::now_s;
use crate::registry::{self, RegisterError, Registration, ReportError};

/// Largest registration or report body.
const MAX_BODY: usize = 16 * 1024;

/// The registry's routes.
pub fn routes() -> Router<Server> {
    Router::new()
        .route("/api/v1/devices/register", post(register))
        .route("/api/v1/devices/{id}/status", post(status))
        .route("/api/v1/devices/{id}", get(device))
        .route("/api/v1/fleets/{fleet}/devices", get(fleet_devices))
        .route("/api/v1/releases/{id}/devices", get(release_devices))
}

async fn register(State(s): State<Server>, body: Bytes) -> Response {
    if body.len() > MAX_BODY {
        return json_error(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    }
    let r: Registration = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("bad JSON body: {e}")),
    };
    match s.registry.register(&s.app, &r, now_s()).await {
        Ok(reg) => (StatusCode::CREATED, json_ok(reg)).into_response(),
        Err(e) => {
            let code = match &e {
                RegisterError::UnknownKey => StatusCode::UNAUTHORIZED,
                RegisterError::BadSignature => StatusCode::FORBIDDEN,
                RegisterError::InvalidLabel(_) | RegisterError::WrongArch { .. } => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                RegisterError::NameTaken(_) | RegisterError::OtherFleet => StatusCode::CONFLICT,
                RegisterError::Db(_) => return internal(e),
            };
            json_error(code, &e.to_string())
        }
    }
}

fn parse_device(id: &str) -> Result<DeviceId, Response> {
    id.parse::<DeviceId>().map_err(|_| {
        json_error(
            StatusCode::BAD_REQUEST,
            "a device id is its public key, 64 hex characters",
        )
    })
}

async fn status(State(s): State<Server>, Path(id): Path<String>, body: Bytes) -> Response {
    let named = match parse_device(&id) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if body.len() > MAX_BODY {
        return json_error(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    }
    match s
        .registry
        .ingest(&s.app, &body, Some(&named), now_s())
        .await
    {
        Ok(a) => json_ok(a),
        Err(e) => {
            let code = match &e {
                ReportError::Invalid(_) => StatusCode::BAD_REQUEST,
                ReportError::Unregistered(_)
                | ReportError::WrongDevice { .. }
                | ReportError::WrongFleet { .. } => StatusCode::FORBIDDEN,
                ReportError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
                ReportError::UnknownRelease { .. }
                | ReportError::DigestMismatch(_)
                | ReportError::Stale { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                ReportError::Replay => StatusCode::CONFLICT,
                ReportError::Db(_) => return internal(e),
            };
            json_error(code, &e.to_string())
        }
    }
}

async fn device(State(s): State<Server>, Path(id): Path<String>) -> Response {
    let id = match parse_device(&id) {
        Ok(d) => d.to_string(),
        Err(r) => return r,
    };
    match registry::tables::device(&s.app.db, &id).await {
        Ok(Some(d)) => json_ok(d),
        Ok(None) => json_error(StatusCode::NOT_FOUND, &format!("no device {id}")),
        Err(e) => internal(e),
    }
}

async fn fleet_devices(State(s): State<Server>, Path(fleet): Path<String>) -> Response {
    let f = match s.app.db.fleet(&fleet).await {
        Ok(Some(f)) => f,
        Ok(None) => return json_error(StatusCode::NOT_FOUND, &format!("no fleet {fleet:?}")),
        Err(e) => return internal(e),
    };
    match registry::devices_of_fleet(&s.app.db, f.id).await {
        Ok(d) => json_ok(serde_json::json!({ "fleet": fleet, "devices": d })),
        Err(e) => internal(e),
    }
}

async fn release_devices(State(s): State<Server>, Path(id): Path<String>) -> Response {
    let r = match release_or_404(&s, &id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match registry::progress(&s.app, &r).await {
        Ok(p) => json_ok(serde_json::json!({
            "release": r.id,
            "sequence": r.sequence,
            "waves": p.waves,
            "devices": p.devices,
        })),
        Err(e) => internal(e),
    }
}
