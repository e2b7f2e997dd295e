//! Daemon configuration: dockerd-style flags over an optional TOML file over
//! built-in defaults.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Deserialize;

pub const DEFAULT_HOST: &str = "unix:///run/berth/berth.sock";

#[derive(Parser, Debug)]
#[command(
    name = "berthd",
    version,
    about = "berth: a Docker-API container engine with microVM isolation"
)]
pub struct Flags {
    /// Daemon socket(s) to listen on, e.g. unix:///run/berth/berth.sock (repeatable).
    #[arg(short = 'H', long = "host")]
    pub hosts: Vec<String>,
    /// Root directory of persistent state.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Root directory of runtime state (sockets, per-container run dirs).
    #[arg(long)]
    pub exec_root: Option<PathBuf>,
    /// Path to write the daemon's PID to.
    #[arg(short = 'p', long)]
    pub pidfile: Option<PathBuf>,
    /// Log level: trace, debug, info, warn, error, fatal.
    #[arg(short = 'l', long)]
    pub log_level: Option<String>,
    /// TOML configuration file.
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// The berth-agent binary (default: next to berthd, or $BERTH_AGENT).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Default log driver for containers (default json-file).
    #[arg(long)]
    pub log_driver: Option<String>,
    /// Container rootfs storage: overlay (layers shared as lower dirs) or copy
    /// (flattened per container). Probed when unset.
    #[arg(short = 's', long)]
    pub storage_driver: Option<String>,
    /// Directory of user-installed WASM plugins (repeatable; default <data-root>/plugins).
    #[arg(long = "plugin-dir")]
    pub plugin_dirs: Vec<PathBuf>,
    /// Isolation for containers that do not ask for one: process (default) or microvm.
    #[arg(long, value_parser = ["process", "microvm"])]
    pub default_isolation: Option<String>,
    /// Hypervisor for microVM isolation: berth (berth-vmm, needs hardware KVM) or qemu
    /// (KVM when hardware, TCG otherwise). Probed when unset.
    #[arg(long, value_parser = ["berth", "qemu"])]
    pub vmm: Option<String>,
    /// Let berth-vmm run on PVM, where it hides the CPU features PVM's emulator lacks but
    /// a Linux guest still stops in early boot. For diagnosing the VMM's failure path only.
    #[arg(long)]
    pub vmm_on_pvm: bool,
    /// Guest kernel (vmlinux) for microVMs (default: $BERTH_GUEST_KERNEL, or the newest
    /// guest-kernel/build.sh output in /var/cache/berth/guest-kernel).
    #[arg(long)]
    pub guest_kernel: Option<PathBuf>,
    /// Group that may use the API socket (default `docker`, when it exists).
    #[arg(short = 'G', long)]
    pub group: Option<String>,
    /// Largest image a URL import may download (bytes, or with k/m/g; default 16g).
    #[arg(long)]
    pub max_download_size: Option<String>,
    /// The default bridge: `none` turns it off (containers without a network get
    /// loopback only); anything else keeps berth's own `berth0`.
    #[arg(short = 'b', long)]
    pub bridge: Option<String>,
    /// The default bridge's address and prefix, e.g. 10.231.0.1/24.
    #[arg(long)]
    pub bip: Option<String>,
    /// Where the default bridge hands out container addresses (inside --bip's subnet).
    #[arg(long)]
    pub fixed_cidr: Option<String>,
    /// IPv6 on the default bridge (needs --fixed-cidr-v6).
    #[arg(long)]
    pub ipv6: bool,
    /// The default bridge's IPv6 subnet, e.g. fd00:1::/64 (its gateway is ::1).
    #[arg(long = "fixed-cidr-v6")]
    pub fixed_cidr_v6: Option<String>,
    /// Pools for user networks without --subnet: base=CIDR,size=N (repeatable).
    #[arg(long = "default-address-pool")]
    pub default_address_pools: Vec<String>,
    /// MTU of bridges and container interfaces (default 1500).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Spare NICs each microVM boots with, for `docker network connect` while it runs
    /// (default 2, at most 8).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=8))]
    pub microvm_spare_nics: Option<u8>,
    /// Serve TLS on tcp:// hosts (implied by --tlsverify).
    #[arg(long)]
    pub tls: bool,
    /// Serve TLS on tcp:// hosts and require client certificates signed by --tlscacert.
    #[arg(long)]
    pub tlsverify: bool,
    /// CA that client certificates must chain to (with --tlsverify).
    #[arg(long)]
    pub tlscacert: Option<PathBuf>,
    /// The server's TLS certificate (PEM).
    #[arg(long)]
    pub tlscert: Option<PathBuf>,
    /// The server's TLS private key (PEM).
    #[arg(long)]
    pub tlskey: Option<PathBuf>,
    /// A registry reached without verifying its certificate, and over plain HTTP when
    /// HTTPS fails: a CIDR (10.0.0.0/8) or host[:port] (repeatable; loopback always is).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// A docker.io pull-through mirror URL, tried before docker.io (repeatable).
    #[arg(long = "registry-mirror")]
    pub registry_mirrors: Vec<String>,
    /// Per-registry certificates: <dir>/<host:port>/{*.crt, client.cert, client.key}
    /// (default /etc/docker/certs.d).
    #[arg(long)]
    pub registry_certs_dir: Option<PathBuf>,
    /// Authorization plugin (berth:authz WASM component) consulted on every request;
    /// repeatable, consulted in order (dockerd's flag).
    #[arg(long = "authorization-plugin")]
    pub authz_plugins: Vec<String>,
    /// An authorization plugin setting, NAME.KEY=VALUE (repeatable), e.g.
    /// tenant-policy.allowed-bind-prefix=/srv/tenants.
    #[arg(long = "authz-opt")]
    pub authz_opts: Vec<String>,
    /// Run every container in a user namespace whose root is an unprivileged host uid:
    /// `default` (user dockremap, created when missing) or USER[:GROUP] with ranges in
    /// /etc/subuid and /etc/subgid (dockerd's flag).
    #[arg(long)]
    pub userns_remap: Option<String>,
}

