//! # The dashboard
//!
//! Server-rendered HTML with a little plain JavaScript (`dashboard/assets/app.js`) and a small
//! hand-written stylesheet; no front-end build step. Pages read the services (the database, the
//! registry, the operator's audit log and saved views, the live rollout), never the API's
//! routes; actions (saving a view, pins, the rollout policy, pause/resume/promote/abort) call the
//! JSON API from the browser with the token the user typed into the header, kept in the
//! browser's `localStorage`, so the API's 401/403 rules hold for the dashboard too.
//!
//! Every piece of user-controlled text (commits, refs, service names, compose files, logs,
//! device names, view names, error messages) goes through [`esc`] before it reaches HTML; the
//! script only ever sets `textContent`.
//!
//! | page | what |
//! |---|---|
//! | `/` | the first fleet's releases (or the fleet list) |
//! | `/ui/fleets/{fleet}/releases` | releases, filters `status`, `commit`, `from`, `to`, `q`, saved views |
//! | `/ui/releases/{id}` | one release: summary, rollout progress by wave, devices, compose file, build log (live while building) |
//! | `/ui/fleets/{fleet}/devices` | devices with their state, current and target release, pins |
//! | `/ui/fleets/{fleet}/settings` | rollout policy and fleet pin |
//! | `/ui/fleets/{fleet}/audit` | the audit log |

mod fleet;
mod live;
mod releases;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::http::state::Server;

const CSS: &str = include_str!("dashboard/assets/app.css");
const JS: &str = include_str!("dashboard/assets/app.js");

/// The dashboard's routes.
pub fn routes() -> Router<Server> {
    Router::new()
        .route("/", get(home))
        .route("/ui", get(home))
        .route("/ui/assets/app.css", get(css))
        .route("/ui/assets/app.js", get(js))
        .route("/ui/fleets/{fleet}/releases", get(releases::list))
        .route("/ui/releases/{id}", get(releases::show))
        .route("/ui/fleets/{fleet}/devices", get(fleet::devices))
        .route("/ui/fleets/{fleet}/settings", get(fleet::settings))
        .route("/ui/fleets/{fleet}/audit", get(fleet::audit))
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1h 02m`, `3m 05s`, `850 ms`.
pub fn duration(ms: i64) -> String {
    if ms < 1000 {
        return format!("{ms} ms");
    }
    let s = ms / 1000;
    if s < 60 {
        format!("{}.{} s", s, (ms % 1000) / 100)
    } else if s < 3600 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// A time cell (UTC).
pub fn time(t: Option<i64>) -> String {
    match t {
        Some(t) => esc(&crate::operator::views::format_time(t)),
        None => "<span class=\"muted\">—</span>".into(),
    }
}

/// A status badge.
pub fn badge(status: &str) -> String {
    let class: String = status
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    format!(
        "<span class=\"badge {class}\">{}</span>",
        esc(&status.replace('_', " "))
    )
}

/// Which navigation tab is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tab {
    Releases,
    Devices,
    Settings,
    Audit,
}

/// A whole page around `body`.
pub(crate) fn page(title: &str, fleet: Option<&str>, tab: Tab, body: &str) -> Response {
    let nav = match fleet {
        Some(f) => {
            let f = crate::operator::views::url_encode(f);
            let link = |t: Tab, path: &str, label: &str| {
                let class = if t == tab { " class=\"active\"" } else { "" };
                format!("<a href=\"/ui/fleets/{f}/{path}\"{class}>{label}</a>")
            };
            format!(
                "<nav>{}{}{}{}</nav>",
                link(Tab::Releases, "releases", "Releases"),
                link(Tab::Devices, "devices", "Devices"),
                link(Tab::Settings, "settings", "Settings"),
                link(Tab::Audit, "audit", "Audit"),
            )
        }
        None => String::new(),
    };
    let fleet_label = fleet
        .map(|f| format!("<span class=\"fleet\">fleet <b>{}</b></span>", esc(f)))
        .unwrap_or_default();
    let html = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Shoal</title>
<link rel="stylesheet" href="/ui/assets/app.css">
<script src="/ui/assets/app.js" defer></script>
</head>
<body>
<header class="top">
<a class="brand" href="/">Shoal</a>
{fleet_label}
{nav}
<div class="auth"><span id="token-state" class="muted"></span><input id="token" type="password" placeholder="push or operator token" autocomplete="off"><button id="token-save" type="button">Use token</button></div>
</header>
<main>
{body}
</main>
<div id="flash" role="status"></div>
</body>
</html>
"#,
        title = esc(title),
    );
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// An error page.
pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    let mut r = page(
        "Error",
        None,
        Tab::Releases,
        &format!("<h1>{}</h1><p>{}</p>", status.as_u16(), esc(message)),
    );
    *r.status_mut() = status;
    r
}

async fn home(State(s): State<Server>) -> Response {
    match s.app.db.fleets().await {
        Ok(f) if f.len() == 1 => Redirect::to(&format!(
            "/ui/fleets/{}/releases",
            crate::operator::views::url_encode(&f[0])
        ))
        .into_response(),
        Ok(fleets) => {
            let mut body = String::from("<h1>Fleets</h1>");
            if fleets.is_empty() {
                body.push_str("<div class=\"empty\">No fleets yet: <code>shoal-builder fleet create NAME --arch amd64 --device-type generic-amd64</code></div>");
            } else {
                body.push_str("<div class=\"table-wrap\"><table><tbody>");
                for f in fleets {
                    body.push_str(&format!(
                        "<tr><td><a href=\"/ui/fleets/{}/releases\">{}</a></td></tr>",
                        crate::operator::views::url_encode(&f),
                        esc(&f)
                    ));
                }
                body.push_str("</tbody></table></div>");
            }
            page("Fleets", None, Tab::Releases, &body)
        }
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(
            badge("rolled_back\"><x"),
            "<span class=\"badge rolled_backx\">rolled back&quot;&gt;&lt;x</span>"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(2_500), "2.5 s");
        assert_eq!(duration(185_000), "3m 05s");
        assert_eq!(duration(3_720_000), "1h 02m");
    }
}
