#![no_main]
//! What a (possibly compromised) microVM guest agent sends the host, and what the agent
//! reads from its peers: frames through the codec, each payload as the message its
//! kind announces, the export channel's request line, and the archive child's frames
//! (stdout, stderr, exit) that `docker cp` reads back from a guest, with a `stat`
//! answer decoded as the host decodes it.

use std::sync::OnceLock;

use berth_agent_protocol::client::{archive_next, ArchiveEvent};
use berth_agent_protocol::export::read_request;
use berth_agent_protocol::{
    Event, Frame, FrameCodec, FrameKind, Hello, HelloReply, Reply, Request,
};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

fn payload(frame: &Frame) {
    match frame.kind {
        FrameKind::Hello => {
            if let Ok(h) = frame.parse::<Hello>() {
                let _ = berth_agent_protocol::check_hello(&h);
            }
        }
        FrameKind::HelloReply => drop(frame.parse::<HelloReply>()),
        FrameKind::Request => drop(frame.parse::<Request>()),
        FrameKind::Response => drop(frame.parse::<Reply>()),
        FrameKind::Event => drop(frame.parse::<Event>()),
        FrameKind::Credit => drop(frame.credit_value()),
        _ => {}
    }
}

/// The host's reader of archive frames, to the end of the stream or its first error.
fn archive_frames(data: &[u8]) {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    });
    rt.block_on(async {
        let mut r = data;
        let mut stdout = Vec::new();
        while let Ok(Some(event)) = archive_next(&mut r).await {
            match event {
                ArchiveEvent::Stdout(d) => stdout.extend_from_slice(&d),
                ArchiveEvent::Stderr(_) => {}
                ArchiveEvent::Exit(_) => {
                    let _ = serde_json::from_slice::<berth_layer::archive::RawStat>(&stdout);
                    break;
                }
            }
        }
    });
}

fuzz_target!(|data: &[u8]| {
    let _ = read_request(&mut &data[..]);
    archive_frames(data);
    // A small limit, so that the size check is reached as well as whole frames.
    let mut codec = FrameCodec::with_max_payload(4096);
    let mut src = BytesMut::from(data);
    let mut consumed = 0;
    while let Ok(Some(frame)) = codec.decode(&mut src) {
        payload(&frame);
        // A decoded frame encodes back to exactly the bytes it came from.
        let mut out = BytesMut::new();
        codec
            .encode(frame, &mut out)
            .expect("a decoded frame encodes");
        assert_eq!(&out[..], &data[consumed..consumed + out.len()]);
        consumed += out.len();
    }
});
