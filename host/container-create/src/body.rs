//! The create body's JSON to bollard's model.

use bollard_stubs::models::ContainerCreateBody;
use serde_json::Value;

use crate::{Error, Result};

/// A decoded create body.
#[derive(Debug)]
pub struct Decoded {
    pub body: ContainerCreateBody,
    /// `HostConfig.Isolation` as sent (empty when absent).
    pub isolation: String,
}

/// Decodes a create body. `HostConfig.Isolation` is taken out before model parsing: the
/// model's enum only knows Windows values, and berth adds `process`/`microvm`.
pub fn decode(mut raw: Value) -> Result<Decoded> {
    let isolation = raw
        .get_mut("HostConfig")
        .and_then(|h| h.as_object_mut())
        .and_then(|h| h.remove("Isolation"))
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    check_enum_fields(&raw)?;
    let body: ContainerCreateBody = serde_json::from_value(raw)
        .map_err(|e| Error::invalid(format!("invalid container config: {e}")))?;
    Ok(Decoded { body, isolation })
}

/// The create body's enum fields, checked before model parsing, which would refuse a bad
/// value with a serde message naming Rust's variants: these are dockerd's words.
fn check_enum_fields(raw: &Value) -> Result<()> {
    let shown = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let bad = |v: Option<&Value>, allowed: &[&str]| {
        v.filter(|v| !v.is_null())
            .filter(|v| !v.as_str().is_some_and(|s| allowed.contains(&s)))
            .map(shown)
    };
    if let Some(mode) = bad(
        raw.pointer("/HostConfig/CgroupnsMode"),
        &["", "private", "host"],
    ) {
        return Err(Error::invalid(format!(
            "invalid cgroup namespace mode: {mode}"
        )));
    }
    if let Some(name) = bad(
        raw.pointer("/HostConfig/RestartPolicy/Name"),
        &["", "no", "always", "unless-stopped", "on-failure"],
    ) {
        return Err(Error::invalid(format!("invalid restart policy '{name}'")));
    }
    let mounts = raw.pointer("/HostConfig/Mounts").and_then(|m| m.as_array());
    for m in mounts.into_iter().flatten() {
        let kinds = ["bind", "volume", "tmpfs", "npipe", "cluster", "image"];
        if let Some(kind) = bad(m.get("Type"), &kinds) {
            return Err(Error::invalid(format!(
                "invalid mount config for type \"{kind}\": mount type unknown"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_is_taken_out_and_cgroupns_checked() {
        let d = decode(serde_json::json!({
            "Image": "bb",
            "HostConfig": {"Isolation": "microvm", "CgroupnsMode": "private"}
        }))
        .unwrap();
        assert_eq!(d.isolation, "microvm");
        assert_eq!(d.body.image.as_deref(), Some("bb"));
        let e = decode(serde_json::json!({"HostConfig": {"CgroupnsMode": 3}})).unwrap_err();
        assert_eq!(e.to_string(), "invalid cgroup namespace mode: 3");
        assert!(decode(serde_json::json!({"Cmd": 1}))
            .unwrap_err()
            .to_string()
            .starts_with("invalid container config: "));
    }
}
