//! Guest disks and the initramfs, built on the host with Debian's tools:
//! - per image, a read-only block image of the flattened layers, built once and cached by
//!   the image's layer chain (erofs when `mkfs.erofs` exists, else ext4 via `mkfs.ext4 -d`);
//! - per container, a sparse ext4 disk holding the overlay's upper and work dirs;
//! - the initramfs: the static `berth-agent` as `/init`, cached by the agent's hash.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::images::ImageStore;
use crate::{Error, Result};

/// Filesystem of the per-image block images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFs {
    Erofs,
    Ext4,
}

impl ImageFs {
    pub fn probe() -> ImageFs {
        if super::super::find_on_path("mkfs.erofs").is_some() {
            ImageFs::Erofs
        } else {
            ImageFs::Ext4
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ImageFs::Erofs => "erofs",
            ImageFs::Ext4 => "ext4",
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| Error::internal(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(Error::internal(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Bytes of the regular files under `p` (symlinks not followed).
fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The chain of unpacked layer dirs (content-addressed) identifies a rootfs: images that
/// share all their layers share the block image.
fn chain_key(layers: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    for l in layers {
        h.update(l.as_os_str().as_encoded_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())[..32].to_string()
}

/// Remove cached block images no image in the store uses any more (after `rmi`). Blocking;
/// the caller holds the build lock.
pub fn gc_image_disks(images: &Arc<ImageStore>, cache: &Path) {
    let Ok(list) = images.list(&crate::images::ListOptions {
        all: true,
        ..Default::default()
    }) else {
        return;
    };
    let live: std::collections::HashSet<String> = list
        .iter()
        .filter_map(|i| images.layer_dirs(&i.id).ok())
        .map(|l| chain_key(&l))
        .collect();
    let Ok(rd) = std::fs::read_dir(cache) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // In-progress builds are hidden temp dirs.
        if name.starts_with('.') {
            continue;
        }
        let key = name.split('.').next().unwrap_or_default();
        if !live.contains(key) {
            tracing::info!(disk = %name, "removing unused microVM image disk");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The block image of `image_id`'s rootfs under `cache`, built if missing. Blocking.
pub fn image_disk(
    images: &Arc<ImageStore>,
    image_id: &str,
    cache: &Path,
    fs: ImageFs,
) -> Result<PathBuf> {
    let key = chain_key(&images.layer_dirs(image_id)?);
    let dest = cache.join(format!("{key}.{}", fs.as_str()));
    if dest.exists() {
        return Ok(dest);
    }
    std::fs::create_dir_all(cache)?;
    let tmp = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(cache)?;
    let root = tmp.path().join("rootfs");
    let t0 = Instant::now();
    images.flatten_into(image_id, &root)?;
    let flat_ms = t0.elapsed().as_millis();
    let out = tmp.path().join("disk");
    let t1 = Instant::now();
    disk_from_dir(&root, &out, fs)?;
    tracing::info!(
        image = %image_id,
        fs = fs.as_str(),
        flatten_ms = flat_ms,
        mkfs_ms = t1.elapsed().as_millis(),
        bytes = std::fs::metadata(&out)?.len(),
        "built microVM image disk"
    );
    std::fs::rename(&out, &dest)?;
    Ok(dest)
}

/// Build the read-only block image `out` of the directory tree `root`. Blocking.
pub fn disk_from_dir(root: &Path, out: &Path, fs: ImageFs) -> Result<()> {
    match fs {
        ImageFs::Erofs => run(
            Command::new("mkfs.erofs")
                .arg("-Enoinline_data")
                .arg("--quiet")
                .arg(out)
                .arg(root),
            "mkfs.erofs",
        )?,
        ImageFs::Ext4 => {
            // Room for metadata: the payload plus a quarter, at least 16 MiB.
            let size = (dir_bytes(root) * 5 / 4).max(16 << 20);
            run(
                Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-m", "0", "-O", "^has_journal", "-d"])
                    .arg(root)
                    .arg(out)
                    .arg(format!("{}k", size.div_ceil(4096) * 4)),
                "mkfs.ext4",
            )?
        }
    }
    // Block devices are read in 512-byte sectors.
    let size = std::fs::metadata(out)?.len();
    if size % 512 != 0 {
        std::fs::OpenOptions::new()
            .write(true)
            .open(out)?
            .set_len(size.div_ceil(512) * 512)?;
    }
    Ok(())
}

/// Default size of a container's writable disk (sparse: only written blocks use space).
pub const RW_DISK_BYTES: u64 = 4 << 30;

/// Create the container's writable disk: sparse ext4 with empty `upper/` and `work/`, and
/// in `upper/` the image's VOLUME directories (their data lives in the writable layer).
/// A small journal, left unzeroed (`lazy_journal_init`): creating the disk stays cheap,
/// and a write the host fails (the data root ran full: the guest sees an I/O error) or a
/// killed VMM leaves a filesystem the next boot replays, rather than metadata that no
/// longer matches its checksums ("Bad message" at the next start, seen without one).
pub fn create_rw_disk(path: &Path, bytes: u64) -> Result<()> {
    let tmpl = tempfile::Builder::new()
        .prefix(".rw-")
        .tempdir_in(path.parent().unwrap_or(Path::new("/tmp")))?;
    std::fs::create_dir(tmpl.path().join("upper"))?;
    std::fs::create_dir(tmpl.path().join("work"))?;
    // Made under a temp name and renamed when whole: a mkfs cut short (a full disk) leaves
    // no half-made disk at `path`, and the temp file is removed on every error path.
    let disk = tempfile::Builder::new()
        .prefix(".rw-disk-")
        .tempfile_in(path.parent().unwrap_or(Path::new("/tmp")))?;
    // The mode File::create gave it (tempfile makes 0600), for the VMM that opens it.
    use std::os::unix::fs::PermissionsExt;
    disk.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    disk.as_file().set_len(bytes)?;
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-J", "size=4"])
            .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
            .arg("-d")
            .arg(tmpl.path())
            .arg(disk.path()),
        "mkfs.ext4 (container disk)",
    )?;
    disk.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The UUID of the ext2/3/4 filesystem in the image at `path` (32 hex digits), which the
/// guest agent uses to find the disk among its virtio devices (`berth.disk=...,<uuid>`).
pub fn ext4_uuid(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    // Superblock at byte 1024: magic 0xEF53 at +0x38, s_uuid (16 bytes) at +0x68.
    let mut f = std::fs::File::open(path).ok()?;
    let mut sb = [0u8; 0x78];
    f.seek(SeekFrom::Start(1024)).ok()?;
    f.read_exact(&mut sb).ok()?;
    (sb[0x38..0x3a] == [0x53, 0xEF]).then(|| hex::encode(&sb[0x68..0x78]))
}

/// The initramfs for `agent_bin` under `cache`, built if missing: a newc cpio holding the
/// stripped agent as `/init` and `/dev/console`. Uncompressed: under TCG, unpacking is
/// cheaper than decompressing. Blocking.
pub fn initramfs(agent_bin: &Path, cache: &Path) -> Result<PathBuf> {
    let bytes = std::fs::read(agent_bin)
        .map_err(|e| Error::internal(format!("reading {}: {e}", agent_bin.display())))?;
    let key = hex::encode(Sha256::digest(&bytes));
    let dest = cache.join(format!("agent-{}.cpio", &key[..32]));
    if dest.exists() {
        return Ok(dest);
    }
    if !is_static_elf(&bytes) {
        return Err(Error::invalid(format!(
            "{} is not a static executable: it cannot be PID 1 of a microVM",
            agent_bin.display()
        )));
    }
    std::fs::create_dir_all(cache)?;
    let tmp = tempfile::Builder::new()
        .prefix(".initramfs-")
        .tempdir_in(cache)?;
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("dev"))?;
    // Debug builds carry tens of MB of DWARF the guest never reads.
    run(
        Command::new("strip")
            .arg("-o")
            .arg(root.join("init"))
            .arg(agent_bin),
        "strip berth-agent",
    )?;
    run(
        Command::new("mknod")
            .args(["-m", "600"])
            .arg(root.join("dev/console"))
            .args(["c", "5", "1"]),
        "mknod /dev/console",
    )?;
    let out = tmp.path().join("initramfs.cpio");
    let list = "init\ndev\ndev/console\n";
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet", "-R", "0:0"])
        .current_dir(&root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(&out)?)
        .spawn()
        .map_err(|e| Error::internal(format!("cpio: {e}")))?;
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(list.as_bytes())?;
    }
    let st = child.wait()?;
    if !st.success() {
        return Err(Error::internal(format!("cpio failed: {st}")));
    }
    std::fs::rename(&out, &dest)?;
    Ok(dest)
}

/// An ELF executable without a PT_INTERP program header (no dynamic loader).
fn is_static_elf(b: &[u8]) -> bool {
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
    let phentsize = u16_at(54);
    let phnum = u16_at(56);
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        // PT_INTERP = 3
        b.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) != 3)
    })
}
