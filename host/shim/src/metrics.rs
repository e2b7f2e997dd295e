//! The agent's cgroup stats as containerd's metrics (`ctr task metrics`, the CRI's
//! container stats): cgroups v1 or v2 `Metrics`, matching the host's cgroup layout.

use berth_agent_protocol::Stats;
use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;

use crate::error::{Result, ShimError};

fn host_is_cgroup_v2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

pub fn to_any(s: &Stats) -> Result<Any> {
    let msg: Box<dyn containerd_shim_protos::protobuf::MessageDyn> = if host_is_cgroup_v2() {
        Box::new(v2_metrics(s))
    } else {
        Box::new(v1_metrics(s))
    };
    containerd_shim::util::convert_to_any(msg).map_err(ShimError::internal)
}

fn v1_metrics(s: &Stats) -> v1::Metrics {
    v1::Metrics {
        pids: MessageField::some(v1::PidsStat {
            current: s.pids_current,
            limit: s.pids_limit,
            ..Default::default()
        }),
        cpu: MessageField::some(v1::CPUStat {
            usage: MessageField::some(v1::CPUUsage {
                total: s.cpu_usage_ns,
                kernel: s.cpu_system_ns,
                user: s.cpu_user_ns,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(v1::MemoryStat {
            cache: s.memory_cache,
            usage: MessageField::some(v1::MemoryEntry {
                limit: s.memory_limit,
                usage: s.memory_usage,
                max: s.memory_max_usage,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn v2_metrics(s: &Stats) -> v2::Metrics {
    v2::Metrics {
        pids: MessageField::some(v2::PidsStat {
            current: s.pids_current,
            limit: s.pids_limit,
            ..Default::default()
        }),
        cpu: MessageField::some(v2::CPUStat {
            usage_usec: s.cpu_usage_ns / 1000,
            user_usec: s.cpu_user_ns / 1000,
            system_usec: s.cpu_system_ns / 1000,
            ..Default::default()
        }),
        memory: MessageField::some(v2::MemoryStat {
            usage: s.memory_usage,
            usage_limit: s.memory_limit,
            max_usage: s.memory_max_usage,
            file: s.memory_cache,
            ..Default::default()
        }),
        ..Default::default()
    }
}
