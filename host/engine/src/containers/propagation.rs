//! Bind propagation (`-v src:dst:rslave`, `--mount type=bind,bind-propagation=...`):
//! parsing, dockerd's rule on the source's own mount, and the refusal in a microVM.

use std::path::Path;

use super::record::ContainerRecord;
use crate::{Error, Result};

const MODES: &[&str] = &[
    "private", "rprivate", "shared", "rshared", "slave", "rslave",
];

/// Docker's default for binds.
const DEFAULT: &str = "rprivate";

/// The propagation named in `-v` options (`ro,rslave`), `rprivate` when none is.
pub(super) fn from_bind_options(opts: &str) -> Result<String> {
    let mut found = opts.split(',').filter(|o| MODES.contains(o));
    let mode = found.next().unwrap_or(DEFAULT);
    if found.next().is_some() {
        return Err(Error::invalid(format!(
            "invalid mode: {opts}: more than one propagation mode"
        )));
    }
    Ok(mode.to_string())
}

/// `bind-propagation` of `--mount`, `rprivate` when not given.
pub(super) fn or_default(p: Option<String>) -> String {
    p.filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT.to_string())
}

/// At start: every bind's propagation can be honoured. `vm` is true for a microVM, where
/// virtio-fs carries files, not mount events, so only private propagation is possible.
pub(super) fn check(rec: &ContainerRecord, vm: bool) -> Result<()> {
    for m in rec.mounts.iter().filter(|m| m.kind == "bind") {
        let mode = m.propagation.as_str();
        if mode.is_empty() || mode.ends_with("private") {
            continue;
        }
        if vm {
            return Err(Error::invalid(format!(
                "bind propagation {mode} of {} is not supported with microvm isolation: virtio-fs shares files, not mount events, so only rprivate/private can be honoured",
                m.destination
            )));
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let (point, fields) = mount_of(&mountinfo, Path::new(&m.source))?;
        let shared = fields.iter().any(|f| f.starts_with("shared:"));
        let slave = fields.iter().any(|f| f.starts_with("master:"));
        // dockerd (daemon/oci_linux.go): shared modes need a shared source mount, slave
        // modes a shared or slave one; otherwise nothing could ever propagate.
        if mode.ends_with("shared") && !shared {
            return Err(Error::invalid(format!(
                "path {} is mounted on {point} but it is not a shared mount.",
                m.source
            )));
        }
        if mode.ends_with("slave") && !shared && !slave {
            return Err(Error::invalid(format!(
                "path {} is mounted on {point} but it is not a shared or slave mount.",
                m.source
            )));
        }
    }
    Ok(())
}

/// The mount point holding `path` (the deepest one, the last mounted on equal points) and
/// its optional fields (`shared:N`, `master:N`) from `/proc/self/mountinfo`.
fn mount_of<'a>(mountinfo: &'a str, path: &Path) -> Result<(String, Vec<&'a str>)> {
    let path = std::fs::canonicalize(path)?;
    let mut best: Option<(String, Vec<&str>)> = None;
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() < 7 {
            continue;
        }
        let point = unescape(f[4]);
        if path.starts_with(&point) && best.as_ref().is_none_or(|(b, _)| point.len() >= b.len()) {
            best = Some((point, f[6..sep].to_vec()));
        }
    }
    best.ok_or_else(|| Error::internal(format!("no mount holds {}", path.display())))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes_and_mount_fields() {
        assert_eq!(from_bind_options("ro,rslave").unwrap(), "rslave");
        assert_eq!(from_bind_options("ro").unwrap(), "rprivate");
        assert!(from_bind_options("rslave,shared").is_err());
        let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    30 22 0:5 / /a\\040b rw master:3 - tmpfs t rw\n";
        let (p, f) = mount_of(info, Path::new("/")).unwrap();
        assert_eq!((p.as_str(), f), ("/", vec!["shared:1"]));
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
