//! `berth-plugin`: write, build, check and publish berth WASM driver plugins.
//!
//! ```text
//! berth-plugin new --kind log my-log      # a standalone crate in ./my-log
//! cd my-log && berth-plugin build         # -> dist/{plugin.wasm,manifest.toml}
//! berth-plugin check                      # imports vs the kind's allowlist
//! berth-plugin push 127.0.0.1:5000/my-log:1.0
//! docker plugin install 127.0.0.1:5000/my-log:1.0
//! ```

mod authz;
mod build;
mod scaffold;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use berth_plugin_host::{check_standalone, Manifest};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth-plugin",
    version,
    about = "Write, build, check and publish berth WASM driver plugins"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a plugin project in ./NAME (log, volume or network driver, or authz).
    New {
        name: String,
        #[arg(long, default_value = "log")]
        kind: String,
    },
    /// Build to wasm32-wasip2 and stage dist/{plugin.wasm,manifest.toml}.
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Debug profile (faster to build, slower to run).
        #[arg(long)]
        debug: bool,
    },
    /// Check the built component against its manifest and the kind's import allowlist.
    Check {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Push dist/ to an OCI registry as a berth plugin artifact.
    Push {
        /// e.g. 127.0.0.1:5000/my-log:1.0 (loopback registries are spoken to over HTTP)
        reference: String,
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// `dir/dist/` when it holds a build, else `dir` itself (a staged plugin dir).
fn staged_dir(dir: &Path) -> PathBuf {
    let dist = dir.join("dist");
    if dist.join("plugin.wasm").exists() {
        dist
    } else {
        dir.to_path_buf()
    }
}

fn staged(dir: &Path) -> Result<(Manifest, Vec<u8>, Vec<u8>)> {
    let base = staged_dir(dir);
    let toml = std::fs::read(base.join("manifest.toml"))
        .with_context(|| format!("{}/manifest.toml", base.display()))?;
    let wasm = std::fs::read(base.join("plugin.wasm")).with_context(|| {
        format!(
            "{}/plugin.wasm (run `berth-plugin build` first)",
            base.display()
        )
    })?;
    let m = Manifest::parse(std::str::from_utf8(&toml).context("manifest.toml is not UTF-8")?)
        .map_err(anyhow::Error::msg)?;
    Ok((m, toml, wasm))
}

fn check(dir: &Path) -> Result<(Manifest, Vec<u8>, Vec<u8>)> {
    let (m, toml, wasm) = staged(dir)?;
    let v = check_standalone(&m, &wasm).map_err(|e| anyhow::anyhow!("{}: {e}", m.name))?;
    println!(
        "ok: {} plugin {:?}, berth:driver@{}, {} bytes; imports within the {} allowlist{}",
        m.kind,
        m.name,
        v.as_str(),
        wasm.len(),
        m.kind,
        if m.grants.network.is_empty() {
            String::new()
        } else {
            format!(" (network grant: {})", m.grants.network.join(", "))
        }
    );
    Ok((m, toml, wasm))
}

/// Credentials `docker login` stored for the registry of `reference`
/// (`~/.docker/config.json` `auths`, or `$DOCKER_CONFIG`); anonymous otherwise.
fn docker_login_auth(reference: &str) -> berth_engine::images::RegistryAuth {
    let domain = berth_engine::plugins::artifact::parse_ref(reference)
        .map(|r| r.domain)
        .unwrap_or_default();
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
    let auth = dir
        .and_then(|d| std::fs::read(d.join("config.json")).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.get("auths")?
                .get(&domain)?
                .get("auth")?
                .as_str()
                .map(str::to_string)
        });
    match auth {
        Some(a) => berth_engine::images::RegistryAuth {
            auth: a,
            ..Default::default()
        },
        None => Default::default(),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::New { name, kind } => {
            let kind = scaffold::parse_kind(&kind)?;
            let dir = scaffold::new_project(Path::new("."), &name, kind)?;
            println!(
                "created {} (cd {name} && berth-plugin build)",
                dir.display()
            );
        }
        Cmd::Build { dir, debug } => {
            let dist = build::build(&dir, !debug)?;
            if authz::is_authz(&dist) {
                authz::check(&dist)?;
            } else {
                check(&dir)?;
            }
            println!("built {}", dist.join("plugin.wasm").display());
        }
        Cmd::Check { dir } => {
            let base = staged_dir(&dir);
            if authz::is_authz(&base) {
                authz::check(&base)?;
            } else {
                check(&dir)?;
            }
        }
        Cmd::Push { reference, dir } => {
            if authz::is_authz(&staged_dir(&dir)) {
                bail!("{}", authz::NOT_PUSHED);
            }
            let (_, toml, wasm) = check(&dir)?;
            if reference.contains('@') {
                bail!("push to a tag, not a digest");
            }
            let rt = tokio::runtime::Runtime::new()?;
            // The docker CLI's trust: /etc/docker/certs.d, loopback over HTTP too.
            let registry = berth_engine::images::trust::RegistryConfig::default();
            let digest = rt.block_on(berth_engine::plugins::artifact::push(
                &registry,
                &reference,
                &docker_login_auth(&reference),
                &toml,
                &wasm,
            ))?;
            println!("pushed {reference}: digest: {digest}");
        }
    }
    Ok(())
}
