//! `docker update`: new resource limits and restart policy for a container. The record
//! (HostConfig) changes in every state, so inspect shows the values and the next start
//! applies them; a running or paused container's cgroups change at once through its agent.
//! Validation, merge rules and messages follow dockerd (`daemon/update.go`,
//! `container.UpdateContainer`).

use std::path::Path;
use std::sync::Arc;

use berth_agent_protocol::Resources;
use bollard_stubs::models::{ContainerUpdateBody, HostConfig, RestartPolicyNameEnum};

use super::record::Status;
use super::validate::{cpuset_within, parse_cpuset, validate_host_config};
use super::{Container, Containers};
use crate::{Error, Result};

const MIN_MEMORY: i64 = 6 * 1024 * 1024;

/// Whether the kernel limits memory+swap (v1 `memsw`, v2 `memory.swap.max`): as in
/// dockerd, only then does a bare `--memory` get a memory+swap limit of twice as much.
pub(crate) fn swap_limit_supported() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
}

/// Block I/O weight needs CFQ's `blkio.weight` or BFQ (whose `blkio.bfq.weight` exists
/// only below the root, so its statistics files stand for it), or v2's `io` controller.
fn blkio_weight_supported() -> bool {
    let v1 = Path::new("/sys/fs/cgroup/blkio");
    v1.join("blkio.weight").exists()
        || v1.join("blkio.bfq.io_serviced").exists()
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "io"))
}

fn online_mems() -> String {
    std::fs::read_to_string("/sys/devices/system/node/online")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "0".into())
}

/// dockerd's `verifyContainerSettings` for an update: 400s, and the warnings of the
/// response. Normalizes the request (unlimited pids = 0, unsupported weight dropped).
fn verify(u: &mut ContainerUpdateBody, warnings: &mut Vec<String>) -> Result<()> {
    let memory = u.memory.unwrap_or(0);
    let hc = HostConfig {
        memory: u.memory,
        // An update may set memory+swap alone (dockerd skips that create-time rule).
        memory_swap: u.memory_swap.filter(|_| memory != 0),
        nano_cpus: u.nano_cpus,
        cpu_period: u.cpu_period,
        cpu_quota: u.cpu_quota,
        cpu_shares: u.cpu_shares,
        cpuset_cpus: u.cpuset_cpus.clone(),
        restart_policy: u.restart_policy.clone(),
        ..Default::default()
    };
    validate_host_config(&hc)?;
    if u.cpu_quota.unwrap_or(0) > 0 && u.nano_cpus.unwrap_or(0) > 0 {
        return Err(Error::invalid(
            "Conflicting options: Nano CPUs and CPU Quota cannot both be set",
        ));
    }
    let reservation = u.memory_reservation.unwrap_or(0);
    if reservation > 0 && reservation < MIN_MEMORY {
        return Err(Error::invalid("Minimum memory reservation allowed is 6MB"));
    }
    if memory > 0 && reservation > 0 && memory < reservation {
        return Err(Error::invalid(
            "Minimum memory limit can not be less than memory reservation limit, see usage",
        ));
    }
    if let Some(set) = u.cpuset_mems.as_deref().filter(|s| !s.is_empty()) {
        let mems = parse_cpuset(set)
            .ok_or_else(|| Error::invalid(format!("Invalid value {set} for cpuset mems")))?;
        let online = online_mems();
        let available = parse_cpuset(&online).unwrap_or_else(|| vec![0..=0]);
        if !cpuset_within(&mems, &available) {
            return Err(Error::invalid(format!(
                "Requested memory nodes are not available - requested {set}, available: {online}"
            )));
        }
    }
    if let Some(w) = u.blkio_weight.filter(|w| *w > 0) {
        if !(10..=1000).contains(&w) {
            return Err(Error::invalid("Range of blkio weight is from 10 to 1000"));
        }
        if !blkio_weight_supported() {
            warnings.push(
                "Your kernel does not support Block I/O weight or the cgroup is not mounted. \
                 Weight discarded."
                    .into(),
            );
            u.blkio_weight = None;
        }
    }
    // Both 0 and -1 mean "unlimited" in an update; the record keeps 0 (dockerd's rule).
    if let Some(p) = u.pids_limit.as_mut() {
        if *p < 0 {
            *p = 0;
        }
    }
    Ok(())
}

