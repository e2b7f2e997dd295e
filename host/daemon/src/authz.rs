//! `--authorization-plugin NAME`: find and load each plugin before serving. Any
//! failure is fatal: a daemon asked to authorize requests must never start serving
//! without its policy (an unknown name, a missing or corrupt plugin, a bad setting).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use berth_api::authz::AuthzChain;
use berth_plugin_host::authz::{find_plugin, AuthzConfig, AuthzHost};

use crate::config::Config;

/// Where plugins are looked for: `<data-root>/authz-plugins/NAME`, then the shipped
/// plugins directory (next to berthd, `$BERTH_PLUGINS`, `/usr/lib/berth/plugins`).
fn search_dirs(config: &Config) -> Vec<PathBuf> {
    let mut dirs = vec![config.data_root.join("authz-plugins")];
    dirs.extend(berth_engine::plugins::default_plugin_dir());
    dirs
}

pub async fn load_chain(
    config: &Config,
    engine: Arc<berth_engine::Engine>,
) -> Result<Option<Arc<AuthzChain>>> {
    if config.authz_plugins.is_empty() {
        if let Some((name, _, _)) = config.authz_opts.first() {
            bail!("--authz-opt for {name}, but no --authorization-plugin is enabled");
        }
        return Ok(None);
    }
    for (name, _, _) in &config.authz_opts {
        if !config.authz_plugins.contains(name) {
            bail!("--authz-opt for {name}, which is not an enabled --authorization-plugin");
        }
    }
    let dirs = search_dirs(config);
    let names = config.authz_plugins.clone();
    let opts = config.authz_opts.clone();
    let cache_dir = config.data_root.join("plugin-cache");
    let plugins = tokio::task::spawn_blocking(move || -> Result<Vec<_>> {
        let host = AuthzHost::new(AuthzConfig {
            cache_dir,
            ..Default::default()
        })
        .map_err(anyhow::Error::msg)
        .context("authorization plugin host")?;
        let mut out = Vec::new();
        for name in &names {
            let dir = find_plugin(&dirs, name).with_context(|| {
                let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                format!(
                    "authorization plugin {name:?} not found (looked for {name}/authz.toml in {})",
                    searched.join(", ")
                )
            })?;
            let overrides: Vec<(String, String)> = opts
                .iter()
                .filter(|(n, _, _)| n == name)
                .map(|(_, k, v)| (k.clone(), v.clone()))
                .collect();
            let p = host
                .load(&dir, &overrides)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("authorization plugin {name} ({})", dir.display()))?;
            tracing::info!(plugin = %name, dir = %dir.display(), "authorization plugin loaded");
            out.push(p);
        }
        Ok(out)
    })
    .await??;
    Ok(Some(Arc::new(AuthzChain::new(plugins, engine))))
}
