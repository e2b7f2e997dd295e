//! `manifest.toml`: what a plugin is and what the operator grants it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

/// Driver kind; decides the WIT world, the import allowlist and the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Log,
    Volume,
    Network,
}

impl PluginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Log => "log",
            PluginKind::Volume => "volume",
            PluginKind::Network => "network",
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Grants {
    /// TCP `ip:port` destinations the plugin may connect to (wasi:sockets).
    #[serde(default)]
    pub network: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limits {
    /// Linear-memory cap in MiB; cannot exceed the host's maximum for the kind.
    pub memory_mib: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    kind: PluginKind,
    interface: String,
    #[serde(default)]
    grants: Grants,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
}

/// A parsed, checked manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    pub kind: PluginKind,
    /// Interface version the plugin was built against, e.g. `0.1.0`.
    pub interface_version: String,
    pub grants: Grants,
    pub network_allow: Vec<SocketAddr>,
    pub limits: Limits,
    /// `[config]` table, passed to `lifecycle.init`.
    pub config: Vec<(String, String)>,
}

/// Plugin names end up in paths and in `--log-driver`, so keep them tame.
pub fn valid_plugin_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(c))
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| format!("manifest.toml: {e}"))?;
        if !valid_plugin_name(&raw.name) {
            return Err(format!(
                "invalid plugin name {:?} (use [a-z0-9][a-z0-9._-]*, at most 64)",
                raw.name
            ));
        }
        let version = raw
            .interface
            .strip_prefix("berth:driver@")
            .ok_or_else(|| {
                format!(
                    "interface {:?} must look like berth:driver@0.1.0",
                    raw.interface
                )
            })?
            .to_string();
        let network_allow = raw
            .grants
            .network
            .iter()
            .map(|a| {
                a.parse::<SocketAddr>()
                    .map_err(|_| format!("grants.network entry {a:?} is not ip:port"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if raw.kind == PluginKind::Network && !network_allow.is_empty() {
            return Err("network drivers cannot be granted sockets".into());
        }
        let config = raw
            .config
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    other => {
                        return Err(format!(
                            "config.{k}: only scalars are allowed, got {}",
                            other.type_str()
                        ))
                    }
                };
                Ok((k, v))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Manifest {
            name: raw.name,
            kind: raw.kind,
            interface_version: version,
            grants: raw.grants,
            network_allow,
            limits: raw.limits,
            config,
        })
    }

    /// Replace `[config]` values; a key the manifest does not declare is an error.
    pub fn override_config(&mut self, overrides: &[(String, String)]) -> Result<(), String> {
        for (k, v) in overrides {
            match self.config.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1 = v.clone(),
                None => {
                    return Err(format!(
                        "setting {k:?} not found in the plugin configuration"
                    ))
                }
            }
        }
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Manifest, String> {
        let text = std::fs::read_to_string(dir.join("manifest.toml"))
            .map_err(|e| format!("manifest.toml: {e}"))?;
        Manifest::parse(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_manifest() {
        let m = Manifest::parse(
            r#"
name = "syslog"
kind = "log"
interface = "berth:driver@0.1.0"
[grants]
network = ["127.0.0.1:514"]
[limits]
memory-mib = 32
[config]
a = "b"
n = 3
"#,
        )
        .unwrap();
        assert_eq!(m.kind, PluginKind::Log);
        assert_eq!(m.interface_version, "0.1.0");
        assert_eq!(m.network_allow, vec!["127.0.0.1:514".parse().unwrap()]);
        assert_eq!(m.limits.memory_mib, Some(32));
        assert_eq!(
            m.config,
            vec![("a".into(), "b".into()), ("n".into(), "3".into())]
        );
    }

    #[test]
    fn rejects_bad_manifests() {
        for bad in [
            "name = \"../x\"\nkind = \"log\"\ninterface = \"berth:driver@0.1.0\"",
            "name = \"x\"\nkind = \"nope\"\ninterface = \"berth:driver@0.1.0\"",
            "name = \"x\"\nkind = \"log\"\ninterface = \"other@1\"",
            "name = \"x\"\nkind = \"log\"\ninterface = \"berth:driver@0.1.0\"\nsurprise = 1",
            "name = \"x\"\nkind = \"log\"\ninterface = \"berth:driver@0.1.0\"\n[grants]\nnetwork = [\"example.com\"]",
        ] {
            assert!(Manifest::parse(bad).is_err(), "accepted: {bad}");
        }
    }
}
