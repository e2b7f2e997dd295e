//! Record → agent `ContainerSpec`: everything the agent needs, resolved on the host.

use berth_agent_protocol::{
    CgroupNamespace, ContainerSpec, DeviceSpec, Mount, MountKind, NetworkSpec, ProcessSpec,
    Resources, SeccompMode, SecuritySpec, Ulimit,
};

use bollard_stubs::models::HostConfigCgroupnsModeEnum;

use super::record::ContainerRecord;
use super::Containers;
use crate::{Error, Result};

/// Docker's `SecurityOpt` entries we understand.
pub fn parse_security_opts(opts: &[String]) -> Result<(SeccompMode, bool)> {
    let mut seccomp = SeccompMode::Default;
    let mut nnp = false;
    for o in opts {
        let (k, v) = o.split_once(['=', ':']).unwrap_or((o.as_str(), ""));
        match k {
            "seccomp" => match v {
                "unconfined" => seccomp = SeccompMode::Unconfined,
                "" | "default" | "builtin" => seccomp = SeccompMode::Default,
                // The docker CLI sends the profile file's JSON text.
                profile => seccomp = berth_container_create::seccomp_profile::parse(profile)?,
            },
            "no-new-privileges" => nnp = v.is_empty() || v == "true",
            // LSM labels have no meaning here (no AppArmor/SELinux policy is loaded).
            "apparmor" | "label" | "systempaths" => {}
            other => {
                return Err(Error::invalid(format!(
                    "invalid --security-opt: \"{other}\""
                )))
            }
        }
    }
    Ok((seccomp, nnp))
}

