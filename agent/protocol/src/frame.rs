//! Wire framing: every message is `[kind: u8][id: u32 BE][len: u32 BE][payload; len]`.
//!
//! `id` is the request id for control frames and the [`ProcessId`](crate::ProcessId) for stdio
//! frames. Stdio payloads are raw bytes (no encoding); control payloads are JSON.
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::ProtocolError;

/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 9;
/// Largest payload accepted by either side. Stdio chunks are far smaller (see [`MAX_DATA_CHUNK`]);
/// the limit only bounds control messages (a container spec with a large environment).
pub const MAX_PAYLOAD: usize = 4 << 20;
/// Largest stdio chunk the agent sends in one frame.
pub const MAX_DATA_CHUNK: usize = 32 << 10;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Client -> agent, first frame: JSON [`Hello`](crate::Hello).
    Hello = 1,
    /// Agent -> client: JSON [`HelloReply`](crate::HelloReply).
    HelloReply = 2,
    /// Client -> agent: JSON [`Request`](crate::Request); `id` = request id.
    Request = 3,
    /// Agent -> client: JSON [`Reply`](crate::Reply); `id` = request id.
    Response = 4,
    /// Agent -> client: JSON [`Event`](crate::Event); `id` = 0.
    Event = 5,
    /// Agent -> client: stdout bytes of process `id` (a tty's merged output too).
    Stdout = 16,
    /// Agent -> client: stderr bytes of process `id`.
    Stderr = 17,
    /// Agent -> client: the current run of process `id` has no more output (sent after its exit event).
    OutputEof = 18,
    /// Client -> agent: `u32 BE` bytes of output the client has consumed for process `id`.
    Credit = 19,
    /// Client -> agent: stdin bytes for process `id`. The agent answers each with `StdinAck`.
    Stdin = 20,
    /// Agent -> client: the previous `Stdin` frame of process `id` was written (empty payload) or
    /// failed (UTF-8 error text).
    StdinAck = 21,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        use FrameKind::*;
        Some(match v {
            1 => Hello,
            2 => HelloReply,
            3 => Request,
            4 => Response,
            5 => Event,
            16 => Stdout,
            17 => Stderr,
            18 => OutputEof,
            19 => Credit,
            20 => Stdin,
            21 => StdinAck,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub id: u32,
    pub payload: Bytes,
}

impl Frame {
    pub fn new(kind: FrameKind, id: u32, payload: impl Into<Bytes>) -> Self {
        Frame {
            kind,
            id,
            payload: payload.into(),
        }
    }

    /// A frame whose payload is `value` as JSON.
    pub fn json<T: serde::Serialize>(
        kind: FrameKind,
        id: u32,
        value: &T,
    ) -> Result<Self, ProtocolError> {
        Ok(Frame::new(kind, id, serde_json::to_vec(value)?))
    }

    /// Decodes the JSON payload.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ProtocolError> {
        Ok(serde_json::from_slice(&self.payload)?)
    }

    /// A `Credit` frame returning `bytes` of window for process `id`.
    pub fn credit(id: u32, bytes: u32) -> Self {
        Frame::new(
            FrameKind::Credit,
            id,
            Bytes::copy_from_slice(&bytes.to_be_bytes()),
        )
    }

    /// The byte count of a `Credit` frame.
    pub fn credit_value(&self) -> Result<u32, ProtocolError> {
        let b: [u8; 4] = self.payload[..]
            .try_into()
            .map_err(|_| ProtocolError::Malformed("credit frame needs 4 bytes".into()))?;
        Ok(u32::from_be_bytes(b))
    }
}

/// `tokio_util` codec for [`Frame`]s; rejects frames over `max_payload` before buffering them.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_payload: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec {
            max_payload: MAX_PAYLOAD,
        }
    }
}

impl FrameCodec {
    pub fn with_max_payload(max_payload: usize) -> Self {
        FrameCodec { max_payload }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind_byte = src[0];
        let id = u32::from_be_bytes(src[1..5].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(src[5..9].try_into().expect("4 bytes")) as usize;
        if len > self.max_payload {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_payload,
            });
        }
        let kind =
            FrameKind::from_u8(kind_byte).ok_or(ProtocolError::UnknownFrameKind(kind_byte))?;
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len).freeze();
        Ok(Some(Frame { kind, id, payload }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let len = frame.payload.len();
        if len > self.max_payload {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_payload,
            });
        }
        dst.reserve(HEADER_LEN + len);
        dst.put_u8(frame.kind as u8);
        dst.put_u32(frame.id);
        dst.put_u32(len as u32);
        dst.extend_from_slice(&frame.payload);
        Ok(())
    }
}

