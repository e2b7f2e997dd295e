//! Authorization plugins on every request (`berthd --authorization-plugin NAME`),
//! with dockerd's AuthZ semantics: each plugin in order sees the request (AuthZReq)
//! and then the response (AuthZRes); the first denial wins and the client gets 403
//! `authorization denied by plugin NAME: MSG`. A plugin that fails (trap, timeout,
//! bad reply) denies: the chain fails closed.
//!
//! Plugin calls run where blocking is allowed (`block_in_place`): wasm runs until
//! its epoch deadline (250 ms) at worst, and WASI's synchronous bindings drive
//! futures with `block_on`, which must not happen on a runtime worker.
//!
//! Bodies reach plugins only when they are JSON and at most 1 MiB, as in dockerd.
//! Hijacked and streaming responses (attach, exec start, logs -f, events) are never
//! buffered: AuthZRes sees their status and headers only.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use berth_engine::Engine;
use berth_plugin_host::authz::{
    AuthzPluginHandle, Decision, Lookup, Object, ObjectKind, Request as AuthzRequest,
    Response as AuthzResponse, MAX_BODY,
};
use http_body::Body as _;

use crate::error::ApiError;
use crate::identity::ClientIdentity;

/// The loaded plugins, in the order given on the command line.
pub struct AuthzChain {
    plugins: Vec<Arc<AuthzPluginHandle>>,
    lookup: Arc<dyn Lookup>,
}

impl AuthzChain {
    pub fn new(plugins: Vec<Arc<AuthzPluginHandle>>, engine: Arc<Engine>) -> Self {
        AuthzChain {
            plugins,
            lookup: Arc::new(EngineLookup(engine)),
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.plugins.iter().map(|p| p.name().to_string()).collect()
    }
}

/// The plugins' `lookup` import, answered from the engine's records.
struct EngineLookup(Arc<Engine>);

fn labels(m: Option<&std::collections::HashMap<String, String>>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = m
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort();
    v
}

impl Lookup for EngineLookup {
    fn lookup(&self, kind: ObjectKind, name_or_id: &str) -> Option<Object> {
        let e = &self.0;
        let container = |id: &str| {
            let c = e.containers.get(id).ok()?;
            let rec = c.record();
            Some(Object {
                kind: ObjectKind::Container,
                id: c.id.clone(),
                name: rec.name.trim_start_matches('/').to_string(),
                labels: labels(rec.config.labels.as_ref()),
            })
        };
        match kind {
            ObjectKind::Container => container(name_or_id),
            ObjectKind::Exec => container(&e.containers.exec_get(name_or_id).ok()?.container_id),
            ObjectKind::Volume => {
                let v = e.volumes.get_record(name_or_id)?;
                Some(Object {
                    kind,
                    id: v.name.clone(),
                    name: v.name,
                    labels: labels(Some(&v.labels)),
                })
            }
            ObjectKind::Network => {
                let n = e.networks.get(name_or_id).ok()?;
                Some(Object {
                    kind,
                    id: n.id,
                    name: n.name,
                    labels: labels(Some(&n.labels)),
                })
            }
        }
    }
}

fn denied(plugin: &str, msg: &str) -> Response {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("authorization denied by plugin {plugin}: {msg}"),
    )
    .into_response()
}

fn header_list(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("application/json"))
}

/// Take the body when it is JSON of a known size within the limit; `None` leaves
/// it untouched (uploads, streams).
async fn take_small_json(headers: &HeaderMap, body: &mut Body) -> Result<Option<Vec<u8>>, ()> {
    let exact = body.size_hint().exact();
    if !is_json(headers) || exact.is_none_or(|n| n as usize > MAX_BODY) {
        return Ok(None);
    }
    let b = std::mem::replace(body, Body::empty());
    match axum::body::to_bytes(b, MAX_BODY).await {
        Ok(bytes) => Ok(Some(bytes.to_vec())),
        Err(_) => Err(()),
    }
}

