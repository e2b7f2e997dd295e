//! Where the shim's containers run: the engine's isolation backends, built without an
//! engine (no image store: containerd's snapshotter prepared the rootfs), and the
//! per-container state they need (a key, a record, a run dir).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use berth_agent_protocol::client::AgentClient;
use berth_agent_protocol::Rootfs;
use berth_engine::containers::record::{ContainerDirs, ContainerRecord, Isolation};
use berth_engine::isolation::microvm::{pod, MicrovmConfig, MicrovmIsolation};
use berth_engine::isolation::process::ProcessIsolation;
use berth_engine::isolation::{default_agent_bin, IsolationBackend};
use sha2::{Digest, Sha256};

use crate::error::{Result, ShimError};
use crate::oci::CGROUP_PARENT;
use crate::pod::MemberMounts;
use crate::rootfs::{self, SnapshotMount};

/// `$BERTH_SHIM_STATE` overrides it (tests run their own).
const DEFAULT_STATE: &str = "/run/berth-shim";

pub struct Backends {
    dirs: ContainerDirs,
    process: Arc<dyn IsolationBackend>,
    /// Built on first use: probing reads the guest kernel, which process-mode containers
    /// should not pay for. `Err` says why microVMs cannot be built here (e.g. an unknown
    /// `$BERTH_SHIM_VMM`).
    microvm: OnceLock<std::result::Result<Arc<MicrovmIsolation>, String>>,
}

/// A container's backend, record and rootfs, ready for `Container::create`.
pub struct Prepared {
    pub backend: Arc<dyn IsolationBackend>,
    pub rec: ContainerRecord,
    pub rootfs: Rootfs,
    pub launch: Launch,
    /// Host mounts the container holds until it is deleted (a pod member's).
    pub held_mounts: Option<MemberMounts>,
}

/// How a container's agent starts.
pub enum Launch {
    /// An agent (process) or a microVM of its own.
    Own,
    /// The sandbox container of a microVM pod: its VM will also run the pod's members.
    PodSandbox(Arc<MicrovmIsolation>),
    /// Another container of a microVM pod: an agent in the sandbox's VM.
    PodMember(PodMember),
}

pub struct PodMember {
    pub vm: Arc<MicrovmIsolation>,
    pub host: PodHost,
}

/// What a member needs of its pod's sandbox container.
pub struct PodHost {
    pub sandbox_key: String,
    /// The agent serving the sandbox: the VM's first agent, which starts members.
    pub sandbox_agent: AgentClient,
    /// The vsock port for the member's agent.
    pub port: u32,
    /// The sandbox's main process in the guest, whose network and IPC namespaces the
    /// pod's containers share.
    pub init_pid: u32,
}

/// A container's key: hex digest of its namespace and id. Names its run dir and cgroup,
/// so containers of different namespaces never collide and paths stay short.
pub fn key(namespace: &str, id: &str) -> String {
    hex::encode(Sha256::digest(format!("{namespace}/{id}").as_bytes()))
}