/// Reads frames from any async byte stream.
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    codec: FrameCodec,
}

impl<R: tokio::io::AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> Self {
        FrameReader {
            io,
            buf: BytesMut::with_capacity(64 << 10),
            codec: FrameCodec::default(),
        }
    }

    /// The next frame; `Ok(None)` on a clean EOF between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, ProtocolError> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(f));
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::Io(std::io::ErrorKind::UnexpectedEof.into()))
                };
            }
        }
    }
}

/// Writes frames to any async byte stream, batching what is queued.
pub struct FrameWriter<W> {
    io: W,
    buf: BytesMut,
    codec: FrameCodec,
}

impl<W: tokio::io::AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W) -> Self {
        FrameWriter {
            io,
            buf: BytesMut::with_capacity(64 << 10),
            codec: FrameCodec::default(),
        }
    }

    /// Encodes a frame into the write buffer (call [`flush`](Self::flush) to send).
    pub fn queue(&mut self, frame: Frame) -> Result<(), ProtocolError> {
        self.codec.encode(frame, &mut self.buf)
    }

    pub async fn flush(&mut self) -> Result<(), ProtocolError> {
        use tokio::io::AsyncWriteExt;
        if !self.buf.is_empty() {
            self.io.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.io.flush().await?;
        Ok(())
    }

    pub async fn send(&mut self, frame: Frame) -> Result<(), ProtocolError> {
        self.queue(frame)?;
        self.flush().await
    }

    /// Shuts down the write side.
    pub async fn shutdown(&mut self) -> Result<(), ProtocolError> {
        use tokio::io::AsyncWriteExt;
        self.io.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(f: Frame) -> BytesMut {
        let mut b = BytesMut::new();
        FrameCodec::default().encode(f, &mut b).unwrap();
        b
    }

    #[test]
    fn roundtrip_and_partial_input() {
        let f = Frame::new(FrameKind::Stdout, 7, &b"hello"[..]);
        let bytes = encode(f.clone());
        assert_eq!(&bytes[..HEADER_LEN], &[16, 0, 0, 0, 7, 0, 0, 0, 5]);
        let mut codec = FrameCodec::default();
        // Feed one byte at a time: nothing until the last byte arrives.
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.put_u8(*b);
            let got = codec.decode(&mut buf).unwrap();
            if i + 1 < bytes.len() {
                assert!(got.is_none(), "decoded early at byte {i}");
            } else {
                assert_eq!(got, Some(f.clone()));
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let mut buf = encode(Frame::credit(1, 4096));
        buf.extend_from_slice(&encode(Frame::new(FrameKind::OutputEof, 1, Bytes::new())));
        let mut codec = FrameCodec::default();
        let a = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(a.credit_value().unwrap(), 4096);
        let b = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(b.kind, FrameKind::OutputEof);
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn oversized_frames_rejected_from_header_alone() {
        let mut codec = FrameCodec::with_max_payload(16);
        let mut buf = BytesMut::new();
        buf.put_u8(FrameKind::Stdin as u8);
        buf.put_u32(0);
        buf.put_u32(17);
        match codec.decode(&mut buf) {
            Err(ProtocolError::FrameTooLarge { len: 17, max: 16 }) => {}
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        let mut out = BytesMut::new();
        assert!(codec
            .encode(Frame::new(FrameKind::Stdin, 0, vec![0u8; 17]), &mut out)
            .is_err());
        assert!(codec
            .encode(Frame::new(FrameKind::Stdin, 0, vec![0u8; 16]), &mut out)
            .is_ok());
    }

    #[test]
    fn unknown_kind_rejected() {
        let mut buf = BytesMut::from(&[99u8, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        assert!(matches!(
            FrameCodec::default().decode(&mut buf),
            Err(ProtocolError::UnknownFrameKind(99))
        ));
    }
}
