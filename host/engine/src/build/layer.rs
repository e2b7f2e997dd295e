//! COPY and ADD write their files straight into a new layer tar: no container runs.
//! Sources were already resolved inside their root (the context or a stage's files);
//! this module decides destination paths with Docker's rules and owner/modes.

use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::images::{digest, unpack};
use crate::{Error, Result};

/// Whether a path exists in the image being built, and whether it is a directory.
pub struct ImageView {
    /// Unpacked layer dirs, bottom → top.
    pub layers: Vec<PathBuf>,
}

impl ImageView {
    /// `Some(is_dir)` when `path` (absolute in the image) exists. Whiteouts in upper
    /// layers hide what lower layers hold.
    pub fn kind(&self, path: &Path) -> Option<bool> {
        let rel = path.strip_prefix("/").unwrap_or(path);
        for dir in self.layers.iter().rev() {
            if let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) {
                let wh = dir
                    .join(parent)
                    .join(format!(".wh.{}", name.to_string_lossy()));
                if wh.symlink_metadata().is_ok() {
                    return None;
                }
            }
            if let Ok(m) = dir.join(rel).symlink_metadata() {
                return Some(m.is_dir());
            }
        }
        None
    }

    /// A file of the image (top-most layer wins), e.g. `/etc/passwd`.
    pub fn read(&self, path: &str) -> Option<String> {
        let rel = path.trim_start_matches('/');
        self.layers
            .iter()
            .rev()
            .find_map(|d| std::fs::read_to_string(d.join(rel)).ok())
    }

    /// `--chown=user[:group]`: numeric, or names from the image's passwd/group.
    pub fn resolve_chown(&self, spec: &str) -> Result<(u64, u64)> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let lookup = |file: &str, name: &str| -> Option<(u64, u64)> {
            self.read(file)?.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[0] == name)
                    .then(|| Some((f[2].parse().ok()?, f[3].parse().unwrap_or(0))))
                    .flatten()
            })
        };
        let (uid, primary_gid) = match user.parse::<u64>() {
            Ok(n) => (n, n),
            Err(_) => lookup("/etc/passwd", user).ok_or_else(|| {
                Error::invalid(format!("unable to convert uid/gid chown string to host mapping: can't find uid for user {user}: no such user: {user}"))
            })?,
        };
        let gid = match group {
            None => primary_gid,
            Some(g) => match g.parse::<u64>() {
                Ok(n) => n,
                Err(_) => lookup("/etc/group", g).map(|(gid, _)| gid).ok_or_else(|| {
                    Error::invalid(format!("unable to convert uid/gid chown string to host mapping: can't find gid for group {g}: no such group: {g}"))
                })?,
            },
        };
        Ok((uid, gid))
    }
}

pub struct CopyRequest<'a> {
    /// Resolved source paths (files, dirs, symlinks).
    pub sources: &'a [PathBuf],
    /// The destination as written (relative ones are under `workdir`).
    pub dest: &'a str,
    pub workdir: &'a str,
    pub owner: Option<(u64, u64)>,
    /// ADD: local tar archives are unpacked at the destination.
    pub extract_archives: bool,
}

fn tar_name(p: &Path) -> PathBuf {
    p.strip_prefix("/").unwrap_or(p).to_path_buf()
}

fn is_tar_archive(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let Ok((_, mut r)) = digest::decompress(f) else {
        return false;
    };
    let mut block = [0u8; 512];
    if r.read_exact(&mut block).is_err() {
        return false;
    }
    // ustar magic, or a valid header checksum for old v7 archives.
    if &block[257..262] == b"ustar" {
        return true;
    }
    let stored = std::str::from_utf8(&block[148..156])
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok());
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u64
            }
        })
        .sum();
    stored == Some(sum) && block[0] != 0
}

struct Writer<'w, W: Write> {
    tar: &'w mut tar::Builder<W>,
    owner: Option<(u64, u64)>,
    /// Directories already emitted in this layer.
    made: std::collections::HashSet<PathBuf>,
}

