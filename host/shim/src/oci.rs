//! An OCI runtime spec (containerd's `config.json`, an exec's process) in the terms the
//! berth agent applies: [`ContainerSpec`], [`ProcessSpec`], [`Resources`].
//!
//! The agent sets up the standard filesystems (/proc, /dev, /dev/pts, /dev/shm, /sys, ...)
//! itself, so only the spec's bind and extra tmpfs mounts are carried over.

use std::path::Path;

use berth_agent_protocol::{
    CgroupNamespace, ContainerSpec, Mount, MountKind, NetworkSpec, ProcessSpec, Resources, Rootfs,
    SeccompMode, SecuritySpec,
};
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process, Spec};

/// The annotation that picks the isolation mode of a container (`process` or `microvm`).
pub const ISOLATION_ANNOTATION: &str = "io.berth.isolation";

/// The CRI annotations that place a container in a pod: its kind (`sandbox` for the pod's
/// pause container, `container` for the others) and its pod's sandbox id.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// Where the agent's cgroups of shim containers live (under each hierarchy's root).
pub const CGROUP_PARENT: &str = "berth-shim";

/// Destinations the agent always mounts itself: the spec's entries for them are skipped.
const STANDARD_DESTINATIONS: &[&str] = &[
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/sys",
    "/sys/fs/cgroup",
];

pub fn load(bundle: &Path) -> anyhow::Result<Spec> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The isolation mode the spec asks for (the annotation), `process` by default.
pub fn isolation(spec: &Spec) -> String {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(ISOLATION_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| "process".into())
}

/// A container's place in a pod, from the CRI annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRole {
    /// No pod (plain `ctr run`).
    Alone,
    /// The pod's sandbox (pause) container: in microVM isolation it boots the pod's VM.
    Sandbox,
    /// Another container of the pod whose sandbox container has this id.
    Member { sandbox_id: String },
}

pub fn pod_role(spec: &Spec, id: &str) -> PodRole {
    let ann = spec.annotations().as_ref();
    let get = |k: &str| ann.and_then(|a| a.get(k)).map(String::as_str);
    match (get(CRI_CONTAINER_TYPE), get(CRI_SANDBOX_ID)) {
        (Some("sandbox"), _) => PodRole::Sandbox,
        (Some("container"), Some(sb)) if sb != id => PodRole::Member {
            sandbox_id: sb.to_string(),
        },
        _ => PodRole::Alone,
    }
}

/// The container's cgroup as (parent, name): the spec's `cgroupsPath` when it is a cgroupfs
/// path (`/<namespace>/<id>` from containerd, `/kubepods/.../<id>` from the kubelet's
/// cgroupfs driver), else `berth-shim/<key>` (systemd-style `slice:prefix:name` paths are
/// not supported yet).
pub fn cgroup_path(spec: &Spec, key: &str) -> (String, String) {
    let fallback = (CGROUP_PARENT.to_string(), key.to_string());
    let Some(path) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
    else {
        return fallback;
    };
    let path = path.to_string_lossy();
    if path.contains(':') {
        return fallback;
    }
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    match parts.split_last() {
        Some((leaf, parent)) if !parent.is_empty() => (parent.join("/"), leaf.to_string()),
        Some((leaf, _)) => (CGROUP_PARENT.to_string(), leaf.to_string()),
        None => fallback,
    }
}

