//! `GET /distribution/{name}/json`: a registry's manifest descriptor and platforms
//! for an image name (docker-py's `inspect_distribution`, `docker service create`).
//! Names contain `/`, hence the wildcard split on the `/json` suffix.

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::error::{ApiError, ApiResult};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/distribution/{*rest}", get(inspect))
}

async fn inspect(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let Some(name) = rest.strip_suffix("/json").filter(|n| !n.is_empty()) else {
        return Err(ApiError::not_found("page not found"));
    };
    let auth = super::images::auth_from(req.headers());
    let v = state.images.distribution_inspect(name, &auth).await?;
    Ok(Json(v).into_response())
}
