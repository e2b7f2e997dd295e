//! `docker plugin` for berth's WASM plugins: the installed plugins (the user plugin
//! directories), their enabled state and settings, and wiring each loaded log
//! plugin into the container engine's log drivers. Install and upgrade from a
//! registry are in [`super::install`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_plugin_host::{Manifest, PluginHost, PluginKind};

use super::state::{self, Privilege, Record, Records};
use super::PluginLogDriver;
use crate::containers::Containers;
use crate::volumes::Volumes;
use crate::{Error, Result};

/// A plugin as `docker plugin ls/inspect` show it.
#[derive(Debug, Clone)]
pub struct PluginView {
    /// sha256 of the component (hex), or of the directory when it has none.
    pub id: String,
    pub name: String,
    /// The manifest name: what `--log-driver` / `volume create -d` take.
    pub driver: String,
    pub kind: Option<PluginKind>,
    /// Loaded and serving.
    pub enabled: bool,
    /// Why the plugin is not loaded although it should be.
    pub refused: Option<String>,
    pub reference: Option<String>,
    pub digest: Option<String>,
    pub interface: String,
    pub privileges: Vec<Privilege>,
    /// Declared `[config]` keys with their manifest defaults.
    pub config: Vec<(String, String)>,
    pub settings: BTreeMap<String, String>,
}

pub(super) struct Entry {
    pub record: Record,
    pub manifest: Option<Manifest>,
    pub id: String,
    pub loaded: bool,
    pub refused: Option<String>,
}

pub struct PluginManager {
    pub(super) host: Option<Arc<PluginHost>>,
    pub(super) state_path: PathBuf,
    /// Where `docker plugin install` puts plugins (`<data-root>/plugins`).
    pub(super) install_dir: PathBuf,
    pub(super) entries: Mutex<BTreeMap<String, Entry>>,
    /// Serialises the verbs that change plugins (install, enable, rm, ...).
    pub(super) ops: tokio::sync::Mutex<()>,
    pub(super) containers: Arc<Containers>,
    volumes: Arc<Volumes>,
}

pub(super) fn component_id(dir: &Path) -> String {
    let bytes = std::fs::read(dir.join("plugin.wasm"))
        .unwrap_or_else(|_| dir.as_os_str().as_encoded_bytes().to_vec());
    crate::images::digest::hex_part(&crate::images::digest::sha256_of(&bytes)).to_string()
}

