//! `/containers/...`: create, list, inspect, lifecycle, wait, rename, prune; the
//! streaming endpoints live in `streams.rs`, the file ones in `files.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use berth_engine::containers::{
    AttachOpts, Container, ContainerRecord, CreateRequest, Status, WaitCondition,
};
use berth_engine::logs::{LogEntry, ReadOpts, Source};
use bollard_stubs::models::{
    ContainerCreateResponse, ContainerInspectResponse, ContainerPruneResponse, ContainerState,
    ContainerStateStatusEnum, ContainerSummary, ContainerSummaryHostConfig,
    ContainerSummaryNetworkSettings, ContainerSummaryStateEnum, ContainerWaitExitError,
    ContainerWaitResponse, DriverData, HealthStatusEnum, HealthcheckResult, MountPoint,
};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{ApiError, ApiResult};
use crate::hijack::{self, frame, stream_content_type, wants_upgrade, DetachKeys};
use crate::query::{parse_bool, Filters, JsonBody, Q};
use crate::version::ApiVersion;
use crate::AppState;
use berth_container_create::body::Decoded;

mod files;
mod list;
mod streams;
use files::*;
use list::*;
pub use list::{disk_usage_summary, human_duration, status_string};
pub use streams::parse_size;
use streams::*;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/containers/create", post(create))
        .route("/containers/json", get(list))
        .route("/containers/prune", post(prune))
        .route("/containers/{id}/json", get(inspect))
        .route("/containers/{id}/start", post(start))
        .route("/containers/{id}/stop", post(stop))
        .route("/containers/{id}/restart", post(restart))
        .route("/containers/{id}/kill", post(kill))
        .route("/containers/{id}/wait", post(wait))
        .route("/containers/{id}/attach", post(attach))
        .route("/containers/{id}/logs", get(logs))
        .route("/containers/{id}/resize", post(resize))
        .route("/containers/{id}/top", get(top))
        .route("/containers/{id}/stats", get(stats))
        .route("/containers/{id}/pause", post(pause))
        .route("/containers/{id}/unpause", post(unpause))
        .route("/containers/{id}/rename", post(rename))
        .route("/containers/{id}", delete(remove))
        // `docker rm --link /web/db` sends the link's name unescaped: two segments.
        .route("/containers/{id}/{alias}", delete(remove_link))
        .route(
            "/containers/{id}/archive",
            get(archive_get).head(archive_head).put(archive_put),
        )
        .route("/containers/{id}/export", get(export))
        .route("/containers/{id}/changes", get(changes))
        .route("/commit", post(commit))
}

fn opt_bool(v: &Option<String>) -> bool {
    v.as_deref().map(parse_bool).unwrap_or(false)
}

#[derive(Deserialize)]
struct CreateQuery {
    name: Option<String>,
    #[allow(dead_code)]
    platform: Option<String>,
}

async fn create(
    State(engine): State<AppState>,
    Q(q): Q<CreateQuery>,
    JsonBody(raw): JsonBody<serde_json::Value>,
) -> ApiResult<Response> {
    let Decoded { body, isolation } = berth_container_create::body::decode(raw)?;
    let (id, warnings) = engine
        .containers
        .create(CreateRequest {
            name: q.name,
            body,
            isolation,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ContainerCreateResponse { id, warnings }),
    )
        .into_response())
}

fn container(engine: &AppState, id: &str) -> ApiResult<Arc<Container>> {
    Ok(engine.containers.get(id)?)
}

