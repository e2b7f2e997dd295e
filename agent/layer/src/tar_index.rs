//! Random access by member name to a tar file on disk, for `docker load`: the archive
//! is indexed once (member data seeked over, never read), then its JSON and layers are
//! read by name, following the archive's own symlinks and hard links.
//!
//! The archive is untrusted: names are normalised but never touch the filesystem, link
//! chains are bounded, and every member must lie inside the file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::{Error, Result};

/// Largest member [`TarIndex::read_small`] reads (manifests and configs).
pub const MAX_JSON: u64 = 16 << 20;

/// A member of the outer tar: where its data starts and how long it is.
struct Section {
    offset: u64,
    size: u64,
}

/// Random access to the members of a tar file already on disk.
pub struct TarIndex {
    file: File,
    files: HashMap<String, Section>,
    links: HashMap<String, String>,
}

pub struct SectionReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for SectionReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = (self.end - self.pos) as usize;
        if left == 0 {
            return Ok(0);
        }
        let want = left.min(buf.len());
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive truncated",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn norm(p: &[u8]) -> String {
    let s = String::from_utf8_lossy(p);
    s.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn bad_archive(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("invalid tar archive: {e}"))
}

impl TarIndex {
    pub fn build(path: &Path) -> Result<TarIndex> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        {
            let mut ar = tar::Archive::new(io::BufReader::new(&file));
            // Seek over member data instead of reading it: layers are only read once, later.
            for e in ar.entries_with_seek().map_err(bad_archive)? {
                let e = e.map_err(bad_archive)?;
                let name = norm(&e.path_bytes());
                match e.header().entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        let (offset, size) = (e.raw_file_position(), e.size());
                        if offset + size > len {
                            return Err(bad_archive(format!("unexpected EOF in {name}")));
                        }
                        files.insert(name, Section { offset, size });
                    }
                    tar::EntryType::Symlink | tar::EntryType::Link => {
                        if let Some(t) = e.link_name_bytes() {
                            let target = if e.header().entry_type() == tar::EntryType::Link
                                || t.first() == Some(&b'/')
                            {
                                norm(&t)
                            } else {
                                let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                                resolve_rel(dir, &String::from_utf8_lossy(&t))
                            };
                            links.insert(name, target);
                        }
                    }
                    _ => {}
                }
            }
        }
        if files.is_empty() {
            return Err(bad_archive("empty archive"));
        }
        Ok(TarIndex { file, files, links })
    }

    pub fn open(&self, name: &str) -> Result<SectionReader<'_>> {
        let mut n = norm(name.as_bytes());
        for _ in 0..16 {
            if let Some(s) = self.files.get(&n) {
                return Ok(SectionReader {
                    file: &self.file,
                    pos: s.offset,
                    end: s.offset + s.size,
                });
            }
            match self.links.get(&n) {
                Some(t) => n = t.clone(),
                None => break,
            }
        }
        Err(Error::Invalid(format!(
            "invalid archive: {name} not found in archive"
        )))
    }

    pub fn read_small(&self, name: &str) -> Result<Vec<u8>> {
        let mut r = self.open(name)?;
        if r.end - r.pos > MAX_JSON {
            return Err(Error::Invalid(format!(
                "invalid archive: {name} is too large"
            )));
        }
        let mut v = Vec::new();
        r.read_to_end(&mut v).map_err(bad_archive)?;
        Ok(v)
    }

    pub fn has(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }
}

fn resolve_rel(dir: &str, target: &str) -> String {
    let mut parts: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}