/// dockerd's `UpdateContainer`: merges the non-zero fields of `u` into `hc`. An `Err` is
/// the conflict message (409), `hc` is then partly merged and must be dropped.
fn merge(hc: &mut HostConfig, u: &ContainerUpdateBody) -> std::result::Result<(), String> {
    let set = |v: Option<i64>| v.filter(|v| *v != 0);
    let (nano, period, quota) = (set(u.nano_cpus), set(u.cpu_period), set(u.cpu_quota));
    let has = |v: Option<i64>| v.unwrap_or(0) > 0;
    if nano.is_some_and(|n| n > 0) {
        if has(hc.cpu_period) {
            return Err(
                "Conflicting options: Nano CPUs cannot be updated as CPU Period has already been set"
                    .into(),
            );
        }
        if has(hc.cpu_quota) {
            return Err(
                "Conflicting options: Nano CPUs cannot be updated as CPU Quota has already been set"
                    .into(),
            );
        }
    }
    if period.is_some_and(|p| p > 0) && has(hc.nano_cpus) {
        return Err(
            "Conflicting options: CPU Period cannot be updated as NanoCPUs has already been set"
                .into(),
        );
    }
    if quota.is_some_and(|q| q > 0) && has(hc.nano_cpus) {
        return Err(
            "Conflicting options: CPU Quota cannot be updated as NanoCPUs has already been set"
                .into(),
        );
    }
    if let Some(w) = u.blkio_weight.filter(|w| *w != 0) {
        hc.blkio_weight = Some(w);
    }
    if let Some(s) = set(u.cpu_shares) {
        hc.cpu_shares = Some(s);
    }
    if nano.is_some() {
        hc.nano_cpus = nano;
    }
    if period.is_some() {
        hc.cpu_period = period;
    }
    if quota.is_some() {
        hc.cpu_quota = quota;
    }
    if let Some(c) = u.cpuset_cpus.clone().filter(|c| !c.is_empty()) {
        hc.cpuset_cpus = Some(c);
    }
    if let Some(m) = u.cpuset_mems.clone().filter(|m| !m.is_empty()) {
        hc.cpuset_mems = Some(m);
    }
    if let Some(m) = set(u.memory) {
        let swap = hc.memory_swap.unwrap_or(0);
        if swap > 0 && m > swap && set(u.memory_swap).is_none() {
            return Err(
                "Memory limit should be smaller than already set memoryswap limit, \
                        update the memoryswap at the same time"
                    .into(),
            );
        }
        hc.memory = Some(m);
    }
    if let Some(s) = set(u.memory_swap) {
        hc.memory_swap = Some(s);
    }
    if let Some(r) = set(u.memory_reservation) {
        hc.memory_reservation = Some(r);
    }
    if u.pids_limit.is_some() {
        hc.pids_limit = u.pids_limit;
    }
    if let Some(rp) = &u.restart_policy {
        let name = rp.name.unwrap_or(RestartPolicyNameEnum::EMPTY);
        if name != RestartPolicyNameEnum::EMPTY {
            if name != RestartPolicyNameEnum::NO && hc.auto_remove.unwrap_or(false) {
                return Err(
                    "Restart policy cannot be updated because AutoRemove is enabled for the container"
                        .into(),
                );
            }
            hc.restart_policy = Some(rp.clone());
        }
    }
    Ok(())
}

/// The limits to write into the live cgroups: the merged values of every group of
/// settings the update touched, in the agent's update terms (`-1`/`<= 0` lift a limit).
fn live_resources(hc: &HostConfig, u: &ContainerUpdateBody) -> Resources {
    let touched = |v: Option<i64>| v.is_some_and(|v| v != 0);
    let mut r = Resources::default();
    if touched(u.memory) || touched(u.memory_swap) {
        let memory = hc.memory.unwrap_or(0);
        r.memory = (memory > 0).then_some(memory);
        // No memory+swap limit recorded: the start-time default of twice the memory.
        r.memory_swap = match hc.memory_swap.unwrap_or(0) {
            0 if memory > 0 && swap_limit_supported() => Some(memory.saturating_mul(2)),
            0 => None,
            s => Some(s),
        };
    }
    if touched(u.memory_reservation) {
        r.memory_reservation = hc.memory_reservation;
    }
    if touched(u.nano_cpus) || touched(u.cpu_quota) || touched(u.cpu_period) {
        // Always explicit quota and period, so a lifted quota (-1) is written too.
        let nano = hc.nano_cpus.unwrap_or(0);
        let (quota, period) = if nano > 0 {
            (nano * 100_000 / 1_000_000_000, 100_000)
        } else {
            (
                hc.cpu_quota.filter(|q| *q > 0).unwrap_or(-1),
                hc.cpu_period.filter(|p| *p > 0).unwrap_or(100_000),
            )
        };
        r.cpu_quota = Some(quota);
        r.cpu_period = Some(period as u64);
    }
    if touched(u.cpu_shares) {
        r.cpu_shares = hc.cpu_shares.map(|s| s as u64);
    }
    r.cpuset_cpus = u.cpuset_cpus.clone().filter(|c| !c.is_empty());
    r.cpuset_mems = u.cpuset_mems.clone().filter(|m| !m.is_empty());
    r.pids_limit = u.pids_limit;
    r.blkio_weight = u.blkio_weight.filter(|w| *w > 0);
    r
}

