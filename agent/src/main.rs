//! berth-agent: runs one container.
//!
//! `berth-agent serve --socket PATH --exec-dir DIR [--id ID] [--daemonize] [--log FILE]`
//! — process mode: listens on a unix socket; with `--daemonize` it detaches (new session, stdio
//! to the log) and prints the detached agent's pid once the socket is listening.
//!
//! `berth-agent guest [--vsock-port N | --unix PATH] [--exec-dir DIR] [--notify-stdout]` (or no
//! arguments as PID 1) — microVM mode: mounts the kernel filesystems and serves the host over
//! vsock. Not as PID 1 it serves one more container of the VM's pod (`pod_member.rs`).
mod capabilities;
mod cgroups;
mod exec;
mod export;
mod guest;
mod guest_net;
mod helpers;
mod init;
mod limits;
mod namespaces;
mod pod_member;
mod process;
mod rootfs;
mod server;
mod state;
mod stdio;
mod top;
mod tty;
mod user;
mod userns;
mod util;
mod vsock;

use std::{
    os::{fd::AsRawFd, unix::net::UnixListener},
    path::PathBuf,
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use tracing::{error, info, warn};

use crate::state::Agent;

struct ServeArgs {
    socket: PathBuf,
    exec_dir: PathBuf,
    id: String,
    daemonize: bool,
    log: Option<PathBuf>,
}

fn parse_serve(args: &[String]) -> Result<ServeArgs> {
    let mut socket = None;
    let mut exec_dir = None;
    let mut id = String::new();
    let mut daemonize = false;
    let mut log = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--socket" => socket = Some(PathBuf::from(val()?)),
            "--exec-dir" => exec_dir = Some(PathBuf::from(val()?)),
            "--id" => id = val()?,
            "--log" => log = Some(PathBuf::from(val()?)),
            "--daemonize" => daemonize = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    let socket = socket.context("--socket is required")?;
    let exec_dir = exec_dir
        .or_else(|| socket.parent().map(PathBuf::from))
        .context("--exec-dir is required")?;
    Ok(ServeArgs {
        socket,
        exec_dir,
        id,
        daemonize,
        log,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("serve") => parse_serve(&args[1..]).and_then(serve),
        Some("guest") => guest_main(&args[1..]),
        // The chrooted archive child of `docker cp`/`export` in a microVM (export.rs).
        Some("archive") => std::process::exit(berth_layer::archive::child_main(&args[1..])),
        None if std::process::id() == 1 => guest_main(&[]),
        Some("--version") => {
            println!("berth-agent {} (protocol {})", env!("CARGO_PKG_VERSION"), berth_agent_protocol::PROTOCOL_VERSION);
            Ok(())
        }
        _ => Err(anyhow::anyhow!("usage: berth-agent serve --socket PATH --exec-dir DIR [--id ID] [--daemonize] [--log FILE]")),
    };
    if let Err(e) = res {
        eprintln!("berth-agent: {e:#}");
        std::process::exit(1);
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    // Nothing the launcher leaked may stay open in the agent (and later in containers).
    // SAFETY: closes fds >= 3, none of which we own yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    std::fs::create_dir_all(&args.exec_dir)
        .with_context(|| format!("creating {}", args.exec_dir.display()))?;
    let _ = std::fs::remove_file(&args.socket);
    let listener = UnixListener::bind(&args.socket)
        .with_context(|| format!("binding {}", args.socket.display()))?;
    if args.daemonize {
        daemonize(args.log.as_deref())?;
    }
    init_logging();
    info!(id = %args.id, socket = %args.socket.display(), "agent listening");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let socket = args.socket.clone();
    let res = rt.block_on(async {
        listener.set_nonblocking(true)?;
        let listener = Listener::Unix(tokio::net::UnixListener::from_std(listener)?);
        run(args.exec_dir.clone(), listener, None).await
    });
    let _ = std::fs::remove_file(&socket);
    res
}

enum Listener {
    Unix(tokio::net::UnixListener),
    Vsock(vsock::VsockListener),
}

fn guest_main(args: &[String]) -> Result<()> {
    let pid1 = std::process::id() == 1;
    if pid1 {
        if let Err(e) = guest::leave_initramfs() {
            // Logging is not up yet; the console is stderr.
            eprintln!("berth-agent: cannot leave the initramfs (containers will not start): {e}");
        }
        guest::mount_kernel_filesystems();
    }
    let mut port = None;
    let mut unix = None;
    let mut exec_dir = PathBuf::from("/run/berth");
    let mut notify = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--vsock-port" => port = Some(val()?.parse().context("--vsock-port")?),
            "--unix" => unix = Some(PathBuf::from(val()?)),
            "--exec-dir" => exec_dir = PathBuf::from(val()?),
            pod_member::NOTIFY_ARG => notify = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    init_logging();
    if pid1 {
        // After logging is up, so a disk that cannot be mounted shows on the console.
        guest::mount_disks_from_cmdline();
        guest::mount_shares_from_cmdline();
        guest_net::configure_from_cmdline();
    }
    std::fs::create_dir_all(&exec_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let res = rt.block_on(async {
        let mut exports = None;
        let listener = match unix {
            Some(path) => {
                let _ = std::fs::remove_file(&path);
                Listener::Unix(tokio::net::UnixListener::bind(&path)?)
            }
            None => {
                let port = port.unwrap_or_else(guest::vsock_port_from_cmdline);
                let control = vsock::VsockListener::bind(port).context("vsock listen")?;
                // One export channel per VM: the first agent's (pod members' files are
                // their host-side rootfs).
                if pid1 {
                    let export_port = berth_agent_protocol::export::EXPORT_PORT;
                    exports =
                        Some(vsock::VsockListener::bind(export_port).context("vsock listen")?);
                }
                info!(port, "guest agent listening on vsock");
                if notify {
                    pod_member::notify_listening();
                }
                Listener::Vsock(control)
            }
        };
        run(exec_dir, listener, exports).await
    });
    if pid1 {
        if let Err(e) = &res {
            error!("guest agent failed: {e:#}");
        }
        guest::power_off();
    }
    res
}

/// Detaches from the launcher: the parent prints the child's pid (the socket is already
/// listening) and exits; the child starts a new session with stdio on the log.
fn daemonize(log: Option<&std::path::Path>) -> Result<()> {
    use nix::unistd::{fork, setsid, ForkResult};
    // SAFETY: still single-threaded (no runtime yet).
    match unsafe { fork() }.context("fork")? {
        ForkResult::Parent { child } => {
            println!("{child}");
            std::process::exit(0);
        }
        ForkResult::Child => {
            setsid().context("setsid")?;
            let null = std::fs::File::open("/dev/null")?;
            let out = match log {
                Some(p) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
                None => std::fs::OpenOptions::new().write(true).open("/dev/null")?,
            };
            // SAFETY: dup2 onto stdio of fds we own.
            unsafe {
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(out.as_raw_fd(), 1);
                libc::dup2(out.as_raw_fd(), 2);
            }
            std::env::set_current_dir("/")?;
            Ok(())
        }
    }
}

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

async fn run(
    exec_dir: PathBuf,
    listener: Listener,
    exports: Option<vsock::VsockListener>,
) -> Result<()> {
    let agent = Agent::new(exec_dir)?;
    if let Some(l) = exports {
        tokio::spawn(export::serve(l, agent.clone()));
    }
    // Register for SIGCHLD before any child can exist.
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    let reaper_agent = agent.clone();
    tokio::spawn(async move {
        loop {
            reap(&reaper_agent);
            if sigchld.recv().await.is_none() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            res = accept(&listener, &agent) => {
                if let Err(e) = res {
                    error!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
            _ = agent.shutdown.notified() => break,
        }
    }
    // Give the Shutdown reply a moment to be written (the client also treats EOF as done).
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    info!("agent shutting down");
    Ok(())
}

async fn accept(listener: &Listener, agent: &Arc<Agent>) -> std::io::Result<()> {
    match listener {
        Listener::Unix(l) => {
            let (stream, _) = l.accept().await?;
            // Only a peer with the agent's own uid (root, the daemon) may drive it. The
            // socket's directory is 0700 too; this holds even if that is ever loosened.
            let me = nix::unistd::geteuid().as_raw();
            match stream.peer_cred() {
                Ok(c) if c.uid() == me => {
                    tokio::spawn(server::serve_conn(agent.clone(), stream));
                }
                Ok(c) => warn!(
                    uid = c.uid(),
                    pid = ?c.pid(),
                    "refused a connection from another user"
                ),
                Err(e) => warn!("refused a connection without peer credentials: {e}"),
            }
        }
        Listener::Vsock(l) => {
            let stream = l.accept().await?;
            tokio::spawn(server::serve_conn(agent.clone(), stream));
        }
    }
    Ok(())
}

fn reap(agent: &Arc<Agent>) {
    loop {
        match waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                if !agent.helpers.reaped(pid.as_raw(), code) {
                    agent.on_exit(pid.as_raw(), code, None)
                }
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                let code = 128 + sig as i32;
                if !agent.helpers.reaped(pid.as_raw(), code) {
                    agent.on_exit(pid.as_raw(), code, Some(sig as i32))
                }
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}
