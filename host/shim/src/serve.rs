//! The serving shim (containerd's `-socket` invocation): the Task service on its ttrpc
//! socket until the last task is gone.
//!
//! The shim crate's own server registers the Task service only as
//! `containerd.task.v3.Task` (containerd 2.x); containerd 1.x calls
//! `containerd.task.v2.Task`. The messages are the same, so the service is registered
//! under both names.

use std::path::Path;
use std::sync::Arc;

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Flags;
use containerd_shim_protos::shim_async::{create_task, Task};
use containerd_shim_protos::ttrpc::r#async::Server;

use crate::events::Events;
use crate::sandbox::Backends;
use crate::task::TaskService;

const TASK_V3: &str = "containerd.task.v3.Task";
const TASK_V2: &str = "containerd.task.v2.Task";

pub async fn serve(flags: &Flags) -> anyhow::Result<()> {
    let socket = flags
        .socket
        .strip_prefix("unix://")
        .unwrap_or(&flags.socket);
    anyhow::ensure!(!socket.is_empty(), "no -socket given");
    // containerd reads the shim's log from the `log` FIFO in the bundle directory.
    containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
        .map_err(|e| anyhow::anyhow!("shim logger: {e}"))?;
    let ttrpc_address =
        std::env::var("TTRPC_ADDRESS").map_err(|_| anyhow::anyhow!("TTRPC_ADDRESS is not set"))?;
    let publisher = RemotePublisher::new(&ttrpc_address)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to containerd's events: {e}"))?;
    let exit = Arc::new(ExitSignal::default());
    let task: Arc<dyn Task + Send + Sync> = Arc::new(TaskService::new(
        Arc::new(Backends::from_env()),
        Events::new(publisher, &flags.namespace),
        &flags.namespace,
        exit.clone(),
    ));

    if let Some(parent) = Path::new(socket).parent() {
        std::fs::create_dir_all(parent)?;
    }
    let listener = match std::os::unix::net::UnixListener::bind(socket) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            // Another container of the same pod: its shim already serves this socket.
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                signal_started();
                return Ok(());
            }
            std::fs::remove_file(socket)?;
            std::os::unix::net::UnixListener::bind(socket)?
        }
        Err(e) => return Err(e.into()),
    };
    let listener = containerd_shim_protos::ttrpc::r#async::transport::Listener::try_from(listener)?;
    let mut server = Server::new().add_listener(listener);
    for name in [TASK_V3, TASK_V2] {
        let mut services = create_task(task.clone());
        let service = services
            .remove(TASK_V3)
            .ok_or_else(|| anyhow::anyhow!("the protos crate has no {TASK_V3} service"))?;
        server = server.register_service([(name.to_string(), service)].into());
    }
    server.start().await?;
    signal_started();
    tracing::info!(socket, "berth shim serving");

    // containerd stops the shim with Shutdown; a SIGTERM/SIGINT alone does not end it
    // (as with runc's shim), so running tasks survive a stray signal.
    tokio::spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut pipe)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::pipe()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = pipe.recv() => {}
            }
        }
    });
    exit.wait().await;
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(socket);
    Ok(())
}

/// The `start` invocation reads our stdout until it closes: point it at stderr (which
/// containerd does not read) once the socket serves.
fn signal_started() {
    // SAFETY: dup2(2) on the process's own standard descriptors.
    unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
}
