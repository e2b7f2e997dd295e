//! `/_ping`, `/version`, `/info`, `/events`, `/system/df`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::query::parse_timestamp;
use bollard_stubs::models::{
    BuildCache, ContainerSummary, ImageSummary, SystemVersion, SystemVersionComponents,
    SystemVersionPlatform, Volume, VolumeUsageData,
};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::query::{Filters, Q};
use crate::version::{API_VERSION, MIN_API_VERSION};
use crate::AppState;
use berth_engine::events::Event;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_ping", get(ping).head(ping))
        .route("/auth", axum::routing::post(auth))
        .route("/version", get(version))
        .route("/events", get(events))
        .route("/info", get(info))
        .route("/system/df", get(df))
}

/// A stable daemon ID, kept under the data root (dockerd's engine-id).
fn engine_id(engine: &AppState) -> String {
    let p = engine.config.data_root.join("engine-id");
    if let Ok(id) = std::fs::read_to_string(&p) {
        return id.trim().to_string();
    }
    let id = berth_engine::containers::new_id();
    let _ = berth_engine::fsutil::write_atomic(&p, id.as_bytes());
    id
}

fn mem_total() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn os_release() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (get("PRETTY_NAME"), get("VERSION_ID"))
}

fn cgroup_version() -> &'static str {
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "2"
    } else {
        "1"
    }
}

