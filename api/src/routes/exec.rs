//! `docker exec`: create, start (hijacked), resize, inspect.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use berth_engine::containers::{ExecConfig, ExecStartOpts};
use bollard_stubs::models::{ExecInspectResponse, ProcessConfig};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{ApiError, ApiResult};
use crate::hijack::{self, frame, stream_content_type};
use crate::query::{JsonBody, Q};
use crate::version::ApiVersion;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/containers/{id}/exec", post(create))
        .route("/exec/{id}/start", post(start))
        .route("/exec/{id}/resize", post(resize))
        .route("/exec/{id}/json", get(inspect))
}

async fn create(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    JsonBody(cfg): JsonBody<ExecConfig>,
) -> ApiResult<Response> {
    let c = engine.containers.get(&id)?;
    let eid = engine.containers.exec_create(&c, cfg)?;
    // Not `IdResponse`: it only reads `Id` (serde alias) and writes `id`, and clients such
    // as docker-py index `Id`.
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "Id": eid }))).into_response())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct StartBody {
    detach: bool,
    tty: Option<bool>,
    console_size: Option<Vec<u16>>,
}

async fn start(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Extension(ver): Extension<ApiVersion>,
    mut req: Request,
) -> ApiResult<Response> {
    let upgrade = hijack::wants_upgrade(&req);
    let bytes = axum::body::to_bytes(std::mem::take(req.body_mut()), 1 << 20)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("failed to read request body: {e}"),
            )
        })?;
    let body: StartBody = if bytes.is_empty() {
        StartBody::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?
    };
    let e = engine.containers.exec_get(&id)?;
    let console = body
        .console_size
        .as_ref()
        .filter(|v| v.len() == 2)
        .map(|v| (v[0], v[1]));
    let started = engine
        .containers
        .exec_start(
            &e,
            ExecStartOpts {
                tty: body.tty,
                console_size: console,
            },
        )
        .await?;
    let tty = started.tty;
    if body.detach {
        // Output is discarded for detached execs; keep draining so the process never blocks.
        if let Some(mut out) = started.output {
            tokio::spawn(async move { while out.recv().await.is_some() {} });
        }
        return Ok(StatusCode::OK.into_response());
    }
    let ct = stream_content_type(tty, ver);
    let (resp, pending) = if upgrade {
        hijack::upgrade(&mut req, ct)
            .ok_or_else(|| ApiError::bad_request("connection cannot be upgraded"))?
    } else {
        return Err(ApiError::bad_request(
            "exec start without detach needs an upgraded connection",
        ));
    };
    let engine2 = engine.clone();
    tokio::spawn(async move {
        let Some(io) = pending.established().await else {
            return;
        };
        let (mut rd, mut wr) = tokio::io::split(io);
        if let Some(mut stdin) = started.stdin {
            let e2 = e.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            engine2.containers.exec_close_stdin(&e2).await;
                            return;
                        }
                        Ok(n) => {
                            if stdin.write(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        if let Some(msg) = started.error {
            let line = format!("{msg}\r\n");
            let bytes = if tty {
                bytes::Bytes::from(line)
            } else {
                frame(1, line.as_bytes())
            };
            let _ = wr.write_all(&bytes).await;
        }
        if let Some(mut out) = started.output {
            while let Some(ch) = out.recv().await {
                let bytes = if tty {
                    ch.data.clone()
                } else {
                    frame(ch.stream.stdcopy_id(), &ch.data)
                };
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        }
        // The CLI inspects the exec right after EOF: the exit code must be recorded first.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), e.wait_done()).await;
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    });
    Ok(resp)
}

#[derive(Deserialize)]
struct ResizeQuery {
    h: Option<String>,
    w: Option<String>,
}

async fn resize(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<ResizeQuery>,
) -> ApiResult<StatusCode> {
    let h = super::containers::parse_size(&q.h, "height")?;
    let w = super::containers::parse_size(&q.w, "width")?;
    let e = engine.containers.exec_get(&id)?;
    engine.containers.exec_resize(&e, h, w).await?;
    Ok(StatusCode::OK)
}

async fn inspect(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let e = engine.containers.exec_get(&id)?;
    let st = e.state();
    let cmd = e.config.cmd.clone().unwrap_or_default();
    let resp = ExecInspectResponse {
        id: Some(e.id.clone()),
        container_id: Some(e.container_id.clone()),
        running: Some(st.running),
        exit_code: st.exit_code,
        pid: Some(st.pid.into()),
        open_stdin: Some(e.config.attach_stdin),
        open_stdout: Some(e.config.attach_stdout),
        open_stderr: Some(e.config.attach_stderr),
        can_remove: Some(false),
        detach_keys: Some(e.config.detach_keys.clone().unwrap_or_default()),
        process_config: Some(ProcessConfig {
            entrypoint: Some(cmd.first().cloned().unwrap_or_default()),
            arguments: Some(cmd.iter().skip(1).cloned().collect()),
            privileged: Some(e.config.privileged),
            tty: Some(e.config.tty),
            user: Some(e.config.user.clone().unwrap_or_default()),
        }),
    };
    let mut v = serde_json::to_value(&resp).map_err(|e| ApiError::internal(e.to_string()))?;
    crate::zero_values::exec(&mut v);
    Ok(Json(v))
}
