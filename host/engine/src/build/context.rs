//! The build context: the client's tar unpacked into a private directory, and the
//! lookups COPY and ADD make in it. Every path is resolved inside the context root:
//! `..` that climbs out is refused, and symlinks are followed as if the root were `/`,
//! so nothing outside the context is ever read.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::images::{digest, unpack};
use crate::{Error, Result};

pub struct Context {
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Context {
    /// Unpack the (maybe compressed) context tar. Hostile entries (`..`, absolute
    /// paths, links through symlinks) are refused by the layer unpacker.
    pub fn unpack(tar: impl Read, tmp_parent: &Path) -> Result<Context> {
        std::fs::create_dir_all(tmp_parent)?;
        let dir = tempfile::Builder::new()
            .prefix("context-")
            .tempdir_in(tmp_parent)?;
        let root = dir.path().join("root");
        std::fs::create_dir(&root)?;
        let (_, reader) = digest::decompress(tar)?;
        unpack::unpack_layer(reader, &root).map_err(|e| match e {
            unpack::Error::Invalid(m) => Error::invalid(format!("invalid build context: {m}")),
            other => Error::from(other),
        })?;
        Ok(Context { root, _dir: dir })
    }

    pub fn read_dockerfile(&self, name: &str) -> Result<String> {
        let name = if name.is_empty() { "Dockerfile" } else { name };
        let p = resolve_in_root(&self.root, name).map_err(|_| {
            Error::invalid(format!("forbidden path outside the build context: {name}"))
        })?;
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The CLI sends `Dockerfile` but some clients spell it in lower case.
                if name == "Dockerfile" {
                    std::fs::read(self.root.join("dockerfile")).map_err(|_| {
                        Error::invalid("Cannot locate specified Dockerfile: Dockerfile")
                    })?
                } else {
                    return Err(Error::invalid(format!(
                        "Cannot locate specified Dockerfile: {name}"
                    )));
                }
            }
            Err(e) => return Err(e.into()),
        };
        String::from_utf8(bytes).map_err(|_| Error::invalid("the Dockerfile is not valid UTF-8"))
    }
}

/// Lexically clean `rel` (relative to a root); `None` when it climbs out.
pub fn clean_relative(rel: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(rel).components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Some(out)
}

/// `rel` resolved under `root` with every symlink followed as if `root` were `/`
/// (moby's `FollowSymlinkInScope`). The result may not exist. Climbing out of the
/// root lexically is an error; through a symlink it stops at the root.
pub fn resolve_in_root(root: &Path, rel: &str) -> Result<PathBuf> {
    let start = clean_relative(rel).ok_or_else(|| {
        Error::invalid(format!("forbidden path outside the build context: {rel}"))
    })?;
    let mut todo: Vec<std::ffi::OsString> = start
        .components()
        .rev()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let mut done = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        if c == "." || c.is_empty() {
            continue;
        }
        let candidate = done.join(&c);
        match std::fs::symlink_metadata(root.join(&candidate)) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(Error::invalid(format!("too many symlinks resolving {rel}")));
                }
                let target = std::fs::read_link(root.join(&candidate))?;
                if target.is_absolute() {
                    done = PathBuf::new();
                }
                for t in target.components().rev() {
                    match t {
                        Component::Normal(n) => todo.push(n.to_os_string()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => done = candidate,
        }
    }
    Ok(root.join(done))
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The context paths a COPY/ADD source names: one path, or every glob match (sorted).
pub fn expand_source(root: &Path, src: &str) -> Result<Vec<PathBuf>> {
    let cleaned = clean_relative(src).ok_or_else(|| {
        Error::invalid(format!(
            "forbidden path outside the build context: {src} ()"
        ))
    })?;
    if !has_glob(src) {
        let p = resolve_in_root(root, src)?;
        if std::fs::symlink_metadata(&p).is_err() {
            return Err(Error::invalid(format!(
                "file not found in build context or excluded by .dockerignore: stat {src}: file does not exist"
            )));
        }
        return Ok(vec![p]);
    }
    let mut current = vec![root.to_path_buf()];
    for comp in cleaned.components() {
        let pat = comp.as_os_str().to_string_lossy().to_string();
        let mut next = Vec::new();
        for dir in &current {
            if !has_glob(&pat) {
                let p = dir.join(&pat);
                if std::fs::symlink_metadata(&p).is_ok() {
                    next.push(p);
                }
                continue;
            }
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<_> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| crate::images::glob_match(&pat, n))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| dir.join(n)));
        }
        current = next;
    }
    if current.is_empty() {
        return Err(Error::invalid(format!(
            "no source files were specified: {src} matches nothing in the build context"
        )));
    }
    // A match that is a symlink is resolved in scope like a plain source.
    current
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .to_string();
            resolve_in_root(root, &rel)
        })
        .collect()
}

