//! cgroup v2 (unified): `/sys/fs/cgroup/<parent>/<id>`.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use berth_agent_protocol::{Resources, Stats};

use super::{read_keyed, read_pids, read_u64, rmdir, write};

const ROOT: &str = "/sys/fs/cgroup";

pub struct CgroupV2 {
    dir: PathBuf,
}

impl CgroupV2 {
    /// The container's directory, as the agent sees it.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn create(parent: &str, id: &str, res: &Resources) -> io::Result<Self> {
        // Enable the controllers we use on every level above the container's cgroup.
        let mut cur = PathBuf::from(ROOT);
        let available = fs::read_to_string(cur.join("cgroup.controllers")).unwrap_or_default();
        let wanted: Vec<&str> = ["cpu", "cpuset", "memory", "pids"]
            .into_iter()
            .filter(|c| available.split_whitespace().any(|a| a == *c))
            .collect();
        let enable = wanted
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        for comp in Path::new(parent.trim_matches('/')).components() {
            if !enable.is_empty() {
                let _ = write(&cur.join("cgroup.subtree_control"), &enable);
            }
            cur = cur.join(comp);
            fs::create_dir_all(&cur)?;
        }
        if !enable.is_empty() {
            let _ = write(&cur.join("cgroup.subtree_control"), &enable);
        }
        let dir = cur.join(id);
        fs::create_dir_all(&dir)?;
        let cg = CgroupV2 { dir };
        if let Err(e) = cg.apply(res) {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    fn apply(&self, res: &Resources) -> io::Result<()> {
        self.set_limits(res, false)?;
        if res.oom_kill_disable {
            // v2 has no per-cgroup switch; the closest is not grouping the kill.
            let _ = write(&self.dir.join("memory.oom.group"), "0");
        }
        Ok(())
    }

    /// `docker update` on the live cgroup: only the `Some` fields are written.
    pub fn update(&self, res: &Resources) -> io::Result<()> {
        self.set_limits(res, true)
    }

    /// The limits shared by create and update. `update`: `pids_limit <= 0` lifts the limit.
    fn set_limits(&self, res: &Resources, update: bool) -> io::Result<()> {
        let d = &self.dir;
        let max = |v: i64| {
            if v < 0 {
                "max".to_string()
            } else {
                v.to_string()
            }
        };
        if let Some(m) = res.memory.filter(|m| *m != 0) {
            write(&d.join("memory.max"), &max(m))?;
            if let Some(s) = res.memory_swap.filter(|s| *s != 0) {
                // v2 limits swap alone; Docker's value is memory+swap.
                let swap = if s < 0 || m < 0 {
                    "max".to_string()
                } else {
                    (s - m).max(0).to_string()
                };
                if d.join("memory.swap.max").exists() {
                    write(&d.join("memory.swap.max"), &swap)?;
                }
            }
        }
        if let Some(r) = res.memory_reservation.filter(|r| *r > 0) {
            write(&d.join("memory.low"), &r.to_string())?;
        }
        if let Some((quota, period)) = super::cpu_quota_period(res) {
            write(&d.join("cpu.max"), &format!("{} {period}", max(quota)))?;
        }
        if let Some(s) = res.cpu_shares.filter(|s| *s > 0) {
            // runc's shares -> weight conversion.
            let weight = 1 + ((s.clamp(2, 262_144) - 2) * 9999) / 262_142;
            write(&d.join("cpu.weight"), &weight.to_string())?;
        }
        if let Some(c) = res.cpuset_cpus.as_deref().filter(|c| !c.is_empty()) {
            write(&d.join("cpuset.cpus"), c)?;
        }
        if let Some(m) = res.cpuset_mems.as_deref().filter(|m| !m.is_empty()) {
            write(&d.join("cpuset.mems"), m)?;
        }
        match res.pids_limit {
            Some(p) if p > 0 => write(&d.join("pids.max"), &p.to_string())?,
            Some(_) if update => write(&d.join("pids.max"), "max")?,
            _ => {}
        }
        if let Some(w) = res.blkio_weight.filter(|w| *w > 0) {
            // BFQ's weight is 1-1000 like blkio's; io.weight's range (1-10000) holds it too.
            if let Some(f) = ["io.bfq.weight", "io.weight"]
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
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    pub fn pids(&self) -> Vec<i32> {
        read_pids(&self.dir.join("cgroup.procs"))
    }

    pub fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        write(
            &self.dir.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )?;
        for _ in 0..1000 {
            let events = fs::read_to_string(self.dir.join("cgroup.events")).unwrap_or_default();
            if events
                .lines()
                .any(|l| l == if frozen { "frozen 1" } else { "frozen 0" })
            {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(io::Error::other(
            "cgroup did not reach the requested freezer state",
        ))
    }

    pub fn kill(&self) -> io::Result<()> {
        write(&self.dir.join("cgroup.kill"), "1")
    }

    pub fn oom_kills(&self) -> u64 {
        read_keyed(&self.dir.join("memory.events"), "oom_kill")
    }

    pub fn stats(&self) -> Stats {
        let d = &self.dir;
        let max = fs::read_to_string(d.join("memory.max")).unwrap_or_default();
        let pids_max = fs::read_to_string(d.join("pids.max")).unwrap_or_default();
        Stats {
            memory_usage: read_u64(&d.join("memory.current")),
            memory_max_usage: read_u64(&d.join("memory.peak")),
            memory_limit: max.trim().parse().unwrap_or(u64::MAX),
            memory_cache: read_keyed(&d.join("memory.stat"), "file"),
            cpu_usage_ns: read_keyed(&d.join("cpu.stat"), "usage_usec") * 1000,
            cpu_user_ns: read_keyed(&d.join("cpu.stat"), "user_usec") * 1000,
            cpu_system_ns: read_keyed(&d.join("cpu.stat"), "system_usec") * 1000,
            pids_current: read_u64(&d.join("pids.current")),
            pids_limit: pids_max.trim().parse().unwrap_or(0),
            ..Stats::default()
        }
    }

    pub fn remove(&self) -> io::Result<()> {
        rmdir(&self.dir)
    }
}
