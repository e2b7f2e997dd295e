//! `berth-plugin new`: a standalone plugin crate that builds anywhere. The WIT
//! package is vendored into the project (`wit/`), so nothing points back into the
//! berth repository; the driver source is the repository's own template (log) or
//! default driver (volume), so a new project starts from code that berth tests.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// `berth:driver@0.1.0`, the interface version this tool scaffolds against.
pub const INTERFACE: &str = "berth:driver@0.1.0";

pub const WIT_FILES: &[(&str, &str)] = &[
    ("types.wit", include_str!("../../wit/0.1.0/types.wit")),
    ("log.wit", include_str!("../../wit/0.1.0/log.wit")),
    ("volume.wit", include_str!("../../wit/0.1.0/volume.wit")),
    ("network.wit", include_str!("../../wit/0.1.0/network.wit")),
    ("worlds.wit", include_str!("../../wit/0.1.0/worlds.wit")),
];

const LOG_SRC: &str = include_str!("../../drivers/template-log/src/lib.rs");
const VOLUME_SRC: &str = include_str!("../../drivers/local-volume/src/lib.rs");
/// The plugin workspace's lock file: the generated project resolves to the same,
/// known-good versions (and builds offline from a warm cargo cache).
const LOCK: &str = include_str!("../../drivers/Cargo.lock");
const WIT_BINDGEN: &str = r#"wit-bindgen = { version = "=0.61.1", default-features = false, features = ["macros", "realloc"] }"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Log,
    Volume,
}

pub fn parse_kind(s: &str) -> Result<Kind> {
    match s {
        "log" => Ok(Kind::Log),
        "volume" => Ok(Kind::Volume),
        "network" | "authz" => bail!(
            "{s} plugins are not served by berthd yet; only log and volume drivers can be written today"
        ),
        other => bail!("unknown kind {other:?} (log, volume)"),
    }
}

fn cargo_toml(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]

[dependencies]
{WIT_BINDGEN}

# Standalone: never part of an enclosing workspace.
[workspace]

[profile.release]
opt-level = 3
panic = "abort"
codegen-units = 4
strip = "debuginfo"

[profile.dev]
panic = "abort"
"#
    )
}

fn manifest_toml(name: &str, kind: Kind) -> String {
    let (k, config) = match kind {
        Kind::Log => (
            "log",
            "[config]\n# Passed to lifecycle.init; `docker plugin set` can change it.\nprefix = \"\"\n",
        ),
        Kind::Volume => (
            "volume",
            "[config]\ndefault-kind = \"dir\"\ndefault-size = \"1G\"\n",
        ),
    };
    format!(
        "# Read by berthd at install; `name` is the --log-driver / volume -d name.\nname = \"{name}\"\nkind = \"{k}\"\ninterface = \"{INTERFACE}\"\n\n# [grants]\n# network = [\"127.0.0.1:5140\"]   # TCP destinations; shown and asked for at install\n\n{config}"
    )
}

fn source(kind: Kind) -> String {
    let src = match kind {
        Kind::Log => LOG_SRC,
        Kind::Volume => VOLUME_SRC,
    };
    src.replace(r#"path: "../../wit/0.1.0""#, r#"path: "wit""#)
}

/// Create `<parent>/<name>/` (it must not exist).
pub fn new_project(parent: &Path, name: &str, kind: Kind) -> Result<std::path::PathBuf> {
    if !berth_plugin_host::valid_plugin_name(name) {
        bail!("invalid plugin name {name:?} (use [a-z0-9][a-z0-9._-]*, at most 64)");
    }
    let dir = parent.join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join("wit"))?;
    let crate_name = name.replace('.', "-");
    let files: Vec<(String, String)> = vec![
        ("Cargo.toml".into(), cargo_toml(&crate_name)),
        ("Cargo.lock".into(), LOCK.to_string()),
        ("manifest.toml".into(), manifest_toml(name, kind)),
        ("src/lib.rs".into(), source(kind)),
        (".gitignore".into(), "/target\n/dist\n".into()),
    ];
    for (path, text) in files.into_iter().chain(
        WIT_FILES
            .iter()
            .map(|(f, t)| (format!("wit/{f}"), t.to_string())),
    ) {
        std::fs::write(dir.join(&path), text).with_context(|| format!("writing {path}"))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaffold_is_self_contained() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = new_project(tmp.path(), "my-log", Kind::Log).unwrap();
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains(r#"path: "wit""#), "{lib}");
        assert!(!lib.contains("../"));
        let m = berth_plugin_host::Manifest::parse(
            &std::fs::read_to_string(dir.join("manifest.toml")).unwrap(),
        )
        .unwrap();
        assert_eq!(m.name, "my-log");
        assert!(dir.join("wit/worlds.wit").exists());
        assert!(new_project(tmp.path(), "my-log", Kind::Log).is_err());
        assert!(new_project(tmp.path(), "Bad/Name", Kind::Log).is_err());
        assert!(parse_kind("network")
            .unwrap_err()
            .to_string()
            .contains("not served"));
    }
}