/// Content hash of a source tree (names, modes, link targets, file bytes), the
/// COPY/ADD part of the build cache key.
pub fn hash_tree(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    fn walk(h: &mut Sha256, base: &Path, rel: &Path) -> Result<()> {
        // `join("")` would add a trailing `/`, which a file path cannot take.
        let p = if rel.as_os_str().is_empty() {
            base.to_path_buf()
        } else {
            base.join(rel)
        };
        let m = std::fs::symlink_metadata(&p)?;
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(m.permissions().mode().to_le_bytes());
        h.update(m.uid().to_le_bytes());
        h.update(m.gid().to_le_bytes());
        if m.file_type().is_symlink() {
            h.update(std::fs::read_link(&p)?.as_os_str().as_encoded_bytes());
        } else if m.is_file() {
            let mut f = std::fs::File::open(&p)?;
            std::io::copy(&mut f, h)?;
        } else if m.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&p)?
                .flatten()
                .map(|e| e.file_name())
                .collect();
            names.sort();
            for n in names {
                walk(h, base, &rel.join(n))?;
            }
        }
        h.update([1]);
        Ok(())
    }
    walk(&mut h, path, Path::new(""))?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_stays_in_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("a/up")).unwrap();
        std::os::unix::fs::symlink("b/f", root.join("a/rel")).unwrap();
        assert_eq!(resolve_in_root(root, "a/rel").unwrap(), root.join("a/b/f"));
        assert_eq!(
            resolve_in_root(root, "abs").unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(resolve_in_root(root, "a/up/x").unwrap(), root.join("etc/x"));
        assert!(resolve_in_root(root, "../x").is_err());
        assert!(resolve_in_root(root, "a/../../x").is_err());
        assert_eq!(
            resolve_in_root(root, "/a/./b/../b/f").unwrap(),
            root.join("a/b/f")
        );
        let e = expand_source(root, "abs").unwrap_err().to_string();
        assert!(e.contains("file not found in build context"), "{e}");
        assert!(expand_source(root, "../x")
            .unwrap_err()
            .to_string()
            .contains("outside the build context"));
    }

    #[test]
    fn globs_and_hashes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("src")).unwrap();
        for n in ["a.txt", "b.txt", "c.md"] {
            std::fs::write(root.join("src").join(n), n).unwrap();
        }
        let got = expand_source(root, "src/*.txt").unwrap();
        assert_eq!(got, vec![root.join("src/a.txt"), root.join("src/b.txt")]);
        assert!(expand_source(root, "nope/*.x").is_err());
        let h1 = hash_tree(&root.join("src")).unwrap();
        assert_ne!(
            hash_tree(&root.join("src/a.txt")).unwrap(),
            hash_tree(&root.join("src/b.txt")).unwrap()
        );
        std::fs::write(root.join("src/c.md"), "changed").unwrap();
        assert_ne!(h1, hash_tree(&root.join("src")).unwrap());
    }
}
