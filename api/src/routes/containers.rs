//! `/containers/...`: create, list, inspect, lifecycle, wait, attach, logs, top,
//! stats, resize, rename, prune.

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
    ContainerCreateBody, ContainerInspectResponse, ContainerState, ContainerStateStatusEnum,
    ContainerSummary, ContainerSummaryHostConfig, ContainerSummaryNetworkSettings,
    ContainerSummaryStateEnum, DriverData, HealthStatusEnum, HealthcheckResult, MountPoint,
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
    JsonBody(mut raw): JsonBody<serde_json::Value>,
) -> ApiResult<Response> {
    // Isolation is taken out before model parsing: the model's enum only knows Windows
    // values, and we add `process`/`microvm`.
    let isolation = raw
        .get_mut("HostConfig")
        .and_then(|h| h.as_object_mut())
        .and_then(|h| h.remove("Isolation"))
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let body: ContainerCreateBody = serde_json::from_value(raw)
        .map_err(|e| ApiError::bad_request(format!("invalid container config: {e}")))?;
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
        Json(serde_json::json!({ "Id": id, "Warnings": warnings })),
    )
        .into_response())
}

/// go-units HumanDuration, as in `docker ps` Status strings.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 1 {
        return "Less than a second".into();
    }
    if secs == 1 {
        return "1 second".into();
    }
    if secs < 60 {
        return format!("{secs} seconds");
    }
    let mins = secs / 60;
    if mins == 1 {
        return "About a minute".into();
    }
    if mins < 60 {
        return format!("{mins} minutes");
    }
    let hours = (d.as_secs_f64() / 3600.0 + 0.5) as u64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", hours / 24 / 365)
}

fn since(ts: &str) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i128;
    let t = berth_engine::fsutil::parse_rfc3339_utc(ts).unwrap_or(now);
    Duration::from_nanos((now - t).max(0) as u64)
}

fn unix_secs(ts: &str) -> i64 {
    berth_engine::fsutil::parse_rfc3339_utc(ts)
        .map(|n| (n / 1_000_000_000) as i64)
        .unwrap_or(0)
}

/// Docker's `Status` column.
pub fn status_string(r: &ContainerRecord) -> String {
    let s = &r.state;
    match s.status {
        Status::Running => {
            let health = match s.health.as_ref().map(|h| h.status.as_str()) {
                Some("starting") => " (health: starting)",
                Some("healthy") => " (healthy)",
                Some("unhealthy") => " (unhealthy)",
                _ => "",
            };
            format!("Up {}{health}", human_duration(since(&s.started_at)))
        }
        Status::Paused => format!("Up {} (Paused)", human_duration(since(&s.started_at))),
        Status::Restarting => format!(
            "Restarting ({}) {} ago",
            s.exit_code,
            human_duration(since(&s.finished_at))
        ),
        Status::Removing => "Removal In Progress".into(),
        Status::Dead => "Dead".into(),
        Status::Created => "Created".into(),
        Status::Exited => {
            if s.finished_at == berth_engine::containers::record::ZERO_TIME {
                String::new()
            } else {
                format!(
                    "Exited ({}) {} ago",
                    s.exit_code,
                    human_duration(since(&s.finished_at))
                )
            }
        }
    }
}

fn mount_points(r: &ContainerRecord) -> Vec<MountPoint> {
    r.mounts
        .iter()
        .map(|m| MountPoint {
            typ: Some(m.kind.clone()),
            name: (!m.name.is_empty()).then(|| m.name.clone()),
            source: Some(m.source.clone()),
            destination: Some(m.destination.clone()),
            driver: (!m.driver.is_empty()).then(|| m.driver.clone()),
            mode: Some(m.options.clone()),
            rw: Some(m.rw),
            propagation: Some(if m.kind == "bind" {
                "rprivate".into()
            } else {
                String::new()
            }),
        })
        .collect()
}