/// What a crash during install or upgrade (see install.rs) left: a staged
/// `.tmp-*` dir is dropped; an upgrade's `.old-NAME` is the plugin itself again when
/// `NAME` was not put back yet, else dropped.
fn recover_interrupted(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(orig) = name.strip_prefix(".old-") {
            let target = dir.join(orig);
            if !target.exists() && std::fs::rename(e.path(), &target).is_ok() {
                continue;
            }
            let _ = std::fs::remove_dir_all(e.path());
        } else if name.starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl PluginManager {
    /// Scan the user plugin dirs and load every plugin the operator left enabled.
    /// Blocking (loading compiles on a cache miss).
    pub fn open(
        host: Option<Arc<PluginHost>>,
        data_root: &Path,
        user_dirs: &[PathBuf],
        containers: Arc<Containers>,
        volumes: Arc<Volumes>,
    ) -> Result<PluginManager> {
        let install_dir = data_root.join("plugins");
        std::fs::create_dir_all(&install_dir)?;
        let mut dirs = user_dirs.to_vec();
        if !dirs.contains(&install_dir) {
            dirs.push(install_dir.clone());
        }
        for dir in &dirs {
            recover_interrupted(dir);
        }
        let state_path = data_root.join("plugins.json");
        let mut records = state::load(&state_path);
        let mut entries = BTreeMap::new();
        for dir in &dirs {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut subs: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                .collect();
            subs.sort();
            for sub in subs {
                let (key, manifest, refused) = match Manifest::load(&sub) {
                    Ok(m) => (m.name.clone(), Some(m), None),
                    Err(e) => (
                        sub.file_name().unwrap().to_string_lossy().into_owned(),
                        None,
                        Some(e),
                    ),
                };
                if entries.contains_key(&key) || super::DEFAULT_PLUGINS.contains(&key.as_str()) {
                    tracing::warn!(dir = %sub.display(), "plugin {key:?} is already installed; ignoring this copy");
                    continue;
                }
                let record = records
                    .remove(&key)
                    .filter(|r| r.dir == sub)
                    .unwrap_or_else(|| Record {
                        name: state::with_default_tag(&key),
                        enabled: true,
                        dir: sub.clone(),
                        reference: None,
                        digest: None,
                        settings: BTreeMap::new(),
                    });
                let entry = Entry {
                    id: component_id(&sub),
                    record,
                    manifest,
                    loaded: false,
                    refused,
                };
                entries.insert(key, entry);
            }
        }
        let mgr = PluginManager {
            host,
            state_path,
            install_dir,
            entries: Mutex::new(entries),
            ops: tokio::sync::Mutex::new(()),
            containers,
            volumes,
        };
        let keys: Vec<String> = mgr.entries.lock().unwrap().keys().cloned().collect();
        for key in keys {
            let (wanted, refused) = {
                let map = mgr.entries.lock().unwrap();
                let e = &map[&key];
                (e.record.enabled, e.refused.clone())
            };
            match (wanted, refused) {
                (_, Some(why)) => mgr.mark_unavailable(&key, &format!("plugin refused: {why}")),
                (true, None) => {
                    if let Err(e) = mgr.activate(&key) {
                        tracing::warn!(plugin = %key, "plugin not loaded: {e}");
                    }
                }
                (false, None) => mgr.mark_unavailable(&key, &mgr.disabled_reason(&key)),
            }
        }
        mgr.save()?;
        Ok(mgr)
    }

    pub(super) fn host(&self) -> Result<&Arc<PluginHost>> {
        self.host
            .as_ref()
            .ok_or_else(|| Error::Unavailable("the WASM plugin host is not available".into()))
    }

    pub(super) fn save(&self) -> Result<()> {
        let recs: Records = self
            .entries
            .lock()
            .unwrap()
            .iter()
            .map(|(k, e)| (k.clone(), e.record.clone()))
            .collect();
        state::save(&self.state_path, &recs)
    }

    /// Every name a plugin's log driver answers to.
    fn driver_names(key: &str, rec: &Record) -> Vec<String> {
        let mut v = vec![key.to_string(), rec.name.clone()];
        if let Some(short) = rec.name.strip_suffix(":latest") {
            v.push(short.to_string());
        }
        v.sort();
        v.dedup();
        v
    }

    fn disabled_reason(&self, key: &str) -> String {
        let name = self.entries.lock().unwrap()[key].record.name.clone();
        format!("plugin {name} is disabled (docker plugin enable {name})")
    }

    fn mark_unavailable(&self, key: &str, why: &str) {
        let rec = self.entries.lock().unwrap()[key].record.clone();
        let mut drivers = self.containers.log_drivers.write().unwrap();
        for n in Self::driver_names(key, &rec) {
            drivers.set_unavailable(&n, why.to_string());
        }
    }

    /// Load a plugin and put its driver into service; a refusal is remembered.
    /// Blocking.
    pub(super) fn activate(&self, key: &str) -> Result<()> {
        let host = self.host()?.clone();
        let (dir, settings, rec) = {
            let map = self.entries.lock().unwrap();
            let e = &map[key];
            if let Some(why) = &e.refused {
                if e.manifest.is_none() {
                    return Err(Error::invalid(format!("plugin refused: {why}")));
                }
            }
            let s: Vec<(String, String)> = e.record.settings.clone().into_iter().collect();
            (e.record.dir.clone(), s, e.record.clone())
        };
        match host.load_with(&dir, &settings) {
            Ok(info) => {
                if let Some(h) = host.log_driver(&info.name) {
                    let d: Arc<dyn crate::logs::LogDriver> = Arc::new(PluginLogDriver::new(h));
                    let mut drivers = self.containers.log_drivers.write().unwrap();
                    for n in Self::driver_names(key, &rec) {
                        drivers.register_as(n, d.clone());
                    }
                }
                let mut map = self.entries.lock().unwrap();
                let e = map.get_mut(key).unwrap();
                e.loaded = true;
                e.refused = None;
                Ok(())
            }
            Err(err) => {
                let why = err.message.clone();
                self.entries.lock().unwrap().get_mut(key).unwrap().refused = Some(why.clone());
                self.mark_unavailable(key, &format!("plugin refused: {why}"));
                Err(Error::invalid(format!(
                    "plugin {} refused: {why}",
                    rec.name
                )))
            }
        }
    }

    /// Find a plugin by Docker name (with or without `:latest`), driver name or ID
    /// prefix; returns its key.
    pub(super) fn resolve(&self, name: &str) -> Result<String> {
        let map = self.entries.lock().unwrap();
        let full = state::with_default_tag(name);
        if let Some((k, _)) = map
            .iter()
            .find(|(k, e)| e.record.name == name || e.record.name == full || *k == name)
        {
            return Ok(k.clone());
        }
        let by_id: Vec<&String> = map
            .iter()
            .filter(|(_, e)| !name.is_empty() && e.id.starts_with(name))
            .map(|(k, _)| k)
            .collect();
        match by_id.as_slice() {
            [k] => Ok((*k).clone()),
            [] => Err(Error::not_found(format!("plugin \"{name}\" not found"))),
            _ => Err(Error::not_found(format!(
                "multiple plugins found for \"{name}\""
            ))),
        }
    }

    fn view(key: &str, e: &Entry) -> PluginView {
        let m = e.manifest.as_ref();
        PluginView {
            id: e.id.clone(),
            name: e.record.name.clone(),
            driver: key.to_string(),
            kind: m.map(|m| m.kind),
            enabled: e.loaded,
            refused: e.refused.clone(),
            reference: e.record.reference.clone(),
            digest: e.record.digest.clone(),
            interface: m
                .map(|m| format!("berth:driver@{}", m.interface_version))
                .unwrap_or_default(),
            privileges: m.map(state::privileges).unwrap_or_default(),
            config: m.map(|m| m.config.clone()).unwrap_or_default(),
            settings: e.record.settings.clone(),
        }
    }

    pub fn list(&self) -> Vec<PluginView> {
        let map = self.entries.lock().unwrap();
        map.iter().map(|(k, e)| Self::view(k, e)).collect()
    }

    pub fn inspect(&self, name: &str) -> Result<PluginView> {
        let key = self.resolve(name)?;
        let map = self.entries.lock().unwrap();
        // Not under `ops`: a concurrent `rm` may have removed it since.
        map.get(&key)
            .map(|e| Self::view(&key, e))
            .ok_or_else(|| Error::not_found(format!("plugin \"{name}\" not found")))
    }

    /// Containers (running) and volumes that use the plugin's driver.
    fn users(&self, key: &str) -> Vec<String> {
        let rec = self.entries.lock().unwrap()[key].record.clone();
        let names = Self::driver_names(key, &rec);
        let mut out = self.containers.log_driver_users(&names);
        out.extend(
            self.volumes
                .list()
                .into_iter()
                .filter(|v| v.driver == key)
                .map(|v| v.name),
        );
        out
    }

    pub async fn enable(&self, name: &str) -> Result<()> {
        let _op = self.ops.lock().await;
        let key = self.resolve(name)?;
        let (loaded, pname) = {
            let map = self.entries.lock().unwrap();
            (map[&key].loaded, map[&key].record.name.clone())
        };
        if loaded {
            return Err(Error::conflict(format!(
                "plugin {pname} is already enabled"
            )));
        }
        let r = tokio::task::block_in_place(|| self.activate(&key));
        // The wish is kept even when the plugin is refused, so that fixing the host
        // (e.g. a newer berthd) brings it back on restart.
        self.entries
            .lock()
            .unwrap()
            .get_mut(&key)
            .unwrap()
            .record
            .enabled = true;
        self.save()?;
        r
    }

    pub async fn disable(&self, name: &str, force: bool) -> Result<()> {
        let _op = self.ops.lock().await;
        let key = self.resolve(name)?;
        let (loaded, pname) = {
            let map = self.entries.lock().unwrap();
            (map[&key].loaded, map[&key].record.name.clone())
        };
        if !loaded {
            return Err(Error::conflict(format!(
                "plugin {pname} is already disabled"
            )));
        }
        let users = self.users(&key);
        if !force && !users.is_empty() {
            return Err(Error::conflict(format!(
                "plugin {pname} is in use (by {})",
                users.join(", ")
            )));
        }
        self.deactivate(&key);
        self.entries
            .lock()
            .unwrap()
            .get_mut(&key)
            .unwrap()
            .record
            .enabled = false;
        self.save()
    }

    pub(super) fn deactivate(&self, key: &str) {
        self.mark_unavailable(key, &self.disabled_reason(key));
        if let Some(h) = &self.host {
            h.unload(key);
        }
        self.entries.lock().unwrap().get_mut(key).unwrap().loaded = false;
    }

    pub async fn remove(&self, name: &str, force: bool) -> Result<()> {
        let _op = self.ops.lock().await;
        let key = self.resolve(name)?;
        let (loaded, rec) = {
            let map = self.entries.lock().unwrap();
            (map[&key].loaded, map[&key].record.clone())
        };
        if loaded && !force {
            return Err(Error::conflict(format!(
                "plugin {} is enabled: disable it first (docker plugin disable {}) or use --force",
                rec.name, rec.name
            )));
        }
        if loaded {
            self.deactivate(&key);
        }
        {
            let mut drivers = self.containers.log_drivers.write().unwrap();
            for n in Self::driver_names(&key, &rec) {
                drivers.forget(&n);
            }
        }
        self.entries.lock().unwrap().remove(&key);
        self.save()?;
        // After the record is gone: a crash here leaves a directory that the next
        // start picks up as a hand-installed plugin, never a record without files.
        std::fs::remove_dir_all(&rec.dir)?;
        Ok(())
    }

    /// `docker plugin set NAME key=value...`: `[config]` values, while disabled.
    pub async fn set(&self, name: &str, args: &[String]) -> Result<()> {
        let _op = self.ops.lock().await;
        let key = self.resolve(name)?;
        let mut map = self.entries.lock().unwrap();
        let e = map.get_mut(&key).unwrap();
        if e.loaded {
            return Err(Error::conflict(
                "cannot set on an active plugin, disable plugin before setting",
            ));
        }
        let declared = e
            .manifest
            .as_ref()
            .map(|m| m.config.clone())
            .unwrap_or_default();
        let mut settings = e.record.settings.clone();
        for a in args {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| Error::invalid(format!("invalid setting {a:?}: want key=value")))?;
            if !declared.iter().any(|(d, _)| d == k) {
                return Err(Error::invalid(format!(
                    "setting {k:?} not found in the plugin configuration"
                )));
            }
            settings.insert(k.to_string(), v.to_string());
        }
        e.record.settings = settings;
        drop(map);
        self.save()
    }
}
