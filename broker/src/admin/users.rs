//! `GET /api/v1/users/{user}`, `POST|DELETE /api/v1/users/{user}/ban`, `GET /api/v1/bans`: a
//! user's state as an operator sees it, and the risk-user switch. A ban closes the user's
//! connections on this node at once (5.0: DISCONNECT 0x98) and refuses their CONNECT (3.1.1 rc
//! 5, 5.0 0x8A) on every node sharing the ban list, until lifted or `until`.

use axum::extract::State;
use axum::Json;
use mqim_im_plugin::bans::Ban;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{audit, Admin};
use super::error::{user_id, ApiError, ApiJson, ApiPath, ErrorBody};
use super::AdminState;

/// A user's stream, devices and inbox.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub user: String,
    /// The highest seq of the user's stream (0: no events yet).
    pub head_seq: u64,
    /// Devices online, each with the last seq it acknowledged and the node it is connected
    /// to: on any node when `presence` is `cluster` (the Redis store shapes share presence),
    /// on this node only when it is `node`. The stores keep no list of a user's devices, so
    /// offline devices do not appear.
    pub devices: Vec<DeviceView>,
    /// `cluster`: `devices` covers every node; `node`: this node's connections only.
    pub presence: String,
    pub unread_total: u64,
    pub conversations: usize,
    /// The user has more conversations than were counted (1000).
    pub conversations_capped: bool,
    /// The ban in force, if any.
    pub ban: Option<BanView>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    pub device: String,
    pub acked_seq: u64,
    pub online: bool,
    /// The id of the node the device is connected to (`im.node_id`).
    pub node: u16,
}

/// A ban in force.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct BanView {
    pub user: String,
    pub reason: String,
    /// Unix ms; absent: until lifted.
    pub until: Option<i64>,
    /// The admin who banned.
    pub by: String,
    /// Unix ms.
    pub at: i64,
}

/// `POST /users/{user}/ban`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanRequest {
    /// Why (shown to operators, logged).
    pub reason: String,
    /// Unix ms when the ban ends; absent: until lifted.
    pub until: Option<i64>,
}

/// What a ban did.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Banned {
    pub ban: BanView,
    /// Connections of the user closed on this node.
    pub closed: usize,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BanList {
    pub bans: Vec<BanView>,
}

fn view(user: &str, b: Ban) -> BanView {
    BanView {
        user: user.to_string(),
        reason: b.reason,
        until: b.until,
        by: b.by,
        at: b.at,
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/users/{user}",
    tag = "users",
    security(("bearer" = [])),
    params(("user" = String, Path)),
    responses(
        (status = 200, body = UserView),
        (status = 400, body = ErrorBody, description = "not a valid user id"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "the store is unavailable"),
    )
)]
pub async fn get_user(
    _admin: Admin,
    State(st): State<AdminState>,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<UserView>, ApiError> {
    user_id(&user)?;
    let s = st.plugin.user_summary(&user).await?;
    Ok(Json(UserView {
        head_seq: s.head_seq,
        devices: s
            .devices
            .into_iter()
            .map(|d| DeviceView {
                device: d.device,
                acked_seq: d.acked_seq,
                online: d.online,
                node: d.node,
            })
            .collect(),
        presence: match s.presence_shared {
            true => "cluster",
            false => "node",
        }
        .to_string(),
        unread_total: s.unread_total,
        conversations: s.conversations,
        conversations_capped: s.conversations_capped,
        ban: st.bans.check(&user).map(|b| view(&user, b)),
        user,
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/users/{user}/ban",
    tag = "users",
    security(("bearer" = [])),
    params(("user" = String, Path)),
    request_body = BanRequest,
    responses(
        (status = 200, body = Banned, description = "banned (an earlier ban is replaced)"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn ban(
    admin: Admin,
    State(st): State<AdminState>,
    ApiPath(user): ApiPath<String>,
    ApiJson(req): ApiJson<BanRequest>,
) -> Result<Json<Banned>, ApiError> {
    user_id(&user)?;
    if req.reason.trim().is_empty() {
        return Err(ApiError::invalid("`reason` is required"));
    }
    let now = mqim_im_plugin::now_ms();
    if req.until.is_some_and(|u| u <= now) {
        return Err(ApiError::invalid("`until` (Unix ms) is in the past"));
    }
    let ban = Ban {
        until: req.until,
        reason: req.reason,
        by: admin.0.clone(),
        at: now,
    };
    st.bans.ban(&user, ban.clone()).await?;
    let closed = st.control.close_user(&user, None);
    audit(&admin, "ban", &user, &ban.reason);
    Ok(Json(Banned {
        ban: view(&user, ban),
        closed,
    }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/users/{user}/ban",
    tag = "users",
    security(("bearer" = [])),
    params(("user" = String, Path)),
    responses(
        (status = 204, description = "the ban is lifted"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "the user is not banned"),
    )
)]
pub async fn unban(
    admin: Admin,
    State(st): State<AdminState>,
    ApiPath(user): ApiPath<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    user_id(&user)?;
    if !st.bans.unban(&user).await? {
        return Err(ApiError::not_found(format!("{user} is not banned")));
    }
    audit(&admin, "unban", &user, "");
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/bans",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, body = BanList),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    )
)]
pub async fn list_bans(_admin: Admin, State(st): State<AdminState>) -> Json<BanList> {
    Json(BanList {
        bans: st
            .bans
            .list()
            .into_iter()
            .map(|(u, b)| view(&u, b))
            .collect(),
    })
}
