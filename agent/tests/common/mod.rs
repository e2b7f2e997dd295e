//! Shared helpers for the process-mode integration tests: a busybox rootfs and agent spawning.
#![allow(dead_code)]
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use berth_agent_protocol::{
    client::{spawn_process_agent, AgentClient, OutputStream, SpawnOpts, StdStream},
    ContainerSpec, ExitStatus, ProcessId, ProcessSpec, Rootfs,
};

pub fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips (returns true) with a printed reason when the test cannot run here.
pub fn skip() -> bool {
    if !is_root() {
        eprintln!("SKIP: process-mode agent tests need root (namespaces, cgroups, mounts)");
        return true;
    }
    if !Path::new("/bin/busybox").exists() {
        eprintln!("SKIP: /bin/busybox missing (apt-get install busybox-static)");
        return true;
    }
    false
}

fn base_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = PathBuf::from("/tmp/berth-agent-tests");
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// A busybox image layer (read-only lower dir shared by all tests and runs; built atomically).
pub fn busybox_layer() -> &'static Path {
    static LAYER: OnceLock<PathBuf> = OnceLock::new();
    LAYER.get_or_init(|| {
        let root = PathBuf::from("/tmp/berth-agent-tests-busybox-layer");
        if root.join("bin/sh").exists() {
            return root;
        }
        let tmp = base_dir().join(format!("busybox-layer-{}", std::process::id()));
        for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev", "home/app"] {
            std::fs::create_dir_all(tmp.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", tmp.join("bin/busybox")).unwrap();
        let st = Command::new(tmp.join("bin/busybox")).arg("--install").arg("-s").arg(tmp.join("bin")).status().unwrap();
        assert!(st.success(), "busybox --install failed");
        // The symlinks point at the host path of the copy; make them image-relative.
        for e in std::fs::read_dir(tmp.join("bin")).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() != "busybox" && std::fs::symlink_metadata(&p).unwrap().file_type().is_symlink() {
                std::fs::remove_file(&p).unwrap();
                std::os::unix::fs::symlink("/bin/busybox", &p).unwrap();
            }
        }
        std::fs::write(tmp.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n").unwrap();
        std::fs::write(tmp.join("etc/group"), "root:x:0:\nwheel:x:10:app\napp:x:1000:\nnogroup:x:65534:\n").unwrap();
        std::fs::set_permissions(tmp.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        // Another test binary may have won the race; either copy is fine.
        if std::fs::rename(&tmp, &root).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        root
    })
}

pub struct TestContainer {
    pub id: String,
    pub dir: PathBuf,
    pub client: AgentClient,
    pub agent_pid: u32,
}

/// A spec for `args` on an overlay over the busybox layer.
pub fn make_spec(name: &str, args: &[&str]) -> (ContainerSpec, PathBuf) {
    let id = format!("{name}-{}", std::process::id());
    let dir = base_dir().join(&id);
    let upper = dir.join("upper");
    let work = dir.join("work");
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let spec = ContainerSpec {
        id: id.clone(),
        rootfs: Rootfs::Overlay {
            lower: vec![busybox_layer().to_path_buf()],
            upper,
            work,
        },
        hostname: "berthtest".into(),
        process: ProcessSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..ProcessSpec::default()
        },
        ..ContainerSpec::default()
    };
    (spec, dir.join("exec"))
}

pub async fn spawn(spec: &ContainerSpec, exec_dir: &Path) -> TestContainer {
    let opts = SpawnOpts {
        log_filter: Some("debug".into()),
        ..SpawnOpts::new(env!("CARGO_BIN_EXE_berth-agent"), exec_dir, &spec.id)
    };
    let (client, agent_pid) = spawn_process_agent(&opts).await.expect("spawn agent");
    client.create(spec.clone()).await.expect("create");
    TestContainer {
        id: spec.id.clone(),
        dir: exec_dir.to_path_buf(),
        client,
        agent_pid,
    }
}

/// Collects a whole output stream as (stdout, stderr) strings.
pub async fn collect(mut out: OutputStream) -> (String, String) {
    let mut o = Vec::new();
    let mut e = Vec::new();
    while let Some(c) = tokio::time::timeout(Duration::from_secs(30), out.recv())
        .await
        .expect("output timed out")
    {
        match c.stream {
            StdStream::Stdout => o.extend_from_slice(&c.data),
            StdStream::Stderr => e.extend_from_slice(&c.data),
        }
    }
    assert!(out.completed(), "output ended without OutputEof");
    (
        String::from_utf8_lossy(&o).into_owned(),
        String::from_utf8_lossy(&e).into_owned(),
    )
}

/// Runs a container to completion: (status, stdout, stderr). Shuts the agent down.
pub async fn run(spec: ContainerSpec, exec_dir: &Path) -> (ExitStatus, String, String) {
    let c = spawn(&spec, exec_dir).await;
    let out = c.client.output(ProcessId::INIT).await.unwrap();
    c.client.start(ProcessId::INIT).await.expect("start");
    let (o, e) = collect(out).await;
    let status = tokio::time::timeout(Duration::from_secs(30), c.client.wait(ProcessId::INIT))
        .await
        .unwrap()
        .unwrap();
    c.shutdown().await;
    (status, o, e)
}

impl TestContainer {
    pub async fn shutdown(&self) {
        self.client.shutdown().await.expect("shutdown");
        // exec dir + upper/work of this test container.
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
        // The agent process must be gone.
        for _ in 0..200 {
            if !Path::new(&format!("/proc/{}", self.agent_pid)).exists() {
                return;
            }
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.agent_pid))
                .unwrap_or_default();
            if stat.contains(") Z ") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("agent {} did not exit after shutdown", self.agent_pid);
    }
}

impl Drop for TestContainer {
    /// A failed test must not leave its agent (and container) running.
    fn drop(&mut self) {
        let cmdline =
            std::fs::read(format!("/proc/{}/cmdline", self.agent_pid)).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&self.id) {
            // SAFETY: kill(2) of the agent this test spawned.
            unsafe { libc::kill(self.agent_pid as i32, libc::SIGKILL) };
        }
    }
}

/// cgroup directories of a container on this host (v1 or v2).
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut v = vec![
        PathBuf::from("/sys/fs/cgroup/berth").join(id),
        // v2 on a hybrid host (used by the guest-mode test).
        PathBuf::from("/sys/fs/cgroup/unified/berth").join(id),
    ];
    for c in [
        "memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "devices", "blkio",
    ] {
        v.push(
            PathBuf::from("/sys/fs/cgroup")
                .join(c)
                .join("berth")
                .join(id),
        );
    }
    v
}
