//! What `docker plugin` changes and must survive a restart (or kill -9):
//! `<data-root>/plugins.json`, one record per plugin, written atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_plugin_host::{Manifest, PluginKind};
use serde::{Deserialize, Serialize};

use crate::Result;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Docker's name for the plugin (`my-log:latest`, or the remote it came from).
    pub name: String,
    /// The operator's wish; a refused plugin stays wished-for but not loaded.
    pub enabled: bool,
    pub dir: PathBuf,
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub digest: Option<String>,
    /// `docker plugin set` values for `[config]` keys.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// Keyed by the manifest name (the `--log-driver` / `-d` name).
pub type Records = BTreeMap<String, Record>;

pub fn load(path: &Path) -> Records {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), "ignoring unreadable plugin state: {e}");
            Records::new()
        }),
        Err(_) => Records::new(),
    }
}

pub fn save(path: &Path, recs: &Records) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(recs).map_err(crate::Error::internal)?;
    crate::fsutil::write_atomic(path, &bytes)?;
    Ok(())
}

/// One privilege in Docker's shape (`docker plugin install` shows and asks for them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Privilege {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Description", default)]
    pub description: String,
    #[serde(rename = "Value", default)]
    pub value: Vec<String>,
}

/// The grants a manifest asks for, as Docker privileges.
pub fn privileges(m: &Manifest) -> Vec<Privilege> {
    let mut out = Vec::new();
    if !m.grants.network.is_empty() {
        out.push(Privilege {
            name: "network".into(),
            description: "TCP connections to these ip:port destinations".into(),
            value: m.grants.network.clone(),
        });
    }
    out
}

/// Whether what the client accepted covers exactly what the plugin asks for.
pub fn privileges_match(required: &[Privilege], accepted: &[Privilege]) -> bool {
    let key = |p: &Privilege| {
        let mut v = p.value.clone();
        v.sort();
        (p.name.clone(), v)
    };
    let mut a: Vec<_> = required.iter().map(key).collect();
    let mut b: Vec<_> = accepted.iter().map(key).collect();
    a.sort();
    b.sort();
    a == b
}

/// Docker's plugin capability for a kind (`docker plugin ls --filter capability=`).
pub fn capability(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Log => "logdriver",
        PluginKind::Volume => "volumedriver",
        PluginKind::Network => "networkdriver",
    }
}

/// `name` → `name:latest` when it has no tag (Docker's plugin naming).
pub fn with_default_tag(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || name.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privilege_sets_compare_unordered() {
        let p = |n: &str, v: &[&str]| Privilege {
            name: n.into(),
            description: String::new(),
            value: v.iter().map(|s| s.to_string()).collect(),
        };
        assert!(privileges_match(
            &[p("network", &["a", "b"])],
            &[p("network", &["b", "a"])]
        ));
        assert!(!privileges_match(&[p("network", &["a"])], &[]));
        assert!(privileges_match(&[], &[]));
    }

    #[test]
    fn default_tag() {
        assert_eq!(with_default_tag("x"), "x:latest");
        assert_eq!(
            with_default_tag("127.0.0.1:5000/x"),
            "127.0.0.1:5000/x:latest"
        );
        assert_eq!(with_default_tag("x:v1"), "x:v1");
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugins.json");
        assert!(load(&path).is_empty());
        let mut r = Records::new();
        r.insert(
            "x".into(),
            Record {
                name: "x:latest".into(),
                enabled: false,
                dir: "/d".into(),
                reference: Some("127.0.0.1:1/x:latest".into()),
                digest: None,
                settings: [("prefix".to_string(), "p".to_string())].into(),
            },
        );
        save(&path, &r).unwrap();
        assert_eq!(load(&path), r);
    }
}
