//! Launching a container process: the agent forks a child that enters (or creates) the
//! container's namespaces, sets up the filesystem, stdio, credentials, capabilities and seccomp,
//! then execs. A SEQPACKET socket pair synchronises them:
//! agent -> child `G` (the child is in its cgroup, go on); child -> agent `P`+fd (pty master),
//! `E`+code+message (setup or exec failed; the child then exits with `code`), or EOF (exec'd).
use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use berth_agent_protocol::{CgroupNamespace, ContainerSpec, NetworkSpec, ProcessSpec};
use nix::{
    sched::{setns, unshare, CloneFlags},
    sys::socket::{socketpair, AddressFamily, SockFlag, SockType},
    unistd::{fork, ForkResult},
};

use crate::{capabilities, cgroups::Cgroup, namespaces, rootfs, tty, user, userns};

/// Docker's default PATH, used when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub enum Target<'a> {
    /// The container's main process: new pid/mnt/uts/ipc(/net) namespaces and the rootfs.
    Init {
        etc_files: &'a [(PathBuf, &'static str)],
    },
    /// An extra process joining the namespaces of the running init (`init_pid`).
    Exec { init_pid: i32 },
}

pub struct Launch<'a> {
    pub target: Target<'a>,
    pub container: &'a ContainerSpec,
    pub process: &'a ProcessSpec,
    pub caps: u64,
    pub seccomp: bool,
    pub no_new_privs: bool,
    pub tiny_init: bool,
    pub exec_dir: &'a Path,
    pub own_pidns: &'a File,
    pub cgroup: &'a Cgroup,
}

/// The agent's ends of the process's stdio.
pub enum ParentStdio {
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Tty {
        master: OwnedFd,
    },
}

pub struct Launched {
    pub pid: i32,
    pub stdio: ParentStdio,
}

pub use crate::exec::LaunchError;
use crate::exec::{exec, find_executable};

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(crate::util::errno_io)
}

/// Forks and sets up the process; returns once it has exec'd (or failed to).
/// Blocks the agent for the child's setup time (milliseconds).
pub fn launch(l: &Launch) -> Result<Launched, LaunchError> {
    let (psock, csock) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| LaunchError::setup(format!("socketpair: {e}")))?;
    // (child ends, parent ends)
    let mut child_fds: Option<[OwnedFd; 3]> = None;
    let mut parent_stdio = None;
    if !l.process.tty {
        let (in_r, in_w) = if l.process.open_stdin {
            let (r, w) = pipe().map_err(LaunchError::setup)?;
            (r, Some(w))
        } else {
            (
                File::open("/dev/null").map_err(LaunchError::setup)?.into(),
                None,
            )
        };
        let (out_r, out_w) = pipe().map_err(LaunchError::setup)?;
        let (err_r, err_w) = pipe().map_err(LaunchError::setup)?;
        child_fds = Some([in_r, out_w, err_w]);
        parent_stdio = Some(ParentStdio::Pipes {
            stdin: in_w,
            stdout: out_r,
            stderr: err_r,
        });
    }

    match &l.target {
        // `--pid host`: the container's processes live in the agent's pid namespace.
        Target::Init { .. } if l.container.host_namespaces.pid => {}
        // `--pid container:<id>`: the init is born in the donor's pid namespace.
        Target::Init { .. } => match &l.container.join_namespaces.pid {
            Some(path) => namespaces::join_path(path, CloneFlags::CLONE_NEWPID)
                .map_err(|e| LaunchError::setup(format!("joining pid namespace: {e}")))?,
            None => unshare(CloneFlags::CLONE_NEWPID)
                .map_err(|e| LaunchError::setup(format!("unshare pid ns: {e}")))?,
        },
        Target::Exec { init_pid } => {
            let ns = File::open(format!("/proc/{init_pid}/ns/pid"))
                .map_err(|e| LaunchError::setup(format!("container pid ns: {e}")))?;
            setns(&ns, CloneFlags::CLONE_NEWPID)
                .map_err(|e| LaunchError::setup(format!("setns pid: {e}")))?;
        }
    }
    // SAFETY: the agent runs a single-threaded runtime, so the child may allocate; it never
    // returns into the runtime (it execs or _exits).
    let forked = unsafe { fork() };
    if let Ok(ForkResult::Child) = forked {
        drop(psock);
        drop(parent_stdio);
        child_main(l, csock, child_fds);
    }
    // Later children of the agent must be born in its own pid namespace again.
    let restore = setns(l.own_pidns, CloneFlags::CLONE_NEWPID);
    let child = match forked {
        Ok(ForkResult::Parent { child }) => child,
        Ok(ForkResult::Child) => unreachable!(),
        Err(e) => return Err(LaunchError::setup(format!("fork: {e}"))),
    };
    if let Err(e) = restore {
        tracing::error!("cannot return to the agent's pid namespace: {e}");
    }
    drop(csock);
    drop(child_fds);
    let pid = child.as_raw();
    let kill_child = || {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    };
    if let Err(e) = l.cgroup.add_pid(pid) {
        kill_child();
        return Err(LaunchError::setup(format!("joining cgroup: {e}")));
    }
    // A child stuck in setup (e.g. a hung mount) must not wedge the agent forever.
    let _ = nix::sys::socket::setsockopt(
        &psock,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(60, 0),
    );
    if let Err(e) = tty::send_msg(&psock, b"G", None) {
        kill_child();
        return Err(LaunchError::setup(format!("starting child: {e}")));
    }
    let mut master = None;
    loop {
        let (msg, fd) = tty::recv_msg(&psock).map_err(|e| {
            kill_child();
            LaunchError::setup(format!("child setup channel: {e}"))
        })?;
        match msg.first() {
            None => break,
            Some(b'P') => master = fd,
            Some(b'E') if msg.len() >= 5 => {
                let code = i32::from_be_bytes(msg[1..5].try_into().expect("4 bytes"));
                return Err(LaunchError {
                    code,
                    message: String::from_utf8_lossy(&msg[5..]).into_owned(),
                });
            }
            Some(_) => {
                kill_child();
                return Err(LaunchError::setup("bad message from child"));
            }
        }
    }
    let stdio = match parent_stdio {
        Some(s) => s,
        None => ParentStdio::Tty {
            master: master.ok_or_else(|| LaunchError::setup("child sent no pty"))?,
        },
    };
    Ok(Launched { pid, stdio })
}

