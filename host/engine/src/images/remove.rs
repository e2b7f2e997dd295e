//! Removing images: `rmi` (untagging, then the image and its untagged parents once
//! nothing uses them), removal of untagged images, and `image prune`.

use std::collections::BTreeSet;

use super::query::{created_unix, familiar, DeleteItem, PruneReport};
use super::reference::Reference;
use super::{digest, ImageStore, State};
use crate::{Error, Result};

impl ImageStore {
    /// Delete an image record and its unshared layers. The caller holds the lock.
    fn delete_locked(&self, st: &mut State, id: &str) -> Vec<DeleteItem> {
        let mut out = Vec::new();
        let refs: Vec<String> = st.refs_of(id).cloned().collect();
        for r in refs {
            st.refs.remove(&r);
            self.events
                .publish("image", "untag", id, [("name", familiar(&r))]);
            out.push(DeleteItem {
                untagged: Some(familiar(&r)),
                deleted: None,
            });
        }
        st.images.remove(id);
        out.push(DeleteItem {
            untagged: None,
            deleted: Some(id.to_string()),
        });
        self.events.publish("image", "delete", id, [("name", id)]);
        out
    }

    /// Whether another image was built on `id` (a build step, a commit).
    fn has_children(st: &State, id: &str) -> bool {
        st.images.values().any(|i| i.parent == id)
    }

    /// After `id` went away: its untagged parents that nothing else uses go too, as
    /// dockerd removes a build's intermediate images with the image.
    fn delete_parents_locked(&self, st: &mut State, mut parent: String) -> Vec<DeleteItem> {
        let mut out = Vec::new();
        while let Some(rec) = st.images.get(&parent) {
            let next = rec.parent.clone();
            if st.refs_of(&parent).next().is_some()
                || Self::has_children(st, &parent)
                || self.in_use(&parent)
            {
                break;
            }
            out.extend(self.delete_locked(st, &parent));
            parent = next;
        }
        out
    }

    /// `docker builder prune`: the untagged images among `ids` (the build cache's)
    /// that no container, tag or other image needs. Returns (IDs, bytes reclaimed).
    pub fn remove_untagged(&self, ids: &[String]) -> Result<(Vec<String>, u64)> {
        let mut st = self.state.lock().unwrap();
        let mut deleted = Vec::new();
        // Children first: repeat until nothing more can go.
        loop {
            let before = deleted.len();
            for id in ids {
                if !st.images.contains_key(id)
                    || st.refs_of(id).next().is_some()
                    || Self::has_children(&st, id)
                    || self.in_use(id)
                {
                    continue;
                }
                self.delete_locked(&mut st, id);
                deleted.push(id.clone());
            }
            if deleted.len() == before {
                break;
            }
        }
        let reclaimed = Self::orphan_layer_bytes(&st);
        self.save_state(&st)?;
        drop(st);
        self.gc()?;
        Ok((deleted, reclaimed))
    }

    /// Bytes of layers that no image references any more.
    fn orphan_layer_bytes(st: &State) -> u64 {
        let used: BTreeSet<&String> = st.images.values().flat_map(|i| i.layers.iter()).collect();
        st.layers
            .iter()
            .filter(|(d, _)| !used.contains(d))
            .map(|(_, l)| l.size)
            .sum()
    }

