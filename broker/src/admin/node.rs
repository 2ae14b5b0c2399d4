//! The node itself: `POST /drain`, `POST /moderation/reload`, `GET /healthz` (the process is
//! up), `GET /readyz` (the store answers and the node is not draining), and `/metrics`.

use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{audit, Admin};
use super::error::{ApiError, ErrorBody};
use super::AdminState;
use crate::drain::DrainPlan;

/// `POST /drain`; every field optional.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// `host:port` MQTT 5 clients are sent to (Server Reference); default `[cluster] redirect`.
    pub redirect: Option<String>,
    /// Connections closed per second; default `[admin] drain_rate`.
    pub rate: Option<u32>,
}

/// A drain that started.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DrainStarted {
    pub redirect: Option<String>,
    pub rate: u32,
    pub connections: usize,
    /// The process exits when the last connection is gone.
    pub exit_when_done: bool,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or why not.
    pub status: String,
}

/// What a reload loaded.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Reloaded {
    pub words: usize,
}

#[utoipa::path(
    post,
    path = "/api/v1/drain",
    tag = "node",
    security(("bearer" = [])),
    request_body(content = DrainRequest, description = "may be empty"),
    responses(
        (status = 202, body = DrainStarted),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "already draining"),
    )
)]
pub async fn drain(
    admin: Admin,
    State(st): State<AdminState>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<DrainStarted>), ApiError> {
    let req: DrainRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DrainRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid(e.to_string()))?
    };
    let redirect = req.redirect.or_else(|| st.info.redirect.clone());
    if let Some(r) = &redirect {
        let port = r.rsplit_once(':').and_then(|(h, p)| {
            (!h.is_empty()).then_some(())?;
            p.parse::<u16>().ok()
        });
        if port.is_none_or(|p| p == 0) {
            return Err(ApiError::invalid("`redirect` must be host:port"));
        }
    }
    let rate = req.rate.unwrap_or(st.info.drain_rate);
    if rate == 0 {
        return Err(ApiError::invalid("`rate` must be at least 1"));
    }
    let plan = DrainPlan {
        redirect: redirect.clone(),
        rate,
        exit: st.info.exit_after_drain,
    };
    let connections = st.control.sessions().len();
    st.control
        .drain(plan)
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    audit(
        &admin,
        "drain",
        "node",
        &format!("redirect={redirect:?} rate={rate}"),
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(DrainStarted {
            redirect,
            rate,
            connections,
            exit_when_done: st.info.exit_after_drain,
        }),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/moderation/reload",
    tag = "node",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Reloaded),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the word file could not be read; the old list stays"),
    )
)]
pub async fn reload_moderation(
    admin: Admin,
    State(st): State<AdminState>,
) -> Result<Json<Reloaded>, ApiError> {
    let words = st
        .plugin
        .moderation()
        .reload()
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    audit(
        &admin,
        "moderation_reload",
        "node",
        &format!("{words} words"),
    );
    Ok(Json(Reloaded { words }))
}

#[utoipa::path(
    get,
    path = "/api/v1/healthz",
    tag = "node",
    responses((status = 200, body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/readyz",
    tag = "node",
    responses(
        (status = 200, body = Health),
        (status = 503, body = Health, description = "draining, or the store does not answer"),
    )
)]
pub async fn readyz(State(st): State<AdminState>) -> (StatusCode, Json<Health>) {
    let unready = |s: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health { status: s.into() }),
        )
    };
    if st.control.is_draining() {
        return unready("draining");
    }
    let probe = tokio::time::timeout(Duration::from_secs(2), st.plugin.store().max_msg_id());
    match probe.await {
        Ok(Ok(_)) => (
            StatusCode::OK,
            Json(Health {
                status: "ok".into(),
            }),
        ),
        Ok(Err(e)) => unready(&format!("store: {e}")),
        Err(_) => unready("store: no answer within 2 s"),
    }
}

/// `/metrics`: the Prometheus text format (no auth unless `metrics_auth`).
pub async fn metrics(State(st): State<AdminState>, req: Request) -> Response {
    if st.info.metrics_auth {
        let (mut parts, _) = req.into_parts();
        if let Err(e) = Admin::from_request_parts(&mut parts, &st).await {
            return e.into_response();
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::get().render(),
    )
        .into_response()
}

/// Unknown `/api/v1` paths: a JSON 404, like every other error.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /api/v1/openapi.json")
}
