//! The guest agent's file-export channel (microVMs only).
//!
//! A microVM container's files live on its guest disks, which the host never mounts: a
//! filesystem the guest wrote is untrusted input for the host kernel. `docker commit`,
//! `diff`, `export`, `cp` and the builder's RUN steps instead ask the agent, which reads them
//! inside the VM and streams a tar back.
//!
//! The channel is its own vsock port ([`EXPORT_PORT`]), one connection per export, so
//! a multi-gigabyte tar never shares the control connection's frames and credit:
//! 1. the host writes one JSON [`ExportRequest`] line (at most [`MAX_REQUEST_LINE`]);
//! 2. the agent answers one status line: `ok` followed by the tar until EOF, or
//!    `error: <message>` and close.
//!
//! An `archive` request runs the chrooted archive child (`berth_layer::archive`, the code
//! berthd runs for process containers) in the guest, so `docker cp` and `docker export`
//! behave the same in both isolation modes. After `ok` both sides switch to frames:
//! - host to agent, the child's stdin: `[len u32 BE][bytes]`, a zero length ends it;
//! - agent to host: `[kind u8][len u32 BE][bytes]` of [`ARCHIVE_STDOUT`] and
//!   [`ARCHIVE_STDERR`], then one [`ARCHIVE_EXIT`] with the exit code (i32 BE); then the
//!   agent closes.
//!
//! A complete tar ends with two zero blocks ([`ends_with_tar_trailer`]); the host checks
//! that before it stores a layer, so an agent that dies mid-stream never becomes a layer
//! with files missing.

use std::io::{BufRead, Read};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The agent's export port (the control channel is on `berth.port=`, 1024 by default).
pub const EXPORT_PORT: u32 = 1025;

/// Longest request line the agent reads.
pub const MAX_REQUEST_LINE: usize = 64 << 10;

/// What to export. Paths are the guest's (the host knows where it asked the agent to
/// mount the disks).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum ExportRequest {
    /// The overlay upper dir as an OCI layer diff (`commit`, `diff`, RUN steps).
    Changes { upper: PathBuf },
    /// Run the archive child with these arguments (`stat|get|export|put PATH ...`).
    /// [`ARCHIVE_CONTAINER_ROOT`] stands for `--root /proc/<init pid>/root` of the running
    /// container, which only the agent knows.
    Archive { args: Vec<String> },
}

/// See [`ExportRequest::Archive`].
pub const ARCHIVE_CONTAINER_ROOT: &str = "--container-root";

/// Frame kinds from the agent in an archive session.
pub const ARCHIVE_STDOUT: u8 = 1;
pub const ARCHIVE_STDERR: u8 = 2;
pub const ARCHIVE_EXIT: u8 = 3;

/// Largest frame either side sends in an archive session.
pub const ARCHIVE_MAX_FRAME: u32 = 1 << 20;

/// The status line that starts a successful answer.
pub const STATUS_OK: &str = "ok";
/// The prefix of a failed answer's status line.
pub const STATUS_ERROR: &str = "error: ";

/// Reads the host's request line (the agent's side of step 1): at most
/// [`MAX_REQUEST_LINE`] bytes up to a newline, then JSON. The error is the text of the
/// `error:` status line.
pub fn read_request(r: &mut impl BufRead) -> Result<ExportRequest, String> {
    let mut line = Vec::new();
    r.take(MAX_REQUEST_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|e| e.to_string())?;
    if line.last() != Some(&b'\n') {
        return Err("the request line is missing or too long".into());
    }
    serde_json::from_slice(&line).map_err(|e| format!("bad request: {e}"))
}

/// Whether `tail` (the last bytes of a stream, at least 1024) is the end-of-archive marker
/// every complete tar ends with.
pub fn ends_with_tar_trailer(tail: &[u8]) -> bool {
    tail.len() >= 1024 && tail[tail.len() - 1024..].iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_form() {
        let r = ExportRequest::Changes {
            upper: "/run/vm/rw/upper".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"what":"changes","upper":"/run/vm/rw/upper"}"#
        );
        assert!(ends_with_tar_trailer(&[0u8; 1024]));
        assert!(!ends_with_tar_trailer(&[0u8; 512]));
    }

    #[test]
    fn request_line_is_bounded_and_newline_terminated() {
        let line = b"{\"what\":\"archive\",\"args\":[\"stat\",\"/\"]}\nrest";
        assert_eq!(
            read_request(&mut &line[..]).unwrap(),
            ExportRequest::Archive {
                args: vec!["stat".into(), "/".into()]
            }
        );
        assert!(read_request(&mut &b"{\"what\":\"changes\"}"[..]).is_err());
        let long = vec![b' '; MAX_REQUEST_LINE + 10];
        assert!(read_request(&mut &long[..]).is_err());
    }
}
