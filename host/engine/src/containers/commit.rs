//! `docker commit`: the container's writable layer becomes a new image layer on top
//! of its image. Overlay whiteouts (0:0 char devices, opaque xattrs) are written back
//! as OCI `.wh.` entries.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::record::Status;
use super::{Container, Containers};
use crate::images::{apply_changes, Reference};
use crate::isolation::files::{copy_complete_tar, FilesExport};
use crate::{Error, Result};

pub struct CommitOptions {
    pub repo: Option<String>,
    pub tag: Option<String>,
    pub comment: String,
    pub author: String,
    pub pause: bool,
    pub changes: Vec<String>,
    /// Config fields from the request body, overriding the container's.
    pub config: Option<Value>,
    /// Take `config` as the whole new run config instead of merging the container's
    /// into it (the builder: a RUN step's command must not become the image's `Cmd`).
    pub replace_config: bool,
    /// The history entry's `created_by` (default: the container's command line).
    pub created_by: Option<String>,
    /// The container's changes, already saved as a layer tar at its exit
    /// ([`Containers::save_changes_at_exit`]); read from the container when absent.
    pub layer_tar: Option<std::path::PathBuf>,
}

/// Where a commit's layer comes from.
enum LayerSource {
    UpperDir(std::path::PathBuf),
    Tar(Box<dyn std::io::Read + Send>),
}

