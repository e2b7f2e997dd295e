//! Per-plugin durable key/value store behind `host.kv-*`, kept outside the
//! plugin's own root so the plugin cannot bypass the quotas through WASI.

use std::collections::BTreeMap;
use std::path::PathBuf;

pub const MAX_KEY: usize = 256;
pub const MAX_VALUE: usize = 64 << 10;
pub const MAX_ENTRIES: usize = 1024;
pub const MAX_TOTAL: usize = 4 << 20;

/// Writes are persisted by [`Kv::flush`], which the host calls once after every
/// plugin call, so a burst of sets costs one file write.
pub struct Kv {
    path: PathBuf,
    map: BTreeMap<String, Vec<u8>>,
    total: usize,
    dirty: bool,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Kv {
    pub fn open(path: PathBuf) -> Kv {
        let map: BTreeMap<String, String> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let map: BTreeMap<String, Vec<u8>> = map
            .into_iter()
            .filter_map(|(k, v)| Some((k, unhex(&v)?)))
            .collect();
        let total = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        Kv {
            path,
            map,
            total,
            dirty: false,
        }
    }

    /// Persist pending changes (atomic rename).
    pub fn flush(&mut self) -> Result<(), String> {
        if !self.dirty {
            return Ok(());
        }
        self.dirty = false;
        let enc: BTreeMap<&String, String> = self.map.iter().map(|(k, v)| (k, hex(v))).collect();
        let bytes = serde_json::to_vec(&enc).map_err(|e| e.to_string())?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|e| e.to_string())
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.map.get(key).cloned()
    }

    pub fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(format!("kv key must be 1..={MAX_KEY} bytes"));
        }
        if value.len() > MAX_VALUE {
            return Err(format!("kv value larger than {MAX_VALUE} bytes"));
        }
        let old = self.map.get(&key).map_or(0, |v| key.len() + v.len());
        if old == 0 && self.map.len() >= MAX_ENTRIES {
            return Err(format!("kv quota: at most {MAX_ENTRIES} keys"));
        }
        let total = self.total - old + key.len() + value.len();
        if total > MAX_TOTAL {
            return Err(format!("kv quota: at most {MAX_TOTAL} bytes"));
        }
        self.map.insert(key, value);
        self.total = total;
        self.dirty = true;
        Ok(())
    }

    pub fn delete(&mut self, key: &str) {
        if let Some(v) = self.map.remove(key) {
            self.total -= key.len() + v.len();
            self.dirty = true;
        }
    }

    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.map
            .keys()
            .filter(|k| k.starts_with(prefix))
            .take(MAX_ENTRIES)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_and_persistence() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("kv.json");
        let mut kv = Kv::open(p.clone());
        kv.set("a".into(), vec![1, 2, 3]).unwrap();
        kv.flush().unwrap();
        assert!(kv.set("b".into(), vec![0; MAX_VALUE + 1]).is_err());
        assert!(kv.set("x".repeat(MAX_KEY + 1), vec![]).is_err());
        let kv2 = Kv::open(p);
        assert_eq!(kv2.get("a"), Some(vec![1, 2, 3]));
        assert_eq!(kv2.keys(""), vec!["a".to_string()]);
    }
}
