//! The operator's HTTP routes: the token's role checked ([`authorize`]), then the audited
//! change made ([`crate::operator::apply`]).
//!
//! | route | token | what |
//! |---|---|---|
//! | `PUT /api/v1/fleets/{fleet}/pin` | operator | `{"sequence": N}` pins, `{"sequence": null}` unpins |
//! | `PUT /api/v1/devices/{id}/pin` | operator | the same for one device |
//! | `PUT /api/v1/fleets/{fleet}/rollout-policy` | operator | `{"plan": {...}}` or `{"preset": "canary" \| "all_at_once"}` |
//! | `POST /api/v1/fleets/{fleet}/rollout/{command}` | operator | `pause`, `resume`, `promote` or `abort` the fleet's current rollout |
//! | `GET /api/v1/fleets/{fleet}/audit` | — | the audit log, newest first (`limit`) |
//! | `GET /api/v1/fleets/{fleet}/views` | — | saved views |
//! | `POST /api/v1/fleets/{fleet}/views` | any | `{"name": "...", "filters": {...}}` saves (replaces) a view |
//! | `DELETE /api/v1/fleets/{fleet}/views/{name}` | any | deletes one |

#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use shoal_protocol::{DeviceId, RolloutPlan};

use super::git::basic_token;
use super::state::{Server, internal, json_error, json_ok};
use crate::app::{Role, now_s};
use crate::operator::views::{self, Filters};
use crate::operator::{Action, Audit, Change, apply};
use crate::storage::db::Fleet;

mod rollout;

const MAX_BODY: usize = 64 * 1024;

/// Checks the request's token has `role`: 401 without a valid token, 403 with a push token where
/// an operator token is needed. Returns the token's name.
pub async fn authorize(s: &Server, headers: &HeaderMap, role: Role) -> Result<String, Response> {
    let what = match role {
        Role::Operator => "an operator token is required",
        Role::Push => "a token is required",
    };
    let Some(token) = basic_token(headers) else {
        return Err(unauthorized(what));
    };
    match s.app.token_identity(&token).await {
        Ok(Some((name, have))) => {
            if role == Role::Operator && have != Role::Operator {
                Err(json_error(
                    StatusCode::FORBIDDEN,
                    "this is a push token; the action needs an operator token",
                ))
            } else {
                Ok(name)
            }
        }
        Ok(None) => Err(unauthorized("invalid token")),
        Err(e) => Err(internal(e)),
    }
}

/// 401 with a Bearer challenge (a Basic one would make browsers prompt for a password over the
/// dashboard's own requests).
fn unauthorized(message: &str) -> Response {
    let mut r = json_error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"shoal\""),
    );
    r
}

/// A handler's answer: `Err` carries the error response, so `?` ends the handler with it.
type Reply = Result<Response, Response>;

/// The operator routes.
pub fn routes() -> Router<Server> {
    Router::new()
        .route("/api/v1/fleets/{fleet}/pin", put(pin_fleet))
        .route("/api/v1/devices/{id}/pin", put(pin_device))
        .route("/api/v1/fleets/{fleet}/rollout-policy", put(set_policy))
        .route("/api/v1/fleets/{fleet}/audit", get(audit))
        .route(
            "/api/v1/fleets/{fleet}/rollout/{command}",
            axum::routing::post(rollout::command),
        )
        .route(
            "/api/v1/fleets/{fleet}/views",
            get(list_views).post(save_view),
        )
        .route(
            "/api/v1/fleets/{fleet}/views/{name}",
            axum::routing::delete(delete_view),
        )
}

fn body<T: DeserializeOwned>(b: &Bytes) -> Result<T, Response> {
    if b.len() > MAX_BODY {
        return Err(json_error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"));
    }
    serde_json::from_slice(b)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, &format!("bad JSON body: {e}")))
}

