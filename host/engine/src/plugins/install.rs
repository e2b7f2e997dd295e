//! `docker plugin install` / `upgrade` / the privileges question: pull the plugin
//! artifact, check what it asks for against what the client accepted, precompile
//! and check the component, then place its files with a rename so a crash leaves
//! either the old plugin or the new one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use berth_plugin_host::Manifest;

use super::artifact::{self, Artifact};
use super::manager::{component_id, Entry, PluginManager};
use super::state::{self, Privilege, Record};
use crate::images::RegistryAuth;
use crate::{Error, Result};

fn parse_manifest(a: &Artifact) -> Result<Manifest> {
    let text = std::str::from_utf8(&a.manifest_toml)
        .map_err(|_| Error::invalid("manifest.toml is not UTF-8"))?;
    Manifest::parse(text).map_err(|e| Error::invalid(format!("{}: {e}", a.reference.familiar())))
}

fn check_privileges(a: &Artifact, m: &Manifest, accepted: &[Privilege]) -> Result<()> {
    let required = state::privileges(m);
    if state::privileges_match(&required, accepted) {
        return Ok(());
    }
    let asked: Vec<String> = required
        .iter()
        .map(|p| format!("{}: {:?}", p.name, p.value))
        .collect();
    Err(Error::Forbidden(format!(
        "privileges of {} were not accepted (it asks for {}); install with --grant-all-permissions or answer yes",
        a.reference.familiar(),
        if asked.is_empty() { "none".to_string() } else { asked.join(", ") }
    )))
}

