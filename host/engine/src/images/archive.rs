//! `docker load` / `docker save`: docker-archive (`manifest.json`) and OCI image
//! layout (`index.json`) tarballs.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWriteExt};

use berth_layer::tar_index::TarIndex;

use super::reference::Reference;
use super::{digest, ImageStore, NewImage, PendingGuard, Progress};
use crate::{Error, Result};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn blob_name(digest: &str) -> Result<String> {
    if !super::reference::is_digest(digest) {
        return Err(Error::invalid(format!(
            "invalid archive: bad digest {digest}"
        )));
    }
    Ok(format!("blobs/sha256/{}", digest::hex_part(digest)))
}

impl ImageStore {
    /// `POST /images/load`: spool the body, then load it. Sends Docker's
    /// `Loaded image: …` lines as `stream` messages.
    pub async fn load<R: AsyncRead + Unpin + Send>(
        self: &Arc<Self>,
        mut body: R,
        progress: Progress,
    ) -> Result<Vec<String>> {
        let tmp = tempfile::Builder::new()
            .prefix("load-")
            .tempfile_in(self.tmp_dir())?;
        let path = tmp.path().to_path_buf();
        {
            let mut f = tokio::fs::File::create(&path).await?;
            tokio::io::copy(&mut body, &mut f)
                .await
                .map_err(|e| Error::invalid(format!("reading archive: {e}")))?;
            f.flush().await?;
        }
        let store = self.clone();
        let p = progress.clone();
        let lines = tokio::task::spawn_blocking(move || {
            let r = store.load_file(&path, &p);
            drop(tmp);
            r
        })
        .await
        .map_err(Error::internal)??;
        Ok(lines)
    }

    /// Load an archive file (blocking). The file is deleted once its content is in the
    /// store (before the commit, so its pages need not be written back).
    pub fn load_file(&self, path: &Path, progress: &Progress) -> Result<Vec<String>> {
        let r = self.load_file_inner(path, progress);
        if r.is_err() {
            // Blobs and layer dirs written before the failure are unreferenced now.
            self.gc_quietly();
        }
        r
    }

    fn load_file_inner(&self, path: &Path, progress: &Progress) -> Result<Vec<String>> {
        let idx = TarIndex::build(path)?;
        let mut guard = self.pending_guard();
        let images = if idx.has("manifest.json") {
            self.load_docker_manifest(&idx, &mut guard)?
        } else if idx.has("index.json") {
            self.load_oci_layout(&idx, &mut guard)?
        } else {
            return Err(Error::invalid(
                "invalid archive: no manifest.json or index.json found",
            ));
        };
        let mut lines = Vec::new();
        for img in images {
            let refs = img.refs.clone();
            let (id, notes) = self.commit(img)?;
            for n in notes {
                progress.send_blocking(json!({ "stream": format!("{n}\n") }))?;
                lines.push(n);
            }
            let mut shown = Vec::new();
            if refs.iter().all(|r| r.tag.is_none()) {
                shown.push(format!("Loaded image ID: {id}"));
            }
            for r in refs.iter().filter(|r| r.tag.is_some()) {
                shown.push(format!("Loaded image: {}", r.familiar()));
                self.events
                    .publish("image", "load", &id, [("name", r.familiar())]);
            }
            if refs.is_empty() {
                self.events
                    .publish("image", "load", &id, [("name", id.clone())]);
            }
            for s in shown {
                progress.send_blocking(json!({ "stream": format!("{s}\n") }))?;
                lines.push(s);
            }
        }
        Ok(lines)
    }

    fn load_layers(
        &self,
        idx: &TarIndex,
        paths: &[(String, Option<String>, Option<String>)],
        diff_ids: &[String],
        guard: &mut PendingGuard<'_>,
    ) -> Result<Vec<super::LayerRecord>> {
        if paths.len() != diff_ids.len() {
            return Err(Error::invalid(format!(
                "invalid archive: image config lists {} layers, manifest {}",
                diff_ids.len(),
                paths.len()
            )));
        }
        let mut out = Vec::new();
        for ((path, blob_digest, media_type), diff) in paths.iter().zip(diff_ids) {
            guard.add(diff);
            if let Some(rec) = self.layer(diff) {
                if self.layer_path(diff).is_dir() {
                    out.push(rec);
                    continue;
                }
            }
            let r = idx.open(path)?;
            let rec = self.ingest_with_blob(
                r,
                Some(diff),
                blob_digest.as_deref(),
                media_type.as_deref(),
                guard,
            )?;
            out.push(rec);
        }
        Ok(out)
    }

