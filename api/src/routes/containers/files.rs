//! Container files: archive (`docker cp`), export, changes (`docker diff`), commit.

use super::*;

#[derive(Deserialize)]
pub(super) struct ArchiveQuery {
    path: Option<String>,
    #[serde(rename = "noOverwriteDirNonDir")]
    no_overwrite_dir_non_dir: Option<String>,
}

pub(super) fn archive_path(q: &ArchiveQuery) -> ApiResult<String> {
    q.path
        .clone()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad_request("Bad parameter: 'path' cannot be empty"))
}

pub(super) fn stat_header(stat: &berth_engine::containers::archive::PathStat) -> HeaderValue {
    use base64::Engine as _;
    let json = serde_json::to_vec(stat).unwrap_or_default();
    HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(json))
        .unwrap_or(HeaderValue::from_static(""))
}

/// dockerd's missing-file 404 names the container as the request did (`id`: a name, a
/// full or a short id); the engine's names it by its name.
fn as_requested(e: berth_engine::Error, c: &Container, path: &str, id: &str) -> ApiError {
    use berth_engine::containers::archive::file_not_found;
    match e {
        berth_engine::Error::NotFound(m) if m == file_not_found(path, &c.name()).to_string() => {
            file_not_found(path, id).into()
        }
        e => e.into(),
    }
}

pub(super) async fn archive_head(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<ArchiveQuery>,
) -> ApiResult<Response> {
    let c = container(&engine, &id)?;
    let path = archive_path(&q)?;
    let stat = engine
        .containers
        .archive_stat(&c, &path)
        .await
        .map_err(|e| as_requested(e, &c, &path, &id))?;
    let mut resp = StatusCode::OK.into_response();
    resp.headers_mut()
        .insert("x-docker-container-path-stat", stat_header(&stat));
    Ok(resp)
}

pub(super) async fn archive_get(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<ArchiveQuery>,
) -> ApiResult<Response> {
    let c = container(&engine, &id)?;
    let path = archive_path(&q)?;
    let (stat, out) = engine
        .containers
        .archive_get(&c, &path)
        .await
        .map_err(|e| as_requested(e, &c, &path, &id))?;
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

pub(super) async fn export(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let c = container(&engine, &id)?;
    let out = engine.containers.export(&c).await?;
    let mut resp = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(out)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    Ok(resp)
}

pub(super) async fn archive_put(
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
        .await
        .map_err(|e| as_requested(e, &c, &path, &id))?;
    Ok(StatusCode::OK)
}

pub(super) async fn changes(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let c = container(&engine, &id)?;
    let list = engine.containers.changes(&c).await?;
    Ok(Json(
        list.into_iter()
            .map(|(p, k)| serde_json::json!({ "Path": p, "Kind": k }))
            .collect(),
    ))
}

#[derive(Deserialize)]
pub(super) struct CommitQuery {
    container: Option<String>,
    repo: Option<String>,
    tag: Option<String>,
    comment: Option<String>,
    author: Option<String>,
    pause: Option<String>,
}

pub(super) async fn commit(
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
                layer_tar: None,
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
