//! The steps that produce layers: RUN (a container, committed), COPY/ADD (a layer
//! written directly) and WORKDIR (a layer when the directory is missing).

use std::path::PathBuf;

use super::context;
use super::dockerfile::{CommandForm, CopySpec};
use super::layer::{self, CopyRequest, ImageView};
use super::shell_lex::Lexer;
use super::stage::{short_id, BuildRun, LayerWriter, State};
use super::{cache, run, PREDEFINED_ARGS};
use crate::{Error, Result};

impl BuildRun<'_> {
    pub(super) async fn run(&mut self, st: &mut State, cmd: &CommandForm) -> Result<()> {
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
            user: st.config["config"]["User"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            workdir: st.config["config"]["WorkingDir"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            host_config: self.opts.run_host_config.clone(),
        };
        let containers = self.b.containers.clone();
        let (c, code, saved) = run::run(&containers, step, &self.progress, self.opts.quiet).await?;
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
        let result = run::commit(&containers, &c, run_config, created_by.clone(), saved).await;
        cleanup(self.opts.rm || self.opts.force_rm).await;
        let id = result?;
        if self.opts.rm || self.opts.force_rm {
            self.say(format!(
                "Removing intermediate container {}\n",
                short_id(&c.id)
            ))
            .await?;
        }
        self.remember(Some(&image), &created_by, &id).await?;
        st.config =
            serde_json::from_slice(&self.images().read_blob(&id)?).map_err(Error::internal)?;
        st.image = Some(id.clone());
        self.say(format!(" ---> {}\n", short_id(&id))).await
    }

    /// The directory holding a `COPY --from` source: a finished stage or an image.
    async fn copy_source_root(&mut self, from: &str) -> Result<PathBuf> {
        let lower = from.to_ascii_lowercase();
        let id = if let Some((_, id)) = self
            .stages
            .iter()
            .find(|(n, _)| n.as_deref() == Some(lower.as_str()))
        {
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

    pub(super) async fn copy(&mut self, st: &mut State, spec: &CopySpec, add: bool) -> Result<()> {
        let env = st.expansion_env();
        let lex = Lexer {
            escape: self.df.escape,
            env: &env,
        };
        let word = if add { "ADD" } else { "COPY" };
        let dest = lex.word(&spec.dest)?;
        let root = match &spec.from {
            Some(f) => self.copy_source_root(&lex.word(f)?).await?,
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
                return Err(Error::invalid(format!(
                    "{word} of a git repository requires BuildKit"
                )));
            }
            sources.extend(
                context::expand_source(&root, &s)
                    .map_err(|e| Error::invalid(format!("{word} failed: {e}")))?,
            );
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
        let chown_shown = chown
            .as_deref()
            .map(|c| format!(" --chown={c}"))
            .unwrap_or_default();
        let created_by = format!("/bin/sh -c #(nop) {word}{chown_shown} {kind}:{hash} in {dest} ");
        if self.cached(st, &created_by).await?.is_some() {
            return Ok(());
        }
        let images = self.images().clone();
        let layers = match &st.image {
            Some(id) => images.layer_dirs(id)?,
            None => Vec::new(),
        };
        let workdir = st.config["config"]["WorkingDir"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let dest2 = dest.clone();
        let write: LayerWriter = Box::new(move |f| {
            let view = ImageView { layers };
            let owner = chown
                .as_deref()
                .map(|c| view.resolve_chown(c))
                .transpose()?;
            let req = CopyRequest {
                sources: &sources,
                dest: &dest2,
                workdir: &workdir,
                owner,
                extract_archives: add,
            };
            layer::write_copy_layer(f, &req, &view)
        });
        let parent = st.image.clone();
        let id = self.commit_config(st, Some(write), &created_by).await?;
        drop(downloads);
        self.remember(parent.as_deref(), &created_by, &id).await?;
        self.say(format!(" ---> {}\n", short_id(&id))).await
    }

    /// ADD of a URL: fetched into a private dir, named after the URL's last segment.
    async fn download(&self, url: &str) -> Result<(tempfile::TempDir, PathBuf)> {
        let dir = tempfile::Builder::new()
            .prefix("add-")
            .tempdir_in(&self.b.tmp)?;
        let name = url
            .split(['?', '#'])
            .next()
            .unwrap_or(url)
            .rsplit('/')
            .find(|s| !s.is_empty() && !s.contains(':'))
            .unwrap_or("download")
            .to_string();
        let client = crate::images::trust::web_client_builder()
            .build()
            .map_err(|e| Error::invalid(format!("ADD failed: {url}: {e}")))?;
        let resp = client
            .get(url)
            .send()
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
    pub(super) async fn workdir(&mut self, st: &mut State, abs: &str) -> Result<()> {
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
        let abs2 = abs.to_string();
        let write: LayerWriter = Box::new(move |f| {
            let empty = tempfile::tempdir()?;
            let srcs = [empty.path().to_path_buf()];
            let req = CopyRequest {
                sources: &srcs,
                dest: &abs2,
                workdir: "/",
                owner: None,
                extract_archives: false,
            };
            layer::write_copy_layer(f, &req, &view)
        });
        let parent = st.image.clone();
        let id = self.commit_config(st, Some(write), &created_by).await?;
        self.remember(parent.as_deref(), &created_by, &id).await?;
        self.say(format!(" ---> {}\n", short_id(&id))).await
    }
}