/// The TOML file: the same settings as the flags, dockerd's names.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub hosts: Option<Vec<String>>,
    pub data_root: Option<PathBuf>,
    pub exec_root: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
    pub log_level: Option<String>,
    pub agent_bin: Option<PathBuf>,
    pub log_driver: Option<String>,
    pub plugin_dirs: Option<Vec<PathBuf>>,
    pub storage_driver: Option<String>,
    pub default_isolation: Option<String>,
    pub vmm: Option<String>,
    pub vmm_on_pvm: Option<bool>,
    pub guest_kernel: Option<PathBuf>,
    pub group: Option<String>,
    pub max_download_size: Option<String>,
    pub bridge: Option<String>,
    pub bip: Option<String>,
    pub fixed_cidr: Option<String>,
    pub ipv6: Option<bool>,
    pub fixed_cidr_v6: Option<String>,
    pub default_address_pools: Option<Vec<String>>,
    pub mtu: Option<u32>,
    pub microvm_spare_nics: Option<u8>,
    pub tls: Option<bool>,
    pub tlsverify: Option<bool>,
    pub tlscacert: Option<PathBuf>,
    pub tlscert: Option<PathBuf>,
    pub tlskey: Option<PathBuf>,
    pub insecure_registries: Option<Vec<String>>,
    pub registry_mirrors: Option<Vec<String>>,
    pub registry_certs_dir: Option<PathBuf>,
    pub authorization_plugins: Option<Vec<String>>,
    pub authz_opts: Option<Vec<String>>,
    pub userns_remap: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub sockets: Vec<PathBuf>,
    /// `-H tcp://ADDR:PORT` listeners, always TLS.
    pub tcp: Vec<std::net::SocketAddr>,
    pub tls: Option<berth_api::tls::TlsFiles>,
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    pub pidfile: PathBuf,
    pub log_level: String,
    pub agent_bin: Option<PathBuf>,
    pub log_driver: Option<String>,
    pub plugin_dirs: Vec<PathBuf>,
    pub storage_driver: Option<String>,
    pub default_isolation: Option<String>,
    pub vmm: Option<String>,
    pub vmm_on_pvm: bool,
    pub guest_kernel: Option<PathBuf>,
    /// Group id for the API sockets (`-G`), when that group exists.
    pub socket_group: Option<u32>,
    pub max_download_bytes: Option<u64>,
    pub network: berth_engine::networks::NetworkConfig,
    pub registry: berth_engine::images::trust::RegistryConfig,
    /// `--authorization-plugin`, in order.
    pub authz_plugins: Vec<String>,
    /// `--authz-opt NAME.KEY=VALUE`: (plugin, key, value).
    pub authz_opts: Vec<(String, String, String)>,
    /// `--userns-remap` as given (resolved by the engine at start-up).
    pub userns_remap: Option<String>,
}

