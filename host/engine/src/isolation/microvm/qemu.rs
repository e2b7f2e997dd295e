//! The qemu backend: `qemu-system-x86_64 -M microvm` with virtio-mmio devices, KVM where it
//! is hardware virtualization and TCG (software) otherwise. vsock goes through qemu's
//! vhost-user-vsock device served by rust-vmm's `vhost-device-vsock`, which exposes the same
//! hybrid vsock (a unix socket, `CONNECT <port>`) as berth-vmm. Each VM gets its own
//! `vhost-device-vsock`, so every guest can use the same CID.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_trait::async_trait;

use super::hypervisor::{spawn_vmm, Device, Hypervisor, HypervisorCaps, VmConfig, VmState};
use super::probe::{find_tool, Kvm};
use super::procs::{self, spawn_detached};
use super::virtiofs;
use crate::{Error, Result};

pub struct Qemu {
    qemu: Option<PathBuf>,
    vhost_vsock: Option<PathBuf>,
    virtiofsd: Option<PathBuf>,
    kvm: Kvm,
}

impl Qemu {
    pub fn probe(kvm: Kvm) -> Qemu {
        Qemu {
            qemu: find_tool("BERTH_QEMU", "qemu-system-x86_64", &[]),
            vhost_vsock: find_tool(
                "BERTH_VHOST_VSOCK",
                "vhost-device-vsock",
                &[PathBuf::from(
                    "/var/cache/berth/tools/bin/vhost-device-vsock",
                )],
            ),
            virtiofsd: virtiofs::probe(),
            kvm,
        }
    }

    fn accel_args(&self) -> [&'static str; 4] {
        if self.kvm.is_hardware() {
            ["-accel", "kvm", "-cpu", "host"]
        } else {
            ["-accel", "tcg", "-cpu", "max"]
        }
    }

    fn qemu_command(
        &self,
        cfg: &VmConfig,
        vhost_sock: &Path,
        fs_socks: &[PathBuf],
    ) -> Result<Command> {
        let mut fs_socks = fs_socks.iter();
        let qemu = self
            .qemu
            .as_ref()
            .ok_or_else(|| Error::internal("no qemu"))?;
        let mut cmd = Command::new(qemu);
        cmd.env_clear()
            .arg("-name")
            .arg(format!("berth-{}", cfg.name))
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            // seccomp: no obsolete syscalls, no set*id, no fork/exec, no scheduler/affinity.
            // set*id stays allowed only when qemu must still drop to `identity`: -runas runs
            // after the filter is installed, and once qemu is a plain uid, set*id cannot
            // give root back.
            .arg("-sandbox")
            .arg(if cfg.identity.is_some() {
                "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"
            } else {
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
            })
            // No ACPI in the guest kernel: qemu then lists every virtio-mmio device on the
            // kernel command line (virtio_mmio.device=...), in -device order.
            .arg("-M")
            .arg("microvm,x-option-roms=off,rtc=off,acpi=off,memory-backend=mem")
            .args(self.accel_args())
            .arg("-m")
            .arg(format!("{}M", cfg.mem_mib))
            .arg("-smp")
            .arg(cfg.vcpus.to_string())
            // vhost-user needs guest RAM in a shareable memfd.
            .arg("-object")
            .arg(format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                cfg.mem_mib
            ))
            .arg("-kernel")
            .arg(&cfg.kernel)
            .arg("-initrd")
            .arg(&cfg.initrd)
            .arg("-append")
            .arg(format!("{} {}", self.base_cmdline(), cfg.cmdline))
            .arg("-serial")
            .arg(format!("file:{}", cfg.serial_log.display()))
            .args(["-monitor", "none"]);
        for (i, dev) in cfg.devices.iter().enumerate() {
            match dev {
                Device::Block { path, read_only } => {
                    // werror/rerror=report: an ENOSPC or EIO on the host reaches the guest
                    // as an I/O error, as a full disk does under runc. qemu's default
                    // (`werror=enospc`) pauses the whole VM: the container would hang.
                    cmd.arg("-drive").arg(format!(
                        "id=d{i},file={},format=raw,if=none,readonly={},werror=report,rerror=report",
                        qemu_escape(path),
                        if *read_only { "on" } else { "off" }
                    ));
                    cmd.arg("-device")
                        .arg(format!("virtio-blk-device,drive=d{i}"));
                }
                Device::Vsock { .. } => {
                    cmd.arg("-chardev")
                        .arg(format!("socket,id=v{i},path={}", qemu_escape(vhost_sock)));
                    cmd.arg("-device")
                        .arg(format!("vhost-user-vsock-device,chardev=v{i}"));
                }
                Device::Fs { tag, .. } => {
                    let sock = fs_socks
                        .next()
                        .ok_or_else(|| Error::internal("no virtiofsd socket for a share"))?;
                    cmd.arg("-chardev")
                        .arg(format!("socket,id=f{i},path={}", qemu_escape(sock)));
                    cmd.arg("-device")
                        .arg(format!("vhost-user-fs-device,chardev=f{i},tag={tag}"));
                }
                Device::Net { tap, mac } => {
                    // qemu runs in the sandbox netns and opens the TAP by name (before
                    // -chroot/-runas); no scripts: berth has already configured it.
                    cmd.arg("-netdev").arg(format!(
                        "tap,id=n{i},ifname={},script=no,downscript=no",
                        tap.replace(',', ",,")
                    ));
                    cmd.arg("-device")
                        .arg(format!("virtio-net-device,netdev=n{i},mac={mac}"));
                }
            }
        }
        if let Some(id) = cfg.identity {
            // Once its files are open, qemu keeps only its VM's run dir as its root and
            // becomes the VM's own uid.
            cmd.arg("-chroot").arg(&cfg.run_dir);
            cmd.arg("-runas").arg(format!("{}:{}", id.uid, id.gid));
        }
        Ok(cmd)
    }
}

