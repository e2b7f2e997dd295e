//! berth's `local` volume driver. Everything lives in the plugin's own root
//! (preopened at `/data`):
//!   volumes/<name>/meta           key=value metadata
//!   volumes/<name>/_data/         contents of a `kind=dir` volume
//!   volumes/<name>/disk.img       raw ext4 image of a `kind=disk` volume
//!   volumes/<name>/mounts/<id>    one file per mounting container (refcount)
//! Mount sources are returned relative to that root; the host resolves them.

use std::fs;
use std::sync::Mutex;

wit_bindgen::generate!({
    path: "../../wit/0.1.0",
    world: "volume-plugin",
});

use berth::driver::volume_host::{self, FsKind, ImageFormat};
use exports::berth::driver::lifecycle;
use exports::berth::driver::volume_driver::{
    self, Capabilities, DiskImage, DriverError, MountSource, Options, Scope, Volume,
};

const ROOT: &str = "/data/volumes";

struct Defaults {
    kind: String,
    size: u64,
}

static DEFAULTS: Mutex<Defaults> = Mutex::new(Defaults { kind: String::new(), size: 1 << 30 });

fn fail(e: std::io::Error) -> DriverError {
    DriverError::Failed(e.to_string())
}

/// Binary-multiplier size (`10G`, `512m`, `1048576`).
fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().trim_end_matches(['b', 'B']).trim_end_matches(['i', 'I']);
    let (num, shift) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 10),
        'm' | 'M' => (&t[..t.len() - 1], 20),
        'g' | 'G' => (&t[..t.len() - 1], 30),
        't' | 'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

fn check_name(name: &str) -> Result<(), DriverError> {
    let b = name.as_bytes();
    let ok = b.len() >= 2
        && b.len() <= 255
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
    ok.then_some(()).ok_or_else(|| {
        DriverError::Invalid(format!(
            "{name:?} includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed"
        ))
    })
}

fn check_caller(id: &str) -> Result<(), DriverError> {
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    ok.then_some(()).ok_or_else(|| DriverError::Invalid(format!("invalid caller id {id:?}")))
}

struct Meta {
    kind: String,
    size: u64,
    created: i64,
}

