//! A WASM plugin as an OCI artifact, so any OCI registry serves it:
//!
//! * an OCI image manifest (`application/vnd.oci.image.manifest.v1+json`) with
//!   `artifactType` [`ARTIFACT_TYPE`];
//! * its config blob is the plugin's `manifest.toml` ([`MANIFEST_MEDIA_TYPE`]);
//! * its one layer is the component, `plugin.wasm` ([`COMPONENT_MEDIA_TYPE`]).
//!
//! Pushing and pulling go through the image store's registry client (same
//! protocol choice, auth and error wording as `docker pull`). Every blob is checked
//! against its descriptor's digest and size; a pull by digest also checks the
//! manifest's own digest.

use futures_util::StreamExt;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::RegistryOperation;
use serde::Deserialize;

use crate::images::digest::sha256_of;
use crate::images::reference::{self, Reference};
use crate::images::registry_err;
use crate::images::trust::RegistryConfig;
use crate::images::RegistryAuth;
use crate::{Error, Result};

pub const ARTIFACT_TYPE: &str = "application/vnd.berth.plugin.v1";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.berth.plugin.manifest.v1+toml";
pub const COMPONENT_MEDIA_TYPE: &str = "application/vnd.berth.plugin.component.v1+wasm";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Same cap as the plugin host's for `plugin.wasm`.
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;
const MAX_MANIFEST_TOML_BYTES: u64 = 64 << 10;
const MAX_OCI_MANIFEST_BYTES: usize = 64 << 10;

/// What a pull brought: the plugin's `manifest.toml` and, unless only the
/// privileges were asked for, its component.
pub struct Artifact {
    pub reference: Reference,
    /// Digest of the OCI manifest (`sha256:...`).
    pub digest: String,
    pub manifest_toml: Vec<u8>,
    pub wasm: Option<Vec<u8>>,
}

