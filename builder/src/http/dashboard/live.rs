//! The live rollout on the release page: its state, why it paused, which waves are open, and the
//! operator's buttons (pause, resume, promote, abort), which call the API with the user's token.

use super::{badge, esc};
use crate::http::state::Server;
use crate::operator::views::url_encode;
use crate::steering::Progress;

/// The live rollout of `fleet` if it is the one of release `sequence`.
pub(super) fn of_release(s: &Server, fleet: &str, sequence: Option<i64>) -> Option<Progress> {
    let p = s.app.rollouts.get()?.progress(fleet)?;
    (Some(p.sequence as i64) == sequence).then_some(p)
}

/// The state line and the buttons that apply in it.
pub(super) fn controls(fleet: &str, p: &Progress) -> String {
    let base = format!("/api/v1/fleets/{}/rollout", url_encode(fleet));
    let mut out = if p.state == "held" {
        format!(
            "<p id=\"rollout-state\">Rollout {} · <span class=\"muted\">the fleet is pinned to another release: devices stage this one, no wave opens until the pin is removed</span>",
            badge(&p.state)
        )
    } else {
        format!(
            "<p id=\"rollout-state\">Rollout {} · wave {} open",
            badge(&p.state),
            p.open_wave
        )
    };
    if !p.held_devices.is_empty() {
        out.push_str(&format!(
            " · <span class=\"muted\" id=\"held-devices\">{} pinned device(s) held out of this release</span>",
            p.held_devices.len()
        ));
    }
    if let Some(r) = &p.pause_reason {
        out.push_str(&format!(" · <span class=\"muted\">{}</span>", esc(r)));
    }
    out.push_str("</p><div class=\"actions\">");
    let button = |cmd: &str, label: &str, class: &str, confirm: Option<&str>| {
        format!(
            "<button type=\"button\" class=\"{class}\" data-action=\"{base}/{cmd}\"{}>{label}</button>",
            confirm
                .map(|c| format!(" data-confirm=\"{}\"", esc(c)))
                .unwrap_or_default()
        )
    };
    match p.state.as_str() {
        "running" => {
            out.push_str(&button("pause", "Pause", "", None));
            out.push_str(&button("promote", "Open next wave", "", None));
        }
        "paused" => {
            out.push_str(&button("resume", "Resume", "primary", None));
            out.push_str(&button("promote", "Open next wave", "", None));
        }
        _ => {}
    }
    if matches!(p.state.as_str(), "running" | "paused" | "held") {
        out.push_str(&button(
            "abort",
            "Abort and roll back",
            "danger",
            Some("Halt this release and roll back to the previous one?"),
        ));
    }
    out.push_str("</div>");
    out
}

/// Whether wave `w` is open.
pub(super) fn wave_open(p: Option<&Progress>, w: u32) -> bool {
    p.is_some_and(|p| p.waves.iter().any(|x| x.wave == w && x.open))
}
