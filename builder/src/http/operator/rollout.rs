//! Rollout commands: `POST /api/v1/fleets/{fleet}/rollout/{pause|resume|promote|abort}`
//! (operator token), carried out by the live rollout loop ([`crate::steering::Steering`]) on the
//! fleet's current rollout and recorded in the audit log once it accepted them. The answer is
//! the rollout's progress after the command ([`crate::steering::Progress`]).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

use super::{Reply, authorize, fleet_or_404};
use crate::app::Role;
use crate::http::state::{Server, internal, json_error, json_ok};
use crate::operator::{Action, Audit, Change, apply};
use crate::steering::{Command, LiveError};

pub(super) async fn command(
    State(s): State<Server>,
    Path((fleet, command)): Path<(String, String)>,
    headers: HeaderMap,
) -> Reply {
    let actor = authorize(&s, &headers, Role::Operator).await?;
    let action = match command.as_str() {
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "promote" => Action::Promote,
        "abort" => Action::Abort,
        other => {
            return Err(json_error(
                StatusCode::NOT_FOUND,
                &format!("no rollout command {other:?}: pause, resume, promote or abort"),
            ));
        }
    };
    let f = fleet_or_404(&s, &fleet).await?;
    let Some(rollouts) = s.app.rollouts.get() else {
        return Err(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no rollout loop runs",
        ));
    };
    let command = match action {
        Action::Pause => Command::Pause,
        Action::Resume => Command::Resume,
        Action::Promote => Command::Promote,
        _ => Command::Abort,
    };
    let result = rollouts.steer(&f.name, command).await;
    let progress = match result {
        Ok(p) => p,
        Err(e) => {
            let code = match &e {
                LiveError::NoRollout(_) | LiveError::NoFleet(_) => StatusCode::NOT_FOUND,
                LiveError::NotNow { .. } => StatusCode::CONFLICT,
                LiveError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return Err(json_error(code, &e.to_string()));
        }
    };
    let audit = Audit {
        actor: &actor,
        action,
        fleet: &f.name,
        target: progress.sequence.to_string(),
        detail: serde_json::json!({
            "sequence": progress.sequence,
            "state": progress.state,
            "open_wave": progress.open_wave,
        }),
    };
    apply(&s.app.db, &Change::None, &audit)
        .await
        .map_err(internal)?;
    Ok(json_ok(progress))
}
