//! Resolve plugin-relative paths beneath a plugin's root without following
//! symlinks, so a plugin cannot point the host (or a VM) outside its root.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::validate::check_relative_path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Dir,
    File,
}

fn open_at(dir: Option<&OwnedFd>, name: &[u8], flags: i32, mode: u32) -> std::io::Result<OwnedFd> {
    let c =
        CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: plain syscall on a valid C string; the returned fd is owned by us.
    let fd = unsafe { libc::openat(dirfd, c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-buffer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// Open the directory `rel` beneath `root`, refusing symlinks at every step.
/// Returns an `O_PATH` descriptor usable as a dirfd.
pub fn open_dir_beneath(root: &Path, rel: &str) -> Result<OwnedFd, String> {
    let (fd, _) = walk(root, rel, Expect::Dir)?;
    Ok(fd)
}

fn walk(root: &Path, rel: &str, expect: Expect) -> Result<(OwnedFd, libc::stat), String> {
    let mut cur = open_at(
        None,
        root.as_os_str().as_bytes(),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .map_err(|e| format!("plugin root {}: {e}", root.display()))?;
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    let mut st = fstat(&cur).map_err(|e| e.to_string())?;
    for (i, comp) in comps.iter().enumerate() {
        let next = open_at(
            Some(&cur),
            comp.as_bytes(),
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|e| format!("{rel:?}: component {comp:?}: {e}"))?;
        st = fstat(&next).map_err(|e| e.to_string())?;
        let fmt = st.st_mode & libc::S_IFMT;
        if fmt == libc::S_IFLNK {
            return Err(format!("{rel:?}: component {comp:?} is a symlink"));
        }
        if i + 1 < comps.len() && fmt != libc::S_IFDIR {
            return Err(format!("{rel:?}: component {comp:?} is not a directory"));
        }
        cur = next;
    }
    let fmt = st.st_mode & libc::S_IFMT;
    match expect {
        Expect::Dir if fmt != libc::S_IFDIR => Err(format!("{rel:?} is not a directory")),
        Expect::File if fmt != libc::S_IFREG => Err(format!("{rel:?} is not a regular file")),
        _ => Ok((cur, st)),
    }
}

/// Check `rel` (syntax, then every component on disk) and return the host path.
pub fn resolve(root: &Path, rel: &str, expect: Expect) -> Result<PathBuf, String> {
    check_relative_path(rel)?;
    walk(root, rel, expect)?;
    let clean: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    Ok(root.join(clean.join("/")))
}

/// Create a new regular file `rel` beneath `root` (parent must exist, no symlinks,
/// must not exist yet) and return it with its host path.
pub fn create_file(root: &Path, rel: &str) -> Result<(File, PathBuf), String> {
    check_relative_path(rel)?;
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    };
    if name.is_empty() {
        return Err(format!("{rel:?} has no file name"));
    }
    let dir = if parent.is_empty() {
        open_at(
            None,
            root.as_os_str().as_bytes(),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| e.to_string())?
    } else {
        open_dir_beneath(root, parent)?
    };
    let fd = open_at(
        Some(&dir),
        name.as_bytes(),
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
        0o600,
    )
    .map_err(|e| format!("create {rel:?}: {e}"))?;
    Ok((File::from(fd), root.join(rel)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_symlinks_and_escapes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("v/ok")).unwrap();
        std::fs::write(root.join("v/file"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("v/link")).unwrap();
        std::os::unix::fs::symlink("ok", root.join("v/inner")).unwrap();
        assert_eq!(
            resolve(root, "v/ok", Expect::Dir).unwrap(),
            root.join("v/ok")
        );
        assert_eq!(
            resolve(root, "v//ok", Expect::Dir).unwrap(),
            root.join("v/ok")
        );
        assert!(resolve(root, "v/file", Expect::File).is_ok());
        assert!(resolve(root, "v/file", Expect::Dir).is_err());
        assert!(resolve(root, "v/link", Expect::Dir).is_err());
        assert!(resolve(root, "v/link/passwd", Expect::File).is_err());
        assert!(
            resolve(root, "v/inner", Expect::Dir).is_err(),
            "even in-root symlinks are refused"
        );
        assert!(resolve(root, "../etc", Expect::Dir).is_err());
        assert!(resolve(root, "/etc", Expect::Dir).is_err());
        assert!(resolve(root, "v/missing", Expect::Dir).is_err());
        assert!(create_file(root, "v/link/evil").is_err());
        let (_f, p) = create_file(root, "v/ok/new.img").unwrap();
        assert!(p.starts_with(root));
        assert!(
            create_file(root, "v/ok/new.img").is_err(),
            "must not exist yet"
        );
    }
}
