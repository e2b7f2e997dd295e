//! The ownership ledger: every link, address, network namespace and nftables table berth
//! created, with the network or endpoint that owns it. Entries are written *before* the
//! resource is created (a crash in between leaves an entry for something that may not
//! exist, which reconciliation removes idempotently) and dropped after it is gone.
//! The executor refuses to change or delete anything that is not in here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Link,
    Address,
    Netns,
    NftTable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// A network id, an endpoint id or `berth` (daemon-wide resources).
    pub owner: String,
    pub kind: Kind,
    /// Link name, `link/address`, netns path, or `ip berth`.
    pub name: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    #[serde(skip)]
    path: PathBuf,
    pub entries: Vec<Entry>,
}

impl Ledger {
    pub fn open(dir: &Path) -> Result<Ledger> {
        let path = dir.join("ledger.json");
        let mut l: Ledger = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(crate::Error::internal)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ledger::default(),
            Err(e) => return Err(e.into()),
        };
        l.path = path;
        Ok(l)
    }

    fn save(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(crate::Error::internal)?;
        crate::fsutil::write_atomic(&self.path, &bytes)?;
        Ok(())
    }

    /// Record that `owner` is about to create `name`. A resource already owned by someone
    /// else is refused: two networks must never share a bridge or an address.
    pub fn claim(&mut self, owner: &str, kind: Kind, name: &str) -> Result<()> {
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.kind == kind && e.name == name)
        {
            if e.owner == owner {
                return Ok(());
            }
            return Err(crate::Error::Forbidden(format!(
                "{kind:?} {name} belongs to {}, not to {owner}",
                e.owner
            )));
        }
        self.entries.push(Entry {
            owner: owner.into(),
            kind,
            name: name.into(),
        });
        self.save()
    }

    /// Does `owner` own `name`?
    pub fn owns(&self, owner: &str, kind: Kind, name: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.owner == owner && e.kind == kind && e.name == name)
    }

    /// Does anyone own `name`? (A sandbox netns or a bridge berth made.)
    pub fn recorded(&self, kind: Kind, name: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.kind == kind && e.name == name)
    }

    /// Forget `name` once it is gone.
    pub fn release(&mut self, owner: &str, kind: Kind, name: &str) -> Result<()> {
        let before = self.entries.len();
        self.entries
            .retain(|e| !(e.owner == owner && e.kind == kind && e.name == name));
        if self.entries.len() != before {
            self.save()?;
        }
        Ok(())
    }

    pub fn owned_by(&self, owner: &str) -> Vec<Entry> {
        self.entries
            .iter()
            .filter(|e| e.owner == owner)
            .cloned()
            .collect()
    }

    pub fn owners(&self) -> Vec<String> {
        let mut o: Vec<String> = self.entries.iter().map(|e| e.owner.clone()).collect();
        o.sort();
        o.dedup();
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_exclusive_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        l.claim("net-a", Kind::Link, "br-a").unwrap();
        l.claim("net-a", Kind::Link, "br-a").unwrap();
        // Another owner can never take over (or later delete) net-a's bridge.
        assert!(matches!(
            l.claim("net-b", Kind::Link, "br-a"),
            Err(crate::Error::Forbidden(_))
        ));
        let l2 = Ledger::open(dir.path()).unwrap();
        assert!(l2.owns("net-a", Kind::Link, "br-a"));
        assert!(!l2.owns("net-b", Kind::Link, "br-a"));
        l.release("net-a", Kind::Link, "br-a").unwrap();
        assert!(Ledger::open(dir.path()).unwrap().entries.is_empty());
    }
}
