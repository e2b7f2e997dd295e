//! The host processes a microVM needs (the VMM, helpers such as `vhost-device-vsock`):
//! spawned detached so they survive a daemon restart (live restore), identified by pid
//! *and* start time so a recycled pid is never signalled, watched through a pidfd.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use crate::{Error, Result};

/// One host process of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmProcess {
    /// What it is (`qemu`, `berth-vmm`, `vhost-device-vsock`), for messages.
    pub role: String,
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot) when it was spawned.
    pub start_time: u64,
}

/// Unprivileged identity for a VM's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmIdentity {
    pub uid: u32,
    pub gid: u32,
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // `rest` starts at field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl VmProcess {
    /// Still the process we spawned (not exited, not a recycled pid; zombies count as gone).
    pub fn alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let zombie = stat
            .rfind(')')
            .and_then(|i| stat.get(i + 2..i + 3))
            .is_some_and(|s| s == "Z" || s == "X");
        !zombie && start_time(self.pid) == Some(self.start_time)
    }

    /// Send `sig` if it is still our process.
    pub fn signal(&self, sig: i32) {
        if self.alive() {
            // SAFETY: kill(2) on a pid verified (by start time) to be the process we spawned.
            unsafe { libc::kill(self.pid as i32, sig) };
        }
    }

    /// Resolves when the process has exited, with a description of how (when it was our
    /// child and could be reaped) or `None` (re-adopted after a daemon restart).
    pub async fn wait_exit(&self) -> Option<String> {
        if !self.alive() {
            return reap(self.pid, &self.role).await;
        }
        // SAFETY: pidfd_open(2) with a valid pid and no flags; the fd is owned below.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid as libc::c_int, 0) };
        if fd >= 0 {
            // SAFETY: a fresh fd returned by pidfd_open.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            if self.alive() {
                // SAFETY: the AsyncFd owns the pidfd for its whole registration.
                let afd =
                    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
                if let Ok(afd) = afd {
                    let _ = afd.readable().await;
                }
            }
        } else {
            while self.alive() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        reap(self.pid, &self.role).await
    }
}

/// Reap our child `pid` if it is one, describing its end. Called once the process is known
/// to have exited; the kernel may take a moment to make it waitable, so retry briefly
/// rather than leave a zombie behind.
async fn reap(pid: u32, role: &str) -> Option<String> {
    for _ in 0..200 {
        let mut status = 0;
        // SAFETY: waitpid(2) on a specific pid; ECHILD when it is not our child.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        if r == pid as i32 {
            return Some(if libc::WIFSIGNALED(status) {
                format!("{role} was killed by signal {}", libc::WTERMSIG(status))
            } else {
                format!("{role} exited with status {}", libc::WEXITSTATUS(status))
            });
        }
        if r < 0 {
            // Not our child (re-adopted after a daemon restart) or already reaped.
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    None
}

/// Spawn `cmd` detached from the daemon: its own session, stdin from /dev/null, stdout and
/// stderr appended to `log`, working directory `cwd`, optionally as an unprivileged
/// `identity`. The directory is entered *before* privileges are dropped, so the process can
/// use relative paths (its sockets) in a dir whose ancestors it could not traverse.
pub fn spawn_detached(
    role: &str,
    mut cmd: Command,
    log: &Path,
    cwd: &Path,
    identity: Option<VmIdentity>,
    cgroups: &[std::path::PathBuf],
) -> Result<VmProcess> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let cwd = std::ffi::CString::new(cwd.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::internal("working directory contains NUL"))?;
    let cgroups: Vec<std::ffi::CString> = cgroups
        .iter()
        .filter_map(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok())
        .collect();
    // SAFETY: only async-signal-safe calls (setsid, open/write/close, chdir, setgroups,
    // setgid, setuid) run
    // between fork and exec, on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::setsid())?;
            // Join the VM's host cgroups before exec (best effort: accounting only).
            for procs in &cgroups {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            check(libc::chdir(cwd.as_ptr()))?;
            if let Some(id) = identity {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(id.gid))?;
                check(libc::setuid(id.uid))?;
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::internal(format!("starting {role}: {e}")))?;
    let pid = child.id();
    // The Child handle is dropped without waiting: `wait_exit` reaps it.
    drop(child);
    let start_time = start_time(pid).ok_or_else(|| {
        Error::internal(format!(
            "{role} (pid {pid}) exited at once; see {}",
            log.display()
        ))
    })?;
    Ok(VmProcess {
        role: role.to_string(),
        pid,
        start_time,
    })
}

/// SIGKILL `procs` and wait (bounded) until each is gone.
pub async fn kill_all(procs: &[VmProcess]) {
    for p in procs {
        p.signal(libc::SIGKILL);
    }
    for p in procs {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), p.wait_exit()).await;
    }
}
