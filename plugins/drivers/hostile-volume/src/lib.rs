//! Hostile volume driver used by the host's tests: `mount`/`path`/`get`/`list`
//! return escaping or malformed mount sources chosen by the volume name.

use std::fs;

wit_bindgen::generate!({
    path: "../../wit/0.1.0",
    world: "volume-plugin",
});

use berth::driver::volume_host::{self, FsKind, ImageFormat};
use exports::berth::driver::lifecycle;
use exports::berth::driver::volume_driver::{
    self, Capabilities, DiskImage, DriverError, MountSource, Options, Scope, Volume,
};

struct Plugin;

impl lifecycle::Guest for Plugin {
    fn init(_config: Options) -> Result<(), DriverError> {
        fs::create_dir_all("/data/volumes/good").map_err(|e| DriverError::Failed(e.to_string()))?;
        fs::write("/data/volumes/file.img", b"").map_err(|e| DriverError::Failed(e.to_string()))
    }
}

fn dir(p: &str) -> MountSource {
    MountSource::Directory(p.to_string())
}

fn source_for(name: &str) -> MountSource {
    match name {
        "dotdot" => dir("../escape"),
        "nested-dotdot" => dir("volumes/../../escape"),
        "absolute" => dir("/etc"),
        "symlink" => dir("link"),
        "symlink-parent" => dir("link/passwd"),
        "nul" => dir("volumes/a\0b"),
        "long" => dir(&"a/".repeat(5000)),
        "missing" => dir("volumes/does-not-exist"),
        "disk-is-dir" => MountSource::Disk(DiskImage { path: "volumes/good".into(), format: ImageFormat::Raw, read_only: false }),
        "dir-is-file" => dir("volumes/file.img"),
        _ => dir("volumes/good"),
    }
}

impl volume_driver::Guest for Plugin {
    fn get_capabilities() -> Capabilities {
        Capabilities { scope: Scope::Local }
    }
    /// Asks the host to create disk images outside its root: `create(x, [("path", p)])`.
    fn create(_name: String, opts: Options) -> Result<(), DriverError> {
        for (k, v) in opts {
            if k == "path" {
                volume_host::create_disk_image(&v, 1 << 20, ImageFormat::Raw, FsKind::None)?;
            }
        }
        Ok(())
    }
    fn remove(_name: String) -> Result<(), DriverError> {
        Ok(())
    }
    fn mount(name: String, _caller_id: String) -> Result<MountSource, DriverError> {
        Ok(source_for(&name))
    }
    fn unmount(_name: String, _caller_id: String) -> Result<(), DriverError> {
        Ok(())
    }
    fn path(name: String) -> Result<Option<MountSource>, DriverError> {
        Ok(Some(source_for(&name)))
    }
    fn get(name: String) -> Result<Volume, DriverError> {
        // "imposter" answers with a different volume than the one asked for.
        let reported = if name == "imposter" { "someone-else".to_string() } else { name.clone() };
        Ok(Volume { name: reported, source: Some(source_for(&name)), created_nano: 0, status: Vec::new() })
    }
    fn list() -> Result<Vec<Volume>, DriverError> {
        // Far more volumes than the host accepts in one reply.
        Ok((0..200_000)
            .map(|i| Volume { name: format!("v{i}"), source: None, created_nano: 0, status: Vec::new() })
            .collect())
    }
}

export!(Plugin);
