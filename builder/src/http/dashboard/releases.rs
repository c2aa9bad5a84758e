//! The releases list (filters, saved views) and the release page.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::{Tab, badge, duration, error_page, esc, page, time};
use crate::http::state::Server;
use crate::operator::views::{self, Filters, url_encode};
use crate::storage::db::Release;

/// Most releases on one page.
const PAGE: i64 = 200;

const STATUSES: [&str; 6] = [
    "running",
    "success",
    "failed",
    "error",
    "cancelled",
    "interrupted",
];

fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

pub(super) async fn list(
    State(s): State<Server>,
    Path(fleet): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let f = match s.app.db.fleet(&fleet).await {
        Ok(Some(f)) => f,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("no fleet {fleet:?}")),
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let saved = match views::list(&s.app.db, f.id).await {
        Ok(v) => v,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut filters = Filters {
        status: q.get("status").cloned(),
        commit: q.get("commit").cloned(),
        from: q.get("from").cloned(),
        to: q.get("to").cloned(),
        q: q.get("q").cloned(),
    };
    let mut notice = String::new();
    let db_filter = match filters.normalise() {
        Ok(d) => d,
        Err(e) => {
            notice = format!("<p class=\"badge failed\">{}</p>", esc(&e.to_string()));
            filters = Filters::default();
            crate::storage::db::ReleaseFilter::default()
        }
    };
    let releases = match s.app.db.releases(f.id, &db_filter, PAGE).await {
        Ok(r) => r,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let counts = crate::registry::device_counts(&s.app.db, f.id)
        .await
        .unwrap_or_default();
    let fleet_url = url_encode(&f.name);
    let current_query = filters.query();

    let mut b = format!("<h1>Releases</h1>{notice}");
    // Filters.
    let opt = |v: &str, label: &str, sel: bool| {
        format!(
            "<option value=\"{}\"{}>{}</option>",
            esc(v),
            if sel { " selected" } else { "" },
            esc(label)
        )
    };
    let mut status_opts = opt("", "any", filters.status.is_none());
    for st in STATUSES {
        status_opts.push_str(&opt(st, st, filters.status.as_deref() == Some(st)));
    }
    let val = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
    b.push_str(&format!(
        r#"<form class="filters" method="get" id="filters">
<label>Status<select name="status">{status_opts}</select></label>
<label>From<input type="date" name="from" value="{from}"></label>
<label>To<input type="date" name="to" value="{to}"></label>
<label>Commit<input name="commit" value="{commit}" placeholder="hex prefix" size="12"></label>
<label>Search<input name="q" value="{text}" placeholder="ref, service, error…" size="22"></label>
<button class="primary" type="submit">Apply</button>
<a class="button" href="/ui/fleets/{fleet_url}/releases">Clear</a>
</form>"#,
        from = val(&filters.from),
        to = val(&filters.to),
        commit = val(&filters.commit),
        text = val(&filters.q),
    ));
    // Saved views.
    b.push_str("<div class=\"views\" id=\"views\"><span class=\"muted\">Saved views:</span>");
    if saved.is_empty() {
        b.push_str("<span class=\"muted\">none yet</span>");
    }
    for v in &saved {
        let query = v.filters.query();
        let active = if query == current_query && !query.is_empty() {
            " active"
        } else {
            ""
        };
        b.push_str(&format!(
            "<a class=\"view{active}\" data-view=\"{name}\" href=\"/ui/fleets/{fleet_url}/releases?{query}\">{name}</a><button type=\"button\" title=\"Delete view\" data-delete-view=\"/api/v1/fleets/{fleet_url}/views/{name_url}\">×</button>",
            name = esc(&v.name),
            query = esc(&query),
            name_url = esc(&url_encode(&v.name)),
        ));
    }
    b.push_str(&format!(
        r#"<form id="save-view" data-api="/api/v1/fleets/{fleet_url}/views"><input name="name" placeholder="name this view" size="16"> <button type="submit">Save view</button></form></div>"#
    ));
    // The table.
    if releases.is_empty() {
        b.push_str("<div class=\"empty table-wrap\">No releases match.</div>");
    } else {
        b.push_str("<div class=\"table-wrap\"><table id=\"releases\"><thead><tr><th>Release</th><th>Status</th><th>Commit</th><th>Created</th><th>Completed</th><th>Duration</th><th>Devices</th></tr></thead><tbody>");
        for r in &releases {
            let devices = r
                .sequence
                .and_then(|q| counts.get(&q))
                .copied()
                .unwrap_or(0);
            b.push_str(&format!(
                "<tr data-release=\"{id}\"><td><a href=\"/ui/releases/{id}\">{label}</a></td><td>{status}</td><td class=\"mono\" title=\"{commit}\">{short}</td><td>{created}</td><td>{completed}</td><td>{dur}</td><td>{devices}</td></tr>",
                id = r.id,
                label = release_label(r),
                status = badge(&r.status),
                commit = esc(&r.commit),
                short = esc(short(&r.commit)),
                created = time(Some(r.created)),
                completed = time(r.completed),
                dur = r.duration_ms.map(duration).unwrap_or_default(),
            ));
        }
        b.push_str("</tbody></table></div>");
    }
    page("Releases", Some(&f.name), Tab::Releases, &b)
}

fn release_label(r: &Release) -> String {
    match r.sequence {
        Some(seq) if r.status == "success" => format!("#{seq}"),
        _ => format!("build {}", r.id),
    }
}

pub(super) async fn show(State(s): State<Server>, Path(id): Path<String>) -> Response {
    let r = match crate::http::state::release_or_404(&s, &id).await {
        Ok(r) => r,
        Err(resp) => {
            let status = resp.status();
            return error_page(status, &format!("no release {id:?}"));
        }
    };
    let progress = match crate::registry::progress(&s.app, &r).await {
        Ok(p) => p,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let live = s
        .app
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&r.id)
        .cloned();
    let log = match &live {
        Some(l) => l.text(),
        None => s
            .app
            .db
            .release_log(r.id)
            .await
            .ok()
            .flatten()
            .unwrap_or_default(),
    };
    let fleet_url = url_encode(&r.fleet);
    let mut b = format!(
        "<h1>Release {} {}</h1>",
        esc(&release_label(&r)),
        badge(&r.status)
    );
    let stat = |k: &str, v: String| {
        format!("<div class=\"stat\"><div class=\"k\">{k}</div><div class=\"v\">{v}</div></div>")
    };
    b.push_str("<div class=\"grid\">");
    b.push_str(&stat(
        "Commit",
        format!("<span class=\"mono\">{}</span>", esc(&r.commit)),
    ));
    b.push_str(&stat("Ref", esc(&r.git_ref)));
    b.push_str(&stat("Created", time(Some(r.created))));
    b.push_str(&stat("Completed", time(r.completed)));
    b.push_str(&stat(
        "Duration",
        r.duration_ms.map(duration).unwrap_or_else(|| "—".into()),
    ));
    b.push_str(&stat(
        "Size",
        format!(
            "{} images, {} new",
            human_bytes(r.image_bytes),
            human_bytes(r.new_bytes)
        ),
    ));
    b.push_str("</div>");
    if let Some(e) = &r.error {
        b.push_str(&format!(
            "<p><span class=\"badge failed\">error</span> {}</p>",
            esc(e)
        ));
    }

    // Rollout.
    if r.status == "success" {
        b.push_str("<h2>Rollout</h2>");
        let live = super::live::of_release(&s, &r.fleet, r.sequence);
        if let Some(p) = &live {
            b.push_str(&super::live::controls(&r.fleet, p));
        }
        b.push_str(&format!(
            "<div class=\"actions\"><button type=\"button\" data-method=\"PUT\" data-action=\"/api/v1/fleets/{fleet_url}/pin\" data-body=\"{body}\">Pin fleet to this release</button></div>",
            body = esc(&serde_json::json!({ "sequence": r.sequence }).to_string())
        ));
        b.push_str("<div class=\"table-wrap\"><table id=\"waves\"><thead><tr><th>Wave</th><th>Share</th><th>Devices</th><th>Reported</th><th>Healthy</th><th>Failed</th><th>Progress</th></tr></thead><tbody>");
        for w in &progress.waves {
            let pct = |n: u32| {
                if w.devices == 0 {
                    0.0
                } else {
                    100.0 * f64::from(n) / f64::from(w.devices)
                }
            };
            let in_flight = w.reported.saturating_sub(w.healthy + w.failed);
            let label = format!(
                "{}{}",
                if w.wave == 0 {
                    "0 (canary)".to_string()
                } else {
                    w.wave.to_string()
                },
                if super::live::wave_open(live.as_ref(), w.wave) {
                    " <span class=\"badge running\">open</span>"
                } else {
                    ""
                }
            );
            b.push_str(&format!(
                "<tr data-wave=\"{n}\"><td>{label}</td><td>{p}%</td><td>{d}</td><td>{rep}</td><td>{h}</td><td>{fl}</td><td><div class=\"bar\"><div class=\"h\" style=\"width:{hp:.1}%\"></div><div class=\"f\" style=\"width:{fp:.1}%\"></div><div class=\"r\" style=\"width:{rp:.1}%\"></div></div></td></tr>",
                n = w.wave,
                p = w.percent,
                d = w.devices,
                rep = w.reported,
                h = w.healthy,
                fl = w.failed,
                hp = pct(w.healthy),
                fp = pct(w.failed),
                rp = pct(in_flight),
            ));
        }
        b.push_str("</tbody></table></div>");
        b.push_str("<h2>Devices</h2>");
        if progress.devices.is_empty() {
            b.push_str(
                "<div class=\"empty table-wrap\">No devices registered in this fleet.</div>",
            );
        } else {
            b.push_str("<div class=\"table-wrap\"><table id=\"release-devices\"><thead><tr><th>Device</th><th>Site</th><th>Wave</th><th>State</th><th>Reported</th><th>Detail</th></tr></thead><tbody>");
            for d in &progress.devices {
                b.push_str(&format!(
                    "<tr><td>{name} <span class=\"muted mono\">{id}</span></td><td>{site}</td><td>{wave}</td><td>{state}</td><td>{at}</td><td>{detail}</td></tr>",
                    name = esc(&d.device.name),
                    id = esc(d.device.device.get(..8).unwrap_or("")),
                    site = esc(&d.device.site),
                    wave = d.wave,
                    state = d
                        .device
                        .state
                        .as_deref()
                        .map(badge)
                        .unwrap_or_else(|| "<span class=\"muted\">not reported</span>".into()),
                    at = time(d.device.report_time),
                    detail = esc(d.device.detail.as_deref().unwrap_or("")),
                ));
            }
            b.push_str("</tbody></table></div>");
        }
    }

    // Services and compose file.
    if let Some(services) = r.services.as_array().filter(|a| !a.is_empty()) {
        b.push_str("<h2>Services</h2><div class=\"table-wrap\"><table><tbody>");
        for svc in services {
            let name = svc.get("name").and_then(|n| n.as_str()).unwrap_or("?");
            b.push_str(&format!(
                "<tr><td><b>{}</b></td><td class=\"mono\">{}</td></tr>",
                esc(name),
                esc(&svc.to_string())
            ));
        }
        b.push_str("</tbody></table></div>");
    }
    if let Some(compose) = &r.compose {
        b.push_str(&format!(
            "<h2>Compose file</h2><pre id=\"compose\">{}</pre>",
            esc(compose)
        ));
    }
    b.push_str(&format!(
        "<h2>Build log{}</h2><pre id=\"log\" data-live=\"{}\" data-src=\"/api/v1/releases/{}/logs\">{}</pre>",
        if live.is_some() { " <span class=\"badge running\">live</span>" } else { "" },
        live.is_some(),
        r.id,
        esc(&log)
    ));
    page(&release_label(&r), Some(&r.fleet), Tab::Releases, &b)
}

/// `1.5 MiB`.
pub(super) fn human_bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    if n < 1024.0 {
        format!("{n} B")
    } else if n < 1024.0 * 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else if n < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else {
        format!("{:.2} GiB", n / 1024.0 / 1024.0 / 1024.0)
    }
}
