//! `docker build` with the classic builder (`POST /build`): the context is unpacked
//! privately, the Dockerfile parsed, and each instruction becomes one image on top
//! of the previous one. RUN steps run as ordinary containers of the daemon's default
//! isolation; COPY/ADD write a layer directly; everything else changes the config.
//! Every step's result is cached by what it started from and what it did.

pub mod cache;
// The parser and the argument lexer are their own crate (fuzzed without the engine).
pub use berth_dockerfile::dockerfile;
use berth_dockerfile::shell_lex;
mod cache_from;
mod context;
mod instructions;
mod layer;
mod run;
mod stage;
mod steps;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bollard_stubs::models::HostConfig;
use serde_json::json;

use crate::containers::Containers;
use crate::images::{ImageStore, Progress, RegistryAuth};
use crate::{Error, Result};

pub use stage::short_id;

/// The query parameters of `POST /build` that the classic builder honours.
#[derive(Debug, Default, Clone)]
pub struct BuildOptions {
    pub dockerfile: String,
    pub tags: Vec<String>,
    pub build_args: BTreeMap<String, Option<String>>,
    pub labels: BTreeMap<String, String>,
    pub target: String,
    pub no_cache: bool,
    /// `--cache-from`: images whose history may stand in for steps (see `cache_from`).
    pub cache_from: Vec<String>,
    pub rm: bool,
    pub force_rm: bool,
    pub quiet: bool,
    pub pull: bool,
    pub platform: String,
    /// HostConfig of every RUN container: network mode, extra hosts, shm size and
    /// the resource limits of the build.
    pub run_host_config: HostConfig,
    /// `X-Registry-Config`: credentials per registry, for pulling bases.
    pub registry_auth: HashMap<String, RegistryAuth>,
}

/// Proxy args every build accepts without an `ARG` (and never records in history).
pub const PREDEFINED_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

pub struct Builder {
    containers: Arc<Containers>,
    images: Arc<ImageStore>,
    tmp: PathBuf,
    cache: cache::BuildCache,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct BuildPruneReport {
    #[serde(rename = "CachesDeleted")]
    pub caches_deleted: Vec<String>,
    #[serde(rename = "SpaceReclaimed")]
    pub space_reclaimed: u64,
}

impl Builder {
    pub fn open(data_root: &std::path::Path, containers: Arc<Containers>) -> Builder {
        let root = data_root.join("builder");
        let tmp = root.join("tmp");
        // Contexts of builds a crash interrupted.
        let _ = std::fs::remove_dir_all(&tmp);
        Builder {
            images: containers.images.clone(),
            containers,
            tmp,
            cache: cache::BuildCache::open(root.join("cache.json")),
        }
    }

    /// Run a build; every message goes to `progress`. Returns the image ID.
    pub async fn build(
        &self,
        context: impl tokio::io::AsyncRead + Unpin + Send,
        opts: BuildOptions,
        progress: Progress,
    ) -> Result<String> {
        if !opts.platform.is_empty() && !matches!(opts.platform.as_str(), "linux" | "linux/amd64") {
            return Err(Error::invalid(format!(
                "\"{}\": this daemon builds linux/amd64 images only",
                opts.platform
            )));
        }
        // The context goes to a file first: the client's upload is not held up by the
        // unpacking, and a truncated upload fails before anything is built.
        std::fs::create_dir_all(&self.tmp)?;
        let file = tempfile::Builder::new()
            .prefix("context-")
            .tempfile_in(&self.tmp)?;
        {
            let mut w = tokio::fs::File::from_std(file.reopen()?);
            let mut r = context;
            tokio::io::copy(&mut r, &mut w).await?;
        }
        let tmp = self.tmp.clone();
        let (ctx, text) = tokio::task::spawn_blocking(move || -> Result<_> {
            let ctx = context::Context::unpack(std::fs::File::open(file.path())?, &tmp)?;
            Ok(ctx)
        })
        .await
        .map_err(Error::internal)?
        .and_then(|ctx| {
            let text = ctx.read_dockerfile(&opts.dockerfile)?;
            Ok((ctx, text))
        })?;
        let df = dockerfile::parse(&text)?;
        let mut run = stage::BuildRun::new(self, &df, &opts, &ctx, progress.clone());
        let id = run.execute().await?;
        let unused = run.unused_args();
        if !unused.is_empty() && !opts.quiet {
            progress
                .send(json!({ "stream": format!("[Warning] One or more build-args [{}] were not consumed\n", unused.join(" ")) }))
                .await?;
        }
        progress.send(json!({ "aux": { "ID": id } })).await?;
        if opts.quiet {
            progress
                .send(json!({ "stream": format!("{id}\n") }))
                .await?;
        } else {
            progress
                .send(json!({ "stream": format!("Successfully built {}\n", short_id(&id)) }))
                .await?;
        }
        for t in &opts.tags {
            let r = crate::images::Reference::parse_tagged(t)?;
            let repo = r.name();
            let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
            self.images.tag(&id, &repo, &tag)?;
            if !opts.quiet {
                progress
                    .send(json!({ "stream": format!("Successfully tagged {}\n", r.familiar()) }))
                    .await?;
            }
        }
        Ok(id)
    }

    /// `POST /build/prune`: forget every cached step and remove the untagged images
    /// only the cache kept (intermediate images no container or tag uses).
    pub async fn prune(&self, all: bool) -> Result<BuildPruneReport> {
        let images = self.images.clone();
        let cached = self.cache.images();
        let report = tokio::task::spawn_blocking(move || images.remove_untagged(&cached))
            .await
            .map_err(Error::internal)??;
        if all || !report.0.is_empty() {
            self.cache.clear()?;
        } else {
            let images = self.images.clone();
            self.cache.retain(|id| images.resolve(id).is_ok())?;
        }
        Ok(BuildPruneReport {
            caches_deleted: report.0,
            space_reclaimed: report.1,
        })
    }
}