async fn inspect(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let c = container(&engine, &id)?;
    let r = c.record();
    let dir = engine.config.data_root.join("containers").join(&r.id);
    let exec_ids: Vec<String> = engine.containers.exec_ids(&r.id);
    let s = &r.state;
    let mut graph = HashMap::new();
    if r.storage == "overlay" {
        graph.insert(
            "UpperDir".to_string(),
            dir.join("upper").display().to_string(),
        );
        graph.insert(
            "WorkDir".to_string(),
            dir.join("work").display().to_string(),
        );
    }
    let resp = ContainerInspectResponse {
        id: Some(r.id.clone()),
        created: Some(r.created.clone()),
        path: Some(r.path.clone()),
        args: Some(r.args.clone()),
        state: Some(ContainerState {
            status: Some(match s.status {
                Status::Created => ContainerStateStatusEnum::CREATED,
                Status::Running => ContainerStateStatusEnum::RUNNING,
                Status::Paused => ContainerStateStatusEnum::PAUSED,
                Status::Restarting => ContainerStateStatusEnum::RESTARTING,
                Status::Removing => ContainerStateStatusEnum::REMOVING,
                Status::Exited => ContainerStateStatusEnum::EXITED,
                Status::Dead => ContainerStateStatusEnum::DEAD,
            }),
            running: Some(s.status.is_running()),
            paused: Some(s.status == Status::Paused),
            restarting: Some(s.status == Status::Restarting),
            oom_killed: Some(s.oom_killed),
            dead: Some(s.status == Status::Dead),
            pid: Some(s.pid as i64),
            exit_code: Some(s.exit_code),
            error: Some(s.error.clone()),
            started_at: Some(s.started_at.clone()),
            finished_at: Some(s.finished_at.clone()),
            health: s.health.as_ref().map(|h| bollard_stubs::models::Health {
                status: Some(match h.status.as_str() {
                    "healthy" => HealthStatusEnum::HEALTHY,
                    "unhealthy" => HealthStatusEnum::UNHEALTHY,
                    _ => HealthStatusEnum::STARTING,
                }),
                failing_streak: Some(h.failing_streak as i64),
                log: Some(
                    h.log
                        .iter()
                        .map(|l| HealthcheckResult {
                            start: Some(l.start.clone()),
                            end: Some(l.end.clone()),
                            exit_code: Some(l.exit_code),
                            output: Some(l.output.clone()),
                        })
                        .collect(),
                ),
            }),
        }),
        image: Some(r.image_id.clone()),
        resolv_conf_path: Some(etc_path(&engine, &r, "resolv.conf")),
        hostname_path: Some(etc_path(&engine, &r, "hostname")),
        hosts_path: Some(etc_path(&engine, &r, "hosts")),
        log_path: Some(r.log_path.clone()),
        name: Some(format!("/{}", r.name)),
        restart_count: Some(s.restart_count),
        driver: Some(r.storage.clone()),
        platform: Some("linux".into()),
        mount_label: Some(String::new()),
        process_label: Some(String::new()),
        app_armor_profile: Some(String::new()),
        exec_ids: (!exec_ids.is_empty()).then_some(exec_ids),
        host_config: Some({
            let mut hc = r.host_config.clone();
            hc.isolation = None;
            hc
        }),
        graph_driver: Some(DriverData {
            name: r.storage.clone(),
            data: graph,
        }),
        mounts: Some(mount_points(&r)),
        config: Some(r.config.clone()),
        ..Default::default()
    };
    let mut v = serde_json::to_value(&resp).map_err(|e| ApiError::internal(e.to_string()))?;
    v["NetworkSettings"] = super::networks::network_settings_json(&engine, &r);
    let runtime = match r.isolation {
        berth_engine::containers::record::Isolation::Process => "runc",
        berth_engine::containers::record::Isolation::Microvm => "microvm",
    };
    crate::zero_values::container(&mut v, runtime);
    if let Some(details) = engine.containers.isolation_details(&r) {
        // The API's Isolation enum (default|process|hyperv) has no `microvm`, and typed
        // clients reject unknown values: hypervisor isolation is `hyperv` there.
        v["HostConfig"]["Isolation"] = "hyperv".into();
        // berth's own key: the microVM's hypervisor, guest kernel, vCPUs and memory.
        v["MicroVM"] = details;
    }
    Ok(Json(v))
}

