//! Streaming JSON responses (pull/push/load progress, events): newline-separated
//! objects, flushed as they come, so the CLI can draw progress bars.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use std::future::Future;

use axum::response::IntoResponse;
use berth_engine::images::Progress;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::ApiError;
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

/// Read what is left of a request body the handler refused, bounded (64 MiB, 10 s): a
/// client still sending would otherwise see a broken pipe instead of the error message.
pub async fn drain_body(body: axum::body::Body) {
    use http_body_util::BodyExt;
    const LIMIT: usize = 64 << 20;
    let mut body = body;
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.len();
                if seen > LIMIT {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
}

/// A request body whose unread rest comes back to the service when the handler drops it,
/// so the service can drain it after answering ([`track_body`]).
struct TrackedBody {
    inner: Option<axum::body::Body>,
    slot: std::sync::Arc<std::sync::Mutex<Option<axum::body::Body>>>,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.inner.as_mut() {
            Some(b) => std::pin::Pin::new(b).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if let Some(b) = self.inner.take() {
            if !http_body::Body::is_end_stream(&b) {
                *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(b);
            }
        }
    }
}

/// Wraps the request's body; after the handler answered, `take()` on the returned slot
/// gives what the handler left unread (if it dropped the body early), for [`drain_body`].
pub fn track_body(
    req: axum::extract::Request,
) -> (
    axum::extract::Request,
    std::sync::Arc<std::sync::Mutex<Option<axum::body::Body>>>,
) {
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None));
    let req = req.map(|b| {
        axum::body::Body::new(TrackedBody {
            inner: Some(b),
            slot: slot.clone(),
        })
    });
    (req, slot)
}

pub fn body_reader(body: Body) -> impl tokio::io::AsyncRead + Unpin + Send {
    tokio_util::io::StreamReader::new(body.into_data_stream().map_err(std::io::Error::other))
}

/// Run a progress-reporting engine operation. An error before the first message is a
/// plain HTTP error (as dockerd answers when nothing was streamed yet); after it, an
/// in-band `errorDetail` message. If the client goes away, the engine sees its
/// progress channel closed and stops.
pub async fn progress_stream<F, Fut, T>(op: F) -> Response
where
    F: FnOnce(Progress) -> Fut,
    Fut: Future<Output = berth_engine::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Value>(64);
    let task = tokio::spawn(op(Progress::new(tx)));
    let first = match rx.recv().await {
        Some(v) => v,
        None => {
            return match task.await {
                Ok(Ok(_)) => json_stream(mpsc::channel(1).1),
                Ok(Err(e)) => ApiError::from(e).into_response(),
                Err(e) => ApiError::internal(e.to_string()).into_response(),
            }
        }
    };
    let (out_tx, out_rx) = mpsc::channel::<Value>(64);
    tokio::spawn(async move {
        if out_tx.send(first).await.is_err() {
            return;
        }
        while let Some(v) = rx.recv().await {
            if out_tx.send(v).await.is_err() {
                return; // client gone: dropping rx makes the engine stop
            }
        }
        match task.await {
            Ok(Ok(_)) => {}
            Ok(Err(berth_engine::Error::StepFailed { message, code })) => {
                // The failing step's exit code becomes the CLI's exit status.
                let v = serde_json::json!({
                    "errorDetail": { "code": code, "message": message },
                    "error": message,
                });
                let _ = out_tx.send(v).await;
            }
            Ok(Err(e)) => {
                let msg = ApiError::from(e).message;
                let _ = out_tx.send(error_message(&msg)).await;
            }
            Err(e) => {
                let _ = out_tx.send(error_message(&e.to_string())).await;
            }
        }
    });
    json_stream(out_rx)
}
