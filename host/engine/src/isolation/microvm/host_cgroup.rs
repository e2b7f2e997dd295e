//! A host cgroup per microVM holding the VMM and its helpers, so the VM's cost is accounted
//! to the container (`<ctrl>/berth-vm/<id>` on cgroup v1, `berth-vm/<id>` on v2) and
//! `--cpuset-cpus` pins the vCPU threads. Processes join it themselves between fork and
//! exec, so nothing runs outside it even briefly.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
const PARENT: &str = "berth-vm";
/// v1 controllers the VM is accounted in.
const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "cpuset"];

fn is_v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// The VM's cgroup directories (one per v1 hierarchy, or the v2 one).
pub fn dirs(id: &str) -> Vec<PathBuf> {
    let short = &id[..12.min(id.len())];
    if is_v2() {
        return vec![Path::new(ROOT).join(PARENT).join(short)];
    }
    // `cpu` and `cpuacct` are often one hierarchy under two names: keep each once.
    let mut hierarchies: Vec<PathBuf> = V1_CONTROLLERS
        .iter()
        .filter_map(|c| Path::new(ROOT).join(c).canonicalize().ok())
        .filter(|p| p.is_dir())
        .collect();
    hierarchies.dedup();
    hierarchies
        .into_iter()
        .map(|p| p.join(PARENT).join(short))
        .collect()
}

/// Create the VM's cgroups; returns the `cgroup.procs` files its processes must join. A
/// host without writable cgroups gets none (the VM then runs in berthd's cgroup).
pub fn create(id: &str, cpuset: Option<&str>) -> Vec<PathBuf> {
    let mut procs = Vec::new();
    for dir in dirs(id) {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::debug!(dir = %dir.display(), "no host cgroup for the VM: {e}");
            continue;
        }
        if dir.starts_with(Path::new(ROOT).join("cpuset")) {
            // v1 cpuset groups start empty: `berth-vm` inherits the root's sets, the VM's
            // group the parent's (or the container's --cpuset-cpus).
            let parent = dir.parent().expect("berth-vm/<id>");
            let root = parent.parent().expect("<ctrl>/berth-vm");
            let read = |d: &Path, f: &str| {
                std::fs::read_to_string(d.join(f))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            for f in ["cpuset.mems", "cpuset.cpus"] {
                if read(parent, f).is_empty() {
                    let _ = std::fs::write(parent.join(f), read(root, f));
                }
            }
            let _ = std::fs::write(dir.join("cpuset.mems"), read(parent, "cpuset.mems"));
            let cpus = cpuset
                .map(str::to_string)
                .unwrap_or_else(|| read(parent, "cpuset.cpus"));
            let _ = std::fs::write(dir.join("cpuset.cpus"), cpus);
        } else if is_v2() {
            if let Some(set) = cpuset {
                let _ = std::fs::write(dir.join("cpuset.cpus"), set);
            }
        }
        procs.push(dir.join("cgroup.procs"));
    }
    procs
}

/// Remove the VM's cgroups once its processes are gone.
pub async fn remove(id: &str) {
    for dir in dirs(id) {
        for _ in 0..50 {
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                _ => break,
            }
        }
    }
}