/// qemu's option syntax doubles commas inside values.
fn qemu_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

#[async_trait]
impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn unavailable_reason(&self) -> Option<String> {
        if self.qemu.is_none() {
            return Some("qemu-system-x86_64 not found (apt-get install qemu-system-x86)".into());
        }
        if self.vhost_vsock.is_none() {
            return Some(
                "vhost-device-vsock not found (guest-kernel/test-boot.sh --install-vhost-vsock, or $BERTH_VHOST_VSOCK)"
                    .into(),
            );
        }
        None
    }

    fn describe(&self) -> String {
        let accel = match &self.kvm {
            Kvm::Hardware => "KVM",
            Kvm::Pvm | Kvm::Unusable(_) => "TCG software emulation (no hardware KVM)",
        };
        format!(
            "qemu ({}) -M microvm, {accel}",
            self.qemu
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "not installed".into())
        )
    }

    fn capabilities(&self) -> HypervisorCaps {
        HypervisorCaps {
            hardware_accel: self.kvm.is_hardware(),
            // `-M microvm` without ACPI has no second IO-APIC, and so 8 virtio-mmio
            // transports (24 with one).
            max_devices: 8,
            shared_fs: match self.virtiofsd {
                Some(_) => Ok(()),
                None => Err(virtiofs::MISSING.into()),
            },
        }
    }

    fn base_cmdline(&self) -> &'static str {
        // reboot=t + -no-reboot: the agent's reboot(2) triple-faults and qemu exits.
        // no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can
        // miss its ticks and panic at boot ("IO-APIC + timer doesn't work"); the timer is
        // qemu's own and known good (Kata's guests skip the check too).
        "console=ttyS0 panic=-1 reboot=t quiet no_timer_check"
    }

    async fn prepare_vm(&self, cfg: &VmConfig) -> Result<()> {
        if let Some(why) = self.unavailable_reason() {
            return Err(Error::invalid(format!("qemu backend unavailable: {why}")));
        }
        let vsocks = cfg
            .devices
            .iter()
            .filter(|d| matches!(d, Device::Vsock { .. }))
            .count();
        if vsocks != 1 {
            return Err(Error::internal(
                "a qemu microVM needs exactly one vsock device",
            ));
        }
        if let Err(why) = self.capabilities().shared_fs {
            if cfg.devices.iter().any(|d| matches!(d, Device::Fs { .. })) {
                return Err(Error::invalid(why));
            }
        }
        Ok(())
    }

    async fn start_vm(&self, cfg: &VmConfig) -> Result<VmState> {
        self.prepare_vm(cfg).await?;
        let (guest_cid, uds_path) = cfg
            .devices
            .iter()
            .find_map(|d| match d {
                Device::Vsock {
                    guest_cid,
                    uds_path,
                } => Some((*guest_cid, uds_path.clone())),
                _ => None,
            })
            .expect("checked by prepare_vm");
        let vhost_sock = cfg.run_dir.join("vhost-user.sock");
        let _ = std::fs::remove_file(&vhost_sock);
        let _ = std::fs::remove_file(&uds_path);
        // The helper sees only its VM's run dir: it runs there as the VM's uid and names
        // its sockets relative to it.
        let uds_name = uds_path
            .strip_prefix(&cfg.run_dir)
            .map_err(|_| Error::internal("the vsock socket must be in the VM's run dir"))?;
        let mut vhost = Command::new(self.vhost_vsock.as_ref().expect("probed"));
        vhost
            .env_clear()
            .arg("--guest-cid")
            .arg(guest_cid.to_string())
            .arg("--socket")
            .arg("vhost-user.sock")
            .arg("--uds-path")
            .arg(uds_name);
        let helper = spawn_detached(
            "vhost-device-vsock",
            vhost,
            &cfg.run_dir.join("vhost-device-vsock.log"),
            &cfg.run_dir,
            cfg.identity,
            &cfg.cgroups,
        )?;
        // qemu connects to the vhost-user socket at start-up: wait for it to exist.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !vhost_sock.exists() {
            if !helper.alive() || tokio::time::Instant::now() > deadline {
                procs::kill_all(std::slice::from_ref(&helper)).await;
                let log = std::fs::read_to_string(cfg.run_dir.join("vhost-device-vsock.log"))
                    .unwrap_or_default();
                return Err(Error::internal(format!(
                    "vhost-device-vsock did not start: {}",
                    log.trim()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut helpers = vec![helper];
        let fs_socks =
            match virtiofs::start_virtiofsds(self.virtiofsd.as_deref(), cfg, &mut helpers).await {
                Ok(s) => s,
                Err(e) => {
                    procs::kill_all(&helpers).await;
                    return Err(e);
                }
            };
        let cmd = self.qemu_command(cfg, &vhost_sock, &fs_socks)?;
        // qemu drops to `identity` itself (-runas) after opening its files as root.
        spawn_vmm(self.name(), cmd, "qemu.log", cfg, helpers, uds_path).await
    }
}
