//! Content-addressed OCI image store (being written; see issue 2).

use std::path::Path;
use std::sync::Arc;

use crate::events::EventBus;
use crate::Result;

pub struct ImageStore {
    #[allow(dead_code)]
    events: Arc<EventBus>,
}

impl ImageStore {
    pub fn open(root: &Path, events: Arc<EventBus>) -> Result<Self> {
        std::fs::create_dir_all(root)?;
        Ok(ImageStore { events })
    }
}
