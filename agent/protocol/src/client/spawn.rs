//! Launching a process-mode agent.
use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::AgentClient;
use crate::{ProtocolError, AGENT_SOCKET_NAME};

/// How to launch a process-mode agent.
#[derive(Debug, Clone)]
pub struct SpawnOpts {
    /// Path of the static `berth-agent` binary.
    pub agent_bin: PathBuf,
    /// Per-container directory the agent owns: socket, log, rootfs mountpoint, /etc files.
    pub exec_dir: PathBuf,
    pub container_id: String,
    /// `RUST_LOG`-style filter for the agent's log (`<exec_dir>/agent.log`). Default `info`.
    pub log_filter: Option<String>,
}

impl SpawnOpts {
    pub fn new(
        agent_bin: impl Into<PathBuf>,
        exec_dir: impl Into<PathBuf>,
        container_id: impl Into<String>,
    ) -> Self {
        SpawnOpts {
            agent_bin: agent_bin.into(),
            exec_dir: exec_dir.into(),
            container_id: container_id.into(),
            log_filter: None,
        }
    }
}

/// The agent's socket in `exec_dir`; connect to it with [`AgentClient::connect_unix`] after a
/// daemon restart.
pub fn agent_socket_path(exec_dir: &Path) -> PathBuf {
    exec_dir.join(AGENT_SOCKET_NAME)
}

/// Starts a detached agent (own session, no inherited fds, survives the daemon) and connects.
/// Returns the client and the agent's pid (not a child of the caller: it is re-parented to init).
pub async fn spawn_process_agent(opts: &SpawnOpts) -> Result<(AgentClient, u32), ProtocolError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(&opts.exec_dir)?;
    // Only the daemon's user may reach the agent's socket (and its logs); the agent also
    // checks each peer's credentials.
    std::fs::set_permissions(&opts.exec_dir, std::fs::Permissions::from_mode(0o700))?;
    let sock = agent_socket_path(&opts.exec_dir);
    let mut cmd = tokio::process::Command::new(&opts.agent_bin);
    cmd.arg("serve")
        .arg("--socket")
        .arg(&sock)
        .arg("--exec-dir")
        .arg(&opts.exec_dir)
        .arg("--id")
        .arg(&opts.container_id)
        .arg("--daemonize")
        .arg("--log")
        .arg(opts.exec_dir.join("agent.log"))
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("RUST_LOG", opts.log_filter.as_deref().unwrap_or("info"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| ProtocolError::Spawn(format!("{}: {e}", opts.agent_bin.display())))?;
    // The launcher prints the daemonized agent's pid once its socket is listening, then exits.
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await?;
    let status = child.wait().await?;
    if !status.success() || line.trim().is_empty() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err).await;
        }
        return Err(ProtocolError::Spawn(format!(
            "agent launcher exited with {status}: {}",
            err.trim()
        )));
    }
    let pid: u32 = line
        .trim()
        .parse()
        .map_err(|_| ProtocolError::Spawn(format!("bad pid line {line:?}")))?;
    let client = AgentClient::connect_unix(&sock).await?;
    Ok((client, pid))
}

/// Process mode, after an agent died without `shutdown`: removes the container's (empty) cgroup
/// directories, v1 (`/sys/fs/cgroup/<controller>/<parent>/<id>`) and v2. Its processes died with
/// the agent (parent-death signal), so the directories only need a moment to become removable.
pub async fn remove_orphaned_cgroups(
    cgroup_parent: &str,
    container_id: &str,
) -> Result<(), ProtocolError> {
    let root = Path::new("/sys/fs/cgroup");
    let rel = Path::new(cgroup_parent.trim_matches('/')).join(container_id);
    let mut dirs = vec![root.join(&rel), root.join("unified").join(&rel)];
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            dirs.push(e.path().join(&rel));
        }
    }
    let mut last = Ok(());
    for d in dirs.into_iter().filter(|d| d.exists()) {
        last = Ok(());
        for _ in 0..100 {
            match std::fs::remove_dir(&d) {
                Ok(()) => {
                    last = Ok(());
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => last = Err(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        last.as_ref().map_err(|e| {
            ProtocolError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", d.display()),
            ))
        })?;
    }
    last.map_err(ProtocolError::Io)
}
