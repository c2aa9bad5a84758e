//! The fleet pages: devices, settings (rollout policy, pin), audit log.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::{Tab, badge, error_page, esc, page, time};
use crate::http::state::Server;
use crate::operator::views::url_encode;
use crate::storage::db::{Fleet, ReleaseFilter};

async fn fleet(s: &Server, name: &str) -> Result<Fleet, Response> {
    match s.app.db.fleet(name).await {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(error_page(
            StatusCode::NOT_FOUND,
            &format!("no fleet {name:?}"),
        )),
        Err(e) => Err(error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
        )),
    }
}

fn seq(s: Option<i64>) -> String {
    s.map(|s| format!("#{s}"))
        .unwrap_or_else(|| "<span class=\"muted\">—</span>".into())
}

/// `<option>`s of the fleet's published releases, newest first, `selected` chosen.
async fn release_options(s: &Server, f: &Fleet, selected: Option<i64>) -> String {
    let published = s
        .app
        .db
        .releases(
            f.id,
            &ReleaseFilter {
                status: Some("success".into()),
                ..ReleaseFilter::default()
            },
            100,
        )
        .await
        .unwrap_or_default();
    let mut out = String::from("<option value=\"\">not pinned</option>");
    for r in published {
        let Some(q) = r.sequence else { continue };
        out.push_str(&format!(
            "<option value=\"{q}\"{}>#{q} · {}</option>",
            if selected == Some(q) { " selected" } else { "" },
            esc(r.commit.get(..10).unwrap_or(&r.commit))
        ));
    }
    out
}

