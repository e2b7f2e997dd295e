//! Streaming JSON responses (pull/push/load progress, events): newline-separated
//! objects, flushed as they come, so the CLI can draw progress bars.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// Turn a channel of JSON values into a streaming 200 `application/json` response.
/// Errors after the status line are sent in-band as `{"errorDetail":{...},"error":...}`
/// (see [`error_message`]).
pub fn json_stream(rx: tokio::sync::mpsc::Receiver<serde_json::Value>) -> Response {
    let body = ReceiverStream::new(rx).map(|v| {
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The JSONMessage an error becomes once the stream has started.
pub fn error_message(msg: &str) -> serde_json::Value {
    serde_json::json!({ "errorDetail": { "message": msg }, "error": msg })
}

/// Joins the chunks that are ready at once into one body chunk (up to `max` of them), so
/// a burst of small frames (a log replay) is written in a few large writes, while a
/// lone chunk still goes out immediately (a follower sees each line as it comes).
pub fn coalesce<S>(
    chunks: S,
    max: usize,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send
where
    S: futures::Stream<Item = Bytes> + Send,
{
    chunks.ready_chunks(max).map(|mut batch| {
        if batch.len() == 1 {
            return Ok(batch.pop().unwrap_or_default());
        }
        let mut out = bytes::BytesMut::with_capacity(batch.iter().map(Bytes::len).sum());
        for b in &batch {
            out.extend_from_slice(b);
        }
        Ok(out.freeze())
    })
}
