//! berth-api: the Docker Engine REST API over the berth engine.
//!
//! One router per resource under `routes/`; handlers parse, call one engine verb and
//! shape the reply. Versioning, headers and error shape are handled once, here.

pub mod authz;
pub mod error;
pub mod hijack;
pub mod identity;
pub mod query;
pub mod routes;
pub mod stream;
pub mod tls;
pub mod version;
mod x509_cn;
pub mod zero_values;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use berth_engine::Engine;
use futures::future::BoxFuture;
use tower::Service;

pub type AppState = Arc<Engine>;

/// The complete service: authorization → version rewrite → router → common headers.
#[derive(Clone)]
pub struct ApiService {
    router: Router,
    authz: Option<Arc<authz::AuthzChain>>,
}

impl ApiService {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self::with_authz(engine, None)
    }

    /// With authorization plugins on every request (`--authorization-plugin`).
    pub fn with_authz(engine: Arc<Engine>, authz: Option<Arc<authz::AuthzChain>>) -> Self {
        ApiService {
            router: routes::router().with_state(engine),
            authz,
        }
    }
}

impl Service<Request> for ApiService {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let router = self.router.clone();
        let authz = self.authz.clone();
        // The connection's socket (for hijacking) and its client, as handlers and
        // the authorization chain read them.
        let conn = req
            .extensions()
            .get::<ConnectInfo<identity::Conn>>()
            .map(|ConnectInfo(c)| c.clone());
        if let Some(c) = conn {
            req.extensions_mut().insert(ConnectInfo(c.fd));
            req.extensions_mut().insert(c.client);
        }
        Box::pin(async move {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let mut resp = match authz {
                Some(chain) => authz::authorize(chain, req, |r| serve_one(router, r)).await,
                None => serve_one(router, req).await,
            };
            version::stamp_headers(resp.headers_mut());
            tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
            Ok(resp)
        })
    }
}

/// Version rewrite and routing for one request.
async fn serve_one(router: Router, req: Request) -> Response {
    match version::rewrite(req) {
        Ok(req) => {
            let (req, unread) = stream::track_body(req);
            let resp = call_catching_panics(router, req).await;
            // A handler that answered without reading the whole body (an early
            // refusal): read the rest, so the client sees the answer instead of
            // a broken pipe.
            let rest = unread.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(body) = rest {
                stream::drain_body(body).await;
            }
            resp
        }
        Err(refused) => {
            let (e, req) = *refused;
            stream::drain_body(req.into_body()).await;
            e.into_response()
        }
    }
}

/// Run the router on one request. A handler that panics answers 500 with Docker's error
/// shape instead of dropping the connection; the daemon keeps serving.
async fn call_catching_panics(mut router: Router, req: Request) -> Response {
    use futures::FutureExt;
    let path = req.uri().path().to_string();
    match std::panic::AssertUnwindSafe(router.call(req))
        .catch_unwind()
        .await
    {
        Ok(r) => r.into_response(),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(%path, panic = %what, "request handler panicked");
            error::ApiError::internal(format!("internal error handling {path}: {what}"))
                .into_response()
        }
    }
}

/// Bind the API socket: a stale file is replaced, and the socket is accessible to root and
/// `group` only (like `/var/run/docker.sock` with `-G docker`). The socket is born 0660 in a
/// private 0700 directory and renamed into place, so no other user can connect in a window
/// between bind and chmod (a process-wide umask would race with other threads).
pub fn bind_unix(path: &Path, group: Option<u32>) -> anyhow::Result<tokio::net::UnixListener> {
    use anyhow::Context;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let private = dir.join(format!(".berthd-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("create {}", private.display()))?;
    let bind = || -> anyhow::Result<tokio::net::UnixListener> {
        let tmp = private.join("sock");
        let listener = tokio::net::UnixListener::bind(&tmp)
            .with_context(|| format!("bind {}", path.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&tmp, None, Some(gid))
                .with_context(|| format!("chgrp {} of {}", gid, path.display()))?;
        }
        // Replaces a stale socket atomically; the listener keeps the renamed inode.
        std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
        Ok(listener)
    };
    let res = bind();
    let _ = std::fs::remove_dir_all(&private);
    res
}

/// Serve the API on a bound listener until `shutdown` resolves.
pub async fn serve<L>(
    listener: L,
    engine: Arc<Engine>,
    authz: Option<Arc<authz::AuthzChain>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
    for<'a> identity::Conn:
        axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let svc = ApiService::with_authz(engine, authz);
    let server = axum::serve(
        listener,
        axum::ServiceExt::<Request>::into_make_service_with_connect_info::<identity::Conn>(svc),
    );
    // Long-lived streams (events, logs -f, attach) would keep a graceful drain waiting
    // forever, so on shutdown we stop accepting and drop open connections, as dockerd does.
    tokio::select! {
        r = server => r?,
        _ = shutdown => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_next_request_is_served() {
        let router: Router = Router::new()
            .route(
                "/boom",
                get(|| async {
                    let v: Vec<u8> = Vec::new();
                    // An index out of bounds, as a handler bug would cause.
                    v[std::hint::black_box(3)].to_string()
                }),
            )
            .route("/ok", get(|| async { "fine" }));
        let req = |p: &str| {
            Request::builder()
                .uri(p)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let resp = call_catching_panics(router.clone(), req("/boom")).await;
        assert_eq!(resp.status(), 500);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("index out of bounds"),
            "{v}"
        );
        let resp = call_catching_panics(router, req("/ok")).await;
        assert_eq!(resp.status(), 200);
    }
}
