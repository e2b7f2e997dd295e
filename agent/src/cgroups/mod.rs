//! Per-container cgroups: v1 (hybrid hosts, one directory per controller) or v2 (guests, unified).
//! Created at each start, removed when the run ends, so nothing is left behind.
mod mount;
pub mod v1;
pub mod v2;

pub use mount::mount_in_container;

use std::{fs, io, path::Path, time::Duration};

use berth_agent_protocol::{Resources, Stats};

pub enum Cgroup {
    V1(v1::CgroupV1),
    V2(v2::CgroupV2),
}

pub fn is_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

impl Cgroup {
    /// Creates `<parent>/<id>` and applies `res`. `devices` restricts device access to Docker's list plus the given rules (v1 only;
    /// `None` = unrestricted).
    pub fn create(
        parent: &str,
        id: &str,
        res: &Resources,
        devices: Option<&[String]>,
    ) -> io::Result<Cgroup> {
        // The host validated both; checked again because they become paths under
        // /sys/fs/cgroup, written as root.
        let escapes = |p: &str| p.split('/').any(|c| c == ".." || c == ".");
        if escapes(parent) || id.is_empty() || id.contains('/') || escapes(id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid cgroup path {parent:?}/{id:?}"),
            ));
        }
        if is_v2() {
            Ok(Cgroup::V2(v2::CgroupV2::create(parent, id, res)?))
        } else {
            Ok(Cgroup::V1(v1::CgroupV1::create(parent, id, res, devices)?))
        }
    }

    pub fn add_pid(&self, pid: i32) -> io::Result<()> {
        match self {
            Cgroup::V1(c) => c.add_pid(pid),
            Cgroup::V2(c) => c.add_pid(pid),
        }
    }

    pub fn pids(&self) -> Vec<i32> {
        match self {
            Cgroup::V1(c) => c.pids(),
            Cgroup::V2(c) => c.pids(),
        }
    }

    pub fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        match self {
            Cgroup::V1(c) => c.set_frozen(frozen),
            Cgroup::V2(c) => c.set_frozen(frozen),
        }
    }

    /// `docker update`: writes the `Some` fields of `res` into the live cgroup.
    pub fn update(&self, res: &Resources) -> io::Result<()> {
        match self {
            Cgroup::V1(c) => c.update(res),
            Cgroup::V2(c) => c.update(res),
        }
    }

    pub fn oom_kills(&self) -> u64 {
        match self {
            Cgroup::V1(c) => c.oom_kills(),
            Cgroup::V2(c) => c.oom_kills(),
        }
    }

    pub fn stats(&self) -> Stats {
        let mut s = match self {
            Cgroup::V1(c) => c.stats(),
            Cgroup::V2(c) => c.stats(),
        };
        s.read_at_ns = crate::util::now_ns();
        s.system_cpu_usage_ns = system_cpu_ns();
        s.online_cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        s
    }

    /// SIGKILLs everything in the cgroup (frozen first so nothing forks meanwhile).
    pub fn kill_all(&self) {
        if let Cgroup::V2(c) = self {
            if c.kill().is_ok() {
                return;
            }
        }
        let _ = self.set_frozen(true);
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.set_frozen(false);
    }

    /// Kills what is left, waits for the cgroup to empty and removes it.
    pub async fn destroy(&self) -> io::Result<()> {
        for attempt in 0..200 {
            if self.pids().is_empty() {
                break;
            }
            if attempt % 10 == 0 {
                self.kill_all();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut last = Ok(());
        for _ in 0..100 {
            last = match self {
                Cgroup::V1(c) => c.remove(),
                Cgroup::V2(c) => c.remove(),
            };
            if last.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        last
    }
}

pub(crate) fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("write {value:?} to {}: {e}", path.display()),
        )
    })
}

pub(crate) fn read_u64(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// `key value` lines (memory.stat, cpu.stat, memory.events, memory.oom_control).
pub(crate) fn read_keyed(path: &Path, key: &str) -> u64 {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn read_pids(path: &Path) -> Vec<i32> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Removes a cgroup directory and, if empty, nothing else (parents are shared).
pub(crate) fn rmdir(path: &Path) -> io::Result<()> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("rmdir {}: {e}", path.display()),
        )),
    }
}

/// Total CPU time of the machine in ns (the first line of /proc/stat, in USER_HZ ticks).
fn system_cpu_ns() -> u64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(8)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * (1_000_000_000 / hz)
}

/// Docker's `--cpus` / quota / period to (quota, period) in microseconds.
pub(crate) fn cpu_quota_period(res: &Resources) -> Option<(i64, u64)> {
    if let Some(n) = res.nano_cpus.filter(|n| *n > 0) {
        let period = 100_000u64;
        return Some((n * period as i64 / 1_000_000_000, period));
    }
    match (
        res.cpu_quota.filter(|q| *q > 0),
        res.cpu_period.filter(|p| *p > 0),
    ) {
        (Some(q), p) => Some((q, p.unwrap_or(100_000))),
        (None, Some(p)) => Some((-1, p)),
        (None, None) => None,
    }
}

/// Device-cgroup rules (`c 10:229 rwm`) for `--device`s, from the host nodes.
pub fn device_rules(devices: &[berth_agent_protocol::DeviceSpec]) -> Result<Vec<String>, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut rules = Vec::new();
    for d in devices {
        let meta = std::fs::metadata(&d.path_on_host).map_err(|e| {
            format!(
                "error gathering device information while adding custom device {:?}: {e}",
                d.path_on_host
            )
        })?;
        let kind = if meta.file_type().is_char_device() {
            'c'
        } else if meta.file_type().is_block_device() {
            'b'
        } else {
            return Err(format!("{:?} is not a device node", d.path_on_host));
        };
        let rdev = meta.rdev();
        let perms: String = d
            .permissions
            .chars()
            .filter(|c| "rwm".contains(*c))
            .collect();
        rules.push(format!(
            "{kind} {}:{} {}",
            libc::major(rdev),
            libc::minor(rdev),
            if perms.is_empty() { "rwm" } else { &perms }
        ));
    }
    Ok(rules)
}