impl Config {
    pub fn resolve(flags: Flags) -> Result<Config> {
        let file = match &flags.config_file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("read config file {}", p.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parse config file {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let tls = tls_files(&flags_tls(&flags), &file)?;
        let hosts = if !flags.hosts.is_empty() {
            flags.hosts
        } else {
            file.hosts.unwrap_or_else(|| vec![DEFAULT_HOST.to_string()])
        };
        let mut sockets = Vec::new();
        let mut tcp = Vec::new();
        for h in &hosts {
            match parse_host(h)? {
                Host::Unix(p) => sockets.push(p),
                Host::Tcp(a) => tcp.push(a),
            }
        }
        if !tcp.is_empty() && tls.is_none() {
            bail!(
                "tcp:// hosts are served only over TLS: give --tlscert and --tlskey (and --tlsverify --tlscacert to require client certificates); an unencrypted remote Docker API is root on this host"
            );
        }
        let data_root = flags
            .data_root
            .or(file.data_root)
            .unwrap_or_else(|| PathBuf::from("/var/lib/berth"));
        let exec_root = flags
            .exec_root
            .or(file.exec_root)
            .unwrap_or_else(|| PathBuf::from("/run/berth"));
        let pidfile = flags
            .pidfile
            .or(file.pidfile)
            .unwrap_or_else(|| exec_root.join("berthd.pid"));
        let log_level = flags
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| "info".into());
        let agent_bin = flags
            .agent_bin
            .or(file.agent_bin)
            .map(absolute)
            .transpose()?;
        let plugin_dirs = if flags.plugin_dirs.is_empty() {
            file.plugin_dirs.unwrap_or_default()
        } else {
            flags.plugin_dirs
        };
        let plugin_dirs = plugin_dirs
            .into_iter()
            .map(absolute)
            .collect::<Result<Vec<_>>>()?;
        let guest_kernel = flags
            .guest_kernel
            .or(file.guest_kernel)
            .map(absolute)
            .transpose()?;
        let socket_group = match flags.group.or(file.group) {
            // dockerd's default group is optional; a group named explicitly must exist.
            None => group_id("docker"),
            Some(g) => Some(
                g.parse::<u32>()
                    .ok()
                    .or_else(|| group_id(&g))
                    .with_context(|| format!("group {g:?} not found"))?,
            ),
        };
        let max_download_bytes = flags
            .max_download_size
            .or(file.max_download_size)
            .map(|s| parse_size(&s).with_context(|| format!("invalid --max-download-size {s:?}")))
            .transpose()?;
        let network = berth_engine::networks::NetworkConfig {
            bridge_disabled: flags.bridge.or(file.bridge).as_deref() == Some("none"),
            bip: flags.bip.or(file.bip),
            fixed_cidr: flags.fixed_cidr.or(file.fixed_cidr),
            ipv6: flags.ipv6 || file.ipv6.unwrap_or(false),
            fixed_cidr_v6: flags.fixed_cidr_v6.or(file.fixed_cidr_v6),
            default_address_pools: if flags.default_address_pools.is_empty() {
                file.default_address_pools.unwrap_or_default()
            } else {
                flags.default_address_pools
            },
            mtu: flags.mtu.or(file.mtu),
            microvm_spare_nics: flags.microvm_spare_nics.or(file.microvm_spare_nics),
        };
        let registry = berth_engine::images::trust::RegistryConfig {
            insecure: if flags.insecure_registries.is_empty() {
                file.insecure_registries.unwrap_or_default()
            } else {
                flags.insecure_registries
            },
            mirrors: if flags.registry_mirrors.is_empty() {
                file.registry_mirrors.unwrap_or_default()
            } else {
                flags.registry_mirrors
            },
            certs_dir: match flags.registry_certs_dir.or(file.registry_certs_dir) {
                Some(d) => absolute(d)?,
                None => PathBuf::from(berth_engine::images::trust::DEFAULT_CERTS_DIR),
            },
        };
        registry.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        let authz_plugins = if flags.authz_plugins.is_empty() {
            file.authorization_plugins.unwrap_or_default()
        } else {
            flags.authz_plugins
        };
        let authz_opts = if flags.authz_opts.is_empty() {
            file.authz_opts.unwrap_or_default()
        } else {
            flags.authz_opts
        }
        .iter()
        .map(|o| parse_authz_opt(o))
        .collect::<Result<Vec<_>>>()?;
        Ok(Config {
            userns_remap: flags.userns_remap.or(file.userns_remap),
            registry,
            authz_plugins,
            authz_opts,
            network,
            socket_group,
            max_download_bytes,
            default_isolation: flags.default_isolation.or(file.default_isolation),
            vmm: flags.vmm.or(file.vmm),
            vmm_on_pvm: flags.vmm_on_pvm || file.vmm_on_pvm.unwrap_or(false),
            guest_kernel,
            agent_bin,
            log_driver: flags.log_driver.or(file.log_driver),
            storage_driver: flags.storage_driver.or(file.storage_driver),
            plugin_dirs,
            sockets,
            tcp,
            tls,
            data_root: absolute(data_root)?,
            exec_root: absolute(exec_root)?,
            pidfile: absolute(pidfile)?,
            log_level,
        })
    }
}

fn absolute(p: PathBuf) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// Where the API listens.
#[derive(Debug, PartialEq)]
pub enum Host {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

/// `unix:///path` (or a bare absolute path), or `tcp://ADDR:PORT` (port 2376 when
/// left out, as dockerd's TLS port).
pub fn parse_host(h: &str) -> Result<Host> {
    if let Some(p) = h.strip_prefix("unix://") {
        if p.is_empty() {
            return Ok(Host::Unix(PathBuf::from("/run/berth/berth.sock")));
        }
        return Ok(Host::Unix(PathBuf::from(p)));
    }
    if h.starts_with('/') {
        return Ok(Host::Unix(PathBuf::from(h)));
    }
    if let Some(a) = h.strip_prefix("tcp://") {
        let a = a.trim_end_matches('/');
        let with_port = if a
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !a.ends_with(']')
        {
            a.to_string()
        } else {
            format!("{a}:2376")
        };
        return with_port
            .parse()
            .map(Host::Tcp)
            .with_context(|| format!("invalid tcp host {h:?}: want tcp://IP:PORT"));
    }
    bail!("unsupported host {h:?}: unix:///path and tcp://IP:PORT (with TLS) are served")
}

/// The TLS flags as given on the command line.
struct TlsFlags {
    tls: bool,
    verify: bool,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

fn flags_tls(f: &Flags) -> TlsFlags {
    TlsFlags {
        tls: f.tls,
        verify: f.tlsverify,
        ca: f.tlscacert.clone(),
        cert: f.tlscert.clone(),
        key: f.tlskey.clone(),
    }
}

/// dockerd's rules: `--tlsverify` implies `--tls` and needs a CA; a certificate and key
/// are needed for either.
fn tls_files(f: &TlsFlags, file: &FileConfig) -> Result<Option<berth_api::tls::TlsFiles>> {
    let verify = f.verify || file.tlsverify.unwrap_or(false);
    let tls = verify || f.tls || file.tls.unwrap_or(false);
    let cert = f.cert.clone().or(file.tlscert.clone());
    let key = f.key.clone().or(file.tlskey.clone());
    let ca = f.ca.clone().or(file.tlscacert.clone());
    if !tls && cert.is_none() && key.is_none() {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (cert, key) else {
        bail!("TLS needs both --tlscert and --tlskey");
    };
    let client_ca = if verify {
        Some(absolute(ca.context("--tlsverify needs --tlscacert")?)?)
    } else {
        None
    };
    Ok(Some(berth_api::tls::TlsFiles {
        cert: absolute(cert)?,
        key: absolute(key)?,
        client_ca,
    }))
}

/// The gid of group `name` (getgrnam_r), if it exists.
fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r fills `grp` using `buf`; all pointers are live for the call.
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}

/// `16g`, `512m`, `1048576`.
fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches('b');
    let (num, shift) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 10),
        'm' => (&t[..t.len() - 1], 20),
        'g' => (&t[..t.len() - 1], 30),
        't' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    num.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// `NAME.KEY=VALUE` → (NAME, KEY, VALUE).
fn parse_authz_opt(o: &str) -> Result<(String, String, String)> {
    let (lhs, value) = o
        .split_once('=')
        .with_context(|| format!("--authz-opt {o:?}: want NAME.KEY=VALUE"))?;
    let (name, key) = lhs
        .split_once('.')
        .with_context(|| format!("--authz-opt {o:?}: want NAME.KEY=VALUE"))?;
    if name.is_empty() || key.is_empty() {
        bail!("--authz-opt {o:?}: want NAME.KEY=VALUE");
    }
    Ok((name.to_string(), key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse() {
        assert_eq!(
            parse_host("unix:///tmp/x.sock").unwrap(),
            Host::Unix(PathBuf::from("/tmp/x.sock"))
        );
        assert_eq!(
            parse_host("tcp://127.0.0.1:2375").unwrap(),
            Host::Tcp("127.0.0.1:2375".parse().unwrap())
        );
        assert_eq!(
            parse_host("tcp://10.0.0.1").unwrap(),
            Host::Tcp("10.0.0.1:2376".parse().unwrap())
        );
        assert!(parse_host("tcp://nohost:x").is_err());
        assert!(parse_host("ssh://x").is_err());
    }

    #[test]
    fn tcp_without_tls_is_refused() {
        let flags = Flags::parse_from(["berthd", "-H", "tcp://127.0.0.1:2375"]);
        let e = Config::resolve(flags).unwrap_err().to_string();
        assert!(e.contains("only over TLS"), "{e}");
        let flags = Flags::parse_from(["berthd", "--tlsverify", "--tlscert", "c", "--tlskey", "k"]);
        let e = Config::resolve(flags).unwrap_err().to_string();
        assert!(e.contains("--tlscacert"), "{e}");
    }

    #[test]
    fn flags_override_file() {
        let dir = std::env::temp_dir().join(format!("berth-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "data-root = \"/a\"\nlog-level = \"debug\"\nhosts = [\"unix:///x.sock\"]\n",
        )
        .unwrap();
        let flags = Flags::parse_from([
            "berthd",
            "--config-file",
            f.to_str().unwrap(),
            "--data-root",
            "/b",
        ]);
        let c = Config::resolve(flags).unwrap();
        assert_eq!(c.data_root, PathBuf::from("/b"));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.sockets, vec![PathBuf::from("/x.sock")]);
        std::fs::write(
            &f,
            "insecure-registries = [\"10.0.0.0/8\", \"r.example:5000\"]\nregistry-mirrors = [\"https://m.example\"]\nregistry-certs-dir = \"/certs\"\n",
        )
        .unwrap();
        let flags = Flags::parse_from(["berthd", "--config-file", f.to_str().unwrap()]);
        let r = Config::resolve(flags).unwrap().registry;
        assert_eq!(r.insecure, ["10.0.0.0/8", "r.example:5000"]);
        assert_eq!(r.mirrors, ["https://m.example"]);
        assert_eq!(r.certs_dir, PathBuf::from("/certs"));
        let flags = Flags::parse_from(["berthd", "--insecure-registry", "10.0.0.0/99"]);
        assert!(Config::resolve(flags).is_err());
        let flags = Flags::parse_from(["berthd", "--registry-mirror", "m.example"]);
        assert!(Config::resolve(flags).is_err());
        // dockerd's key; the flag wins. The user is resolved later, by the engine.
        std::fs::write(&f, "userns-remap = \"default\"\n").unwrap();
        let flags = Flags::parse_from(["berthd", "--config-file", f.to_str().unwrap()]);
        let c = Config::resolve(flags).unwrap();
        assert_eq!(c.userns_remap.as_deref(), Some("default"));
        let flags = Flags::parse_from([
            "berthd",
            "--config-file",
            f.to_str().unwrap(),
            "--userns-remap",
            "alice:staff",
        ]);
        let c = Config::resolve(flags).unwrap();
        assert_eq!(c.userns_remap.as_deref(), Some("alice:staff"));
        std::fs::write(&f, "bogus = 1\n").unwrap();
        let flags = Flags::parse_from(["berthd", "--config-file", f.to_str().unwrap()]);
        assert!(Config::resolve(flags).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn authz_opts_are_name_dot_key_equals_value() {
        assert_eq!(
            parse_authz_opt("tenant-policy.allowed-bind-prefix=/srv/a=b").unwrap(),
            (
                "tenant-policy".to_string(),
                "allowed-bind-prefix".to_string(),
                "/srv/a=b".to_string()
            )
        );
        for bad in ["x", "x=1", ".k=1", "n.=1", "nokey"] {
            assert!(parse_authz_opt(bad).is_err(), "{bad}");
        }
    }
}
