//! One build run: stages in order, each instruction dispatched against the stage's
//! current image and config, every result looked up in and recorded to the cache.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::cache_from::CacheSources;
use super::context::Context;
use super::dockerfile::{Dockerfile, Instruction, Kind};
use super::shell_lex::Lexer;
use super::{cache, BuildOptions, Builder, PREDEFINED_ARGS};
use crate::images::{ImageStore, NewImage, Progress, Reference};
use crate::{Error, Result};

/// Writes a step's layer tar (COPY/ADD, WORKDIR) into the file it is given.
pub(super) type LayerWriter = Box<
    dyn FnOnce(std::io::BufWriter<std::fs::File>) -> Result<std::io::BufWriter<std::fs::File>>
        + Send,
>;

pub fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// What a stage has built so far.
pub(super) struct State {
    pub(super) image: Option<String>,
    /// The whole OCI image config of `image` (or of an empty image for scratch).
    pub(super) config: Value,
    /// `ARG`s declared in this stage, with their values.
    pub(super) args: Vec<(String, Option<String>)>,
}

impl State {
    pub(super) fn run_config(&mut self) -> &mut Map<String, Value> {
        if !self.config["config"].is_object() {
            self.config["config"] = json!({});
        }
        self.config["config"].as_object_mut().expect("set above")
    }

    pub(super) fn env(&self) -> Vec<String> {
        self.config["config"]["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What `$VAR` sees: the config's Env, then ARG values ENV does not shadow.
    pub(super) fn expansion_env(&self) -> Vec<String> {
        let mut env = self.env();
        for (k, v) in &self.args {
            if let Some(v) = v {
                env.push(format!("{k}={v}"));
            }
        }
        env
    }

    pub(super) fn shell(&self) -> Vec<String> {
        self.config["config"]["Shell"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }
}

fn scratch_config() -> Value {
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [] },
        "history": []
    })
}

pub struct BuildRun<'a> {
    pub(super) b: &'a Builder,
    pub(super) df: &'a Dockerfile,
    pub(super) opts: &'a BuildOptions,
    pub(super) ctx: &'a Context,
    pub(super) progress: Progress,
    step: usize,
    total: usize,
    /// Finished stages: name (if any) and image.
    pub(super) stages: Vec<(Option<String>, String)>,
    pub(super) meta_args: Vec<(String, Option<String>)>,
    used_args: BTreeSet<String>,
    /// Flattened images for `COPY --from`, by image ID.
    pub(super) from_roots: HashMap<String, tempfile::TempDir>,
    cache_from: CacheSources,
}

impl<'a> BuildRun<'a> {
    pub fn new(
        b: &'a Builder,
        df: &'a Dockerfile,
        opts: &'a BuildOptions,
        ctx: &'a Context,
        progress: Progress,
    ) -> Self {
        BuildRun {
            b,
            df,
            opts,
            ctx,
            progress,
            step: 0,
            total: df.step_count() + usize::from(!opts.labels.is_empty()),
            stages: Vec::new(),
            meta_args: Vec::new(),
            used_args: BTreeSet::new(),
            from_roots: HashMap::new(),
            cache_from: {
                let (sources, skipped) = CacheSources::resolve(&b.images, &opts.cache_from);
                for name in skipped {
                    tracing::warn!("--cache-from {name}: no such image, skipped");
                }
                sources
            },
        }
    }

    pub fn unused_args(&self) -> Vec<String> {
        self.opts
            .build_args
            .keys()
            .filter(|k| !self.used_args.contains(*k) && !PREDEFINED_ARGS.contains(&k.as_str()))
            .cloned()
            .collect()
    }

    pub(super) fn images(&self) -> &Arc<ImageStore> {
        &self.b.images
    }

    pub(super) async fn say(&self, text: String) -> Result<()> {
        if self.opts.quiet {
            return Ok(());
        }
        self.progress.send(json!({ "stream": text })).await
    }

    async fn announce(&mut self, instr: &Instruction) -> Result<()> {
        self.step += 1;
        let text = format!("Step {}/{} : {}\n", self.step, self.total, instr.original);
        self.say(text).await
    }