async fn fleet_or_404(s: &Server, name: &str) -> Result<Fleet, Response> {
    match s.app.db.fleet(name).await {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(json_error(
            StatusCode::NOT_FOUND,
            &format!("no fleet {name:?}"),
        )),
        Err(e) => Err(internal(e)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pin {
    sequence: Option<i64>,
}

/// Checks `sequence` is a published release of `fleet`.
async fn check_pin(s: &Server, fleet: &str, sequence: Option<i64>) -> Result<(), Response> {
    let Some(seq) = sequence else {
        return Ok(());
    };
    match crate::registry::tables::release_digest(&s.app.db, fleet, seq).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("fleet {fleet:?} has no published release {seq}"),
        )),
        Err(e) => Err(internal(e)),
    }
}

/// Applies a pin change (audited) and has the fleet's rollout act on it.
async fn done(s: &Server, change: Change, audit: Audit<'_>, ok: serde_json::Value) -> Reply {
    match apply(&s.app.db, &change, &audit).await {
        Ok(true) => {
            if let Some(rollouts) = s.app.rollouts.get()
                && let Err(e) = rollouts.pins_changed(audit.fleet).await
            {
                tracing::error!(fleet = audit.fleet, error = %e, "the rollout loop did not take the pin");
            }
            Ok(json_ok(ok))
        }
        Ok(false) => Err(json_error(StatusCode::NOT_FOUND, "nothing to change")),
        Err(e) => Err(internal(e)),
    }
}

async fn pin_fleet(
    State(s): State<Server>,
    Path(fleet): Path<String>,
    headers: HeaderMap,
    b: Bytes,
) -> Reply {
    let actor = authorize(&s, &headers, Role::Operator).await?;
    let f = fleet_or_404(&s, &fleet).await?;
    let pin: Pin = body(&b)?;
    check_pin(&s, &f.name, pin.sequence).await?;
    let audit = Audit {
        actor: &actor,
        action: Action::FleetPin,
        fleet: &f.name,
        target: f.name.clone(),
        detail: serde_json::json!({ "sequence": pin.sequence }),
    };
    let change = Change::FleetPin {
        fleet_id: f.id,
        sequence: pin.sequence,
    };
    let ok = serde_json::json!({ "fleet": f.name, "pinned_sequence": pin.sequence });
    done(&s, change, audit, ok).await
}

async fn pin_device(
    State(s): State<Server>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Bytes,
) -> Reply {
    let actor = authorize(&s, &headers, Role::Operator).await?;
    let Ok(id) = id.parse::<DeviceId>() else {
        return Err(json_error(
            StatusCode::BAD_REQUEST,
            "a device id is 64 hex characters",
        ));
    };
    let id = id.to_string();
    let device = match crate::registry::tables::device(&s.app.db, &id).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return Err(json_error(
                StatusCode::NOT_FOUND,
                &format!("no device {id}"),
            ));
        }
        Err(e) => return Err(internal(e)),
    };
    let pin: Pin = body(&b)?;
    check_pin(&s, &device.fleet, pin.sequence).await?;
    // Every pinned device may have to be named in one signed hold list.
    if pin.sequence.is_some() && device.pinned_sequence.is_none() {
        let pinned = crate::registry::tables::pinned_in_fleet(&s.app.db, &device.fleet)
            .await
            .map_err(internal)?;
        if pinned >= shoal_protocol::MAX_HELD_DEVICES as i64 {
            return Err(json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!(
                    "fleet {:?} already has {pinned} pinned devices, the most a rollout can hold; pin the fleet instead",
                    device.fleet
                ),
            ));
        }
    }
    let audit = Audit {
        actor: &actor,
        action: Action::DevicePin,
        fleet: &device.fleet,
        target: id.clone(),
        detail: serde_json::json!({ "name": device.name, "sequence": pin.sequence }),
    };
    let change = Change::DevicePin {
        device: id.clone(),
        sequence: pin.sequence,
    };
    let ok = serde_json::json!({ "device": id, "pinned_sequence": pin.sequence });
    done(&s, change, audit, ok).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Policy {
    #[serde(default)]
    plan: Option<RolloutPlan>,
    #[serde(default)]
    preset: Option<String>,
}

