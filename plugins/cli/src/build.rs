//! `berth-plugin build`: compile the project to a `wasm32-wasip2` component and
//! stage `dist/{plugin.wasm,manifest.toml}` (`authz.toml` for an authz plugin).
//!
//! rustup's `wasm32-wasip2` target is used when installed. Otherwise Debian's
//! `rustc-web` toolchain builds `std` for the target (`-Zbuild-std`, allowed by
//! `RUSTC_BOOTSTRAP=1` for this build only), linking with rustup's
//! `wasm-component-ld`; missing apt packages are installed first.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const TARGET: &str = "wasm32-wasip2";
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "lld-22",
    "wasi-libc",
];

fn rustup_has_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        .unwrap_or(false)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn ensure_apt_packages() -> Result<()> {
    let need: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if need.is_empty() {
        return Ok(());
    }
    eprintln!("berth-plugin: installing {}", need.join(" "));
    let cmd = format!(
        "apt-get install -y {0} >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y {0} >/dev/null)",
        need.join(" ")
    );
    let ok = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "could not install {} (run as root, or `rustup target add {TARGET}`)",
            need.join(" ")
        );
    }
    Ok(())
}

/// The directory holding rustup's `wasm-component-ld` (the host toolchain's).
fn component_ld_dir() -> Option<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .env_remove("RUSTC")
        .output()
        .ok()?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dir = Path::new(&sysroot).join("lib/rustlib/x86_64-unknown-linux-gnu/bin");
    dir.join("wasm-component-ld").exists().then_some(dir)
}

fn crate_name(project: &Path) -> Result<String> {
    let text = std::fs::read_to_string(project.join("Cargo.toml"))
        .with_context(|| format!("{}: not a plugin project", project.display()))?;
    let v: toml::Value = toml::from_str(&text).context("Cargo.toml")?;
    let name = v
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .context("Cargo.toml has no [package] name")?;
    Ok(name.replace('-', "_"))
}

/// Build and stage; returns the `dist` directory.
pub fn build(project: &Path, release: bool) -> Result<PathBuf> {
    let project = project
        .canonicalize()
        .with_context(|| format!("{}", project.display()))?;
    let krate = crate_name(&project)?;
    // One shared cache by default: `std` for the target and wit-bindgen are then
    // compiled once per machine, not once per project.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(cache.join("berth-plugin/target"))
        })
        .unwrap_or_else(|| project.join("target"));
    let mut cmd;
    if rustup_has_target() {
        cmd = Command::new("cargo");
        cmd.args(["build", "--target", TARGET]);
    } else {
        ensure_apt_packages()?;
        let ld = component_ld_dir().context(
            "wasm-component-ld not found: install rustup's host toolchain, or `rustup target add wasm32-wasip2`",
        )?;
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths: Vec<PathBuf> = std::env::split_paths(&path).collect();
        paths.push(ld);
        // Debian's toolchain by full path, so rustup's cargo on PATH is not used.
        cmd = Command::new("/usr/bin/cargo");
        cmd.args(["build", "-Zbuild-std=std,panic_abort", "--target", TARGET])
            .env_remove("RUSTUP_TOOLCHAIN")
            .env("RUSTC", "/usr/bin/rustc")
            .env("RUSTC_BOOTSTRAP", "1")
            .env("RUSTFLAGS", "-L /usr/lib/wasm32-wasi")
            .env("PATH", std::env::join_paths(paths)?);
    }
    if release {
        cmd.arg("--release");
    }
    cmd.current_dir(&project)
        .env("CARGO_TARGET_DIR", &target_dir)
        // A parent `cargo test`/`cargo run` must not leak its settings in.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    let st = cmd.status().context("running cargo")?;
    if !st.success() {
        bail!("cargo build failed");
    }
    let profile = if release { "release" } else { "debug" };
    let wasm = target_dir
        .join(TARGET)
        .join(profile)
        .join(format!("{krate}.wasm"));
    let dist = project.join("dist");
    std::fs::create_dir_all(&dist)?;
    std::fs::copy(&wasm, dist.join("plugin.wasm"))
        .with_context(|| format!("copying {}", wasm.display()))?;
    // An authz project's manifest is authz.toml (what berthd looks for); a stale
    // manifest of the other name must not stay beside the new component.
    let manifest = if project.join("authz.toml").exists() {
        "authz.toml"
    } else {
        "manifest.toml"
    };
    for stale in ["authz.toml", "manifest.toml"] {
        let _ = std::fs::remove_file(dist.join(stale));
    }
    std::fs::copy(project.join(manifest), dist.join(manifest))
        .with_context(|| format!("copying {manifest}"))?;
    // `docker plugin create NAME dist/` needs a config.json the docker CLI can
    // decode before it sends the directory; berthd reads only the two files above.
    std::fs::write(
        dist.join("config.json"),
        "{\"Description\": \"berth WASM plugin: manifest.toml + plugin.wasm\", \"Interface\": {\"Types\": [], \"Socket\": \"\"}}\n",
    )
    .context("writing config.json")?;
    Ok(dist)
}
