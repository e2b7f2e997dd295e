//! Content-addressed OCI image store.
//!
//! Layout under the store root (`<data-root>/images`):
//! - `blobs/sha256/<hex>`: configs, manifests and layer blobs as received;
//! - `layers/<diff-id hex>/`: each layer unpacked once, overlayfs-style whiteouts,
//!   shared by every image (and container) that uses it;
//! - `state.json`: image records, layer records and references, replaced atomically;
//! - `tmp/`: work in progress, wiped on open.
//!
//! An image exists only once `state.json` names it. Blobs and layer dirs are written
//! (to `tmp/`, then renamed) before that commit, so an interrupted pull or load leaves
//! at most unreferenced files, which the next open removes.

mod archive;
mod auth;
mod connect;
/// Stream digests and decompression live in their own crate (fuzzed on their own).
pub use berth_blob as digest;
mod distribution;
mod flatten;
mod import;
mod ingest;
mod login;
mod progress;
mod query;
pub mod reference;
pub(crate) mod registry;
mod remove;
pub mod trust;
// The layer unpacker is berth-layer's (fuzzed without the engine).
pub use berth_layer::unpack;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::events::EventBus;
use crate::{Error, Result};
pub use auth::RegistryAuth;
pub(crate) use connect::{connect, registry_err};
pub use digest::Compression;
pub use import::{apply_changes, ImportOptions, ImportSource};
pub use progress::Progress;
pub use query::{glob_match, DeleteItem, DiskUsage, ImageSummary, ListOptions, PruneReport};
pub use reference::Reference;

