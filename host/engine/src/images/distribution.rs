//! `GET /distribution/{name}/json`: what a registry has under a name (its manifest's
//! descriptor and the platforms it serves), without pulling anything.

use serde_json::{json, Map, Value};

use super::reference::{self, Reference};
use super::{digest, ImageStore, RegistryAuth};
use crate::{Error, Result};

const ACCEPT: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

/// Image configs are small; anything bigger is not one.
const MAX_CONFIG_BYTES: i64 = 4 << 20;

/// An OCI platform as dockerd prints it: empty fields left out.
fn platform(v: &Value) -> Value {
    let mut out = Map::new();
    for k in ["architecture", "os", "os.version", "os.features", "variant"] {
        match v.get(k) {
            Some(Value::String(s)) if !s.is_empty() => {
                out.insert(k.into(), json!(s));
            }
            Some(Value::Array(a)) if !a.is_empty() => {
                out.insert(k.into(), json!(a));
            }
            _ => {}
        }
    }
    Value::Object(out)
}

impl ImageStore {
    /// dockerd's `DistributionInspect`: `{Descriptor: {mediaType, digest, size},
    /// Platforms: [...]}` for `name` (tag `latest` when none is given).
    pub async fn distribution_inspect(&self, name: &str, auth: &RegistryAuth) -> Result<Value> {
        let mut r = Reference::parse(name)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(reference::DEFAULT_TAG.into());
        }
        let oauth = auth.to_oci();
        let (client, oref, (raw, mdigest)) = super::connect(&self.registry, &r, true, |c, o| {
            let oauth = oauth.clone();
            async move { c.pull_manifest_raw(&o, &oauth, ACCEPT).await }
        })
        .await?;
        let m: Value = serde_json::from_slice(&raw)
            .map_err(|e| Error::internal(format!("manifest of {}: {e}", r.familiar())))?;
        let is_index = m.get("manifests").is_some_and(Value::is_array);
        let media_type = match m.get("mediaType").and_then(Value::as_str) {
            Some(t) => t.to_string(),
            None if is_index => "application/vnd.oci.image.index.v1+json".into(),
            None => "application/vnd.oci.image.manifest.v1+json".into(),
        };
        let mdigest = if mdigest.starts_with("sha256:") {
            mdigest
        } else {
            digest::sha256_of(&raw)
        };
        let platforms: Vec<Value> = if is_index {
            m["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("platform"))
                .map(platform)
                .collect()
        } else {
            let cfg = m.get("config").cloned().unwrap_or(Value::Null);
            let desc = oci_client::manifest::OciDescriptor {
                media_type: cfg["mediaType"].as_str().unwrap_or_default().to_string(),
                digest: cfg["digest"].as_str().unwrap_or_default().to_string(),
                size: cfg["size"].as_i64().unwrap_or(0),
                ..Default::default()
            };
            if desc.digest.is_empty() || !(0..=MAX_CONFIG_BYTES).contains(&desc.size) {
                return Err(Error::internal(format!(
                    "manifest of {} has no usable config descriptor",
                    r.familiar()
                )));
            }
            let mut buf = Vec::new();
            client
                .pull_blob(&oref, &desc, &mut buf)
                .await
                .map_err(|e| super::connect::registry_err(&r, e))?;
            let c: Value = serde_json::from_slice(&buf)
                .map_err(|e| Error::internal(format!("config of {}: {e}", r.familiar())))?;
            vec![platform(&c)]
        };
        Ok(json!({
            "Descriptor": { "mediaType": media_type, "digest": mdigest, "size": raw.len() },
            "Platforms": platforms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_drop_empty_fields() {
        let p = platform(
            &json!({"architecture": "arm", "os": "linux", "variant": "v7",
            "os.version": "", "rootfs": {}}),
        );
        assert_eq!(
            p,
            json!({"architecture": "arm", "os": "linux", "variant": "v7"})
        );
    }
}
