//! Host ids back to container ids in a tar stream, for the tars made from a container under
//! `--userns-remap` (`docker commit`, `export`, `cp` out): on the host its files belong to
//! the remapped range (container root = host uid 100000, say), and the tar must say what the
//! container saw (root = 0), as dockerd's do. Ids outside the map (a lower layer's files read
//! without the id mapping are still 0) pass through unchanged.
use std::io::{self, Write};

/// `(container_id, host_id, size)` ranges of a user namespace's uid and gid maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerMap {
    pub uids: Vec<(u32, u32, u32)>,
    pub gids: Vec<(u32, u32, u32)>,
}

fn to_container(ranges: &[(u32, u32, u32)], id: u64) -> u64 {
    ranges
        .iter()
        .find(|(_, h, s)| id >= *h as u64 && id - (*h as u64) < *s as u64)
        .map(|(c, h, _)| *c as u64 + (id - *h as u64))
        .unwrap_or(id)
}

impl OwnerMap {
    /// `c:h:s,c:h:s` (one list), as the archive child takes `--uid-map`/`--gid-map`.
    pub fn parse_ranges(s: &str) -> Option<Vec<(u32, u32, u32)>> {
        s.split(',')
            .filter(|r| !r.is_empty())
            .map(|r| {
                let mut f = r.split(':').map(|n| n.parse::<u32>().ok());
                Some((f.next()??, f.next()??, f.next()??))
            })
            .collect()
    }

    pub fn format_ranges(ranges: &[(u32, u32, u32)]) -> String {
        ranges
            .iter()
            .map(|(c, h, s)| format!("{c}:{h}:{s}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A writer under a `tar::Builder` that rewrites the owner of each header on its way
/// through (and its checksum); data blocks pass untouched.
pub struct OwnerMapWriter<W: Write> {
    inner: W,
    map: OwnerMap,
    block: Vec<u8>,
    /// Data blocks still to pass before the next header.
    data_blocks: u64,
}

impl<W: Write> OwnerMapWriter<W> {
    pub fn new(inner: W, map: OwnerMap) -> Self {
        OwnerMapWriter {
            inner,
            map,
            block: Vec::with_capacity(512),
            data_blocks: 0,
        }
    }

    pub fn into_inner(mut self) -> io::Result<W> {
        if !self.block.is_empty() {
            let rest = std::mem::take(&mut self.block);
            self.inner.write_all(&rest)?;
        }
        Ok(self.inner)
    }

    fn block_done(&mut self) -> io::Result<()> {
        if self.data_blocks > 0 {
            self.data_blocks -= 1;
        } else if self.block.iter().any(|b| *b != 0) {
            let h = tar::Header::from_byte_slice(&self.block);
            let size = h.entry_size().unwrap_or(0);
            let mut h = h.clone();
            if let (Ok(uid), Ok(gid)) = (h.uid(), h.gid()) {
                h.set_uid(to_container(&self.map.uids, uid));
                h.set_gid(to_container(&self.map.gids, gid));
                h.set_cksum();
            }
            self.block.copy_from_slice(h.as_bytes());
            self.data_blocks = size.div_ceil(512);
        }
        self.inner.write_all(&self.block)?;
        self.block.clear();
        Ok(())
    }
}

impl<W: Write> Write for OwnerMapWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            let take = (512 - self.block.len()).min(rest.len());
            self.block.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.block.len() == 512 {
                self.block_done()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_in_the_map_become_container_ids() {
        let map = OwnerMap {
            uids: vec![(0, 100000, 65536)],
            gids: vec![(0, 200000, 65536)],
        };
        let mut b = tar::Builder::new(OwnerMapWriter::new(Vec::new(), map));
        for (name, uid, gid, data) in [
            ("a", 100000u64, 200005u64, &b"hello"[..]),
            ("b", 0, 0, &[7u8; 1500][..]),
            ("c", 100042, 5, &b""[..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        let out = b.into_inner().unwrap().into_inner().unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let got: Vec<(String, u64, u64, usize)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut v).unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    v.len(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), 0, 5, 5),
                ("b".into(), 0, 0, 1500),
                ("c".into(), 42, 5, 0)
            ]
        );
        assert_eq!(
            OwnerMap::parse_ranges("0:100000:65536,65536:300000:5"),
            Some(vec![(0, 100000, 65536), (65536, 300000, 5)])
        );
    }
}
