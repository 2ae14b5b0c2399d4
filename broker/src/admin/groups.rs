//! `GET /api/v1/groups/{id}` and `GET /api/v1/groups/{id}/members`: a group's settings and log
//! head, and its members (role, join time and position) in pages ordered by user id. Read from
//! the store, so a disbanded group is still shown (`disbanded: true`). `{id}` is the group id
//! with or without its `g:` prefix. On a store shape without groups both answer 409
//! `FAILED_PRECONDITION`.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Admin;
use super::error::{user_id, ApiError, ApiPath, ApiQuery, ErrorBody};
use super::AdminState;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// A group as an operator sees it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    /// The conversation id, `g:<id>`.
    pub id: String,
    pub name: String,
    pub owner: String,
    /// A large group (read diffusion: messages stored once in the group's log).
    pub large: bool,
    /// Unix ms.
    pub created_at: i64,
    pub disbanded: bool,
    pub member_count: u64,
    /// The group seq of the latest entry (message or membership change).
    pub last_group_seq: u64,
}

/// One member.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    pub user: String,
    /// `owner`, `admin` or `member`.
    pub role: String,
    /// Unix ms.
    pub joined_at: i64,
    /// The group seq of the entry that added them: they see the log from there on.
    pub joined_seq: u64,
}

/// A page of members, ordered by user id.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct MemberPage {
    pub members: Vec<MemberView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MemberQuery {
    /// The `next` of the previous page (a user id).
    pub after: Option<String>,
    /// 1 to 1000, default 100.
    pub limit: Option<usize>,
}

/// `123` or `g:123` -> `123`.
fn group_id(raw: &str) -> &str {
    raw.strip_prefix("g:").unwrap_or(raw)
}

#[utoipa::path(
    get,
    path = "/api/v1/groups/{id}",
    tag = "groups",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the group id, with or without `g:`")),
    responses(
        (status = 200, body = GroupView),
        (status = 400, body = ErrorBody, description = "not a group id"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such group"),
        (status = 409, body = ErrorBody, description = "FAILED_PRECONDITION: this store shape keeps no groups"),
        (status = 503, body = ErrorBody, description = "the store is unavailable"),
    )
)]
pub async fn get_group(
    _admin: Admin,
    State(st): State<AdminState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<GroupView>, ApiError> {
    let g = st.plugin.admin_group(group_id(&id)).await?;
    let meta = g.record.meta;
    Ok(Json(GroupView {
        id: format!("g:{}", g.id),
        name: meta.name,
        owner: meta.owner,
        large: meta.large,
        created_at: meta.created_at,
        disbanded: meta.disbanded,
        member_count: meta.member_count,
        last_group_seq: g.last_group_seq,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/groups/{id}/members",
    tag = "groups",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the group id, with or without `g:`"), MemberQuery),
    responses(
        (status = 200, body = MemberPage),
        (status = 400, body = ErrorBody, description = "not a group id, or a bad `after`/`limit`"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such group"),
        (status = 409, body = ErrorBody, description = "FAILED_PRECONDITION: this store shape keeps no groups"),
        (status = 503, body = ErrorBody, description = "the store is unavailable"),
    )
)]
pub async fn members(
    _admin: Admin,
    State(st): State<AdminState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<MemberQuery>,
) -> Result<Json<MemberPage>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "`limit` must be 1 to {MAX_LIMIT}"
        )));
    }
    if let Some(after) = &q.after {
        user_id(after)?;
    }
    let g = st.plugin.admin_group(group_id(&id)).await?;
    let from = match &q.after {
        Some(after) => std::ops::Bound::Excluded(after.clone()),
        None => std::ops::Bound::Unbounded,
    };
    let mut page: Vec<MemberView> = g
        .record
        .members
        .range((from, std::ops::Bound::Unbounded))
        .take(limit + 1)
        .map(|(user, m)| MemberView {
            user: user.clone(),
            role: m.role.as_str().to_string(),
            joined_at: m.joined_at,
            joined_seq: m.joined_seq,
        })
        .collect();
    let next = match page.len() > limit {
        true => {
            page.truncate(limit);
            page.last().map(|m| m.user.clone())
        }
        false => None,
    };
    Ok(Json(MemberPage {
        members: page,
        next,
    }))
}
