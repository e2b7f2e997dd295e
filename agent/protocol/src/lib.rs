//! The berth host <-> agent protocol, version [`PROTOCOL_VERSION`].
//!
//! One agent serves one container. The same protocol runs over a unix socket (process mode: the
//! daemon spawns `berth-agent serve` per container) and over AF_VSOCK (microVM: the agent is the
//! guest's PID 1).
//!
//! # Wire format
//! Frames of `[kind u8][id u32 BE][len u32 BE][payload]` ([`frame`]); payloads over
//! [`MAX_PAYLOAD`] are rejected from the header alone. Control frames carry JSON
//! ([`Hello`], [`Request`], [`Reply`], [`Event`]); stdio frames carry raw bytes keyed by
//! [`ProcessId`].
//!
//! 1. Client sends `Hello { magic, version }`; the agent answers [`HelloReply`]. Different versions
//!    are refused (`HelloReply::Err`, then close) — host and agent ship together.
//! 2. Requests carry a client-chosen id; each gets one `Response` frame with the same id, in any
//!    order (a `Wait` reply comes when the process exits).
//! 3. Output: after `Subscribe { process }` the agent sends `Stdout`/`Stderr` frames for that
//!    process, then `Exited` event, then `OutputEof`. Per-process credit-based flow control: the
//!    agent sends at most [`OUTPUT_WINDOW`] bytes ahead of the `Credit` frames the client returns
//!    as it consumes (or, for the daemon's log pump, once the output is stored). The agent keeps
//!    sent bytes until they are credited and sends them again to the next subscriber, so output
//!    in flight when the client dies is not lost; `OutputEof` follows only when all is
//!    credited. Until subscribed, output waits in a bounded buffer in the agent
//!    ([`AGENT_OUTPUT_BUFFER`] per process); when it is full the container's writes block.
//! 4. Stdin: `Stdin` frames, each acknowledged by `StdinAck` (so a slow reader in the container
//!    pushes back on the host), and `CloseStdin`.
//! 5. One client at a time: a new connection replaces the previous one (live restore: the daemon
//!    reconnects, calls `State`, re-subscribes; undelivered buffered output is then delivered).
//!
//! # Host client (feature `client`)
//! See [`client`] for [`client::AgentClient`] and [`client::spawn_process_agent`], and
//! `agent/README.md` for the semantics the engine can rely on (buffering, exit-before-EOF,
//! restarts, live restore).
pub mod export;
pub mod frame;
pub mod messages;
pub mod spec;

#[cfg(feature = "client")]
pub mod client;

pub use frame::{
    Frame, FrameCodec, FrameKind, FrameReader, FrameWriter, HEADER_LEN, MAX_DATA_CHUNK, MAX_PAYLOAD,
};
pub use messages::*;
pub use spec::*;

/// Bumped on any incompatible change of frames or messages.
pub const PROTOCOL_VERSION: u32 = 1;

/// The vsock ports a microVM's first agent starts pod members on
/// ([`Request::StartPodMember`]): above the control and export ports.
pub const POD_MEMBER_PORTS: std::ops::RangeInclusive<u32> = 2048..=65535;

/// Bytes of output the agent may send for one process before the client returns credit.
pub const OUTPUT_WINDOW: u32 = 256 << 10;

/// Bytes of not-yet-delivered output the agent buffers per process before it stops reading.
pub const AGENT_OUTPUT_BUFFER: usize = 1 << 20;

/// Name of the agent's socket inside the exec dir in process mode.
pub const AGENT_SOCKET_NAME: &str = "agent.sock";

/// Errors of framing, handshake and transport.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("unknown frame kind {0}")]
    UnknownFrameKind(u8),
    #[error("bad json payload: {0}")]
    Json(#[from] serde_json::Error),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("protocol version mismatch: host speaks {host}, agent speaks {agent}")]
    VersionMismatch { host: u32, agent: u32 },
    #[error("handshake refused: {0}")]
    Refused(String),
    #[error("connection to the agent closed")]
    Closed,
    #[error("agent error: {0}")]
    Remote(#[from] RemoteError),
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
    #[error("spawning the agent: {0}")]
    Spawn(String),
}

impl ProtocolError {
    /// The agent's error, if this is one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            ProtocolError::Remote(e) => Some(e),
            _ => None,
        }
    }
}

/// The agent-side handshake check: `Ok(())` when the client may proceed.
pub fn check_hello(hello: &Hello) -> Result<(), String> {
    if hello.magic != MAGIC {
        return Err(format!("bad magic {:?}", hello.magic));
    }
    if hello.version != PROTOCOL_VERSION {
        return Err(format!(
            "unsupported protocol version {} (agent speaks {PROTOCOL_VERSION})",
            hello.version
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_version_checks() {
        let ok = Hello {
            magic: MAGIC.into(),
            version: PROTOCOL_VERSION,
            client: "t".into(),
        };
        assert!(check_hello(&ok).is_ok());
        let newer = Hello {
            version: PROTOCOL_VERSION + 1,
            ..ok.clone()
        };
        assert!(check_hello(&newer)
            .unwrap_err()
            .contains("unsupported protocol version"));
        let bad = Hello {
            magic: "http".into(),
            ..ok
        };
        assert!(check_hello(&bad).is_err());
    }

    #[test]
    fn request_json_shape_is_stable() {
        let r = Request::Signal {
            process: ProcessId(2),
            signal: 15,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"signal","process":2,"signal":15}"#
        );
        let reply: Reply = Err(RemoteError {
            kind: ErrorKind::ExecFailed,
            message: "x".into(),
            exit_code: Some(127),
        });
        let back: Reply = serde_json::from_str(&serde_json::to_string(&reply).unwrap()).unwrap();
        assert_eq!(back, reply);
        let spec: ContainerSpec = serde_json::from_str(
            r#"{"id":"c1","rootfs":{"type":"overlay","lower":["/l1","/l2"],"upper":"/u","work":"/w"},"process":{"args":["sh"]}}"#,
        )
        .unwrap();
        assert_eq!(spec.security.seccomp, SeccompMode::Default);
        assert_eq!(spec.cgroupns, CgroupNamespace::Host);
        assert!(matches!(spec.rootfs, Rootfs::Overlay { ref lower, .. } if lower.len() == 2));
        // The unit modes keep the form older agents and hosts know; a profile is a new key.
        let sec: SecuritySpec = serde_json::from_str(r#"{"seccomp":"unconfined"}"#).unwrap();
        assert_eq!(sec.seccomp, SeccompMode::Unconfined);
        let profile = SeccompMode::Profile(SeccompProfile {
            default_action: SeccompAction::Errno(1),
            rules: vec![SeccompRule {
                names: vec!["mkdir".into()],
                action: SeccompAction::Allow,
                args: vec![SeccompArg {
                    index: 1,
                    value: 0o700,
                    value_two: 0,
                    op: SeccompOp::Le,
                }],
                ..Default::default()
            }],
        });
        let text = serde_json::to_string(&profile).unwrap();
        assert!(
            text.starts_with(r#"{"profile":{"default_action":{"errno":1}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<SeccompMode>(&text).unwrap(), profile);
    }
}
