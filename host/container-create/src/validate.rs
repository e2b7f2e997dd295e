//! Create-time validation with Docker's wording, so clients see the errors they know.

use std::ops::RangeInclusive;

use bollard_stubs::models::{HostConfig, RestartPolicyNameEnum};

use crate::{Error, Result};

/// Docker's container name rule: `/?[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn validate_name(name: &str) -> Result<String> {
    let n = name.strip_prefix('/').unwrap_or(name);
    let ok = n.len() >= 2
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        return Err(Error::invalid(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )));
    }
    Ok(n.to_string())
}

pub fn online_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Parse a cpuset list like `0-2,4` (the `cpuset.cpus`/`cpuset.mems` syntax) into
/// inclusive ranges of CPU (or memory node) numbers. The ranges are never expanded: a
/// client's `0-99999999999` once made berthd allocate a vector of that many numbers and
/// abort (found by the `create_body` fuzz target).
pub fn parse_cpuset(s: &str) -> Option<Vec<RangeInclusive<usize>>> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
            if a > b {
                return None;
            }
            out.push(a..=b);
        } else {
            let n = part.parse().ok()?;
            out.push(n..=n);
        }
    }
    Some(out)
}

/// Whether every number in `requested` is in one of the `available` ranges (both from
/// [`parse_cpuset`]). Steps from range to range: the cost is in the number of ranges,
/// never in the numbers they span.
pub fn cpuset_within(
    requested: &[RangeInclusive<usize>],
    available: &[RangeInclusive<usize>],
) -> bool {
    requested.iter().all(|r| {
        let mut next = *r.start();
        loop {
            let Some(a) = available.iter().find(|a| a.contains(&next)) else {
                return false;
            };
            if a.end() >= r.end() {
                return true;
            }
            // `a` ends before `r` does, so `a.end() + 1` cannot overflow.
            next = a.end() + 1;
        }
    })
}

/// `--cgroup-parent`: a path inside each cgroup hierarchy (a leading `/` means from its
/// root). `..` and `.` components are refused: joined to the hierarchy they would reach
/// cgroups berth does not manage, where no limit of the container applies.
pub fn validate_cgroup_parent(parent: &str) -> Result<()> {
    let bad = parent.split('/').any(|c| c == ".." || c == ".") || parent.contains('\0');
    if bad {
        return Err(Error::invalid(format!(
            "invalid cgroup parent {parent:?}: it must be a path inside the cgroup hierarchy, without \"..\" or \".\""
        )));
    }
    Ok(())
}

pub fn validate_host_config(hc: &HostConfig) -> Result<()> {
    if let Some(p) = hc.cgroup_parent.as_deref() {
        validate_cgroup_parent(p)?;
    }
    const MIN_MEMORY: i64 = 6 * 1024 * 1024;
    let memory = hc.memory.unwrap_or(0);
    if memory < 0 {
        return Err(Error::invalid(
            "Invalid memory limit: must be a positive number",
        ));
    }
    if memory > 0 && memory < MIN_MEMORY {
        return Err(Error::invalid("Minimum memory limit allowed is 6MB"));
    }
    let swap = hc.memory_swap.unwrap_or(0);
    if swap > 0 && memory == 0 {
        return Err(Error::invalid(
            "You should always set the Memory limit when using Memoryswap limit",
        ));
    }
    if swap > 0 && swap < memory {
        return Err(Error::invalid(
            "Minimum memoryswap limit should be larger than memory limit, see usage",
        ));
    }
    if let Some(sw) = hc.memory_swappiness {
        if sw != -1 && !(0..=100).contains(&sw) {
            return Err(Error::invalid(format!(
                "Invalid value: {sw}, valid memory swappiness range is 0-100"
            )));
        }
    }
    if let Some(w) = hc.blkio_weight.filter(|w| *w != 0) {
        if !(10..=1000).contains(&w) {
            return Err(Error::invalid("Range of blkio weight is from 10 to 1000"));
        }
    }
    let ncpu = online_cpus();
    if let Some(n) = hc.nano_cpus.filter(|n| *n != 0) {
        if hc.cpu_quota.unwrap_or(0) > 0 || hc.cpu_period.unwrap_or(0) > 0 {
            return Err(Error::invalid(
                "Conflicting options: Nano CPUs and CPU Period cannot both be set",
            ));
        }
        if n < 10_000_000 || n > ncpu as i64 * 1_000_000_000 {
            return Err(Error::invalid(format!(
                "Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"
            )));
        }
    }
    if let Some(p) = hc.cpu_period.filter(|p| *p != 0) {
        if !(1000..=1_000_000).contains(&p) {
            return Err(Error::invalid(
                "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)",
            ));
        }
    }
    if let Some(q) = hc.cpu_quota.filter(|q| *q > 0) {
        if q < 1000 {
            return Err(Error::invalid(
                "CPU cfs quota can not be less than 1ms (i.e. 1000)",
            ));
        }
    }
    if hc.cpu_shares.unwrap_or(0) < 0 {
        return Err(Error::invalid(
            "Invalid CPU shares: must be a positive number",
        ));
    }
    if let Some(set) = hc.cpuset_cpus.as_deref().filter(|s| !s.is_empty()) {
        let cpus = parse_cpuset(set).ok_or_else(|| {
            Error::invalid(format!(
                "Invalid value {set} for cpuset cpus: invalid format: {set}"
            ))
        })?;
        if cpus.iter().any(|c| *c.end() >= ncpu) {
            return Err(Error::invalid(format!(
                "Requested CPUs are not available - requested {set}, available: 0-{}",
                ncpu - 1
            )));
        }
    }
    if let Some(rp) = &hc.restart_policy {
        let name = rp.name.unwrap_or(RestartPolicyNameEnum::EMPTY);
        let max = rp.maximum_retry_count.unwrap_or(0);
        if max < 0 {
            return Err(Error::invalid(
                "invalid restart policy: maximum retry count cannot be negative",
            ));
        }
        if max > 0 && name != RestartPolicyNameEnum::ON_FAILURE {
            return Err(Error::invalid(
                "invalid restart policy: maximum retry count can only be used with 'on-failure'",
            ));
        }
        if hc.auto_remove.unwrap_or(false)
            && !matches!(
                name,
                RestartPolicyNameEnum::EMPTY | RestartPolicyNameEnum::NO
            )
        {
            return Err(Error::invalid(
                "can't create 'AutoRemove' container with restart policy",
            ));
        }
    }
    Ok(())
}

