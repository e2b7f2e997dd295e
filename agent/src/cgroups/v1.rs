//! cgroup v1: `/sys/fs/cgroup/<controller>/<parent>/<id>` for each mounted controller.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use berth_agent_protocol::{Resources, Stats};

use super::{read_keyed, read_pids, read_u64, rmdir, write};

const ROOT: &str = "/sys/fs/cgroup";
const CONTROLLERS: &[&str] = &[
    "memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "devices", "blkio",
];

/// Docker's default device allow-list (character devices of the minimal /dev, ptys, mknod of any).
const DEVICE_ALLOW: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];

pub struct CgroupV1 {
    dirs: Vec<(&'static str, PathBuf)>,
}

impl CgroupV1 {
    pub fn create(
        parent: &str,
        id: &str,
        res: &Resources,
        devices: Option<&[String]>,
    ) -> io::Result<Self> {
        let mut dirs = Vec::new();
        for ctrl in CONTROLLERS {
            let base = Path::new(ROOT).join(ctrl);
            if !base.join("cgroup.procs").exists() {
                continue;
            }
            let dir = base.join(parent.trim_matches('/')).join(id);
            if *ctrl == "cpuset" {
                // New cpuset cgroups start empty; inherit each level from its parent.
                let mut cur = base.clone();
                for comp in Path::new(parent.trim_matches('/')).join(id).components() {
                    let next = cur.join(comp);
                    fs::create_dir_all(&next)?;
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        if fs::read_to_string(next.join(f))
                            .unwrap_or_default()
                            .trim()
                            .is_empty()
                        {
                            write(&next.join(f), fs::read_to_string(cur.join(f))?.trim())?;
                        }
                    }
                    cur = next;
                }
            } else {
                fs::create_dir_all(&dir)?;
            }
            dirs.push((*ctrl, dir));
        }
        let cg = CgroupV1 { dirs };
        if let Err(e) = cg.apply(res, devices) {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// The container's directory in each mounted hierarchy, by controller name.
    pub fn dirs(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        self.dirs.iter().map(|(c, d)| (*c, d.as_path()))
    }

    fn dir(&self, ctrl: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == ctrl)
            .map(|(_, d)| d.as_path())
    }

    /// `devices`: `None` leaves device access open (privileged); `Some(extra)` allows
    /// Docker's default list plus `extra` (`--device` rules such as `c 10:229 rwm`).
    fn apply(&self, res: &Resources, devices: Option<&[String]>) -> io::Result<()> {
        self.set_limits(res, false)?;
        if res.oom_kill_disable {
            if let Some(d) = self.dir("memory") {
                write(&d.join("memory.oom_control"), "1")?;
            }
        }
        if let Some(extra) = devices {
            if let Some(d) = self.dir("devices") {
                write(&d.join("devices.deny"), "a")?;
                for rule in DEVICE_ALLOW
                    .iter()
                    .copied()
                    .chain(extra.iter().map(String::as_str))
                {
                    write(&d.join("devices.allow"), rule)?;
                }
            }
        }
        Ok(())
    }

    /// `docker update` on the live cgroup: only the `Some` fields are written.
    pub fn update(&self, res: &Resources) -> io::Result<()> {
        self.set_limits(res, true)
    }