impl Containers {
    pub(crate) fn build_spec(&self, rec: &ContainerRecord) -> Result<ContainerSpec> {
        let hc = &rec.host_config;
        let cfg = &rec.config;
        let (seccomp, no_new_privileges) =
            parse_security_opts(&hc.security_opt.clone().unwrap_or_default())?;
        let mut args = vec![rec.path.clone()];
        args.extend(rec.args.iter().cloned());
        let hostname = cfg.hostname.clone().unwrap_or_default();
        let console = hc
            .console_size
            .as_ref()
            .filter(|v| v.len() == 2 && v[0] > 0 && v[1] > 0)
            .map(|v| (v[0] as u16, v[1] as u16));
        let mut mounts = Vec::new();
        let backend = self.backend(rec);
        for (i, m) in rec.mounts.iter().enumerate() {
            let kind = match m.kind.as_str() {
                "bind" | "volume" => MountKind::Bind {
                    source: backend.mount_source(i, m),
                },
                "tmpfs" => MountKind::Tmpfs {
                    options: m.options.clone(),
                },
                other => return Err(Error::internal(format!("unknown mount kind {other}"))),
            };
            if m.kind == "volume" && m.source.is_empty() {
                return Err(Error::internal(format!(
                    "volume {} has no mountpoint",
                    m.name
                )));
            }
            mounts.push(Mount {
                kind,
                destination: m.destination.clone(),
                readonly: !m.rw,
                // Volumes are plain directories to the agent: only binds propagate.
                propagation: if m.kind == "bind" {
                    m.propagation.clone()
                } else {
                    String::new()
                },
                volume: m.kind == "volume" && m.driver == "local",
            });
        }
        let memory_swap = match (hc.memory, hc.memory_swap) {
            (Some(m), None | Some(0)) if m > 0 => Some(m.saturating_mul(2)),
            (_, s) => s,
        };
        let mut spec = ContainerSpec {
            id: rec.id.clone(),
            rootfs: self.rootfs_for(rec)?,
            readonly_rootfs: hc.readonly_rootfs.unwrap_or(false),
            process: ProcessSpec {
                args,
                env: cfg.env.clone().unwrap_or_default(),
                cwd: cfg.working_dir.clone().unwrap_or_default(),
                user: cfg.user.clone().unwrap_or_default(),
                additional_groups: hc.group_add.clone().unwrap_or_default(),
                tty: cfg.tty.unwrap_or(false),
                open_stdin: cfg.open_stdin.unwrap_or(false),
                console_size: console,
            },
            hostname: hostname.clone(),
            domainname: cfg.domainname.clone().unwrap_or_default(),
            // Filled by `network_sandbox` at start, with the network.
            etc_hosts: None,
            etc_resolv_conf: None,
            etc_hostname: None,
            mounts,
            network: NetworkSpec::Isolated,
            security: SecuritySpec {
                privileged: hc.privileged.unwrap_or(false),
                cap_add: hc.cap_add.clone().unwrap_or_default(),
                cap_drop: hc.cap_drop.clone().unwrap_or_default(),
                seccomp,
                no_new_privileges,
            },
            resources: Resources {
                memory: hc.memory.filter(|m| *m > 0),
                memory_swap: memory_swap.filter(|s| *s != 0),
                memory_reservation: hc.memory_reservation.filter(|m| *m > 0),
                nano_cpus: hc.nano_cpus.filter(|n| *n > 0),
                cpu_quota: hc.cpu_quota.filter(|q| *q > 0),
                cpu_period: hc.cpu_period.filter(|p| *p > 0).map(|p| p as u64),
                cpu_shares: hc.cpu_shares.filter(|s| *s > 0).map(|s| s as u64),
                cpuset_cpus: hc.cpuset_cpus.clone().filter(|s| !s.is_empty()),
                cpuset_mems: hc.cpuset_mems.clone().filter(|s| !s.is_empty()),
                pids_limit: hc.pids_limit.filter(|p| *p > 0),
                oom_kill_disable: hc.oom_kill_disable.unwrap_or(false),
                blkio_weight: hc.blkio_weight.filter(|w| *w > 0),
            },
            cgroup_parent: hc.cgroup_parent.clone().filter(|s| !s.is_empty()),
            init: hc.init.unwrap_or(false),
            ulimits: hc
                .ulimits
                .iter()
                .flatten()
                .map(|u| Ulimit {
                    name: u.name.clone().unwrap_or_default(),
                    soft: u.soft.unwrap_or(0),
                    hard: u.hard.unwrap_or(0),
                })
                .collect(),
            sysctls: hc
                .sysctls
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            oom_score_adj: hc.oom_score_adj.filter(|v| *v != 0).map(|v| v as i32),
            shm_size: hc.shm_size.filter(|s| *s > 0).map(|s| s as u64),
            devices: hc
                .devices
                .iter()
                .flatten()
                .map(|d| {
                    let host = d.path_on_host.clone().unwrap_or_default();
                    DeviceSpec {
                        path_in_container: d
                            .path_in_container
                            .clone()
                            .filter(|p| !p.is_empty())
                            .unwrap_or_else(|| host.clone())
                            .into(),
                        path_on_host: host.into(),
                        permissions: d.cgroup_permissions.clone().unwrap_or_else(|| "rwm".into()),
                    }
                })
                .collect(),
            host_namespaces: super::validate::host_namespaces(hc)?,
            // The donors' namespaces are resolved at start (`join_namespaces`).
            join_namespaces: Default::default(),
            // Containers recorded before `--cgroupns` existed stay in the agent's, as they were.
            cgroupns: match hc.cgroupns_mode {
                Some(HostConfigCgroupnsModeEnum::PRIVATE) => CgroupNamespace::Private,
                _ => CgroupNamespace::Host,
            },
            userns: self.userns_for(rec),
        };
        self.backend(rec).map_resources(&mut spec.resources);
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_opts() {
        assert_eq!(
            parse_security_opts(&["seccomp=unconfined".into()]).unwrap(),
            (SeccompMode::Unconfined, false)
        );
        assert_eq!(
            parse_security_opts(&["no-new-privileges".into()]).unwrap(),
            (SeccompMode::Default, true)
        );
        assert!(
            parse_security_opts(&["no-new-privileges:true".into()])
                .unwrap()
                .1
        );
        assert!(parse_security_opts(&["seccomp={\"x\":1".into()]).is_err());
        let (mode, _) = parse_security_opts(&[
            r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#.into(),
        ])
        .unwrap();
        assert!(matches!(mode, SeccompMode::Profile(ref p) if p.rules.len() == 1));
        assert!(parse_security_opts(&["bogus=1".into()]).is_err());
    }
}
