//! Mount points of a container's root, from `/proc/<pid>/mountinfo`.
//!
//! `docker export` writes the container's own filesystem only, keeping other mounts'
//! mount points as empty directories. Telling mounts apart by `st_dev` is not enough: on
//! an overlay whose layers sit on different filesystems (a microVM's image and rw disks)
//! every non-directory reports the device of the layer it came from.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Undoes the octal escapes (`\040` for a space, ...) the kernel writes in mountinfo.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points in `mountinfo` text, as the reading process sees them.
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|f| PathBuf::from(unescape(f)))
        .collect()
}

/// The mount points strictly below `root`, relative to it as absolute paths (`/proc`).
///
/// A root of the form `/proc/<pid>/root` is another process's root, in a mount namespace
/// of its own: its mounts are read from that process's mountinfo, where they are already
/// relative to its root. Any other root is looked up in this process's mounts.
pub fn mounts_below(root: &Path) -> std::io::Result<HashSet<PathBuf>> {
    let pid_root = root.strip_prefix("/proc").ok().and_then(|rest| {
        let mut c = rest.components();
        let pid = c.next()?.as_os_str().to_str()?.parse::<u32>().ok()?;
        (c.next()?.as_os_str() == "root" && c.next().is_none()).then_some(pid)
    });
    if let Some(pid) = pid_root {
        let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
        return Ok(mount_points(&text)
            .into_iter()
            .filter(|p| p != Path::new("/"))
            .collect());
    }
    let root = root.canonicalize()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mount_points(&text)
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&root).ok()?;
            (!rel.as_os_str().is_empty()).then(|| Path::new("/").join(rel))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:1 / / rw,relatime - ext4 /dev/vda rw
23 22 0:5 / /proc rw - proc proc rw
24 22 0:21 / /tmp/my\\040dir rw - tmpfs tmpfs rw
25 22 254:1 /x /tmp/root/etc/hosts rw - ext4 /dev/vda rw
";

    #[test]
    fn parses_and_unescapes_mount_points() {
        assert_eq!(
            mount_points(SAMPLE),
            ["/", "/proc", "/tmp/my dir", "/tmp/root/etc/hosts"].map(PathBuf::from)
        );
        assert_eq!(unescape("a\\134b\\0"), "a\\b\\0");
    }

    #[test]
    fn mounts_below_this_process_root() {
        // `/` itself is never reported; `/proc` is a mount below it on any Linux.
        let below = mounts_below(Path::new("/")).unwrap();
        assert!(!below.contains(Path::new("/")));
        assert!(below.contains(Path::new("/proc")), "{below:?}");
        let own = mounts_below(Path::new(&format!("/proc/{}/root", std::process::id()))).unwrap();
        assert!(own.contains(Path::new("/proc")), "{own:?}");
    }
}
