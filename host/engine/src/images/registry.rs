//! `docker pull` / `docker push` against a registry (OCI distribution API through
//! `oci-client`), with Docker's progress messages. Which endpoint (mirror, HTTPS,
//! plain HTTP) and what TLS trust: connect.rs and trust.rs.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt, TryStreamExt};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::{Client, RegistryOperation};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::connect::{oci_ref, registry_err};
use super::reference::{self, Reference};
use super::RegistryAuth;
use super::{digest, BlobRef, Compression, ImageStore, LayerRecord, NewImage, Progress};
use crate::{Error, Result};

const CONCURRENCY: usize = 3;
const TICK: Duration = Duration::from_millis(100);

fn short(d: &str) -> String {
    digest::hex_part(d).chars().take(12).collect()
}

impl ImageStore {
    /// `POST /images/create?fromImage=&tag=`. Errors before the first progress message
    /// (bad name, unknown manifest, registry down) are returned without any message
    /// sent, so the API can answer with a plain HTTP error, as dockerd does.
    pub async fn pull(
        self: &Arc<Self>,
        image: &str,
        tag: &str,
        auth: &RegistryAuth,
        progress: Progress,
    ) -> Result<String> {
        let r = self.pull_inner(image, tag, auth, progress).await;
        if r.is_err() {
            let store = self.clone();
            let _ = tokio::task::spawn_blocking(move || store.gc_quietly()).await;
        }
        r
    }

