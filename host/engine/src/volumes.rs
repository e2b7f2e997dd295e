//! Named and anonymous volumes. Metadata (driver, labels, options, anonymity) is the
//! engine's, kept in `<data-root>/volumes.json`; the data is the volume driver's —
//! a WASM plugin (`local` by default) that answers with a mount source beneath its
//! own root, which the host re-validates.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use berth_plugin_host::{DiskFormat, MountSource, PluginHost, VolumeDriverHandle};
use serde::{Deserialize, Serialize};

use crate::events::EventBus;
use crate::plugins::plugin_err;
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeRecord {
    pub name: String,
    pub driver: String,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    pub created_at: String,
    /// Created implicitly for a container (`-v /path`, image VOLUME): removed with
    /// `rm -v`/`--rm` and by a plain `volume prune`.
    #[serde(default)]
    pub anonymous: bool,
}

/// What `docker volume inspect` shows beyond the record.
pub struct VolumeView {
    pub record: VolumeRecord,
    pub mountpoint: String,
    pub status: Vec<(String, String)>,
}

/// Where a mounted volume's data is on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A directory, bind-mounted (process) or shared over virtio-fs (microVM).
    Directory(PathBuf),
    /// A disk image with a filesystem, attached to a microVM as a block device.
    Disk(PathBuf),
}

pub type InUseHook = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

pub struct Volumes {
    path: PathBuf,
    records: Mutex<BTreeMap<String, VolumeRecord>>,
    plugins: Option<Arc<PluginHost>>,
    events: Arc<EventBus>,
    in_use: RwLock<Option<InUseHook>>,
}

