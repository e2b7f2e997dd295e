//! `docker diff`: the container's writable layer against its image.
//!
//! The layer is read from the overlay upper dir on the host (process isolation) or, for
//! microVMs, from the layer tar the guest agent streams (the host never mounts a guest
//! disk). Both feed one walk, so both report alike.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_layer::{OPAQUE_MARKER, WHITEOUT_PREFIX};

use super::{Container, Containers};
use crate::isolation::files::FilesExport;
use crate::{Error, Result};

/// What the engine itself creates in every container's root to mount over (Docker keeps
/// these in its `-init` layer, so they never show in `docker diff`).
const INIT_LAYER_PATHS: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/etc/mtab",
    "/.dockerenv",
];

/// Docker's change kinds.
const CHANGED: u8 = 0;
const ADDED: u8 = 1;
const DELETED: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Dir,
    Whiteout,
    Other,
}

/// A writable layer's entries, directory by directory.
trait Layer {
    /// The entries of directory `rel` (relative, "" for the root).
    fn list(&self, rel: &Path) -> Vec<(OsString, EntryKind)>;
}

/// An overlay upper dir on the host: whiteouts are 0:0 character devices.
struct UpperDir(PathBuf);

impl Layer for UpperDir {
    fn list(&self, rel: &Path) -> Vec<(OsString, EntryKind)> {
        let Ok(rd) = std::fs::read_dir(self.0.join(rel)) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let meta = e.path().symlink_metadata().ok()?;
                let kind = if meta.file_type().is_char_device() && meta.rdev() == 0 {
                    EntryKind::Whiteout
                } else if meta.is_dir() {
                    EntryKind::Dir
                } else {
                    EntryKind::Other
                };
                Some((e.file_name(), kind))
            })
            .collect()
    }
}

/// A layer tar's entries: whiteouts are `.wh.<name>` files.
#[derive(Default)]
struct LayerTar(BTreeMap<PathBuf, Vec<(OsString, EntryKind)>>);

impl LayerTar {
    fn read(r: impl std::io::Read) -> std::io::Result<LayerTar> {
        let mut t = LayerTar::default();
        let mut archive = tar::Archive::new(r);
        for entry in archive.entries()? {
            let entry = entry?;
            let path = entry.path()?.into_owned();
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
            let item = if name == OPAQUE_MARKER {
                continue;
            } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                (OsString::from(hidden), EntryKind::Whiteout)
            } else if entry.header().entry_type().is_dir() {
                (OsString::from(&name), EntryKind::Dir)
            } else {
                (OsString::from(&name), EntryKind::Other)
            };
            t.0.entry(parent).or_default().push(item);
        }
        Ok(t)
    }
}

impl Layer for LayerTar {
    fn list(&self, rel: &Path) -> Vec<(OsString, EntryKind)> {
        self.0.get(rel).cloned().unwrap_or_default()
    }
}

impl Containers {
    /// `docker diff`: changes in the writable layer against the image.
    pub async fn changes(&self, c: &Arc<Container>) -> Result<Vec<(String, u8)>> {
        let rec = c.record();
        let lowers = self.images.layer_dirs(&rec.image_id)?;
        let mut hidden: Vec<PathBuf> = INIT_LAYER_PATHS.iter().map(PathBuf::from).collect();
        // Binds, volumes and tmpfs (`--tmpfs` is recorded as a mount too).
        hidden.extend(rec.mounts.iter().map(|m| PathBuf::from(&m.destination)));
        let layer: Box<dyn Layer + Send> = if self.backend(&rec).capabilities().host_file_access {
            if rec.storage != "overlay" {
                return Err(Error::NotImplemented(
                    "docker diff needs the overlay storage driver".into(),
                ));
            }
            Box::new(UpperDir(self.container_dir(&c.id).join("upper")))
        } else {
            let stream = self.backend_files(c, FilesExport::Changes).await?;
            let bridge = tokio_util::io::SyncIoBridge::new(stream);
            let t = tokio::task::spawn_blocking(move || LayerTar::read(bridge))
                .await
                .map_err(Error::internal)?
                .map_err(|e| Error::internal(format!("reading the container's changes: {e}")))?;
            Box::new(t)
        };
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk_changes(layer.as_ref(), Path::new("/"), &lowers, &hidden, &mut out);
            out.sort();
            out
        })
        .await
        .map_err(Error::internal)
    }
}

/// Appends the changes under `rel`; returns whether it reported anything. Mount points
/// the engine owns (`hidden`, and the directories leading to them) are left out unless
/// something the user changed lies inside them.
fn walk_changes(
    layer: &(dyn Layer + Send),
    rel: &Path,
    lowers: &[PathBuf],
    hidden: &[PathBuf],
    out: &mut Vec<(String, u8)>,
) -> bool {
    let mut any = false;
    let layer_rel = rel.strip_prefix("/").unwrap_or(rel);
    for (name, kind) in layer.list(layer_rel) {
        let path = rel.join(&name);
        let shown = path.display().to_string();
        if kind == EntryKind::Whiteout {
            out.push((shown, DELETED));
            any = true;
            continue;
        }
        let in_lower = lowers.iter().any(|l| {
            l.join(path.strip_prefix("/").unwrap_or(&path))
                .symlink_metadata()
                .is_ok()
        });
        let owned = hidden.iter().any(|h| h == &path);
        let leads_to_owned = hidden.iter().any(|h| h.starts_with(&path));
        let at = out.len();
        let inner = kind == EntryKind::Dir && walk_changes(layer, &path, lowers, hidden, out);
        if !owned && (!leads_to_owned || inner) {
            out.insert(at, (shown, if in_lower { CHANGED } else { ADDED }));
            any = true;
        }
        any |= inner;
    }
    any
}
