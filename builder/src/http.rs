//! The HTTP layer: the builder's server ([`serve`]) on top of the services: the git endpoint and
//! the pre-receive hook's callback ([`push`], [`git`], [`hook`]), the JSON API and read-only
//! store ([`api`]), the device registry's routes ([`registry`]), the operator's ([`operator`])
//! and the dashboard ([`dashboard`]), which reads the services. Every handler shares one
//! [`state::Server`].
//!
//! | route | what |
//! |---|---|
//! | `/git/FLEET.git/...` | git smart HTTP (token required), see [`git`] |
//! | `POST /internal/hooks/pre-receive` | the pre-receive hook's callback (secret required) |
//! | `GET /api/v1/fleets`, `POST /api/v1/fleets` | list, create (token required) |
//! | `GET /api/v1/fleets/{fleet}` | one fleet |
//! | `GET /api/v1/fleets/{fleet}/releases` | releases with their device counts, filters `status`, `commit`, `since`, `until`, `text`, `limit` |
//! | `GET /api/v1/fleets/{fleet}/trust-root` | the signed trust root (canonical bytes) |
//! | `GET /api/v1/fleets/{fleet}/rollout` | the live rollout's progress, see [`crate::steering::Progress`] |
//! | `GET /api/v1/fleets/{fleet}/bootstrap` | the origin peer to join from and the trust root, see [`crate::gossip::Bootstrap`] |
//! | `GET /api/v1/releases/{id}` | one release |
//! | `GET /api/v1/releases/{id}/logs` | its log; follows a running build (`follow=false` not to) |
//! | `GET /api/v1/releases/{id}/manifest` | the signed manifest envelope |
//! | `GET /api/v1/releases/{id}/announcement` | the signed announcement envelope |
//! | `GET /chunks/{digest}` | a chunk's bytes |
//!
//! The device registry's, the operator's and the dashboard's routes are in their modules.
//!
//! Every error is JSON `{"error": "..."}` with a fitting status code.
//!
//! The `Authorization` header's decoder ([`auth_header`]) also builds with the `parse` feature
//! alone, for `builder/fuzz`.

pub mod auth_header;

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod dashboard;
#[cfg(feature = "server")]
pub mod git;
#[cfg(feature = "server")]
pub mod hook;
#[cfg(feature = "server")]
pub mod operator;
#[cfg(feature = "server")]
pub mod push;
#[cfg(feature = "server")]
pub mod registry;
#[cfg(feature = "server")]
pub mod state;

#[cfg(feature = "server")]
pub use state::Server;

/// The router.
#[cfg(feature = "server")]
pub fn router(s: Server) -> axum::Router {
    axum::Router::new()
        .merge(push::routes())
        .merge(api::routes())
        .merge(registry::routes())
        .merge(operator::routes())
        .merge(dashboard::routes())
        .fallback(|| async {
            state::json_error(axum::http::StatusCode::NOT_FOUND, "no such route")
        })
        .with_state(s)
}

/// Runs the server on `listener` until the process ends.
#[cfg(feature = "server")]
pub async fn serve(
    app: std::sync::Arc<crate::app::App>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    let local: std::net::SocketAddr = listener.local_addr()?;
    let host = if local.ip().is_unspecified() {
        if local.is_ipv6() {
            "[::1]".to_string()
        } else {
            "127.0.0.1".to_string()
        }
    } else if local.is_ipv6() {
        format!("[{}]", local.ip())
    } else {
        local.ip().to_string()
    };
    let hook_secret = {
        use rand::Rng;
        let mut b = [0u8; 24];
        rand::rng().fill_bytes(&mut b);
        hex::encode(b)
    };
    let s = Server {
        app,
        hook_url: format!("http://{host}:{}", local.port()),
        hook_secret,
        pushes: Default::default(),
        registry: Default::default(),
    };
    // Reports the origin nodes verified reach the registry too.
    if let Some(reports) = s.app.origins.get().and_then(|o| o.reports()) {
        tokio::spawn(s.registry.clone().follow(s.app.clone(), reports));
    }
    axum::serve(listener, router(s)).await
}
