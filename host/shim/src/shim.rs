//! The shim binary's lifecycle for containerd: `start` (spawn the serving shim and print
//! its address), `delete` (clean up after a dead shim) and serving the Task service.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::MessageField;

use crate::events::{now_ns, timestamp, Events};
use crate::sandbox::{self, Backends};
use crate::task::TaskService;

pub struct BerthShim {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
}

/// Spawn the serving shim for `opts.id` (or join the one of its pod) and return its
/// address. containerd runs `start` in the bundle directory.
async fn start_server(opts: StartOpts) -> Result<String, Error> {
    // The containers of one pod share one shim, as with runc's shim.
    let grouping = crate::oci::load(std::path::Path::new("."))
        .ok()
        .and_then(|s| {
            s.annotations()
                .as_ref()?
                .get(crate::oci::CRI_SANDBOX_ID)
                .cloned()
        })
        .unwrap_or_else(|| opts.id.clone());
    let address = spawn(opts, &grouping, Vec::new()).await?;
    // containerd's `delete` action and the server's exit find the socket here.
    let _ = std::fs::write("address", &address);
    Ok(address)
}

/// The `start` action: spawn the server and print its bare socket address (what
/// containerd 1.6 expects; 1.7 and 2.x read it as a version-2 ttrpc shim).
pub async fn legacy_start(flags: &Flags) -> Result<(), Error> {
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    let address = start_server(opts).await?;
    use std::io::Write;
    let mut out = std::io::stdout();
    out.write_all(address.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::Other(format!("writing the shim address: {e}")))
}

#[async_trait]
impl Shim for BerthShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        BerthShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        start_server(opts).await
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let key = sandbox::key(&self.namespace, &self.id);
        // containerd runs `delete` in the bundle: the spec names the cgroup.
        let cgroup = crate::oci::load(std::path::Path::new("."))
            .map(|spec| crate::oci::cgroup_path(&spec, &key))
            .unwrap_or_else(|_| (crate::oci::CGROUP_PARENT.to_string(), key.clone()));
        Backends::from_env().cleanup(&key, cgroup).await;
        // A killed shim leaves its socket behind; containerd runs `delete` in the bundle.
        // containerd 1.6 also runs `delete` after every task's normal end: the socket of a
        // pod's shim that still serves the pod's other tasks must stay, or the pod's next
        // container would get a shim (and a microVM) of its own.
        if let Ok(address) = std::fs::read_to_string("address") {
            let socket = address.trim().trim_start_matches("unix://").to_string();
            if std::os::unix::net::UnixStream::connect(&socket).is_err() {
                let _ = std::fs::remove_file(socket);
            }
        }
        Ok(DeleteResponse {
            exit_status: 137,
            exited_at: MessageField::some(timestamp(now_ns())),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    /// Only reached if the shim crate serves (main.rs serves itself, see serve.rs): the
    /// same service, so both paths behave alike.
    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        TaskService::new(
            Arc::new(Backends::from_env()),
            Events::new(publisher, &self.namespace),
            &self.namespace,
            self.exit.clone(),
        )
    }
}