impl Containers {
    /// `POST /containers/{id}/update`. Returns the response's warnings.
    pub async fn update_resources(
        self: &Arc<Self>,
        c: &Arc<Container>,
        mut u: ContainerUpdateBody,
    ) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        verify(&mut u, &mut warnings)?;
        // Serialized with start/stop: the limits written live and the ones the next
        // start reads from the record cannot cross.
        let _g = c.op.lock().await;
        let rec = c.record();
        let cannot =
            |msg: &dyn std::fmt::Display| format!("Cannot update container {}: {msg}", c.id);
        if matches!(rec.state.status, Status::Removing | Status::Dead) {
            return Err(Error::internal(cannot(
                &"container is marked for removal and cannot be \"update\"",
            )));
        }
        let mut hc = rec.host_config.clone();
        merge(&mut hc, &u).map_err(|m| Error::conflict(cannot(&m)))?;
        // Live first: when the kernel refuses, the record keeps the old values (dockerd
        // restores its backup then).
        if matches!(rec.state.status, Status::Running | Status::Paused) {
            if let Some(agent) = c.agent() {
                agent
                    .update(live_resources(&hc, &u))
                    .await
                    .map_err(|e| Error::internal(cannot(&e)))?;
            }
        }
        c.update(|r| r.host_config = hc);
        self.save(c)?;
        self.publish(&c.record(), "update", &[]);
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard_stubs::models::RestartPolicy;

    fn body(f: impl FnOnce(&mut ContainerUpdateBody)) -> ContainerUpdateBody {
        let mut u = ContainerUpdateBody::default();
        f(&mut u);
        u
    }

    #[test]
    fn merge_follows_dockerd() {
        let mut hc = HostConfig {
            memory: Some(64 << 20),
            memory_swap: Some(128 << 20),
            cpu_quota: Some(50_000),
            ..Default::default()
        };
        let err = merge(&mut hc.clone(), &body(|u| u.memory = Some(256 << 20))).unwrap_err();
        assert!(err.starts_with("Memory limit should be smaller"), "{err}");
        merge(
            &mut hc,
            &body(|u| {
                u.memory = Some(256 << 20);
                u.memory_swap = Some(-1);
                u.cpu_shares = Some(512);
                u.pids_limit = Some(0);
            }),
        )
        .unwrap();
        assert_eq!(
            (hc.memory, hc.memory_swap, hc.cpu_shares, hc.pids_limit),
            (Some(256 << 20), Some(-1), Some(512), Some(0))
        );
        // Zero fields leave the record alone.
        merge(&mut hc, &ContainerUpdateBody::default()).unwrap();
        assert_eq!(hc.cpu_quota, Some(50_000));
        let err = merge(&mut hc, &body(|u| u.nano_cpus = Some(500_000_000))).unwrap_err();
        assert!(err.contains("CPU Quota has already been set"), "{err}");
        hc.auto_remove = Some(true);
        let always = RestartPolicy {
            name: Some(RestartPolicyNameEnum::ALWAYS),
            maximum_retry_count: None,
        };
        let err = merge(&mut hc, &body(|u| u.restart_policy = Some(always))).unwrap_err();
        assert!(err.contains("AutoRemove is enabled"), "{err}");
    }

    #[test]
    fn verify_follows_dockerd() {
        let mut w = Vec::new();
        let e = verify(&mut body(|u| u.memory = Some(1 << 20)), &mut w).unwrap_err();
        assert_eq!(e.to_string(), "Minimum memory limit allowed is 6MB");
        // Swap alone is allowed in an update.
        verify(&mut body(|u| u.memory_swap = Some(1 << 30)), &mut w).unwrap();
        let e = verify(&mut body(|u| u.blkio_weight = Some(5)), &mut w).unwrap_err();
        assert_eq!(e.to_string(), "Range of blkio weight is from 10 to 1000");
        let mut u = body(|u| u.pids_limit = Some(-1));
        verify(&mut u, &mut w).unwrap();
        assert_eq!(u.pids_limit, Some(0));
        assert!(w.is_empty() || w[0].contains("Block I/O"));
    }

    #[test]
    fn live_resources_are_explicit_for_cpu() {
        let hc = HostConfig {
            cpu_period: Some(50_000),
            ..Default::default()
        };
        let r = live_resources(&hc, &body(|u| u.cpu_period = Some(50_000)));
        assert_eq!((r.cpu_quota, r.cpu_period), (Some(-1), Some(50_000)));
        let hc = HostConfig {
            nano_cpus: Some(500_000_000),
            ..Default::default()
        };
        let r = live_resources(&hc, &body(|u| u.nano_cpus = Some(500_000_000)));
        assert_eq!((r.cpu_quota, r.cpu_period), (Some(50_000), Some(100_000)));
        assert_eq!(r.memory, None);
    }
}
