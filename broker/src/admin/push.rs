//! `GET /api/v1/push/{user}`: a user's push registrations, mutes and the last outcomes per
//! device, as the push bridge of this node keeps them (`<data_dir>/push/`; registrations are per
//! node, see the README's push section). Device tokens are secrets of the device: only their
//! last 6 characters are shown.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Admin;
use super::error::{user_id, ApiError, ApiPath, ErrorBody};
use super::AdminState;

/// A user's push state on this node.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushView {
    pub user: String,
    pub devices: Vec<PushDeviceView>,
    pub mutes: Vec<MuteView>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushDeviceView {
    pub device: String,
    /// `apns`, `fcm` or `webhook`; absent: not registered (only outcomes are left).
    pub provider: Option<String>,
    /// The last 6 characters of the token.
    pub token_hint: Option<String>,
    pub sandbox: bool,
    pub preview: bool,
    /// The highest stream seq pushed to this device.
    pub pushed_up_to: u64,
    pub badge: Option<u64>,
    /// The last outcomes, oldest first.
    pub outcomes: Vec<PushOutcomeView>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushOutcomeView {
    /// Unix ms.
    pub at: i64,
    pub provider: String,
    pub status: String,
    pub reason: String,
    pub seq: u64,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MuteView {
    pub conversation: String,
    /// Unix ms; absent: until unmuted.
    pub until: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/push/{user}",
    tag = "push",
    security(("bearer" = [])),
    params(("user" = String, Path)),
    responses(
        (status = 200, body = PushView),
        (status = 400, body = ErrorBody, description = "not a valid user id"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "the push state could not be read"),
    )
)]
pub async fn get_push(
    _admin: Admin,
    State(st): State<AdminState>,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<PushView>, ApiError> {
    user_id(&user)?;
    let dir = st.info.data_dir.clone();
    let who = user.clone();
    let state = tokio::task::spawn_blocking(move || {
        mqim_push_bridge::state::PushState::open(&dir)?.get(&who)
    })
    .await
    .map_err(|e| ApiError::unavailable(e.to_string()))?
    .map_err(|e| ApiError::unavailable(format!("reading the push state: {e}")))?;
    let devices = state
        .devices
        .into_iter()
        .map(|(device, d)| {
            let reg = d.registration.as_ref();
            PushDeviceView {
                device,
                provider: reg.map(|r| r.provider.name().to_string()),
                token_hint: reg.map(|r| {
                    let chars: Vec<char> = r.token.chars().collect();
                    chars[chars.len().saturating_sub(6)..].iter().collect()
                }),
                sandbox: reg.is_some_and(|r| r.sandbox),
                preview: reg.is_some_and(|r| r.preview),
                pushed_up_to: d.pushed_up_to,
                badge: d.badge,
                outcomes: d
                    .log
                    .into_iter()
                    .map(|e| PushOutcomeView {
                        at: e.at_ms,
                        provider: e.provider,
                        status: e.status,
                        reason: e.reason,
                        seq: e.seq,
                    })
                    .collect(),
            }
        })
        .collect();
    let mutes = state
        .mutes
        .into_iter()
        .map(|(conversation, until)| MuteView {
            conversation,
            until,
        })
        .collect();
    Ok(Json(PushView {
        user,
        devices,
        mutes,
    }))
}
