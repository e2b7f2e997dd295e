//! Container resources → VM shape. The limits are also applied inside the guest (the agent
//! sets the same cgroup limits there), so `docker stats` and OOM reporting behave as in
//! process mode; the VM itself only needs room for them.

use crate::containers::record::ContainerRecord;
use crate::containers::validate::parse_cpuset;

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

/// CPUs a cpuset names (it was validated at create: every CPU exists on this host).
fn cpuset_len(set: &str) -> u32 {
    let n = parse_cpuset(set)
        .unwrap_or_default()
        .iter()
        .map(|r| (r.end() - r.start()).saturating_add(1))
        .fold(0usize, usize::saturating_add);
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
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