/// The container's spec for the agent; `key` names its cgroup unless the spec does.
pub fn container_spec(
    spec: &Spec,
    key: &str,
    rootfs: Rootfs,
    open_stdin: bool,
) -> anyhow::Result<ContainerSpec> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("config.json has no process"))?;
    let linux = spec.linux().as_ref();
    let namespaces = linux.and_then(|l| l.namespaces().as_ref());
    let network = match namespaces
        .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network))
    {
        // No network namespace in the spec: the host's (`ctr run --net-host`).
        None => NetworkSpec::Host,
        Some(n) => match n.path() {
            Some(p) => NetworkSpec::Join { path: p.clone() },
            None => NetworkSpec::Isolated,
        },
    };
    let seccomp = match linux.and_then(|l| l.seccomp().as_ref()) {
        Some(_) => SeccompMode::Default,
        None => SeccompMode::Unconfined,
    };
    let (cgroup_parent, cgroup_name) = cgroup_path(spec, key);
    Ok(ContainerSpec {
        id: cgroup_name,
        rootfs,
        readonly_rootfs: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        process: process_spec(process, open_stdin),
        hostname: spec.hostname().clone().unwrap_or_default(),
        mounts: mounts(spec),
        network,
        security: security(spec, process, seccomp),
        resources: linux
            .and_then(|l| l.resources().as_ref())
            .map(resources)
            .unwrap_or_default(),
        cgroup_parent: Some(cgroup_parent),
        // A cgroup namespace in the spec (containerd's default on v2) is a private one.
        cgroupns: if namespaces
            .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup))
        {
            CgroupNamespace::Private
        } else {
            CgroupNamespace::Host
        },
        ..Default::default()
    })
}

/// A microVM container's namespaces are the guest's: a network namespace *path* in the
/// spec (CRI's pod netns) is a host path the guest cannot open, so the container gets a
/// namespace of its own in the VM (loopback only: CNI's interfaces are not carried into
/// the VM yet). A member of a microVM pod (`pod_init_pid`: the sandbox's main process in
/// the guest) shares the sandbox's network and IPC namespaces, as a pod's containers do.
pub fn place_in_vm(c: &mut ContainerSpec, pod_init_pid: Option<u32>) {
    match pod_init_pid {
        Some(pid) => {
            let ns = |kind: &str| std::path::PathBuf::from(format!("/proc/{pid}/ns/{kind}"));
            c.network = NetworkSpec::Join { path: ns("net") };
            c.join_namespaces.ipc = Some(ns("ipc"));
        }
        None => {
            if matches!(c.network, NetworkSpec::Join { .. }) {
                c.network = NetworkSpec::Isolated;
            }
        }
    }
}

/// The spec's capabilities as the agent's Docker-style options: everything dropped, then
/// exactly the bounding set added. `ctr run --privileged` (all capabilities, no masked
/// paths) maps to the agent's privileged mode (writable /sys, all devices).
fn security(spec: &Spec, process: &Process, seccomp: SeccompMode) -> SecuritySpec {
    let no_new_privileges = process.no_new_privileges().unwrap_or(false);
    let caps: Vec<String> = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().as_ref())
        .iter()
        .flat_map(|set| set.iter())
        .filter_map(|c| serde_json::to_value(c).ok()?.as_str().map(str::to_string))
        .map(|n| n.trim_start_matches("CAP_").to_string())
        .collect();
    let unmasked = spec
        .linux()
        .as_ref()
        .is_none_or(|l| l.masked_paths().as_ref().is_none_or(|m| m.is_empty()));
    if unmasked && caps.iter().any(|c| c == "SYS_ADMIN") {
        return SecuritySpec {
            privileged: true,
            seccomp: SeccompMode::Unconfined,
            no_new_privileges,
            ..Default::default()
        };
    }
    SecuritySpec {
        cap_drop: vec!["ALL".into()],
        cap_add: caps,
        seccomp,
        no_new_privileges,
        ..Default::default()
    }
}

/// The spec's process (the container's, or an exec's) for the agent.
pub fn process_spec(p: &Process, open_stdin: bool) -> ProcessSpec {
    let user = p.user();
    ProcessSpec {
        args: p.args().clone().unwrap_or_default(),
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().display().to_string(),
        user: format!("{}:{}", user.uid(), user.gid()),
        additional_groups: user
            .additional_gids()
            .iter()
            .flatten()
            .map(|g| g.to_string())
            .collect(),
        tty: p.terminal().unwrap_or(false),
        open_stdin,
        console_size: p
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16)),
    }
}

