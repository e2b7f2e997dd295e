//! `POST /containers/{id}/update` (`docker update`): new limits and restart policy.

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Extension, Json, Router};
use bollard_stubs::models::ContainerUpdateBody;

use crate::error::ApiResult;
use crate::query::JsonBody;
use crate::version::ApiVersion;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/containers/{id}/update", post(update))
}

async fn update(
    State(engine): State<AppState>,
    Extension(ver): Extension<ApiVersion>,
    Path(id): Path<String>,
    JsonBody(mut body): JsonBody<ContainerUpdateBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let c = engine.containers.get(&id)?;
    // Before API 1.40 the field was not part of an update (dockerd drops it too).
    if !ver.at_least(40) {
        body.pids_limit = None;
    }
    let warnings = engine.containers.update_resources(&c, body).await?;
    Ok(Json(serde_json::json!({ "Warnings": warnings })))
}