impl Backends {
    pub fn from_env() -> Self {
        let state = std::env::var_os("BERTH_SHIM_STATE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE));
        let dirs = ContainerDirs {
            data_root: state.join("data"),
            exec_root: state.clone(),
        };
        let process = Arc::new(ProcessIsolation::for_prepared_rootfs(
            dirs.clone(),
            default_agent_bin(),
        ));
        Backends {
            dirs,
            process,
            microvm: OnceLock::new(),
        }
    }

    fn microvm(&self) -> std::result::Result<&Arc<MicrovmIsolation>, &String> {
        self.microvm
            .get_or_init(|| {
                // qemu (TCG or KVM) or berth-vmm, probed as berthd does unless
                // `$BERTH_SHIM_VMM` says which.
                let cfg = MicrovmConfig {
                    vmm: std::env::var("BERTH_SHIM_VMM")
                        .ok()
                        .filter(|v| !v.is_empty()),
                    kernel: None,
                    vmm_on_pvm: false,
                };
                MicrovmIsolation::for_prepared_rootfs(self.dirs.clone(), default_agent_bin(), &cfg)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
    }

    /// The agent's exec dir for this container.
    pub fn run_dir(&self, key: &str) -> PathBuf {
        self.dirs.run_dir(key)
    }

    fn record(key: &str, isolation: Isolation) -> ContainerRecord {
        let mut rec = ContainerRecord {
            id: key.to_string(),
            isolation,
            ..Default::default()
        };
        rec.host_config.cgroup_parent = Some(CGROUP_PARENT.into());
        rec
    }

    /// Prepares a container with a backend of its own; `pod_sandbox`: it is the sandbox
    /// of a pod (whose members then share its microVM, in microVM isolation).
    pub async fn prepare(
        &self,
        mode: &str,
        key: &str,
        mounts: &[SnapshotMount],
        bundle: &Path,
        pod_sandbox: bool,
    ) -> Result<Prepared> {
        match mode {
            "process" | "" => Ok(Prepared {
                backend: self.process.clone(),
                rec: Self::record(key, Isolation::Process),
                rootfs: rootfs::from_mounts(mounts, bundle)
                    .map_err(|e| ShimError::Invalid(e.to_string()))?,
                launch: Launch::Own,
                held_mounts: None,
            }),
            "microvm" => {
                let vm = self.available_microvm()?;
                let rec = Self::record(key, Isolation::Microvm);
                let target = bundle.join("rootfs");
                let merged = rootfs::MergedView::mount(mounts, bundle, &target)
                    .await
                    .map_err(|e| ShimError::Internal(format!("mounting the rootfs: {e}")))?;
                let built = vm.prepare_from_dir(key, merged.path().to_path_buf()).await;
                merged.unmount();
                built.map_err(|e| ShimError::Internal(format!("building the VM disks: {e}")))?;
                let backend: Arc<dyn IsolationBackend> = vm.clone();
                Ok(Prepared {
                    rootfs: backend.rootfs(&rec).map_err(ShimError::internal)?,
                    backend,
                    rec,
                    launch: if pod_sandbox {
                        Launch::PodSandbox(vm.clone())
                    } else {
                        Launch::Own
                    },
                    held_mounts: None,
                })
            }
            other => Err(ShimError::Invalid(format!(
                "{}={other:?}: berth's shim supports process and microvm",
                crate::oci::ISOLATION_ANNOTATION
            ))),
        }
    }

    /// Prepares a member of the microVM pod `host` describes: its rootfs is mounted under
    /// the pod VM's share (no disk of its own is built), its agent will run in that VM.
    pub async fn prepare_pod_member(
        &self,
        key: &str,
        mounts: &[SnapshotMount],
        bundle: &Path,
        host: PodHost,
    ) -> Result<Prepared> {
        let vm = self.available_microvm()?;
        let dir = pod::member_dir(&self.dirs, &host.sandbox_key, key);
        let held = MemberMounts::mount_rootfs(mounts, bundle, dir)
            .await
            .map_err(|e| ShimError::Internal(format!("mounting the rootfs in the pod: {e}")))?;
        Ok(Prepared {
            backend: vm.clone(),
            rec: Self::record(key, Isolation::Microvm),
            rootfs: pod::member_rootfs(key),
            launch: Launch::PodMember(PodMember {
                vm: vm.clone(),
                host,
            }),
            held_mounts: Some(held),
        })
    }

    fn available_microvm(&self) -> Result<&Arc<MicrovmIsolation>> {
        let vm = self.microvm().map_err(|e| ShimError::Invalid(e.clone()))?;
        if let Some(why) = vm.unavailable_reason() {
            return Err(ShimError::Invalid(format!(
                "microvm isolation is unavailable on this host: {why}"
            )));
        }
        Ok(vm)
    }

    /// Remove what `prepare` left on disk for the container (the microVM's disks).
    pub fn remove_storage(&self, key: &str) {
        // A pod VM's share holds its members' root filesystems: detached first, so the
        // removal below can never reach into a member's snapshot.
        pod::detach_pod_dir(&self.dirs, key);
        let _ = std::fs::remove_dir_all(self.dirs.container_dir(key));
    }

    /// After the shim died (containerd's `delete` action): stop whatever the container's
    /// run left (agent, cgroups, run dir).
    pub async fn cleanup(&self, key: &str, cgroup: (String, String)) {
        let mut backends: Vec<(Arc<dyn IsolationBackend>, Isolation)> =
            vec![(self.process.clone(), Isolation::Process)];
        // Only a microVM container has VM state to clean up (and needs the probing).
        if self.dirs.container_dir(key).exists() {
            if let Ok(vm) = self.microvm() {
                backends.push((vm.clone(), Isolation::Microvm));
            }
        }
        for (backend, mode) in backends {
            let rec = Self::record(key, mode);
            if let Some(sb) = backend.reconnect(&rec).await {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(10), sb.agent.shutdown())
                        .await;
            }
            backend.release(&rec).await;
        }
        let _ = berth_agent_protocol::client::remove_orphaned_cgroups(&cgroup.0, &cgroup.1).await;
        let _ = std::fs::remove_dir_all(self.run_dir(key));
        self.remove_storage(key);
    }
}