    /// `DELETE /images/{name}?force=&noprune=`. In-use images are refused (409) unless
    /// forced; forced, they lose their tags but keep their layers (a container runs
    /// from them).
    pub fn remove(&self, name: &str, force: bool, noprune: bool) -> Result<Vec<DeleteItem>> {
        let mut st = self.state.lock().unwrap();
        let id = Self::resolve_in(&st, name)?;
        let short = &digest::hex_part(&id)[..12];
        let in_use = self.in_use(&id);
        // Was the image named by one of its references (not by ID)?
        let by_ref = Reference::parse_tagged(name)
            .ok()
            .map(|r| r.to_string())
            .filter(|r| st.refs.get(r) == Some(&id));
        let mut out = Vec::new();
        if let Some(r) = by_ref {
            let others = st
                .refs_of(&id)
                .filter(|x| **x != r && !x.contains('@'))
                .count();
            // An image other images were built on keeps existing untagged.
            if others > 0
                || r.contains('@') && st.refs_of(&id).any(|x| !x.contains('@'))
                || Self::has_children(&st, &id)
            {
                st.refs.remove(&r);
                self.save_state(&st)?;
                drop(st);
                self.events
                    .publish("image", "untag", &id, [("name", familiar(&r))]);
                return Ok(vec![DeleteItem {
                    untagged: Some(familiar(&r)),
                    deleted: None,
                }]);
            }
            if in_use && !force {
                return Err(Error::conflict(format!(
                    "conflict: unable to remove repository reference \"{}\" (must force) - container is using its referenced image {short}",
                    familiar(&r)
                )));
            }
        } else {
            let tags = st.refs_of(&id).filter(|x| !x.contains('@')).count();
            if tags > 1 && !force {
                return Err(Error::conflict(format!(
                    "conflict: unable to delete {short} (must be forced) - image is referenced in multiple repositories"
                )));
            }
            if in_use && !force {
                return Err(Error::conflict(format!(
                    "conflict: unable to delete {short} (must be forced) - image is being used by a container"
                )));
            }
        }
        if in_use {
            let refs: Vec<String> = st.refs_of(&id).cloned().collect();
            for r in refs {
                st.refs.remove(&r);
                self.events
                    .publish("image", "untag", &id, [("name", familiar(&r))]);
                out.push(DeleteItem {
                    untagged: Some(familiar(&r)),
                    deleted: None,
                });
            }
            self.save_state(&st)?;
            return Ok(out);
        }
        if Self::has_children(&st, &id) {
            return Err(Error::conflict(format!(
                "conflict: unable to delete {short} (cannot be forced) - image has dependent child images"
            )));
        }
        let parent = st
            .images
            .get(&id)
            .map(|r| r.parent.clone())
            .unwrap_or_default();
        out.extend(self.delete_locked(&mut st, &id));
        if !noprune {
            out.extend(self.delete_parents_locked(&mut st, parent));
        }
        self.save_state(&st)?;
        drop(st);
        self.gc()?;
        Ok(out)
    }

    /// `POST /images/prune`: dangling images (or, with `dangling=false`, every image no
    /// container uses), optionally narrowed by `until` and labels.
    pub fn prune(
        &self,
        dangling_only: bool,
        until: Option<i64>,
        labels: &[String],
        not_labels: &[String],
    ) -> Result<PruneReport> {
        let ids: Vec<String> = self.state.lock().unwrap().images.keys().cloned().collect();
        let mut deleted = Vec::new();
        let mut reclaimed = 0u64;
        for id in ids {
            if self.in_use(&id) {
                continue;
            }
            let lbl = self.labels_of(&id);
            let has = |f: &String| match f.split_once('=') {
                Some((k, v)) => lbl.get(k).map(|x| x == v).unwrap_or(false),
                None => lbl.contains_key(f.as_str()),
            };
            if !labels.iter().all(has) || not_labels.iter().any(has) {
                continue;
            }
            let mut st = self.state.lock().unwrap();
            let Some(rec) = st.images.get(&id) else {
                continue;
            };
            if until.is_some_and(|u| created_unix(&rec.created) >= u) {
                continue;
            }
            let tagged = st.refs_of(&id).any(|r| !r.contains('@'));
            if dangling_only && tagged || Self::has_children(&st, &id) {
                continue;
            }
            let parent = rec.parent.clone();
            let mut items = self.delete_locked(&mut st, &id);
            items.extend(self.delete_parents_locked(&mut st, parent));
            reclaimed += Self::orphan_layer_bytes(&st);
            let used: BTreeSet<String> = st
                .images
                .values()
                .flat_map(|i| i.layers.iter().cloned())
                .collect();
            st.layers.retain(|d, _| used.contains(d));
            self.save_state(&st)?;
            deleted.extend(items);
        }
        self.gc()?;
        if !deleted.is_empty() {
            self.events
                .publish("image", "prune", "", [("reclaimed", reclaimed.to_string())]);
        }
        Ok(PruneReport {
            images_deleted: (!deleted.is_empty()).then_some(deleted),
            space_reclaimed: reclaimed,
        })
    }
}
