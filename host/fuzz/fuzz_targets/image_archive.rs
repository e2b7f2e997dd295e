#![no_main]
//! `docker load`: the outer tar indexed by member name, its `manifest.json` or OCI
//! `index.json` read, and every member they name opened (links followed) and, for
//! layers, unpacked, as the engine does before storing anything.

use std::io::{Read, Write};

use berth_layer::tar_index::TarIndex;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Names of the members `manifest.json`/`index.json` point at (configs, layers, blobs).
fn referenced(idx: &TarIndex) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(Ok(Value::Array(entries))) = idx
        .read_small("manifest.json")
        .map(|b| serde_json::from_slice::<Value>(&b))
    {
        for e in entries {
            names.extend(e["Config"].as_str().map(str::to_string));
            for l in e["Layers"].as_array().into_iter().flatten() {
                names.extend(l.as_str().map(str::to_string));
            }
        }
    }
    if let Ok(Ok(index)) = idx
        .read_small("index.json")
        .map(|b| serde_json::from_slice::<Value>(&b))
    {
        for d in index["manifests"].as_array().into_iter().flatten() {
            if let Some(hex) = d["digest"].as_str().and_then(|d| d.strip_prefix("sha256:")) {
                names.push(format!("blobs/sha256/{hex}"));
            }
        }
    }
    names
}

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(data).unwrap();
    let Ok(idx) = TarIndex::build(file.path()) else {
        return;
    };
    for name in referenced(&idx) {
        let _ = idx.read_small(&name);
        let Ok(member) = idx.open(&name) else {
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        if berth_layer::unpack::unpack_layer(member, dir.path()).is_err() {
            // What the unpacker stopped reading is still readable to its end.
            if let Ok(mut m) = idx.open(&name) {
                let _ = m.read_to_end(&mut Vec::new());
            }
        }
    }
});