    pub async fn execute(&mut self) -> Result<String> {
        let df = self.df;
        // Global ARGs: only `FROM` lines see them.
        for instr in &df.meta_args {
            self.announce(instr).await?;
            if let Kind::Arg(list) = &instr.kind {
                for (name, default) in list {
                    let env: Vec<String> = self
                        .meta_args
                        .iter()
                        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
                        .collect();
                    let value = self.arg_value(name, default.as_deref(), &env, df.escape)?;
                    self.meta_args.push((name.clone(), value));
                }
            }
        }
        let last = if self.opts.target.is_empty() {
            df.stages.len() - 1
        } else {
            let t = self.opts.target.to_ascii_lowercase();
            df.stages
                .iter()
                .position(|s| s.name.as_deref() == Some(t.as_str()))
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "failed to reach build target {} in Dockerfile",
                        self.opts.target
                    ))
                })?
        };
        if last + 1 < df.stages.len() {
            // Steps of stages after the target never run.
            self.total = df.meta_args.len()
                + df.stages[..=last]
                    .iter()
                    .map(|s| 1 + s.instructions.len())
                    .sum::<usize>()
                + usize::from(!self.opts.labels.is_empty());
        }
        let mut final_state = None;
        for stage in &df.stages[..=last] {
            self.announce(&stage.from).await?;
            let mut st = self.from(&stage.from).await?;
            for instr in &stage.instructions {
                self.announce(instr).await?;
                self.dispatch(&mut st, instr).await?;
            }
            let id = self.ensure_image(&mut st).await?;
            self.stages.push((stage.name.clone(), id));
            final_state = Some(st);
        }
        let mut st = final_state.ok_or_else(|| Error::invalid("no build stage"))?;
        if !self.opts.labels.is_empty() {
            let text = self
                .opts
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            self.step += 1;
            self.say(format!(
                "Step {}/{} : LABEL {text}\n",
                self.step, self.total
            ))
            .await?;
            let labels = st.run_config().entry("Labels").or_insert_with(|| json!({}));
            if !labels.is_object() {
                *labels = json!({});
            }
            for (k, v) in &self.opts.labels {
                labels[k] = json!(v);
            }
            self.meta(&mut st, format!("LABEL {text}")).await?;
        }
        self.ensure_image(&mut st).await
    }

    /// An ARG's value: the build's `--build-arg`, else its default (expanded).
    pub(super) fn arg_value(
        &mut self,
        name: &str,
        default: Option<&str>,
        env: &[String],
        escape: char,
    ) -> Result<Option<String>> {
        if let Some(v) = self.opts.build_args.get(name) {
            self.used_args.insert(name.to_string());
            if v.is_some() {
                return Ok(v.clone());
            }
        }
        match default {
            Some(d) => Ok(Some(Lexer { escape, env }.word(d)?)),
            None => Ok(None),
        }
    }

    async fn from(&mut self, instr: &Instruction) -> Result<State> {
        let Kind::From { image, .. } = &instr.kind else {
            return Err(Error::internal("stage does not start with FROM"));
        };
        let env: Vec<String> = self
            .meta_args
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
        let name = Lexer {
            escape: self.df.escape,
            env: &env,
        }
        .word(image)?;
        if name.is_empty() {
            return Err(Error::invalid(format!(
                "base name ({image}) should not be blank"
            )));
        }
        let mut st = State {
            image: None,
            config: scratch_config(),
            args: Vec::new(),
        };
        if name == "scratch" {
            return Ok(st);
        }
        let lower = name.to_ascii_lowercase();
        let id = match self
            .stages
            .iter()
            .find(|(n, _)| n.as_deref() == Some(lower.as_str()))
        {
            Some((_, id)) => id.clone(),
            None => self.image_for(&name).await?,
        };
        st.config =
            serde_json::from_slice(&self.images().read_blob(&id)?).map_err(Error::internal)?;
        st.image = Some(id.clone());
        self.say(format!(" ---> {}\n", short_id(&id))).await?;
        self.onbuild_triggers(&mut st).await?;
        Ok(st)
    }

    /// A local image, or pulled (with the build's registry credentials).
    pub(super) async fn image_for(&self, name: &str) -> Result<String> {
        if !self.opts.pull {
            if let Ok(id) = self.images().resolve(name) {
                return Ok(id);
            }
        }
        let r = Reference::parse(name)?;
        let auth = self
            .opts
            .registry_auth
            .iter()
            .find(|(k, _)| {
                let k = k
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                k.split('/').next() == Some(r.domain.as_str())
            })
            .map(|(_, a)| a.clone())
            .unwrap_or_default();
        self.say(format!("Pulling {}\n", r.familiar())).await?;
        match self.images().pull(name, "", &auth, Progress::none()).await {
            Ok(id) => Ok(id),
            Err(e) => match self.images().resolve(name) {
                // `--pull` with the registry unreachable: the local copy will do.
                Ok(id) if self.opts.pull => Ok(id),
                _ => Err(e),
            },
        }
    }

    pub(super) async fn onbuild_triggers(&mut self, st: &mut State) -> Result<()> {
        let triggers: Vec<String> = st.config["config"]["OnBuild"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if triggers.is_empty() {
            return Ok(());
        }
        st.run_config().insert("OnBuild".into(), Value::Null);
        self.say(format!(
            "# Executing {} build trigger{}\n",
            triggers.len(),
            if triggers.len() == 1 { "" } else { "s" }
        ))
        .await?;
        for t in triggers {
            let parsed = super::dockerfile::parse(&format!("FROM scratch\n{t}\n"))?;
            for instr in &parsed.stages[0].instructions {
                self.dispatch(st, instr).await?;
            }
        }
        Ok(())
    }

    /// Look `created_by` up in the cache; on a hit the stage moves to that image.
    /// The image a step made before, if any: from the build cache, else from a
    /// `--cache-from` image. `created_by` is also the cache key.
    pub(super) async fn cached(
        &mut self,
        st: &mut State,
        created_by: &str,
    ) -> Result<Option<String>> {
        self.cached_keyed(st, created_by, created_by).await
    }

    /// As [`Self::cached`], with a cache key (`key_text`) other than the history entry.
    pub(super) async fn cached_keyed(
        &mut self,
        st: &mut State,
        key_text: &str,
        created_by: &str,
    ) -> Result<Option<String>> {
        if self.opts.no_cache {
            return Ok(None);
        }
        let key = cache::step_key(st.image.as_deref(), key_text);
        let local = self
            .b
            .cache
            .get(&key)
            .filter(|id| self.images().resolve(id).is_ok());
        let id = match local {
            Some(id) => {
                st.config = serde_json::from_slice(&self.images().read_blob(&id)?)
                    .map_err(Error::internal)?;
                st.image = Some(id.clone());
                id
            }
            None => {
                let parent = st.image.clone();
                let Some(id) = self.restore_from_sources(st, created_by).await? else {
                    return Ok(None);
                };
                // The next build finds it in its own cache.
                self.remember(parent.as_deref(), key_text, &id).await?;
                id
            }
        };
        self.say(format!(" ---> Using cache\n ---> {}\n", short_id(&id)))
            .await?;
        Ok(Some(id))
    }

    /// A `--cache-from` image that continues this stage with `created_by`: that image
    /// itself when the step is its last, else a new image of the stage plus the source's
    /// history entry and layer (as dockerd's builder restores it).
    async fn restore_from_sources(
        &mut self,
        st: &mut State,
        created_by: &str,
    ) -> Result<Option<String>> {
        let Some(hit) = self.cache_from.find(&st.config, created_by) else {
            return Ok(None);
        };
        if hit.last {
            let id = hit.id.to_string();
            st.config = hit.config.clone();
            st.image = Some(id.clone());
            return Ok(Some(id));
        }
        let entry = hit.entry.clone();
        let diff_id = hit.diff_id.map(str::to_string);
        let images = self.images().clone();
        let config = st.config.clone();
        let parent = st.image.clone();
        let (id, config) = tokio::task::spawn_blocking(move || -> Result<(String, Value)> {
            let _guard = images.pending_guard();
            let layer =
                match diff_id {
                    Some(d) => Some(images.layer(&d).ok_or_else(|| {
                        Error::internal(format!("cache source layer {d} missing"))
                    })?),
                    None => None,
                };
            register_step_image(&images, config, entry, layer, parent)
        })
        .await
        .map_err(Error::internal)??;
        st.image = Some(id.clone());
        st.config = config;
        Ok(Some(id))
    }

    pub(super) async fn remember(
        &self,
        parent: Option<&str>,
        created_by: &str,
        id: &str,
    ) -> Result<()> {
        self.b
            .cache
            .insert(cache::step_key(parent, created_by), id.to_string())
    }

    /// A config-only step: a new image with the same layers.
    pub(super) async fn meta(&mut self, st: &mut State, what: String) -> Result<()> {
        let created_by = format!("/bin/sh -c #(nop)  {what}");
        // The cache key holds the resulting config too: a step's text alone does not
        // say what config an inherited ARG or label left behind.
        let key_text = format!("{created_by}\n{}", st.config["config"]);
        if self
            .cached_keyed(st, &key_text, &created_by)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let parent = st.image.clone();
        let id = self.commit_config(st, None, &created_by).await?;
        self.remember(parent.as_deref(), &key_text, &id).await?;
        self.say(format!(" ---> {}\n", short_id(&id))).await
    }

    /// Register the stage's config (plus `layer`, if any) as a new image.
    pub(super) async fn commit_config(
        &self,
        st: &mut State,
        layer: Option<LayerWriter>,
        created_by: &str,
    ) -> Result<String> {
        let images = self.images().clone();
        let config = st.config.clone();
        let parent = st.image.clone();
        let created_by = created_by.to_string();
        let (id, config) = tokio::task::spawn_blocking(move || -> Result<(String, Value)> {
            // Held until the image is registered: the collector must not take the new
            // layer's blob in between.
            let mut guard = images.pending_guard();
            let layer = match layer {
                Some(write) => Some(images.ingest_written_tar(write, &mut guard)?),
                None => None,
            };
            let now = crate::fsutil::now_rfc3339();
            let mut entry = json!({ "created": now, "created_by": created_by });
            if layer.is_none() {
                entry["empty_layer"] = json!(true);
            }
            let registered = register_step_image(&images, config, entry, layer, parent)?;
            drop(guard);
            Ok(registered)
        })
        .await
        .map_err(Error::internal)??;
        st.image = Some(id.clone());
        st.config = config;
        Ok(id)
    }

    /// A scratch stage that never got a layer still needs an image to point at.
    async fn ensure_image(&self, st: &mut State) -> Result<String> {
        match &st.image {
            Some(id) => Ok(id.clone()),
            None => {
                self.commit_config(st, None, "/bin/sh -c #(nop)  FROM scratch")
                    .await
            }
        }
    }
}