fn child_main(l: &Launch, sock: OwnedFd, stdio: Option<[OwnedFd; 3]>) -> ! {
    let err = match child_setup(l, &sock, stdio) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&err.code.to_be_bytes());
    msg.extend_from_slice(err.message.as_bytes());
    let _ = tty::send_msg(&sock, &msg, None);
    // SAFETY: terminating the forked child without running the parent's destructors.
    unsafe { libc::_exit(err.code) }
}

fn prctl(op: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: integer-only prctl.
    if unsafe { libc::prctl(op, arg, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

enum Never {}

fn child_setup(
    l: &Launch,
    sock: &OwnedFd,
    stdio: Option<[OwnedFd; 3]>,
) -> Result<Never, LaunchError> {
    let step = |what: &'static str| move |e: io::Error| LaunchError::setup(format!("{what}: {e}"));
    // Wait until the agent has put us in the cgroup.
    let (go, _) = tty::recv_msg(sock).map_err(step("waiting for agent"))?;
    if go.first() != Some(&b'G') {
        return Err(LaunchError::setup("agent went away during setup"));
    }
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong).map_err(step("pdeathsig"))?;
    let spec = l.container;
    // `--userns-remap`: the user namespace is entered last, after every step that needs
    // the agent's privileges (see userns.rs).
    let userns: Option<OwnedFd> = match &l.target {
        Target::Init { etc_files } => {
            let userns = match &spec.userns {
                Some(maps) => Some(userns::create(maps).map_err(step("user namespace"))?),
                None => None,
            };
            let host = spec.host_namespaces;
            let mut flags = CloneFlags::CLONE_NEWNS;
            if !host.uts {
                flags |= CloneFlags::CLONE_NEWUTS;
            }
            let join_ipc = spec.join_namespaces.ipc.as_deref();
            // `--ipc container:<id>` shares the donor's POSIX shared memory too, as dockerd
            // does: its /dev/shm, taken from the donor's mount namespace (next to the
            // `/proc/<pid>/ns/ipc` the host named) while ours is still the agent's.
            let donor_shm = match join_ipc.and_then(|p| p.parent()) {
                Some(ns_dir) => Some(
                    namespaces::clone_tree_from(&ns_dir.join("mnt"), "/dev/shm")
                        .map_err(step("taking the IPC donor's /dev/shm"))?,
                ),
                None => None,
            };
            if !host.ipc && join_ipc.is_none() {
                flags |= CloneFlags::CLONE_NEWIPC;
            }
            if matches!(spec.network, NetworkSpec::Isolated) {
                flags |= CloneFlags::CLONE_NEWNET;
            }
            // We are in the container's cgroup already (the agent said `G`), so a new cgroup
            // namespace is rooted there.
            if spec.cgroupns == CgroupNamespace::Private {
                flags |= CloneFlags::CLONE_NEWCGROUP;
            }
            unshare(flags).map_err(|e| LaunchError::setup(format!("unshare: {e}")))?;
            if let Some(path) = join_ipc {
                namespaces::join_path(path, CloneFlags::CLONE_NEWIPC)
                    .map_err(step("joining IPC namespace"))?;
            }
            if let NetworkSpec::Join { path } = &spec.network {
                namespaces::join_path(path, CloneFlags::CLONE_NEWNET)
                    .map_err(step("joining network namespace"))?;
            }
            if matches!(spec.network, NetworkSpec::Isolated) {
                namespaces::loopback_up().map_err(step("loopback up"))?;
            }
            // Never rename the host: with `--uts host` the names stay the host's.
            if !spec.hostname.is_empty() && !host.uts {
                nix::unistd::sethostname(&spec.hostname)
                    .map_err(|e| LaunchError::setup(format!("sethostname: {e}")))?;
            }
            if !spec.domainname.is_empty() && !host.uts {
                // SAFETY: pointer/len of a live string.
                unsafe {
                    libc::setdomainname(spec.domainname.as_ptr().cast(), spec.domainname.len())
                };
            }
            rootfs::setup(
                spec,
                l.exec_dir,
                etc_files,
                donor_shm,
                l.cgroup,
                userns.as_ref(),
            )
            .map_err(step("rootfs"))?;
            userns.map(|u| u.fd)
        }
        Target::Exec { init_pid } => {
            // Opened while /proc is still the agent's.
            let user = match spec.userns {
                Some(_) => Some(
                    File::open(format!("/proc/{init_pid}/ns/user"))
                        .map(OwnedFd::from)
                        .map_err(step("container user namespace"))?,
                ),
                None => None,
            };
            namespaces::join_all(*init_pid).map_err(step("joining container namespaces"))?;
            user
        }
    };
    // Raising a hard limit or lowering the OOM score needs CAP_SYS_RESOURCE in the
    // agent's user namespace: before the container's.
    crate::limits::apply_ulimits(&spec.ulimits).map_err(step("ulimits"))?;
    crate::limits::apply_oom_score_adj(spec.oom_score_adj).map_err(step("oom_score_adj"))?;
    if let Some(ns) = &userns {
        userns::enter(ns).map_err(step("entering user namespace"))?;
    }

    let p = l.process;
    match stdio {
        Some([i, o, e]) => {
            // SAFETY: dup2 onto 0-2 of fds we own; setsid has no preconditions.
            unsafe {
                libc::setsid();
                for (fd, target) in [(&i, 0), (&o, 1), (&e, 2)] {
                    if libc::dup2(fd.as_raw_fd(), target) < 0 {
                        return Err(LaunchError::setup(format!(
                            "dup2: {}",
                            io::Error::last_os_error()
                        )));
                    }
                }
            }
        }
        None => {
            let (master, slave) = tty::open_pty().map_err(step("allocating pty"))?;
            if let Some((rows, cols)) = p.console_size.filter(|(r, c)| *r > 0 && *c > 0) {
                tty::set_winsize(slave.as_raw_fd(), rows, cols).map_err(step("tty size"))?;
            }
            tty::send_msg(sock, b"P", Some(master.as_raw_fd())).map_err(step("sending pty"))?;
            drop(master);
            tty::make_controlling(&slave).map_err(step("controlling tty"))?;
        }
    }
    // Everything except 0-2 and the setup socket (already CLOEXEC) must not reach the process.
    // SAFETY: marks fds CLOEXEC; no memory is touched.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            4u32, /* CLOSE_RANGE_CLOEXEC */
        )
    };

    let cwd = if p.cwd.is_empty() {
        "/"
    } else {
        p.cwd.as_str()
    };
    if matches!(l.target, Target::Init { .. }) {
        let _ = std::fs::create_dir_all(cwd);
    }
    std::env::set_current_dir(cwd).map_err(|e| {
        LaunchError::setup(format!(
            "chdir to cwd ({cwd:?}) set in config.json failed: {e}"
        ))
    })?;
    let u =
        user::resolve(Path::new("/"), &p.user, &p.additional_groups).map_err(LaunchError::setup)?;
    let mut env = p.env.clone();
    let has = |env: &[String], k: &str| {
        env.iter()
            .any(|e| e.split_once('=').map(|(ek, _)| ek == k).unwrap_or(false))
    };
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={}", u.home));
    }
    let path_env = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let cmd = p
        .args
        .first()
        .ok_or_else(|| LaunchError::setup("no command specified"))?;
    let exe = find_executable(cmd, &path_env)?;
    let argv: Vec<CString> = p
        .args
        .iter()
        .map(|a| CString::new(a.as_str()).unwrap_or_default())
        .collect();
    let envp: Vec<CString> = env
        .iter()
        .filter_map(|e| CString::new(e.as_str()).ok())
        .collect();

    capabilities::apply_bounding(l.caps).map_err(step("capabilities"))?;
    if l.no_new_privs {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(step("no_new_privs"))?;
    }
    if l.seccomp {
        let has_cap =
            |name: &str| capabilities::cap_number(name).is_some_and(|n| l.caps & (1u64 << n) != 0);
        if let Some(filter) = berth_seccomp::filter_for(&spec.security.seccomp, &has_cap)
            .map_err(|e| LaunchError::setup(format!("seccomp: {e}")))?
        {
            berth_seccomp::install(&filter).map_err(step("seccomp"))?;
        }
    }
    let groups: Vec<nix::unistd::Gid> = u
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| LaunchError::setup(format!("setgroups: {e}")))?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(u.gid))
        .map_err(|e| LaunchError::setup(format!("setgid: {e}")))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(u.uid))
        .map_err(|e| LaunchError::setup(format!("setuid: {e}")))?;
    // Changing credentials clears the parent-death signal.
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong).map_err(step("pdeathsig"))?;

    if l.tiny_init {
        crate::init::run(sock, &exe, &argv, &envp, cmd);
    }
    Err(exec(&exe, &argv, &envp, cmd))
}
