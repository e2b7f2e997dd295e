//! A private containerd for the shim tests: its own root, state, sockets and config (no
//! CRI, nothing shared with a system containerd), with `containerd-shim-berth-v2` and
//! `berth-agent` from this build on its PATH, and a busybox image imported with `ctr`.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const NS: &str = "berth-test";
pub const IMAGE: &str = "berth.test/busybox:latest";
pub const RUNTIME: &str = "io.containerd.berth.v2";

pub struct Containerd {
    pub dir: tempfile::TempDir,
    child: Child,
    /// The shim's state dir (`$BERTH_SHIM_STATE`), inside `dir`.
    pub shim_state: PathBuf,
}

/// The directory of this build's binaries (the shim, the agent).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_containerd-shim-berth-v2"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `None` when the test can run here, else why not (printed by the caller).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("containerd needs root".into());
    }
    for tool in ["containerd", "ctr", "busybox"] {
        if which(tool).is_none() {
            return Some(format!(
                "{tool} not found (scripts/install-deps.sh installs it)"
            ));
        }
    }
    None
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    })
}

impl Containerd {
    pub fn start() -> Containerd {
        Self::start_with_env(&[])
    }

    /// With extra environment for containerd (and so for the shims it starts).
    pub fn start_with_env(env: &[(&str, &str)]) -> Containerd {
        let agent = bin_dir().join("berth-agent");
        assert!(
            agent.is_file(),
            "{} is missing: `cargo build -p berth-agent` (cargo test --workspace builds it)",
            agent.display()
        );
        // Short paths: containerd's and the agent's sockets must fit in sun_path.
        let dir = tempfile::Builder::new()
            .prefix("bshim")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let shim_state = d.join("shim");
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
  level = "debug"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#,
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let path = format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .env("BERTH_SHIM_STATE", &shim_state)
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let c = Containerd {
            dir,
            child,
            shim_state,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if c.ctr(&["version"]).status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn address(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    pub fn fifo_dir(&self) -> PathBuf {
        self.dir.path().join("fifo")
    }

    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.address())
            .arg("--namespace")
            .arg(NS)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args).output().expect("run ctr")
    }

    /// `ctr` that must succeed; returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?} failed ({}): {}{}\ncontainerd log tail:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            tail(&self.log(), 30)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `ctr run --rm --runtime berth ... IMAGE id args...` (extra flags before the image).
    pub fn run(&self, id: &str, flags: &[&str], args: &[&str]) -> Output {
        let fifo = self.fifo_dir();
        let mut a = vec![
            "run",
            "--runtime",
            RUNTIME,
            "--fifo-dir",
            fifo.to_str().unwrap(),
        ];
        a.extend_from_slice(flags);
        a.push(IMAGE);
        a.push(id);
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// Build a busybox image (one layer) as a docker-archive and `ctr image import` it.
    pub fn import_busybox(&self) {
        let tar = build_busybox_archive(self.dir.path());
        self.ctr_ok(&["image", "import", tar.to_str().unwrap()]);
    }

    /// The task's status column in `ctr task ls` (`RUNNING`, `PAUSED`, `STOPPED`), or
    /// `None` when the task is not listed.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines().skip(1).find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&id)).then(|| cols.last().unwrap().to_string())
        })
    }

    pub fn wait_status(&self, id: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.task_status(id);
            if st.as_deref() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id}: status {st:?}, want {want}\n{}",
                tail(&self.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Processes whose command line mentions this test's directory (shims, agents).
    pub fn leftover_processes(&self) -> Vec<String> {
        let me = self.dir.path().display().to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let pid = e.file_name().to_string_lossy().to_string();
            if pid.parse::<u32>().is_err() || pid == self.child.id().to_string() {
                continue;
            }
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&me) {
                out.push(format!("{pid}: {cmd}"));
            }
        }
        out
    }

    /// Pids of the shim processes of this containerd.
    pub fn shim_pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("containerd-shim-berth-v2")
                && cmd.contains(&self.address().display().to_string())
            {
                out.push(pid);
            }
        }
        out
    }

    /// microVM disks left in the shim's state.
    pub fn leftover_vm_disks(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.shim_state.join("data").join("containers"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// The socket the shim of task `id` serves on (removed when the shim is gone).
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        let a = containerd_shim::socket_address(&self.address().display().to_string(), NS, id);
        PathBuf::from(a.trim_start_matches("unix://"))
    }

    /// Entries left in the shim's state (agent run dirs).
    pub fn leftover_run_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.shim_state.join("c"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks a failed test left: kill and delete them so their shims exit.
        if let Ok(o) = self.ctr_cmd(&["task", "ls", "-q"]).output() {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
                std::thread::sleep(Duration::from_millis(200));
                let _ = self.ctr(&["task", "rm", "-f", id]);
            }
        }
        if let Ok(o) = self.ctr_cmd(&["c", "ls", "-q"]).output() {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = self.ctr(&["c", "rm", id]);
            }
        }
        // SAFETY: signalling the containerd this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in self.shim_pids() {
            // SAFETY: a shim of this test's containerd.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // The namespace's parent cgroups (the tasks' own are checked by the tests).
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir(e.path().join(NS));
            }
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(NS));
        // containerd's snapshots are mounts under its root.
        let root = self.dir.path().join("root");
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            for m in mounts.lines() {
                if let Some(target) = m.split_whitespace().nth(1) {
                    if target.starts_with(&*root.to_string_lossy()) {
                        let _ = Command::new("umount").arg("-l").arg(target).status();
                    }
                }
            }
        }
    }
}

