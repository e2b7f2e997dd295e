//! Pods in one microVM: the containers of a pod share the VM their sandbox container booted.
//!
//! The VM's first agent (PID 1) serves the sandbox container. For each further container
//! of the pod the host asks it ([`Request::StartPodMember`]) to start this binary again in
//! guest mode on another vsock port, so every agent still serves exactly one container
//! (its state, cgroups and exit codes stay as simple as in process isolation) and the
//! host talks to each container's agent over a connection of its own. The members' root
//! filesystems come over the pod's virtio-fs share (see the engine's `microvm::pod`).
//!
//! [`Request::StartPodMember`]: berth_agent_protocol::Request::StartPodMember

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use berth_agent_protocol::POD_MEMBER_PORTS;

use crate::helpers::Helpers;

/// What a member prints on its stdout once its vsock port listens.
pub const READY_LINE: &str = "berth-agent pod member listening";

/// The argument that makes a guest-mode agent print [`READY_LINE`] when it listens.
pub const NOTIFY_ARG: &str = "--notify-stdout";

/// Starts a member agent on `port` and returns once it listens (or why it could not).
/// Blocking: run it off the async runtime.
pub fn start(helpers: &Arc<Helpers>, port: u32) -> Result<(), String> {
    if std::process::id() != 1 {
        return Err("only a microVM's first agent starts pod members".into());
    }
    if !POD_MEMBER_PORTS.contains(&port) {
        return Err(format!(
            "vsock port {port} is outside the pod members' range {}..={}",
            POD_MEMBER_PORTS.start(),
            POD_MEMBER_PORTS.end()
        ));
    }
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(["guest", "--vsock-port", &port.to_string()])
        .args(["--exec-dir", &format!("/run/berth/members/{port}")])
        .arg(NOTIFY_ARG)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    // stderr stays the console, where the member's log lines go.
    let mut child = helpers
        .spawn(&mut cmd)
        .map_err(|e| format!("starting the pod member's agent: {e}"))?;
    let out = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    // EOF (the member died before listening, e.g. the port is taken) ends the read too.
    let _ = BufReader::new(out).read_line(&mut line);
    let ready = line.trim_end() == READY_LINE;
    let helpers = helpers.clone();
    // Collect its exit whoever reaps it, so the reaper never takes it for a container's.
    std::thread::spawn(move || {
        let code = helpers.wait(&mut child);
        tracing::info!(port, code, "pod member agent exited");
    });
    if ready {
        Ok(())
    } else {
        Err(format!(
            "the pod member's agent on vsock port {port} exited before listening (see the VM's console)"
        ))
    }
}

/// In the member: after its port listens, say so on stdout (the first agent waits for
/// this line) and point stdout at /dev/null, so a later write cannot hit a closed pipe.
pub fn notify_listening() {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{READY_LINE}");
    let _ = out.flush();
    drop(out);
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 of a descriptor we own onto stdout.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}
