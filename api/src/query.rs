//! Request parsing with Docker's rules: boolean query values, `filters` JSON, and
//! extractors whose rejections are Docker-style 400s instead of axum's plain text.

use std::collections::{BTreeMap, BTreeSet};

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

/// The `filters` query parameter: `{"key":{"value":true}}` or legacy `{"key":["value"]}`.
#[derive(Debug, Default, Clone)]
pub struct Filters(BTreeMap<String, BTreeSet<String>>);

impl Filters {
    pub fn parse(raw: Option<&str>) -> Result<Filters, ApiError> {
        let raw = match raw {
            None => return Ok(Filters::default()),
            Some(r) if r.trim().is_empty() => return Ok(Filters::default()),
            Some(r) => r,
        };
        let value: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| ApiError::bad_request(format!("invalid filter: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| ApiError::bad_request("invalid filter: expected a JSON object"))?;
        let mut out = BTreeMap::new();
        for (key, v) in obj {
            let mut set = BTreeSet::new();
            match v {
                serde_json::Value::Object(m) => {
                    for (val, on) in m {
                        if on.as_bool() != Some(false) {
                            set.insert(val.clone());
                        }
                    }
                }
                serde_json::Value::Array(a) => {
                    for val in a {
                        let s = val.as_str().ok_or_else(|| {
                            ApiError::bad_request(format!("invalid filter value for '{key}'"))
                        })?;
                        set.insert(s.to_string());
                    }
                }
                _ => return Err(ApiError::bad_request(format!("invalid filter '{key}'"))),
            }
            out.insert(key.clone(), set);
        }
        Ok(Filters(out))
    }

    /// Values given for `key` (empty when absent).
    pub fn get(&self, key: &str) -> Vec<String> {
        self.0
            .get(key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(|k| k.as_str())
    }

    /// Reject keys the endpoint does not know, with Docker's wording.
    pub fn validate(&self, allowed: &[&str]) -> Result<(), ApiError> {
        for k in self.keys() {
            if !allowed.contains(&k) {
                return Err(ApiError::bad_request(format!("invalid filter '{k}'")));
            }
        }
        Ok(())
    }

    /// Prune's label rule: keep an object unless every `label` filter matches it and
    /// no `label!` filter does.
    pub fn prune_excludes(&self, labels: &std::collections::HashMap<String, String>) -> bool {
        !self.match_labels("label", labels)
            || (!self.get("label!").is_empty() && self.match_labels("label!", labels))
    }

    /// True when `label` filters (`key` or `key=value`) all match `labels`.
    pub fn match_labels(
        &self,
        key: &str,
        labels: &std::collections::HashMap<String, String>,
    ) -> bool {
        self.get(key).iter().all(|f| match f.split_once('=') {
            Some((k, v)) => labels.get(k).map(|x| x == v).unwrap_or(false),
            None => labels.contains_key(f.as_str()),
        })
    }
}

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
    fn filters_both_forms() {
        let f = Filters::parse(Some(r#"{"dangling":{"true":true},"label":["a=b"]}"#)).unwrap();
        assert_eq!(f.get("dangling"), vec!["true"]);
        assert_eq!(f.get("label"), vec!["a=b"]);
        assert!(f.get("nope").is_empty());
        assert!(Filters::parse(Some("[1]")).is_err());
        assert!(Filters::parse(Some("{bad")).is_err());
        assert!(f.validate(&["dangling"]).is_err());
        let mut labels = std::collections::HashMap::new();
        labels.insert("a".to_string(), "b".to_string());
        assert!(f.match_labels("label", &labels));
        labels.insert("a".to_string(), "c".to_string());
        assert!(!f.match_labels("label", &labels));
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
