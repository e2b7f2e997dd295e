//! Image endpoints: list, inspect, history, tag, remove, prune, pull/import
//! (`/images/create`), push, load and save.
//!
//! Image names contain `/` (`127.0.0.1:5000/bb:1`), so everything under `/images/`
//! that is not a fixed path is routed through one wildcard and split on the verb
//! suffix (`/json`, `/history`, `/tag`, `/push`, `/get`).

use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_engine::images::{ImageStore, ImportOptions, ImportSource, ListOptions, RegistryAuth};
use bollard_stubs::models::ImageSummary;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::{ApiError, ApiResult};
use crate::query::{parse_bool, Filters, QueryPairs};
use crate::stream::{body_reader, progress_stream};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/images/json", get(list))
        .route("/images/create", post(create))
        .route("/images/load", post(load))
        .route("/images/get", get(save_many))
        .route("/images/prune", post(prune))
        .route(
            "/images/{*rest}",
            get(get_named).post(post_named).delete(delete_named),
        )
}

/// The request's API minor version (1.x), as the version layer recorded it.
fn api_minor(req: &Request) -> u32 {
    req.extensions()
        .get::<crate::version::ApiVersion>()
        .map(|v| v.0)
        .unwrap_or(crate::version::ApiVersion::DEFAULT.0)
}

fn store(state: &AppState) -> Arc<ImageStore> {
    state.images.clone()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> berth_engine::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::from)
}

pub(super) fn auth_from(headers: &HeaderMap) -> RegistryAuth {
    headers
        .get("x-registry-auth")
        .and_then(|v| v.to_str().ok())
        .map(RegistryAuth::from_header)
        .unwrap_or_default()
}

// ---- list / inspect / history ------------------------------------------------------

async fn list(State(state): State<AppState>, req: Request) -> ApiResult<Response> {
    let q = QueryPairs::from(&req)?;
    let filters = Filters::parse(q.get("filters"))?;
    filters.validate(&["dangling", "label", "before", "since", "reference", "until"])?;
    let dangling = match filters.get("dangling").as_slice() {
        [] => None,
        [v] if v == "true" || v == "1" => Some(true),
        [v] if v == "false" || v == "0" => Some(false),
        _ => {
            return Err(ApiError::bad_request(
                "invalid filter 'dangling': must be true or false",
            ))
        }
    };
    let opts = ListOptions {
        all: q.bool("all"),
        dangling,
        reference: filters.get("reference"),
        label: filters.get("label"),
        before: filters.get("before").into_iter().next(),
        since: filters.get("since").into_iter().next(),
        until: filters
            .get("until")
            .first()
            .map(|u| parse_until(u))
            .transpose()?,
    };
    let s = store(&state);
    let images: Vec<ImageSummary> = blocking(move || s.list(&opts))
        .await?
        .into_iter()
        .map(summary_model)
        .collect();
    let mut v = serde_json::to_value(images).map_err(|e| ApiError::internal(e.to_string()))?;
    for i in v.as_array_mut().into_iter().flatten() {
        crate::zero_values::image_summary(i, api_minor(&req));
    }
    Ok(Json(v).into_response())
}

/// The engine's row of `GET /images/json` (and of `system/df`'s `Images`) as the API model.
pub(super) fn summary_model(s: berth_engine::images::ImageSummary) -> ImageSummary {
    ImageSummary {
        id: s.id,
        parent_id: s.parent_id,
        repo_tags: s.repo_tags,
        repo_digests: s.repo_digests,
        created: s.created,
        size: s.size,
        shared_size: s.shared_size,
        labels: s.labels,
        containers: s.containers,
        manifests: None,
        descriptor: None,
    }
}

/// `until`: unix timestamp, RFC 3339 date, or a Go duration ago (`24h`, `10m`), in seconds.
fn parse_until(v: &str) -> ApiResult<i64> {
    let now = berth_engine::fsutil::now_nanos() as i128;
    berth_engine::fsutil::parse_docker_time(v, now)
        .map(|n| n.div_euclid(1_000_000_000) as i64)
        .ok_or_else(|| ApiError::bad_request(format!("invalid until value {v:?}")))
}

async fn get_named(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let s = store(&state);
    if let Some(name) = rest.strip_suffix("/json") {
        let name = name.to_string();
        let v = blocking(move || s.inspect(&name)).await?;
        let mut v = serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))?;
        crate::zero_values::image(&mut v, api_minor(&req));
        return Ok(Json(v).into_response());
    }
    if let Some(name) = rest.strip_suffix("/history") {
        let name = name.to_string();
        let v = blocking(move || s.history(&name)).await?;
        return Ok(Json(v).into_response());
    }
    if let Some(name) = rest.strip_suffix("/get") {
        let _ = req;
        return save(s, vec![name.to_string()]).await;
    }
    Err(ApiError::not_found("page not found"))
}

