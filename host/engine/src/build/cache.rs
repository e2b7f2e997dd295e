//! The build cache: a step's key (parent image, the instruction as recorded in history,
//! content hashes of COPY/ADD sources) → the image that step produced. Docker's classic
//! builder finds the same thing by scanning images for a matching parent and config;
//! an index keeps a cache lookup O(1) however many images the store holds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::fsutil::write_atomic;
use crate::Result;

pub struct BuildCache {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, String>>,
}

/// The key of a step: what it starts from and what it does.
pub fn step_key(parent: Option<&str>, created_by: &str) -> String {
    let mut h = Sha256::new();
    h.update(parent.unwrap_or("scratch").as_bytes());
    h.update([0]);
    h.update(created_by.as_bytes());
    hex::encode(h.finalize())
}

impl BuildCache {
    /// A missing or unreadable index is an empty cache (it only saves work).
    pub fn open(path: PathBuf) -> BuildCache {
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        BuildCache {
            path,
            entries: Mutex::new(entries),
        }
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.entries.lock().unwrap().get(key).cloned()
    }

    pub fn insert(&self, key: String, image: String) -> Result<()> {
        let mut e = self.entries.lock().unwrap();
        e.insert(key, image);
        self.save(&e)
    }

    /// Forget entries whose image is gone (`keep` says which images still exist).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Result<usize> {
        let mut e = self.entries.lock().unwrap();
        let before = e.len();
        e.retain(|_, img| keep(img));
        self.save(&e)?;
        Ok(before - e.len())
    }

    /// Every image the cache points at.
    pub fn images(&self) -> Vec<String> {
        self.entries.lock().unwrap().values().cloned().collect()
    }

    pub fn clear(&self) -> Result<()> {
        let mut e = self.entries.lock().unwrap();
        e.clear();
        self.save(&e)
    }

    fn save(&self, e: &BTreeMap<String, String>) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_atomic(
            &self.path,
            &serde_json::to_vec(e).map_err(crate::Error::internal)?,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_prunes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cache.json");
        let c = BuildCache::open(p.clone());
        let k = step_key(Some("sha256:a"), "/bin/sh -c true");
        assert_ne!(k, step_key(None, "/bin/sh -c true"));
        c.insert(k.clone(), "sha256:b".into()).unwrap();
        let c = BuildCache::open(p);
        assert_eq!(c.get(&k).as_deref(), Some("sha256:b"));
        assert_eq!(c.retain(|i| i != "sha256:b").unwrap(), 1);
        assert!(c.get(&k).is_none());
    }
}
