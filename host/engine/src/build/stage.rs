//! One build run: stages in order, each instruction dispatched against the stage's
//! current image and config, every result looked up in and recorded to the cache.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::context::{self, Context};
use super::dockerfile::{CommandForm, CopySpec, Dockerfile, Instruction, Kind};
use super::layer::{self, CopyRequest, ImageView};
use super::shell_lex::Lexer;
use super::{cache, run, BuildOptions, Builder, PREDEFINED_ARGS};
use crate::images::{ImageStore, LayerRecord, NewImage, Progress, Reference};
use crate::{Error, Result};

pub fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// What a stage has built so far.
struct State {
    image: Option<String>,
    /// The whole OCI image config of `image` (or of an empty image for scratch).
    config: Value,
    /// `ARG`s declared in this stage, with their values.
    args: Vec<(String, Option<String>)>,
}

impl State {
    fn run_config(&mut self) -> &mut Map<String, Value> {
        if !self.config["config"].is_object() {
            self.config["config"] = json!({});
        }
        self.config["config"].as_object_mut().expect("set above")
    }

    fn env(&self) -> Vec<String> {
        self.config["config"]["Env"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    /// What `$VAR` sees: the config's Env, then ARG values ENV does not shadow.
    fn expansion_env(&self) -> Vec<String> {
        let mut env = self.env();
        for (k, v) in &self.args {
            if let Some(v) = v {
                env.push(format!("{k}={v}"));
            }
        }
        env
    }

    fn shell(&self) -> Vec<String> {
        self.config["config"]["Shell"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect::<Vec<_>>())
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

fn as_json_array(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

pub struct BuildRun<'a> {
    b: &'a Builder,
    df: &'a Dockerfile,
    opts: &'a BuildOptions,
    ctx: &'a Context,
    progress: Progress,
    step: usize,
    total: usize,
    /// Finished stages: name (if any) and image.
    stages: Vec<(Option<String>, String)>,
    meta_args: Vec<(String, Option<String>)>,
    used_args: BTreeSet<String>,
    /// Flattened images for `COPY --from`, by image ID.
    from_roots: HashMap<String, tempfile::TempDir>,
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

    fn images(&self) -> &Arc<ImageStore> {
        &self.b.images
    }

    async fn say(&self, text: String) -> Result<()> {
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

    fn lexer_env(&self, st: &State) -> Vec<String> {
        st.expansion_env()
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
            self.say(format!("Step {}/{} : LABEL {text}\n", self.step, self.total))
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
    fn arg_value(
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
        let id = match self.stages.iter().find(|(n, _)| n.as_deref() == Some(lower.as_str())) {
            Some((_, id)) => id.clone(),
            None => self.image_for(&name).await?,
        };
        st.config = serde_json::from_slice(&self.images().read_blob(&id)?)
            .map_err(Error::internal)?;
        st.image = Some(id.clone());
        self.say(format!(" ---> {}\n", short_id(&id))).await?;
        self.onbuild_triggers(&mut st).await?;
        Ok(st)
    }

    /// A local image, or pulled (with the build's registry credentials).
    async fn image_for(&self, name: &str) -> Result<String> {
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
                let k = k.trim_start_matches("https://").trim_start_matches("http://");
                k.split('/').next() == Some(r.domain.as_str())
            })
            .map(|(_, a)| a.clone())
            .unwrap_or_default();
        self.say(format!("Pulling {}\n", r.familiar())).await?;
        match self
            .images()
            .pull(name, "", &auth, Progress::none())
            .await
        {
            Ok(id) => Ok(id),
            Err(e) => match self.images().resolve(name) {
                // `--pull` with the registry unreachable: the local copy will do.
                Ok(id) if self.opts.pull => Ok(id),
                _ => Err(e),
            },
        }
    }

    async fn onbuild_triggers(&mut self, st: &mut State) -> Result<()> {
        let triggers: Vec<String> = st.config["config"]["OnBuild"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        if triggers.is_empty() {
            return Ok(());
        }
        st.run_config().insert("OnBuild".into(), Value::Null);
        self.say(format!("# Executing {} build trigger{}\n", triggers.len(), if triggers.len() == 1 { "" } else { "s" }))
            .await?;
        for t in triggers {
            let parsed = super::dockerfile::parse(&format!("FROM scratch\n{t}\n"))?;
            for instr in &parsed.stages[0].instructions {
                self.dispatch(st, instr).await?;
            }
        }
        Ok(())
    }

    async fn dispatch(&mut self, st: &mut State, instr: &Instruction) -> Result<()> {
        let escape = self.df.escape;
        let env = self.lexer_env(st);
        let lex = Lexer { escape, env: &env };
        match &instr.kind {
            Kind::From { .. } => return Err(Error::internal("FROM inside a stage")),
            Kind::Run(cmd) => return self.run(st, cmd).await,
            Kind::Copy(spec) => return self.copy(st, spec, false).await,
            Kind::Add(spec) => return self.copy(st, spec, true).await,
            Kind::Cmd(cmd) | Kind::Entrypoint(cmd) => {
                let argv = match cmd {
                    CommandForm::Exec(v) => v.clone(),
                    CommandForm::Shell(s) => {
                        let mut v = st.shell();
                        v.push(s.clone());
                        v
                    }
                };
                let (key, word) = match instr.kind {
                    Kind::Cmd(_) => ("Cmd", "CMD"),
                    _ => ("Entrypoint", "ENTRYPOINT"),
                };
                st.run_config().insert(key.into(), json!(argv));
                if key == "Entrypoint" && !st.config["config"]["Cmd"].is_null() {
                    // A new ENTRYPOINT drops a CMD inherited from the base image.
                    st.run_config().insert("Cmd".into(), Value::Null);
                }
                self.meta(st, format!("{word} {}", as_json_array(&argv))).await
            }
            Kind::Env(pairs) => {
                let mut shown = Vec::new();
                let mut envs = st.env();
                for (k, v) in pairs {
                    let k = lex.word(k)?;
                    let v = lex.word(v)?;
                    shown.push(format!("{k}={v}"));
                    let entry = format!("{k}={v}");
                    match envs.iter_mut().find(|e| e.split('=').next() == Some(k.as_str())) {
                        Some(slot) => *slot = entry,
                        None => envs.push(entry),
                    }
                }
                st.run_config().insert("Env".into(), json!(envs));
                self.meta(st, format!("ENV {}", shown.join(" "))).await
            }
            Kind::Label(pairs) => {
                let mut shown = Vec::new();
                let mut expanded = Vec::new();
                for (k, v) in pairs {
                    let (k, v) = (lex.word(k)?, lex.word(v)?);
                    shown.push(format!("{k}={v}"));
                    expanded.push((k, v));
                }
                let labels = st.run_config().entry("Labels").or_insert_with(|| json!({}));
                if !labels.is_object() {
                    *labels = json!({});
                }
                for (k, v) in expanded {
                    labels[k] = json!(v);
                }
                self.meta(st, format!("LABEL {}", shown.join(" "))).await
            }
            Kind::Arg(list) => {
                let mut shown = Vec::new();
                for (name, default) in list {
                    let mut value = self.arg_value(name, default.as_deref(), &env, escape)?;
                    if value.is_none() && default.is_none() {
                        // `ARG X` in a stage takes the value of a global `ARG X`.
                        value = self
                            .meta_args
                            .iter()
                            .find(|(k, _)| k == name)
                            .and_then(|(_, v)| v.clone());
                    }
                    shown.push(match &value {
                        Some(v) if default.is_some() => format!("{name}={v}"),
                        _ => name.clone(),
                    });
                    st.args.retain(|(k, _)| k != name);
                    st.args.push((name.clone(), value));
                }
                self.meta(st, format!("ARG {}", shown.join(" "))).await
            }
            Kind::Workdir(dir) => {
                let dir = lex.word(dir)?;
                let current = st.config["config"]["WorkingDir"].as_str().unwrap_or("/").to_string();
                let abs = if dir.starts_with('/') {
                    PathBuf::from(&dir)
                } else {
                    PathBuf::from(if current.is_empty() { "/" } else { &current }).join(&dir)
                };
                let abs = abs.to_string_lossy().to_string();
                st.run_config().insert("WorkingDir".into(), json!(abs));
                self.workdir(st, &abs).await
            }
            Kind::User(u) => {
                let u = lex.word(u)?;
                st.run_config().insert("User".into(), json!(u));
                self.meta(st, format!("USER {u}")).await
            }
            Kind::Expose(ports) => {
                let mut shown = Vec::new();
                for p in ports {
                    for w in lex.words(p)? {
                        let p = if w.contains('/') { w.to_ascii_lowercase() } else { format!("{w}/tcp") };
                        let (num, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                        let valid = num.split('-').all(|n| n.parse::<u16>().is_ok())
                            && matches!(proto, "tcp" | "udp" | "sctp");
                        if !valid {
                            return Err(Error::invalid(format!("Invalid containerPort: {w}")));
                        }
                        shown.push(p);
                    }
                }
                let ports = st.run_config().entry("ExposedPorts").or_insert_with(|| json!({}));
                if !ports.is_object() {
                    *ports = json!({});
                }
                for p in &shown {
                    ports[p] = json!({});
                }
                self.meta(st, format!("EXPOSE {}", shown.join(" "))).await
            }
            Kind::Volume(vols) => {
                let mut shown = Vec::new();
                for v in vols {
                    let v = lex.word(v)?;
                    if v.trim().is_empty() {
                        return Err(Error::invalid("VOLUME specified can not be an empty string"));
                    }
                    shown.push(v);
                }
                let m = st.run_config().entry("Volumes").or_insert_with(|| json!({}));
                if !m.is_object() {
                    *m = json!({});
                }
                for v in &shown {
                    m[v] = json!({});
                }
                self.meta(st, format!("VOLUME {}", as_json_array(&shown))).await
            }
            Kind::Shell(sh) => {
                st.run_config().insert("Shell".into(), json!(sh));
                self.meta(st, format!("SHELL {}", as_json_array(sh))).await
            }
            Kind::Stopsignal(sig) => {
                let sig = lex.word(sig)?;
                crate::containers::signal_number(&sig)?;
                st.run_config().insert("StopSignal".into(), json!(sig));
                self.meta(st, format!("STOPSIGNAL {sig}")).await
            }
            Kind::Healthcheck { flags, cmd } => {
                let test = match cmd {
                    None => vec!["NONE".to_string()],
                    Some(CommandForm::Exec(v)) => std::iter::once("CMD".to_string()).chain(v.iter().cloned()).collect(),
                    Some(CommandForm::Shell(s)) => vec!["CMD-SHELL".to_string(), s.clone()],
                };
                let mut hc = json!({ "Test": test });
                for (k, v) in flags {
                    let field = match k.as_str() {
                        "interval" => "Interval",
                        "timeout" => "Timeout",
                        "start-period" => "StartPeriod",
                        "start-interval" => "StartInterval",
                        _ => {
                            let n: i64 = v.parse().map_err(|_| Error::invalid(format!("invalid retries: {v}")))?;
                            hc["Retries"] = json!(n);
                            continue;
                        }
                    };
                    let ns = crate::fsutil::parse_go_duration(v)
                        .ok_or_else(|| Error::invalid(format!("time: invalid duration \"{v}\"")))?;
                    hc[field] = json!(ns);
                }
                st.run_config().insert("Healthcheck".into(), hc.clone());
                self.meta(st, format!("HEALTHCHECK {hc}")).await
            }
            Kind::Onbuild(trigger) => {
                let list = st.run_config().entry("OnBuild").or_insert_with(|| json!([]));
                if !list.is_array() {
                    *list = json!([]);
                }
                list.as_array_mut().expect("set above").push(json!(trigger));
                self.meta(st, format!("ONBUILD {trigger}")).await
            }
            Kind::Maintainer(m) => {
                let m = lex.word(m)?;
                st.config["author"] = json!(m);
                self.meta(st, format!("MAINTAINER {m}")).await
            }
        }
    }

    /// Look `created_by` up in the cache; on a hit the stage moves to that image.
    async fn cached(&mut self, st: &mut State, created_by: &str) -> Result<Option<String>> {
        if self.opts.no_cache {
            return Ok(None);
        }
        let key = cache::step_key(st.image.as_deref(), created_by);
        let Some(id) = self.b.cache.get(&key) else {
            return Ok(None);
        };
        if self.images().resolve(&id).is_err() {
            return Ok(None);
        }
        st.config = serde_json::from_slice(&self.images().read_blob(&id)?).map_err(Error::internal)?;
        st.image = Some(id.clone());
        self.say(format!(" ---> Using cache\n ---> {}\n", short_id(&id))).await?;
        Ok(Some(id))
    }

    async fn remember(&self, parent: Option<&str>, created_by: &str, id: &str) -> Result<()> {
        self.b
            .cache
            .insert(cache::step_key(parent, created_by), id.to_string())
    }

    /// A config-only step: a new image with the same layers.
    async fn meta(&mut self, st: &mut State, what: String) -> Result<()> {
        let created_by = format!("/bin/sh -c #(nop)  {what}");
        // The cache key holds the resulting config too: a step's text alone does not
        // say what config an inherited ARG or label left behind.
        let key_text = format!("{created_by}\n{}", st.config["config"]);
        if self.cached_with_config(st, &key_text).await? {
            return Ok(());
        }
        let parent = st.image.clone();
        let id = self.commit_config(st, None, &created_by).await?;
        self.remember(parent.as_deref(), &key_text, &id).await?;
        self.say(format!(" ---> {}\n", short_id(&id))).await
    }

    /// Like [`Self::cached`] but keeps the config in hand (it is the step's result).
    async fn cached_with_config(&mut self, st: &mut State, key_text: &str) -> Result<bool> {
        if self.opts.no_cache {
            return Ok(false);
        }
        let key = cache::step_key(st.image.as_deref(), key_text);
        match self.b.cache.get(&key) {
            Some(id) if self.images().resolve(&id).is_ok() => {
                st.image = Some(id.clone());
                st.config =
                    serde_json::from_slice(&self.images().read_blob(&id)?).map_err(Error::internal)?;
                self.say(format!(" ---> Using cache\n ---> {}\n", short_id(&id))).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Register the stage's config (plus `layer`, if any) as a new image.
    async fn commit_config(
        &self,
        st: &mut State,
        layer: Option<LayerRecord>,
        created_by: &str,
    ) -> Result<String> {
        let images = self.images().clone();
        let mut config = st.config.clone();
        let parent = st.image.clone();
        let created_by = created_by.to_string();
        let (id, config) = tokio::task::spawn_blocking(move || -> Result<(String, Value)> {
            let now = crate::fsutil::now_rfc3339();
            config["created"] = json!(now);
            if !config["rootfs"]["diff_ids"].is_array() {
                config["rootfs"] = json!({ "type": "layers", "diff_ids": [] });
            }
            let mut layers = Vec::new();
            for d in config["rootfs"]["diff_ids"].as_array().into_iter().flatten() {
                let d = d.as_str().unwrap_or_default();
                layers.push(
                    images
                        .layer(d)
                        .ok_or_else(|| Error::internal(format!("parent layer {d} missing")))?,
                );
            }
            let mut h = json!({ "created": now, "created_by": created_by });
            match &layer {
                Some(l) => {
                    config["rootfs"]["diff_ids"]
                        .as_array_mut()
                        .expect("checked above")
                        .push(json!(l.diff_id));
                    layers.push(l.clone());
                }
                None => h["empty_layer"] = json!(true),
            }
            if !config["history"].is_array() {
                config["history"] = json!([]);
            }
            config["history"].as_array_mut().expect("set above").push(h);
            let raw = serde_json::to_vec(&config).map_err(Error::internal)?;
            let (id, _) = images.commit(NewImage {
                config: raw,
                layers,
                refs: Vec::new(),
                parent,
            })?;
            Ok((id, config))
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
            None => self.commit_config(st, None, "/bin/sh -c #(nop)  FROM scratch").await,
        }
    }

    async fn run(&mut self, st: &mut State, cmd: &CommandForm) -> Result<()> {
        let argv = match cmd {
            CommandForm::Exec(v) => v.clone(),
            CommandForm::Shell(s) => {
                let mut v = st.shell();
                v.push(s.clone());
                v
            }
        };
        // Build args with values are the step's environment, and part of its cache
        // key (dockerd's `|N K=V …` prefix).
        let env = st.env();
        let mut args: Vec<(String, String)> = st
            .args
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
            .collect();
        for p in PREDEFINED_ARGS {
            if let Some(Some(v)) = self.opts.build_args.get(*p) {
                if !args.iter().any(|(k, _)| k == p) {
                    args.push((p.to_string(), v.clone()));
                }
            }
        }
        args.sort();
        let shown = argv.join(" ");
        let recorded: Vec<&(String, String)> = args
            .iter()
            .filter(|(k, _)| !PREDEFINED_ARGS.contains(&k.as_str()))
            .collect();
        let created_by = if recorded.is_empty() {
            shown.clone()
        } else {
            let kv: Vec<String> = recorded.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("|{} {} {shown}", kv.len(), kv.join(" "))
        };
        if self.cached(st, &created_by).await?.is_some() {
            return Ok(());
        }
        let Some(image) = st.image.clone() else {
            return Err(Error::invalid(format!(
                "RUN {shown}: a scratch stage has no files yet, so there is nothing to run"
            )));
        };
        let extra_env = args
            .iter()
            .filter(|(k, _)| !env.iter().any(|e| e.split('=').next() == Some(k.as_str())))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let step = run::RunStep {
            image: image.clone(),
            argv,
            extra_env,
            user: st.config["config"]["User"].as_str().unwrap_or("").to_string(),
            workdir: st.config["config"]["WorkingDir"].as_str().unwrap_or("").to_string(),
            host_config: self.opts.run_host_config.clone(),
        };
        let containers = self.b.containers.clone();
        let (c, code) = run::run(&containers, step, &self.progress, self.opts.quiet).await?;
        let cleanup = |remove: bool| {
            let (containers, c) = (containers.clone(), c.clone());
            async move {
                if remove {
                    let _ = containers.remove(&c, true, false).await;
                }
            }
        };
        if code != 0 {
            cleanup(self.opts.force_rm).await;
            return Err(run::failure(&shown, code));
        }
        let run_config = st.config["config"].clone();
        let result = run::commit(&containers, &c, run_config, created_by.clone()).await;
        cleanup(self.opts.rm || self.opts.force_rm).await;
        let id = result?;
        if self.opts.rm || self.opts.force_rm {
            self.say(format!("Removing intermediate container {}\n", short_id(&c.id)))
                .await?;
        }
        self.remember(Some(&image), &created_by, &id).await?;
        st.config = serde_json::from_slice(&self.images().read_blob(&id)?).map_err(Error::internal)?;
        st.image = Some(id.clone());
        self.say(format!(" ---> {}\n", short_id(&id))).await
    }

    /// The directory holding a `COPY --from` source: a finished stage or an image.
    async fn from_root(&mut self, from: &str) -> Result<PathBuf> {
        let lower = from.to_ascii_lowercase();
        let id = if let Some((_, id)) = self.stages.iter().find(|(n, _)| n.as_deref() == Some(lower.as_str())) {
            id.clone()
        } else if let Ok(i) = from.parse::<usize>() {
            self.stages
                .get(i)
                .map(|(_, id)| id.clone())
                .ok_or_else(|| Error::invalid(format!("invalid from flag value {from}: refers to current build stage or a later one")))?
        } else {
            self.image_for(from).await?
        };
        if let Some(d) = self.from_roots.get(&id) {
            return Ok(d.path().to_path_buf());
        }
        let dir = tempfile::Builder::new()
            .prefix("from-")
            .tempdir_in(&self.b.tmp)?;
        let (images, path, id2) = (self.images().clone(), dir.path().to_path_buf(), id.clone());
        tokio::task::spawn_blocking(move || images.flatten_into(&id2, &path))
            .await
            .map_err(Error::internal)??;
        let p = dir.path().to_path_buf();
        self.from_roots.insert(id, dir);
        Ok(p)
    }

    async fn copy(&mut self, st: &mut State, spec: &CopySpec, add: bool) -> Result<()> {
        let env = self.lexer_env(st);
        let lex = Lexer { escape: self.df.escape, env: &env };
        let word = if add { "ADD" } else { "COPY" };
        let dest = lex.word(&spec.dest)?;
        let root = match &spec.from {
            Some(f) => self.from_root(&lex.word(f)?).await?,
            None => self.ctx.root.clone(),
        };
        let mut sources = Vec::new();
        let mut downloads = Vec::new();
        for s in &spec.srcs {
            let s = lex.word(s)?;
            if add && (s.starts_with("http://") || s.starts_with("https://")) {
                let (dir, path) = self.download(&s).await?;
                downloads.push(dir);
                sources.push(path);
                continue;
            }
            if s.starts_with("git@") || s.ends_with(".git") && s.contains("://") {
                return Err(Error::invalid(format!("{word} of a git repository requires BuildKit")));
            }
            sources.extend(context::expand_source(&root, &s).map_err(|e| {
                Error::invalid(format!("{word} failed: {e}"))
            })?);
        }
        let chown = match &spec.chown {
            Some(c) => Some(lex.word(c)?),
            None => None,
        };
        // The content of every source is part of the step's identity.
        let srcs2 = sources.clone();
        let hash = tokio::task::spawn_blocking(move || -> Result<String> {
            let mut parts = Vec::new();
            for s in &srcs2 {
                parts.push(context::hash_tree(s)?);
            }
            Ok(cache::step_key(None, &parts.join(",")))
        })
        .await
        .map_err(Error::internal)??;
        let kind = if sources.len() > 1 {
            "multi"
        } else if sources.first().is_some_and(|p| p.is_dir()) {
            "dir"
        } else {
            "file"
        };
        let chown_shown = chown.as_deref().map(|c| format!(" --chown={c}")).unwrap_or_default();
        let created_by = format!("/bin/sh -c #(nop) {word}{chown_shown} {kind}:{hash} in {dest} ");
        if self.cached(st, &created_by).await?.is_some() {
            return Ok(());
        }
        let images = self.images().clone();
        let layers = match &st.image {
            Some(id) => images.layer_dirs(id)?,
            None => Vec::new(),
        };
        let workdir = st.config["config"]["WorkingDir"].as_str().unwrap_or("").to_string();
        let dest2 = dest.clone();
        let layer = tokio::task::spawn_blocking(move || -> Result<LayerRecord> {
            let view = ImageView { layers };
            let owner = chown.as_deref().map(|c| view.resolve_chown(c)).transpose()?;
            let tmp = tempfile::Builder::new()
                .prefix("copy-")
                .tempfile_in(images.tmp_dir())?;
            let f = std::io::BufWriter::new(tmp.reopen()?);
            let req = CopyRequest {
                sources: &sources,
                dest: &dest2,
                workdir: &workdir,
                owner,
                extract_archives: add,
            };
            let f = layer::write_copy_layer(f, &req, &view)?;
            f.into_inner().map_err(|e| Error::from(e.into_error()))?.sync_all()?;
            let mut guard = images.pending_guard();
            let rec = images.ingest_with_blob(std::fs::File::open(tmp.path())?, None, None, None, &mut guard)?;
            Ok(rec)
        })
        .await
        .map_err(Error::internal)??;
        drop(downloads);
        let parent = st.image.clone();
        let id = self.commit_config(st, Some(layer), &created_by).await?;
        self.remember(parent.as_deref(), &created_by, &id).await?;
        self.say(format!(" ---> {}\n", short_id(&id))).await
    }

    /// ADD of a URL: fetched into a private dir, named after the URL's last segment.
    async fn download(&self, url: &str) -> Result<(tempfile::TempDir, PathBuf)> {
        let dir = tempfile::Builder::new().prefix("add-").tempdir_in(&self.b.tmp)?;
        let name = url
            .split(['?', '#'])
            .next()
            .unwrap_or(url)
            .rsplit('/')
            .find(|s| !s.is_empty() && !s.contains(':'))
            .unwrap_or("download")
            .to_string();
        let resp = reqwest::get(url)
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| Error::invalid(format!("ADD failed: {url}: {e}")))?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Error::invalid(format!("ADD failed: {url}: {e}")))?;
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok((dir, path))
    }

    /// WORKDIR creates the directory when the image lacks it (a layer), like dockerd.
    async fn workdir(&mut self, st: &mut State, abs: &str) -> Result<()> {
        let created_by = format!("/bin/sh -c #(nop) WORKDIR {abs}");
        let layers = match &st.image {
            Some(id) => self.images().layer_dirs(id)?,
            None => Vec::new(),
        };
        let view = ImageView { layers };
        if view.kind(std::path::Path::new(abs)) == Some(true) {
            return self.meta(st, format!("WORKDIR {abs}")).await;
        }
        if self.cached(st, &created_by).await?.is_some() {
            return Ok(());
        }
        let images = self.images().clone();
        let abs2 = abs.to_string();
        let layer = tokio::task::spawn_blocking(move || -> Result<LayerRecord> {
            let empty = tempfile::tempdir()?;
            let srcs = [empty.path().to_path_buf()];
            let tmp = tempfile::Builder::new().prefix("workdir-").tempfile_in(images.tmp_dir())?;
            let f = std::io::BufWriter::new(tmp.reopen()?);
            let req = CopyRequest { sources: &srcs, dest: &abs2, workdir: "/", owner: None, extract_archives: false };
            let f = layer::write_copy_layer(f, &req, &view)?;
            f.into_inner().map_err(|e| Error::from(e.into_error()))?.sync_all()?;
            let mut guard = images.pending_guard();
            images.ingest_with_blob(std::fs::File::open(tmp.path())?, None, None, None, &mut guard)
        })
        .await
        .map_err(Error::internal)??;
        let parent = st.image.clone();
        let id = self.commit_config(st, Some(layer), &created_by).await?;
        self.remember(parent.as_deref(), &created_by, &id).await?;
        self.say(format!(" ---> {}\n", short_id(&id))).await
    }
}
