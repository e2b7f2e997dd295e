//! The container's filesystem: rootfs mount, /proc, /sys, /dev, /etc files, user mounts,
//! masked paths, pivot_root, read-only root. Runs in the container's fresh mount namespace, so
//! every mount disappears with the container.
use std::{
    fs, io,
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
};

use berth_agent_protocol::{ContainerSpec, MountKind, Rootfs};
use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sys::stat::{makedev, mknod, Mode, SFlag},
    unistd::{chdir, pivot_root},
};

use crate::userns::Userns;
use crate::util::{errno_io, secure_join};

/// Docker's default masked and read-only paths (non-privileged containers).
const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn ctx<T>(r: nix::Result<T>, what: impl FnOnce() -> String) -> io::Result<T> {
    r.map_err(|e| io::Error::new(errno_io(e).kind(), format!("{}: {e}", what())))
}

fn do_mount(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> io::Result<()> {
    ctx(mount(src, target, fstype, flags, data), || {
        format!(
            "mount {} on {}",
            src.or(fstype).unwrap_or("-"),
            target.display()
        )
    })
}

/// The mountpoint of the rootfs inside the exec dir.
pub fn rootfs_mountpoint(exec_dir: &Path) -> PathBuf {
    exec_dir.join("rootfs")
}

/// Files the host supplied for /etc, written into the exec dir and bind-mounted.
pub fn write_etc_files(
    spec: &ContainerSpec,
    exec_dir: &Path,
) -> io::Result<Vec<(PathBuf, &'static str)>> {
    let mut out = Vec::new();
    for (content, name, dest) in [
        (&spec.etc_hosts, "hosts", "/etc/hosts"),
        (&spec.etc_resolv_conf, "resolv.conf", "/etc/resolv.conf"),
        (&spec.etc_hostname, "hostname", "/etc/hostname"),
    ] {
        if let Some(c) = content {
            let p = exec_dir.join(name);
            fs::write(&p, c)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644))?;
            // dockerd's way: the remapped root owns them, so it may rewrite them.
            if let Some(ns) = &spec.userns {
                let (uid, gid) = ns.root();
                std::os::unix::fs::chown(&p, Some(uid), Some(gid))?;
            }
            out.push((p, dest));
        }
    }
    Ok(out)
}

