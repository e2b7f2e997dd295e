//! Record → agent `ContainerSpec`: everything the agent needs, resolved on the host.

use berth_agent_protocol::{
    ContainerSpec, DeviceSpec, Mount, MountKind, NetworkSpec, ProcessSpec, Resources, SeccompMode,
    SecuritySpec, Ulimit,
};

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
                _ => {
                    return Err(Error::invalid(
                        "custom seccomp profiles are not supported: use the default or seccomp=unconfined",
                    ))
                }
            },
            "no-new-privileges" => nnp = v.is_empty() || v == "true",
            // LSM labels have no meaning here (no AppArmor/SELinux policy is loaded).
            "apparmor" | "label" | "systempaths" => {}
            other => return Err(Error::invalid(format!("invalid --security-opt: \"{other}\""))),
        }
    }
    Ok((seccomp, nnp))
}

fn hosts_file(hostname: &str, extra: &[String]) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for h in extra {
        // --add-host name:ip
        if let Some((name, ip)) = h.rsplit_once(':').or_else(|| h.split_once('=')) {
            s.push_str(&format!("{ip}\t{name}\n"));
        }
    }
    s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    s
}

/// The host's resolv.conf minus loopback nameservers (unreachable from the
/// container's network namespace), as Docker does.
fn resolv_conf(dns: &[String], search: &[String], options: &[String]) -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out = String::new();
    if dns.is_empty() {
        for l in host.lines() {
            let t = l.trim();
            if t.starts_with("nameserver") && (t.contains(" 127.") || t.contains(" ::1")) {
                continue;
            }
            if !search.is_empty() && t.starts_with("search") {
                continue;
            }
            out.push_str(l);
            out.push('\n');
        }
    } else {
        for d in dns {
            out.push_str(&format!("nameserver {d}\n"));
        }
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
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
            });
        }
        let network = match hc.network_mode.as_deref().unwrap_or("default") {
            "host" => NetworkSpec::Host,
            // bridge networking arrives with the network driver plugin: until then
            // containers get a private namespace with loopback only.
            _ => NetworkSpec::Isolated,
        };
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
            etc_hosts: Some(hosts_file(
                &hostname,
                &hc.extra_hosts.clone().unwrap_or_default(),
            )),
            etc_resolv_conf: Some(resolv_conf(
                &hc.dns.clone().unwrap_or_default(),
                &hc.dns_search.clone().unwrap_or_default(),
                &hc.dns_options.clone().unwrap_or_default(),
            )),
            etc_hostname: Some(format!("{hostname}\n")),
            mounts,
            network,
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
        assert!(parse_security_opts(&["seccomp={\"x\":1}".into()]).is_err());
        assert!(parse_security_opts(&["bogus=1".into()]).is_err());
    }

    #[test]
    fn hosts_has_hostname() {
        let h = hosts_file("abc", &["db:10.0.0.2".into()]);
        assert!(h.contains("10.0.0.2\tdb\n"));
        assert!(h.ends_with("127.0.1.1\tabc\n"));
    }
}
