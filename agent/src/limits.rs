//! Per-process limits of a container: `--ulimit` (setrlimit), `--oom-score-adj`, and the
//! namespaced `--sysctl`s. Applied in the forked child, while it still has the privileges
//! to raise hard limits and lower its OOM score (before credentials are dropped).
use std::{collections::BTreeMap, io, path::Path};

use berth_agent_protocol::Ulimit;

/// Docker's ulimit names → the resource (`man setrlimit`).
pub fn resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "locks" => libc::RLIMIT_LOCKS,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "rss" => libc::RLIMIT_RSS,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "stack" => libc::RLIMIT_STACK,
        _ => return None,
    })
}

/// A negative value (Docker's -1) means unlimited.
fn rlim(v: i64) -> libc::rlim_t {
    if v < 0 {
        libc::RLIM_INFINITY
    } else {
        v as libc::rlim_t
    }
}

/// setrlimit(2) for each `--ulimit`, in this (child) process; execve keeps them.
pub fn apply_ulimits(ulimits: &[Ulimit]) -> io::Result<()> {
    for u in ulimits {
        let res = resource(&u.name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid ulimit type: {}", u.name),
            )
        })?;
        let lim = libc::rlimit {
            rlim_cur: rlim(u.soft),
            rlim_max: rlim(u.hard),
        };
        // SAFETY: setrlimit with a valid resource and a live struct.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("setrlimit {}={}:{}: {e}", u.name, u.soft, u.hard),
            ));
        }
    }
    Ok(())
}

/// `/proc/self/oom_score_adj`; inherited by children and kept across execve.
pub fn apply_oom_score_adj(v: Option<i32>) -> io::Result<()> {
    match v {
        Some(v) => std::fs::write("/proc/self/oom_score_adj", v.to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("oom_score_adj {v}: {e}"))),
        None => Ok(()),
    }
}

/// Writes each sysctl under `proc` (the container's /proc, mounted in its namespaces: a
/// `net.*` key then reaches the container's network namespace, `kernel.shm*` its IPC one).
/// Keys were validated by the host; `/` and `..` are refused again here.
pub fn apply_sysctls(proc: &Path, sysctls: &BTreeMap<String, String>) -> io::Result<()> {
    for (k, v) in sysctls {
        let rel = k.replace('.', "/");
        if rel.split('/').any(|c| c.is_empty() || c == "..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid sysctl {k:?}"),
            ));
        }
        let path = proc.join("sys").join(&rel);
        std::fs::write(&path, v)
            .map_err(|e| io::Error::new(e.kind(), format!("sysctl {k}={v}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_unlimited() {
        assert_eq!(resource("nofile"), Some(libc::RLIMIT_NOFILE));
        assert_eq!(resource("bogus"), None);
        assert_eq!(rlim(-1), libc::RLIM_INFINITY);
        assert_eq!(rlim(42), 42);
    }

    #[test]
    fn sysctl_keys_stay_under_proc_sys() {
        // Refused before any file is touched, so the path needs not exist.
        let proc = Path::new("/nonexistent-proc");
        for key in ["net...x", "net/../../etc", "..", ""] {
            let mut m = BTreeMap::new();
            m.insert(key.to_string(), "1".to_string());
            let e = apply_sysctls(proc, &m).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{key}");
        }
    }
}
