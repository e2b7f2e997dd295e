//! Measures berth-vmm start-up and memory overhead (see benches/vmm/).
//!
//! For each run it spawns the VMM binary with a 128 MiB guest, asks the
//! control socket for `first_run_us` (process start in main() to vCPU 0's
//! first KVM_RUN) and reads /proc/<pid>/smaps: overhead = total RSS minus
//! the RSS of the guest-RAM mapping, i.e. every mapping that is not guest
//! memory (Firecracker's definition).
//!
//! Usage: vmm_bench --vmm PATH [--kernel PATH | --raw] [--runs N] [--mem-mib N]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_vmm::control::{request, ControlRequest};

struct Sample {
    first_run_us: u64,
    first_run_cpu_us: u64,
    memslot_us: u64,
    rss_kib: u64,
    guest_rss_kib: u64,
}

/// (total Rss, Rss of the mapping of exactly `guest_bytes`) in KiB.
fn smaps(pid: u32, guest_bytes: u64) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let (mut total, mut guest, mut cur_is_guest) = (0, 0, false);
    for line in s.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let (a, b) = first.split_once('-').unwrap();
            let size = u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
            let anon = line.split_whitespace().nth(5).is_none();
            cur_is_guest = anon && size == guest_bytes;
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap();
            total += kb;
            if cur_is_guest {
                guest += kb;
            }
        }
    }
    (total, guest)
}

fn raw_guest(dir: &Path) -> PathBuf {
    // Long mode: boot-complete write, then spin (the bench shuts it down).
    let mut code = vec![0xb8, 0x00, 0x00, 0x00, 0xc0, 0xc6, 0x00, 123];
    code.extend_from_slice(&[0xeb, 0xfe]);
    let p = dir.join("guest.bin");
    std::fs::write(&p, code).unwrap();
    p
}

fn run_once(vmm: &Path, kernel: Option<&Path>, mem_mib: u64, i: usize) -> Sample {
    let dir = std::env::temp_dir().join(format!("berth-vmm-bench-{}-{i}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("control.sock");
    let mut cfg = serde_json::json!({
        "mem_mib": mem_mib,
        "serial": "none",
        "control_socket": sock,
    });
    match kernel {
        Some(k) => cfg["kernel"] = serde_json::json!(k),
        None => {
            cfg["raw_image"] =
                serde_json::json!({"path": raw_guest(&dir), "load_addr": 0x10000, "mode": "long"})
        }
    }
    let cfg_path = dir.join("vm.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut child = Command::new(vmm)
        .arg("--config")
        .arg(&cfg_path)
        .env("BERTH_VMM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (first_run_us, first_run_cpu_us, memslot_us) = loop {
        if let Ok(s) = request(&sock, &ControlRequest::Status) {
            if let (Some(t), Some(c), Some(m)) = (s.first_run_us, s.first_run_cpu_us, s.memslot_us)
            {
                break (t, c, m);
            }
        }
        assert!(Instant::now() < deadline, "VMM did not start");
        std::thread::sleep(Duration::from_millis(2));
    };
    // Let the VMM settle (device thread idle, guest running).
    std::thread::sleep(Duration::from_millis(300));
    let (rss_kib, guest_rss_kib) = smaps(child.id(), mem_mib << 20);
    let _ = request(&sock, &ControlRequest::Shutdown { force: true });
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Sample {
        first_run_us,
        first_run_cpu_us,
        memslot_us,
        rss_kib,
        guest_rss_kib,
    }
}

fn stats(mut v: Vec<u64>) -> String {
    v.sort_unstable();
    let n = v.len();
    format!("median {} min {} max {} (n={n})", v[n / 2], v[0], v[n - 1])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let vmm = PathBuf::from(get("--vmm").expect("--vmm PATH"));
    let kernel = get("--kernel").map(PathBuf::from);
    let runs: usize = get("--runs").map_or(20, |s| s.parse().unwrap());
    let mem_mib: u64 = get("--mem-mib").map_or(128, |s| s.parse().unwrap());
    let samples: Vec<Sample> = (0..runs)
        .map(|i| run_once(&vmm, kernel.as_deref(), mem_mib, i))
        .collect();
    let what = kernel
        .as_ref()
        .map_or("raw long-mode guest".to_string(), |k| {
            k.display().to_string()
        });
    println!("guest: {what}, {mem_mib} MiB, {runs} runs");
    println!(
        "start -> first KVM_RUN (us): {}",
        stats(samples.iter().map(|s| s.first_run_us).collect())
    );
    println!(
        "  VMM CPU time (all threads) up to first KVM_RUN (us): {}",
        stats(samples.iter().map(|s| s.first_run_cpu_us).collect())
    );
    println!(
        "  KVM_SET_USER_MEMORY_REGION wall time (us, overlapped with setup): {}",
        stats(samples.iter().map(|s| s.memslot_us).collect())
    );
    println!(
        "RSS overhead (KiB, total RSS - guest RAM RSS): {}",
        stats(
            samples
                .iter()
                .map(|s| s.rss_kib - s.guest_rss_kib)
                .collect()
        )
    );
    println!(
        "total RSS (KiB): {}; guest RAM RSS (KiB): {}",
        stats(samples.iter().map(|s| s.rss_kib).collect()),
        stats(samples.iter().map(|s| s.guest_rss_kib).collect())
    );
}