    fn load_docker_manifest(
        &self,
        idx: &TarIndex,
        guard: &mut PendingGuard<'_>,
    ) -> Result<Vec<NewImage>> {
        let entries: Vec<DockerManifestEntry> =
            serde_json::from_slice(&idx.read_small("manifest.json")?)
                .map_err(|e| Error::invalid(format!("invalid archive: manifest.json: {e}")))?;
        let mut out = Vec::new();
        for e in entries {
            let config = idx.read_small(&e.config)?;
            let cfg = super::parse_config(&config)?;
            let paths: Vec<_> = e.layers.iter().map(|l| (l.clone(), None, None)).collect();
            let layers = self.load_layers(idx, &paths, cfg.rootfs().diff_ids(), guard)?;
            let mut refs = Vec::new();
            for t in e.repo_tags.unwrap_or_default() {
                refs.push(Reference::parse_tagged(&t)?);
            }
            out.push(NewImage {
                config,
                layers,
                refs,
                parent: None,
            });
        }
        Ok(out)
    }

    fn load_oci_layout(
        &self,
        idx: &TarIndex,
        guard: &mut PendingGuard<'_>,
    ) -> Result<Vec<NewImage>> {
        let index: Value = serde_json::from_slice(&idx.read_small("index.json")?)
            .map_err(|e| Error::invalid(format!("invalid archive: index.json: {e}")))?;
        let mut out = Vec::new();
        for desc in index["manifests"].as_array().cloned().unwrap_or_default() {
            let ann = &desc["annotations"];
            let name = ann["io.containerd.image.name"].as_str().or_else(|| {
                ann["org.opencontainers.image.ref.name"]
                    .as_str()
                    .filter(|n| n.contains(':') || n.contains('/'))
            });
            let manifest = self.resolve_oci_manifest(idx, &desc, 0)?;
            let cdesc = &manifest["config"];
            let cdigest = cdesc["digest"].as_str().unwrap_or("");
            let config = idx.read_small(&blob_name(cdigest)?)?;
            if digest::sha256_of(&config) != cdigest {
                return Err(Error::invalid(format!(
                    "invalid archive: config digest mismatch for {cdigest}"
                )));
            }
            let cfg = super::parse_config(&config)?;
            let mut paths = Vec::new();
            for l in manifest["layers"].as_array().cloned().unwrap_or_default() {
                let d = l["digest"].as_str().unwrap_or("").to_string();
                paths.push((
                    blob_name(&d)?,
                    Some(d),
                    l["mediaType"].as_str().map(String::from),
                ));
            }
            let layers = self.load_layers(idx, &paths, cfg.rootfs().diff_ids(), guard)?;
            let refs = match name {
                Some(n) => vec![Reference::parse_tagged(n)?],
                None => Vec::new(),
            };
            out.push(NewImage {
                config,
                layers,
                refs,
                parent: None,
            });
        }
        if out.is_empty() {
            return Err(Error::invalid(
                "invalid archive: index.json lists no images",
            ));
        }
        Ok(out)
    }

    /// Follow an index descriptor down to an image manifest (linux/amd64 preferred).
    fn resolve_oci_manifest(&self, idx: &TarIndex, desc: &Value, depth: usize) -> Result<Value> {
        if depth > 4 {
            return Err(Error::invalid("invalid archive: nested indexes too deep"));
        }
        let d = desc["digest"].as_str().unwrap_or("");
        let raw = idx.read_small(&blob_name(d)?)?;
        if digest::sha256_of(&raw) != d {
            return Err(Error::invalid(format!(
                "invalid archive: manifest digest mismatch for {d}"
            )));
        }
        let v: Value = serde_json::from_slice(&raw)
            .map_err(|e| Error::invalid(format!("invalid archive: {d}: {e}")))?;
        if let Some(ms) = v["manifests"].as_array() {
            let pick = ms
                .iter()
                .find(|m| {
                    m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64"
                })
                .or_else(|| ms.first())
                .ok_or_else(|| Error::invalid("invalid archive: empty image index"))?;
            return self.resolve_oci_manifest(idx, pick, depth + 1);
        }
        Ok(v)
    }

