//! Test harness: a real `berthd` on a temporary socket and data root, driven by the
//! real `docker` CLI and by `bollard`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod certs;
pub mod images;
pub mod microvm;
pub mod plugin_sdk;
pub mod registry;

pub const DOCKER_CLI: &str = "/usr/local/bin/docker";

pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    child: Option<Child>,
    /// Daemon stderr goes here; printed when a test fails to help debugging.
    pub log_path: PathBuf,
    /// The extra flags it was started with (reused by `restart`).
    extra: Vec<String>,
    /// The network namespace berthd runs in (`start_in_netns`), removed on drop.
    pub netns: Option<String>,
}

impl TestDaemon {
    pub fn start() -> TestDaemon {
        Self::start_with(&[])
    }

    /// Start with extra flags. The default bridge is off (`--bridge none`): a daemon
    /// in the machine's own network namespace must not create links or nft rules there;
    /// networking tests use [`TestDaemon::start_in_netns`].
    pub fn start_with(extra: &[&str]) -> TestDaemon {
        let mut flags = vec!["--bridge", "none"];
        flags.extend_from_slice(extra);
        Self::start_inner(&flags, None, None)
    }

    /// Start berthd inside a fresh network namespace (`berth-t-<pid>-<n>`, with a veth
    /// `ext0` at 10.239.0.2/24 standing for the host's own address). Everything berthd
    /// creates — bridges, veths, addresses, nftables rules — stays in there, and the
    /// namespace is deleted on drop. `extra` should pin the address pools.
    pub fn start_in_netns(extra: &[&str]) -> TestDaemon {
        Self::start_in_netns_on(extra, None)
    }

