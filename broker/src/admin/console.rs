//! The web console: plain HTML, JS modules and CSS written for it (`broker/web/console/`),
//! embedded in the binary at compile time and served at `/`. It is a client of the REST API
//! like any script: it holds the admin token in the browser's session storage and calls
//! `/api/v1` with it. No third-party front-end code; charts are drawn by the page (SVG).

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AdminState;

/// (path, content type, body) of every console file.
const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../web/console/index.html"),
    ),
    (
        "/console/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/console/app.js"),
    ),
    (
        "/console/chart.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/console/chart.js"),
    ),
    (
        "/console/style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/console/style.css"),
    ),
];

/// The console's routes.
pub fn routes() -> Router<AdminState> {
    let mut r = Router::new();
    for &(path, ctype, body) in FILES {
        r = r.route(
            path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, ctype),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    body,
                )
                    .into_response()
            }),
        );
    }
    r
}
