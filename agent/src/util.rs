//! Small helpers shared by the agent's modules.
use std::{
    io,
    path::{Component, Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Resolves `unsafe_path` inside `root` following symlinks as if `root` were `/`, so a symlink in
/// the image can never point a mount outside the rootfs.
pub fn secure_join(root: &Path, unsafe_path: &str) -> io::Result<PathBuf> {
    let mut pending: Vec<PathBuf> = vec![PathBuf::from(unsafe_path)];
    let mut parts: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    // `pending` holds path suffixes still to walk, innermost last.
    let mut queue: std::collections::VecDeque<std::ffi::OsString> =
        std::collections::VecDeque::new();
    for p in pending.drain(..) {
        for c in p.components() {
            if let Component::Normal(n) = c {
                queue.push_back(n.to_owned());
            } else if c == Component::ParentDir {
                queue.push_back("..".into());
            }
        }
    }
    while let Some(c) = queue.pop_front() {
        if c == ".." {
            parts.pop();
            continue;
        }
        let mut cand = root.to_path_buf();
        cand.extend(&parts);
        cand.push(&c);
        match std::fs::symlink_metadata(&cand) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(io::Error::other(format!(
                        "too many symlinks resolving {unsafe_path}"
                    )));
                }
                let target = std::fs::read_link(&cand)?;
                if target.is_absolute() {
                    parts.clear();
                }
                let mut front = Vec::new();
                for tc in target.components() {
                    match tc {
                        Component::Normal(n) => front.push(n.to_owned()),
                        Component::ParentDir => front.push("..".into()),
                        _ => {}
                    }
                }
                for n in front.into_iter().rev() {
                    queue.push_front(n);
                }
            }
            _ => parts.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&parts);
    Ok(out)
}

pub fn errno_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_inside_root() {
        let dir = std::env::temp_dir().join(format!("berth-sj-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::os::unix::fs::symlink("/../../../tmp", dir.join("escape")).unwrap();
        std::os::unix::fs::symlink("../etc", dir.join("etc/self")).unwrap();
        assert_eq!(secure_join(&dir, "/escape/x").unwrap(), dir.join("tmp/x"));
        assert_eq!(
            secure_join(&dir, "/../../etc/hosts").unwrap(),
            dir.join("etc/hosts")
        );
        assert_eq!(
            secure_join(&dir, "/etc/self/self/a").unwrap(),
            dir.join("etc/a")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
