//! Request parsing with Docker's rules: boolean query values, `filters` JSON, and
//! extractors whose rejections are Docker-style 400s instead of axum's plain text.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Docker's `since`/`until` timestamps (unix seconds with an optional fraction, RFC 3339,
/// or a Go duration ago), in unix nanoseconds.
pub fn parse_timestamp(s: &str) -> Result<i64, ApiError> {
    let now = berth_engine::fsutil::now_nanos() as i128;
    berth_engine::fsutil::parse_docker_time(s, now)
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(|| ApiError::bad_request(format!("invalid timestamp: {s}")))
}

/// Docker's `BoolValue`: "", "0", "no", "false", "none" are false, anything else true.
pub fn parse_bool(v: &str) -> bool {
    !matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "" | "0" | "no" | "false" | "none"
    )
}

/// Serde helper for `Option<bool>` query fields following [`parse_bool`].
pub mod docker_bool {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        let s = String::deserialize(d)?;
        Ok(super::parse_bool(&s))
    }
}

pub use berth_filters::Filters;

/// `Query<T>` whose rejection is a Docker 400.
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(q)
            .map(Q)
            .map_err(|e| ApiError::bad_request(format!("invalid query parameters: {e}")))
    }
}

/// JSON body whose rejection is a Docker 400. An empty body means `T::default()`
/// only where the caller asks for `Option<T>`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // An oversized body is Docker's 413, anything else unreadable a 400.
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                let status = match e.status() {
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE => e.status(),
                    _ => axum::http::StatusCode::BAD_REQUEST,
                };
                ApiError::new(
                    status,
                    format!("failed to read request body: {}", e.body_text()),
                )
            })?;
        if bytes.is_empty() {
            return Err(ApiError::bad_request("empty request body; expected JSON"));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
    }
}

/// All query pairs, repeated keys kept (`names=a&names=b`, `changes=…&changes=…`).
fn pairs(req_query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(req_query.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("invalid query parameters: {e}")))
}

pub struct QueryPairs(Vec<(String, String)>);

impl QueryPairs {
    pub fn from(req: &axum::extract::Request) -> Result<Self, ApiError> {
        Ok(QueryPairs(pairs(req.uri().query())?))
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(a, _)| a == k)
            .map(|(_, v)| v.clone())
            .collect()
    }
    pub fn str(&self, k: &str) -> String {
        self.get(k).unwrap_or("").to_string()
    }
    pub fn bool(&self, k: &str) -> bool {
        self.get(k).map(parse_bool).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bools_follow_docker() {
        for f in ["", "0", "no", "false", "none", "FALSE"] {
            assert!(!parse_bool(f), "{f}");
        }
        for t in ["1", "true", "yes", "anything"] {
            assert!(parse_bool(t), "{t}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("10").unwrap(), 10_000_000_000);
        assert_eq!(parse_timestamp("1.5").unwrap(), 1_500_000_000);
        assert_eq!(
            parse_timestamp("1970-01-02T00:00:00Z").unwrap(),
            86_400_000_000_000
        );
        assert_eq!(
            parse_timestamp("1970-01-02T01:00:00+01:00").unwrap(),
            86_400_000_000_000
        );
        assert!(parse_timestamp("yesterday").is_err());
    }
}