/// Registers `config` plus one step (its history `entry` and `layer`, if it made one) as
/// a new image whose parent is `parent`. Returns its ID and config. The caller holds the
/// store's pending guard, so no layer is collected in between.
fn register_step_image(
    images: &ImageStore,
    mut config: Value,
    entry: Value,
    layer: Option<crate::images::LayerRecord>,
    parent: Option<String>,
) -> Result<(String, Value)> {
    config["created"] = entry["created"].clone();
    if !config["rootfs"]["diff_ids"].is_array() {
        config["rootfs"] = json!({ "type": "layers", "diff_ids": [] });
    }
    let mut layers = Vec::new();
    for d in config["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let d = d.as_str().unwrap_or_default();
        layers.push(
            images
                .layer(d)
                .ok_or_else(|| Error::internal(format!("parent layer {d} missing")))?,
        );
    }
    if let Some(l) = layer {
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .expect("checked above")
            .push(json!(l.diff_id));
        layers.push(l);
    }
    if !config["history"].is_array() {
        config["history"] = json!([]);
    }
    config["history"]
        .as_array_mut()
        .expect("set above")
        .push(entry);
    let raw = serde_json::to_vec(&config).map_err(Error::internal)?;
    let (id, _) = images.commit(NewImage {
        config: raw,
        layers,
        refs: Vec::new(),
        parent,
    })?;
    Ok((id, config))
}