async fn set_policy(
    State(s): State<Server>,
    Path(fleet): Path<String>,
    headers: HeaderMap,
    b: Bytes,
) -> Reply {
    let actor = authorize(&s, &headers, Role::Operator).await?;
    let f = fleet_or_404(&s, &fleet).await?;
    let p: Policy = body(&b)?;
    let plan = match (p.plan, p.preset.as_deref()) {
        (Some(plan), None) => plan,
        (None, Some("canary")) => RolloutPlan::canary(),
        (None, Some("all_at_once")) => RolloutPlan::all_at_once(),
        _ => {
            return Err(json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "give either a plan or a preset (canary, all_at_once)",
            ));
        }
    };
    if let Err(e) = plan.check() {
        return Err(json_error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()));
    }
    let plan_json = crate::storage::db::plan_to_json(&plan);
    let audit = Audit {
        actor: &actor,
        action: Action::RolloutPolicy,
        fleet: &f.name,
        target: f.name.clone(),
        detail: plan_json.clone(),
    };
    let change = Change::Policy {
        fleet_id: f.id,
        plan,
    };
    let ok = serde_json::json!({ "fleet": f.name, "rollout_plan": plan_json });
    done(&s, change, audit, ok).await
}

async fn audit(
    State(s): State<Server>,
    Path(fleet): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    let f = fleet_or_404(&s, &fleet).await?;
    let limit = match q.get("limit").map(|l| l.parse::<i64>()) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                "limit must be 1..=1000",
            ));
        }
    };
    let entries = crate::operator::audit_log(&s.app.db, &f.name, limit)
        .await
        .map_err(internal)?;
    Ok(json_ok(
        serde_json::json!({ "fleet": f.name, "entries": entries }),
    ))
}

async fn list_views(State(s): State<Server>, Path(fleet): Path<String>) -> Reply {
    let f = fleet_or_404(&s, &fleet).await?;
    let v = views::list(&s.app.db, f.id).await.map_err(internal)?;
    Ok(json_ok(serde_json::json!({ "fleet": f.name, "views": v })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewView {
    name: String,
    #[serde(default)]
    filters: Filters,
}

async fn save_view(
    State(s): State<Server>,
    Path(fleet): Path<String>,
    headers: HeaderMap,
    b: Bytes,
) -> Reply {
    let actor = authorize(&s, &headers, Role::Push).await?;
    let f = fleet_or_404(&s, &fleet).await?;
    let mut v: NewView = body(&b)?;
    let name = v.name.trim().to_string();
    if name.is_empty() || name.len() > 80 || name.chars().any(char::is_control) {
        return Err(json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a view name is 1-80 printable characters",
        ));
    }
    if let Err(e) = v.filters.normalise() {
        return Err(json_error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()));
    }
    match views::list(&s.app.db, f.id).await {
        Ok(existing)
            if existing.len() as i64 >= views::MAX_VIEWS
                && !existing.iter().any(|e| e.name == name) =>
        {
            return Err(json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("a fleet keeps at most {} saved views", views::MAX_VIEWS),
            ));
        }
        Ok(_) => {}
        Err(e) => return Err(internal(e)),
    }
    let audit = Audit {
        actor: &actor,
        action: Action::SaveView,
        fleet: &f.name,
        target: name.clone(),
        detail: serde_json::to_value(&v.filters).unwrap_or_default(),
    };
    let ok = serde_json::json!({ "name": name, "filters": v.filters, "query": v.filters.query() });
    let change = Change::SaveView {
        fleet_id: f.id,
        name,
        filters: v.filters,
        now: now_s(),
    };
    let r = done(&s, change, audit, ok).await?;
    Ok((StatusCode::CREATED, r).into_response())
}

async fn delete_view(
    State(s): State<Server>,
    Path((fleet, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Reply {
    let actor = authorize(&s, &headers, Role::Push).await?;
    let f = fleet_or_404(&s, &fleet).await?;
    let audit = Audit {
        actor: &actor,
        action: Action::DeleteView,
        fleet: &f.name,
        target: name.clone(),
        detail: serde_json::Value::Null,
    };
    let change = Change::DeleteView {
        fleet_id: f.id,
        name: name.clone(),
    };
    done(&s, change, audit, serde_json::json!({ "deleted": name })).await
}
