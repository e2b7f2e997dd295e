//! Process-mode agent benchmarks (run as root): see benches/agent/run.sh.
//!
//! `agent_bench <berth-agent binary> [work dir]` prints latencies (median / p95) of a full
//! container run, start->exit, exec, and stdout/stdin throughput through the protocol.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use berth_agent_protocol::{
    client::{spawn_process_agent, AgentClient, SpawnOpts},
    ContainerSpec, ExecSpec, ProcessId, ProcessSpec, Rootfs,
};

fn busybox_layer(work: &Path) -> PathBuf {
    let root = work.join("layer");
    if root.join("bin/sh").exists() {
        return root;
    }
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "true", "cat", "dd", "sleep"] {
        std::os::unix::fs::symlink("/bin/busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    root
}

struct Bench {
    agent: PathBuf,
    work: PathBuf,
    layer: PathBuf,
    n: u32,
}

impl Bench {
    fn spec(&self, name: &str, args: &[&str]) -> (ContainerSpec, PathBuf) {
        let id = format!(
            "bench-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let dir = self.work.join(&id);
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let spec = ContainerSpec {
            id,
            rootfs: Rootfs::Overlay {
                lower: vec![self.layer.clone()],
                upper,
                work,
            },
            process: ProcessSpec {
                args: args.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            ..Default::default()
        };
        (spec, dir.join("exec"))
    }

    async fn spawn(&self, spec: &ContainerSpec, exec_dir: &Path) -> AgentClient {
        let (c, _) = spawn_process_agent(&SpawnOpts::new(&self.agent, exec_dir, &spec.id))
            .await
            .unwrap();
        c.create(spec.clone()).await.unwrap();
        c
    }
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let med = v[v.len() / 2];
    let p95 = v[(v.len() * 95 / 100).min(v.len() - 1)];
    println!(
        "{name:<44} n={:<4} median {:>8.2} ms   p95 {:>8.2} ms",
        v.len(),
        med.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let agent = PathBuf::from(
        args.next()
            .expect("usage: agent_bench <berth-agent> [workdir]"),
    );
    let work = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "/tmp/berth-agent-bench".into()),
    );
    std::fs::create_dir_all(&work).unwrap();
    let layer = busybox_layer(&work);
    let b = Bench {
        agent,
        work: work.clone(),
        layer,
        n: 20,
    };

    // 1. Full run: spawn agent, create, start `true`, wait, shutdown.
    let mut full = Vec::new();
    let mut start_exit = Vec::new();
    for _ in 0..b.n {
        let (spec, dir) = b.spec("run", &["true"]);
        let t = Instant::now();
        let c = b.spawn(&spec, &dir).await;
        let t1 = Instant::now();
        c.start(ProcessId::INIT).await.unwrap();
        let st = c.wait(ProcessId::INIT).await.unwrap();
        assert_eq!(st.code, 0);
        start_exit.push(t1.elapsed());
        c.shutdown().await.unwrap();
        full.push(t.elapsed());
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }
    report("container run (spawn+create+start+wait+shutdown)", full);
    report("start -> exit of `true` (ns, rootfs, cgroups)", start_exit);

    // 2. Exec latency in a running container.
    let (spec, dir) = b.spec("exec", &["sleep", "600"]);
    let c = b.spawn(&spec, &dir).await;
    c.start(ProcessId::INIT).await.unwrap();
    let mut execs = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let id = c
            .exec(ExecSpec {
                process: ProcessSpec {
                    args: vec!["true".into()],
                    ..Default::default()
                },
                privileged: false,
            })
            .await
            .unwrap();
        c.start(id).await.unwrap();
        assert_eq!(c.wait(id).await.unwrap().code, 0);
        execs.push(t.elapsed());
    }
    report("exec `true` (create+start+wait)", execs);

    // 3. stdout throughput: 256 MiB through pipe -> agent -> socket -> client.
    let id = c
        .exec(ExecSpec {
            process: ProcessSpec {
                args: vec![
                    "dd".into(),
                    "if=/dev/zero".into(),
                    "bs=65536".into(),
                    "count=4096".into(),
                ],
                ..Default::default()
            },
            privileged: false,
        })
        .await
        .unwrap();
    let mut out = c.output(id).await.unwrap();
    let t = Instant::now();
    c.start(id).await.unwrap();
    let mut bytes = 0usize;
    while let Some(chunk) = out.recv().await {
        if chunk.stream == berth_agent_protocol::client::StdStream::Stdout {
            bytes += chunk.data.len();
        }
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(bytes, 256 << 20);
    println!(
        "{:<44} {:>8.0} MiB/s ({} MiB in {:.2} s)",
        "stdout throughput",
        bytes as f64 / secs / (1 << 20) as f64,
        bytes >> 20,
        secs
    );

    // 4. stdin throughput: 64 MiB into `cat > /dev/null`.
    let id = c
        .exec(ExecSpec {
            process: ProcessSpec {
                args: vec!["sh".into(), "-c".into(), "cat > /dev/null".into()],
                open_stdin: true,
                ..Default::default()
            },
            privileged: false,
        })
        .await
        .unwrap();
    let out = c.output(id).await.unwrap();
    c.start(id).await.unwrap();
    let mut stdin = c.stdin(id);
    let block = vec![b'x'; 1 << 20];
    let t = Instant::now();
    for _ in 0..64 {
        stdin.write(&block).await.unwrap();
    }
    stdin.close().await.unwrap();
    assert_eq!(c.wait(id).await.unwrap().code, 0);
    let secs = t.elapsed().as_secs_f64();
    drop(out);
    println!(
        "{:<44} {:>8.0} MiB/s (64 MiB in {:.2} s)",
        "stdin throughput",
        64.0 / secs,
        secs
    );

    c.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}
