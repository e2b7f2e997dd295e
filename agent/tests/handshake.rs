//! Protocol handshake against the real agent and a scripted peer.
mod common;

use berth_agent_protocol::{
    client::AgentClient, Frame, FrameKind, FrameReader, FrameWriter, Hello, HelloReply,
    ProtocolError, MAGIC, PROTOCOL_VERSION,
};
use common::*;

#[tokio::test]
async fn agent_refuses_other_protocol_versions() {
    if skip() {
        return;
    }
    let (spec, dir) = make_spec("hs", &["true"]);
    let c = spawn(&spec, &dir).await;
    let sock = berth_agent_protocol::client::agent_socket_path(&dir);
    let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let (r, w) = s.into_split();
    let (mut r, mut w) = (FrameReader::new(r), FrameWriter::new(w));
    let hello = Hello {
        magic: MAGIC.into(),
        version: PROTOCOL_VERSION + 1,
        client: "future".into(),
    };
    w.send(Frame::json(FrameKind::Hello, 0, &hello).unwrap())
        .await
        .unwrap();
    let reply: HelloReply = r.next().await.unwrap().unwrap().parse().unwrap();
    assert!(
        matches!(reply, HelloReply::Err { version: PROTOCOL_VERSION, ref message } if message.contains("unsupported protocol version")),
        "{reply:?}"
    );
    assert!(
        r.next().await.unwrap().is_none(),
        "agent closes after refusing"
    );
    // An oversized frame from a peer is a protocol error, not an allocation.
    let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let (r2, w2) = s.into_split();
    let mut raw = w2;
    use tokio::io::AsyncWriteExt;
    raw.write_all(&[FrameKind::Hello as u8, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let mut r2 = FrameReader::new(r2);
    assert!(r2
        .next()
        .await
        .unwrap()
        .map(|f| f.kind == FrameKind::HelloReply)
        .unwrap_or(true));
    // The agent is still healthy for a well-behaved client.
    let ok = AgentClient::connect_unix(&sock).await.unwrap();
    assert_eq!(ok.info().version, PROTOCOL_VERSION);
    drop(ok);
    c.shutdown().await;
}

#[tokio::test]
async fn client_reports_version_mismatch() {
    let (client_end, agent_end) = tokio::io::duplex(4096);
    let peer = tokio::spawn(async move {
        let (r, w) = tokio::io::split(agent_end);
        let (mut r, mut w) = (FrameReader::new(r), FrameWriter::new(w));
        let hello: Hello = r.next().await.unwrap().unwrap().parse().unwrap();
        assert_eq!(hello.version, PROTOCOL_VERSION);
        let reply = HelloReply::Ok {
            version: PROTOCOL_VERSION + 7,
            agent_version: "9.9".into(),
            agent_pid: 1,
        };
        w.send(Frame::json(FrameKind::HelloReply, 0, &reply).unwrap())
            .await
            .unwrap();
    });
    match AgentClient::connect(client_end).await {
        Err(ProtocolError::VersionMismatch { host, agent }) => {
            assert_eq!((host, agent), (PROTOCOL_VERSION, PROTOCOL_VERSION + 7))
        }
        Err(e) => panic!("expected version mismatch, got {e}"),
        Ok(_) => panic!("expected version mismatch, got a client"),
    }
    peer.await.unwrap();
}
