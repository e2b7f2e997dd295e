//! A tiny init (Docker `--init`): PID 1 of the container forks the real process, forwards
//! signals to it, reaps every zombie re-parented to it and exits with the process's status.
use std::{ffi::CString, os::fd::OwnedFd};

use nix::{
    sys::{
        signal::{kill, SigSet, SigmaskHow, Signal},
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::{fork, ForkResult, Pid},
};

use crate::exec::exec;

pub fn run(sock: &OwnedFd, exe: &CString, argv: &[CString], envp: &[CString], cmd: &str) -> ! {
    let all = SigSet::all();
    let mut old = SigSet::empty();
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), Some(&mut old));
    // SAFETY: single-threaded child process.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            let err = exec(exe, argv, envp, cmd);
            let mut msg = vec![b'E'];
            msg.extend_from_slice(&err.code.to_be_bytes());
            msg.extend_from_slice(err.message.as_bytes());
            let _ = crate::tty::send_msg(sock, &msg, None);
            // SAFETY: exiting the forked child.
            unsafe { libc::_exit(err.code) }
        }
        Ok(ForkResult::Parent { child }) => {
            // Our copy must go so the agent sees EOF when the child execs.
            // SAFETY: closing our own fd; it is not used afterwards.
            unsafe { libc::close(std::os::fd::AsRawFd::as_raw_fd(sock)) };
            supervise(child, &all)
        }
        // SAFETY: exiting the forked child.
        Err(_) => unsafe { libc::_exit(128) },
    }
}

fn supervise(child: Pid, all: &SigSet) -> ! {
    loop {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => exit(code),
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => exit(128 + s as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

fn exit(code: i32) -> ! {
    // SAFETY: terminating PID 1 of the container (the kernel then kills the rest).
    unsafe { libc::_exit(code) }
}
