//! `/plugins`: Docker's plugin API serving berth's WASM plugins (`docker plugin ls,
//! inspect, install, create, push, enable, disable, set, upgrade, rm`). Plugin names may hold `/`
//! (`127.0.0.1:5000/my-log:latest`), so the per-plugin verbs share one wildcard
//! route and are told apart by their last segment.

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_engine::plugins::{PluginView, Privilege};
use bollard_stubs::models::{
    Plugin, PluginConfig, PluginConfigArgs, PluginConfigInterface, PluginConfigNetwork, PluginEnv,
    PluginPrivilege, PluginSettings,
};
use serde::Deserialize;

use super::images::auth_from;
use crate::error::{ApiError, ApiResult};
use crate::query::{parse_bool, Filters, Q};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/plugins", get(list))
        .route("/plugins/privileges", get(privileges))
        .route("/plugins/pull", post(pull))
        // A create context carries a whole component; axum's default 2 MiB cap
        // would refuse ordinary plugins (the engine caps the unpacked files).
        .route(
            "/plugins/create",
            post(create).layer(DefaultBodyLimit::max(80 << 20)),
        )
        .route(
            "/plugins/{*rest}",
            get(get_named).post(post_named).delete(delete_named),
        )
}

#[derive(Deserialize)]
struct CreateQuery {
    name: Option<String>,
}

/// `docker plugin create NAME DIR`: the body is the tar of DIR, which must be a
/// berth plugin dir (`manifest.toml` + `plugin.wasm`, as `berth-plugin build`
/// stages it); Docker's rootfs plugins get a 400 saying so.
async fn create(
    State(engine): State<AppState>,
    Q(q): Q<CreateQuery>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let name = q.name.unwrap_or_default();
    engine.plugin_manager.create(&name, &body).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn to_model(v: &PluginView) -> Plugin {
    let description = match (&v.refused, v.kind) {
        (Some(why), _) => format!("REFUSED: {why}"),
        (None, Some(k)) => format!("berth WASM {k} driver {} ({})", v.driver, v.interface),
        (None, None) => "berth WASM plugin".into(),
    };
    let cap = v
        .kind
        .map(|k| format!("docker.{}/1.0", berth_engine::plugins::state::capability(k)));
    let effective = |k: &str, default: &str| {
        v.settings
            .get(k)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    Plugin {
        id: Some(v.id.clone()),
        name: v.name.clone(),
        enabled: v.enabled,
        settings: PluginSettings {
            env: v
                .config
                .iter()
                .map(|(k, d)| format!("{k}={}", effective(k, d)))
                .collect(),
            ..Default::default()
        },
        plugin_reference: v.reference.clone(),
        config: PluginConfig {
            description,
            interface: PluginConfigInterface {
                types: cap.into_iter().collect(),
                ..Default::default()
            },
            network: PluginConfigNetwork {
                typ: if v.privileges.iter().any(|p| p.name == "network") {
                    "granted".into()
                } else {
                    "none".into()
                },
            },
            env: v
                .config
                .iter()
                .map(|(k, d)| PluginEnv {
                    name: k.clone(),
                    description: String::new(),
                    settable: vec!["value".into()],
                    value: d.clone(),
                })
                .collect(),
            args: PluginConfigArgs::default(),
            ..Default::default()
        },
    }
}

fn to_privilege(p: Privilege) -> PluginPrivilege {
    PluginPrivilege {
        name: Some(p.name),
        description: Some(p.description),
        value: Some(p.value),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    filters: Option<String>,
}

async fn list(State(engine): State<AppState>, Q(q): Q<ListQuery>) -> ApiResult<Json<Vec<Plugin>>> {
    let f = Filters::parse(q.filters.as_deref())?;
    f.validate(&["enabled", "capability"])?;
    let enabled = f.get("enabled");
    let caps = f.get("capability");
    let out = engine
        .plugin_manager
        .list()
        .iter()
        .filter(|v| enabled.is_empty() || enabled.iter().any(|e| parse_bool(e) == v.enabled))
        .filter(|v| {
            caps.is_empty()
                || v.kind.is_some_and(|k| {
                    let c = berth_engine::plugins::state::capability(k);
                    caps.iter().any(|x| x == c)
                })
        })
        .map(to_model)
        .collect();
    Ok(Json(out))
}

#[derive(Deserialize)]
struct RemoteQuery {
    remote: Option<String>,
    name: Option<String>,
}

fn remote_of(q: &RemoteQuery) -> ApiResult<String> {
    q.remote
        .clone()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::bad_request("remote is required"))
}

async fn privileges(
    State(engine): State<AppState>,
    headers: HeaderMap,
    Q(q): Q<RemoteQuery>,
) -> ApiResult<Json<Vec<PluginPrivilege>>> {
    let remote = remote_of(&q)?;
    let p = engine
        .plugin_manager
        .privileges(&remote, &auth_from(&headers))
        .await?;
    Ok(Json(p.into_iter().map(to_privilege).collect()))
}

/// The privileges the client accepted; Go sends `null` for none.
fn accepted(body: &Bytes) -> ApiResult<Vec<Privilege>> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Vec::new());
    }
    serde_json::from_slice::<Option<Vec<Privilege>>>(body)
        .map(Option::unwrap_or_default)
        .map_err(|e| ApiError::bad_request(format!("invalid privileges: {e}")))
}

