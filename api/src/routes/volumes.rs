//! `/volumes`: create, list, inspect, remove, prune — served by volume plugins.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use berth_engine::volumes::{VolumeRecord, VolumeView};
use bollard_stubs::models::{Volume, VolumeListResponse, VolumeScopeEnum};
use serde::Deserialize;

use crate::error::ApiResult;
use crate::query::{parse_bool, Filters, JsonBody, Q};
use crate::version::ApiVersion;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/volumes", get(list))
        .route("/volumes/create", post(create))
        .route("/volumes/prune", post(prune))
        .route("/volumes/{name}", get(inspect).delete(remove))
}

pub(super) fn to_model(v: &VolumeView) -> Volume {
    let r = &v.record;
    Volume {
        name: r.name.clone(),
        driver: r.driver.clone(),
        mountpoint: v.mountpoint.clone(),
        created_at: Some(r.created_at.clone()),
        // Driver status is free-form; the model types it oddly, so it is left out.
        status: None,
        labels: r.labels.clone(),
        scope: Some(VolumeScopeEnum::LOCAL),
        options: r.options.clone().into_iter().collect(),
        ..Default::default()
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    name: Option<String>,
    driver: Option<String>,
    driver_opts: Option<BTreeMap<String, String>>,
    labels: Option<HashMap<String, String>>,
}

async fn create(
    State(engine): State<AppState>,
    JsonBody(b): JsonBody<CreateBody>,
) -> ApiResult<Response> {
    let rec = engine
        .volumes
        .create(
            b.name,
            b.driver,
            b.driver_opts.unwrap_or_default(),
            b.labels.unwrap_or_default(),
            false,
        )
        .await?;
    let view = engine.volumes.inspect(&rec.name).await?;
    Ok((StatusCode::CREATED, Json(to_model(&view))).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    filters: Option<String>,
}

fn matches(f: &Filters, r: &VolumeRecord, in_use: bool) -> bool {
    let any = |key: &str, pred: &dyn Fn(&str) -> bool| {
        let v = f.get(key);
        v.is_empty() || v.iter().any(|x| pred(x))
    };
    any("name", &|x| r.name.contains(x))
        && any("driver", &|x| r.driver == x)
        && any("dangling", &|x| parse_bool(x) != in_use)
        && f.match_labels("label", &r.labels)
}

async fn list(
    State(engine): State<AppState>,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<VolumeListResponse>> {
    let f = Filters::parse(q.filters.as_deref())?;
    f.validate(&["name", "driver", "dangling", "label"])?;
    let mut out = Vec::new();
    for r in engine.volumes.list() {
        let in_use = !engine.containers.volume_users(&r.name).is_empty();
        if !matches(&f, &r, in_use) {
            continue;
        }
        match engine.volumes.inspect(&r.name).await {
            Ok(v) => out.push(to_model(&v)),
            Err(e) => tracing::warn!(volume = %r.name, "inspect: {e}"),
        }
    }
    Ok(Json(VolumeListResponse {
        volumes: Some(out),
        warnings: Some(Vec::new()),
    }))
}

async fn inspect(
    State(engine): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Volume>> {
    let v = engine.volumes.inspect(&name).await?;
    Ok(Json(to_model(&v)))
}

#[derive(Deserialize)]
struct RemoveQuery {
    force: Option<String>,
}

async fn remove(
    State(engine): State<AppState>,
    Path(name): Path<String>,
    Q(q): Q<RemoveQuery>,
) -> ApiResult<StatusCode> {
    engine
        .volumes
        .remove(&name, q.force.as_deref().map(parse_bool).unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct PruneQuery {
    filters: Option<String>,
}

async fn prune(
    State(engine): State<AppState>,
    Extension(ver): Extension<ApiVersion>,
    Q(q): Q<PruneQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let f = Filters::parse(q.filters.as_deref())?;
    // API 1.42 narrowed prune to anonymous volumes unless `all=true`; older clients
    // still get every unused volume removed, as dockerd does for them.
    let all = if ver.at_least(42) {
        f.validate(&["all", "label", "label!"])?;
        f.get("all").iter().any(|v| parse_bool(v))
    } else {
        f.validate(&["label", "label!"])?;
        true
    };
    let f2 = f.clone();
    let (deleted, space) = engine
        .volumes
        .prune(all, move |r| f2.prune_excludes(&r.labels))
        .await;
    Ok(Json(
        serde_json::json!({ "VolumesDeleted": deleted, "SpaceReclaimed": space }),
    ))
}
