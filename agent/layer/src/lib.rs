//! A container's files as tar streams.
//!
//! - [`write_upper_as_layer`]: an overlayfs upper directory as an OCI layer diff, the way
//!   `docker commit` and the builder store a container's changes. Overlay whiteouts (0:0
//!   character devices) become `.wh.<name>` entries and opaque directories a
//!   `.wh..wh..opq` entry.
//! - [`archive`]: the chrooted child behind `docker cp` (stat, get, put) and
//!   `docker export`.
//! - [`unpack`]: the other direction, an untrusted layer tar into a directory usable as
//!   an overlayfs lower dir (pulled, loaded and imported layers, build contexts).
//! - [`tar_index`]: random access by member name to a tar on disk (`docker load`).
//!
//! One implementation for both places that produce these tars: the engine on the host
//! (process isolation, where the upper dir is a host directory) and the guest agent
//! (microVMs, where the upper dir is on the guest's disk and the host never mounts it).

pub mod archive;
pub mod mountinfo;
pub mod owner_map;
pub mod tar_index;
pub mod unpack;

use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Why an untrusted tar was not read ([`unpack`], [`tar_index`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tar itself is refused (hostile or malformed): the sender's fault.
    #[error("{0}")]
    Invalid(String),
    /// The host failed to read or write.
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Files the engine writes into every container (bind-mount targets for its own copies);
/// they are not the user's changes and never go into a committed layer.
pub const ENGINE_FILES: &[&str] = &["etc/hostname", "etc/hosts", "etc/resolv.conf"];

/// The OCI whiteout prefix and the opaque-directory marker.
pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Writes the overlay upper dir `upper` to `out` as a layer tar (entries sorted by name,
/// symlinks not followed, [`ENGINE_FILES`] left out) and returns the writer.
pub fn write_upper_as_layer<W: Write>(upper: &Path, out: W) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    walk_upper(upper, Path::new(""), &mut b)?;
    b.into_inner()
}

fn walk_upper<W: Write>(base: &Path, rel: &Path, out: &mut tar::Builder<W>) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(base.join(rel))?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let rel_path = rel.join(&name);
        if ENGINE_FILES.iter().any(|g| Path::new(g) == rel_path) {
            continue;
        }
        let meta = e.path().symlink_metadata()?;
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            let wh = rel.join(format!("{WHITEOUT_PREFIX}{}", name.to_string_lossy()));
            append_marker(out, &wh)?;
            continue;
        }
        out.append_path_with_name(e.path(), &rel_path)?;
        if meta.is_dir() {
            if is_opaque(&e.path()) {
                append_marker(out, &rel_path.join(OPAQUE_MARKER))?;
            }
            walk_upper(base, &rel_path, out)?;
        }
    }
    Ok(())
}

fn append_marker<W: Write>(out: &mut tar::Builder<W>, path: &Path) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    out.append_data(&mut h, path, io::empty())
}

/// Whether overlayfs marked `p` opaque (it hides the lower layers' directory of that name).
fn is_opaque(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: valid NUL-terminated strings and a buffer of the length passed.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar_bytes: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn upper_dir_becomes_a_layer_without_engine_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/hosts"), "engine").unwrap();
        std::fs::write(d.path().join("etc/app.conf"), "user").unwrap();
        std::os::unix::fs::symlink("/nowhere", d.path().join("link")).unwrap();
        let out = write_upper_as_layer(d.path(), Vec::new()).unwrap();
        assert_eq!(names(&out), ["etc", "etc/app.conf", "link"]);
    }
}
