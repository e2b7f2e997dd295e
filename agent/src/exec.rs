//! The last step of every container process: the state runc gives a process before
//! execve (default signal dispositions, empty mask), the `PATH` lookup and execve itself,
//! with Docker's exit codes and messages. Shared by the launcher and the tiny init.
use std::{ffi::CString, io, os::unix::fs::PermissionsExt};

#[derive(Debug)]
pub struct LaunchError {
    /// Docker's exit code for the failure: 127 not found, 126 not executable, 128 otherwise.
    pub code: i32,
    pub message: String,
}

impl LaunchError {
    pub(crate) fn setup(e: impl std::fmt::Display) -> Self {
        LaunchError {
            code: 128,
            message: e.to_string(),
        }
    }
}

/// Gives the process about to exec the state runc gives it: every signal at its default
/// disposition and nothing blocked. Ignored signals and the mask survive execve, and the
/// agent's own runtime ignores SIGPIPE (Rust's std does) and blocks signals around forks;
/// a container whose `yes | head` cannot die of SIGPIPE spins forever.
pub fn reset_signals() {
    /// The kernel's `struct sigaction` for rt_sigaction(2) on x86_64/aarch64.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: raw rt_sigaction/rt_sigprocmask with valid pointers, in a single-threaded
    // child before execve. The raw syscalls reach 32 and 33 too, which libc's wrappers
    // refuse because libc reserves them for itself; SIGKILL/SIGSTOP just fail (EINVAL).
    unsafe {
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            );
        }
        let empty: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
    }
}

/// execve; returns only on failure, as Docker's error.
pub fn exec(exe: &CString, argv: &[CString], envp: &[CString], cmd: &str) -> LaunchError {
    reset_signals();
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    e.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(exe.as_ptr(), a.as_ptr(), e.as_ptr()) };
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOENT) => LaunchError {
            code: 127,
            message: format!("exec: \"{cmd}\": no such file or directory"),
        },
        Some(libc::EACCES) | Some(libc::EPERM) => LaunchError {
            code: 126,
            message: format!("exec: \"{cmd}\": permission denied"),
        },
        Some(libc::ENOEXEC) => LaunchError {
            code: 126,
            message: format!("exec: \"{cmd}\": exec format error"),
        },
        _ => LaunchError {
            code: 126,
            message: format!("exec: \"{cmd}\": {err}"),
        },
    }
}

/// `exec.LookPath` with Docker's error texts.
pub(crate) fn find_executable(cmd: &str, path_env: &str) -> Result<CString, LaunchError> {
    let to_c = |p: &str| CString::new(p).map_err(|_| LaunchError::setup("command contains NUL"));
    if cmd.contains('/') {
        return match std::fs::metadata(cmd) {
            Ok(m) if m.is_dir() => Err(LaunchError {
                code: 126,
                message: format!("exec: \"{cmd}\": is a directory"),
            }),
            Ok(_) => to_c(cmd),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(LaunchError {
                code: 127,
                message: format!("exec: \"{cmd}\": stat {cmd}: no such file or directory"),
            }),
            Err(_) => Err(LaunchError {
                code: 126,
                message: format!("exec: \"{cmd}\": permission denied"),
            }),
        };
    }
    let mut denied = false;
    for dir in path_env.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = format!("{dir}/{cmd}");
        if let Ok(m) = std::fs::metadata(&cand) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return to_c(&cand);
            }
            if m.is_file() {
                denied = true;
            }
        }
    }
    if denied {
        return Err(LaunchError {
            code: 126,
            message: format!("exec: \"{cmd}\": permission denied"),
        });
    }
    Err(LaunchError {
        code: 127,
        message: format!("exec: \"{cmd}\": executable file not found in $PATH"),
    })
}