    /// [`TestDaemon::start_in_netns`] with the data root at `data_root` (for example a
    /// small filesystem the test mounted) instead of inside the daemon's temp dir.
    pub fn start_in_netns_on(extra: &[&str], data_root: Option<&Path>) -> TestDaemon {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "berth-t-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let run = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("run ip");
            if !st.success() {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
                panic!("ip {args:?} failed");
            }
        };
        run(&["netns", "add", &name]);
        // A veth pair whose ends both stay in the namespace: `ext0` plays the host's
        // outward-facing interface.
        for cmd in [
            &["link", "set", "lo", "up"][..],
            &[
                "link", "add", "ext0", "type", "veth", "peer", "name", "ext1",
            ],
            &["addr", "add", "10.239.0.2/24", "dev", "ext0"],
            &["link", "set", "ext0", "up"],
            &["link", "set", "ext1", "up"],
        ] {
            let mut a = vec!["-n", name.as_str()];
            a.extend_from_slice(cmd);
            run(&a);
        }
        Self::start_inner(extra, Some(name), data_root)
    }

    /// Run a command inside the daemon's network namespace.
    pub fn in_netns(&self, args: &[&str]) -> Output {
        let ns = self.netns.as_deref().expect("daemon has a netns");
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(args)
            .output()
            .expect("run nsenter")
    }

    fn start_inner(extra: &[&str], netns: Option<String>, data_root: Option<&Path>) -> TestDaemon {
        // Short paths: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("berth-t")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("d.sock");
        let data_root = data_root.map_or_else(|| dir.path().join("data"), Path::to_path_buf);
        let exec_root = dir.path().join("run");
        let log_path = dir.path().join("berthd.log");
        let mut d = TestDaemon {
            dir,
            socket,
            data_root,
            exec_root,
            child: None,
            log_path,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            netns,
        };
        d.spawn(extra);
        d
    }

    fn spawn(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        // nsenter execs berthd, so the child's pid is berthd's. Only the network
        // namespace changes (not the mount namespace, as `ip netns exec` would), so the
        // netns files berthd pins stay visible to the next berthd after a restart.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg(env!("CARGO_BIN_EXE_berthd"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_berthd")),
        };
        let mut child = cmd
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--data-root")
            .arg(&self.data_root)
            .arg("--exec-root")
            .arg(&self.exec_root)
            .arg("--pidfile")
            .arg(self.dir.path().join("berthd.pid"))
            .arg("--log-level")
            .arg("debug")
            // BERTH_TEST_ISOLATION=microvm runs a suite's containers in microVMs.
            .args(
                std::env::var("BERTH_TEST_ISOLATION")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map(|v| vec!["--default-isolation".to_string(), v])
                    .unwrap_or_default(),
            )
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn berthd");
        // Wait for the ready line.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains("listening") {
                    let _ = tx.send(());
                }
                line.clear();
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!("berthd did not start:\n{}", self.log());
        }
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Run the real docker CLI against this daemon.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_cmd(args).output().expect("run docker CLI")
    }

    pub fn docker_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER_CLI);
        c.env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"))
            .env_remove("DOCKER_API_VERSION")
            .args(args);
        c
    }

    /// Run docker and assert success; returns stdout.
    /// `docker run -d --name NAME ARGS... bb sleep 1000`: a busybox container (the image
    /// imported as `bb`) that just stays up. Its id.
    pub fn run_sleeper(&self, name: &str, args: &[&str]) -> String {
        let run = [
            &["run", "-d", "--name", name],
            args,
            &["bb", "sleep", "1000"],
        ]
        .concat();
        self.docker_ok(&run)
    }

    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {:?} failed ({}):\nstdout: {}\nstderr: {}\n--- berthd log tail ---\n{}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run docker and assert failure; returns stderr.
    pub fn docker_err(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            !out.status.success(),
            "docker {:?} unexpectedly succeeded:\n{}",
            args,
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A raw API call over the daemon's socket (curl, so nothing of a client library
    /// smooths over the answer): `method path` with an optional JSON body. Returns the
    /// HTTP status and the body.
    pub fn api(&self, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
        let mut c = std::process::Command::new("curl");
        c.args(["-s", "-m", "60", "-w", "\n%{http_code}", "-X", method])
            .arg("--unix-socket")
            .arg(&self.socket);
        if let Some(body) = json {
            c.args(["-H", "Content-Type: application/json", "-d", body]);
        }
        let out = c
            .arg(format!("http://localhost{path}"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.trim()));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    pub fn bollard(&self) -> bollard::Docker {
        bollard::Docker::connect_with_unix(
            self.socket.to_str().unwrap(),
            120,
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap()
    }

    /// SIGTERM and wait; returns once the process is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc_kill(c.id() as i32, 15) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL: the daemon dies without any cleanup.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        let extra = self.extra.clone();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.spawn(&extra);
    }

    /// Restart with `more` flags added to the ones it was started with (for flags
    /// that need files in the data root first, e.g. `--authorization-plugin`).
    pub fn restart_with(&mut self, more: &[&str]) {
        self.extra.extend(more.iter().map(|s| s.to_string()));
        self.restart();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- berthd log tail ---\n{}", tail(&self.log(), 60));
        }
        // Containers outlive their daemon by design (live restore). A test's daemon never
        // comes back, so remove its containers first — even after a failed assertion —
        // then, as a last resort, kill any agent still serving from this test's dirs.
        if self.child.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            let ids: Vec<String> = stdout(&ids)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids.iter().map(|s| s.as_str()));
                let _ = self.docker(&args);
            }
        }
        self.stop();
        let _ = Command::new("pkill")
            .args([
                "-9",
                "-f",
                &format!("berth-agent serve --socket {}", self.dir.path().display()),
            ])
            .status();
        // Sandboxes a failed test left pinned, then the namespace itself.
        if let Ok(rd) = std::fs::read_dir(self.exec_root.join("netns")) {
            for e in rd.flatten() {
                let _ = Command::new("umount").arg("-l").arg(e.path()).status();
            }
        }
        if let Some(ns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Waits for `child` to exit on its own; panics with `what` after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "{what} did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A shared scratch dir for artefacts built once per test binary.
pub fn cache_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("berth-test-cache-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// True (after printing why) when this suite runs its containers in microVMs
/// (`BERTH_TEST_ISOLATION=microvm`) and the test does not apply there: the caller returns.
pub fn skip_in_microvm_suite(why: &str) -> bool {
    let microvm = std::env::var("BERTH_TEST_ISOLATION").is_ok_and(|v| v == "microvm");
    if microvm {
        eprintln!("SKIPPED with BERTH_TEST_ISOLATION=microvm: {why}");
    }
    microvm
}

/// Retry `f` until it succeeds or `secs` pass (a server in a container may take a
/// moment to listen); the last error is the panic message.
#[allow(dead_code)]
pub fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// GET `url` from inside the daemon's network namespace until the body contains
/// `want`. (busybox 1.35's own `wget -T` crashes; `timeout` bounds it instead.)
#[allow(dead_code)]
/// A busybox web server container answering `hello from NAME` on port 80 (every address,
/// IPv6 too); `args` go before the image. Its id.
pub fn web_server(d: &TestDaemon, image: &str, name: &str, args: &[&str]) -> String {
    let mut a = vec!["run", "-d", "--name", name];
    a.extend_from_slice(args);
    let cmd = format!(
        "mkdir -p /w && echo hello from {name} > /w/index.html && exec httpd -f -p 80 -h /w"
    );
    a.extend_from_slice(&[image, "sh", "-c", &cmd]);
    d.docker_ok(&a).trim().to_string()
}

pub fn netns_get_until(d: &TestDaemon, url: &str, want: &str, secs: u64) {
    eventually(&format!("GET {url} from the host"), secs, || {
        let o = d.in_netns(&["timeout", "5", "/bin/busybox", "wget", "-qO-", url]);
        let out = stdout(&o);
        if out.contains(want) {
            Ok(())
        } else {
            Err(format!("{out} {}", stderr(&o)))
        }
    });
}
