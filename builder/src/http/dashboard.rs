//! # The dashboard
//!
//! Server-rendered HTML with a little plain JavaScript (`dashboard/assets/app.js`) and a small
//! hand-written stylesheet; no front-end build step. Pages read the services (the database, the
//! registry, the operator's audit log and saved views, the live rollout), never the API's
//! routes; actions (saving a view, pins, the rollout policy, pause/resume/promote/abort) call the
//! JSON API from the browser with the token the user typed into the header, kept in the
//! browser's `localStorage`, so the API's 401/403 rules hold for the dashboard too.
//!
//! The page around each body and the fleet list are askama templates (`builder/templates/
//! dashboard/`), which escape what they insert; every other piece of user-controlled text
//! (commits, refs, service names, compose files, logs, device names, view names, error messages)
//! goes through [`esc`] (askama's HTML escaper) before it reaches HTML; the script only ever sets
//! `textContent`.
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

/// Escapes text for HTML element content and attribute values (askama's HTML escaper:
/// `&`, `<`, `>`, `"`, `'`).
pub fn esc(s: &str) -> String {
    use askama::filters::Escaper as _;
    let mut out = String::with_capacity(s.len() + 8);
    // Writing to a `String` cannot fail.
    let _ = askama::filters::Html.write_escaped_str(&mut out, s);
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

/// One navigation link.
#[derive(Debug)]
struct NavLink {
    href: String,
    label: &'static str,
    active: bool,
}

/// The page around every dashboard body (`templates/dashboard/page.html`).
#[derive(Debug, askama::Template)]
#[template(path = "dashboard/page.html")]
struct Page<'a> {
    title: &'a str,
    fleet: Option<&'a str>,
    /// The fleet's tabs; none outside a fleet.
    nav: Vec<NavLink>,
    /// HTML, escaped where it was built.
    body: &'a str,
}

/// The fleet list (`templates/dashboard/fleets.html`).
#[derive(Debug, askama::Template)]
#[template(path = "dashboard/fleets.html")]
struct Fleets {
    /// (name in URLs, name).
    fleets: Vec<(String, String)>,
}

/// An HTML answer; a template that fails to render is a 500.
fn html(rendered: askama::Result<String>) -> Response {
    match rendered {
        Ok(html) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// A whole page around `body`.
pub(crate) fn page(title: &str, fleet: Option<&str>, tab: Tab, body: &str) -> Response {
    let nav = match fleet {
        Some(f) => {
            let f = crate::operator::views::url_encode(f);
            [
                (Tab::Releases, "releases", "Releases"),
                (Tab::Devices, "devices", "Devices"),
                (Tab::Settings, "settings", "Settings"),
                (Tab::Audit, "audit", "Audit"),
            ]
            .into_iter()
            .map(|(t, path, label)| NavLink {
                href: format!("/ui/fleets/{f}/{path}"),
                label,
                active: t == tab,
            })
            .collect()
        }
        None => Vec::new(),
    };
    html(askama::Template::render(&Page {
        title,
        fleet,
        nav,
        body,
    }))
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
            let fleets = fleets
                .into_iter()
                .map(|f| (crate::operator::views::url_encode(&f), f))
                .collect();
            match askama::Template::render(&Fleets { fleets }) {
                Ok(body) => page("Fleets", None, Tab::Releases, &body),
                Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
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

    /// askama writes numeric character references (`&#60;` for `<`).
    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&#60;script&#62;alert(&#39;x&#39;)&#60;/script&#62; &#38; &#34;q&#34;"
        );
        assert_eq!(
            badge("rolled_back\"><x"),
            "<span class=\"badge rolled_backx\">rolled back&#34;&#62;&#60;x</span>"
        );
    }

    async fn text(r: Response) -> String {
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_page_template_keeps_the_chrome_and_escapes() {
        let r = page("<T>", Some("a b\""), Tab::Devices, "<p id=\"body\">x</p>");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let html = text(r).await;
        for part in [
            "<title>&#60;T&#62; · Shoal</title>",
            "<span class=\"fleet\">fleet <b>a b&#34;</b></span>",
            "<nav><a href=\"/ui/fleets/a%20b%22/releases\">Releases</a><a href=\"/ui/fleets/a%20b%22/devices\" class=\"active\">Devices</a>",
            "<input id=\"token\" type=\"password\"",
            "<button id=\"token-save\" type=\"button\">Use token</button>",
            "<main>\n<p id=\"body\">x</p>\n</main>",
            "<div id=\"flash\" role=\"status\"></div>",
        ] {
            assert!(html.contains(part), "{part} not in {html}");
        }
        let html = text(error_page(StatusCode::NOT_FOUND, "no <fleet>")).await;
        assert!(
            html.contains("<h1>404</h1><p>no &#60;fleet&#62;</p>"),
            "{html}"
        );
        assert!(!html.contains("<nav>"), "{html}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(2_500), "2.5 s");
        assert_eq!(duration(185_000), "3m 05s");
        assert_eq!(duration(3_720_000), "1h 02m");
    }
}
