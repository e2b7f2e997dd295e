//! `POST /build` (the classic builder) and `POST /build/prune`.

use std::collections::BTreeMap;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use berth_engine::build::BuildOptions;
use berth_engine::images::RegistryAuth;
use bollard_stubs::models::HostConfig;

use crate::error::{ApiError, ApiResult};
use crate::query::{Filters, QueryPairs};
use crate::stream::{body_reader, progress_stream};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/build", post(build))
        .route("/build/prune", post(prune))
}

fn int(q: &QueryPairs, k: &str) -> ApiResult<Option<i64>> {
    match q.get(k).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid value for {k}: {v:?}"))),
    }
}

fn json_map<T: serde::de::DeserializeOwned + Default>(q: &QueryPairs, k: &str) -> ApiResult<T> {
    match q.get(k).filter(|v| !v.is_empty()) {
        None => Ok(T::default()),
        Some(v) => serde_json::from_str(v)
            .map_err(|e| ApiError::bad_request(format!("invalid {k} parameter: {e}"))),
    }
}

fn options(q: &QueryPairs, req: &Request) -> ApiResult<BuildOptions> {
    if !q.str("remote").is_empty() {
        return Err(ApiError::bad_request(
            "remote build contexts (git and URL) are not supported: send the context as a tar",
        ));
    }
    if q.str("version") == "2" {
        return Err(ApiError::bad_request(
            "BuildKit is not supported by this daemon: use the classic builder (DOCKER_BUILDKIT=0)",
        ));
    }
    // dockerd without experimental features answers the same.
    if q.bool("squash") {
        return Err(ApiError::bad_request(
            "squash is only supported with experimental mode",
        ));
    }
    let build_args: BTreeMap<String, Option<String>> = json_map(q, "buildargs")?;
    let labels: BTreeMap<String, String> = json_map(q, "labels")?;
    let network_mode = q.str("networkmode");
    let extra_hosts: Vec<String> = q
        .all("extrahosts")
        .into_iter()
        .flat_map(|v| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .collect();
    let run_host_config = HostConfig {
        network_mode: Some(network_mode).filter(|m| !m.is_empty() && m != "default"),
        extra_hosts: Some(extra_hosts).filter(|h| !h.is_empty()),
        shm_size: int(q, "shmsize")?,
        memory: int(q, "memory")?,
        memory_swap: int(q, "memswap")?,
        cpu_shares: int(q, "cpushares")?,
        cpu_period: int(q, "cpuperiod")?,
        cpu_quota: int(q, "cpuquota")?,
        cpuset_cpus: Some(q.str("cpusetcpus")).filter(|c| !c.is_empty()),
        ..Default::default()
    };
    let registry_auth = req
        .headers()
        .get("x-registry-config")
        .and_then(|v| v.to_str().ok())
        .map(RegistryAuth::configs_from_header)
        .unwrap_or_default();
    let rm = q.get("rm").map(crate::query::parse_bool).unwrap_or(true);
    Ok(BuildOptions {
        dockerfile: q.str("dockerfile"),
        tags: q.all("t").into_iter().filter(|t| !t.is_empty()).collect(),
        build_args,
        labels,
        target: q.str("target"),
        no_cache: q.bool("nocache"),
        cache_from: json_map(q, "cachefrom")?,
        rm,
        force_rm: q.bool("forcerm"),
        quiet: q.bool("q"),
        pull: q.bool("pull"),
        platform: q.str("platform"),
        run_host_config,
        registry_auth,
    })
}

async fn build(State(engine): State<AppState>, req: Request) -> ApiResult<Response> {
    let q = QueryPairs::from(&req)?;
    let opts = options(&q, &req)?;
    // Tags are checked before the (maybe large) context is read.
    for t in &opts.tags {
        berth_engine::images::Reference::parse_tagged(t)
            .map_err(|e| ApiError::bad_request(format!("invalid tag {t:?}: {e}")))?;
    }
    let body = body_reader(req.into_body());
    Ok(progress_stream(move |p| async move { engine.builder.build(body, opts, p).await }).await)
}

async fn prune(State(engine): State<AppState>, req: Request) -> ApiResult<Response> {
    let q = QueryPairs::from(&req)?;
    let filters = Filters::parse(q.get("filters"))?;
    filters.validate(&[
        "until",
        "label",
        "label!",
        "type",
        "id",
        "parent",
        "private",
        "shared",
        "inuse",
        "description",
    ])?;
    let report = engine.builder.prune(q.bool("all")).await?;
    Ok(Json(report).into_response())
}