async fn info(State(engine): State<AppState>) -> ApiResult<Response> {
    use bollard_stubs::models::{PluginsInfo, SystemInfo};
    let (all, running, paused, stopped) = engine.containers.counts();
    let images = engine
        .images
        .list(&berth_engine::images::ListOptions::default())
        .map(|l| l.len())
        .unwrap_or(0);
    let (os, os_version) = os_release();
    let containers = &engine.containers;
    let mut warnings = Vec::new();
    let isolation = containers.isolation_info();
    for (mode, unavailable, description) in &isolation {
        match unavailable {
            Some(why) => warnings.push(format!("WARNING: {mode} isolation unavailable: {why}")),
            // Say how a mode that works runs (e.g. microVMs under software emulation).
            None if *mode != "process" => warnings.push(format!("NOTE: {description}")),
            None => {}
        }
    }
    let info = SystemInfo {
        id: Some(engine_id(&engine)),
        containers: Some(all as i64),
        containers_running: Some(running as i64),
        containers_paused: Some(paused as i64),
        containers_stopped: Some(stopped as i64),
        images: Some(images as i64),
        driver: Some(containers.storage_driver.to_string()),
        driver_status: Some(vec![
            vec![
                "Backing Filesystem".into(),
                backing_filesystem(&engine.config.data_root).into(),
            ],
            vec!["Supports d_type".into(), "true".into()],
        ]),
        docker_root_dir: Some(engine.config.data_root.display().to_string()),
        plugins: Some(PluginsInfo {
            volume: Some(engine.volumes.driver_names()),
            network: Some(engine.networks.driver_names()),
            authorization: None,
            log: Some(containers.log_driver_names()),
        }),
        memory_limit: Some(true),
        swap_limit: Some(true),
        cpu_cfs_period: Some(true),
        cpu_cfs_quota: Some(true),
        cpu_shares: Some(true),
        cpu_set: Some(true),
        pids_limit: Some(true),
        oom_kill_disable: Some(cgroup_version() == "1"),
        ipv4_forwarding: Some(false),
        debug: Some(false),
        nfd: Some(
            std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count() as i64)
                .unwrap_or(0),
        ),
        n_goroutines: Some(0),
        system_time: Some(berth_engine::fsutil::now_rfc3339()),
        logging_driver: Some(containers.default_log_driver.read().unwrap().clone()),
        n_events_listener: Some(0),
        kernel_version: Some(kernel_version()),
        operating_system: Some(os),
        os_version: Some(os_version),
        os_type: Some("linux".into()),
        architecture: Some(std::env::consts::ARCH.into()),
        ncpu: Some(
            std::thread::available_parallelism()
                .map(|n| n.get() as i64)
                .unwrap_or(1),
        ),
        mem_total: Some(mem_total()),
        index_server_address: Some("https://index.docker.io/v1/".into()),
        name: Some(
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        labels: Some(Vec::new()),
        experimental_build: Some(false),
        server_version: Some(env!("CARGO_PKG_VERSION").into()),
        default_runtime: Some("berth".into()),
        live_restore_enabled: Some(true),
        init_binary: Some(String::new()),
        // dockerd lists `name=userns` when `--userns-remap` is on.
        security_options: Some(
            std::iter::once("name=seccomp,profile=builtin".to_string())
                .chain(engine.userns.is_some().then(|| "name=userns".to_string()))
                .collect(),
        ),
        warnings: Some(warnings),
        swarm: Some(bollard_stubs::models::SwarmInfo {
            local_node_state: Some(bollard_stubs::models::LocalNodeState::INACTIVE),
            node_id: Some(String::new()),
            node_addr: Some(String::new()),
            control_available: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut v = serde_json::to_value(&info).map_err(|e| ApiError::internal(e.to_string()))?;
    // Fields whose model enums don't know our values.
    v["CgroupDriver"] = "cgroupfs".into();
    v["CgroupVersion"] = cgroup_version().into();
    v["Isolation"] = containers.isolation.default.as_str().into();
    let mut runtimes = serde_json::json!({
        "berth": { "path": containers.paths_agent_bin() },
    });
    // `--runtime`-style names for the isolation modes usable here, with their description.
    for (mode, unavailable, description) in &isolation {
        if unavailable.is_none() {
            runtimes[*mode] = serde_json::json!({
                "path": containers.paths_agent_bin(),
                "runtimeArgs": [description],
            });
        }
    }
    v["Runtimes"] = runtimes;
    v["RegistryConfig"] = engine.images.registry.info();
    crate::zero_values::info(&mut v);
    Ok(Json(v).into_response())
}

/// `GET /system/df` in the shape of API 1.51 and older (berth speaks up to 1.51).
/// bollard-stubs only has the 1.52 shape (`SystemDataUsageResponse`: `ImageUsage`,
/// `ContainerUsage`, ...), so this envelope is ours; every item in it is a stub model.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DiskUsageResponse {
    layers_size: u64,
    images: Vec<ImageSummary>,
    containers: Vec<ContainerSummary>,
    volumes: Vec<Volume>,
    build_cache: Vec<BuildCache>,
}

async fn df(
    State(engine): State<AppState>,
    axum::Extension(ver): axum::Extension<crate::version::ApiVersion>,
) -> ApiResult<Json<serde_json::Value>> {
    let du = engine.images.disk_usage()?;
    let containers = engine
        .containers
        .all()
        .iter()
        .map(|c| {
            let r = c.record();
            let size = engine.containers.container_rw_size(&r.id);
            super::containers::disk_usage_summary(&r, size as i64)
        })
        .collect();
    let mut volumes = Vec::new();
    for rec in engine.volumes.list() {
        let Ok(view) = engine.volumes.inspect(&rec.name).await else {
            continue;
        };
        let size = berth_engine::fsutil::dir_size(std::path::Path::new(&view.mountpoint));
        let refs = engine.containers.volume_users(&rec.name).len();
        volumes.push(Volume {
            usage_data: Some(VolumeUsageData {
                size: size as i64,
                ref_count: refs as i64,
            }),
            ..super::volumes::to_model(&view)
        });
    }
    let resp = DiskUsageResponse {
        layers_size: du.layers_size,
        images: du
            .images
            .into_iter()
            .map(super::images::summary_model)
            .collect(),
        containers,
        volumes,
        build_cache: Vec::new(),
    };
    let mut v = serde_json::to_value(&resp).map_err(|e| ApiError::internal(e.to_string()))?;
    crate::zero_values::system_df(&mut v, ver.0);
    Ok(Json(v))
}

/// Docker's name for the filesystem under the data root (`docker info`'s "Backing
/// Filesystem"), measured with statfs rather than assumed.
fn backing_filesystem(path: &std::path::Path) -> &'static str {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return "unknown";
    };
    // SAFETY: statfs fills a zeroed struct through a valid pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown";
    }
    match st.f_type as u64 {
        0xEF53 => "extfs",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x2FC1_2FC1 => "zfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        _ => "unknown",
    }
}

async fn ping() -> Response {
    let mut resp = (StatusCode::OK, "OK").into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    // Classic builder only: BuildKit's /session and /grpc are not served.
    h.insert("builder-version", HeaderValue::from_static("1"));
    h.insert("swarm", HeaderValue::from_static("inactive"));
    resp
}

pub fn kernel_version() -> String {
    nix_uname().unwrap_or_default()
}

fn nix_uname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string())
}

