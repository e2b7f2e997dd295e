//! Creating the container and its execs, and starting a process: the launch path.

use std::sync::Arc;

use berth_agent_protocol::{
    ContainerSpec, ErrorKind, ExecSpec, ExitStatus, ProcessId, ProcessStatus, RemoteError, Reply,
    Response, SeccompMode,
};
use tracing::{info, warn};

use super::{err, Agent, Proc};
use crate::{
    capabilities,
    cgroups::Cgroup,
    process::{self, Launch, Target},
    stdio::Run,
    util::now_ns,
};

impl Agent {
    pub(super) fn create(&self, spec: ContainerSpec) -> Reply {
        let mut st = self.state.lock().unwrap();
        if st.spec.is_some() {
            return Err(err(ErrorKind::Conflict, "container already created"));
        }
        if spec.process.args.is_empty() {
            return Err(err(ErrorKind::InvalidArgument, "no command specified"));
        }
        capabilities::compute(
            spec.security.privileged,
            &spec.security.cap_add,
            &spec.security.cap_drop,
        )
        .map_err(|e| err(ErrorKind::InvalidArgument, e))?;
        info!(id = %spec.id, "container created");
        st.procs.insert(
            ProcessId::INIT,
            Proc::new(spec.process.clone(), spec.security.privileged),
        );
        st.next_exec = 1;
        st.spec = Some(Arc::new(spec));
        Ok(Response::Ok)
    }

    pub(super) fn exec(&self, spec: ExecSpec) -> Reply {
        let mut st = self.state.lock().unwrap();
        let container = st
            .spec
            .clone()
            .ok_or_else(|| err(ErrorKind::Conflict, "container not created"))?;
        if st.paused {
            return Err(err(
                ErrorKind::Conflict,
                "container is paused, unpause the container before exec",
            ));
        }
        if !matches!(
            st.procs.get(&ProcessId::INIT).map(|p| p.status),
            Some(ProcessStatus::Running)
        ) {
            return Err(err(ErrorKind::Conflict, "container is not running"));
        }
        if spec.process.args.is_empty() {
            return Err(err(ErrorKind::InvalidArgument, "no command specified"));
        }
        // Docker: an exec inherits the container's env (exec entries win), user and cwd.
        let base = &container.process;
        let mut p = spec.process;
        let mut env = base.env.clone();
        for e in p.env.drain(..) {
            let key = e
                .split_once('=')
                .map(|(k, _)| k.to_string())
                .unwrap_or_else(|| e.clone());
            env.retain(|x| x.split_once('=').map(|(k, _)| k) != Some(key.as_str()));
            env.push(e);
        }
        p.env = env;
        if p.user.is_empty() {
            p.user = base.user.clone();
            if p.additional_groups.is_empty() {
                p.additional_groups = base.additional_groups.clone();
            }
        }
        if p.cwd.is_empty() {
            p.cwd = base.cwd.clone();
        }
        let id = ProcessId(st.next_exec);
        st.next_exec += 1;
        st.procs.insert(
            id,
            Proc::new(p, spec.privileged || container.security.privileged),
        );
        Ok(Response::ExecCreated { process: id })
    }

    pub(super) async fn start(self: &Arc<Self>, process: ProcessId) -> Reply {
        // A previous run of the container may still be tearing down its cgroup.
        let stopping = self.state.lock().unwrap().stopping.clone();
        if let Some(n) = stopping {
            let fut = n.notified();
            if self.state.lock().unwrap().stopping.is_some() {
                fut.await;
            }
        }
        let (e, cg) = match self.start_locked(process)? {
            Ok(resp) => return Ok(resp),
            Err(failed) => failed,
        };
        if let Some(cg) = cg {
            if let Err(e) = cg.destroy().await {
                warn!("removing cgroup: {e}");
            }
        }
        let kind = if e.code == 128 {
            ErrorKind::Internal
        } else {
            ErrorKind::ExecFailed
        };
        Err(RemoteError {
            kind,
            message: e.message,
            exit_code: Some(e.code),
        })
    }

