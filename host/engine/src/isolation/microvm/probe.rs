//! What this host offers for microVMs: which kind of KVM, and where the tools are.

use std::path::{Path, PathBuf};

use super::super::{find_next_to_exe, find_on_path};

/// The KVM this host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kvm {
    /// VT-x / AMD-V: full guests run at native speed.
    Hardware,
    /// PVM (`kvm_pvm`): a guest that is not PVM-aware runs under KVM's instruction
    /// emulator, which cannot boot Linux to userspace.
    Pvm,
    /// No usable hardware KVM, and why.
    Unusable(String),
}

impl Kvm {
    pub fn probe() -> Kvm {
        if !Path::new("/dev/kvm").exists() {
            return Kvm::Unusable("/dev/kvm is not available".into());
        }
        if Path::new("/sys/module/kvm_pvm").exists() {
            return Kvm::Pvm;
        }
        if Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists()
        {
            return Kvm::Hardware;
        }
        Kvm::Unusable("KVM has neither kvm_intel nor kvm_amd loaded".into())
    }

    pub fn is_hardware(&self) -> bool {
        *self == Kvm::Hardware
    }

    /// Why full guests cannot run on this KVM, if they cannot.
    pub fn unusable_reason(&self) -> Option<String> {
        match self {
            Kvm::Hardware => None,
            Kvm::Pvm => Some(
                "KVM is PVM (/sys/module/kvm_pvm present): guest kernels run under instruction emulation and cannot boot"
                    .into(),
            ),
            Kvm::Unusable(why) => Some(why.clone()),
        }
    }
}

/// `$env`, then each candidate path, then `name` on PATH.
pub fn find_tool(env: &str, name: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(p.into());
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .or_else(|| find_next_to_exe(name))
        .or_else(|| find_on_path(name))
}

/// The guest kernel: `$BERTH_GUEST_KERNEL`, else the newest build in the guest-kernel cache
/// (`guest-kernel/build.sh` writes `<cache>/out/<key>/vmlinux` plus `build-info`).
pub fn find_guest_kernel() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_GUEST_KERNEL") {
        return Some(p.into());
    }
    let cache = std::env::var_os("BERTH_GUEST_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth/guest-kernel"));
    let mut builds: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(cache.join("out"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let info = e.path().join("build-info");
            let vmlinux = e.path().join("vmlinux");
            let t = std::fs::metadata(&info).ok()?.modified().ok()?;
            vmlinux.is_file().then_some((t, vmlinux))
        })
        .collect();
    builds.sort();
    builds.pop().map(|(_, p)| p)
}

/// The kernel's release (`6.1.192`), from the `Linux version ...` banner in the image.
pub fn kernel_version(vmlinux: &Path) -> Option<String> {
    let bytes = std::fs::read(vmlinux).ok()?;
    let tag = b"Linux version ";
    let at = bytes.windows(tag.len()).position(|w| w == tag)? + tag.len();
    let end = bytes[at..]
        .iter()
        .position(|b| *b == 0 || b.is_ascii_whitespace())?;
    Some(String::from_utf8_lossy(&bytes[at..at + end.min(64)]).into_owned())
}