fn command_string(r: &ContainerRecord) -> String {
    std::iter::once(r.path.as_str())
        .chain(r.args.iter().map(|s| s.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// An engine-owned /etc file of the container (empty until its first start writes it).
fn etc_path(engine: &AppState, r: &ContainerRecord, name: &str) -> String {
    let p = engine
        .config
        .data_root
        .join("containers")
        .join(&r.id)
        .join(name);
    if p.exists() {
        p.display().to_string()
    } else {
        String::new()
    }
}

fn summary(engine: &AppState, r: &ContainerRecord) -> ContainerSummary {
    let net = super::networks::container_net(engine, r);
    ContainerSummary {
        id: Some(r.id.clone()),
        names: Some(vec![format!("/{}", r.name)]),
        image: Some(r.image_ref.clone()),
        image_id: Some(r.image_id.clone()),
        command: Some(command_string(r)),
        created: Some(unix_secs(&r.created)),
        ports: Some(net.summary_ports),
        labels: Some(r.config.labels.clone().unwrap_or_default()),
        state: Some(match r.state.status {
            Status::Created => ContainerSummaryStateEnum::CREATED,
            Status::Running => ContainerSummaryStateEnum::RUNNING,
            Status::Paused => ContainerSummaryStateEnum::PAUSED,
            Status::Restarting => ContainerSummaryStateEnum::RESTARTING,
            Status::Removing => ContainerSummaryStateEnum::REMOVING,
            Status::Exited => ContainerSummaryStateEnum::EXITED,
            Status::Dead => ContainerSummaryStateEnum::DEAD,
        }),
        status: Some(status_string(r)),
        host_config: Some(ContainerSummaryHostConfig {
            network_mode: r.host_config.network_mode.clone(),
            annotations: None,
        }),
        network_settings: Some(ContainerSummaryNetworkSettings {
            networks: Some(net.networks),
        }),
        mounts: Some(mount_points(r)),
        ..Default::default()
    }
}

#[derive(Deserialize)]
struct ListQuery {
    all: Option<String>,
    limit: Option<i64>,
    #[allow(dead_code)]
    size: Option<String>,
    filters: Option<String>,
}

fn matches_filters(f: &Filters, r: &ContainerRecord, all: &[ContainerRecord]) -> bool {
    let any = |key: &str, pred: &dyn Fn(&str) -> bool| {
        let v = f.get(key);
        v.is_empty() || v.iter().any(|x| pred(x))
    };
    let created_of = |name: &str| {
        all.iter()
            .find(|o| o.id.starts_with(name) || o.name == name.trim_start_matches('/'))
            .map(|o| o.created.clone())
    };
    any("id", &|x| r.id.starts_with(x))
        && any("name", &|x| r.name.contains(x.trim_start_matches('/')))
        && any("status", &|x| x == r.state.status.as_str())
        && any("exited", &|x| {
            r.state.status == Status::Exited && x.parse::<i64>().ok() == Some(r.state.exit_code)
        })
        && any("ancestor", &|x| {
            r.image_ref == x
                || r.image_id.starts_with(x)
                || r.image_id.trim_start_matches("sha256:").starts_with(x)
        })
        && any("isolation", &|x| x == r.isolation.as_str())
        && any("health", &|x| {
            let status = match &r.state.health {
                Some(h) if r.state.status.is_running() => h.status.as_str(),
                _ => "none",
            };
            x == status
        })
        && any("before", &|x| created_of(x).is_some_and(|c| r.created < c))
        && any("since", &|x| created_of(x).is_some_and(|c| r.created > c))
        && any("volume", &|x| {
            r.mounts.iter().any(|m| m.name == x || m.destination == x)
        })
        && any("network", &|x| {
            r.networks
                .iter()
                .any(|a| a.network_name == x || a.network_id.starts_with(x))
                || r.host_config.network_mode.as_deref() == Some(x)
        })
        && any("expose", &|x| {
            let key = if x.contains('/') {
                x.to_string()
            } else {
                format!("{x}/tcp")
            };
            r.config
                .exposed_ports
                .as_ref()
                .is_some_and(|p| p.contains(&key))
        })
        && f.match_labels("label", &r.config.labels.clone().unwrap_or_default())
}

async fn list(
    State(engine): State<AppState>,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Vec<ContainerSummary>>> {
    let filters = Filters::parse(q.filters.as_deref())?;
    filters.validate(&[
        "ancestor",
        "before",
        "expose",
        "exited",
        "health",
        "id",
        "isolation",
        "is-task",
        "label",
        "name",
        "network",
        "publish",
        "since",
        "status",
        "volume",
    ])?;
    for s in filters.get("status") {
        if ![
            "created",
            "restarting",
            "running",
            "removing",
            "paused",
            "exited",
            "dead",
        ]
        .contains(&s.as_str())
        {
            return Err(ApiError::bad_request(format!(
                "invalid filter 'status={s}'"
            )));
        }
    }
    let all = opt_bool(&q.all)
        || q.limit.is_some_and(|l| l > 0)
        || filters.contains_key("status")
        || filters.contains_key("exited");
    let mut recs: Vec<ContainerRecord> =
        engine.containers.all().iter().map(|c| c.record()).collect();
    recs.sort_by(|a, b| b.created.cmp(&a.created));
    let snapshot = recs.clone();
    let mut out: Vec<ContainerSummary> = recs
        .iter()
        .filter(|r| all || r.state.status.is_running())
        .filter(|r| matches_filters(&filters, r, &snapshot))
        .map(|r| summary(&engine, r))
        .collect();
    if let Some(l) = q.limit.filter(|l| *l > 0) {
        out.truncate(l as usize);
    }
    Ok(Json(out))
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
        .await?;
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
        let err = n
            .error
            .filter(|e| !e.is_empty())
            .map(|m| serde_json::json!({ "Message": m }));
        let mut v = serde_json::to_vec(&serde_json::json!({ "StatusCode": n.code, "Error": err }))
            .unwrap_or_default();
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

#[derive(Deserialize)]
struct AttachQuery {
    stream: Option<String>,
    stdin: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
    logs: Option<String>,
    #[serde(rename = "detachKeys")]
    detach_keys: Option<String>,
}

fn log_frame(e: &LogEntry, tty: bool, timestamps: bool) -> Bytes {
    let mut payload = Vec::with_capacity(e.line.len() + 32);
    if timestamps {
        payload.extend_from_slice(
            berth_engine::fsutil::rfc3339_nanos(
                UNIX_EPOCH + Duration::from_nanos(e.time_nano.max(0) as u64),
            )
            .as_bytes(),
        );
        payload.push(b' ');
    }
    payload.extend_from_slice(&e.line);
    if tty {
        Bytes::from(payload)
    } else {
        frame(if e.source == Source::Stderr { 2 } else { 1 }, &payload)
    }
}

async fn attach(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Extension(ver): Extension<ApiVersion>,
    Q(q): Q<AttachQuery>,
    mut req: Request,
) -> ApiResult<Response> {
    let c = container(&engine, &id)?;
    let rec = c.record();
    if matches!(rec.state.status, Status::Paused) {
        return Err(ApiError::conflict(format!(
            "container {} is paused, unpause the container before attach",
            rec.id
        )));
    }
    let tty = rec.config.tty.unwrap_or(false);
    let want_stdin = opt_bool(&q.stdin) && rec.config.open_stdin.unwrap_or(false);
    let stream = opt_bool(&q.stream);
    let opts = AttachOpts {
        stdin: want_stdin,
        stdout: opt_bool(&q.stdout),
        stderr: opt_bool(&q.stderr),
    };
    let detach = DetachKeys::parse(q.detach_keys.as_deref()).map_err(ApiError::bad_request)?;
    // Register before responding: output from the first instant of the run is kept.
    let attachment = stream.then(|| engine.containers.attach(&c, opts));
    let replay = if opt_bool(&q.logs) {
        Some(engine.containers.logs(&c, ReadOpts::default()).ok())
    } else {
        None
    };
    let ct = stream_content_type(tty, ver);
    let stdin_once = rec.config.stdin_once.unwrap_or(false);

    if !wants_upgrade(&req) {
        // Non-upgraded attach: stream output only, as Docker's 200 raw-stream.
        let body = async_stream(replay.flatten(), attachment, tty, opts);
        let mut resp = Response::new(Body::from_stream(body));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(hijack::RAW));
        return Ok(resp);
    }
    let (resp, pending) = hijack::upgrade(&mut req, ct)
        .ok_or_else(|| ApiError::bad_request("connection cannot be upgraded"))?;
    let engine2 = engine.clone();
    tokio::spawn(async move {
        let Some(io) = pending.established().await else {
            return;
        };
        let (mut rd, mut wr) = tokio::io::split(io);
        let (detach_tx, mut detach_rx) = tokio::sync::oneshot::channel::<()>();
        if opts.stdin {
            let c2 = c.clone();
            let mut detach = detach;
            tokio::spawn(async move {
                let Some(mut stdin) = engine2.containers.stdin_writer(&c2).await else {
                    return;
                };
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            // Half-close: end stdin for StdinOnce (non-tty) containers.
                            if stdin_once && !tty {
                                engine2.containers.close_stdin(&c2).await;
                            }
                            return;
                        }
                        Ok(n) => {
                            let (data, det) = detach.feed(&buf[..n]);
                            if !data.is_empty() && stdin.write(&data).await.is_err() {
                                return;
                            }
                            if det {
                                let _ = detach_tx.send(());
                                return;
                            }
                        }
                    }
                }
            });
        }
        if let Some(Some(mut rx)) = replay {
            while let Some(e) = rx.recv().await {
                if wr.write_all(&log_frame(&e, tty, false)).await.is_err() {
                    return;
                }
            }
        }
        if let Some(mut att) = attachment {
            loop {
                tokio::select! {
                    chunk = att.output.recv() => match chunk {
                        Some(ch) => {
                            let bytes = if tty { ch.data.clone() } else { frame(ch.stream.stdcopy_id(), &ch.data) };
                            if wr.write_all(&bytes).await.is_err() { break; }
                        }
                        None => break,
                    },
                    _ = &mut detach_rx => break,
                }
            }
        }
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    });
    Ok(resp)
}

fn async_stream(
    replay: Option<tokio::sync::mpsc::Receiver<LogEntry>>,
    attachment: Option<berth_engine::containers::Attachment>,
    tty: bool,
    _opts: AttachOpts,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let replay = futures::stream::iter(replay)
        .flat_map(tokio_stream::wrappers::ReceiverStream::new)
        .map(move |e| Ok(log_frame(&e, tty, false)));
    let live = futures::stream::iter(attachment).flat_map(move |mut a| {
        futures::stream::poll_fn(move |cx| a.output.poll_recv(cx)).map(move |ch| {
            Ok(if tty {
                ch.data.clone()
            } else {
                frame(ch.stream.stdcopy_id(), &ch.data)
            })
        })
    });
    replay.chain(live)
}

#[derive(Deserialize)]
struct LogsQuery {
    follow: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
    since: Option<String>,
    until: Option<String>,
    timestamps: Option<String>,
    tail: Option<String>,
}

async fn logs(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Extension(ver): Extension<ApiVersion>,
    Q(q): Q<LogsQuery>,
) -> ApiResult<Response> {
    let (want_out, want_err) = (opt_bool(&q.stdout), opt_bool(&q.stderr));
    if !want_out && !want_err {
        return Err(ApiError::bad_request(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    let c = container(&engine, &id)?;
    let tty = c.record().config.tty.unwrap_or(false);
    let ts = |v: &Option<String>| -> ApiResult<Option<i64>> {
        match v.as_deref().filter(|s| !s.is_empty() && *s != "0") {
            Some(s) => Ok(Some(crate::query::parse_timestamp(s)?)),
            None => Ok(None),
        }
    };
    let tail = match q.tail.as_deref() {
        None | Some("") | Some("all") => None,
        Some(n) => Some(
            n.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid tail value: {n}")))?
                .max(0) as usize,
        ),
    };
    let opts = ReadOpts {
        since_nano: ts(&q.since)?,
        until_nano: ts(&q.until)?,
        tail,
        follow: opt_bool(&q.follow).then(|| c.running_watch()),
    };
    let rx = engine.containers.logs(&c, opts)?;
    let timestamps = opt_bool(&q.timestamps);
    let body = tokio_stream::wrappers::ReceiverStream::new(rx)
        .filter(move |e| {
            futures::future::ready(match e.source {
                Source::Stdout => want_out,
                Source::Stderr => want_err,
            })
        })
        .map(move |e| log_frame(&e, tty, timestamps));
    let mut resp = Response::new(Body::from_stream(crate::stream::coalesce(body, 1024)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(stream_content_type(tty, ver)),
    );
    Ok(resp)
}

#[derive(Deserialize)]
struct ResizeQuery {
    h: Option<String>,
    w: Option<String>,
}

pub fn parse_size(q: &Option<String>, what: &str) -> ApiResult<u16> {
    let v = q.as_deref().unwrap_or("0");
    v.parse::<u16>()
        .map_err(|_| ApiError::bad_request(format!("invalid resize {what}: {v}")))
}

async fn resize(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<ResizeQuery>,
) -> ApiResult<StatusCode> {
    let (h, w) = (parse_size(&q.h, "height")?, parse_size(&q.w, "width")?);
    let c = container(&engine, &id)?;
    engine.containers.resize(&c, h, w).await?;
    Ok(StatusCode::OK)
}

async fn top(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let c = container(&engine, &id)?;
    let t = engine.containers.top(&c).await?;
    Ok(Json(
        serde_json::json!({ "Titles": t.titles, "Processes": t.processes }),
    ))
}

#[derive(Deserialize)]
struct StatsQuery {
    stream: Option<String>,
    #[serde(rename = "one-shot")]
    one_shot: Option<String>,
}

fn stats_json(
    rec: &ContainerRecord,
    s: Option<&berth_agent_protocol::Stats>,
    pre: Option<&berth_agent_protocol::Stats>,
) -> serde_json::Value {
    let read = berth_engine::fsutil::now_rfc3339();
    let cpu = |s: Option<&berth_agent_protocol::Stats>| match s {
        Some(s) => serde_json::json!({
            "cpu_usage": { "total_usage": s.cpu_usage_ns, "usage_in_kernelmode": s.cpu_system_ns, "usage_in_usermode": s.cpu_user_ns },
            "system_cpu_usage": s.system_cpu_usage_ns,
            "online_cpus": s.online_cpus,
            "throttling_data": { "periods": 0, "throttled_periods": 0, "throttled_time": 0 }
        }),
        None => serde_json::json!({ "cpu_usage": { "total_usage": 0 }, "throttling_data": {} }),
    };
    let mut v = serde_json::json!({
        "name": format!("/{}", rec.name),
        "id": rec.id,
        "read": read,
        "preread": if pre.is_some() { read.clone() } else { "0001-01-01T00:00:00Z".to_string() },
        "pids_stats": s.map(|s| serde_json::json!({ "current": s.pids_current, "limit": if s.pids_limit == 0 { u64::MAX } else { s.pids_limit } })).unwrap_or(serde_json::json!({})),
        "blkio_stats": { "io_service_bytes_recursive": null },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu(s),
        "precpu_stats": cpu(pre),
        "memory_stats": s.map(|s| serde_json::json!({
            "usage": s.memory_usage, "max_usage": s.memory_max_usage, "limit": s.memory_limit,
            "stats": { "cache": s.memory_cache, "total_inactive_file": s.memory_cache }
        })).unwrap_or(serde_json::json!({})),
        "networks": {}
    });
    crate::zero_values::stats(&mut v);
    v
}

async fn stats(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<StatsQuery>,
) -> ApiResult<Response> {
    let c = container(&engine, &id)?;
    let stream = q.stream.as_deref().map(parse_bool).unwrap_or(true);
    let one_shot = opt_bool(&q.one_shot);
    if !stream {
        let rec = c.record();
        let first = engine.containers.stats(&c).await?;
        let pre = if one_shot || first.is_none() {
            None
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let second = engine.containers.stats(&c).await?;
            return Ok(Json(stats_json(&rec, second.as_ref(), first.as_ref())).into_response());
        };
        return Ok(Json(stats_json(&rec, first.as_ref(), pre)).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<serde_json::Value>(4);
    tokio::spawn(async move {
        let mut prev: Option<berth_agent_protocol::Stats> = None;
        loop {
            let rec = c.record();
            let cur = engine.containers.stats(&c).await.ok().flatten();
            if tx
                .send(stats_json(&rec, cur.as_ref(), prev.as_ref()))
                .await
                .is_err()
            {
                return;
            }
            if cur.is_none()
                && !rec.state.status.is_running()
                && rec.state.status != Status::Created
            {
                // Docker keeps streaming zeros for stopped containers; a slower beat is enough.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            prev = cur;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Ok(crate::stream::json_stream(rx))
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

async fn remove(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<RemoveQuery>,
) -> ApiResult<StatusCode> {
    if opt_bool(&q.link) {
        return Err(ApiError::bad_request("Legacy links are not supported"));
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
) -> ApiResult<Json<serde_json::Value>> {
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
    Ok(Json(
        serde_json::json!({ "ContainersDeleted": deleted, "SpaceReclaimed": space }),
    ))
}

#[derive(Deserialize)]
struct ArchiveQuery {
    path: Option<String>,
    #[serde(rename = "noOverwriteDirNonDir")]
    no_overwrite_dir_non_dir: Option<String>,
}

fn archive_path(q: &ArchiveQuery) -> ApiResult<String> {
    q.path
        .clone()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad_request("Bad parameter: 'path' cannot be empty"))
}

fn stat_header(stat: &berth_engine::containers::archive::PathStat) -> HeaderValue {
    use base64::Engine as _;
    let json = serde_json::to_vec(stat).unwrap_or_default();
    HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(json))
        .unwrap_or(HeaderValue::from_static(""))
}

async fn archive_head(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<ArchiveQuery>,
) -> ApiResult<Response> {
    let c = container(&engine, &id)?;
    let stat = engine
        .containers
        .archive_stat(&c, &archive_path(&q)?)
        .await?;
    let mut resp = StatusCode::OK.into_response();
    resp.headers_mut()
        .insert("x-docker-container-path-stat", stat_header(&stat));
    Ok(resp)
}

async fn archive_get(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<ArchiveQuery>,
) -> ApiResult<Response> {
    let c = container(&engine, &id)?;
    let (stat, out) = engine
        .containers
        .archive_get(&c, &archive_path(&q)?)
        .await?;
    let body = tokio_util::io::ReaderStream::new(out);
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    resp.headers_mut()
        .insert("x-docker-container-path-stat", stat_header(&stat));
    Ok(resp)
}

async fn export(State(engine): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let c = container(&engine, &id)?;
    let out = engine.containers.export(&c).await?;
    let mut resp = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(out)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    Ok(resp)
}

async fn archive_put(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<ArchiveQuery>,
    req: Request,
) -> ApiResult<StatusCode> {
    let c = container(&engine, &id)?;
    let path = archive_path(&q)?;
    let body = req
        .into_body()
        .into_data_stream()
        .map(|r| r.map_err(|e| e.to_string()));
    engine
        .containers
        .archive_put(
            &c,
            &path,
            opt_bool(&q.no_overwrite_dir_non_dir),
            Box::pin(body),
        )
        .await?;
    Ok(StatusCode::OK)
}

async fn changes(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let c = container(&engine, &id)?;
    let list = engine.containers.changes(&c)?;
    Ok(Json(
        list.into_iter()
            .map(|(p, k)| serde_json::json!({ "Path": p, "Kind": k }))
            .collect(),
    ))
}

#[derive(Deserialize)]
struct CommitQuery {
    container: Option<String>,
    repo: Option<String>,
    tag: Option<String>,
    comment: Option<String>,
    author: Option<String>,
    pause: Option<String>,
}

async fn commit(
    State(engine): State<AppState>,
    Q(q): Q<CommitQuery>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let name = q
        .container
        .clone()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::bad_request("container name is required"))?;
    let c = container(&engine, &name)?;
    let config = if body.is_empty() {
        None
    } else {
        Some(
            serde_json::from_slice::<serde_json::Value>(&body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?,
        )
    };
    // The CLI sends each --change as its own `changes` value (a struct field would
    // refuse the repeats), docker-py one value with an instruction per line.
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("invalid query parameters: {e}")))?;
    let changes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "changes")
        .flat_map(|(_, c)| c.split('\n'))
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    let id = engine
        .containers
        .commit(
            &c,
            berth_engine::containers::CommitOptions {
                repo: q.repo,
                tag: q.tag,
                comment: q.comment.unwrap_or_default(),
                author: q.author.unwrap_or_default(),
                pause: q.pause.as_deref().map(parse_bool).unwrap_or(true),
                changes,
                config,
                replace_config: false,
                created_by: None,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "Id": id }))).into_response())
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