/// Sysctls that live in a namespace of the container (runc's list): `net.*` in its network
/// namespace (not with `--network host`), the IPC ones in its IPC namespace.
fn sysctl_is_namespaced(key: &str, host_network: bool, host_ipc: bool) -> bool {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    ((IPC.contains(&key) || key.starts_with("fs.mqueue.")) && !host_ipc)
        || (key.starts_with("net.") && !host_network)
}

/// `--pid`, `--ipc`, `--uts`: `host` shares the agent's namespace (the host's, or the VM's
/// in a microVM); empty/`private` (and for IPC `shareable`, `none`) get their own, and
/// `container:<id>` joins the donor's (see `shared_ns`).
pub fn host_namespaces(hc: &HostConfig) -> Result<berth_agent_protocol::HostNamespaces> {
    fn mode(flag: &str, v: Option<&str>, private: &[&str]) -> Result<bool> {
        match v.unwrap_or("") {
            "host" => Ok(true),
            v if v.is_empty() || private.contains(&v) => Ok(false),
            // `container:<id>` (pid, ipc): the donor is resolved at start.
            v if flag != "uts" && v.len() > "container:".len() && v.starts_with("container:") => {
                Ok(false)
            }
            v => Err(Error::invalid(format!("invalid --{flag}: {v:?}"))),
        }
    }
    Ok(berth_agent_protocol::HostNamespaces {
        pid: mode("pid", hc.pid_mode.as_deref(), &["private"])?,
        ipc: mode(
            "ipc",
            hc.ipc_mode.as_deref(),
            &["private", "shareable", "none"],
        )?,
        uts: mode("uts", hc.uts_mode.as_deref(), &["private"])?,
    })
}

