//! Container resources → VM shape. The limits are also applied inside the guest (the agent
//! sets the same cgroup limits there), so `docker stats` and OOM reporting behave as in
//! process mode; the VM itself only needs room for them.

use crate::containers::record::ContainerRecord;

/// Guest RAM beyond the container's `-m`: the guest kernel, the agent and page cache.
pub const MEM_OVERHEAD_MIB: u64 = 128;
/// Smallest guest, and the size without `-m`.
pub const MEM_FLOOR_MIB: u64 = 256;

pub fn mem_mib(rec: &ContainerRecord) -> u64 {
    let limit = rec
        .host_config
        .memory
        .filter(|m| *m > 0)
        .map(|m| (m as u64).div_ceil(1 << 20));
    match limit {
        Some(l) => (l + MEM_OVERHEAD_MIB).max(MEM_FLOOR_MIB),
        None => MEM_FLOOR_MIB,
    }
}

/// vCPUs: `--cpus` rounded up, else the size of `--cpuset-cpus`, else 1; at most the
/// host's CPU count.
pub fn vcpus(rec: &ContainerRecord) -> u32 {
    let host = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let hc = &rec.host_config;
    let want = if let Some(n) = hc.nano_cpus.filter(|n| *n > 0) {
        (n as u64).div_ceil(1_000_000_000) as u32
    } else if let Some(set) = hc.cpuset_cpus.as_deref().filter(|s| !s.is_empty()) {
        cpuset_len(set)
    } else {
        1
    };
    want.clamp(1, host.max(1))
}

fn cpuset_len(set: &str) -> u32 {
    set.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum::<u32>()
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpusets() {
        assert_eq!(cpuset_len("0"), 1);
        assert_eq!(cpuset_len("0-3"), 4);
        assert_eq!(cpuset_len("0,2-3"), 3);
    }
}
