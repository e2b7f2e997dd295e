//! `ps -ef`-like listing of the container's processes (Docker's default `top` columns).
use std::{collections::HashMap, fs};

use berth_agent_protocol::Top;

fn users() -> HashMap<u32, String> {
    fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.parse().ok()?, f.first()?.to_string()))
        })
        .collect()
}

fn hz() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

fn boot_time() -> u64 {
    fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

fn uptime_secs() -> f64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// One row per pid: UID PID PPID C STIME TTY TIME CMD.
pub fn top(pids: &[i32]) -> Top {
    let names = users();
    let hz = hz();
    let btime = boot_time();
    let uptime = uptime_secs();
    let mut rows = Vec::new();
    let mut sorted = pids.to_vec();
    sorted.sort_unstable();
    for pid in sorted {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm may contain spaces and parens: fields start after the last ')'.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = stat[stat.find('(').map(|i| i + 1).unwrap_or(0)..close].to_string();
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let ppid = num(1);
        let tty_nr = num(4);
        let cpu_ticks = num(11) + num(12);
        let start_ticks = num(19);
        let uid = fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Uid:")
                    .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
            })
            .unwrap_or(0);
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = if cmdline.is_empty() {
            format!("[{comm}]")
        } else {
            String::from_utf8_lossy(&cmdline)
                .trim_end_matches('\0')
                .replace('\0', " ")
        };
        let elapsed = (uptime - start_ticks as f64 / hz as f64).max(0.001);
        let c = ((cpu_ticks as f64 / hz as f64) / elapsed * 100.0) as u64;
        let start = btime + start_ticks / hz;
        let (h, m) = ((start / 3600) % 24, (start / 60) % 60);
        let secs = cpu_ticks / hz;
        let tty = match (tty_nr >> 8) & 0xfff {
            0 => "?".to_string(),
            136..=143 => format!("pts/{}", (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00)),
            4 => format!("tty{}", tty_nr & 0xff),
            _ => "?".to_string(),
        };
        rows.push(vec![
            names.get(&uid).cloned().unwrap_or_else(|| uid.to_string()),
            pid.to_string(),
            ppid.to_string(),
            c.to_string(),
            format!("{h:02}:{m:02}"),
            tty,
            format!(
                "{:02}:{:02}:{:02}",
                secs / 3600,
                (secs / 60) % 60,
                secs % 60
            ),
            cmd,
        ]);
    }
    Top {
        titles: ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        processes: rows,
    }
}
