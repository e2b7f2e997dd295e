//! Docker `JSONMessage` progress for pull/push/load/import streams.

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::{Error, Result};

/// A sink for progress messages. Without a channel (`Progress::none()`) messages are
/// dropped. A closed channel means the client went away: the operation stops.
#[derive(Clone)]
pub struct Progress {
    tx: Option<mpsc::Sender<Value>>,
}

fn human(n: u64) -> String {
    // Docker's units.HumanSize: decimal units, about 3 significant digits.
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    let prec = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let mut num = format!("{v:.prec$}");
    if num.contains('.') {
        num = num.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{num}{}", units[i])
}

/// The text progress bar Docker puts in `progress` (the CLI draws its own from
/// `progressDetail`, but older clients print this).
pub fn bar(current: u64, total: u64) -> String {
    if total == 0 {
        return human(current);
    }
    let width = 50usize;
    let filled = (current.min(total) as u128 * width as u128 / total as u128) as usize;
    let drawn = if filled >= width {
        "=".repeat(width)
    } else {
        format!("{}>{}", "=".repeat(filled), " ".repeat(width - filled - 1))
    };
    format!("[{drawn}] {}/{}", human(current), human(total))
}

impl Progress {
    pub fn new(tx: mpsc::Sender<Value>) -> Self {
        Progress { tx: Some(tx) }
    }
    pub fn none() -> Self {
        Progress { tx: None }
    }

    pub async fn send(&self, v: Value) -> Result<()> {
        if let Some(tx) = &self.tx {
            tx.send(v)
                .await
                .map_err(|_| Error::internal("client disconnected"))?;
        }
        Ok(())
    }

    /// Blocking-context send (inside `spawn_blocking`).
    pub fn send_blocking(&self, v: Value) -> Result<()> {
        if let Some(tx) = &self.tx {
            tx.blocking_send(v)
                .map_err(|_| Error::internal("client disconnected"))?;
        }
        Ok(())
    }

    pub async fn status(&self, status: &str) -> Result<()> {
        self.send(json!({ "status": status })).await
    }

    pub async fn layer(&self, id: &str, status: &str) -> Result<()> {
        self.send(json!({ "status": status, "progressDetail": {}, "id": id }))
            .await
    }

    pub async fn layer_progress(
        &self,
        id: &str,
        status: &str,
        current: u64,
        total: u64,
    ) -> Result<()> {
        self.send(json!({
            "status": status,
            "progressDetail": { "current": current, "total": total },
            "progress": bar(current, total),
            "id": id,
        }))
        .await
    }

    pub fn is_closed(&self) -> bool {
        self.tx.as_ref().map(|t| t.is_closed()).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(999), "999B");
        assert_eq!(human(1000), "1kB");
        assert_eq!(human(52_428_800), "52.4MB");
        assert!(bar(5, 10).starts_with("[="));
        assert!(bar(10, 10).ends_with("10B/10B"));
    }
}