impl Meta {
    fn load(name: &str) -> Result<Meta, DriverError> {
        let text = match fs::read_to_string(format!("{ROOT}/{name}/meta")) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DriverError::NotFound(format!("no such volume: {name}")))
            }
            Err(e) => return Err(fail(e)),
        };
        let mut m = Meta { kind: "dir".into(), size: 0, created: 0 };
        for line in text.lines() {
            match line.split_once('=') {
                Some(("kind", v)) => m.kind = v.to_string(),
                Some(("size", v)) => m.size = v.parse().unwrap_or(0),
                Some(("created", v)) => m.created = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        Ok(m)
    }

    fn store(&self, name: &str) -> Result<(), DriverError> {
        let tmp = format!("{ROOT}/{name}/meta.tmp");
        fs::write(&tmp, format!("kind={}\nsize={}\ncreated={}\n", self.kind, self.size, self.created)).map_err(fail)?;
        fs::rename(tmp, format!("{ROOT}/{name}/meta")).map_err(fail)
    }

    fn source(&self, name: &str) -> MountSource {
        if self.kind == "disk" {
            MountSource::Disk(DiskImage {
                path: format!("volumes/{name}/disk.img"),
                format: ImageFormat::Raw,
                read_only: false,
            })
        } else {
            MountSource::Directory(format!("volumes/{name}/_data"))
        }
    }

    fn volume(&self, name: &str) -> Volume {
        let mut status = vec![("kind".to_string(), self.kind.clone())];
        if self.kind == "disk" {
            status.push(("size".into(), self.size.to_string()));
        }
        Volume { name: name.to_string(), source: Some(self.source(name)), created_nano: self.created, status }
    }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn mounts(name: &str) -> Vec<String> {
    fs::read_dir(format!("{ROOT}/{name}/mounts"))
        .map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

struct Plugin;

impl lifecycle::Guest for Plugin {
    fn init(config: Options) -> Result<(), DriverError> {
        let mut d = DEFAULTS.lock().unwrap();
        d.kind = "dir".into();
        for (k, v) in config {
            match k.as_str() {
                "default-kind" if v == "dir" || v == "disk" => d.kind = v,
                "default-size" => d.size = parse_size(&v).ok_or_else(|| DriverError::Invalid(format!("bad default-size {v}")))?,
                _ => return Err(DriverError::Invalid(format!("unknown config key {k}"))),
            }
        }
        fs::create_dir_all(ROOT).map_err(fail)
    }
}

impl volume_driver::Guest for Plugin {
    fn get_capabilities() -> Capabilities {
        Capabilities { scope: Scope::Local }
    }

    fn create(name: String, opts: Options) -> Result<(), DriverError> {
        check_name(&name)?;
        let (mut kind, mut size) = {
            let d = DEFAULTS.lock().unwrap();
            (d.kind.clone(), d.size)
        };
        let mut fs_kind = FsKind::Ext4;
        for (k, v) in &opts {
            match k.as_str() {
                "kind" if v == "dir" || v == "disk" => kind = v.clone(),
                "kind" => return Err(DriverError::Invalid(format!("invalid kind {v:?}: use dir or disk"))),
                "size" => {
                    size = parse_size(v).filter(|&n| n >= 1 << 20).ok_or_else(|| {
                        DriverError::Invalid(format!("invalid size {v:?}: at least 1M"))
                    })?
                }
                "fs" if v == "ext4" => fs_kind = FsKind::Ext4,
                "fs" if v == "none" => fs_kind = FsKind::None,
                "type" | "device" | "o" => {
                    return Err(DriverError::Unsupported(format!(
                        "option {k:?}: berth's local driver does not mount host devices or remote filesystems"
                    )))
                }
                _ => return Err(DriverError::Invalid(format!("invalid option key: {k:?}"))),
            }
        }
        let dir = format!("{ROOT}/{name}");
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(DriverError::AlreadyExists(format!("volume {name} already exists")))
            }
            Err(e) => return Err(fail(e)),
        }
        let made = (|| {
            fs::create_dir(format!("{dir}/mounts")).map_err(fail)?;
            if kind == "disk" {
                volume_host::create_disk_image(&format!("volumes/{name}/disk.img"), size, ImageFormat::Raw, fs_kind)?;
            } else {
                size = 0;
                fs::create_dir(format!("{dir}/_data")).map_err(fail)?;
            }
            Meta { kind, size, created: now_nanos() }.store(&name)
        })();
        if made.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        made
    }

    fn remove(name: String) -> Result<(), DriverError> {
        check_name(&name)?;
        Meta::load(&name)?;
        let users = mounts(&name);
        if !users.is_empty() {
            return Err(DriverError::Busy(format!("volume is in use - [{}]", users.join(", "))));
        }
        fs::remove_dir_all(format!("{ROOT}/{name}")).map_err(fail)
    }

    fn mount(name: String, caller_id: String) -> Result<MountSource, DriverError> {
        check_name(&name)?;
        check_caller(&caller_id)?;
        let meta = Meta::load(&name)?;
        fs::write(format!("{ROOT}/{name}/mounts/{caller_id}"), b"").map_err(fail)?;
        Ok(meta.source(&name))
    }

    fn unmount(name: String, caller_id: String) -> Result<(), DriverError> {
        check_name(&name)?;
        check_caller(&caller_id)?;
        Meta::load(&name)?;
        match fs::remove_file(format!("{ROOT}/{name}/mounts/{caller_id}")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail(e)),
            _ => Ok(()),
        }
    }

    fn path(name: String) -> Result<Option<MountSource>, DriverError> {
        check_name(&name)?;
        Ok(Some(Meta::load(&name)?.source(&name)))
    }

    fn get(name: String) -> Result<Volume, DriverError> {
        check_name(&name)?;
        Ok(Meta::load(&name)?.volume(&name))
    }

    fn list() -> Result<Vec<Volume>, DriverError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(ROOT).map_err(fail)? {
            let Ok(name) = entry.map_err(fail)?.file_name().into_string() else { continue };
            if let Ok(meta) = Meta::load(&name) {
                out.push(meta.volume(&name));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

export!(Plugin);
