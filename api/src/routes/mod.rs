//! Routers, one module per Docker resource. Paths here carry no `/v1.N` prefix.

use axum::http::StatusCode;
use axum::Router;

use crate::error::ApiError;
use crate::AppState;

pub mod build;
pub mod containers;
pub mod distribution;
pub mod exec;
pub mod images;
pub mod networks;
pub mod plugins;
pub mod system;
pub mod update;
pub mod volumes;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(system::router())
        .merge(images::router())
        .merge(distribution::router())
        .merge(build::router())
        .merge(containers::router())
        .merge(update::router())
        .merge(exec::router())
        .merge(volumes::router())
        .merge(networks::router())
        .merge(plugins::router())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "page not found") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
}
