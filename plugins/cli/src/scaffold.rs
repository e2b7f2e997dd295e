//! `berth-plugin new`: a standalone plugin crate that builds anywhere. The WIT
//! package is vendored into the project (`wit/`), so nothing points back into the
//! berth repository; the driver source is the repository's own template (log),
//! default driver (volume, network: the `bridge` driver and its IPAM) or the SDK's
//! authz template (allow-all plus one example rule), so a new project starts from
//! code that berth tests.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// `berth:driver@0.1.0`, the interface version log and volume drivers use.
pub const INTERFACE: &str = "berth:driver@0.1.0";
/// Network drivers are `berth:driver@0.3.0` (the dual-stack `network-plugin` world; berthd
/// still serves 0.2.0 ones, IPv4 only).
pub const NETWORK_INTERFACE: &str = "berth:driver@0.3.0";
/// Authorization plugins have a package of their own.
pub const AUTHZ_INTERFACE: &str = "berth:authz@0.1.0";

pub const WIT_FILES: &[(&str, &str)] = &[
    ("types.wit", include_str!("../../wit/0.1.0/types.wit")),
    ("log.wit", include_str!("../../wit/0.1.0/log.wit")),
    ("volume.wit", include_str!("../../wit/0.1.0/volume.wit")),
    ("network.wit", include_str!("../../wit/0.1.0/network.wit")),
    ("worlds.wit", include_str!("../../wit/0.1.0/worlds.wit")),
];

const NETWORK_WIT: &[(&str, &str)] = &[
    ("types.wit", include_str!("../../wit/0.3.0/types.wit")),
    ("network.wit", include_str!("../../wit/0.3.0/network.wit")),
    ("worlds.wit", include_str!("../../wit/0.3.0/worlds.wit")),
];
const AUTHZ_WIT: &[(&str, &str)] =
    &[("authz.wit", include_str!("../../wit/authz-0.1.0/authz.wit"))];

const LOG_SRC: &str = include_str!("../../drivers/template-log/src/lib.rs");
const VOLUME_SRC: &str = include_str!("../../drivers/local-volume/src/lib.rs");
const NETWORK_SRC: &str = include_str!("../../drivers/bridge/src/lib.rs");
const NETWORK_IPAM_SRC: &str = include_str!("../../drivers/bridge/src/ipam.rs");
const AUTHZ_SRC: &str = include_str!("../templates/authz.rs");
/// The plugin workspace's lock file: the generated project resolves to the same,
/// known-good versions (and builds offline from a warm cargo cache).
const LOCK: &str = include_str!("../../drivers/Cargo.lock");
const WIT_BINDGEN: &str = r#"wit-bindgen = { version = "=0.61.1", default-features = false, features = ["macros", "realloc"] }"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Log,
    Volume,
    Network,
    Authz,
}

impl Kind {
    /// The file berthd reads the plugin's manifest from (authz plugins are found
    /// by `--authorization-plugin NAME` as `NAME/authz.toml`).
    pub fn manifest_file(self) -> &'static str {
        match self {
            Kind::Authz => "authz.toml",
            _ => "manifest.toml",
        }
    }
}

pub fn parse_kind(s: &str) -> Result<Kind> {
    match s {
        "log" => Ok(Kind::Log),
        "volume" => Ok(Kind::Volume),
        "network" => Ok(Kind::Network),
        "authz" => Ok(Kind::Authz),
        other => bail!("unknown kind {other:?} (log, volume, network, authz)"),
    }
}

fn cargo_toml(name: &str, kind: Kind) -> String {
    let extra = if kind == Kind::Authz {
        "serde_json = \"1\"\n"
    } else {
        ""
    };
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]