/// Write manifest.toml and plugin.wasm into a fresh hidden dir of `parent`.
fn stage(parent: &Path, manifest_toml: &[u8], wasm: &[u8]) -> Result<PathBuf> {
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(parent)?
        .keep();
    for (name, bytes) in [("manifest.toml", manifest_toml), ("plugin.wasm", wasm)] {
        let mut f = std::fs::File::create(tmp.join(name))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    Ok(tmp)
}

fn sync_dir(p: &Path) {
    if let Ok(d) = std::fs::File::open(p) {
        let _ = d.sync_all();
    }
}

impl PluginManager {
    /// `GET /plugins/privileges?remote=`.
    pub async fn privileges(&self, remote: &str, auth: &RegistryAuth) -> Result<Vec<Privilege>> {
        let a = artifact::fetch(&self.containers.images.registry, remote, auth, false).await?;
        Ok(state::privileges(&parse_manifest(&a)?))
    }

    async fn fetch_checked(
        &self,
        remote: &str,
        auth: &RegistryAuth,
        accepted: &[Privilege],
    ) -> Result<(Artifact, Manifest, Vec<u8>)> {
        let mut a = artifact::fetch(&self.containers.images.registry, remote, auth, true).await?;
        let m = parse_manifest(&a)?;
        check_privileges(&a, &m, accepted)?;
        let wasm = a.wasm.take().unwrap_or_default();
        let host = self.host()?.clone();
        let (m2, w2) = (m.clone(), wasm.clone());
        tokio::task::spawn_blocking(move || host.precompile(&m2, &w2))
            .await
            .map_err(Error::internal)?
            .map_err(|e| Error::invalid(format!("plugin refused: {e}")))?;
        Ok((a, m, wasm))
    }

    /// `POST /plugins/pull?remote=&name=`: install, disabled (the client enables it
    /// next, as with Docker). Returns the plugin's name.
    pub async fn install(
        &self,
        remote: &str,
        name: Option<&str>,
        auth: &RegistryAuth,
        accepted: &[Privilege],
    ) -> Result<String> {
        let _op = self.ops.lock().await;
        let (a, m, wasm) = self.fetch_checked(remote, auth, accepted).await?;
        let pname = match name.filter(|n| !n.is_empty()) {
            Some(n) => state::with_default_tag(n),
            None => a.reference.familiar(),
        };
        let origin = (Some(a.reference.familiar()), Some(a.digest.clone()));
        self.place(pname, m, &a.manifest_toml, &wasm, origin)
    }

    /// Record and place a checked plugin under `pname`, disabled (install and
    /// create). The caller holds `ops`. `origin` is its reference and digest.
    pub(super) fn place(
        &self,
        pname: String,
        m: Manifest,
        manifest_toml: &[u8],
        wasm: &[u8],
        origin: (Option<String>, Option<String>),
    ) -> Result<String> {
        {
            let map = self.entries.lock().unwrap();
            if map.contains_key(&m.name)
                || super::DEFAULT_PLUGINS.contains(&m.name.as_str())
                || ["none", "json-file"].contains(&m.name.as_str())
            {
                return Err(Error::conflict(format!(
                    "plugin \"{}\" already exists",
                    m.name
                )));
            }
            if map.values().any(|e| e.record.name == pname) {
                return Err(Error::conflict(format!(
                    "plugin \"{pname}\" already exists"
                )));
            }
        }
        let dir = self.install_dir.join(&m.name);
        let tmp = stage(&self.install_dir, manifest_toml, wasm)?;
        let record = Record {
            name: pname.clone(),
            enabled: false,
            dir: dir.clone(),
            reference: origin.0,
            digest: origin.1,
            settings: BTreeMap::new(),
        };
        // Record first, then the rename: a crash in between leaves a record without
        // files, which the next start drops.
        self.entries.lock().unwrap().insert(
            m.name.clone(),
            Entry {
                record,
                manifest: Some(m),
                id: String::new(),
                loaded: false,
                refused: None,
            },
        );
        let placed = self.save().and_then(|_| {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::rename(&tmp, &dir)?;
            sync_dir(&self.install_dir);
            Ok(())
        });
        if let Err(e) = placed {
            let _ = std::fs::remove_dir_all(&tmp);
            self.entries
                .lock()
                .unwrap()
                .retain(|_, e| e.record.name != pname);
            let _ = self.save();
            return Err(e);
        }
        let id = component_id(&dir);
        if let Some(e) = self
            .entries
            .lock()
            .unwrap()
            .values_mut()
            .find(|e| e.record.name == pname)
        {
            e.id = id;
        }
        Ok(pname)
    }

    /// `POST /plugins/{name}/upgrade?remote=`: a disabled plugin gets the new
    /// component and manifest; settings still declared are kept.
    pub async fn upgrade(
        &self,
        name: &str,
        remote: &str,
        auth: &RegistryAuth,
        accepted: &[Privilege],
    ) -> Result<()> {
        let _op = self.ops.lock().await;
        let key = self.resolve(name)?;
        let (loaded, dir, pname) = {
            let map = self.entries.lock().unwrap();
            let e = &map[&key];
            (e.loaded, e.record.dir.clone(), e.record.name.clone())
        };
        if loaded {
            return Err(Error::conflict(format!(
                "plugin must be disabled before upgrading: plugin {pname} is enabled"
            )));
        }
        let (a, m, wasm) = self.fetch_checked(remote, auth, accepted).await?;
        if m.name != key {
            return Err(Error::invalid(format!(
                "{} is plugin {:?}, not {key:?}: an upgrade cannot change the plugin's name",
                a.reference.familiar(),
                m.name
            )));
        }
        let parent = dir.parent().unwrap_or(&self.install_dir).to_path_buf();
        let tmp = stage(&parent, &a.manifest_toml, &wasm)?;
        let old = parent.join(format!(".old-{key}"));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&dir, &old)?;
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            let _ = std::fs::rename(&old, &dir);
            return Err(e.into());
        }
        sync_dir(&parent);
        let _ = std::fs::remove_dir_all(&old);
        {
            let mut map = self.entries.lock().unwrap();
            let e = map.get_mut(&key).unwrap();
            e.record
                .settings
                .retain(|k, _| m.config.iter().any(|(d, _)| d == k));
            e.record.reference = Some(a.reference.familiar());
            e.record.digest = Some(a.digest.clone());
            e.id = component_id(&dir);
            e.manifest = Some(m);
            e.refused = None;
        }
        self.save()
    }
}