impl Containers {
    pub async fn commit(
        self: &Arc<Self>,
        c: &Arc<Container>,
        opts: CommitOptions,
    ) -> Result<String> {
        let rec = c.record();
        if self.backend(&rec).capabilities().host_file_access && rec.storage != "overlay" {
            return Err(Error::NotImplemented(
                "docker commit needs the overlay storage driver".into(),
            ));
        }
        let target = match opts.repo.as_deref().filter(|r| !r.is_empty()) {
            Some(repo) => {
                let tag = opts
                    .tag
                    .clone()
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| "latest".into());
                Some(Reference::parse_tagged(&format!("{repo}:{tag}"))?)
            }
            None => None,
        };
        // Its own task: a client that hangs up drops the request's future, and the
        // container must not stay frozen because of that.
        let (this, c2) = (self.clone(), c.clone());
        tokio::spawn(async move { this.commit_frozen(&c2, rec, opts, target).await })
            .await
            .map_err(Error::internal)?
    }

    /// Freezes a running container for the copy when asked (docker-py and the CLI ask by
    /// default) and thaws it again whatever the commit's outcome.
    async fn commit_frozen(
        self: &Arc<Self>,
        c: &Arc<Container>,
        rec: super::ContainerRecord,
        opts: CommitOptions,
        target: Option<Reference>,
    ) -> Result<String> {
        let paused_here = opts.pause && rec.state.status == Status::Running;
        if paused_here {
            self.pause(c).await?;
        }
        let result = self.commit_inner(c, &rec, &opts, target).await;
        if paused_here {
            if let Err(e) = self.unpause(c).await {
                // Gone meanwhile (killed, exited) is fine; anything else is worth a line.
                if c.status() == Status::Paused {
                    tracing::warn!(id = %c.id, "thawing after commit: {e}");
                }
            }
        }
        let id = result?;
        self.publish(&c.record(), "commit", &[("comment", opts.comment.clone())]);
        Ok(id)
    }

    async fn commit_inner(
        &self,
        c: &Arc<Container>,
        rec: &super::ContainerRecord,
        opts: &CommitOptions,
        target: Option<Reference>,
    ) -> Result<String> {
        let images = self.images.clone();
        // The writable layer: the overlay upper dir on the host, or a tar from the
        // container's VM (read through the hardened layer unpacker like any pulled layer).
        let saved = opts.layer_tar.clone().filter(|p| p.is_file());
        let source = if let Some(p) = saved {
            LayerSource::Tar(Box::new(std::fs::File::open(p)?))
        } else if self.backend(rec).capabilities().host_file_access {
            LayerSource::UpperDir(self.container_dir(&c.id).join("upper"))
        } else {
            let stream = self.backend_files(c, FilesExport::Changes).await?;
            LayerSource::Tar(Box::new(tokio_util::io::SyncIoBridge::new(stream)))
        };
        let parent_id = rec.image_id.clone();
        // The new config: the parent's, with the container's run config and the
        // request's overrides, one more history entry and one more layer.
        let mut config: Value =
            serde_json::from_slice(&images.read_blob(&parent_id)?).map_err(Error::internal)?;
        let mut run_cfg: Map<String, Value> = config
            .get("config")
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        let container_cfg = serde_json::to_value(&rec.config).map_err(Error::internal)?;
        let merged_keys: &[&str] = if opts.replace_config {
            run_cfg.clear();
            &[]
        } else {
            &[
                "Env",
                "Cmd",
                "Entrypoint",
                "WorkingDir",
                "User",
                "ExposedPorts",
                "Volumes",
                "Labels",
                "StopSignal",
            ]
        };
        for key in merged_keys {
            if let Some(v) = container_cfg.get(*key).filter(|v| !v.is_null()) {
                run_cfg.insert(key.to_string(), v.clone());
            }
        }
        if let Some(Value::Object(over)) = &opts.config {
            for (k, v) in over {
                if !v.is_null() {
                    run_cfg.insert(k.clone(), v.clone());
                }
            }
        }
        apply_changes(&mut run_cfg, &opts.changes)?;
        let comment = opts.comment.clone();
        let author = opts.author.clone();
        let cmd_line = opts.created_by.clone().unwrap_or_else(|| {
            std::iter::once(rec.path.clone())
                .chain(rec.args.clone())
                .collect::<Vec<_>>()
                .join(" ")
        });
        let container_id = c.id.clone();
        let owner_map = self.owner_map(rec);
        let id = tokio::task::spawn_blocking(move || -> Result<String> {
            let mut guard = images.pending_guard();
            let layer = images.ingest_written_tar(
                |mut f| match source {
                    // Under `--userns-remap` the upper dir holds host ids; the layer gets
                    // the container's.
                    LayerSource::UpperDir(upper) => match owner_map {
                        Some(map) => {
                            let w = berth_layer::owner_map::OwnerMapWriter::new(f, map);
                            Ok(berth_layer::write_upper_as_layer(&upper, w)?.into_inner()?)
                        }
                        None => Ok(berth_layer::write_upper_as_layer(&upper, f)?),
                    },
                    LayerSource::Tar(r) => match owner_map {
                        Some(map) => {
                            let mut w = berth_layer::owner_map::OwnerMapWriter::new(f, map);
                            copy_complete_tar(r, &mut w)?;
                            Ok(w.into_inner()?)
                        }
                        None => {
                            copy_complete_tar(r, &mut f)?;
                            Ok(f)
                        }
                    },
                },
                &mut guard,
            )?;
            let now = crate::fsutil::now_rfc3339();
            let obj = config
                .as_object_mut()
                .ok_or_else(|| Error::internal("image config is not an object"))?;
            obj.insert("config".into(), Value::Object(run_cfg));
            obj.insert("created".into(), json!(now));
            obj.insert("container".into(), json!(container_id));
            if !author.is_empty() {
                obj.insert("author".into(), json!(author));
            }
            let diff_ids = obj
                .get_mut("rootfs")
                .and_then(|r| r.get_mut("diff_ids"))
                .and_then(|d| d.as_array_mut())
                .ok_or_else(|| Error::internal("image config has no rootfs.diff_ids"))?;
            diff_ids.push(json!(layer.diff_id));
            let parent_layers: Vec<String> = diff_ids
                .iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect();
            let mut history = obj
                .get("history")
                .and_then(|h| h.as_array().cloned())
                .unwrap_or_default();
            let mut h = json!({ "created": now, "created_by": cmd_line });
            if !comment.is_empty() {
                h["comment"] = json!(comment);
            }
            if !author.is_empty() {
                h["author"] = json!(author);
            }
            history.push(h);
            obj.insert("history".into(), Value::Array(history));
            let mut layers = Vec::new();
            for d in &parent_layers[..parent_layers.len() - 1] {
                layers.push(
                    images
                        .layer(d)
                        .ok_or_else(|| Error::internal(format!("parent layer {d} missing")))?,
                );
            }
            layers.push(layer);
            let raw = serde_json::to_vec(&config).map_err(Error::internal)?;
            let (id, _) = images.commit(crate::images::NewImage {
                config: raw,
                layers,
                refs: target.into_iter().collect(),
                parent: Some(parent_id),
            })?;
            drop(guard);
            Ok(id)
        })
        .await
        .map_err(Error::internal)??;
        Ok(id)
    }
}
