//! A real Debian kernel for boot-protocol tests: linux-image-*-cloud-amd64
//! downloaded with apt, extracted with dpkg-deb, cached in /var/cache/berth.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

pub struct DebianKernel {
    pub package: String,
    pub bzimage: PathBuf,
    pub vmlinux: PathBuf,
}

const CACHE: &str = "/var/cache/berth";

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn package_name() -> Result<String, String> {
    let find = || -> Option<String> {
        let out =
            run(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"])).ok()?;
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
            .map(str::to_string)
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    // Package lists may be missing on a fresh machine.
    run(Command::new("apt-get").arg("update"))?;
    find().ok_or_else(|| "apt-cache knows no linux-image-cloud-amd64 dependency".into())
}

/// Decompresses the bzImage payload (the compressed vmlinux ELF).
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<(), String> {
    let img = std::fs::read(bzimage).map_err(|e| e.to_string())?;
    let setup_sects = match img[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let off = u32::from_le_bytes(img[0x248..0x24c].try_into().unwrap()) as usize;
    let len = u32::from_le_bytes(img[0x24c..0x250].try_into().unwrap()) as usize;
    let start = (setup_sects + 1) * 512 + off;
    let payload = &img[start..start + len];
    // (command, Debian package providing it)
    let (tool, pkg): (&[&str], &str) = match payload {
        [0x1f, 0x8b, ..] => (&["gzip", "-dc"], "gzip"),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => (&["xz", "-dc", "--single-stream"], "xz-utils"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => (&["zstd", "-dc"], "zstd"),
        // Debian's 6.1 cloud kernel uses LZ4.
        [0x02, 0x21, 0x4c, 0x18, ..] => (&["lz4", "-dc"], "lz4"),
        _ => {
            return Err(format!(
                "unknown payload compression {:02x?}",
                &payload[..4]
            ))
        }
    };
    let have = Command::new("sh")
        .args(["-c", &format!("command -v {}", tool[0])])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        run(Command::new("apt-get").args(["install", "-y", pkg]))?;
    }
    let tmp = out.with_extension("payload");
    std::fs::write(&tmp, payload).map_err(|e| e.to_string())?;
    let o = Command::new(tool[0])
        .args(&tool[1..])
        .arg(&tmp)
        .output()
        .map_err(|e| format!("{}: {e}", tool[0]))?;
    let _ = std::fs::remove_file(&tmp);
    if o.stdout.get(..4) != Some(b"\x7fELF") {
        return Err(format!(
            "{} did not produce an ELF: {}",
            tool[0],
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let part = out.with_extension("part");
    std::fs::write(&part, &o.stdout).map_err(|e| e.to_string())?;
    std::fs::rename(&part, out).map_err(|e| e.to_string())
}

fn fetch() -> Result<DebianKernel, String> {
    let package = package_name()?;
    let dir = Path::new(CACHE).join(&package);
    let bzimage = dir.join("vmlinuz");
    let vmlinux = dir.join("vmlinux");
    if !bzimage.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let work = dir.join("download");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        run(Command::new("apt-get")
            .arg("download")
            .arg(&package)
            .current_dir(&work))?;
        let deb = std::fs::read_dir(&work)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or("apt-get download produced no .deb")?;
        let root = work.join("root");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        let vmlinuz = std::fs::read_dir(root.join("boot"))
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .ok_or("no /boot/vmlinuz-* in the package")?;
        let part = dir.join("vmlinuz.part");
        std::fs::copy(&vmlinuz, &part).map_err(|e| e.to_string())?;
        std::fs::rename(&part, &bzimage).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&work);
    }
    if !vmlinux.exists() {
        extract_vmlinux(&bzimage, &vmlinux)?;
    }
    Ok(DebianKernel {
        package,
        bzimage,
        vmlinux,
    })
}

/// The cached kernel, fetching it on first use. None (with the reason
/// printed) only when apt cannot provide it.
pub fn debian_kernel() -> Option<DebianKernel> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    match fetch() {
        Ok(k) => Some(k),
        Err(e) => {
            eprintln!("skipping: cannot fetch the Debian cloud kernel with apt: {e}");
            None
        }
    }
}