async fn version() -> Json<SystemVersion> {
    let engine_version = env!("CARGO_PKG_VERSION").to_string();
    let details: std::collections::HashMap<String, String> = [
        ("ApiVersion", API_VERSION),
        ("MinAPIVersion", MIN_API_VERSION),
        ("Os", "linux"),
        ("Arch", go_arch()),
        ("KernelVersion", &kernel_version()),
        ("GitCommit", env!("BERTH_GIT_COMMIT")),
        ("BuildTime", env!("BERTH_BUILD_TIME")),
        ("GoVersion", "n/a (rust)"),
        ("Experimental", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Json(SystemVersion {
        platform: Some(SystemVersionPlatform {
            name: "berth".into(),
        }),
        components: Some(vec![SystemVersionComponents {
            name: "Engine".into(),
            version: engine_version.clone(),
            details: Some(details),
        }]),
        version: Some(engine_version),
        api_version: Some(API_VERSION.into()),
        min_api_version: Some(MIN_API_VERSION.into()),
        git_commit: Some(env!("BERTH_GIT_COMMIT").into()),
        go_version: Some("n/a (rust)".into()),
        os: Some("linux".into()),
        arch: Some(go_arch().into()),
        kernel_version: Some(kernel_version()),
        experimental: Some(false),
        build_time: Some(env!("BERTH_BUILD_TIME").into()),
    })
}

/// Docker reports Go's architecture names.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<String>,
    until: Option<String>,
    filters: Option<String>,
}

fn event_matches(f: &Filters, e: &Event) -> bool {
    let any = |key: &str, vals: &[&str]| {
        let want = f.get(key);
        want.is_empty() || want.iter().any(|w| vals.contains(&w.as_str()))
    };
    let attr = |k: &str| e.actor.attributes.get(k).map(|s| s.as_str()).unwrap_or("");
    let id = e.actor.id.as_str();
    let short_match = |key: &str, typ: &str, names: &[&str]| {
        let want = f.get(key);
        if want.is_empty() {
            return true;
        }
        e.typ == typ
            && want.iter().any(|w| {
                names.contains(&w.as_str()) || (w.len() >= 3 && id.starts_with(w.as_str()))
            })
    };
    let labels: std::collections::HashMap<String, String> = e
        .actor
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    any("type", &[&e.typ])
        && any(
            "event",
            &[&e.action, e.action.split(':').next().unwrap_or("")],
        )
        && short_match("container", "container", &[attr("name"), id])
        && (f.get("image").is_empty()
            || f.get("image")
                .iter()
                .any(|w| [attr("image"), attr("name"), id].contains(&w.as_str())))
        && short_match("volume", "volume", &[id])
        && short_match("network", "network", &[attr("name"), id])
        && any("scope", &[&e.scope])
        && f.match_labels("label", &labels)
}

async fn events(State(engine): State<AppState>, Q(q): Q<EventsQuery>) -> ApiResult<Response> {
    let filters = Filters::parse(q.filters.as_deref())?;
    filters.validate(&[
        "container",
        "daemon",
        "event",
        "image",
        "label",
        "network",
        "node",
        "plugin",
        "scope",
        "service",
        "type",
        "volume",
        "config",
        "secret",
    ])?;
    let since = q
        .since
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(parse_timestamp)
        .transpose()?;
    let until = q
        .until
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(parse_timestamp)
        .transpose()?;
    let (history, rx) = engine.events.subscribe();
    let now_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i64;
    let replay: Vec<Event> = match since {
        Some(s) => history
            .into_iter()
            .filter(|e| e.time_nano >= s && until.is_none_or(|u| e.time_nano <= u))
            .filter(|e| event_matches(&filters, e))
            .collect(),
        None => Vec::new(),
    };
    let encode = |e: &Event| {
        let mut v = serde_json::to_vec(e).unwrap_or_default();
        v.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(v))
    };
    let head = futures::stream::iter(replay.iter().map(encode).collect::<Vec<_>>());
    let body: futures::stream::BoxStream<'static, Result<Bytes, std::convert::Infallible>> =
        match until {
            // `until` in the past: replay only, then end.
            Some(u) if u <= now_nanos => head.boxed(),
            _ => {
                let filters2 = filters.clone();
                let live = tokio_stream::wrappers::BroadcastStream::new(rx)
                    .filter_map(move |r| {
                        let keep = match &r {
                            Ok(e) => {
                                event_matches(&filters2, e)
                                    && until.is_none_or(|u| e.time_nano <= u)
                            }
                            Err(_) => false,
                        };
                        futures::future::ready(if keep { r.ok() } else { None })
                    })
                    .map(move |e| encode(&e));
                let live = match until {
                    Some(u) => {
                        let dur = Duration::from_nanos((u - now_nanos).max(0) as u64);
                        tokio_stream::StreamExt::timeout(live, dur)
                            .take_while(|r| futures::future::ready(r.is_ok()))
                            .filter_map(|r| futures::future::ready(r.ok()))
                            .boxed()
                    }
                    None => live.boxed(),
                };
                head.chain(live).boxed()
            }
        };
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// `POST /auth` (`docker login`): the credentials are checked with the registry.
async fn auth(
    State(engine): State<AppState>,
    crate::query::JsonBody(body): crate::query::JsonBody<berth_engine::images::RegistryAuth>,
) -> ApiResult<Response> {
    engine.images.login(&body).await?;
    Ok(
        Json(serde_json::json!({ "Status": "Login Succeeded", "IdentityToken": "" }))
            .into_response(),
    )
}
