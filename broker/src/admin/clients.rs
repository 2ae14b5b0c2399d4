//! `GET /api/v1/clients`, `GET|DELETE /api/v1/clients/{user}/{device}`: the connections online
//! on this node, and kicking one (5.0: DISCONNECT 0x98 "administrative action"). Only this
//! node's, by nature: a row describes a socket this process holds (peer, outbox, counters). The
//! devices a user has online on other nodes are in `GET /api/v1/users/{user}` (where the store
//! shares presence).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{audit, Admin};
use super::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use super::AdminState;
use crate::session::Session;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// One online connection.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Client {
    /// None for an anonymous general-MQTT client.
    pub user: Option<String>,
    /// The MQTT client id.
    pub device: String,
    /// `ip:port`.
    pub peer: String,
    /// `3.1.1` or `5.0`.
    pub protocol: String,
    /// `tcp`, `ws` or `tls`.
    pub transport: String,
    pub keepalive_secs: u16,
    /// Unix ms.
    pub connected_at: i64,
    /// Subscriptions in the IM tree (`im/...`).
    pub subscriptions: Vec<String>,
    /// Deliveries queued for the client.
    pub outbox_depth: usize,
    /// Publishes received from and sent to the client.
    pub messages_in: u64,
    pub messages_out: u64,
}

/// A page of clients, ordered by user then device.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ClientPage {
    pub clients: Vec<Client>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClientQuery {
    /// Only this user's connections.
    pub user: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// 1 to 1000, default 100.
    pub limit: Option<usize>,
}

/// What a kick did.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Kicked {
    /// Connections closed.
    pub closed: usize,
}

fn key(s: &Session) -> String {
    format!("{}/{}", s.user().unwrap_or_default(), s.client_id())
}

fn describe(s: &Session) -> Client {
    let meta = s.meta();
    let (messages_in, messages_out) = s.message_counts();
    Client {
        user: s.user().map(str::to_string),
        device: s.client_id().to_string(),
        peer: meta.map(|m| m.peer.to_string()).unwrap_or_default(),
        protocol: s.version.as_str().into(),
        transport: meta.map_or("tcp", |m| m.transport.as_str()).into(),
        keepalive_secs: meta.map_or(0, |m| m.keep_alive),
        connected_at: meta.map_or(0, |m| m.connected_at),
        subscriptions: s.claimed_topics(),
        outbox_depth: s.outbox_depth(),
        messages_in,
        messages_out,
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/clients",
    tag = "clients",
    description = "The connections this node holds (other nodes' are not listed: see `GET /users/{user}` for a user's devices on every node).",
    security(("bearer" = [])),
    params(ClientQuery),
    responses(
        (status = 200, body = ClientPage),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    )
)]
pub async fn list(
    _admin: Admin,
    State(st): State<AdminState>,
    ApiQuery(q): ApiQuery<ClientQuery>,
) -> Result<Json<ClientPage>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "`limit` must be 1 to {MAX_LIMIT}"
        )));
    }
    let mut sessions: Vec<(String, Arc<Session>)> = st
        .control
        .sessions()
        .into_iter()
        .filter(|s| q.user.as_deref().is_none_or(|u| s.user() == Some(u)))
        .map(|s| (key(&s), s))
        .filter(|(k, _)| q.after.as_deref().is_none_or(|a| k.as_str() > a))
        .collect();
    sessions.sort_by(|a, b| a.0.cmp(&b.0));
    let more = sessions.len() > limit;
    sessions.truncate(limit);
    let next = more
        .then(|| sessions.last().map(|(k, _)| k.clone()))
        .flatten();
    Ok(Json(ClientPage {
        clients: sessions.iter().map(|(_, s)| describe(s)).collect(),
        next,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/clients/{user}/{device}",
    tag = "clients",
    security(("bearer" = [])),
    params(("user" = String, Path), ("device" = String, Path)),
    responses(
        (status = 200, body = Client),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "not connected to this node"),
    )
)]
pub async fn get_one(
    _admin: Admin,
    State(st): State<AdminState>,
    ApiPath((user, device)): ApiPath<(String, String)>,
) -> Result<Json<Client>, ApiError> {
    st.control
        .find(&user, &device)
        .map(|s| Json(describe(&s)))
        .ok_or_else(|| ApiError::not_found(format!("{user}/{device} is not connected here")))
}

#[utoipa::path(
    delete,
    path = "/api/v1/clients/{user}/{device}",
    tag = "clients",
    security(("bearer" = [])),
    params(("user" = String, Path), ("device" = String, Path)),
    responses(
        (status = 200, body = Kicked, description = "the connection was told to close"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "not connected to this node"),
    )
)]
pub async fn kick(
    admin: Admin,
    State(st): State<AdminState>,
    ApiPath((user, device)): ApiPath<(String, String)>,
) -> Result<Json<Kicked>, ApiError> {
    let closed = st.control.close_user(&user, Some(&device));
    if closed == 0 {
        return Err(ApiError::not_found(format!(
            "{user}/{device} is not connected here"
        )));
    }
    audit(&admin, "kick", &format!("{user}/{device}"), "");
    Ok(Json(Kicked { closed }))
}
