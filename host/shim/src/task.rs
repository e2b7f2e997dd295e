//! containerd's Task service (shim v2 API) over [`Container`]: decodes the requests,
//! finds the container, answers in containerd's terms.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use containerd_shim_protos::api::{self, Empty};
use containerd_shim_protos::events::task::{TaskCreate, TaskIO};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;

use berth_engine::containers::record::Isolation;
use berth_engine::isolation::microvm::pod;

use crate::container::{Container, CreateArgs};
use crate::error::{Result, ShimError};
use crate::events::{timestamp, Events};
use crate::process::Status;
use crate::sandbox::Backends;
use crate::stdio::StdioPaths;
use crate::{metrics, oci, rootfs};

pub struct TaskService {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    backends: Arc<Backends>,
    events: Events,
    namespace: String,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    pub fn new(
        backends: Arc<Backends>,
        events: Events,
        namespace: &str,
        exit: Arc<ExitSignal>,
    ) -> Self {
        TaskService {
            containers: Mutex::new(HashMap::new()),
            backends,
            events,
            namespace: namespace.to_string(),
            exit,
        }
    }

    fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.containers
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("task {id} not found")))
    }

    /// The pod VM a member of pod `sandbox_id` joins: `None` when the pod's sandbox is not
    /// a microVM of this shim (the member then runs as a container of its own).
    fn pod_host(&self, sandbox_id: &str) -> Result<Option<crate::sandbox::PodHost>> {
        let sandbox = self.containers.lock().unwrap().get(sandbox_id).cloned();
        sandbox.and_then(|c| c.pod_host()).transpose()
    }

    async fn do_create(&self, req: &api::CreateTaskRequest) -> Result<u32> {
        if self.containers.lock().unwrap().contains_key(&req.id) {
            return Err(ShimError::AlreadyExists(format!(
                "task {} already exists",
                req.id
            )));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "restoring from a checkpoint is not supported".into(),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = oci::load(&bundle).map_err(|e| ShimError::Invalid(e.to_string()))?;
        let mounts: Vec<rootfs::SnapshotMount> = req
            .rootfs
            .iter()
            .map(|m| rootfs::SnapshotMount {
                typ: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let key = crate::sandbox::key(&self.namespace, &req.id);
        let mode = oci::isolation(&spec);
        let role = oci::pod_role(&spec, &req.id);
        let pod_host = match &role {
            oci::PodRole::Member { sandbox_id } => self.pod_host(sandbox_id)?,
            _ => None,
        };
        let join_pid = pod_host.as_ref().map(|h| h.init_pid);
        let prepared = match pod_host {
            Some(host) => {
                self.backends
                    .prepare_pod_member(&key, &mounts, &bundle, host)
                    .await?
            }
            None => {
                let sandbox = role == oci::PodRole::Sandbox;
                self.backends
                    .prepare(&mode, &key, &mounts, &bundle, sandbox)
                    .await?
            }
        };
        let cspec = oci::container_spec(&spec, &key, prepared.rootfs, !req.stdin.is_empty())
            .map_err(|e| ShimError::Invalid(e.to_string()));
        let mut held_mounts = prepared.held_mounts;
        let cspec = cspec.and_then(|mut c| {
            if prepared.backend.mode() == Isolation::Microvm {
                oci::place_in_vm(&mut c, join_pid);
            }
            if let Some(m) = held_mounts.as_mut() {
                m.share_binds(&pod::guest_member_dir(&key), &mut c.mounts)
                    .map_err(|e| ShimError::Internal(e.to_string()))?;
            }
            Ok(c)
        });
        let cspec = match cspec {
            Ok(c) => c,
            Err(e) => {
                if let Some(m) = held_mounts {
                    m.unmount();
                }
                self.backends.remove_storage(&key);
                return Err(e);
            }
        };
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let c = Container::create(CreateArgs {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            rec: prepared.rec,
            backend: prepared.backend,
            run_dir: self.backends.run_dir(&key),
            cgroup: oci::cgroup_path(&spec, &key),
            spec: cspec,
            stdio,
            events: self.events.clone(),
            launch: prepared.launch,
            held_mounts,
        })
        .await
        .inspect_err(|_| self.backends.remove_storage(&key))?;
        let pid = c.sandbox_pid();
        self.containers
            .lock()
            .unwrap()
            .insert(req.id.clone(), c.clone());
        let ev = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(pid)
    }
}

fn status(s: Status, paused: bool) -> api::Status {
    match s {
        Status::Created => api::Status::CREATED,
        Status::Running if paused => api::Status::PAUSED,
        Status::Running => api::Status::RUNNING,
        Status::Stopped => api::Status::STOPPED,
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = self.do_create(&req).await.inspect_err(|e| {
            tracing::warn!(id = %req.id, "create failed: {e}");
        })?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = self.get(&req.id)?.start(&req.exec_id).await?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let c = self.get(&req.id)?;
        let st = c.state(&req.exec_id)?;
        let paused = st.status == Status::Running && c.agent_paused().await;
        let mut resp = api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.clone(),
            pid: st.pid,
            status: status(st.status, paused).into(),
            stdin: st.stdio.stdin,
            stdout: st.stdio.stdout,
            stderr: st.stdio.stderr,
            terminal: st.stdio.terminal,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        if let Some(e) = st.exit {
            resp.exit_status = e.code;
            resp.exited_at = MessageField::some(timestamp(e.at_ns));
        }
        Ok(resp)
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let e = self.get(&req.id)?.wait(&req.exec_id).await?;
        Ok(api::WaitResponse {
            exit_status: e.code,
            exited_at: MessageField::some(timestamp(e.at_ns)),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        self.get(&req.id)?
            .kill(&req.exec_id, req.signal, req.all)
            .await?;
        Ok(Empty::new())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let c = self.get(&req.id)?;
        let (pid, exit) = if req.exec_id.is_empty() {
            let r = c.delete().await?;
            self.backends.remove_storage(c.key());
            self.containers.lock().unwrap().remove(&req.id);
            r
        } else {
            c.delete_exec(&req.exec_id)?
        };
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.code,
            exited_at: MessageField::some(timestamp(exit.at_ns)),
            ..Default::default()
        })
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        let c = self.get(&req.id)?;
        let any = req
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::Invalid("exec without a process spec".into()))?;
        let process: oci_spec::runtime::Process = serde_json::from_slice(&any.value)
            .map_err(|e| ShimError::Invalid(format!("exec process spec: {e}")))?;
        let spec = berth_agent_protocol::ExecSpec {
            process: oci::process_spec(&process, !req.stdin.is_empty()),
            privileged: false,
        };
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        c.exec(&req.exec_id, spec, stdio).await?;
        Ok(Empty::new())
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let pids = self.get(&req.id)?.pids().await?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| api::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        self.get(&req.id)?.pause().await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        self.get(&req.id)?.resume().await?;
        Ok(Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<Empty> {
        self.get(&req.id)?
            .resize(&req.exec_id, req.width, req.height)
            .await?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        if req.stdin {
            self.get(&req.id)?.close_stdin(&req.exec_id).await?;
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        let c = self.get(&req.id)?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| ShimError::Invalid("update without resources".into()))?;
        let res: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| ShimError::Invalid(format!("update resources: {e}")))?;
        c.update(oci::resources(&res)).await?;
        Ok(Empty::new())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let stats = self.get(&req.id)?.stats().await?;
        Ok(api::StatsResponse {
            stats: MessageField::some(metrics::to_any(&stats)?),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let c = self.get(&req.id)?;
        let pid = c.state("").map(|s| s.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: if pid > 0 { pid } else { c.sandbox_pid() },
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<Empty> {
        // containerd asks after each delete; the shim serves until its last task is gone.
        if self.containers.lock().unwrap().is_empty() {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
