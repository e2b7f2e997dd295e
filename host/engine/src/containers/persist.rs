//! Writing a container's record file.
//!
//! Saves come from two kinds of paths: lifecycle verbs, which hold the container's
//! `op` lock, and the exit handler ([`Containers::on_exit`](super::Containers), run
//! by the monitor task, by re-adoption and by restore), which cannot take it: `stop`,
//! `kill`, `restart` and `rm` hold `op` while they wait for the exit that handler
//! reports, so it would deadlock. Other unlocked writers exist too (`kill`, health
//! checks). Two unserialised saves can land out of order (each snapshots the record,
//! then renames its own temp file), leaving an older state on disk than in memory:
//! e.g. a container that exited while `docker update` saved stays "running" on disk,
//! and after a daemon restart is reported as gone with exit code 255.
//!
//! So each save takes the container's own `on_disk` lock around both the snapshot and
//! the write. Snapshots are then written in the order they were taken, and the file
//! always ends with the newest snapshot: every `update` followed by a `save` is on disk
//! once that save returns. The lock is a plain mutex held only for the write, never
//! across an await, and nothing that holds it takes another container lock but the
//! record's own (always in that order), so it cannot deadlock with `op`.

use std::path::Path;

use super::Container;
use crate::{Error, Result};

impl Container {
    /// Write the record to `path` (atomically, see the module docs for the ordering).
    /// Does nothing once removal has deleted the container's directory.
    pub(super) fn persist(&self, path: &Path) -> Result<()> {
        let on_disk = self.on_disk.lock().unwrap();
        if !*on_disk {
            return Ok(());
        }
        let bytes = {
            let r = self.rec.lock().unwrap();
            serde_json::to_vec_pretty(&*r).map_err(Error::internal)?
        };
        crate::fsutil::write_atomic(path, &bytes)?;
        Ok(())
    }

    /// Removal is about to delete the container's directory (`false`), or failed to
    /// and the record stays (`true`). Waits for a save in progress.
    pub(super) fn set_on_disk(&self, on_disk: bool) {
        *self.on_disk.lock().unwrap() = on_disk;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::super::ContainerRecord;
    use super::*;

    fn on_disk(path: &Path) -> u64 {
        let r: ContainerRecord = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        r.generation
    }

    /// Two writers that update and save the same container at once (the exit handler
    /// and a verb holding `op`) must leave the newest state on disk, every time.
    #[test]
    fn concurrent_saves_leave_the_newest_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.json");
        let c = Container::new(ContainerRecord {
            id: "c1".into(),
            ..Default::default()
        });
        const WRITERS: usize = 4;
        for round in 0..200 {
            let barrier = Arc::new(Barrier::new(WRITERS));
            let threads: Vec<_> = (0..WRITERS)
                .map(|_| {
                    let (c, path, barrier) = (c.clone(), path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        c.update(|_| ());
                        c.persist(&path).unwrap();
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(
                on_disk(&path),
                c.record().generation,
                "round {round}: an older record overwrote a newer one"
            );
        }
    }

    #[test]
    fn no_save_after_removal_deleted_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let cdir = dir.path().join("c1");
        let path = cdir.join("container.json");
        let c = Container::new(ContainerRecord::default());
        c.persist(&path).unwrap();
        c.set_on_disk(false);
        std::fs::remove_dir_all(&cdir).unwrap();
        c.persist(&path).unwrap();
        assert!(
            !cdir.exists(),
            "a late save recreated the removed directory"
        );
    }
}
