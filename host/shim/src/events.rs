//! Task events published to containerd (`/tasks/exit` and the rest), in the shim's
//! namespace. Publishing never fails a request: a lost event is logged.

use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::ttrpc::context::Context;

#[derive(Clone)]
pub struct Events {
    publisher: Arc<RemotePublisher>,
    namespace: String,
}

impl Events {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        Events {
            publisher: Arc::new(publisher),
            namespace: namespace.to_string(),
        }
    }

    pub async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            tracing::warn!(topic, "publishing a task event: {e}");
        }
    }
}

/// A protobuf timestamp from Unix nanoseconds.
pub fn timestamp(ns: u64) -> Timestamp {
    Timestamp {
        seconds: (ns / 1_000_000_000) as i64,
        nanos: (ns % 1_000_000_000) as i32,
        ..Default::default()
    }
}

/// Now, in Unix nanoseconds.
pub fn now_ns() -> u64 {
    berth_engine::fsutil::now_nanos().max(0) as u64
}
