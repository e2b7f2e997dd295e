//! virtio-fs backends for both hypervisors: one sandboxed `virtiofsd` per shared directory,
//! listening on a vhost-user socket in the VM's run dir that the VMM (qemu's
//! `vhost-user-fs-device`, or berth-vmm's virtio-fs device) connects to.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::hypervisor::{Device, VmConfig};
use super::probe::find_tool;
use super::procs::{self, spawn_detached};
use crate::{Error, Result};

/// Why a backend cannot share directories when virtiofsd is missing.
pub const MISSING: &str = "bind mounts and directory volumes in a microVM need virtiofsd (scripts/install-vm-tools.sh installs it, or set $BERTH_VIRTIOFSD)";

/// `$BERTH_VIRTIOFSD`, the copy `scripts/install-vm-tools.sh` installs, the distribution's,
/// then `virtiofsd` on PATH.
pub fn probe() -> Option<PathBuf> {
    find_tool(
        "BERTH_VIRTIOFSD",
        "virtiofsd",
        &[
            PathBuf::from("/var/cache/berth/tools/bin/virtiofsd"),
            PathBuf::from("/usr/libexec/virtiofsd"),
        ],
    )
}

/// The vhost-user socket of the share tagged `tag`.
pub fn socket_path(run_dir: &Path, tag: &str) -> PathBuf {
    run_dir.join(format!("{tag}.sock"))
}

/// One `virtiofsd` per shared directory, each in its own mount, pid and network
/// namespaces with only that directory as its root (`--sandbox namespace`), seccomp
/// killing any syscall outside its list, and `--readonly` for read-only shares: a
/// read-only bind stays read-only whatever the guest kernel does. One daemon per share
/// rather than one per VM over a combined tree: each sandbox then holds exactly one host
/// directory, read-only is per daemon, and there is no host-side mount tree to build
/// and to leak when berthd or the VMM is killed. The cost is one process per share.
/// Started daemons are pushed on `helpers` (also on error, for the caller to kill).
/// Returns the vhost-user sockets in device order, once each is listening.
pub async fn start_virtiofsds(
    bin: Option<&Path>,
    cfg: &VmConfig,
    helpers: &mut Vec<procs::VmProcess>,
) -> Result<Vec<PathBuf>> {
    let mut socks = Vec::new();
    for dev in &cfg.devices {
        let Device::Fs {
            tag,
            shared_dir,
            read_only,
        } = dev
        else {
            continue;
        };
        let bin = bin.ok_or_else(|| Error::invalid("virtiofsd is not installed"))?;
        let sock = socket_path(&cfg.run_dir, tag);
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .arg("--shared-dir")
            .arg(shared_dir)
            .arg("--socket-path")
            .arg(&sock)
            .args(["--sandbox", "namespace", "--seccomp", "kill"])
            .args(["--cache", "auto", "--inode-file-handles=never"])
            .args(["--log-level", "warn"]);
        if *read_only {
            cmd.arg("--readonly");
        }
        let log = cfg.run_dir.join(format!("virtiofsd-{tag}.log"));
        // Root inside its own namespaces: it must serve files of any owner, as a bind
        // mount does, but sees nothing of the host beyond `shared_dir`.
        let p = spawn_detached("virtiofsd", cmd, &log, &cfg.run_dir, None, &cfg.cgroups)?;
        helpers.push(p.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if !p.alive() || tokio::time::Instant::now() > deadline {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(Error::internal(format!(
                    "virtiofsd for {} did not start: {}",
                    shared_dir.display(),
                    text.trim()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        socks.push(sock);
    }
    Ok(socks)
}