    /// `GET /images/get`: write a docker-archive that also is an OCI layout (what
    /// Docker 25+ produces; Docker 20.10 reads its `manifest.json`). Blocking.
    pub fn save<W: Write>(&self, names: &[String], w: W) -> Result<()> {
        // Resolve everything first so a bad name fails before any byte is written.
        let mut images: BTreeMap<String, Vec<Reference>> = BTreeMap::new();
        {
            let st = self.state.lock().unwrap();
            for n in names {
                let id = Self::resolve_in(&st, n)?;
                let entry = images.entry(id.clone()).or_default();
                if let Ok(r) = Reference::parse(n) {
                    if r.digest.is_none() {
                        if r.tag.is_some() {
                            entry.push(r);
                        } else {
                            // A bare repository: every tag of it that names this image.
                            for (k, v) in &st.refs {
                                if *v == id && !k.contains('@') {
                                    if let Ok(kr) = Reference::parse(k) {
                                        if kr.name() == r.name() {
                                            entry.push(kr);
                                        }
                                    }
                                }
                            }
                            if entry.is_empty() {
                                entry.push(r.with_tag(super::reference::DEFAULT_TAG));
                            }
                        }
                    }
                }
            }
        }
        let st = self.state.lock().unwrap().clone();
        let mut tb = tar::Builder::new(w);
        let dir = |tb: &mut tar::Builder<W>, p: &str| -> Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_mtime(0);
            tb.append_data(&mut h, p, io::empty())?;
            Ok(())
        };
        let file = |tb: &mut tar::Builder<W>, p: &str, data: &[u8]| -> Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            tb.append_data(&mut h, p, data)?;
            Ok(())
        };
        dir(&mut tb, "blobs")?;
        dir(&mut tb, "blobs/sha256")?;
        let mut written = std::collections::HashSet::new();
        let mut manifest_json = Vec::new();
        let mut index = Vec::new();
        for (id, refs) in &images {
            let rec = &st.images[id];
            let mut layer_descs = Vec::new();
            for d in &rec.layers {
                let l = st
                    .layers
                    .get(d)
                    .ok_or_else(|| Error::internal(format!("layer {d} missing")))?;
                let path = blob_name(d)?;
                if written.insert(path.clone()) {
                    let blob = File::open(self.blob_path(&l.blob.digest))?;
                    let (_, plain) = digest::decompress(blob)?;
                    let mut h = tar::Header::new_ustar();
                    h.set_mode(0o644);
                    h.set_size(l.tar_size);
                    h.set_mtime(0);
                    let mut hr = digest::HashingReader::new(plain.take(l.tar_size));
                    tb.append_data(&mut h, &path, &mut hr)?;
                    if hr.count() != l.tar_size {
                        return Err(Error::internal(format!(
                            "layer {d} blob is shorter than recorded"
                        )));
                    }
                }
                layer_descs.push(json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": d, "size": l.tar_size,
                }));
            }
            let config = self.read_blob(id)?;
            let cpath = blob_name(id)?;
            if written.insert(cpath.clone()) {
                file(&mut tb, &cpath, &config)?;
            }
            let manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": id, "size": config.len() },
                "layers": layer_descs,
            }))
            .map_err(Error::internal)?;
            let mdigest = digest::sha256_of(&manifest);
            let mpath = blob_name(&mdigest)?;
            if written.insert(mpath.clone()) {
                file(&mut tb, &mpath, &manifest)?;
            }
            let mdesc = json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": mdigest, "size": manifest.len(),
            });
            if refs.is_empty() {
                index.push(mdesc.clone());
            }
            for r in refs {
                let mut d = mdesc.clone();
                d["annotations"] = json!({
                    "io.containerd.image.name": r.to_string(),
                    "org.opencontainers.image.ref.name": r.tag.clone().unwrap_or_default(),
                });
                index.push(d);
            }
            manifest_json.push(json!({
                "Config": cpath,
                "RepoTags": if refs.is_empty() { Value::Null } else { json!(refs.iter().map(|r| r.familiar()).collect::<Vec<_>>()) },
                "Layers": rec.layers.iter().map(|d| blob_name(d)).collect::<Result<Vec<_>>>()?,
            }));
        }
        let index = json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": index });
        file(
            &mut tb,
            "index.json",
            &serde_json::to_vec(&index).map_err(Error::internal)?,
        )?;
        file(
            &mut tb,
            "manifest.json",
            &serde_json::to_vec(&manifest_json).map_err(Error::internal)?,
        )?;
        file(&mut tb, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        tb.into_inner()?.flush()?;
        for (id, refs) in &images {
            let name = refs
                .first()
                .map(|r| r.familiar())
                .unwrap_or_else(|| id.clone());
            self.events.publish("image", "save", id, [("name", name)]);
        }
        Ok(())
    }
}