pub(super) async fn devices(State(s): State<Server>, Path(name): Path<String>) -> Response {
    let f = match fleet(&s, &name).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let devices = match crate::registry::devices_of_fleet(&s.app.db, f.id).await {
        Ok(d) => d,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut b = format!(
        "<h1>Devices <span class=\"muted\">{}</span></h1>",
        devices.len()
    );
    if devices.is_empty() {
        b.push_str(&format!(
            "<div class=\"empty table-wrap\">No devices yet. Make a provisioning key with <code>shoal-builder fleet provisioning-key {}</code> and register devices with it.</div>",
            esc(&f.name)
        ));
        return page("Devices", Some(&f.name), Tab::Devices, &b);
    }
    b.push_str("<div class=\"table-wrap\"><table id=\"devices\"><thead><tr><th>Device</th><th>Site</th><th>Type</th><th>State</th><th>Current</th><th>Target</th><th>Last seen</th><th>Pin</th></tr></thead><tbody>");
    for d in &devices {
        let options = release_options(&s, &f, d.pinned_sequence).await;
        b.push_str(&format!(
            "<tr data-device=\"{id}\"><td><b>{name}</b><br><span class=\"muted mono\" title=\"{id}\">{short}</span></td><td>{site}</td><td>{ty}<br><span class=\"muted\">{arch}</span></td><td>{state}<br><span class=\"muted\">{detail}</span></td><td>{cur}</td><td>{target}</td><td>{seen}</td><td><form data-pin=\"/api/v1/devices/{id}/pin\"><select name=\"sequence\">{options}</select> <button type=\"submit\">Set</button></form></td></tr>",
            id = esc(&d.id),
            name = esc(&d.name),
            short = esc(d.id.get(..8).unwrap_or("")),
            site = esc(&d.site),
            ty = esc(&d.device_type),
            arch = esc(&d.arch),
            state = d
                .state
                .as_deref()
                .map(|st| format!("{} on {}", badge(st), seq(d.report_sequence)))
                .unwrap_or_else(|| "<span class=\"muted\">no report yet</span>".into()),
            detail = esc(&d.detail),
            cur = seq(d.current_sequence),
            target = seq(d.target_sequence),
            seen = time(d.last_seen),
        ));
    }
    b.push_str("</tbody></table></div>");
    page("Devices", Some(&f.name), Tab::Devices, &b)
}

pub(super) async fn settings(State(s): State<Server>, Path(name): Path<String>) -> Response {
    let f = match fleet(&s, &name).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let pin = crate::operator::fleet_pin(&s.app.db, f.id)
        .await
        .ok()
        .flatten();
    let fleet_url = url_encode(&f.name);
    let plan = f.plan();
    let mut b = format!(
        "<h1>Settings</h1><div class=\"grid\"><div class=\"stat\"><div class=\"k\">Architecture</div><div class=\"v\">{}</div></div><div class=\"stat\"><div class=\"k\">Device type</div><div class=\"v\">{}</div></div><div class=\"stat\"><div class=\"k\">Pinned release</div><div class=\"v\">{}</div></div></div>",
        esc(&f.arch),
        esc(&f.device_type),
        seq(pin)
    );
    b.push_str("<h2>Release pin</h2><div class=\"panel\"><p class=\"muted\">While the fleet is pinned, new pushes still build, publish and stage on the devices, but their waves stay shut until the pin is removed; pinning a release older than the one rolling out rolls the fleet forward to its content as a new release. A pinned device (Devices page) is held out of every release of other content. Needs an operator token.</p>");
    b.push_str(&format!(
        "<form data-pin=\"/api/v1/fleets/{fleet_url}/pin\"><select name=\"sequence\">{}</select> <button class=\"primary\" type=\"submit\">Save pin</button></form></div>",
        release_options(&s, &f, pin).await
    ));
    b.push_str("<h2>Rollout policy</h2><div class=\"table-wrap\"><table id=\"policy-waves\"><thead><tr><th>Wave</th><th>Share</th><th>Min sample</th><th>Success ≥</th><th>Pause at errors ≥</th><th>Bake time</th></tr></thead><tbody>");
    for (i, w) in plan.waves.iter().enumerate() {
        b.push_str(&format!(
            "<tr><td>{i}</td><td>{}%</td><td>{}</td><td>{}%</td><td>{}%</td><td>{} s</td></tr>",
            w.percent, w.min_sample, w.success_threshold_pct, w.error_threshold_pct, w.bake_time_s
        ));
    }
    b.push_str(&format!(
        "</tbody></table></div><p class=\"muted\">A wave that has not succeeded {} s after it opened pauses the rollout. The policy is signed into each release, so a change applies from the next push.</p>",
        plan.progress_deadline_s
    ));
    let json = serde_json::to_string_pretty(&plan).unwrap_or_default();
    b.push_str(&format!(
        "<form id=\"policy\" class=\"panel\" data-api=\"/api/v1/fleets/{fleet_url}/rollout-policy\"><textarea name=\"plan\" spellcheck=\"false\">{}</textarea><div class=\"actions\"><button class=\"primary\" type=\"submit\">Save policy</button><button type=\"button\" data-method=\"PUT\" data-action=\"/api/v1/fleets/{fleet_url}/rollout-policy\" data-body=\"{canary}\">Reset to canary</button><button type=\"button\" data-method=\"PUT\" data-action=\"/api/v1/fleets/{fleet_url}/rollout-policy\" data-body=\"{all}\">All at once</button></div></form>",
        esc(&json),
        canary = esc("{\"preset\":\"canary\"}"),
        all = esc("{\"preset\":\"all_at_once\"}"),
    ));
    page("Settings", Some(&f.name), Tab::Settings, &b)
}

pub(super) async fn audit(State(s): State<Server>, Path(name): Path<String>) -> Response {
    let f = match fleet(&s, &name).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let entries = match crate::operator::audit_log(&s.app.db, &f.name, 500).await {
        Ok(e) => e,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut b = String::from("<h1>Audit log</h1>");
    if entries.is_empty() {
        b.push_str("<div class=\"empty table-wrap\">No operator actions yet.</div>");
    } else {
        b.push_str("<div class=\"table-wrap\"><table id=\"audit\"><thead><tr><th>Time</th><th>Who</th><th>Action</th><th>Target</th><th>Detail</th></tr></thead><tbody>");
        for e in &entries {
            b.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td></tr>",
                time(Some(e.time)),
                esc(&e.actor),
                esc(&e.action),
                esc(e.target.as_deref().unwrap_or("")),
                esc(&e.detail)
            ));
        }
        b.push_str("</tbody></table></div>");
    }
    page("Audit", Some(&f.name), Tab::Audit, &b)
}
