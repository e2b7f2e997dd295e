//! Engine events (`GET /events`): a broadcast bus plus a bounded in-memory history so
//! `--since` can replay recent events, as dockerd does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

/// How many past events are kept for `since` replays (dockerd keeps 256).
const HISTORY: usize = 1024;

/// One event, serialized in Docker's wire shape (`Type`, `Action`, `Actor`, plus the
/// legacy `status`/`id`/`from` fields that older clients read).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(rename = "Type")]
    pub typ: String,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    pub scope: String,
    pub time: i64,
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

pub struct EventBus {
    tx: broadcast::Sender<Event>,
    history: Mutex<VecDeque<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        EventBus {
            tx,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
        }
    }

    /// Publish an event. `typ` is Docker's object type: container, image, volume,
    /// network, daemon, plugin. Never blocks; slow subscribers lag and are told so.
    pub fn publish<I, K, V>(&self, typ: &str, action: &str, actor_id: &str, attributes: I)
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let attributes: BTreeMap<String, String> = attributes
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let legacy = matches!(typ, "container" | "image");
        let from = if typ == "container" {
            attributes.get("image").cloned()
        } else {
            None
        };
        let event = Event {
            typ: typ.to_string(),
            action: action.to_string(),
            actor: Actor {
                id: actor_id.to_string(),
                attributes,
            },
            scope: "local".into(),
            time: now.as_secs() as i64,
            time_nano: now.as_nanos() as i64,
            status: legacy.then(|| action.to_string()),
            id: legacy.then(|| actor_id.to_string()),
            from,
        };
        {
            let mut h = self.history.lock().unwrap();
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(event.clone());
        }
        let _ = self.tx.send(event);
    }

    /// Subscribe first, then snapshot history, so no event falls between the two.
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let rx = self.tx.subscribe();
        let h = self.history.lock().unwrap();
        (h.iter().cloned().collect(), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publish_reaches_history_and_subscribers() {
        let bus = EventBus::new();
        bus.publish("image", "tag", "sha256:aa", [("name", "bb:1")]);
        let (hist, mut rx) = bus.subscribe();
        assert_eq!(hist.len(), 1);
        assert_eq!(hist[0].actor.attributes["name"], "bb:1");
        bus.publish("container", "start", "c1", [("image", "bb:1")]);
        let ev = rx.recv().await.unwrap();
        assert_eq!(ev.action, "start");
        assert_eq!(ev.from.as_deref(), Some("bb:1"));
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["Type"], "container");
        assert_eq!(json["Actor"]["ID"], "c1");
    }
}
