//! Admin authentication: every `/api/v1` call (and `/metrics` with `metrics_auth`) carries
//! `Authorization: Bearer <admin JWT>` (claim `adm: true`, from `mqim token <name> --admin`).
//! A missing, malformed or expired token is 401 `UNAUTHENTICATED`; a valid token of an ordinary
//! user is 403 `PERMISSION_DENIED`. Mutating handlers call [`audit`] with the admin's name.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use mqim_im_plugin::auth::AuthError;

use super::error::ApiError;
use super::AdminState;

/// The authenticated admin (the token's `sub`).
pub struct Admin(pub String);

impl FromRequestParts<AdminState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AdminState,
    ) -> Result<Self, Self::Rejection> {
        check(parts, state).map(Admin)
    }
}

/// The admin named by the request's bearer token.
pub(super) fn check(parts: &Parts, state: &AdminState) -> Result<String, ApiError> {
    let unauthenticated = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", m);
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthenticated("an admin bearer token is required"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| unauthenticated("use `Authorization: Bearer <admin token>`"))?;
    match state.auth.verify_admin(token.trim()) {
        Ok(name) => Ok(name),
        Err(AuthError::NotAdmin) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "this token is not an admin token (issue one with `mqim token <name> --admin`)",
        )),
        Err(e) => Err(unauthenticated(&e.to_string())),
    }
}

/// Logs one audit line for a mutating call.
pub fn audit(admin: &Admin, action: &str, target: &str, detail: &str) {
    tracing::info!(target: "mqim::audit", admin = %admin.0, action, target, detail, "admin action");
}