/// Sets up everything and pivots into the new root. Called in the init child after
/// `unshare(CLONE_NEWNS)`.
pub fn setup(
    spec: &ContainerSpec,
    exec_dir: &Path,
    etc_files: &[(PathBuf, &'static str)],
    donor_shm: Option<std::os::fd::OwnedFd>,
    cgroup: &crate::cgroups::Cgroup,
    userns: Option<&Userns>,
) -> io::Result<()> {
    let privileged = spec.security.privileged;
    // rprivate cuts every tie to the host's mounts. A bind asking for slave or shared
    // propagation needs the namespace's copies to stay receivers of the host's events, so
    // then everything becomes a slave instead (never shared: the container's own mounts
    // must not reach the host), and each bind gets its own mode below.
    let receives = spec
        .mounts
        .iter()
        .any(|m| propagation_flags(&m.propagation).is_ok_and(|f| !f.contains(MsFlags::MS_PRIVATE)));
    let root_mode = if receives {
        MsFlags::MS_SLAVE
    } else {
        MsFlags::MS_PRIVATE
    };
    do_mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | root_mode,
        None,
    )?;
    let root = rootfs_mountpoint(exec_dir);
    fs::create_dir_all(&root)?;
    match &spec.rootfs {
        Rootfs::Overlay { lower, upper, work } => {
            if lower.is_empty() {
                return Err(io::Error::other(
                    "overlay rootfs needs at least one lower dir",
                ));
            }
            let lower = match userns {
                Some(ns) => idmapped_lowers(lower, upper, exec_dir, ns)?,
                None => lower.clone(),
            };
            let opts = overlay_options(&lower, upper, work, exec_dir)?;
            do_mount(
                Some("overlay"),
                &root,
                Some("overlay"),
                MsFlags::empty(),
                Some(&opts),
            )?;
        }
        Rootfs::Dir { .. } if userns.is_some() => {
            return Err(io::Error::other(
                "a user namespace needs an overlay rootfs (storage driver overlay)",
            ));
        }
        Rootfs::Dir { path } => {
            do_mount(
                Some(&path.display().to_string()),
                &root,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
        }
        Rootfs::Block {
            device,
            fstype,
            options,
        } => {
            let data = (!options.is_empty()).then_some(options.as_str());
            do_mount(
                Some(&device.display().to_string()),
                &root,
                Some(fstype),
                MsFlags::empty(),
                data,
            )?;
        }
    }
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let dir = |p: &str| -> io::Result<PathBuf> {
        let d = secure_join(&root, p)?;
        fs::create_dir_all(&d)?;
        Ok(d)
    };
    do_mount(Some("proc"), &dir("/proc")?, Some("proc"), nodev, None)?;
    let sys_flags = if privileged {
        nodev
    } else {
        nodev | MsFlags::MS_RDONLY
    };
    let sys = dir("/sys")?;
    if mount(Some("sysfs"), &sys, Some("sysfs"), sys_flags, None::<&str>).is_err() {
        // sysfs cannot be mounted when the netns is not ours (e.g. joined); bind the agent's.
        do_mount(
            Some("/sys"),
            &sys,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        if !privileged {
            do_mount(
                None,
                &sys,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nodev,
                None,
            )?;
        }
    }
    crate::cgroups::mount_in_container(
        cgroup,
        &secure_join(&root, "/sys/fs/cgroup")?,
        !privileged,
    )?;
    // In a user namespace the container's root owns its tmpfs mounts and the `tty`
    // group of devpts is the container's, as if they were mounted inside it.
    let owned = |opts: &str| match userns {
        Some(ns) => ns.tmpfs_owner(opts),
        None => opts.to_string(),
    };
    let dev = dir("/dev")?;
    do_mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some(&owned("mode=755,size=65536k")),
    )?;
    setup_dev(&dev)?;
    add_devices(&root, &spec.devices)?;
    do_mount(
        Some("devpts"),
        &dir("/dev/pts")?,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(&format!(
            "newinstance,ptmxmode=0666,mode=0620,gid={}",
            userns.map_or(5, |ns| ns.host_gid(5))
        )),
    )?;
    let shm = match spec.shm_size.filter(|&n| n > 0) {
        Some(bytes) => format!("mode=1777,size={bytes}"),
        None => "mode=1777,size=65536k".to_string(),
    };
    match donor_shm {
        // `--ipc container:<id>`: the donor's own /dev/shm.
        Some(tree) => crate::namespaces::attach_tree(&tree, &dir("/dev/shm")?)?,
        None => do_mount(
            Some("shm"),
            &dir("/dev/shm")?,
            Some("tmpfs"),
            nodev,
            Some(&owned(&shm)),
        )?,
    }
    do_mount(
        Some("mqueue"),
        &dir("/dev/mqueue")?,
        Some("mqueue"),
        nodev,
        None,
    )?;

    for (src, dest) in etc_files {
        let target = secure_join(&root, dest)?;
        ensure_file(&target)?;
        do_mount(
            Some(&src.display().to_string()),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    for m in &spec.mounts {
        let target = secure_join(&root, &m.destination)?;
        match &m.kind {
            MountKind::Bind { source } => {
                let meta = fs::metadata(source).map_err(|e| {
                    io::Error::new(e.kind(), format!("bind source {}: {e}", source.display()))
                })?;
                if let (true, Some(ns)) = (m.volume, userns) {
                    own_volume_dir(source, &meta, ns)?;
                }
                if meta.is_dir() {
                    fs::create_dir_all(&target)?;
                } else {
                    ensure_file(&target)?;
                }
                let src = source.display().to_string();
                do_mount(
                    Some(&src),
                    &target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )?;
                if m.readonly {
                    do_mount(
                        None,
                        &target,
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                        None,
                    )?;
                }
                do_mount(
                    None,
                    &target,
                    None,
                    propagation_flags(&m.propagation)?,
                    None,
                )?;
            }
            MountKind::Tmpfs { options } => {
                fs::create_dir_all(&target)?;
                let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
                if m.readonly {
                    flags |= MsFlags::MS_RDONLY;
                }
                let options = owned(options);
                let data = (!options.is_empty()).then_some(options.as_str());
                do_mount(Some("tmpfs"), &target, Some("tmpfs"), flags, data)?;
            }
        }
    }
    // Sysctls go in while /proc/sys is still writable.
    crate::limits::apply_sysctls(&root.join("proc"), &spec.sysctls)?;
    if !privileged {
        for p in MASKED {
            let target = root.join(p.trim_start_matches('/'));
            match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => do_mount(
                    Some("tmpfs"),
                    &target,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None,
                )?,
                Ok(_) => do_mount(
                    Some(&dev.join("null").display().to_string()),
                    &target,
                    None,
                    MsFlags::MS_BIND,
                    None,
                )?,
                Err(_) => {}
            }
        }
        for p in READONLY {
            let target = root.join(p.trim_start_matches('/'));
            if target.exists() {
                let s = target.display().to_string();
                do_mount(
                    Some(&s),
                    &target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )?;
                do_mount(
                    None,
                    &target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nodev,
                    None,
                )?;
            }
        }
    }
    enter_root(&root)?;
    if spec.readonly_rootfs {
        do_mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

/// A named volume still owned by 0:0 (as its driver, or mkfs in a microVM, made it) is
/// given to the container's root, as dockerd makes volumes under `--userns-remap`.
fn own_volume_dir(dir: &Path, meta: &fs::Metadata, ns: &Userns) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if meta.is_dir() && meta.uid() == 0 && meta.gid() == 0 {
        std::os::unix::fs::chown(dir, Some(ns.root.0), Some(ns.root.1))?;
    }
    Ok(())
}

/// The image's layers seen through the container's id mapping (`<exec_dir>/idmap/<n>`,
/// in the container's private mount namespace), and the upper dir owned by its root so
/// the root dir of the overlay is the container's. The shared layer dirs stay untouched.
fn idmapped_lowers(
    lower: &[PathBuf],
    upper: &Path,
    exec_dir: &Path,
    ns: &Userns,
) -> io::Result<Vec<PathBuf>> {
    std::os::unix::fs::chown(upper, Some(ns.root.0), Some(ns.root.1))?;
    let base = exec_dir.join("idmap");
    let mut out = Vec::with_capacity(lower.len());
    for (i, l) in lower.iter().enumerate() {
        let target = base.join(format!("{i:x}"));
        fs::create_dir_all(&target)?;
        crate::userns::idmapped_bind(l, &target, ns)?;
        out.push(target);
    }
    Ok(out)
}

/// Mount data is limited to one page. Like Docker's overlay2, fall back to short symlinks to the
/// layers (`<exec_dir>/l/<n>`) and chdir there: overlayfs resolves relative paths against the cwd.
fn overlay_options(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    exec_dir: &Path,
) -> io::Result<String> {
    // overlayfs lists lowerdir top-first; the spec is bottom-to-top.
    let build = |lowers: Vec<String>, upper: String, work: String| {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            upper,
            work
        )
    };
    let abs = build(
        lower
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect(),
        upper.display().to_string(),
        work.display().to_string(),
    );
    if abs.len() < 4000 {
        return Ok(abs);
    }
    let links = exec_dir.join("l");
    let _ = fs::remove_dir_all(&links);
    fs::create_dir_all(&links)?;
    for (i, p) in lower.iter().enumerate() {
        symlink(p, links.join(format!("{i:x}")))?;
    }
    symlink(upper, links.join("u"))?;
    symlink(work, links.join("w"))?;
    ctx(chdir(&links), || format!("chdir {}", links.display()))?;
    let rel = build(
        (0..lower.len()).rev().map(|i| format!("{i:x}")).collect(),
        "u".into(),
        "w".into(),
    );
    if rel.len() >= 4000 {
        return Err(io::Error::other(format!(
            "too many image layers for one overlay mount ({})",
            lower.len()
        )));
    }
    Ok(rel)
}

fn ensure_file(target: &Path) -> io::Result<()> {
    if !target.exists() {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(target, b"")?;
    }
    Ok(())
}

/// Minimal device set (Docker's), created with mknod (we are real root in process mode and in
/// the guest).
fn setup_dev(dev: &Path) -> io::Result<()> {
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        ctx(
            mknod(
                &p,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(major, minor),
            ),
            || format!("mknod {}", p.display()),
        )?;
        // mknod honours the umask; make the mode exact.
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        symlink(target, dev.join(link))?;
    }
    Ok(())
}

/// `--device`: the host's node (type, major:minor) recreated at its container path; the
/// device cgroup allows it (see cgroups). The host path is read before pivot_root, while
/// it is still reachable.
fn add_devices(root: &Path, devices: &[berth_agent_protocol::DeviceSpec]) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for d in devices {
        let meta = fs::metadata(&d.path_on_host).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "error gathering device information while adding custom device {:?}: {e}",
                    d.path_on_host
                ),
            )
        })?;
        let kind = if meta.file_type().is_char_device() {
            SFlag::S_IFCHR
        } else if meta.file_type().is_block_device() {
            SFlag::S_IFBLK
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{:?} is not a device node", d.path_on_host),
            ));
        };
        let target = secure_join(root, &d.path_in_container.display().to_string())?;
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        let _ = fs::remove_file(&target);
        let mode = meta.mode() & 0o7777;
        ctx(
            mknod(&target, kind, Mode::from_bits_truncate(mode), meta.rdev()),
            || format!("mknod {}", target.display()),
        )?;
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
        std::os::unix::fs::chown(&target, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

/// Docker's bind propagation names as mount(2) flags (empty = Docker's `rprivate`).
fn propagation_flags(mode: &str) -> io::Result<MsFlags> {
    Ok(match mode {
        "" | "rprivate" => MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        "private" => MsFlags::MS_PRIVATE,
        "rslave" => MsFlags::MS_REC | MsFlags::MS_SLAVE,
        "slave" => MsFlags::MS_SLAVE,
        "rshared" => MsFlags::MS_REC | MsFlags::MS_SHARED,
        "shared" => MsFlags::MS_SHARED,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown bind propagation {other:?}"),
            ))
        }
    })
}

/// pivot_root into `root` and detach the old root (runc's `pivot_root(".", ".")` trick: no
/// temporary directory needed inside the image).
fn enter_root(root: &Path) -> io::Result<()> {
    ctx(chdir(root), || format!("chdir {}", root.display()))?;
    ctx(pivot_root(".", "."), || "pivot_root".into())?;
    ctx(umount2(".", MntFlags::MNT_DETACH), || {
        "detach old root".into()
    })?;
    ctx(chdir("/"), || "chdir /".into())?;
    Ok(())
}