/// The memory limit of a task's cgroup, v1 or v2: containerd's default `cgroupsPath`
/// (`/<namespace>/<id>`), as runc would use it.
pub fn memory_limit(id: &str) -> Option<u64> {
    [
        format!("/sys/fs/cgroup/memory/{NS}/{id}/memory.limit_in_bytes"),
        format!("/sys/fs/cgroup/{NS}/{id}/memory.max"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
}

/// The freezer state of a task's cgroup (`FROZEN`/`THAWED`), v1 or v2.
pub fn freezer_state(id: &str) -> Option<String> {
    let v1 = format!("/sys/fs/cgroup/freezer/{NS}/{id}/freezer.state");
    if let Ok(s) = std::fs::read_to_string(v1) {
        return Some(s.trim().to_string());
    }
    let v2 = format!("/sys/fs/cgroup/{NS}/{id}/cgroup.freeze");
    let s = std::fs::read_to_string(v2).ok()?;
    Some(if s.trim() == "1" { "FROZEN" } else { "THAWED" }.to_string())
}

/// Does any hierarchy still have the task's cgroup?
pub fn cgroup_exists(id: &str) -> bool {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| rd.flatten().any(|e| e.path().join(NS).join(id).exists()))
        .unwrap_or(false)
        || std::path::Path::new(&format!("/sys/fs/cgroup/{NS}/{id}")).exists()
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A docker-archive (`docker save` layout) of a one-layer image: a static busybox with
/// its applet links, as in the README's "A first container without internet access".
fn build_busybox_archive(dir: &Path) -> PathBuf {
    let busybox = which("busybox").unwrap();
    let mut layer = tar::Builder::new(Vec::new());
    let dir_entry = |b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        b.append_data(&mut h, name, std::io::empty()).unwrap();
    };
    for (d, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("root", 0o700),
    ] {
        dir_entry(&mut layer, d, mode);
    }
    let bytes = std::fs::read(&busybox).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(bytes.len() as u64);
    layer
        .append_data(&mut h, "bin/busybox", &bytes[..])
        .unwrap();
    let list = Command::new(&busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet == "busybox" {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        layer
            .append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    for (name, body) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        layer.append_data(&mut h, name, body.as_bytes()).unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string();
    let config_name = format!("{}.json", sha256_hex(config.as_bytes()));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [IMAGE],
        "Layers": ["layer.tar"],
    }])
    .to_string();
    let path = dir.join("busybox.tar");
    let mut archive = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for (name, body) in [
        ("layer.tar", &layer[..]),
        (config_name.as_str(), config.as_bytes()),
        ("manifest.json", manifest.as_bytes()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        archive.append_data(&mut h, name, body).unwrap();
    }
    archive.into_inner().unwrap().flush().unwrap();
    path
}

/// `Update` through the shim's own Task API (ctr 1.6 has no `task update`): a real
/// ttrpc client on the socket containerd got from the shim's `start`.
pub fn update_memory_limit(c: &Containerd, id: &str, bytes: i64) {
    use containerd_shim_protos::api::UpdateTaskRequest;
    use containerd_shim_protos::protobuf::well_known_types::any::Any;
    use containerd_shim_protos::shim_async::TaskClient;
    use containerd_shim_protos::ttrpc::asynchronous::Client;
    use containerd_shim_protos::ttrpc::context;

    let bundle = c
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task")
        .join(NS)
        .join(id);
    let address = std::fs::read_to_string(bundle.join("address")).expect("the shim's address");
    let resources = serde_json::json!({"memory": {"limit": bytes}});
    let req = UpdateTaskRequest {
        id: id.to_string(),
        resources: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: resources.to_string().into_bytes(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::connect(address.trim())
            .await
            .expect("connect to the shim");
        TaskClient::new(client)
            .update(context::with_timeout(10_000_000_000), &req)
            .await
            .expect("Update");
    });
}
