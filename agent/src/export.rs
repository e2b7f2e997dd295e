//! The export channel of a guest agent (see `berth_agent_protocol::export`): one vsock
//! connection per request, served from a thread of its own: the container's writable
//! layer as a tar, or a session of the chrooted archive child (`docker cp`, `export`).
//! The host never mounts a guest-written disk; this is how it gets the files instead.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use berth_agent_protocol::export::{
    read_request, ExportRequest, ARCHIVE_CONTAINER_ROOT, ARCHIVE_EXIT, ARCHIVE_MAX_FRAME,
    ARCHIVE_STDERR, ARCHIVE_STDOUT, STATUS_ERROR, STATUS_OK,
};
use tracing::{info, warn};

use crate::state::Agent;
use crate::vsock::{VsockListener, VMADDR_CID_HOST};

/// Most of the archive child's stderr that is passed on (it is one error message).
const MAX_STDERR: usize = 64 << 10;

/// Serves export connections until the listener fails.
pub async fn serve(listener: VsockListener, agent: Arc<Agent>) {
    info!(
        port = berth_agent_protocol::export::EXPORT_PORT,
        "export channel listening"
    );
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("export accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Only the VMM's host side may read the container's files, never a process in
        // the guest talking to a local vsock port.
        match stream.peer_cid() {
            Ok(VMADDR_CID_HOST) => {}
            other => {
                warn!(
                    ?other,
                    "export: refused a connection that is not from the host"
                );
                continue;
            }
        }
        let file = match stream.into_blocking() {
            Ok(f) => f,
            Err(e) => {
                warn!("export: {e}");
                continue;
            }
        };
        let agent = agent.clone();
        std::thread::spawn(move || handle(&agent, file));
    }
}

fn handle(agent: &Agent, sock: std::fs::File) {
    let Ok(read_half) = sock.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = BufWriter::with_capacity(256 << 10, sock);
    let req = match read_request(&mut reader) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(out, "{STATUS_ERROR}{e}");
            return;
        }
    };
    let t0 = std::time::Instant::now();
    let res = match &req {
        ExportRequest::Changes { upper } => changes(upper, &mut out),
        ExportRequest::Archive { args } => archive(agent, args, reader, &mut out),
    };
    match res.and_then(|()| out.flush()) {
        Ok(()) => info!(?req, ms = t0.elapsed().as_millis() as u64, "exported"),
        // The status line is gone already: the host sees the stream end early.
        Err(e) => warn!(?req, "export failed: {e}"),
    }
}

fn changes(upper: &Path, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{STATUS_OK}")?;
    if upper.is_dir() {
        berth_layer::write_upper_as_layer(upper, out)?;
    } else {
        // Never ran: no changes. An empty tar is just its end-of-archive marker.
        out.write_all(&[0u8; 1024])?;
    }
    Ok(())
}

/// Runs `berth-agent archive ARGS` with its stdin fed from the host's frames and its
/// output sent back as frames, then its exit code.
fn archive(
    agent: &Agent,
    args: &[String],
    mut input: BufReader<std::fs::File>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mut argv = Vec::with_capacity(args.len() + 1);
    for a in args {
        if a == ARCHIVE_CONTAINER_ROOT {
            let Some(pid) = agent.init_pid() else {
                writeln!(out, "{STATUS_ERROR}the container is not running")?;
                return Ok(());
            };
            argv.push("--root".to_string());
            argv.push(format!("/proc/{pid}/root"));
        } else {
            argv.push(a.clone());
        }
    }
    prepare_overlay_dirs(&argv);
    let mut child = match agent.helpers.spawn(
        Command::new("/proc/self/exe")
            .arg("archive")
            .args(&argv)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    ) {
        Ok(c) => c,
        Err(e) => {
            writeln!(out, "{STATUS_ERROR}starting the archive child: {e}")?;
            return Ok(());
        }
    };
    writeln!(out, "{STATUS_OK}")?;
    out.flush()?;
    let mut stdin = child.stdin.take().expect("piped");
    let feeder = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = Vec::new();
        loop {
            let mut len = [0u8; 4];
            input.read_exact(&mut len)?;
            let n = u32::from_be_bytes(len);
            if n == 0 || n > ARCHIVE_MAX_FRAME {
                return Ok(());
            }
            buf.resize(n as usize, 0);
            input.read_exact(&mut buf)?;
            if stdin.write_all(&buf).is_err() {
                // The child stopped reading (it failed); keep draining the host.
                let _ = std::io::copy(&mut input, &mut std::io::sink());
                return Ok(());
            }
        }
    });
    let mut stderr = child.stderr.take().expect("piped");
    let errs = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = (&mut stderr).take(MAX_STDERR as u64).read_to_end(&mut text);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        text
    });
    let mut stdout = child.stdout.take().expect("piped");
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        frame(out, ARCHIVE_STDOUT, &buf[..n])?;
    }
    // Not `child.wait()`: the agent's reaper may collect the child first.
    let code = agent.helpers.wait(&mut child);
    // A VM booted only for this session is killed as soon as the host has the exit code:
    // what a `put` wrote must be on the disks by then, not in the guest's page cache.
    // SAFETY: sync has no memory preconditions.
    unsafe { libc::sync() };
    let text = errs.join().unwrap_or_default();
    if !text.is_empty() {
        frame(out, ARCHIVE_STDERR, &text)?;
    }
    frame(out, ARCHIVE_EXIT, &code.to_be_bytes())?;
    out.flush()?;
    // The feeder ends with the host's end-of-stdin frame or the connection.
    drop(feeder);
    Ok(())
}

fn frame(out: &mut impl Write, kind: u8, data: &[u8]) -> std::io::Result<()> {
    for chunk in data.chunks(ARCHIVE_MAX_FRAME as usize) {
        out.write_all(&[kind])?;
        out.write_all(&(chunk.len() as u32).to_be_bytes())?;
        out.write_all(chunk)?;
    }
    Ok(())
}

/// A container that never ran has no upper and work dirs on its writable disk yet; an
/// overlay naming them would not mount.
fn prepare_overlay_dirs(argv: &[String]) {
    let Some(i) = argv.iter().position(|a| a == "--overlay") else {
        return;
    };
    let Some(opts) = argv.get(i + 1) else {
        return;
    };
    for opt in opts.split(',') {
        if let Some(dir) = opt
            .strip_prefix("upperdir=")
            .or_else(|| opt.strip_prefix("workdir="))
        {
            let _ = std::fs::create_dir_all(dir);
        }
    }
}
