//! Volume drivers. Every call fails closed: a plugin that is down, slow or
//! misbehaving yields a typed error, never a guess. Mount sources come back from
//! the plugin relative to its root and are resolved here beneath that root with
//! no symlink following (see [`crate::resolve`]).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use crate::bindings::v0_1_0::volume::berth::driver::volume_host::ImageFormat;
use crate::bindings::v0_1_0::volume::exports::berth::driver::volume_driver as wit;
use crate::error::PluginError;
use crate::plugin::{request, Job, Runner};
use crate::resolve::{resolve, Expect};
use crate::shared::Shared;
use crate::validate::{check_name, check_options, MAX_VOLUMES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// Where a volume's data is, as a host path beneath the plugin's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A directory: bind-mount it (process isolation) or share it over virtio-fs.
    Directory(PathBuf),
    /// A disk image to attach as a virtio-blk device (microVM isolation).
    Disk {
        path: PathBuf,
        format: DiskFormat,
        read_only: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeScope {
    Local,
    Global,
}

/// `docker volume inspect` material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub source: Option<MountSource>,
    pub created_nano: i64,
    pub status: Vec<(String, String)>,
}

/// Handle to a loaded volume driver. Cheap to clone.
#[derive(Clone)]
pub struct VolumeDriverHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: SyncSender<Job>,
}

fn invalid(e: String) -> PluginError {
    PluginError::Invalid(e)
}

impl VolumeDriverHandle {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Host directory that holds this plugin's data (its WASI root).
    pub fn root(&self) -> &std::path::Path {
        &self.shared.root
    }

    pub async fn capabilities(&self) -> Result<VolumeScope, PluginError> {
        request(&self.shared, &self.tx, |r| {
            let c = r.call(|s, i| {
                i.volume()
                    .berth_driver_volume_driver()
                    .call_get_capabilities(s)
            })?;
            Ok(match c.scope {
                wit::Scope::Local => VolumeScope::Local,
                wit::Scope::Global => VolumeScope::Global,
            })
        })
        .await
    }

    /// `docker volume create -d NAME -o k=v`. An existing volume gives `AlreadyExists`.
    pub async fn create(&self, name: &str, opts: &[(String, String)]) -> Result<(), PluginError> {
        check_name("volume name", name).map_err(invalid)?;
        check_options(opts).map_err(invalid)?;
        let (name, opts) = (name.to_string(), opts.to_vec());
        request(&self.shared, &self.tx, move |r| {
            r.call(|s, i| {
                i.volume()
                    .berth_driver_volume_driver()
                    .call_create(s, &name, &opts)
            })?
            .map_err(PluginError::from)
        })
        .await
    }

    pub async fn remove(&self, name: &str) -> Result<(), PluginError> {
        check_name("volume name", name).map_err(invalid)?;
        let name = name.to_string();
        request(&self.shared, &self.tx, move |r| {
            r.call(|s, i| {
                i.volume()
                    .berth_driver_volume_driver()
                    .call_remove(s, &name)
            })?
            .map_err(PluginError::from)
        })
        .await
    }

    /// Mount for container `caller_id` (refcounted by the plugin per caller).
    pub async fn mount(&self, name: &str, caller_id: &str) -> Result<MountSource, PluginError> {
        check_name("volume name", name).map_err(invalid)?;
        check_name("caller id", caller_id).map_err(invalid)?;
        let (name, caller) = (name.to_string(), caller_id.to_string());
        request(&self.shared, &self.tx, move |r| {
            let src = r
                .call(|s, i| {
                    i.volume()
                        .berth_driver_volume_driver()
                        .call_mount(s, &name, &caller)
                })?
                .map_err(PluginError::from)?;
            r.host_source(&src)
        })
        .await
    }

    pub async fn unmount(&self, name: &str, caller_id: &str) -> Result<(), PluginError> {
        check_name("volume name", name).map_err(invalid)?;
        check_name("caller id", caller_id).map_err(invalid)?;
        let (name, caller) = (name.to_string(), caller_id.to_string());
        request(&self.shared, &self.tx, move |r| {
            r.call(|s, i| {
                i.volume()
                    .berth_driver_volume_driver()
                    .call_unmount(s, &name, &caller)
            })?
            .map_err(PluginError::from)
        })
        .await
    }

    pub async fn path(&self, name: &str) -> Result<Option<MountSource>, PluginError> {
        check_name("volume name", name).map_err(invalid)?;
        let name = name.to_string();
        request(&self.shared, &self.tx, move |r| {
            let src = r
                .call(|s, i| i.volume().berth_driver_volume_driver().call_path(s, &name))?
                .map_err(PluginError::from)?;
            src.as_ref().map(|s| r.host_source(s)).transpose()
        })
        .await
    }

    pub async fn get(&self, name: &str) -> Result<VolumeInfo, PluginError> {
        check_name("volume name", name).map_err(invalid)?;
        let name = name.to_string();
        request(&self.shared, &self.tx, move |r| {
            let v = r
                .call(|s, i| i.volume().berth_driver_volume_driver().call_get(s, &name))?
                .map_err(PluginError::from)?;
            if v.name != name {
                return Err(r.bad_reply(format!("asked for volume {name:?}, got {:?}", v.name)));
            }
            r.volume_info(v)
        })
        .await
    }

    pub async fn list(&self) -> Result<Vec<VolumeInfo>, PluginError> {
        request(&self.shared, &self.tx, |r| {
            let vs = r
                .call(|s, i| i.volume().berth_driver_volume_driver().call_list(s))?
                .map_err(PluginError::from)?;
            if vs.len() > MAX_VOLUMES {
                return Err(r.bad_reply(format!(
                    "{} volumes in one list reply (max {MAX_VOLUMES})",
                    vs.len()
                )));
            }
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::with_capacity(vs.len());
            for v in vs {
                if !seen.insert(v.name.clone()) {
                    return Err(r.bad_reply(format!("volume {:?} listed twice", v.name)));
                }
                out.push(r.volume_info(v)?);
            }
            Ok(out)
        })
        .await
    }
}

impl Runner {
    fn bad_reply(&self, msg: String) -> PluginError {
        self.shared
            .stats
            .bad_replies
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(plugin = self.name(), "rejected reply: {msg}");
        PluginError::bad_reply(self.name(), msg)
    }

    fn host_source(&self, src: &wit::MountSource) -> Result<MountSource, PluginError> {
        let root = &self.shared.root;
        match src {
            wit::MountSource::Directory(rel) => resolve(root, rel, Expect::Dir)
                .map(MountSource::Directory)
                .map_err(|e| self.bad_reply(format!("mount source: {e}"))),
            wit::MountSource::Disk(d) => {
                let path = resolve(root, &d.path, Expect::File)
                    .map_err(|e| self.bad_reply(format!("disk image: {e}")))?;
                let format = match d.format {
                    ImageFormat::Raw => DiskFormat::Raw,
                    ImageFormat::Qcow2 => DiskFormat::Qcow2,
                };
                Ok(MountSource::Disk {
                    path,
                    format,
                    read_only: d.read_only,
                })
            }
        }
    }

    fn volume_info(&self, v: wit::Volume) -> Result<VolumeInfo, PluginError> {
        check_name("volume name", &v.name).map_err(|e| self.bad_reply(e))?;
        check_options(&v.status).map_err(|e| self.bad_reply(e))?;
        let source = v.source.as_ref().map(|s| self.host_source(s)).transpose()?;
        Ok(VolumeInfo {
            name: v.name,
            source,
            created_nano: v.created_nano,
            status: v.status,
        })
    }
}
