//! API version negotiation. Paths may carry `/v1.N/`; we serve API 1.51 semantics,
//! accept any 1.24 <= N (newer clients are mapped down, never rejected — bollard
//! speaks 1.53), and stamp `Api-Version`/`Server`/`Ostype` on every response.

use axum::extract::Request;
use axum::http::{HeaderValue, Uri};

/// The API version whose semantics we serve.
pub const API_VERSION: &str = "1.51";
pub const MIN_API_VERSION: &str = "1.24";
pub const SERVER_HEADER: &str = concat!("berth/", env!("CARGO_PKG_VERSION"), " (linux)");

/// The version a request asked for (minor number of 1.x), stored in its extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion(pub u32);

impl ApiVersion {
    pub const DEFAULT: ApiVersion = ApiVersion(51);
    pub fn at_least(self, minor: u32) -> bool {
        self.0 >= minor
    }
}

/// Split `/v1.N/rest` into (N, "/rest"). Returns None when there is no version prefix.
fn split_version(path: &str) -> Option<(Option<u32>, &str)> {
    let rest = path.strip_prefix("/v")?;
    let end = rest.find('/').unwrap_or(rest.len());
    let ver = &rest[..end];
    let (major, minor) = ver.split_once('.')?;
    if major != "1" || minor.is_empty() || !minor.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let remainder = &rest[end..];
    Some((
        minor.parse().ok(),
        if remainder.is_empty() { "/" } else { remainder },
    ))
}

/// Rewrite the URI before routing and remember the version. Versions below the
/// minimum are rejected with Docker's message.
/// On error the request comes back too, so its body can be drained before answering.
pub fn rewrite(mut req: Request) -> Result<Request, Box<(crate::error::ApiError, Request)>> {
    let path = req.uri().path().to_string();
    let mut version = ApiVersion::DEFAULT;
    if let Some((minor, rest)) = split_version(&path) {
        let minor = minor.unwrap_or(51);
        if minor < 24 {
            return Err(Box::new((crate::error::ApiError::bad_request(format!(
                "client version 1.{minor} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
            )), req)));
        }
        version = ApiVersion(minor.min(51));
        let pq = match req.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        let mut parts = req.uri().clone().into_parts();
        let uri = pq.parse().ok().and_then(|pq| {
            parts.path_and_query = Some(pq);
            Uri::from_parts(parts).ok()
        });
        match uri {
            Some(u) => *req.uri_mut() = u,
            None => {
                return Err(Box::new((
                    crate::error::ApiError::bad_request("invalid request path"),
                    req,
                )))
            }
        }
    }
    req.extensions_mut().insert(version);
    Ok(req)
}

pub fn stamp_headers(headers: &mut axum::http::HeaderMap) {
    headers.insert("api-version", HeaderValue::from_static(API_VERSION));
    headers.insert("server", HeaderValue::from_static(SERVER_HEADER));
    headers.insert("ostype", HeaderValue::from_static("linux"));
    headers.insert("docker-experimental", HeaderValue::from_static("false"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_versions() {
        assert_eq!(
            split_version("/v1.50/containers/json"),
            Some((Some(50), "/containers/json"))
        );
        assert_eq!(split_version("/v1.53/_ping"), Some((Some(53), "/_ping")));
        assert_eq!(split_version("/v1.24"), Some((Some(24), "/")));
        assert_eq!(split_version("/volumes"), None);
        assert_eq!(split_version("/v2.0/x"), None);
    }
}
