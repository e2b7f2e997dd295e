//! Accepting host connections and dispatching their frames.
use std::{sync::Arc, time::Duration};

use berth_agent_protocol::{
    check_hello, Frame, FrameKind, FrameReader, FrameWriter, Hello, HelloReply, ProcessId, Request,
    PROTOCOL_VERSION,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc,
};
use tracing::{debug, info, warn};

use crate::state::Agent;

/// Serves one connection until it closes or a newer connection replaces it.
pub async fn serve_conn<S: AsyncRead + AsyncWrite + Send + 'static>(agent: Arc<Agent>, stream: S) {
    let (r, w) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w);
    let hello = match tokio::time::timeout(Duration::from_secs(10), reader.next()).await {
        Ok(Ok(Some(f))) if f.kind == FrameKind::Hello => {
            f.parse::<Hello>().map_err(|e| e.to_string())
        }
        Ok(Ok(Some(f))) => Err(format!("expected hello, got {:?}", f.kind)),
        Ok(Ok(None)) => return,
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timeout".into()),
    };
    let reply = match hello.and_then(|h| check_hello(&h).map(|_| h)) {
        Ok(h) => {
            info!(client = %h.client, "host connected");
            HelloReply::Ok {
                version: PROTOCOL_VERSION,
                agent_version: env!("CARGO_PKG_VERSION").into(),
                agent_pid: std::process::id(),
            }
        }
        Err(message) => {
            warn!("refusing connection: {message}");
            let f = Frame::json(
                FrameKind::HelloReply,
                0,
                &HelloReply::Err {
                    version: PROTOCOL_VERSION,
                    message,
                },
            );
            if let Ok(f) = f {
                let _ = writer.send(f).await;
            }
            return;
        }
    };
    match Frame::json(FrameKind::HelloReply, 0, &reply) {
        Ok(f) => {
            if writer.send(f).await.is_err() {
                return;
            }
        }
        Err(_) => return,
    }

    let (tx, mut rx) = mpsc::channel::<Frame>(256);
    let gen = agent.attach_conn(tx.clone());
    let write_task = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            let mut ok = writer.queue(f).is_ok();
            while ok {
                match rx.try_recv() {
                    Ok(f) => ok = writer.queue(f).is_ok(),
                    Err(_) => break,
                }
            }
            if writer.flush().await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    loop {
        let frame = tokio::select! {
            f = reader.next() => f,
            // Replaced by a newer connection: stop reading this one.
            _ = wait_replaced(&agent, gen) => break,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                warn!("connection error: {e}");
                break;
            }
        };
        match frame.kind {
            FrameKind::Request => {
                let req: Request = match frame.parse() {
                    Ok(r) => r,
                    Err(e) => {
                        warn!("bad request: {e}");
                        continue;
                    }
                };
                debug!(id = frame.id, ?req, "request");
                let agent = agent.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let reply = agent.handle(req).await;
                    if let Ok(f) = Frame::json(FrameKind::Response, frame.id, &reply) {
                        let _ = tx.send(f).await;
                    }
                });
            }
            FrameKind::Credit => match frame.credit_value() {
                Ok(n) => agent.credit(ProcessId(frame.id), n),
                Err(e) => warn!("{e}"),
            },
            FrameKind::Stdin => agent.stdin(ProcessId(frame.id), frame.payload, tx.clone()),
            other => warn!("unexpected frame {other:?} from host"),
        }
    }
    info!("host disconnected");
    agent.detach_conn(gen);
    // Pending handlers (e.g. a Wait) may still hold senders: close the socket now.
    drop(tx);
    write_task.abort();
}

async fn wait_replaced(agent: &Agent, gen: u64) {
    loop {
        if agent.current_gen() != gen {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