fn set_body(headers: &mut HeaderMap, body: &mut Body, bytes: Vec<u8>) {
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    headers.remove(header::TRANSFER_ENCODING);
    *body = Body::from(bytes);
}

/// Run one plugin call where blocking is allowed. On the multi-threaded runtime
/// (berthd's) that is `block_in_place`: the request's own thread runs the call
/// while its other tasks move to another worker, so there is no thread hop to wait
/// for; elsewhere, the blocking pool.
async fn call_blocking(
    f: impl FnOnce() -> Result<Decision, String> + Send + 'static,
) -> Result<Decision, String> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        return tokio::task::block_in_place(f);
    }
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("plugin call failed: {e}")))
}

/// Authorize `req` with the chain, let `inner` serve it, and authorize its response.
pub async fn authorize<F, Fut>(chain: Arc<AuthzChain>, req: Request, inner: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let client = req
        .extensions()
        .get::<ClientIdentity>()
        .cloned()
        .unwrap_or_default();
    let (mut parts, mut body) = req.into_parts();
    let Ok(req_body) = take_small_json(&parts.headers, &mut body).await else {
        return ApiError::bad_request("reading request body").into_response();
    };
    let mut areq = AuthzRequest {
        user: client.user,
        user_authn_method: client.authn_method.to_string(),
        request_method: parts.method.as_str().to_string(),
        request_uri: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string()),
        request_headers: header_list(&parts.headers),
        request_body: req_body,
    };
    for p in &chain.plugins {
        let (p2, r, lk) = (p.clone(), areq.clone(), chain.lookup.clone());
        match call_blocking(move || p2.authz_req(&r, Some(lk))).await {
            Ok(Decision::Allow) => {}
            Ok(Decision::AllowRewritten(rw)) => {
                if let Some(uri) = rw.uri {
                    match uri.parse::<Uri>() {
                        Ok(u) if u.path() == parts.uri.path() => {
                            parts.uri = u;
                            areq.request_uri = uri;
                        }
                        _ => {
                            return denied(p.name(), &format!("plugin rewrote the URI to {uri:?}, which names another endpoint"));
                        }
                    }
                }
                if let Some(b) = rw.body {
                    areq.request_body = Some(b);
                }
            }
            Ok(Decision::Deny(msg)) => return denied(p.name(), &msg),
            Err(why) => return denied(p.name(), &why),
        }
    }
    if let Some(b) = &areq.request_body {
        set_body(&mut parts.headers, &mut body, b.clone());
    }
    let resp = inner(Request::from_parts(parts, body)).await;

    let (mut rparts, mut rbody) = resp.into_parts();
    let hijacked = rparts.status == StatusCode::SWITCHING_PROTOCOLS;
    let res_body = if hijacked {
        None
    } else {
        match take_small_json(&rparts.headers, &mut rbody).await {
            Ok(b) => b,
            Err(()) => return ApiError::internal("reading response body").into_response(),
        }
    };
    let mut ares = AuthzResponse {
        status: rparts.status.as_u16(),
        headers: header_list(&rparts.headers),
        body: res_body,
    };
    for p in &chain.plugins {
        let (p2, r, s, lk) = (p.clone(), areq.clone(), ares.clone(), chain.lookup.clone());
        match call_blocking(move || p2.authz_res(&r, &s, Some(lk))).await {
            Ok(Decision::Allow) => {}
            Ok(Decision::AllowRewritten(rw)) => {
                if let (Some(b), false) = (rw.body, hijacked) {
                    ares.body = Some(b);
                }
            }
            Ok(Decision::Deny(msg)) => return denied(p.name(), &msg),
            Err(why) => return denied(p.name(), &why),
        }
    }
    if let Some(b) = ares.body {
        set_body(&mut rparts.headers, &mut rbody, b);
    }
    Response::from_parts(rparts, rbody)
}
