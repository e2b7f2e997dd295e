#![no_main]
//! Untrusted tars written to disk: berth-layer's unpacker (pulled, loaded and imported
//! layers, build contexts) behind the decompressor every one of them goes through
//! (gzip, xz, zstd or none, sniffed as `docker import` does), and the extraction of
//! `docker cp` PUT, each into a fresh temp dir. Besides not crashing, neither may create
//! anything beside its target.

use std::io::Read;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// Names in `base` other than `target`: what an extraction left outside it.
fn outside(base: &Path, target: &str) -> Vec<String> {
    std::fs::read_dir(base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != target)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let base = tempfile::tempdir().unwrap();
    let layer = base.path().join("layer");
    std::fs::create_dir(&layer).unwrap();
    // The store's ingest path: decompress, hash, unpack, then read to the end. A
    // decompression bomb is bounded here only so that a run stays fast.
    if let Ok((_, plain)) = berth_blob::decompress(data) {
        let mut hashed = berth_blob::HashingReader::new(plain.take(64 << 20));
        let _ = berth_layer::unpack::unpack_layer(&mut hashed, &layer);
        let _ = hashed.finish();
    }
    assert_eq!(outside(base.path(), "layer"), Vec::<String>::new());

    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let _ = berth_layer::archive::extract_put(data, &root, "/", false, None);
    assert_eq!(outside(base.path(), "root"), Vec::<String>::new());
});
