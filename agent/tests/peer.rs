//! The agent's socket serves only the daemon's user: its directory is 0700, and a peer
//! with another uid is refused even where the directory is opened up.
mod common;

use std::os::unix::fs::PermissionsExt;

use berth_agent_protocol::client::agent_socket_path;
use common::*;

#[tokio::test]
async fn another_uid_cannot_drive_the_agent() {
    if skip() {
        return;
    }
    let (spec, dir) = make_spec("peer", &["true"]);
    let c = spawn(&spec, &dir).await;
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    // Open the directory and socket to everyone, then connect as nobody: the agent must
    // hang up without answering the handshake.
    let sock = agent_socket_path(&dir);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = r#"
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.settimeout(5)
try:
    s.sendall(b"\0" * 64)
    data = s.recv(4096)
    print("closed" if data == b"" else "answered")
except (ConnectionResetError, BrokenPipeError):
    print("closed")
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "closed\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The daemon's own connection still works.
    c.client.state().await.unwrap();
    c.shutdown().await;
}
