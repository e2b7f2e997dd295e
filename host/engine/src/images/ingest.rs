//! Layers into the store: a layer stream unpacked under `layers/` (its diff ID checked)
//! and its bytes kept as a blob, in one pass.

use std::fs;
use std::io::Read;

use super::{digest, unpack, BlobRef, Compression, ImageStore, LayerRecord, PendingGuard};
use crate::{Error, Result};

impl ImageStore {
    /// Unpack a (maybe compressed) layer stream into a fresh temp dir, check its diff
    /// ID and move it to `layers/`. Returns `(diff_id, tar_size, size)`.
    pub(crate) fn ingest_layer<R: Read>(
        &self,
        r: R,
        expected_diff_id: Option<&str>,
        guard: &mut PendingGuard<'_>,
    ) -> Result<(String, u64, u64)> {
        let (_, plain) =
            digest::decompress(r).map_err(|e| Error::invalid(format!("invalid layer: {e}")))?;
        let mut hr = digest::HashingReader::new(plain);
        let tmp = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(self.tmp_dir())?;
        let size = unpack::unpack_layer(&mut hr, tmp.path())?;
        let (diff_id, tar_size) = hr
            .finish()
            .map_err(|e| Error::invalid(format!("invalid layer: {e}")))?;
        if let Some(exp) = expected_diff_id {
            if exp != diff_id {
                return Err(Error::invalid(format!(
                    "layer digest mismatch: expected diff ID {exp}, got {diff_id}"
                )));
            }
        }
        // Pending before it appears under layers/, so a concurrent gc leaves it alone.
        guard.add(&diff_id);
        let dest = self.layer_path(&diff_id);
        if dest.exists() {
            return Ok((diff_id, tar_size, size));
        }
        // Not synced here: `commit` syncs the filesystem once before it names the image.
        match fs::rename(tmp.path(), &dest) {
            Ok(()) => {
                // The dir now lives under layers/; don't let TempDir delete it.
                let _ = tmp.keep();
            }
            Err(_) if dest.exists() => {}
            Err(e) => return Err(e.into()),
        }
        Ok((diff_id, tar_size, size))
    }

    /// A layer the engine writes itself (commit, build steps): `write` fills a temp
    /// file with the tar, which is synced and ingested. The caller's `guard` keeps the
    /// new blob from the collector until the image that uses it is committed.
    pub(crate) fn ingest_written_tar(
        &self,
        write: impl FnOnce(std::io::BufWriter<fs::File>) -> Result<std::io::BufWriter<fs::File>>,
        guard: &mut PendingGuard<'_>,
    ) -> Result<LayerRecord> {
        let tmp = tempfile::Builder::new()
            .prefix("layer-")
            .tempfile_in(self.tmp_dir())?;
        write(std::io::BufWriter::new(tmp.reopen()?))?
            .into_inner()
            .map_err(|e| Error::from(e.into_error()))?
            .sync_all()?;
        self.ingest_with_blob(fs::File::open(tmp.path())?, None, None, None, guard)
    }

    /// Ingest a layer and keep the bytes read (compressed or not) as its blob, in one
    /// pass over `r`. `expected_blob` is checked when given (OCI layouts, registries).
    pub(crate) fn ingest_with_blob<R: Read>(
        &self,
        r: R,
        expected_diff_id: Option<&str>,
        expected_blob: Option<&str>,
        media_type: Option<&str>,
        guard: &mut PendingGuard<'_>,
    ) -> Result<LayerRecord> {
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.tmp_dir())?;
        let file = tmp.reopen()?;
        let mut tee =
            digest::TeeReader::new(r, digest::HashingWriter::new(std::io::BufWriter::new(file)));
        let (diff_id, tar_size, size) = self.ingest_layer(&mut tee, expected_diff_id, guard)?;
        std::io::copy(&mut tee, &mut std::io::sink())
            .map_err(|e| Error::invalid(format!("reading layer: {e}")))?;
        let (w, blob_digest, blob_size) = tee.into_writer().finish();
        let f = w.into_inner().map_err(|e| Error::from(e.into_error()))?;
        if let Some(exp) = expected_blob {
            if exp != blob_digest {
                return Err(Error::invalid(format!(
                    "layer digest mismatch: expected {exp}, got {blob_digest}"
                )));
            }
        }
        f.sync_data()?;
        guard.add(&blob_digest);
        let dest = self.blob_path(&blob_digest);
        if !dest.exists() {
            tmp.persist(&dest).map_err(|e| Error::from(e.error))?;
        }
        let compression = {
            let mut head = [0u8; 8];
            let n = fs::File::open(&dest)
                .and_then(|mut f| f.read(&mut head))
                .unwrap_or(0);
            Compression::sniff(&head[..n])
        };
        let media_type = media_type.map(String::from).unwrap_or_else(|| {
            match compression {
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                _ => "application/vnd.oci.image.layer.v1.tar",
            }
            .to_string()
        });
        Ok(LayerRecord {
            diff_id,
            tar_size,
            size,
            blob: BlobRef {
                digest: blob_digest,
                media_type,
                size: blob_size,
            },
            gzip: None,
        })
    }
}
