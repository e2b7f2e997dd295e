//! Process isolation: a detached `berth-agent` on the host per container, in fresh
//! namespaces with host cgroups; the rootfs is an overlay of the image's layer dirs (or a
//! flattened copy where overlayfs is unavailable).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use berth_agent_protocol::client::{
    agent_socket_path, spawn_process_agent, AgentClient, SpawnOpts,
};
use berth_agent_protocol::Rootfs;

use super::{Capabilities, GuestNetwork, IsolationBackend, Sandbox};
use crate::containers::record::{ContainerDirs, ContainerRecord, Isolation};
use crate::images::ImageStore;
use crate::{Error, Result};

pub struct ProcessIsolation {
    dirs: ContainerDirs,
    agent_bin: PathBuf,
    /// `None` when the caller brings each container's rootfs itself (the containerd shim:
    /// containerd's snapshotter prepared it), so `prepare_storage`/`rootfs` are not used.
    images: Option<Arc<ImageStore>>,
    /// `overlay` or `copy`.
    storage_driver: &'static str,
}

impl ProcessIsolation {
    pub fn new(
        dirs: ContainerDirs,
        agent_bin: PathBuf,
        images: Arc<ImageStore>,
        storage_driver: &'static str,
    ) -> Self {
        ProcessIsolation {
            dirs,
            agent_bin,
            images: Some(images),
            storage_driver,
        }
    }

    /// A backend that only starts, reconnects and releases agents: the rootfs of each
    /// container comes from elsewhere (e.g. containerd's snapshotter mounts).
    pub fn for_prepared_rootfs(dirs: ContainerDirs, agent_bin: PathBuf) -> Self {
        ProcessIsolation {
            dirs,
            agent_bin,
            images: None,
            storage_driver: "prepared",
        }
    }

    fn images(&self) -> Result<&Arc<ImageStore>> {
        self.images
            .as_ref()
            .ok_or_else(|| Error::internal("this process backend has no image store"))
    }
}

#[async_trait]
impl IsolationBackend for ProcessIsolation {
    fn mode(&self) -> Isolation {
        Isolation::Process
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            host_file_access: true,
            block_volumes: false,
            host_namespaces: true,
            guest_nics: false,
            cgroup_v2: std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        }
    }

    fn unavailable_reason(&self) -> Option<String> {
        None
    }

    fn describe(&self) -> String {
        format!(
            "process: berth-agent on the host (namespaces, cgroups, seccomp), storage {}",
            self.storage_driver
        )
    }

    fn storage_name(&self) -> &'static str {
        self.storage_driver
    }

    async fn prepare_storage(&self, rec: &ContainerRecord) -> Result<()> {
        let dir = self.dirs.container_dir(&rec.id);
        if rec.storage == "overlay" {
            std::fs::create_dir_all(dir.join("upper"))?;
            std::fs::create_dir_all(dir.join("work"))?;
            Ok(())
        } else {
            let images = self.images()?.clone();
            let image_id = rec.image_id.clone();
            let dest = dir.join("rootfs");
            tokio::task::spawn_blocking(move || images.flatten_into(&image_id, &dest))
                .await
                .map_err(Error::internal)?
        }
    }

    fn rootfs(&self, rec: &ContainerRecord) -> Result<Rootfs> {
        let dir = self.dirs.container_dir(&rec.id);
        if rec.storage != "overlay" {
            return Ok(Rootfs::Dir {
                path: dir.join("rootfs"),
            });
        }
        let mut lower = self.images()?.layer_dirs(&rec.image_id)?;
        if lower.is_empty() {
            // overlayfs needs at least one lower dir: an empty one stands in.
            let empty = dir.join("empty-lower");
            std::fs::create_dir_all(&empty)?;
            lower.push(empty);
        }
        Ok(Rootfs::Overlay {
            lower,
            upper: dir.join("upper"),
            work: dir.join("work"),
        })
    }

    async fn start(&self, rec: &ContainerRecord, _net: &GuestNetwork) -> Result<Sandbox> {
        let run_dir = self.dirs.run_dir(&rec.id);
        // A leftover socket from a previous run would confuse the launcher.
        let _ = std::fs::remove_file(agent_socket_path(&run_dir));
        let opts = SpawnOpts::new(&self.agent_bin, &run_dir, &rec.id);
        let (agent, agent_pid) = spawn_process_agent(&opts)
            .await
            .map_err(|e| Error::internal(format!("starting the container's agent: {e}")))?;
        Ok(Sandbox {
            agent,
            agent_pid,
            host_pid_override: None,
        })
    }

    async fn reconnect(&self, rec: &ContainerRecord) -> Option<Sandbox> {
        let sock = agent_socket_path(&self.dirs.run_dir(&rec.id));
        if !sock.exists() {
            return None;
        }
        match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            AgentClient::connect_unix(&sock),
        )
        .await
        {
            Ok(Ok(agent)) => Some(Sandbox {
                agent_pid: agent.info().agent_pid,
                agent,
                host_pid_override: None,
            }),
            Ok(Err(e)) => {
                tracing::warn!(id = %rec.id, "agent reconnect failed: {e}");
                None
            }
            Err(_) => None,
        }
    }

    async fn failure_reason(&self, _rec: &ContainerRecord) -> Option<String> {
        None
    }

    async fn release(&self, rec: &ContainerRecord) {
        let rec = rec.clone();
        let _ = tokio::task::spawn_blocking(move || release_process_cgroups(&rec)).await;
    }
}

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

/// After a process-isolation run ends, make sure its cgroups are gone even if the
/// agent died before it could remove them: kill stragglers, then rmdir (the agent
/// normally did both already, and then this only stats a few absent paths).
fn release_process_cgroups(rec: &ContainerRecord) {
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
    let mut dirs: Vec<PathBuf> = Vec::new();
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