/// Called with an image ID (`sha256:…`); true when a container uses that image.
pub type InUseHook = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A stored blob (layer as received, config, manifest).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobRef {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRecord {
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
    /// Bytes of the uncompressed tar stream.
    pub tar_size: u64,
    /// Bytes of regular files in the unpacked dir (Docker's layer size).
    pub size: u64,
    /// The blob the layer came from (maybe compressed).
    pub blob: BlobRef,
    /// A gzip blob made for pushing, when `blob` is not gzip.
    #[serde(default)]
    pub gzip: Option<BlobRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<config digest>`
    pub id: String,
    pub created: String,
    pub size: u64,
    #[serde(default)]
    pub parent: String,
    /// diff IDs, bottom → top.
    pub layers: Vec<String>,
    /// When the image entered this store (unix nanos).
    pub added: i64,
    #[serde(default)]
    pub last_tag_time: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    images: BTreeMap<String, ImageRecord>,
    layers: BTreeMap<String, LayerRecord>,
    /// Full references (`docker.io/library/bb:latest`, `…/bb@sha256:…`) → image ID.
    refs: BTreeMap<String, String>,
    /// gzip blobs seen for a diff ID (pulled or pushed). Kept after the layer is gone,
    /// like dockerd's distribution metadata: a later push can ask the registry for the
    /// blob without compressing the layer again.
    #[serde(default)]
    gzip_of: BTreeMap<String, BlobRef>,
}

impl State {
    fn refs_of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.refs
            .iter()
            .filter(move |(_, v)| v.as_str() == id)
            .map(|(k, _)| k)
    }
}

/// What `image_config` hands to container creation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageRuntimeConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub stop_signal: Option<String>,
    pub labels: HashMap<String, String>,
    /// Docker's `Healthcheck` object, verbatim.
    pub healthcheck: Option<serde_json::Value>,
    pub architecture: String,
    pub os: String,
}

/// `--max-download-size` unless set: larger than any sane image, smaller than a disk.
pub const DEFAULT_MAX_DOWNLOAD: u64 = 16 << 30;

pub struct ImageStore {
    root: PathBuf,
    events: Arc<EventBus>,
    state: Mutex<State>,
    /// Blob digests and diff IDs an operation in flight has written but not committed;
    /// garbage collection leaves them alone.
    pending: Mutex<HashMap<String, usize>>,
    in_use: RwLock<Option<InUseHook>>,
    /// The largest URL import downloaded (`--max-download-size`).
    pub max_download_bytes: u64,
    /// Mirrors, insecure registries, per-registry certificates.
    pub registry: trust::RegistryConfig,
}

/// Marks digests as in flight until dropped.
pub(crate) struct PendingGuard<'a> {
    store: &'a ImageStore,
    keys: Vec<String>,
}

impl PendingGuard<'_> {
    pub(crate) fn add(&mut self, key: &str) {
        *self
            .store
            .pending
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default() += 1;
        self.keys.push(key.to_string());
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut p = self.store.pending.lock().unwrap();
        for k in &self.keys {
            if let Some(n) = p.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    p.remove(k);
                }
            }
        }
    }
}

/// A new image ready to be committed.
pub(crate) struct NewImage {
    pub config: Vec<u8>,
    pub layers: Vec<LayerRecord>,
    pub refs: Vec<Reference>,
    /// The image this one was built on (`docker build` steps, `docker commit`): hides
    /// untagged intermediates from `docker images` and lets `rmi` remove the chain.
    pub parent: Option<String>,
}

pub(crate) use crate::fsutil::{now_nanos, write_atomic};

impl ImageStore {
    /// Open (or create) the store at `root`, wipe `tmp/` and remove blobs and layer
    /// dirs that no committed image references (leftovers of an interrupted run).
    pub fn open(root: &Path, events: Arc<EventBus>) -> Result<Self> {
        for d in ["blobs/sha256", "layers", "tmp"] {
            fs::create_dir_all(root.join(d))?;
        }
        let _ = fs::remove_dir_all(root.join("tmp"));
        fs::create_dir_all(root.join("tmp"))?;
        let state = match fs::read(root.join("state.json")) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                Error::internal(format!(
                    "corrupt image state {}: {e}",
                    root.join("state.json").display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e.into()),
        };
        let store = ImageStore {
            root: root.to_path_buf(),
            events,
            state: Mutex::new(state),
            pending: Mutex::new(HashMap::new()),
            in_use: RwLock::new(None),
            max_download_bytes: DEFAULT_MAX_DOWNLOAD,
            registry: trust::RegistryConfig::default(),
        };
        store.gc()?;
        Ok(store)
    }

    /// Tell the store how to know whether a container uses an image (`rmi`, prune).
    pub fn set_in_use_hook(&self, hook: InUseHook) {
        *self.in_use.write().unwrap() = Some(hook);
    }

    fn in_use(&self, id: &str) -> bool {
        self.in_use
            .read()
            .unwrap()
            .as_ref()
            .map(|h| h(id))
            .unwrap_or(false)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn blob_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(digest::hex_part(digest))
    }

    pub(crate) fn layer_path(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(digest::hex_part(diff_id))
    }

    pub(crate) fn pending_guard(&self) -> PendingGuard<'_> {
        PendingGuard {
            store: self,
            keys: Vec::new(),
        }
    }

    fn save_state(&self, st: &State) -> Result<()> {
        let data = serde_json::to_vec(st).map_err(Error::internal)?;
        Ok(write_atomic(&self.root.join("state.json"), &data)?)
    }

    pub(crate) fn layer(&self, diff_id: &str) -> Option<LayerRecord> {
        self.state.lock().unwrap().layers.get(diff_id).cloned()
    }

    pub(crate) fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        fs::read(self.blob_path(digest))
            .map_err(|e| Error::internal(format!("read blob {digest}: {e}")))
    }

    /// Register images: layers, records and references, in one atomic state write.
    /// Returns `(id, messages)` per image, messages being Docker's notes about tags
    /// taken from other images.
    pub(crate) fn commit(&self, img: NewImage) -> Result<(String, Vec<String>)> {
        let id = digest::sha256_of(&img.config);
        let cfg = parse_config(&img.config)?;
        let diff_ids = cfg.rootfs().diff_ids().clone();
        if diff_ids.len() != img.layers.len()
            || diff_ids
                .iter()
                .zip(&img.layers)
                .any(|(a, b)| *a != b.diff_id)
        {
            return Err(Error::invalid(
                "image config rootfs does not match its layers",
            ));
        }
        // The config blob is content addressed by the image ID.
        let cpath = self.blob_path(&id);
        if !cpath.exists() {
            write_atomic(&cpath, &img.config)?;
        }
        // Layer dirs and blobs must be on disk before state.json points at them: one
        // syncfs for the whole operation instead of an fsync per file.
        unpack::syncfs(&self.root)?;
        let mut notes = Vec::new();
        let mut st = self.state.lock().unwrap();
        for l in &img.layers {
            st.layers
                .entry(l.diff_id.clone())
                .or_insert_with(|| l.clone());
            if l.blob.media_type.contains("gzip") {
                st.gzip_of.insert(l.diff_id.clone(), l.blob.clone());
            }
        }
        let size = img.layers.iter().map(|l| l.size).sum();
        st.images.entry(id.clone()).or_insert_with(|| ImageRecord {
            id: id.clone(),
            created: cfg.created().clone().unwrap_or_default(),
            size,
            parent: img.parent.clone().unwrap_or_default(),
            layers: diff_ids,
            added: now_nanos(),
            last_tag_time: None,
        });
        for r in &img.refs {
            let key = r.to_string();
            if let Some(old) = st.refs.insert(key, id.clone()) {
                if old != id && r.tag.is_some() {
                    notes.push(format!(
                        "The image {} already exists, renaming the old one with ID {old} to empty string",
                        r.familiar()
                    ));
                }
            }
        }
        if img.refs.iter().any(|r| r.tag.is_some()) {
            if let Some(rec) = st.images.get_mut(&id) {
                rec.last_tag_time = Some(crate::fsutil::now_rfc3339());
            }
        }
        self.save_state(&st)?;
        Ok((id, notes))
    }

    pub(crate) fn gc_quietly(&self) {
        if let Err(e) = self.gc() {
            tracing::warn!(error = %e, "image store cleanup failed");
        }
    }

    /// Remove blobs and layer dirs nothing references (and nothing in flight wrote).
    fn gc(&self) -> Result<()> {
        let st = self.state.lock().unwrap().clone();
        let pending: BTreeSet<String> = self.pending.lock().unwrap().keys().cloned().collect();
        let mut keep_blobs: BTreeSet<String> = BTreeSet::new();
        let mut keep_layers: BTreeSet<String> = BTreeSet::new();
        for img in st.images.values() {
            keep_blobs.insert(digest::hex_part(&img.id).to_string());
            for d in &img.layers {
                keep_layers.insert(digest::hex_part(d).to_string());
                if let Some(l) = st.layers.get(d) {
                    keep_blobs.insert(digest::hex_part(&l.blob.digest).to_string());
                    if let Some(g) = &l.gzip {
                        keep_blobs.insert(digest::hex_part(&g.digest).to_string());
                    }
                }
            }
        }
        for p in &pending {
            keep_blobs.insert(digest::hex_part(p).to_string());
            keep_layers.insert(digest::hex_part(p).to_string());
        }
        for e in fs::read_dir(self.root.join("blobs/sha256"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep_blobs.contains(&name) {
                let _ = fs::remove_file(e.path());
            }
        }
        for e in fs::read_dir(self.root.join("layers"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep_layers.contains(&name) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        // Drop layer records no image uses.
        let mut st = self.state.lock().unwrap();
        let used: BTreeSet<String> = st
            .images
            .values()
            .flat_map(|i| i.layers.iter().cloned())
            .collect();
        let before = st.layers.len();
        st.layers
            .retain(|d, _| used.contains(d) || pending.contains(d));
        if st.layers.len() != before {
            self.save_state(&st)?;
        }
        Ok(())
    }

    /// Resolve a name as Docker does: full/short ID, `sha256:` ID, `name[:tag]`,
    /// `name@digest`. Returns the image ID.
    pub fn resolve(&self, name: &str) -> Result<String> {
        let st = self.state.lock().unwrap();
        Self::resolve_in(&st, name)
    }

    fn resolve_in(st: &State, name: &str) -> Result<String> {
        let not_found = || {
            let shown = match Reference::parse_tagged(name) {
                Ok(r) => r.familiar(),
                Err(_) => name.to_string(),
            };
            Error::not_found(format!("No such image: {shown}"))
        };
        if reference::is_digest(name) {
            return st
                .images
                .contains_key(name)
                .then(|| name.to_string())
                .ok_or_else(not_found);
        }
        if reference::is_full_hex_id(name) {
            let id = format!("sha256:{name}");
            return st
                .images
                .contains_key(&id)
                .then_some(id)
                .ok_or_else(not_found);
        }
        let parsed = Reference::parse_tagged(name);
        if let Ok(r) = &parsed {
            if let Some(id) = st.refs.get(&r.to_string()) {
                return Ok(id.clone());
            }
            // `name@digest` also matches an image whose ID is that digest.
            if let Some(d) = &r.digest {
                if st.images.contains_key(d) {
                    return Ok(d.clone());
                }
            }
        }
        // Short ID prefix (with or without `sha256:`).
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if !hex.is_empty()
            && hex.len() <= 64
            && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        {
            let mut hits = st
                .images
                .keys()
                .filter(|k| digest::hex_part(k).starts_with(hex));
            if let Some(first) = hits.next() {
                if hits.next().is_some() {
                    return Err(Error::invalid(format!("ambiguous image ID prefix {name}")));
                }
                return Ok(first.clone());
            }
        }
        match parsed {
            Err(e) if !name.starts_with("sha256:") => Err(e),
            _ => Err(not_found()),
        }
    }

    fn config_of(&self, id: &str) -> Result<(Vec<u8>, oci_spec::image::ImageConfiguration)> {
        let raw = self.read_blob(id)?;
        let cfg = parse_config(&raw)?;
        Ok((raw, cfg))
    }

    /// The image's run defaults, for container creation.
    pub fn image_config(&self, name_or_id: &str) -> Result<ImageRuntimeConfig> {
        let id = self.resolve(name_or_id)?;
        let raw = self.read_blob(&id)?;
        let v: serde_json::Value = serde_json::from_slice(&raw).map_err(Error::internal)?;
        let c = &v["config"];
        let strs = |x: &serde_json::Value| -> Option<Vec<String>> {
            x.as_array().map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
        };
        let keys = |x: &serde_json::Value| -> Vec<String> {
            x.as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        Ok(ImageRuntimeConfig {
            entrypoint: strs(&c["Entrypoint"]),
            cmd: strs(&c["Cmd"]),
            env: strs(&c["Env"]).unwrap_or_default(),
            working_dir: c["WorkingDir"].as_str().unwrap_or("").to_string(),
            user: c["User"].as_str().unwrap_or("").to_string(),
            exposed_ports: keys(&c["ExposedPorts"]),
            volumes: keys(&c["Volumes"]),
            stop_signal: c["StopSignal"].as_str().map(String::from),
            labels: c["Labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
            healthcheck: c.get("Healthcheck").filter(|h| !h.is_null()).cloned(),
            architecture: v["architecture"].as_str().unwrap_or("amd64").to_string(),
            os: v["os"].as_str().unwrap_or("linux").to_string(),
        })
    }

    /// The unpacked layer dirs of an image, bottom → top (overlayfs `lowerdir` wants
    /// them top → bottom: reverse).
    pub fn layer_dirs(&self, name_or_id: &str) -> Result<Vec<PathBuf>> {
        let st = self.state.lock().unwrap();
        let id = Self::resolve_in(&st, name_or_id)?;
        Ok(st.images[&id]
            .layers
            .iter()
            .map(|d| self.layer_path(d))
            .collect())
    }

    /// Materialize the image's merged rootfs into `dest` (created if missing), applying
    /// whiteouts and opaque dirs. Blocking.
    pub fn flatten_into(&self, name_or_id: &str, dest: &Path) -> Result<()> {
        let dirs = self.layer_dirs(name_or_id)?;
        fs::create_dir_all(dest)?;
        for d in dirs {
            flatten::apply_layer(&d, dest)?;
        }
        Ok(())
    }
}

pub(crate) fn parse_config(raw: &[u8]) -> Result<oci_spec::image::ImageConfiguration> {
    serde_json::from_slice(raw).map_err(|e| Error::invalid(format!("invalid image config: {e}")))
}

#[cfg(test)]
mod tests;
