//! `POST /api/v1/messages`: a system message from the reserved sender `system`, stored and
//! delivered like any message: to a user (`u:<user>`), or to a group (`g:<id>`) as the group's
//! next entry, with a group seq, to every member. A group is refused with 404 when unknown and
//! 409 `FAILED_PRECONDITION` when disbanded or on a store shape without groups.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{audit, Admin};
use super::error::{ApiError, ApiJson, ErrorBody};
use super::AdminState;

/// A system message.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemMessageRequest {
    /// The conversation: `u:<user>` or `g:<group id>`.
    pub to: String,
    pub text: String,
}

/// The stored message.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemMessageSent {
    /// As in the wire contract: a decimal string (64-bit ids do not fit a JSON number).
    pub msg_id: String,
    /// Acceptance time, Unix ms.
    pub ts: i64,
    /// For a group message: its seq in the group's log (absent for a one-to-one message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_seq: Option<u64>,
}

#[utoipa::path(
    post,
    path = "/api/v1/messages",
    tag = "messages",
    security(("bearer" = [])),
    request_body = SystemMessageRequest,
    responses(
        (status = 200, body = SystemMessageSent),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such group"),
        (status = 409, body = ErrorBody, description = "FAILED_PRECONDITION: the group was disbanded, or this store shape keeps no groups"),
        (status = 413, body = ErrorBody, description = "text over the size limit"),
        (status = 422, body = ErrorBody, description = "CONTENT_REJECTED by moderation"),
        (status = 429, body = ErrorBody, description = "RATE_LIMITED: the system sender's send rate"),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn send(
    admin: Admin,
    State(st): State<AdminState>,
    ApiJson(req): ApiJson<SystemMessageRequest>,
) -> Result<Json<SystemMessageSent>, ApiError> {
    if !req.to.starts_with("u:") && !req.to.starts_with("g:") {
        return Err(ApiError::invalid(
            "`to` must be `u:<user id>` or `g:<group id>`",
        ));
    }
    if req.text.is_empty() {
        return Err(ApiError::invalid("`text` is required"));
    }
    let sent = st.plugin.send_system_message(&req.to, req.text).await?;
    audit(&admin, "system_message", &req.to, &sent.msg_id.to_string());
    Ok(Json(SystemMessageSent {
        msg_id: sent.msg_id.to_string(),
        ts: sent.ts,
        group_seq: (sent.group_seq > 0).then_some(sent.group_seq),
    }))
}