/// The run options applied inside the container (`--ulimit`, `--sysctl`,
/// `--oom-score-adj`, `--shm-size`, `--device`), with Docker's wording.
pub fn validate_run_options(hc: &HostConfig) -> Result<()> {
    if let Some(v) = hc.oom_score_adj {
        if !(-1000..=1000).contains(&v) {
            return Err(Error::invalid(format!(
                "Invalid value {v}, range for oom score adj is [-1000, 1000]"
            )));
        }
    }
    if hc.shm_size.unwrap_or(0) < 0 {
        return Err(Error::invalid("SHM size can not be less than 0"));
    }
    for u in hc.ulimits.iter().flatten() {
        let name = u.name.as_deref().unwrap_or("");
        const NAMES: &[&str] = &[
            "core",
            "cpu",
            "data",
            "fsize",
            "locks",
            "memlock",
            "msgqueue",
            "nice",
            "nofile",
            "nproc",
            "rss",
            "rtprio",
            "rttime",
            "sigpending",
            "stack",
        ];
        if !NAMES.contains(&name) {
            return Err(Error::invalid(format!("invalid ulimit type: {name}")));
        }
        let (soft, hard) = (u.soft.unwrap_or(0), u.hard.unwrap_or(0));
        if hard >= 0 && (soft > hard || soft < 0) {
            return Err(Error::invalid(format!(
                "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
            )));
        }
    }
    let host_network = hc.network_mode.as_deref() == Some("host");
    let host_ns = host_namespaces(hc)?;
    for key in hc.sysctls.iter().flat_map(|m| m.keys()) {
        if key.contains('/') || key.split('.').any(|c| c.is_empty()) {
            return Err(Error::invalid(format!("invalid sysctl {key:?}")));
        }
        if !sysctl_is_namespaced(key, host_network, host_ns.ipc) {
            return Err(Error::invalid(if key.starts_with("net.") {
                format!("sysctl {key:?} not allowed in host network namespace")
            } else if host_ns.ipc && (key.starts_with("kernel.") || key.starts_with("fs.mqueue.")) {
                format!("sysctl {key:?} not allowed in host IPC namespace")
            } else {
                format!("sysctl {key:?} is not in a separate kernel namespace")
            }));
        }
    }
    for d in hc.devices.iter().flatten() {
        let host = d.path_on_host.as_deref().unwrap_or("");
        let inside = d.path_in_container.as_deref().unwrap_or(host);
        if !host.starts_with('/') || !inside.starts_with('/') {
            return Err(Error::invalid(format!(
                "invalid device mapping {host}:{inside}: paths must be absolute"
            )));
        }
        let perms = d.cgroup_permissions.as_deref().unwrap_or("rwm");
        if perms.is_empty() || !perms.chars().all(|c| "rwm".contains(c)) {
            return Err(Error::invalid(format!(
                "invalid device cgroup permissions {perms:?}: use a combination of r, w and m"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_name("/web-1").unwrap(), "web-1");
        assert!(validate_name("a").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a/b").is_err());
    }

    #[test]
    fn limits() {
        let hc = |f: &dyn Fn(&mut HostConfig)| {
            let mut h = HostConfig::default();
            f(&mut h);
            validate_host_config(&h)
        };
        assert!(hc(&|h| h.memory = Some(1024))
            .unwrap_err()
            .to_string()
            .contains("Minimum memory limit"));
        assert!(hc(&|h| h.memory_swap = Some(64 << 20)).is_err());
        assert!(hc(&|h| {
            h.memory = Some(64 << 20);
            h.memory_swap = Some(32 << 20)
        })
        .is_err());
        assert!(hc(&|h| h.memory = Some(64 << 20)).is_ok());
        assert!(hc(&|h| h.nano_cpus = Some(1_000_000_000 * 1000))
            .unwrap_err()
            .to_string()
            .contains("Range of CPUs"));
        assert!(hc(&|h| h.cpuset_cpus = Some("x".into())).is_err());
        assert!(hc(&|h| h.cpuset_cpus = Some("0-999".into()))
            .unwrap_err()
            .to_string()
            .contains("not available"));
        assert_eq!(parse_cpuset("0-2,4"), Some(vec![0..=2, 4..=4]));
    }

    /// Regression (create_body fuzz target): a huge range is refused as unavailable
    /// without being expanded (it used to abort berthd allocating 88 GB).
    #[test]
    fn huge_cpuset_ranges_cost_nothing() {
        let mut h = HostConfig {
            cpuset_cpus: Some("511111-11111111111".into()),
            ..Default::default()
        };
        assert!(validate_host_config(&h)
            .unwrap_err()
            .to_string()
            .contains("Requested CPUs are not available"));
        h.cpuset_cpus = Some(format!("0-{}", usize::MAX));
        assert!(validate_host_config(&h).is_err());
        assert_eq!(parse_cpuset("0-99999999999, x"), None);
        let avail = parse_cpuset("0-3,4-7,9").unwrap();
        assert!(cpuset_within(&parse_cpuset("1,2-6,7").unwrap(), &avail));
        assert!(cpuset_within(&parse_cpuset("9").unwrap(), &avail));
        assert!(!cpuset_within(&parse_cpuset("6-9").unwrap(), &avail));
        assert!(!cpuset_within(
            &parse_cpuset(&format!("0-{}", usize::MAX)).unwrap(),
            &avail
        ));
        let all = parse_cpuset(&format!("0-{}", usize::MAX)).unwrap();
        assert!(cpuset_within(&parse_cpuset("5-99999999999").unwrap(), &all));
    }
}