fn mounts(spec: &Spec) -> Vec<Mount> {
    let mut out = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination().display().to_string();
        if STANDARD_DESTINATIONS.contains(&dest.as_str()) {
            continue;
        }
        let options = m.options().clone().unwrap_or_default();
        let readonly = options.iter().any(|o| o == "ro");
        let is_bind = m.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        let kind = if is_bind {
            match m.source() {
                Some(src) => MountKind::Bind {
                    source: src.clone(),
                },
                None => continue,
            }
        } else if m.typ().as_deref() == Some("tmpfs") {
            let opts: Vec<&str> = options
                .iter()
                .map(String::as_str)
                .filter(|o| o.starts_with("size=") || o.starts_with("mode="))
                .collect();
            MountKind::Tmpfs {
                options: opts.join(","),
            }
        } else {
            // proc/sysfs/devpts/mqueue/cgroup elsewhere than the standard places: not
            // something the agent mounts; containerd's defaults never ask for it.
            tracing::warn!(destination = %dest, typ = ?m.typ(), "mount type not supported, skipped");
            continue;
        };
        out.push(Mount {
            kind,
            destination: dest,
            readonly,
            propagation: String::new(),
            volume: false,
        });
    }
    out
}

/// OCI `linux.resources` → the agent's limits (`ctr run --memory-limit`, `ctr task update`).
pub fn resources(r: &LinuxResources) -> Resources {
    let mut out = Resources::default();
    if let Some(m) = r.memory() {
        out.memory = m.limit().filter(|v| *v > 0);
        out.memory_swap = m.swap().filter(|v| *v != 0);
        out.memory_reservation = m.reservation().filter(|v| *v > 0);
    }
    if let Some(c) = r.cpu() {
        out.cpu_shares = c.shares().filter(|v| *v > 0);
        out.cpu_quota = c.quota().filter(|v| *v > 0);
        out.cpu_period = c.period().filter(|v| *v > 0);
        out.cpuset_cpus = c.cpus().clone().filter(|s| !s.is_empty());
        out.cpuset_mems = c.mems().clone().filter(|s| !s.is_empty());
    }
    if let Some(p) = r.pids() {
        out.pids_limit = Some(p.limit()).filter(|v| *v > 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn maps_process_network_mounts_and_limits() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":true},
            "process":{"args":["sh","-c","echo hi"],"env":["A=1"],"cwd":"/tmp",
              "user":{"uid":1000,"gid":100,"additionalGids":[10]},"terminal":true,
              "consoleSize":{"height":24,"width":80},"noNewPrivileges":true},
            "hostname":"h1",
            "mounts":[{"destination":"/proc","type":"proc","source":"proc"},
              {"destination":"/data","type":"bind","source":"/srv","options":["rbind","ro"]},
              {"destination":"/run","type":"tmpfs","source":"tmpfs","options":["nosuid","size=65536k","mode=755"]}],
            "linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/x"}],
              "cgroupsPath":"/kubepods/besteffort/pod1/c1",
              "resources":{"memory":{"limit":67108864},"pids":{"limit":20},"cpu":{"quota":50000,"period":100000}}}}"#,
        );
        let c = container_spec(&s, "k", Rootfs::Dir { path: "/r".into() }, false).unwrap();
        assert_eq!(c.process.args, ["sh", "-c", "echo hi"]);
        assert_eq!(c.process.user, "1000:100");
        assert_eq!(c.process.additional_groups, ["10"]);
        assert_eq!(c.process.cwd, "/tmp");
        assert!(c.process.tty);
        assert_eq!(c.process.console_size, Some((24, 80)));
        assert!(c.readonly_rootfs);
        assert_eq!(c.hostname, "h1");
        assert!(c.security.no_new_privileges);
        assert_eq!(c.security.seccomp, SeccompMode::Unconfined);
        assert_eq!(
            c.network,
            NetworkSpec::Join {
                path: "/var/run/netns/x".into()
            }
        );
        assert_eq!(c.mounts.len(), 2, "{:?}", c.mounts);
        assert_eq!(
            c.mounts[0],
            Mount {
                kind: MountKind::Bind {
                    source: "/srv".into()
                },
                destination: "/data".into(),
                readonly: true,
                propagation: String::new(),
                volume: false,
            }
        );
        assert_eq!(
            c.mounts[1].kind,
            MountKind::Tmpfs {
                options: "size=65536k,mode=755".into()
            }
        );
        assert_eq!(c.resources.memory, Some(64 << 20));
        assert_eq!(c.resources.pids_limit, Some(20));
        assert_eq!(c.resources.cpu_quota, Some(50000));
        assert_eq!(c.cgroup_parent.as_deref(), Some("kubepods/besteffort/pod1"));
        assert_eq!(c.id, "c1");
        // No capabilities in the spec: none kept.
        assert_eq!(c.security.cap_drop, ["ALL"]);
        assert!(c.security.cap_add.is_empty());
        assert!(!c.security.privileged);
    }

    #[test]
    fn capabilities_and_privileged() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0},
              "capabilities":{"bounding":["CAP_CHOWN","CAP_KILL"]}},
            "linux":{"maskedPaths":["/proc/kcore"],"seccomp":{"defaultAction":"SCMP_ACT_ERRNO"}}}"#,
        );
        let c = container_spec(&s, "k", Rootfs::Dir { path: "/r".into() }, false).unwrap();
        let mut add = c.security.cap_add.clone();
        add.sort();
        assert_eq!(add, ["CHOWN", "KILL"]);
        assert_eq!(c.security.cap_drop, ["ALL"]);
        assert_eq!(c.security.seccomp, SeccompMode::Default);
        let s = spec(
            r#"{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0},
              "capabilities":{"bounding":["CAP_CHOWN","CAP_SYS_ADMIN"]}},
            "linux":{}}"#,
        );
        let c = container_spec(&s, "k", Rootfs::Dir { path: "/r".into() }, false).unwrap();
        assert!(c.security.privileged);
    }

    #[test]
    fn pod_roles_from_the_cri_annotations() {
        let with = |ann: &str| {
            spec(&format!(
                r#"{{"ociVersion":"1.0.2","process":{{"args":["sh"],"cwd":"/","user":{{"uid":0,"gid":0}}}},"annotations":{ann}}}"#
            ))
        };
        assert_eq!(pod_role(&with("{}"), "c1"), PodRole::Alone);
        let sandbox = with(
            r#"{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"p1"}"#,
        );
        assert_eq!(pod_role(&sandbox, "p1"), PodRole::Sandbox);
        let member = with(
            r#"{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"p1"}"#,
        );
        assert_eq!(
            pod_role(&member, "c1"),
            PodRole::Member {
                sandbox_id: "p1".into()
            }
        );
        // Without its kind, a sandbox id only groups containers in one shim.
        let grouped = with(r#"{"io.kubernetes.cri.sandbox-id":"p1"}"#);
        assert_eq!(pod_role(&grouped, "c1"), PodRole::Alone);
    }

    #[test]
    fn no_network_namespace_means_host_network() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}},
            "linux":{"namespaces":[{"type":"pid"}]}}"#,
        );
        let c = container_spec(&s, "k", Rootfs::Dir { path: "/r".into() }, false).unwrap();
        assert_eq!(c.network, NetworkSpec::Host);
        assert_eq!(isolation(&s), "process");
        // No cgroupsPath (or a systemd one): berth-shim/<key>.
        assert_eq!(c.cgroup_parent.as_deref(), Some(CGROUP_PARENT));
        assert_eq!(c.id, "k");
        let s = spec(
            r#"{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}},
            "linux":{"cgroupsPath":"system.slice:cri:c1"}}"#,
        );
        assert_eq!(
            cgroup_path(&s, "k"),
            (CGROUP_PARENT.to_string(), "k".to_string())
        );
    }
}