/// Docker streams progress for pull/upgrade; the work is done when this is sent.
fn progress(lines: &[String], name: Option<&str>) -> Response {
    let mut body = String::new();
    for l in lines {
        body.push_str(&serde_json::json!({ "status": l }).to_string());
        body.push('\n');
    }
    let mut resp = (StatusCode::OK, Body::from(body)).into_response();
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(v) = name.and_then(|n| HeaderValue::from_str(n).ok()) {
        h.insert("docker-plugin-name", v);
    }
    resp
}

async fn pull(
    State(engine): State<AppState>,
    headers: HeaderMap,
    Q(q): Q<RemoteQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    let remote = remote_of(&q)?;
    let accepted = accepted(&body)?;
    let name = engine
        .plugin_manager
        .install(&remote, q.name.as_deref(), &auth_from(&headers), &accepted)
        .await?;
    let v = engine.plugin_manager.inspect(&name)?;
    Ok(progress(
        &[
            format!("Pulled {remote}"),
            format!("Digest: {}", v.digest.unwrap_or_default()),
            "Precompiled and checked the component".into(),
        ],
        Some(&name),
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NamedQuery {
    force: Option<String>,
    remote: Option<String>,
}

/// `<name>/<verb>` → (name, verb).
fn split(rest: &str) -> ApiResult<(&str, &str)> {
    rest.rsplit_once('/')
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| ApiError::not_found("page not found"))
}

async fn get_named(
    State(engine): State<AppState>,
    Path(rest): Path<String>,
) -> ApiResult<Json<Plugin>> {
    match split(&rest)? {
        (name, "json") => Ok(Json(to_model(&engine.plugin_manager.inspect(name)?))),
        _ => Err(ApiError::not_found("page not found")),
    }
}

async fn post_named(
    State(engine): State<AppState>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    Q(q): Q<NamedQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    let pm = &engine.plugin_manager;
    let force = q.force.as_deref().map(parse_bool).unwrap_or(false);
    match split(&rest)? {
        (name, "enable") => pm.enable(name).await?,
        (name, "disable") => pm.disable(name, force).await?,
        (name, "set") => {
            let args: Vec<String> = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("invalid settings: {e}")))?;
            pm.set(name, &args).await?
        }
        (name, "upgrade") => {
            let remote = q
                .remote
                .clone()
                .filter(|r| !r.is_empty())
                .ok_or_else(|| ApiError::bad_request("remote is required"))?;
            pm.upgrade(name, &remote, &auth_from(&headers), &accepted(&body)?)
                .await?;
            return Ok(progress(&[format!("Upgraded to {remote}")], None));
        }
        (name, "push") => {
            let digest = pm.push(name, &auth_from(&headers)).await?;
            return Ok(progress(
                &[format!("Pushed {name}"), format!("digest: {digest}")],
                None,
            ));
        }
        _ => return Err(ApiError::not_found("page not found")),
    }
    Ok(StatusCode::OK.into_response())
}

async fn delete_named(
    State(engine): State<AppState>,
    Path(rest): Path<String>,
    Q(q): Q<NamedQuery>,
) -> ApiResult<StatusCode> {
    let force = q.force.as_deref().map(parse_bool).unwrap_or(false);
    engine.plugin_manager.remove(&rest, force).await?;
    Ok(StatusCode::OK)
}