    /// The limits shared by create and update. `update`: `pids_limit <= 0` lifts the limit
    /// (at create it means "leave the default").
    fn set_limits(&self, res: &Resources, update: bool) -> io::Result<()> {
        if let Some(d) = self.dir("memory") {
            set_memory_and_swap(
                d,
                res.memory.filter(|m| *m != 0),
                res.memory_swap.filter(|s| *s != 0),
            )?;
            if let Some(r) = res.memory_reservation.filter(|r| *r > 0) {
                write(&d.join("memory.soft_limit_in_bytes"), &r.to_string())?;
            }
        }
        if let Some(d) = self.dir("cpu") {
            if let Some((quota, period)) = super::cpu_quota_period(res) {
                write(&d.join("cpu.cfs_period_us"), &period.to_string())?;
                write(&d.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            if let Some(s) = res.cpu_shares.filter(|s| *s > 0) {
                write(&d.join("cpu.shares"), &s.to_string())?;
            }
        }
        if let Some(d) = self.dir("cpuset") {
            if let Some(c) = res.cpuset_cpus.as_deref().filter(|c| !c.is_empty()) {
                write(&d.join("cpuset.cpus"), c)?;
            }
            if let Some(m) = res.cpuset_mems.as_deref().filter(|m| !m.is_empty()) {
                write(&d.join("cpuset.mems"), m)?;
            }
        }
        if let Some(d) = self.dir("pids") {
            match res.pids_limit {
                Some(p) if p > 0 => write(&d.join("pids.max"), &p.to_string())?,
                Some(_) if update => write(&d.join("pids.max"), "max")?,
                _ => {}
            }
        }
        if let (Some(d), Some(w)) = (self.dir("blkio"), res.blkio_weight.filter(|w| *w > 0)) {
            // BFQ's weight where the kernel uses BFQ (as runc prefers), else CFQ's.
            if let Some(f) = ["blkio.bfq.weight", "blkio.weight"]
                .iter()
                .map(|f| d.join(f))
                .find(|f| f.exists())
            {
                write(&f, &w.to_string())?;
            }
        }
        Ok(())
    }

    pub fn add_pid(&self, pid: i32) -> io::Result<()> {
        for (_, d) in &self.dirs {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<i32> {
        let d = self
            .dir("pids")
            .or_else(|| self.dir("memory"))
            .or_else(|| self.dirs.first().map(|(_, d)| d.as_path()));
        d.map(|d| read_pids(&d.join("cgroup.procs")))
            .unwrap_or_default()
    }

    pub fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        let d = self
            .dir("freezer")
            .ok_or_else(|| io::Error::other("freezer cgroup not available"))?;
        let want = if frozen { "FROZEN" } else { "THAWED" };
        for _ in 0..1000 {
            write(&d.join("freezer.state"), want)?;
            if fs::read_to_string(d.join("freezer.state"))?.trim() == want {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(io::Error::other(format!("freezer did not reach {want}")))
    }

    pub fn oom_kills(&self) -> u64 {
        self.dir("memory")
            .map(|d| read_keyed(&d.join("memory.oom_control"), "oom_kill"))
            .unwrap_or(0)
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        if let Some(d) = self.dir("memory") {
            s.memory_usage = read_u64(&d.join("memory.usage_in_bytes"));
            s.memory_max_usage = read_u64(&d.join("memory.max_usage_in_bytes"));
            s.memory_limit = read_u64(&d.join("memory.limit_in_bytes"));
            s.memory_cache = read_keyed(&d.join("memory.stat"), "total_cache");
        }
        if let Some(d) = self.dir("cpuacct") {
            s.cpu_usage_ns = read_u64(&d.join("cpuacct.usage"));
            // cpuacct.stat is in USER_HZ ticks.
            // SAFETY: sysconf has no preconditions.
            let tick_ns = 1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            s.cpu_user_ns = read_keyed(&d.join("cpuacct.stat"), "user") * tick_ns;
            s.cpu_system_ns = read_keyed(&d.join("cpuacct.stat"), "system") * tick_ns;
        }
        if let Some(d) = self.dir("pids") {
            s.pids_current = read_u64(&d.join("pids.current"));
            s.pids_limit = read_u64(&d.join("pids.max"));
        }
        s
    }

    pub fn remove(&self) -> io::Result<()> {
        let mut res = Ok(());
        for (_, d) in &self.dirs {
            if let Err(e) = rmdir(d) {
                res = Err(e);
            }
        }
        res
    }
}

/// Writes the memory and memory+swap limits in the order the kernel accepts: it keeps
/// `memory.limit_in_bytes <= memory.memsw.limit_in_bytes` at every write, so growing
/// limits raise memsw first and shrinking ones lower memory first (runc's rule).
/// `-1` lifts a limit.
fn set_memory_and_swap(d: &Path, memory: Option<i64>, swap: Option<i64>) -> io::Result<()> {
    let mem_file = d.join("memory.limit_in_bytes");
    let swap_file = d.join("memory.memsw.limit_in_bytes");
    // Without swap accounting there is no memsw file; Docker then ignores the swap limit.
    let swap = swap.filter(|_| swap_file.exists());
    match (memory, swap) {
        (Some(m), Some(s)) => {
            let current = read_u64(&mem_file);
            if s == -1 || current < s as u64 {
                write(&swap_file, &s.to_string())?;
                write(&mem_file, &m.to_string())
            } else {
                write(&mem_file, &m.to_string())?;
                write(&swap_file, &s.to_string())
            }
        }
        (Some(m), None) => write(&mem_file, &m.to_string()),
        (None, Some(s)) => write(&swap_file, &s.to_string()),
        (None, None) => Ok(()),
    }
}