    /// The synchronous part of `start` (holds the state lock while the child is set up).
    /// `Ok(Err(..))`: the launch failed; the cgroup (if any) still has to be removed.
    #[allow(clippy::type_complexity)]
    fn start_locked(
        self: &Arc<Self>,
        process: ProcessId,
    ) -> Result<Result<Response, (process::LaunchError, Option<Arc<Cgroup>>)>, RemoteError> {
        let mut st = self.state.lock().unwrap();
        let spec = st
            .spec
            .clone()
            .ok_or_else(|| err(ErrorKind::Conflict, "container not created"))?;
        let init_status = st.procs.get(&ProcessId::INIT).map(|p| p.status);
        let init_pid = st.procs.get(&ProcessId::INIT).and_then(|p| p.pid);
        let p = st
            .procs
            .get(&process)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no such process {process}")))?;
        let is_init = process == ProcessId::INIT;
        match p.status {
            ProcessStatus::Created => {}
            ProcessStatus::Exited if is_init => {}
            _ => {
                return Err(err(
                    ErrorKind::Conflict,
                    format!("process {process} already started"),
                ))
            }
        }
        let pspec = p.spec.clone();
        let privileged = p.privileged;
        let etc_files;
        let target = if is_init {
            let device_rules = crate::cgroups::device_rules(&spec.devices)
                .map_err(|e| err(ErrorKind::InvalidArgument, e))?;
            let cg = Cgroup::create(
                spec.cgroup_parent.as_deref().unwrap_or("berth"),
                &spec.id,
                &spec.resources,
                (!spec.security.privileged).then_some(device_rules.as_slice()),
            )
            .map_err(|e| err(ErrorKind::Internal, format!("cgroup: {e}")))?;
            st.cgroup = Some(Arc::new(cg));
            etc_files = crate::rootfs::write_etc_files(&spec, &self.exec_dir)
                .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
            Target::Init {
                etc_files: &etc_files,
            }
        } else {
            if st.paused {
                return Err(err(
                    ErrorKind::Conflict,
                    "container is paused, unpause the container before exec",
                ));
            }
            if init_status != Some(ProcessStatus::Running) {
                return Err(err(ErrorKind::Conflict, "container is not running"));
            }
            Target::Exec {
                init_pid: init_pid.expect("running init has a pid"),
            }
        };
        let caps = if privileged {
            capabilities::compute(true, &[], &[])
        } else {
            capabilities::compute(false, &spec.security.cap_add, &spec.security.cap_drop)
        }
        .map_err(|e| err(ErrorKind::InvalidArgument, e))?;
        let cgroup = st.cgroup.clone().expect("cgroup exists while starting");
        let launch = Launch {
            target,
            container: &spec,
            process: &pspec,
            caps,
            seccomp: !privileged && spec.security.seccomp != SeccompMode::Unconfined,
            no_new_privs: spec.security.no_new_privileges,
            tiny_init: is_init && spec.init,
            exec_dir: &self.exec_dir,
            own_pidns: &self.own_pidns,
            cgroup: &cgroup,
        };
        let result = process::launch(&launch);
        let now = now_ns();
        let p = st.procs.get_mut(&process).expect("checked above");
        match result {
            Ok(launched) => {
                let subscribed = std::mem::take(&mut p.subscribe_next);
                let run = Run::start(self, process, launched.stdio, subscribed)
                    .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
                if let Some(old) = p.run.replace(run) {
                    old.retire();
                }
                p.status = ProcessStatus::Running;
                p.pid = Some(launched.pid);
                p.started_at_ns = Some(now);
                p.exit = None;
                info!(%process, pid = launched.pid, "started");
                Ok(Ok(Response::Started {
                    pid: launched.pid as u32,
                }))
            }
            Err(e) => {
                warn!(%process, code = e.code, "start failed: {}", e.message);
                let status = ExitStatus {
                    code: e.code,
                    signal: None,
                    oom_killed: false,
                    started_at_ns: None,
                    finished_at_ns: now,
                    error: Some(e.message.clone()),
                };
                let cg = if is_init { st.cgroup.take() } else { None };
                drop(st);
                // Waiters, the Exited event and (if subscribed) an empty output's EOF.
                self.publish_exit(process, status);
                Ok(Err((e, cg)))
            }
        }
    }
}
