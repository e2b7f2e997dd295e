//! VM configuration: a JSON file (`--config`) or command-line flags.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::arch::BootMode;
use crate::error::{Error, Result};

pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Linux kernel: uncompressed ELF vmlinux (PVH entry if present) or bzImage.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_mem")]
    pub mem_mib: u64,
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    #[serde(default)]
    pub net: Vec<NetConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices, each served by a vhost-user backend (virtiofsd).
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    #[serde(default)]
    pub serial: SerialConfig,
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    #[serde(default)]
    pub jail: Option<JailConfig>,
    /// Per-thread seccomp filters (on unless explicitly disabled).
    #[serde(default = "yes")]
    pub seccomp: bool,
    /// How long a graceful shutdown may take before it is forced.
    #[serde(default = "default_graceful_ms")]
    pub graceful_shutdown_ms: u64,
    /// Raw machine code instead of a kernel (VMM tests and benchmarks).
    #[serde(default)]
    pub raw_image: Option<RawImageConfig>,
    /// Which CPU features the guest is offered (see [`CpuFeatures`]).
    #[serde(default)]
    pub cpu_features: CpuFeatures,
}

/// The CPU features a guest sees in CPUID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuFeatures {
    /// What KVM supports, minus what the VMM does not emulate.
    #[default]
    Host,
    /// Also without the instructions PVM's emulator cannot run (CMPXCHG16B, XSAVE and
    /// what depends on it). Under PVM a guest that is not PVM-aware runs under that
    /// emulator: with these hidden (and `noxsave` on the kernel command line) Linux gets
    /// through early boot instead of stopping at once. Diagnostics only: it still cannot
    /// reach userspace there.
    PvmEmulator,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub tap: String,
    #[serde(default)]
    pub mac: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// Mount tag the guest uses (`mount -t virtiofs <tag> /mnt`), 1..=36 bytes.
    pub tag: String,
    /// The backend's vhost-user socket (virtiofsd `--socket-path`). The VMM
    /// connects before entering its jail; with a chroot jail the socket
    /// must still be inside the chroot, as vsock's `uds_path` must.
    pub socket: PathBuf,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialConfig {
    /// Guest console discarded.
    #[default]
    None,
    /// Guest console to the VMM's stdout (a pipe when spawned by the engine).
    Stdout,
    /// Guest console appended to a file.
    File(PathBuf),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// chroot here once every host resource is open.
    #[serde(default)]
    pub chroot: Option<PathBuf>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImageConfig {
    pub path: PathBuf,
    pub load_addr: u64,
    pub mode: RawMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawMode {
    Real,
    Protected,
    Long,
}

impl From<RawMode> for BootMode {
    fn from(m: RawMode) -> Self {
        match m {
            RawMode::Real => BootMode::Real,
            RawMode::Protected => BootMode::Protected,
            RawMode::Long => BootMode::Long,
        }
    }
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}
fn default_vcpus() -> u8 {
    1
}
fn default_mem() -> u64 {
    128
}
fn yes() -> bool {
    true
}
fn default_graceful_ms() -> u64 {
    3000
}

impl Default for VmConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

impl VmConfig {
    pub fn from_json(s: &str) -> Result<Self> {
        let c: VmConfig = serde_json::from_str(s).map_err(|e| Error::Config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        match (&self.kernel, &self.raw_image) {
            (None, None) => return Err(Error::Config("no kernel given".into())),
            (Some(_), Some(_)) => {
                return Err(Error::Config("kernel and raw_image are exclusive".into()))
            }
            _ => {}
        }
        if self.vcpus == 0 || self.vcpus > crate::arch::mptable::MAX_SUPPORTED_CPUS {
            return Err(Error::Config(format!(
                "vcpus must be 1..=32, got {}",
                self.vcpus
            )));
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid <= 2 || v.guest_cid >= u64::from(u32::MAX) {
                return Err(Error::Config(format!(
                    "invalid vsock guest_cid {}",
                    v.guest_cid
                )));
            }
        }
        let mut tags = std::collections::HashSet::new();
        for f in &self.fs {
            let max = crate::devices::virtio::fs::MAX_TAG_LEN;
            if f.tag.is_empty() || f.tag.len() > max {
                return Err(Error::Config(format!(
                    "fs tag {:?} must be 1..={max} bytes",
                    f.tag
                )));
            }
            if !tags.insert(f.tag.as_str()) {
                return Err(Error::Config(format!("fs tag {:?} is used twice", f.tag)));
            }
        }
        for n in &self.net {
            if let Some(m) = &n.mac {
                crate::devices::virtio::net::parse_mac(m)?;
            }
        }
        if let Some(root) = self.jail.as_ref().and_then(|j| j.chroot.as_ref()) {
            if let Some(v) = &self.vsock {
                if !v.uds_path.starts_with(root) {
                    return Err(Error::Config(
                        "with a chroot jail, vsock.uds_path must be inside the chroot".into(),
                    ));
                }
            }
            if let Some(f) = self.fs.iter().find(|f| !f.socket.starts_with(root)) {
                return Err(Error::Config(format!(
                    "with a chroot jail, fs socket {} must be inside the chroot",
                    f.socket.display()
                )));
            }
        }
        Ok(())
    }

    /// Parses `berth-vmm` flags (see `usage()`).
    pub fn from_args(args: &[String]) -> Result<Self> {
        let mut c = VmConfig::default();
        let mut it = args.iter();
        let bad = |m: String| Error::Config(m);
        while let Some(a) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| bad(format!("{a} needs a value")))
            };
            match a.as_str() {
                "--config" => {
                    let p = val()?;
                    let s = std::fs::read_to_string(&p)
                        .map_err(|e| bad(format!("reading {p}: {e}")))?;
                    c = serde_json::from_str(&s).map_err(|e| bad(format!("{p}: {e}")))?;
                }
                "--kernel" => c.kernel = Some(val()?.into()),
                "--initrd" => c.initrd = Some(val()?.into()),
                "--cmdline" => c.cmdline = val()?,
                "--vcpus" => c.vcpus = val()?.parse().map_err(|e| bad(format!("--vcpus: {e}")))?,
                "--mem-mib" => {
                    c.mem_mib = val()?.parse().map_err(|e| bad(format!("--mem-mib: {e}")))?
                }
                "--drive" => {
                    let v = val()?;
                    let (path, ro) = match v.strip_suffix(",ro") {
                        Some(p) => (p.to_string(), true),
                        None => (v, false),
                    };
                    c.drives.push(DriveConfig {
                        path: path.into(),
                        read_only: ro,
                    });
                }
                "--net" => {
                    let v = val()?;
                    let mut p = v.splitn(2, ',');
                    let tap = p.next().unwrap_or_default().to_string();
                    let mac = p.next().map(str::to_string);
                    c.net.push(NetConfig { tap, mac });
                }
                "--vsock" => {
                    let v = val()?;
                    let (cid, path) = v
                        .split_once(',')
                        .ok_or_else(|| bad("--vsock CID,UDS_PATH".into()))?;
                    c.vsock = Some(VsockConfig {
                        guest_cid: cid.parse().map_err(|e| bad(format!("--vsock cid: {e}")))?,
                        uds_path: path.into(),
                    });
                }
                "--fs" => {
                    let v = val()?;
                    let (tag, socket) = v
                        .split_once(',')
                        .ok_or_else(|| bad("--fs TAG,SOCKET".into()))?;
                    c.fs.push(FsConfig {
                        tag: tag.into(),
                        socket: socket.into(),
                    });
                }
                "--serial" => {
                    let v = val()?;
                    c.serial = match v.as_str() {
                        "none" => SerialConfig::None,
                        "stdout" => SerialConfig::Stdout,
                        f => SerialConfig::File(f.strip_prefix("file:").unwrap_or(f).into()),
                    };
                }
                "--control-socket" => c.control_socket = Some(val()?.into()),
                "--no-seccomp" => c.seccomp = false,
                "--chroot" => {
                    c.jail.get_or_insert_with(Default::default).chroot = Some(val()?.into())
                }
                "--uid" => {
                    c.jail.get_or_insert_with(Default::default).uid =
                        Some(val()?.parse().map_err(|e| bad(format!("--uid: {e}")))?)
                }
                "--gid" => {
                    c.jail.get_or_insert_with(Default::default).gid =
                        Some(val()?.parse().map_err(|e| bad(format!("--gid: {e}")))?)
                }
                other => return Err(bad(format!("unknown argument {other:?}\n{}", usage()))),
            }
        }
        c.validate()?;
        Ok(c)
    }
}

