//! Docker's `filters` query parameter: a JSON object of filter names to values, in
//! the current form `{"key":{"value":true}}` or the legacy `{"key":["value"]}`, and the
//! label rules every list and prune endpoint shares.
//!
//! A crate of its own, apart from the API server, because the parameter is untrusted
//! input of most list endpoints: it is fuzzed (`host/fuzz`) without building axum and
//! the engine.

use std::collections::{BTreeMap, BTreeSet};

/// A refused `filters` parameter, with Docker's wording (the API answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl Error {
    fn new(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `filters` query parameter: `{"key":{"value":true}}` or legacy `{"key":["value"]}`.
#[derive(Debug, Default, Clone)]
pub struct Filters(BTreeMap<String, BTreeSet<String>>);

impl Filters {
    pub fn parse(raw: Option<&str>) -> Result<Filters> {
        let raw = match raw {
            None => return Ok(Filters::default()),
            Some(r) if r.trim().is_empty() => return Ok(Filters::default()),
            Some(r) => r,
        };
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| Error::new(format!("invalid filter: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| Error::new("invalid filter: expected a JSON object"))?;
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
                            Error::new(format!("invalid filter value for '{key}'"))
                        })?;
                        set.insert(s.to_string());
                    }
                }
                _ => return Err(Error::new(format!("invalid filter '{key}'"))),
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
    pub fn validate(&self, allowed: &[&str]) -> Result<()> {
        for k in self.keys() {
            if !allowed.contains(&k) {
                return Err(Error::new(format!("invalid filter '{k}'")));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