async fn start(State(engine): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let c = container(&engine, &id)?;
    engine.containers.start(&c).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct StopQuery {
    t: Option<i64>,
    signal: Option<String>,
}

async fn stop(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<StopQuery>,
) -> ApiResult<StatusCode> {
    let c = container(&engine, &id)?;
    engine.containers.stop(&c, q.signal.as_deref(), q.t).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restart(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<StopQuery>,
) -> ApiResult<StatusCode> {
    let c = container(&engine, &id)?;
    engine
        .containers
        .restart(&c, q.signal.as_deref(), q.t)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct KillQuery {
    signal: Option<String>,
}

async fn kill(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<KillQuery>,
) -> ApiResult<StatusCode> {
    let c = container(&engine, &id)?;
    engine
        .containers
        .kill(&c, q.signal.as_deref().unwrap_or("SIGKILL"))
        .await
        .map_err(|e| match e {
            // dockerd names the container as the request did.
            berth_engine::Error::Conflict(m) => {
                berth_engine::Error::Conflict(format!("Cannot kill container: {id}: {m}"))
            }
            e => e,
        })?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct WaitQuery {
    condition: Option<String>,
}

/// Headers go out at once (the CLI starts the container only after they arrive);
/// the body follows when the condition is met.
async fn wait(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<WaitQuery>,
) -> ApiResult<Response> {
    let cond = WaitCondition::parse(q.condition.as_deref().unwrap_or(""))?;
    let c = container(&engine, &id)?;
    let fut = engine.containers.wait(&c, cond);
    let body = futures::stream::once(async move {
        let n = fut.await;
        let resp = ContainerWaitResponse {
            status_code: n.code,
            error: n
                .error
                .filter(|e| !e.is_empty())
                .map(|m| ContainerWaitExitError { message: Some(m) }),
        };
        let mut v = serde_json::to_value(&resp).unwrap_or_default();
        crate::zero_values::wait(&mut v);
        let mut v = serde_json::to_vec(&v).unwrap_or_default();
        v.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(v))
    });
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

async fn pause(State(engine): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let c = container(&engine, &id)?;
    engine.containers.pause(&c).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unpause(State(engine): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let c = container(&engine, &id)?;
    engine.containers.unpause(&c).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct RenameQuery {
    name: Option<String>,
}

async fn rename(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<RenameQuery>,
) -> ApiResult<StatusCode> {
    let c = container(&engine, &id)?;
    let name = q
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("Neither old nor new names may be empty"))?;
    engine.containers.rename(&c, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct RemoveQuery {
    force: Option<String>,
    v: Option<String>,
    link: Option<String>,
}

async fn remove_link(
    State(engine): State<AppState>,
    Path((linker, alias)): Path<(String, String)>,
    Q(q): Q<RemoveQuery>,
) -> ApiResult<StatusCode> {
    if !opt_bool(&q.link) {
        return Err(ApiError::not_found(format!(
            "page not found: /containers/{linker}/{alias}"
        )));
    }
    engine
        .containers
        .remove_link(&format!("{linker}/{alias}"))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<RemoveQuery>,
) -> ApiResult<StatusCode> {
    if opt_bool(&q.link) {
        engine.containers.remove_link(&id)?;
        return Ok(StatusCode::NO_CONTENT);
    }
    let c = container(&engine, &id)?;
    engine
        .containers
        .remove(&c, opt_bool(&q.force), opt_bool(&q.v))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct PruneQuery {
    filters: Option<String>,
}

async fn prune(
    State(engine): State<AppState>,
    Q(q): Q<PruneQuery>,
) -> ApiResult<Json<ContainerPruneResponse>> {
    let filters = Filters::parse(q.filters.as_deref())?;
    filters.validate(&["until", "label", "label!"])?;
    let until = match filters.get("until").first() {
        Some(u) => Some(crate::query::parse_timestamp(u)?),
        None => None,
    };
    let f2 = filters.clone();
    let (deleted, space) = engine
        .containers
        .prune(move |r| {
            let labels = r.config.labels.clone().unwrap_or_default();
            let too_new = until.is_some_and(|u| {
                berth_engine::fsutil::parse_rfc3339_utc(&r.created).is_some_and(|c| c > u as i128)
            });
            too_new || f2.prune_excludes(&labels)
        })
        .await;
    Ok(Json(ContainerPruneResponse {
        containers_deleted: Some(deleted),
        space_reclaimed: Some(space as i64),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(
            human_duration(Duration::from_millis(10)),
            "Less than a second"
        );
        assert_eq!(human_duration(Duration::from_secs(1)), "1 second");
        assert_eq!(human_duration(Duration::from_secs(59)), "59 seconds");
        assert_eq!(human_duration(Duration::from_secs(60)), "About a minute");
        assert_eq!(human_duration(Duration::from_secs(3000)), "50 minutes");
        assert_eq!(human_duration(Duration::from_secs(3600)), "About an hour");
        assert_eq!(human_duration(Duration::from_secs(3 * 86400)), "3 days");
    }
}