pub fn usage() -> &'static str {
    "usage: berth-vmm --config FILE.json
       berth-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--vcpus N] [--mem-mib N]
                 [--drive PATH[,ro]]... [--net TAP[,MAC]]... [--vsock CID,UDS_PATH]
                 [--fs TAG,VHOST_USER_SOCKET]...
                 [--serial none|stdout|file:PATH] [--control-socket PATH]
                 [--chroot DIR] [--uid N] [--gid N] [--no-seccomp]"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_config() {
        let c = VmConfig::from_json(
            r#"{"kernel":"/k","initrd":"/i","vcpus":2,"mem_mib":256,
                "drives":[{"path":"/d","read_only":true}],
                "net":[{"tap":"tap0","mac":"02:00:00:00:00:01"}],
                "vsock":{"guest_cid":3,"uds_path":"/run/v.sock"},
                "fs":[{"tag":"vol0","socket":"/run/vol0.sock"}],
                "serial":{"file":"/tmp/console"},"control_socket":"/run/c.sock"}"#,
        )
        .unwrap();
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.fs[0].tag, "vol0");
        assert_eq!(c.serial, SerialConfig::File("/tmp/console".into()));
        assert!(c.drives[0].read_only);
        assert!(c.seccomp);
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        let none = VmConfig::from_json(r#"{"kernel":"/k","serial":"none"}"#).unwrap();
        assert_eq!(none.serial, SerialConfig::None);
        assert_eq!(none.mem_mib, 128);
    }

    #[test]
    fn invalid_configs() {
        for bad in [
            r#"{}"#,
            r#"{"kernel":"/k","vcpus":0}"#,
            r#"{"kernel":"/k","vsock":{"guest_cid":2,"uds_path":"/x"}}"#,
            r#"{"kernel":"/k","net":[{"tap":"t","mac":"zz"}]}"#,
            r#"{"kernel":"/k","bogus":1}"#,
            r#"{"kernel":"/k","jail":{"chroot":"/j"},"vsock":{"guest_cid":3,"uds_path":"/x"}}"#,
            r#"{"kernel":"/k","fs":[{"tag":"","socket":"/s"}]}"#,
            r#"{"kernel":"/k","fs":[{"tag":"0123456789012345678901234567890123456","socket":"/s"}]}"#,
            r#"{"kernel":"/k","fs":[{"tag":"a","socket":"/s"},{"tag":"a","socket":"/t"}]}"#,
            r#"{"kernel":"/k","fs":[{"tag":"a"}]}"#,
            r#"{"kernel":"/k","jail":{"chroot":"/j"},"fs":[{"tag":"a","socket":"/x/s"}]}"#,
        ] {
            let e = VmConfig::from_json(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
    }

    #[test]
    fn flags() {
        let args: Vec<String> = "--kernel /k --vcpus 2 --drive /d,ro --drive /e --net tap0,02:00:00:00:00:09 --vsock 5,/v --fs share,/run/fs.sock --serial file:/s --uid 1000"
            .split(' ')
            .map(String::from)
            .collect();
        let c = VmConfig::from_args(&args).unwrap();
        assert_eq!(c.drives.len(), 2);
        assert!(c.drives[0].read_only && !c.drives[1].read_only);
        assert_eq!(c.net[0].mac.as_deref(), Some("02:00:00:00:00:09"));
        assert_eq!(c.vsock.unwrap().guest_cid, 5);
        assert_eq!(
            c.fs,
            vec![FsConfig {
                tag: "share".into(),
                socket: "/run/fs.sock".into()
            }]
        );
        assert_eq!(c.serial, SerialConfig::File("/s".into()));
        assert_eq!(c.jail.unwrap().uid, Some(1000));
        assert!(VmConfig::from_args(&["--wat".to_string()]).is_err());
    }
}
