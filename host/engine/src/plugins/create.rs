//! `docker plugin create NAME DIR` and `docker plugin push NAME`.
//!
//! A berth plugin directory is what `berth-plugin build` stages in `dist/`:
//! `manifest.toml` + `plugin.wasm` (plus a `config.json`, which the docker CLI
//! insists on finding and berthd ignores). Docker's rootfs plugins cannot run here
//! and are refused with how to make a WASM one. `push` publishes the installed
//! files as the same OCI artifact `berth-plugin push` makes (`artifact::push`).

use std::io::Read;

use berth_plugin_host::Manifest;

use super::artifact;
use super::manager::PluginManager;
use super::state;
use crate::images::RegistryAuth;
use crate::{Error, Result};

/// The most a create context may unpack to; a component is a few MiB at most.
const MAX_CONTEXT_BYTES: u64 = 64 << 20;

const NOT_WASM: &str = "berth plugins are WASM components, not rootfs plugins: the \
directory must hold manifest.toml and plugin.wasm (`berth-plugin new` a project, \
then `berth-plugin build` stages them in dist/)";

/// manifest.toml and plugin.wasm from the tar of a plugin directory.
fn unpack(context: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut ar = tar::Archive::new(context);
    let (mut toml, mut wasm, mut rootfs) = (None, None, false);
    let mut total = 0u64;
    let entries = ar
        .entries()
        .map_err(|e| Error::invalid(format!("plugin context is not a tar: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| Error::invalid(format!("plugin context is not a tar: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| Error::invalid(format!("plugin context: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let slot = match path.as_str() {
            "manifest.toml" => &mut toml,
            "plugin.wasm" => &mut wasm,
            p if p == "rootfs" || p.starts_with("rootfs/") => {
                rootfs = true;
                continue;
            }
            _ => continue,
        };
        total += entry.size();
        if total > MAX_CONTEXT_BYTES {
            return Err(Error::invalid(format!(
                "plugin context over {MAX_CONTEXT_BYTES} bytes"
            )));
        }
        let mut buf = Vec::new();
        entry
            .read_to_end(&mut buf)
            .map_err(|e| Error::invalid(format!("plugin context: {path}: {e}")))?;
        *slot = Some(buf);
    }
    match (toml, wasm) {
        (Some(t), Some(w)) => Ok((t, w)),
        _ if rootfs => Err(Error::invalid(NOT_WASM)),
        (None, _) => Err(Error::invalid(format!("no manifest.toml: {NOT_WASM}"))),
        (_, None) => Err(Error::invalid(format!("no plugin.wasm: {NOT_WASM}"))),
    }
}

impl PluginManager {
    /// `POST /plugins/create?name=`: install the plugin in the tar `context`,
    /// disabled, as `docker plugin create` expects. Returns its name.
    pub async fn create(&self, name: &str, context: &[u8]) -> Result<String> {
        if name.is_empty() {
            return Err(Error::invalid("name is required"));
        }
        let pname = state::with_default_tag(name);
        artifact::parse_ref(&pname)?;
        let (toml, wasm) = unpack(context)?;
        let text =
            std::str::from_utf8(&toml).map_err(|_| Error::invalid("manifest.toml is not UTF-8"))?;
        let m = Manifest::parse(text).map_err(Error::invalid)?;
        let _op = self.ops.lock().await;
        let host = self.host()?.clone();
        let (m2, w2) = (m.clone(), wasm.clone());
        tokio::task::spawn_blocking(move || host.precompile(&m2, &w2))
            .await
            .map_err(Error::internal)?
            .map_err(|e| Error::invalid(format!("plugin refused: {e}")))?;
        self.place(pname, m, &toml, &wasm, (None, None))
    }

    /// `POST /plugins/{name}/push`: publish the installed plugin under its name.
    /// Returns the manifest digest.
    pub async fn push(&self, name: &str, auth: &RegistryAuth) -> Result<String> {
        let key = self.resolve(name)?;
        let (pname, dir) = {
            let map = self.entries.lock().unwrap();
            let e = &map[&key];
            (e.record.name.clone(), e.record.dir.clone())
        };
        let toml = std::fs::read(dir.join("manifest.toml"))?;
        let wasm = std::fs::read(dir.join("plugin.wasm"))?;
        artifact::push(&self.containers.images.registry, &pname, auth, &toml, &wasm).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, p, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn unpack_takes_berth_dirs_and_refuses_rootfs_plugins() {
        let (t, w) = unpack(&tar_of(&[
            ("./config.json", b"{}"),
            ("./manifest.toml", b"name = \"x\""),
            ("./plugin.wasm", b"\0asm"),
        ]))
        .unwrap();
        assert_eq!(
            (t.as_slice(), w.as_slice()),
            (&b"name = \"x\""[..], &b"\0asm"[..])
        );
        let e = unpack(&tar_of(&[("config.json", b"{}"), ("rootfs/bin/sh", b"")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("WASM components, not rootfs"), "{e}");
        let e = unpack(&tar_of(&[("manifest.toml", b"")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no plugin.wasm"), "{e}");
        assert!(unpack(b"not a tar at all, just bytes").is_err());
    }
}