impl<W: Write> Writer<'_, W> {
    fn header(&self, m: &std::fs::Metadata, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(m.permissions().mode() & 0o7777);
        h.set_mtime(m.mtime().max(0) as u64);
        let (uid, gid) = self.owner.unwrap_or((0, 0));
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(0);
        h
    }

    /// Parent directories of `path` that the image lacks (Docker creates them 0755).
    fn parents(&mut self, path: &Path, view: &ImageView) -> Result<()> {
        let mut missing = Vec::new();
        let mut cur = path.parent();
        while let Some(p) = cur {
            if p == Path::new("/") || self.made.contains(p) || view.kind(p) == Some(true) {
                break;
            }
            missing.push(p.to_path_buf());
            cur = p.parent();
        }
        for p in missing.into_iter().rev() {
            self.dir_entry(&p, 0o755, None)?;
        }
        Ok(())
    }

    fn dir_entry(&mut self, path: &Path, mode: u32, mtime: Option<i64>) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_mtime(mtime.unwrap_or(0).max(0) as u64);
        let (uid, gid) = self.owner.unwrap_or((0, 0));
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(0);
        self.tar
            .append_data(&mut h, tar_name(path), std::io::empty())?;
        self.made.insert(path.to_path_buf());
        Ok(())
    }

    /// `src` (file, symlink or directory tree) written at `dst`.
    fn tree(&mut self, src: &Path, dst: &Path) -> Result<()> {
        let m = std::fs::symlink_metadata(src)?;
        let ft = m.file_type();
        if ft.is_symlink() {
            let mut h = self.header(&m, tar::EntryType::Symlink);
            self.tar
                .append_link(&mut h, tar_name(dst), std::fs::read_link(src)?)?;
        } else if ft.is_dir() {
            if !self.made.contains(dst) {
                self.dir_entry(dst, m.permissions().mode() & 0o7777, Some(m.mtime()))?;
            }
            let mut names: Vec<_> = std::fs::read_dir(src)?
                .flatten()
                .map(|e| e.file_name())
                .collect();
            names.sort();
            for n in names {
                self.tree(&src.join(&n), &dst.join(&n))?;
            }
        } else if ft.is_file() {
            let mut h = self.header(&m, tar::EntryType::Regular);
            h.set_size(m.len());
            self.tar
                .append_data(&mut h, tar_name(dst), std::fs::File::open(src)?)?;
        }
        // Devices, fifos and sockets in a context are skipped, as the CLI never sends them.
        Ok(())
    }

    /// ADD of a local archive: its entries, cleaned, under `dst`.
    fn archive(&mut self, src: &Path, dst: &Path) -> Result<()> {
        let (_, r) = digest::decompress(std::fs::File::open(src)?)?;
        let mut a = tar::Archive::new(r);
        for e in a.entries()? {
            let mut e = e?;
            let raw = e.path_bytes().into_owned();
            let comps = unpack::clean_components(&raw)?;
            if comps.is_empty() {
                continue;
            }
            let mut name = dst.to_path_buf();
            for c in &comps {
                name.push(c);
            }
            let mut h = e.header().clone();
            // Hand-made archives leave numeric fields blank; the layer gets zeros.
            if h.uid().is_err() {
                h.set_uid(0);
            }
            if h.gid().is_err() {
                h.set_gid(0);
            }
            if h.mtime().is_err() {
                h.set_mtime(0);
            }
            if let Some(link) = e.link_name_bytes() {
                if h.entry_type() == tar::EntryType::Link {
                    // Hard links point inside the same extraction root.
                    let target = unpack::clean_components(&link)?;
                    let mut t = dst.to_path_buf();
                    for c in &target {
                        t.push(c);
                    }
                    self.tar
                        .append_link(&mut h, tar_name(&name), tar_name(&t))?;
                    continue;
                }
            }
            let size = h.size()?;
            let data = (&mut e).take(size);
            if h.entry_type().is_dir() {
                self.made.insert(name.clone());
            }
            self.tar.append_data(&mut h, tar_name(&name), data)?;
        }
        Ok(())
    }
}