    async fn pull_inner(
        self: &Arc<Self>,
        image: &str,
        tag: &str,
        auth: &RegistryAuth,
        progress: Progress,
    ) -> Result<String> {
        let mut r = Reference::parse(image)?;
        if !tag.is_empty() {
            if reference::is_digest(tag) {
                r.digest = Some(tag.to_string());
                r.tag = None;
            } else if reference::is_valid_tag(tag) {
                r.tag = Some(tag.to_string());
            } else {
                return Err(Error::invalid("invalid reference format"));
            }
        }
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(reference::DEFAULT_TAG.into());
        }
        let oauth = auth.to_oci();
        let (client, oref, (manifest, mdigest, config)) =
            super::connect::connect(&self.registry, &r, true, |c, o| {
                let oauth = oauth.clone();
                async move { c.pull_manifest_and_config(&o, &oauth).await }
            })
            .await?;
        let config = config.into_bytes();
        let id = digest::sha256_of(&config);
        if id != manifest.config.digest {
            return Err(Error::invalid(format!(
                "config digest mismatch: manifest says {}, got {id}",
                manifest.config.digest
            )));
        }
        let cfg = super::parse_config(&config)?;
        let diff_ids = cfg.rootfs().diff_ids().clone();
        if diff_ids.len() != manifest.layers.len() {
            return Err(Error::invalid(
                "image config and manifest disagree on the number of layers",
            ));
        }
        let tag_or_digest = r.tag.clone().or(r.digest.clone()).unwrap_or_default();
        progress
            .send(json!({ "status": format!("Pulling from {}", r.path), "id": tag_or_digest }))
            .await?;
        let had_image = self.state.lock().unwrap().images.contains_key(&id);
        let mut guard = self.pending_guard();
        let mut todo = Vec::new();
        let mut layers: Vec<Option<LayerRecord>> = vec![None; diff_ids.len()];
        for (i, (desc, diff)) in manifest.layers.iter().zip(&diff_ids).enumerate() {
            guard.add(diff);
            guard.add(&desc.digest);
            match self.layer(diff).filter(|_| self.layer_path(diff).is_dir()) {
                Some(rec) => {
                    progress
                        .layer(&short(&desc.digest), "Already exists")
                        .await?;
                    layers[i] = Some(rec);
                }
                None => {
                    progress
                        .layer(&short(&desc.digest), "Pulling fs layer")
                        .await?;
                    todo.push((i, desc.clone(), diff.clone()));
                }
            }
        }
        let fetched: Vec<(usize, LayerRecord)> = stream::iter(todo)
            .map(|(i, desc, diff)| {
                let client = &client;
                let oref = &oref;
                let progress = progress.clone();
                async move {
                    self.fetch_layer(client, oref, &desc, &diff, &progress)
                        .await
                        .map(|rec| (i, rec))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        for (i, rec) in fetched {
            layers[i] = Some(rec);
        }
        let layers: Vec<LayerRecord> = layers
            .into_iter()
            .map(|l| l.expect("every layer fetched"))
            .collect();
        let mut refs = vec![r.with_digest(&mdigest)];
        if r.tag.is_some() {
            refs.push(r.clone());
        }
        let tagged_before =
            r.tag.is_some() && self.resolve(&r.to_string()).ok().as_deref() == Some(id.as_str());
        let store = self.clone();
        let (id, _) = tokio::task::spawn_blocking(move || {
            store.commit(NewImage {
                config,
                layers,
                refs,
                parent: None,
            })
        })
        .await
        .map_err(Error::internal)??;
        drop(guard);
        progress.status(&format!("Digest: {mdigest}")).await?;
        let status = if had_image && tagged_before {
            format!("Status: Image is up to date for {}", r.familiar())
        } else {
            format!("Status: Downloaded newer image for {}", r.familiar())
        };
        progress.status(&status).await?;
        self.events
            .publish("image", "pull", &r.familiar(), [("name", r.familiar())]);
        Ok(id)
    }

    async fn fetch_layer(
        self: &Arc<Self>,
        client: &Client,
        oref: &oci_client::Reference,
        desc: &OciDescriptor,
        diff: &str,
        progress: &Progress,
    ) -> Result<LayerRecord> {
        let sid = short(&desc.digest);
        let r = Reference {
            domain: oref.registry().to_string(),
            path: oref.repository().to_string(),
            tag: None,
            digest: Some(desc.digest.clone()),
        };
        let mut s = client
            .pull_blob_stream(oref, desc)
            .await
            .map_err(|e| registry_err(&r, e))?;
        let total = s.content_length.unwrap_or(desc.size.max(0) as u64);
        let tmp = tempfile::Builder::new()
            .prefix("pull-")
            .tempfile_in(self.tmp_dir())?;
        let mut f = tokio::fs::File::from_std(tmp.reopen()?);
        let mut hasher = digest::HashingWriter::new(std::io::sink());
        let mut got = 0u64;
        let mut last = Instant::now() - TICK;
        while let Some(chunk) = s.stream.next().await {
            let chunk = chunk
                .map_err(|e| Error::Unavailable(format!("downloading {}: {e}", desc.digest)))?;
            hasher.write_all(&chunk)?;
            f.write_all(&chunk).await?;
            got += chunk.len() as u64;
            if last.elapsed() >= TICK {
                progress
                    .layer_progress(&sid, "Downloading", got, total)
                    .await?;
                last = Instant::now();
            }
        }
        f.flush().await?;
        f.sync_data().await?;
        drop(f);
        progress.layer(&sid, "Verifying Checksum").await?;
        let (_, got_digest, _) = hasher.finish();
        if got_digest != desc.digest {
            return Err(Error::invalid(format!(
                "layer digest mismatch: expected {}, got {got_digest}",
                desc.digest
            )));
        }
        progress.layer(&sid, "Download complete").await?;
        let blob_path = self.blob_path(&desc.digest);
        if !blob_path.exists() {
            tmp.persist(&blob_path).map_err(|e| Error::from(e.error))?;
        }
        progress.layer_progress(&sid, "Extracting", 0, got).await?;
        let store = self.clone();
        let diff = diff.to_string();
        let (diff_id, tar_size, size) = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&blob_path)?;
            // The pull's own guard already covers `diff`.
            store.ingest_layer(f, Some(&diff), &mut store.pending_guard())
        })
        .await
        .map_err(Error::internal)??;
        progress
            .layer_progress(&sid, "Extracting", got, got)
            .await?;
        progress.layer(&sid, "Pull complete").await?;
        let media_type = desc.media_type.clone();
        Ok(LayerRecord {
            diff_id,
            tar_size,
            size,
            blob: BlobRef {
                digest: desc.digest.clone(),
                media_type,
                size: got,
            },
            gzip: None,
        })
    }

    /// The gzip blob to push for a layer, making (and recording) one if needed.
    fn push_blob_for(&self, l: &LayerRecord) -> Result<BlobRef> {
        if let Some(g) = &l.gzip {
            if self.blob_path(&g.digest).exists() {
                return Ok(g.clone());
            }
        }
        let head = {
            let mut h = [0u8; 8];
            let mut f = std::fs::File::open(self.blob_path(&l.blob.digest))?;
            let n = std::io::Read::read(&mut f, &mut h)?;
            Compression::sniff(&h[..n])
        };
        if head == Compression::Gzip {
            return Ok(l.blob.clone());
        }
        let src = std::fs::File::open(self.blob_path(&l.blob.digest))?;
        let (_, mut plain) = digest::decompress(src)?;
        let tmp = tempfile::Builder::new()
            .prefix("gzip-")
            .tempfile_in(self.tmp_dir())?;
        let w = digest::HashingWriter::new(std::io::BufWriter::new(tmp.reopen()?));
        let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::fast());
        std::io::copy(&mut plain, &mut gz)?;
        let (bw, d, n) = gz.finish()?.finish();
        bw.into_inner()
            .map_err(|e| Error::from(e.into_error()))?
            .sync_data()?;
        let dest = self.blob_path(&d);
        if !dest.exists() {
            tmp.persist(&dest).map_err(|e| Error::from(e.error))?;
        }
        let b = BlobRef {
            digest: d,
            media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
            size: n,
        };
        let mut st = self.state.lock().unwrap();
        if let Some(rec) = st.layers.get_mut(&l.diff_id) {
            rec.gzip = Some(b.clone());
        }
        st.gzip_of.insert(l.diff_id.clone(), b.clone());
        self.save_state(&st)?;
        Ok(b)
    }

    /// A gzip digest already known for this layer, without compressing anything.
    fn known_gzip(&self, l: &LayerRecord) -> Option<BlobRef> {
        if let Some(g) = &l.gzip {
            return Some(g.clone());
        }
        if l.blob.media_type.contains("gzip") {
            return Some(l.blob.clone());
        }
        self.state.lock().unwrap().gzip_of.get(&l.diff_id).cloned()
    }

    /// `POST /images/{name}/push?tag=`. An empty tag pushes every tag of the repository.
    pub async fn push(
        self: &Arc<Self>,
        name: &str,
        tag: &str,
        auth: &RegistryAuth,
        progress: Progress,
    ) -> Result<()> {
        let mut r = Reference::parse(name)?;
        if r.digest.is_some() {
            return Err(Error::invalid("cannot push a digest reference"));
        }
        if !tag.is_empty() {
            if !reference::is_valid_tag(tag) {
                return Err(Error::invalid(format!("invalid tag format: {tag}")));
            }
            r.tag = Some(tag.to_string());
        }
        let targets: Vec<Reference> = match &r.tag {
            Some(_) => vec![r.clone()],
            None => {
                let st = self.state.lock().unwrap();
                st.refs
                    .keys()
                    .filter_map(|k| Reference::parse(k).ok())
                    .filter(|k| k.tag.is_some() && k.name() == r.name())
                    .collect()
            }
        };
        if targets.is_empty() || self.resolve(&targets[0].to_string()).is_err() {
            return Err(Error::not_found(format!(
                "An image does not exist locally with the tag: {}",
                r.familiar()
            )));
        }
        // The header first, as dockerd: a registry that refuses us (unauthorized,
        // untrusted certificate) is then an error in the stream, which the CLI prints,
        // rather than an HTTP 401 that makes it prompt for credentials.
        progress
            .status(&format!(
                "The push refers to repository [{}]",
                r.with_tag("x").familiar_name()
            ))
            .await?;
        let oauth = auth.to_oci();
        let (client, _, _) = super::connect::connect(&self.registry, &targets[0], false, |c, o| {
            let oauth = oauth.clone();
            async move { c.auth(&o, &oauth, RegistryOperation::Push).await }
        })
        .await?;
        for t in targets {
            self.push_one(&client, &t, &progress).await?;
        }
        Ok(())
    }

    async fn push_one(
        self: &Arc<Self>,
        client: &Client,
        r: &Reference,
        progress: &Progress,
    ) -> Result<()> {
        let id = self.resolve(&r.to_string())?;
        let oref = oci_ref(r);
        let (rec, layers) = {
            let st = self.state.lock().unwrap();
            let rec = st
                .images
                .get(&id)
                .cloned()
                .ok_or_else(|| Error::not_found(format!("No such image: {}", r.familiar())))?;
            let layers: Vec<LayerRecord> = rec
                .layers
                .iter()
                .filter_map(|d| st.layers.get(d).cloned())
                .collect();
            (rec, layers)
        };
        if layers.len() != rec.layers.len() {
            return Err(Error::internal("image layers missing from the store"));
        }
        for l in layers.iter().rev() {
            progress.layer(&short(&l.diff_id), "Preparing").await?;
        }
        let pushed: std::collections::HashMap<String, BlobRef> =
            stream::iter(layers.iter().rev().cloned())
                .map(|l| {
                    let progress = progress.clone();
                    let oref = &oref;
                    async move {
                        let sid = short(&l.diff_id);
                        if let Some(k) = self.known_gzip(&l) {
                            if client
                                .blob_exists(oref, &k.digest)
                                .await
                                .map_err(|e| registry_err(r, e))?
                            {
                                progress.layer(&sid, "Layer already exists").await?;
                                return Ok::<_, Error>((l.diff_id.clone(), k));
                            }
                        }
                        let store = self.clone();
                        let lc = l.clone();
                        let b = tokio::task::spawn_blocking(move || store.push_blob_for(&lc))
                            .await
                            .map_err(Error::internal)??;
                        progress.layer_progress(&sid, "Pushing", 0, b.size).await?;
                        let path = self.blob_path(&b.digest);
                        let file = tokio::fs::File::open(&path).await?;
                        let total = b.size;
                        let p2 = progress.clone();
                        let sid2 = sid.clone();
                        let body = tokio_util_like_stream(file, move |sent| {
                            let p = p2.clone();
                            let sid = sid2.clone();
                            async move {
                                let _ = p.layer_progress(&sid, "Pushing", sent, total).await;
                            }
                        });
                        client
                            .push_blob_stream(oref, body, &b.digest, Some(b.size))
                            .await
                            .map_err(|e| registry_err(r, e))?;
                        progress.layer(&sid, "Pushed").await?;
                        Ok((l.diff_id.clone(), b))
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect()
                .await?;
        let blobs: Vec<BlobRef> = rec.layers.iter().map(|d| pushed[d].clone()).collect();
        let config = self.read_blob(&id)?;
        if !client
            .blob_exists(&oref, &id)
            .await
            .map_err(|e| registry_err(r, e))?
        {
            client
                .push_blob(&oref, config.clone(), &id)
                .await
                .map_err(|e| registry_err(r, e))?;
        }
        let all_gzip = blobs.iter().all(|b| b.media_type.contains("gzip"));
        let (mt, cfg_mt, layer_mt) = if all_gzip {
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            )
        } else {
            (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
                "",
            )
        };
        let layer_descs: Vec<_> = blobs
            .iter()
            .map(|b| {
                let t = if layer_mt.is_empty() {
                    b.media_type.as_str()
                } else {
                    layer_mt
                };
                json!({ "mediaType": t, "size": b.size, "digest": b.digest })
            })
            .collect();
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": { "mediaType": cfg_mt, "size": config.len(), "digest": id },
            "layers": layer_descs,
        }))
        .map_err(Error::internal)?;
        let mdigest = digest::sha256_of(&manifest);
        client
            .push_manifest_raw(
                &oref,
                manifest.clone(),
                mt.parse().map_err(Error::internal)?,
            )
            .await
            .map_err(|e| registry_err(r, e))?;
        let tag = r.tag.clone().unwrap_or_default();
        progress
            .status(&format!(
                "{tag}: digest: {mdigest} size: {}",
                manifest.len()
            ))
            .await?;
        progress
            .send(json!({ "progressDetail": {}, "aux": { "Tag": tag, "Digest": mdigest, "Size": manifest.len() } }))
            .await?;
        {
            let mut st = self.state.lock().unwrap();
            st.refs
                .insert(r.with_digest(&mdigest).to_string(), id.clone());
            self.save_state(&st)?;
        }
        self.events
            .publish("image", "push", &r.familiar(), [("name", r.familiar())]);
        Ok(())
    }
}

/// A byte stream over a file that reports how much was read (at most every 100 ms).
fn tokio_util_like_stream<F, Fut>(
    file: tokio::fs::File,
    report: F,
) -> impl futures_util::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use tokio::io::AsyncReadExt;
    stream::unfold(
        (file, 0u64, Instant::now() - TICK, report),
        |(mut f, sent, last, report)| async move {
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    let sent = sent + n as u64;
                    let last = if last.elapsed() >= TICK {
                        report(sent).await;
                        Instant::now()
                    } else {
                        last
                    };
                    Some((Ok(bytes::Bytes::from(buf)), (f, sent, last, report)))
                }
                Err(e) => Some((
                    Err(OciDistributionError::IoError(e)),
                    (f, sent, last, report),
                )),
            }
        },
    )
}
