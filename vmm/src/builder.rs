//! Turns a [`VmConfig`] into a ready-to-start [`MicroVm`].

use std::fs::OpenOptions;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use crate::config::{SerialConfig, VmConfig};
use crate::devices::legacy::SerialSink;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::net::{parse_mac, Net, Tap, NET_HDR_LEN};
use crate::devices::virtio::vsock::Vsock;
use crate::error::{Error, Result};
use crate::memory::MemoryBacking;
use crate::vmm::MicroVm;

fn serial_sink(cfg: &SerialConfig) -> Result<SerialSink> {
    Ok(match cfg {
        SerialConfig::None => Box::new(std::io::sink()),
        SerialConfig::Stdout => Box::new(std::io::stdout()),
        SerialConfig::File(p) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(Error::io(format!("serial output {}", p.display())))?,
        ),
    })
}

/// Opens every host resource, loads the guest, then enters the jail (if
/// configured). The result only needs `start()`.
pub fn build(config: &VmConfig, start: Instant) -> Result<MicroVm> {
    config.validate()?;
    // vhost-user backends map guest RAM themselves: it must be a shared
    // memfd then. Otherwise anonymous memory keeps transparent huge pages
    // (shmem THP is usually off on hosts; see memory.rs).
    let backing = if config.fs.is_empty() {
        MemoryBacking::Anonymous
    } else {
        MemoryBacking::SharedMemfd
    };
    let mut vm = MicroVm::with_memory(
        config.vcpus,
        config.mem_mib,
        backing,
        serial_sink(&config.serial)?,
        start,
    )?;
    for (i, d) in config.drives.iter().enumerate() {
        let blk = Block::new(&d.path, d.read_only, &format!("berth-disk{i}"))?;
        vm.add_virtio_device(Box::new(blk))?;
    }
    for n in &config.net {
        let mac = n.mac.as_deref().map(parse_mac).transpose()?;
        let tap = Tap::open(&n.tap, NET_HDR_LEN as i32)?;
        vm.add_virtio_device(Box::new(Net::new(tap, mac)))?;
    }
    if let Some(v) = &config.vsock {
        let mut dev = Vsock::new(v.guest_cid, &v.uds_path)?;
        if let Some(root) = config.jail.as_ref().and_then(|j| j.chroot.as_ref()) {
            // Inside the chroot the same socket directory has a shorter path.
            let inner = v
                .uds_path
                .strip_prefix(root)
                .map_err(|_| Error::Config("vsock.uds_path must be inside the chroot".into()))?;
            dev.muxer()
                .set_connect_base(std::path::Path::new("/").join(inner));
        }
        vm.add_virtio_device(Box::new(dev))?;
    }
    // Connected now, before the jail: the socket need not be reachable
    // (or even exist) once the VMM is chrooted.
    for f in &config.fs {
        vm.add_virtio_device(Box::new(Fs::new(&f.tag, &f.socket)?))?;
    }
    if let Some(p) = &config.control_socket {
        let _ = std::fs::remove_file(p);
        let l =
            UnixListener::bind(p).map_err(Error::io(format!("control socket {}", p.display())))?;
        vm.set_control_socket(l);
    }
    if let Some(raw) = &config.raw_image {
        let code = std::fs::read(&raw.path).map_err(|e| Error::Kernel {
            path: raw.path.display().to_string(),
            reason: e.to_string(),
        })?;
        vm.load_raw(&code, raw.load_addr, raw.mode.into())?;
    } else if let Some(k) = &config.kernel {
        vm.load_linux(k, config.initrd.as_deref(), &config.cmdline)?;
    }
    vm.set_seccomp(config.seccomp);
    vm.set_graceful_timeout(Duration::from_millis(config.graceful_shutdown_ms));
    vm.set_cpu_features(config.cpu_features);
    if let Some(j) = &config.jail {
        crate::jail::enter(j)?;
    }
    Ok(vm)
}