fn absolute_dest(dest: &str, workdir: &str) -> PathBuf {
    let base = if workdir.is_empty() { "/" } else { workdir };
    let p = if dest.starts_with('/') {
        PathBuf::from(dest)
    } else {
        Path::new(base).join(dest)
    };
    // Lexically clean: `..` in a destination cannot leave `/`.
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Write the COPY/ADD layer for `req` into `out` (a temp file).
pub fn write_copy_layer<W: Write + Seek>(
    out: W,
    req: &CopyRequest<'_>,
    view: &ImageView,
) -> Result<W> {
    let dest_abs = absolute_dest(req.dest, req.workdir);
    let dest_is_dir = req.dest.ends_with('/')
        || req.dest == "."
        || req.dest.ends_with("/.")
        || view.kind(&dest_abs) == Some(true);
    if req.sources.len() > 1 && !dest_is_dir {
        return Err(Error::invalid(
            "When using COPY with more than one source file, the destination must be a directory and end with a /",
        ));
    }
    let mut tar = tar::Builder::new(out);
    {
        let mut w = Writer {
            tar: &mut tar,
            owner: req.owner,
            made: Default::default(),
        };
        for src in req.sources {
            let m = std::fs::symlink_metadata(src)?;
            if m.is_dir() {
                w.parents(&dest_abs.join("x"), view)?;
                if view.kind(&dest_abs) != Some(true) && !w.made.contains(&dest_abs) {
                    w.dir_entry(&dest_abs, 0o755, Some(m.mtime()))?;
                }
                let mut names: Vec<_> = std::fs::read_dir(src)?
                    .flatten()
                    .map(|e| e.file_name())
                    .collect();
                names.sort();
                for n in names {
                    w.tree(&src.join(&n), &dest_abs.join(&n))?;
                }
            } else if req.extract_archives && m.is_file() && is_tar_archive(src) {
                w.parents(&dest_abs.join("x"), view)?;
                if view.kind(&dest_abs) != Some(true) && !w.made.contains(&dest_abs) {
                    w.dir_entry(&dest_abs, 0o755, None)?;
                }
                w.archive(src, &dest_abs)?;
            } else {
                let target = if dest_is_dir {
                    dest_abs.join(src.file_name().unwrap_or_default())
                } else {
                    dest_abs.clone()
                };
                w.parents(&target, view)?;
                w.tree(src, &target)?;
            }
        }
    }
    Ok(tar.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar_bytes: &[u8]) -> Vec<(String, u64, u64)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().to_string(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn destinations_follow_docker_rules() {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ctx.path().join("dir/sub")).unwrap();
        std::fs::write(ctx.path().join("dir/sub/f"), "x").unwrap();
        std::fs::write(ctx.path().join("file"), "y").unwrap();
        let img = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(img.path().join("etc")).unwrap();
        std::fs::write(
            img.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(img.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let view = ImageView {
            layers: vec![img.path().to_path_buf()],
        };

        // A file to a new name, relative to WORKDIR; a dir's contents into a dir.
        let srcs = [ctx.path().join("file")];
        let out = write_copy_layer(
            std::io::Cursor::new(Vec::new()),
            &CopyRequest {
                sources: &srcs,
                dest: "out.txt",
                workdir: "/app",
                owner: None,
                extract_archives: false,
            },
            &view,
        )
        .unwrap();
        let n = names(out.get_ref());
        assert_eq!(
            n.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            vec!["app", "app/out.txt"]
        );

        let srcs = [ctx.path().join("dir")];
        let owner = Some(view.resolve_chown("app:staff").unwrap());
        assert_eq!(owner, Some((1000, 50)));
        let out = write_copy_layer(
            std::io::Cursor::new(Vec::new()),
            &CopyRequest {
                sources: &srcs,
                dest: "/etc/",
                workdir: "",
                owner,
                extract_archives: false,
            },
            &view,
        )
        .unwrap();
        let n = names(out.get_ref());
        assert_eq!(
            n.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            vec!["etc/sub", "etc/sub/f"]
        );
        assert!(n.iter().all(|x| x.1 == 1000 && x.2 == 50));

        // Two sources need a directory destination.
        let srcs = [ctx.path().join("file"), ctx.path().join("dir")];
        let e = write_copy_layer(
            std::io::Cursor::new(Vec::new()),
            &CopyRequest {
                sources: &srcs,
                dest: "/nodir",
                workdir: "",
                owner: None,
                extract_archives: false,
            },
            &view,
        );
        assert!(e.is_err());
        assert!(view.resolve_chown("nobody").is_err());
        assert_eq!(absolute_dest("../../x", "/a"), PathBuf::from("/x"));
    }

    #[test]
    fn add_unpacks_local_archives_and_refuses_escapes() {
        let ctx = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "inner/a.txt", &b"hi"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        std::fs::write(ctx.path().join("a.tar.gz"), gz.finish().unwrap()).unwrap();
        let view = ImageView { layers: vec![] };
        let srcs = [ctx.path().join("a.tar.gz")];
        let out = write_copy_layer(
            std::io::Cursor::new(Vec::new()),
            &CopyRequest {
                sources: &srcs,
                dest: "/opt",
                workdir: "",
                owner: None,
                extract_archives: true,
            },
            &view,
        )
        .unwrap();
        let n = names(out.get_ref());
        assert_eq!(
            n.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            vec!["opt", "opt/inner/a.txt"]
        );

        // An archive with `..` entries is refused.
        let mut evil = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        evil.append(&h, &b"x"[..]).unwrap();
        std::fs::write(ctx.path().join("evil.tar"), evil.into_inner().unwrap()).unwrap();
        let srcs = [ctx.path().join("evil.tar")];
        let e = write_copy_layer(
            std::io::Cursor::new(Vec::new()),
            &CopyRequest {
                sources: &srcs,
                dest: "/opt/",
                workdir: "",
                owner: None,
                extract_archives: true,
            },
            &view,
        );
        assert!(e.is_err());
    }
}
