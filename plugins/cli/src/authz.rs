//! `berth-plugin check` for authorization plugins: berthd loads them from
//! `NAME/{authz.toml,plugin.wasm}` with its own host, so the check is that very
//! load (imports, exports, `[config]`, and one instantiation running `init`).

use std::path::Path;

use anyhow::{anyhow, Result};
use berth_plugin_host::authz::{AuthzConfig, AuthzHost};

/// Why `push` refuses an authz plugin: berthd does not install them from
/// registries; they are files it reads at start.
pub const NOT_PUSHED: &str = "authz plugins are not distributed through registries: \
copy dist/{authz.toml,plugin.wasm} to <data-root>/authz-plugins/NAME/ and start \
berthd with --authorization-plugin NAME";

/// A staged directory holding an authz plugin.
pub fn is_authz(dir: &Path) -> bool {
    dir.join("authz.toml").is_file()
}

pub fn check(dir: &Path) -> Result<()> {
    let cache = tempfile::tempdir()?;
    let host = AuthzHost::new(AuthzConfig {
        cache_dir: cache.path().to_path_buf(),
        ..Default::default()
    })
    .map_err(|e| anyhow!(e))?;
    let p = host
        .load(dir, &[])
        .map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    let size = std::fs::metadata(dir.join("plugin.wasm"))?.len();
    println!(
        "ok: authz plugin {:?}, berth:authz@0.1.0, {size} bytes; imports within the authz allowlist; init ran",
        p.name()
    );
    Ok(())
}