/// A remote plugin reference; the tag defaults to `latest`, as in Docker.
pub fn parse_ref(s: &str) -> Result<Reference> {
    let mut r = Reference::parse(s.trim())?;
    if r.tag.is_none() && r.digest.is_none() {
        r.tag = Some(reference::DEFAULT_TAG.into());
    }
    Ok(r)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciManifest {
    #[serde(default)]
    media_type: Option<String>,
    config: OciDescriptor,
    layers: Vec<OciDescriptor>,
}

fn blob_err(r: &Reference, what: &str, e: OciDistributionError) -> Error {
    match e {
        OciDistributionError::DigestError(d) => {
            Error::invalid(format!("{what} of {}: digest mismatch: {d}", r.familiar()))
        }
        other => registry_err(r, other),
    }
}

async fn fetch_blob(
    client: &oci_client::Client,
    oref: &oci_client::Reference,
    r: &Reference,
    desc: &OciDescriptor,
    what: &str,
    cap: u64,
) -> Result<Vec<u8>> {
    if desc.size < 0 || desc.size as u64 > cap {
        return Err(Error::invalid(format!(
            "{what} of {} is {} bytes (at most {cap})",
            r.familiar(),
            desc.size
        )));
    }
    let mut s = client
        .pull_blob_stream(oref, desc)
        .await
        .map_err(|e| blob_err(r, what, e))?;
    let mut buf = Vec::with_capacity(desc.size as usize);
    while let Some(chunk) = s.stream.next().await {
        // The client checks the digest as it streams; a mismatch ends the stream
        // with an error, which is what a tampered blob looks like.
        let chunk = chunk.map_err(|e| {
            Error::invalid(format!(
                "{what} of {}: digest mismatch or read error: {e}",
                r.familiar()
            ))
        })?;
        if (buf.len() + chunk.len()) as u64 > desc.size as u64 {
            return Err(Error::invalid(format!(
                "{what} of {}: digest mismatch: larger than its descriptor ({} bytes)",
                r.familiar(),
                desc.size
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    let got = sha256_of(&buf);
    if got != desc.digest {
        return Err(Error::invalid(format!(
            "{what} of {}: digest mismatch: expected {}, got {got}",
            r.familiar(),
            desc.digest
        )));
    }
    Ok(buf)
}

/// Pull a plugin artifact; `with_component = false` fetches only its manifest.toml
/// (enough to answer `GET /plugins/privileges`).
pub async fn fetch(
    registry: &RegistryConfig,
    reference: &str,
    auth: &RegistryAuth,
    with_component: bool,
) -> Result<Artifact> {
    let r = parse_ref(reference)?;
    let oauth = auth.to_oci();
    let (client, oref, (raw, _)) = crate::images::connect(registry, &r, true, |c, o| {
        let oauth = oauth.clone();
        async move { c.pull_manifest_raw(&o, &oauth, &[OCI_MANIFEST]).await }
    })
    .await?;
    if raw.len() > MAX_OCI_MANIFEST_BYTES {
        return Err(Error::invalid(format!(
            "manifest of {} is too large",
            r.familiar()
        )));
    }
    let digest = sha256_of(&raw);
    if let Some(want) = &r.digest {
        if *want != digest {
            return Err(Error::invalid(format!(
                "manifest of {}: digest mismatch: got {digest}",
                r.familiar()
            )));
        }
    }
    let m: OciManifest = serde_json::from_slice(&raw)
        .map_err(|e| Error::invalid(format!("manifest of {} is not valid: {e}", r.familiar())))?;
    if m.media_type.as_deref().is_some_and(|t| t != OCI_MANIFEST)
        || m.config.media_type != MANIFEST_MEDIA_TYPE
    {
        return Err(Error::invalid(format!(
            "{} is not a berth WASM plugin (config media type {:?}, want {MANIFEST_MEDIA_TYPE})",
            r.familiar(),
            m.config.media_type
        )));
    }
    let [layer] = m.layers.as_slice() else {
        return Err(Error::invalid(format!(
            "{} must have exactly one layer (the component), has {}",
            r.familiar(),
            m.layers.len()
        )));
    };
    if layer.media_type != COMPONENT_MEDIA_TYPE {
        return Err(Error::invalid(format!(
            "{}: layer media type {:?}, want {COMPONENT_MEDIA_TYPE}",
            r.familiar(),
            layer.media_type
        )));
    }
    let manifest_toml = fetch_blob(
        &client,
        &oref,
        &r,
        &m.config,
        "manifest.toml",
        MAX_MANIFEST_TOML_BYTES,
    )
    .await?;
    let wasm = if with_component {
        Some(
            fetch_blob(
                &client,
                &oref,
                &r,
                layer,
                "plugin.wasm",
                MAX_COMPONENT_BYTES,
            )
            .await?,
        )
    } else {
        None
    };
    Ok(Artifact {
        reference: r,
        digest,
        manifest_toml,
        wasm,
    })
}

/// The OCI manifest for a plugin; deterministic, so pushing the same plugin twice
/// gives the same digest.
pub fn oci_manifest(manifest_toml: &[u8], wasm: &[u8]) -> Vec<u8> {
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": MANIFEST_MEDIA_TYPE,
            "size": manifest_toml.len(),
            "digest": sha256_of(manifest_toml),
        },
        "layers": [{
            "mediaType": COMPONENT_MEDIA_TYPE,
            "size": wasm.len(),
            "digest": sha256_of(wasm),
            "annotations": { "org.opencontainers.image.title": "plugin.wasm" },
        }],
    });
    serde_json::to_vec_pretty(&m).expect("json")
}

/// Push a plugin (its manifest.toml and component) as `reference`; returns the
/// manifest digest.
pub async fn push(
    registry: &RegistryConfig,
    reference: &str,
    auth: &RegistryAuth,
    manifest_toml: &[u8],
    wasm: &[u8],
) -> Result<String> {
    let r = parse_ref(reference)?;
    if r.digest.is_some() {
        return Err(Error::invalid("cannot push to a digest reference"));
    }
    let oauth = auth.to_oci();
    let (client, oref, _) = crate::images::connect(registry, &r, false, |c, o| {
        let oauth = oauth.clone();
        async move { c.auth(&o, &oauth, RegistryOperation::Push).await }
    })
    .await?;
    for blob in [manifest_toml, wasm] {
        let d = sha256_of(blob);
        let exists = client
            .blob_exists(&oref, &d)
            .await
            .map_err(|e| registry_err(&r, e))?;
        if !exists {
            client
                .push_blob(&oref, blob.to_vec(), &d)
                .await
                .map_err(|e| registry_err(&r, e))?;
        }
    }
    let manifest = oci_manifest(manifest_toml, wasm);
    client
        .push_manifest_raw(
            &oref,
            manifest.clone(),
            OCI_MANIFEST.parse().map_err(Error::internal)?,
        )
        .await
        .map_err(|e| registry_err(&r, e))?;
    Ok(sha256_of(&manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_is_deterministic_and_typed() {
        let a = oci_manifest(b"name = \"x\"", b"\0asm");
        assert_eq!(a, oci_manifest(b"name = \"x\"", b"\0asm"));
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["config"]["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(v["layers"][0]["mediaType"], COMPONENT_MEDIA_TYPE);
        assert_eq!(v["layers"][0]["digest"], sha256_of(b"\0asm"));
    }

    #[test]
    fn refs_default_to_latest() {
        let r = parse_ref("127.0.0.1:5000/my-log").unwrap();
        assert_eq!(r.domain, "127.0.0.1:5000");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert!(parse_ref("no spaces allowed").is_err());
    }
}
