//! Isolation backends: where a container's agent runs and how its rootfs is prepared.
//! Process isolation spawns a detached `berth-agent` on the host; microVM isolation
//! (berth-vmm + guest kernel + vsock) plugs in here next to it.

use std::path::Path;

use berth_agent_protocol::client::{
    agent_socket_path, spawn_process_agent, AgentClient, SpawnOpts,
};
use berth_agent_protocol::Rootfs;

use super::record::{ContainerRecord, Isolation};
use super::Containers;
use crate::{Error, Result};

/// Can this kernel mount overlayfs with upper/work dirs on the data root's filesystem?
/// Probed once at start-up; the answer picks the storage driver (`docker info`).
pub fn overlay_supported(data_root: &Path) -> bool {
    let probe = data_root
        .join("tmp")
        .join(format!("overlay-probe-{}", std::process::id()));
    let dirs = ["l", "u", "w", "m"].map(|d| probe.join(d));
    let ok = (|| -> std::io::Result<bool> {
        for d in &dirs {
            std::fs::create_dir_all(d)?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            dirs[0].display(),
            dirs[1].display(),
            dirs[2].display()
        );
        let src = std::ffi::CString::new("overlay").unwrap();
        let target = std::ffi::CString::new(dirs[3].as_os_str().as_encoded_bytes()).unwrap();
        let data = std::ffi::CString::new(opts).unwrap();
        // SAFETY: plain mount(2)/umount2(2) with valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                data.as_ptr() as *const _,
            )
        };
        if rc != 0 {
            return Ok(false);
        }
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        Ok(true)
    })()
    .unwrap_or(false);
    let _ = std::fs::remove_dir_all(&probe);
    ok
}

/// Why microVM isolation cannot be used on this host, or `None` when it can.
pub fn microvm_unavailable_reason() -> Option<String> {
    if !Path::new("/dev/kvm").exists() {
        return Some("/dev/kvm is not available".into());
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some("KVM is PVM (software nested virtualization): guest kernels run under instruction emulation".into());
    }
    Some("microVM isolation is not wired to the engine yet (berth-vmm and the guest kernel are built separately)".into())
}

/// Parse Docker's `HostConfig.Isolation` value into ours.
pub fn parse_isolation(
    v: &str,
    default: Isolation,
    microvm_unavailable: Option<&str>,
) -> Result<Isolation> {
    let iso = match v {
        "" | "default" => default,
        "process" => Isolation::Process,
        "microvm" | "vm" | "hyperv" => Isolation::Microvm,
        other => {
            return Err(Error::invalid(format!(
                "invalid isolation '{other}': berth supports 'default', 'process' and 'microvm'"
            )))
        }
    };
    if iso == Isolation::Microvm {
        if let Some(why) = microvm_unavailable {
            return Err(Error::invalid(format!(
                "microvm isolation is unavailable on this host: {why}"
            )));
        }
    }
    Ok(iso)
}

impl Containers {
    /// The rootfs the agent should assemble for this container.
    pub(crate) fn rootfs_for(&self, rec: &ContainerRecord) -> Result<Rootfs> {
        let dir = self.container_dir(&rec.id);
        if rec.storage == "overlay" {
            let lower = self.images.layer_dirs(&rec.image_id)?;
            if lower.is_empty() {
                // overlayfs needs at least one lower dir: an empty one stands in.
                let empty = dir.join("empty-lower");
                std::fs::create_dir_all(&empty)?;
                return Ok(Rootfs::Overlay {
                    lower: vec![empty],
                    upper: dir.join("upper"),
                    work: dir.join("work"),
                });
            }
            Ok(Rootfs::Overlay {
                lower,
                upper: dir.join("upper"),
                work: dir.join("work"),
            })
        } else {
            Ok(Rootfs::Dir {
                path: dir.join("rootfs"),
            })
        }
    }

    /// Start the agent for a new run and connect to it.
    pub(crate) async fn spawn_agent(&self, rec: &ContainerRecord) -> Result<(AgentClient, u32)> {
        match rec.isolation {
            Isolation::Process => {
                let run_dir = self.run_dir(&rec.id);
                // A leftover socket from a previous run would confuse the launcher.
                let _ = std::fs::remove_file(agent_socket_path(&run_dir));
                let opts = SpawnOpts::new(&self.paths.agent_bin, &run_dir, &rec.id);
                spawn_process_agent(&opts)
                    .await
                    .map_err(|e| Error::internal(format!("starting the container's agent: {e}")))
            }
            Isolation::Microvm => Err(Error::invalid(format!(
                "microvm isolation is unavailable: {}",
                self.microvm_unavailable.clone().unwrap_or_default()
            ))),
        }
    }

    /// Reconnect to a live agent after a daemon restart.
    pub(crate) async fn reconnect_agent(&self, rec: &ContainerRecord) -> Option<AgentClient> {
        let sock = agent_socket_path(&self.run_dir(&rec.id));
        if !sock.exists() {
            return None;
        }
        match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            AgentClient::connect_unix(&sock),
        )
        .await
        {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                tracing::warn!(id = %rec.id, "agent reconnect failed: {e}");
                None
            }
            Err(_) => None,
        }
    }
}

/// Find the agent binary: `$BERTH_AGENT`, next to the running executable, or on PATH.
pub fn default_agent_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("BERTH_AGENT") {
        return p.into();
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let cand = dir.join("berth-agent");
            if cand.exists() {
                return cand;
            }
            // Integration tests run from target/debug/deps.
            if let Some(parent) = dir.parent() {
                let cand = parent.join("berth-agent");
                if cand.exists() {
                    return cand;
                }
            }
        }
    }
    std::path::PathBuf::from("berth-agent")
}

/// After a process-isolation run ends, make sure its cgroups are gone even if the
/// agent died before it could remove them: kill stragglers, then rmdir (the agent
/// normally did both already, and then this only stats a few absent paths).
pub(crate) fn release_process_cgroups(rec: &ContainerRecord) {
    let parent = rec
        .host_config
        .cgroup_parent
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "berth".into());
    let parent = parent.trim_matches('/').to_string();
    let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    for r in roots.flatten() {
        dirs.push(r.path().join(&parent).join(&rec.id));
    }
    // cgroup v2 (unified at the root).
    dirs.push(Path::new("/sys/fs/cgroup").join(&parent).join(&rec.id));
    for d in dirs.iter().filter(|d| d.is_dir()) {
        for attempt in 0..50 {
            if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill(2) on a pid listed in the container's own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            // A frozen cgroup must be thawed for SIGKILL to take effect.
            let _ = std::fs::write(d.join("freezer.state"), "THAWED");
            let _ = std::fs::write(d.join("cgroup.freeze"), "0");
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if attempt == 49 => {
                    tracing::warn!(cgroup = %d.display(), "cannot remove cgroup: {e}")
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }
}