[dependencies]
{WIT_BINDGEN}
{extra}
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
    match kind {
        Kind::Network => {
            return format!(
                "# Read by berthd at load; `name` is the `docker network create -d` name.\n\
                 # Network drivers get no grants: their only effect is the intents they return.\n\
                 name = \"{name}\"\nkind = \"network\"\ninterface = \"{NETWORK_INTERFACE}\"\n"
            )
        }
        Kind::Authz => {
            return format!(
                "# Read by berthd for `--authorization-plugin {name}`.\n\
                 name = \"{name}\"\nkind = \"authz\"\ninterface = \"{AUTHZ_INTERFACE}\"\n\n\
                 [config]\n\
                 # Passed to init; override with `berthd --authz-opt {name}.deny-privileged=false`.\n\
                 deny-privileged = \"true\"\n"
            )
        }
        _ => {}
    }
    let (k, config) = match kind {
        Kind::Log => (
            "log",
            "[config]\n# Passed to lifecycle.init; `docker plugin set` can change it.\nprefix = \"\"\n",
        ),
        _ => (
            "volume",
            "[config]\ndefault-kind = \"dir\"\ndefault-size = \"1G\"\n",
        ),
    };
    format!(
        "# Read by berthd at install; `name` is the --log-driver / volume -d name.\nname = \"{name}\"\nkind = \"{k}\"\ninterface = \"{INTERFACE}\"\n\n# [grants]\n# network = [\"127.0.0.1:5140\"]   # TCP destinations; shown and asked for at install\n\n{config}"
    )
}

/// The crate's source files, with the WIT path pointing at the vendored `wit/`.
fn sources(kind: Kind) -> Vec<(String, String)> {
    let files: &[(&str, &str)] = match kind {
        Kind::Log => &[("lib.rs", LOG_SRC)],
        Kind::Volume => &[("lib.rs", VOLUME_SRC)],
        Kind::Network => &[("lib.rs", NETWORK_SRC), ("ipam.rs", NETWORK_IPAM_SRC)],
        Kind::Authz => &[("lib.rs", AUTHZ_SRC)],
    };
    files
        .iter()
        .map(|(f, src)| {
            let src = ["0.1.0", "0.2.0", "0.3.0"]
                .iter()
                .fold(src.to_string(), |s, v| {
                    s.replace(&format!(r#"path: "../../wit/{v}""#), r#"path: "wit""#)
                });
            (format!("src/{f}"), src)
        })
        .collect()
}

fn wit_files(kind: Kind) -> &'static [(&'static str, &'static str)] {
    match kind {
        Kind::Log | Kind::Volume => WIT_FILES,
        Kind::Network => NETWORK_WIT,
        Kind::Authz => AUTHZ_WIT,
    }
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
    let mut files: Vec<(String, String)> = vec![
        ("Cargo.toml".into(), cargo_toml(&crate_name, kind)),
        ("Cargo.lock".into(), LOCK.to_string()),
        (kind.manifest_file().into(), manifest_toml(name, kind)),
        (".gitignore".into(), "/target\n/dist\n".into()),
    ];
    files.extend(sources(kind));
    for (path, text) in files.into_iter().chain(
        wit_files(kind)
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
        assert!(parse_kind("nope")
            .unwrap_err()
            .to_string()
            .contains("authz"));
    }

    #[test]
    fn network_and_authz_scaffolds_are_self_contained() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = new_project(tmp.path(), "my-net", parse_kind("network").unwrap()).unwrap();
        for f in ["src/lib.rs", "src/ipam.rs"] {
            let src = std::fs::read_to_string(dir.join(f)).unwrap();
            assert!(!src.contains("../"), "{f}: {src}");
        }
        let m = berth_plugin_host::Manifest::parse(
            &std::fs::read_to_string(dir.join("manifest.toml")).unwrap(),
        )
        .unwrap();
        assert_eq!(m.kind, berth_plugin_host::PluginKind::Network);
        assert_eq!(m.interface_version, "0.3.0");
        assert!(dir.join("wit/network.wit").exists());

        let dir = new_project(tmp.path(), "my-authz", parse_kind("authz").unwrap()).unwrap();
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains(r#"path: "wit""#), "{lib}");
        let m: toml::Value =
            toml::from_str(&std::fs::read_to_string(dir.join("authz.toml")).unwrap()).unwrap();
        assert_eq!(m["interface"].as_str(), Some(AUTHZ_INTERFACE));
        assert!(!dir.join("manifest.toml").exists());
        assert!(dir.join("wit/authz.wit").exists());
    }
}