/// Docker's volume name rule.
fn valid_name(n: &str) -> bool {
    n.len() >= 2
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

pub fn mount_path(src: &MountSource) -> String {
    match src {
        MountSource::Directory(p) => p.display().to_string(),
        MountSource::Disk { path, .. } => path.display().to_string(),
    }
}

impl Volumes {
    pub fn open(
        data_root: &std::path::Path,
        plugins: Option<Arc<PluginHost>>,
        events: Arc<EventBus>,
    ) -> Result<Volumes> {
        let path = data_root.join("volumes.json");
        let records = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::internal(format!("volumes.json: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(Volumes {
            path,
            records: Mutex::new(records),
            plugins,
            events,
            in_use: RwLock::new(None),
        })
    }

    pub fn set_in_use_hook(&self, hook: InUseHook) {
        *self.in_use.write().unwrap() = Some(hook);
    }

    fn users(&self, name: &str) -> Vec<String> {
        self.in_use
            .read()
            .unwrap()
            .as_ref()
            .map(|h| h(name))
            .unwrap_or_default()
    }

    fn save(&self, recs: &BTreeMap<String, VolumeRecord>) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(recs).map_err(Error::internal)?;
        crate::fsutil::write_atomic(&self.path, &bytes)?;
        Ok(())
    }

    pub fn driver(&self, name: &str) -> Result<VolumeDriverHandle> {
        self.plugins
            .as_ref()
            .and_then(|p| p.volume_driver(name))
            .ok_or_else(|| {
                Error::not_found(format!(
                    "error looking up volume plugin {name}: plugin \"{name}\" not found"
                ))
            })
    }

    pub fn driver_names(&self) -> Vec<String> {
        self.plugins
            .as_ref()
            .map(|p| p.names(berth_plugin_host::PluginKind::Volume))
            .unwrap_or_default()
    }

    pub fn get_record(&self, name: &str) -> Option<VolumeRecord> {
        self.records.lock().unwrap().get(name).cloned()
    }

    /// `docker volume create`. Creating an existing volume with the same driver
    /// returns it (Docker's idempotent create).
    pub async fn create(
        &self,
        name: Option<String>,
        driver: Option<String>,
        opts: BTreeMap<String, String>,
        labels: HashMap<String, String>,
        anonymous: bool,
    ) -> Result<VolumeRecord> {
        let driver = driver
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "local".into());
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => {
                if !valid_name(&n) {
                    return Err(Error::invalid(format!(
                        "create {n}: \"{n}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
                    )));
                }
                n
            }
            None => crate::fsutil::new_id(),
        };
        if let Some(existing) = self.get_record(&name) {
            if existing.driver != driver {
                return Err(Error::conflict(format!(
                    "create {name}: volume name already exists with a different driver: {}",
                    existing.driver
                )));
            }
            return Ok(existing);
        }
        let handle = self.driver(&driver).map_err(|e| match e {
            Error::NotFound(m) => Error::not_found(format!("create {name}: {m}")),
            e => e,
        })?;
        let pairs: Vec<(String, String)> =
            opts.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        match handle.create(&name, &pairs).await {
            Ok(()) => {}
            // The driver already has it (e.g. metadata lost): adopt it.
            Err(e) if e.http_status() == 409 => {}
            Err(e) => return Err(plugin_err(e)),
        }
        let rec = VolumeRecord {
            name: name.clone(),
            driver: driver.clone(),
            labels,
            options: opts,
            created_at: crate::fsutil::now_rfc3339(),
            anonymous,
        };
        {
            let mut recs = self.records.lock().unwrap();
            recs.insert(name.clone(), rec.clone());
            self.save(&recs)?;
        }
        self.events
            .publish("volume", "create", &name, [("driver", driver)]);
        Ok(rec)
    }

    pub async fn inspect(&self, name: &str) -> Result<VolumeView> {
        let rec = self
            .get_record(name)
            .ok_or_else(|| Error::not_found(format!("get {name}: no such volume")))?;
        let (mountpoint, status) = match self.driver(&rec.driver) {
            Ok(h) => match h.get(name).await {
                Ok(info) => (
                    info.source.as_ref().map(mount_path).unwrap_or_default(),
                    info.status,
                ),
                Err(e) => (String::new(), vec![("error".into(), e.to_string())]),
            },
            Err(e) => (String::new(), vec![("error".into(), e.to_string())]),
        };
        Ok(VolumeView {
            record: rec,
            mountpoint,
            status,
        })
    }

    pub fn list(&self) -> Vec<VolumeRecord> {
        self.records.lock().unwrap().values().cloned().collect()
    }

    /// `docker volume rm`: refused while a container uses it.
    pub async fn remove(&self, name: &str, force: bool) -> Result<()> {
        let Some(rec) = self.get_record(name) else {
            if force {
                return Ok(());
            }
            return Err(Error::not_found(format!("get {name}: no such volume")));
        };
        let users = self.users(name);
        if !users.is_empty() {
            return Err(Error::conflict(format!(
                "remove {name}: volume is in use - [{}]",
                users.join(", ")
            )));
        }
        match self.driver(&rec.driver) {
            Ok(h) => match h.remove(name).await {
                Ok(()) => {}
                Err(e) if e.http_status() == 404 => {}
                Err(e) if force => tracing::warn!(volume = name, "driver remove failed: {e}"),
                Err(e) => return Err(plugin_err(e)),
            },
            Err(e) if !force => return Err(e),
            Err(_) => {}
        }
        {
            let mut recs = self.records.lock().unwrap();
            recs.remove(name);
            self.save(&recs)?;
        }
        self.events
            .publish("volume", "destroy", name, [("driver", rec.driver)]);
        Ok(())
    }

    /// `docker volume prune`: unused anonymous volumes (all unused with `all`).
    pub async fn prune(
        &self,
        all: bool,
        keep: impl Fn(&VolumeRecord) -> bool,
    ) -> (Vec<String>, u64) {
        let mut deleted = Vec::new();
        let mut space = 0;
        for rec in self.list() {
            if (!all && !rec.anonymous) || keep(&rec) || !self.users(&rec.name).is_empty() {
                continue;
            }
            if let Ok(v) = self.inspect(&rec.name).await {
                space += crate::fsutil::dir_size(std::path::Path::new(&v.mountpoint));
            }
            if self.remove(&rec.name, false).await.is_ok() {
                deleted.push(rec.name);
            }
        }
        (deleted, space)
    }

    /// Mount for a container: the host directory to bind, or the disk image to attach.
    pub async fn mount(&self, name: &str, container_id: &str) -> Result<VolumeSource> {
        let rec = self
            .get_record(name)
            .ok_or_else(|| Error::not_found(format!("get {name}: no such volume")))?;
        let h = self.driver(&rec.driver)?;
        let source = match h.mount(name, container_id).await.map_err(plugin_err)? {
            MountSource::Directory(p) => VolumeSource::Directory(p),
            MountSource::Disk {
                path,
                format: DiskFormat::Raw,
                ..
            } => VolumeSource::Disk(path),
            MountSource::Disk { .. } => {
                let _ = h.unmount(name, container_id).await;
                return Err(Error::invalid(format!(
                    "volume {name}: driver {} answered with a qcow2 image; berth attaches raw disk images only",
                    rec.driver
                )));
            }
        };
        self.events.publish(
            "volume",
            "mount",
            name,
            [("container", container_id.to_string())],
        );
        Ok(source)
    }

    pub async fn unmount(&self, name: &str, container_id: &str) {
        if let Some(rec) = self.get_record(name) {
            if let Ok(h) = self.driver(&rec.driver) {
                if let Err(e) = h.unmount(name, container_id).await {
                    tracing::warn!(volume = name, "unmount: {e}");
                }
                self.events.publish(
                    "volume",
                    "unmount",
                    name,
                    [("container", container_id.to_string())],
                );
            }
        }
    }
}
