//! Load-time checks of a component's imports and exports against its kind.

use wasmtime::component::Component;
use wasmtime::Engine;

use crate::manifest::{Manifest, PluginKind};

/// `berth:driver` versions this host can run. Released versions are frozen; each
/// has its own binding module in [`crate::bindings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterfaceVersion {
    V0_1_0,
    /// Adds the network world served by the host (intents, no host imports).
    V0_2_0,
    /// The network world with IPv6 (dual-stack records).
    V0_3_0,
}

impl InterfaceVersion {
    pub const ALL: &'static [InterfaceVersion] = &[
        InterfaceVersion::V0_1_0,
        InterfaceVersion::V0_2_0,
        InterfaceVersion::V0_3_0,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InterfaceVersion::V0_1_0 => "0.1.0",
            InterfaceVersion::V0_2_0 => "0.2.0",
            InterfaceVersion::V0_3_0 => "0.3.0",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.as_str() == s)
    }
}

/// WASI interfaces any plugin may import: streams, clocks, randomness, stdio (which
/// the host captures or closes) and the filesystem (only its own root is preopened).
pub(crate) const WASI_BASE: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
];
pub(crate) const WASI_FS: &[&str] = &["wasi:filesystem/types", "wasi:filesystem/preopens"];
/// Only with a `[grants] network` entry. DNS stays off (grants are ip:port).
const WASI_SOCKETS: &[&str] = &[
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

fn split_version(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (name, None),
    }
}

fn driver_interfaces(kind: PluginKind) -> (&'static [&'static str], &'static [&'static str]) {
    match kind {
        PluginKind::Log => (&["types", "host"], &["lifecycle", "log-driver"]),
        PluginKind::Volume => (
            &["types", "host", "volume-host"],
            &["lifecycle", "volume-driver"],
        ),
        // 0.2.0 and 0.3.0: the network world imports only types (no host calls at all).
        PluginKind::Network => (
            &["types", "network-types"],
            &["lifecycle", "network-driver", "ipam-driver"],
        ),
    }
}

/// Check the component's exports match its kind and a supported version, and that
/// every import is on the kind's allowlist (plus the manifest's grants).
pub fn check(
    engine: &Engine,
    component: &Component,
    manifest: &Manifest,
) -> Result<InterfaceVersion, String> {
    let kind = manifest.kind;
    let ty = component.component_type();
    let (allowed_driver_imports, required_exports) = driver_interfaces(kind);

    // Exports decide the version, as the manifest may be stale or wrong.
    let mut version: Option<String> = None;
    for (name, _) in ty.exports(engine) {
        let (iface, v) = split_version(name);
        if let Some(short) = iface.strip_prefix("berth:driver/") {
            if required_exports.contains(&short) {
                let v = v.unwrap_or("").to_string();
                match &version {
                    Some(prev) if *prev != v => {
                        return Err(format!("exports mix berth:driver versions {prev} and {v}"));
                    }
                    _ => version = Some(v),
                }
            }
        }
    }
    let version = version.ok_or_else(|| {
        format!(
            "component exports no berth:driver/{} interface: not a {kind} plugin",
            required_exports[1]
        )
    })?;
    let parsed = InterfaceVersion::parse(&version).ok_or_else(|| {
        let supported: Vec<_> = InterfaceVersion::ALL.iter().map(|v| v.as_str()).collect();
        format!(
            "interface berth:driver@{version} is not supported by this berthd (supported: {})",
            supported.join(", ")
        )
    })?;
    // Each kind is served at the versions that have a host binding for it: log and
    // volume at 0.1.0, network at 0.2.0 (IPv4 only) and 0.3.0 (dual-stack); 0.1.0's
    // network world stays frozen, unserved.
    let served = match kind {
        PluginKind::Network => {
            matches!(parsed, InterfaceVersion::V0_2_0 | InterfaceVersion::V0_3_0)
        }
        _ => parsed == InterfaceVersion::V0_1_0,
    };
    if !served {
        return Err(format!(
            "a {kind} plugin on berth:driver@{version} is not served by this berthd"
        ));
    }
    if version != manifest.interface_version {
        return Err(format!(
            "manifest says berth:driver@{} but the component exports berth:driver@{version}",
            manifest.interface_version
        ));
    }
    for want in required_exports {
        let full = format!("berth:driver/{want}@{version}");
        if ty.get_export(engine, &full).is_none() {
            return Err(format!(
                "component does not export {full}: not a {kind} plugin"
            ));
        }
    }

    let mut refused = Vec::new();
    for (name, _) in ty.imports(engine) {
        let (iface, _) = split_version(name);
        let ok = if let Some(short) = iface.strip_prefix("berth:driver/") {
            allowed_driver_imports.contains(&short)
        } else if WASI_BASE.contains(&iface) {
            true
        } else if WASI_FS.contains(&iface) {
            // Rust's std imports these on wasm32-wasip2 whatever the code does; a
            // network plugin gets no preopened directory, so they reach nothing.
            true
        } else if WASI_SOCKETS.contains(&iface) {
            !manifest.network_allow.is_empty()
        } else {
            false
        };
        if !ok {
            refused.push(name.to_string());
        }
    }
    if !refused.is_empty() {
        let hint = if refused.iter().any(|n| n.starts_with("wasi:sockets/"))
            && manifest.network_allow.is_empty()
        {
            " (wasi:sockets needs a [grants] network entry in manifest.toml)"
        } else {
            ""
        };
        return Err(format!(
            "imports not allowed for a {kind} plugin: {}{hint}",
            refused.join(", ")
        ));
    }
    Ok(parsed)
}

/// Check a component against its manifest without a running host: compile it with
/// a default engine and apply the same export/import rules as at load time
/// (`berth-plugin check`).
pub fn check_standalone(manifest: &Manifest, wasm: &[u8]) -> Result<InterfaceVersion, String> {
    let engine = Engine::default();
    let component =
        Component::new(&engine, wasm).map_err(|e| format!("not a valid component: {e:#}"))?;
    check(&engine, &component, manifest)
}