async fn post_named(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let q = QueryPairs::from(&req)?;
    let s = store(&state);
    if let Some(name) = rest.strip_suffix("/tag") {
        let name = name.to_string();
        let (repo, tag) = (q.str("repo"), q.str("tag"));
        if repo.is_empty() {
            return Err(ApiError::bad_request(
                "repository name must have at least one component",
            ));
        }
        blocking(move || s.tag(&name, &repo, &tag)).await?;
        return Ok(StatusCode::CREATED.into_response());
    }
    if let Some(name) = rest.strip_suffix("/push") {
        let name = name.to_string();
        let tag = q.str("tag");
        let auth = auth_from(req.headers());
        return Ok(
            progress_stream(move |p| async move { s.push(&name, &tag, &auth, p).await }).await,
        );
    }
    Err(ApiError::not_found("page not found"))
}

async fn delete_named(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let q = QueryPairs::from(&req)?;
    let (force, noprune) = (q.bool("force"), q.bool("noprune"));
    let s = store(&state);
    let items = blocking(move || s.remove(&name, force, noprune)).await?;
    Ok(Json(items).into_response())
}

async fn prune(State(state): State<AppState>, req: Request) -> ApiResult<Response> {
    let q = QueryPairs::from(&req)?;
    let filters = Filters::parse(q.get("filters"))?;
    filters.validate(&["dangling", "until", "label", "label!"])?;
    let dangling_only = match filters.get("dangling").first().map(String::as_str) {
        None => true,
        Some(v) => parse_bool(v),
    };
    let until = filters
        .get("until")
        .first()
        .map(|u| parse_until(u))
        .transpose()?;
    let (labels, not_labels) = (filters.get("label"), filters.get("label!"));
    let s = store(&state);
    let rep = blocking(move || s.prune(dangling_only, until, &labels, &not_labels)).await?;
    Ok(Json(rep).into_response())
}

// ---- pull / import / push / load / save ----------------------------------------------

async fn create(State(state): State<AppState>, req: Request) -> ApiResult<Response> {
    let q = QueryPairs::from(&req)?;
    let s = store(&state);
    let from_image = q.str("fromImage");
    let from_src = q.str("fromSrc");
    if !from_image.is_empty() {
        let tag = q.str("tag");
        let auth = auth_from(req.headers());
        return Ok(progress_stream(
            move |p| async move { s.pull(&from_image, &tag, &auth, p).await },
        )
        .await);
    }
    if from_src.is_empty() {
        return Err(ApiError::bad_request(
            "fromImage or fromSrc must be specified",
        ));
    }
    let opts = ImportOptions {
        repo: q.str("repo"),
        tag: q.str("tag"),
        message: q.str("message"),
        changes: q.all("changes"),
    };
    let src = if from_src == "-" {
        ImportSource::Body(Box::new(body_reader(req.into_body())))
    } else if from_src.starts_with("http://") || from_src.starts_with("https://") {
        ImportSource::Url(from_src)
    } else {
        ImportSource::Url(format!("http://{from_src}"))
    };
    Ok(progress_stream(move |p| async move { s.import(src, opts, p).await }).await)
}

async fn load(State(state): State<AppState>, req: Request) -> ApiResult<Response> {
    let s = store(&state);
    let body = body_reader(req.into_body());
    Ok(progress_stream(move |p| async move { s.load(body, p).await }).await)
}

async fn save_many(State(state): State<AppState>, req: Request) -> ApiResult<Response> {
    let q = QueryPairs::from(&req)?;
    let names = q.all("names");
    if names.is_empty() {
        return Err(ApiError::bad_request("no images specified"));
    }
    save(store(&state), names).await
}

/// A `Write` that feeds a streaming response body from a blocking thread.
struct ChanWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = Bytes::from(std::mem::take(&mut self.buf));
            self.tx.blocking_send(Ok(chunk)).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client disconnected")
            })?;
        }
        Ok(())
    }
}

async fn save(s: Arc<ImageStore>, names: Vec<String>) -> ApiResult<Response> {
    // Unknown names are a 404 before any byte is sent.
    {
        let (s, names) = (s.clone(), names.clone());
        blocking(move || names.iter().try_for_each(|n| s.resolve(n).map(|_| ()))).await?;
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let mut w = ChanWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let r = s
            .save(&names, &mut w)
            .and_then(|_| w.flush().map_err(Into::into));
        if let Err(e) = r {
            tracing::warn!(error = %e, "image save failed mid-stream");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_values() {
        assert_eq!(parse_until("1700000000").unwrap(), 1_700_000_000);
        assert_eq!(parse_until("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((parse_until("1h30m").unwrap() - (now - 5400)).abs() < 5);
        assert!(parse_until("soon").is_err());
    }
}
