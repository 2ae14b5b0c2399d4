//! The admin HTTP server: its own listener (default `127.0.0.1:18083`, never an MQTT port),
//! serving the REST API under `/api/v1` (OpenAPI 3 at `/api/v1/openapi.json`, generated from the
//! handlers' types), the web console at `/`, and Prometheus metrics at `/metrics`.
//!
//! Files, one concern each: `auth` (admin bearer tokens, audit lines), `error` (the JSON error
//! shape and the extractors that produce it), `stats` (`/stats` and its rate sampler),
//! `clients` (online connections, kick), `users` (a user's state, ban/unban), `groups` (a
//! group and its members), `push` (a user's push state), `messages` (system messages), `node` (drain, health, moderation reload, `/metrics`), `openapi` (the
//! document), `console` (the embedded web console), `tls` (optional HTTPS).

mod auth;
mod clients;
mod console;
mod error;
mod groups;
mod messages;
mod node;
mod openapi;
mod push;
mod stats;
mod tls;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::routing::{get, post};
use axum::Router;
use mqim_im_plugin::auth::Authenticator;
use mqim_im_plugin::bans::BanStore;
use mqim_im_plugin::ImPlugin;
use tokio::net::TcpListener;

use crate::drain::ServerControl;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub(crate) control: ServerControl,
    pub(crate) plugin: Arc<ImPlugin>,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) bans: Arc<BanStore>,
    pub(crate) info: Arc<NodeInfo>,
    pub(crate) rates: Arc<stats::Rates>,
}

/// Facts about this node that do not change while it runs, and the admin settings.
pub struct NodeInfo {
    pub node_id: u16,
    /// `embedded`, `redis+embedded` or `redis+scylla`.
    pub store: String,
    pub started: Instant,
    pub metrics_auth: bool,
    /// The default drain: rate, redirect, exit.
    pub drain_rate: u32,
    pub redirect: Option<String>,
    pub exit_after_drain: bool,
    /// The data dir (the push bridge's state is under it).
    pub data_dir: std::path::PathBuf,
}

impl AdminState {
    pub fn new(
        control: ServerControl,
        plugin: Arc<ImPlugin>,
        auth: Arc<Authenticator>,
        bans: Arc<BanStore>,
        info: NodeInfo,
    ) -> AdminState {
        AdminState {
            control,
            plugin,
            auth,
            bans,
            info: Arc::new(info),
            rates: stats::Rates::start(),
        }
    }

    /// The IM service.
    pub fn plugin(&self) -> &Arc<ImPlugin> {
        &self.plugin
    }

    /// Starts a drain with the configured defaults (SIGUSR1).
    pub fn drain_with_defaults(&self) -> Result<(), crate::drain::AlreadyDraining> {
        self.control.drain(crate::drain::DrainPlan {
            redirect: self.info.redirect.clone(),
            rate: self.info.drain_rate,
            exit: self.info.exit_after_drain,
        })
    }
}

/// The whole admin application.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/stats", get(stats::get_stats))
        .route("/clients", get(clients::list))
        .route(
            "/clients/{user}/{device}",
            get(clients::get_one).delete(clients::kick),
        )
        .route("/users/{user}", get(users::get_user))
        .route("/users/{user}/ban", post(users::ban).delete(users::unban))
        .route("/bans", get(users::list_bans))
        .route("/groups/{id}", get(groups::get_group))
        .route("/groups/{id}/members", get(groups::members))
        .route("/push/{user}", get(push::get_push))
        .route("/messages", post(messages::send))
        .route("/drain", post(node::drain))
        .route("/moderation/reload", post(node::reload_moderation))
        .route("/healthz", get(node::healthz))
        .route("/readyz", get(node::readyz))
        .route("/openapi.json", get(openapi::document))
        .fallback(node::not_found);
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(node::metrics))
        .merge(console::routes())
        .with_state(state)
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("admin listener {addr}: {e}"))
}

/// Serves the admin application on `listener` (HTTPS when `tls` is given) until the task is
/// aborted.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: AdminState,
) {
    let app = router(state);
    let result = match tls {
        None => axum::serve(listener, app).await,
        Some(acceptor) => match tls::TlsListener::new(listener, acceptor) {
            Ok(l) => axum::serve(l, app).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "admin server stopped");
    }
}
