//! The berth-vmm backend: one `berth-vmm` process per VM (rust-vmm crates, `vmm/`), driven
//! by its JSON config. It needs hardware KVM: under PVM a Linux guest cannot finish booting.
//! The VMM opens every host resource, then enters its jail (chroot into the VM's run dir,
//! drop to the VM's uid/gid) and installs per-thread seccomp filters. Shared directories
//! are served by one sandboxed virtiofsd each ([`virtiofs`]); berth-vmm connects to their
//! sockets (in the run dir, so inside its chroot) before it enters the jail.

use std::path::PathBuf;
use std::process::Command;

use async_trait::async_trait;

use super::hypervisor::{spawn_vmm, Device, Hypervisor, HypervisorCaps, VmConfig, VmState};
use super::probe::{find_tool, Kvm};
use super::procs;
use super::virtiofs;
use crate::{Error, Result};

pub struct BerthVmm {
    bin: Option<PathBuf>,
    virtiofsd: Option<PathBuf>,
    kvm: Kvm,
    /// `--vmm-on-pvm`: run on PVM anyway (diagnostics; the guest stops in early boot).
    on_pvm: bool,
}

/// What the guest is told on PVM, with the CPUID features berth-vmm hides there; its
/// console is verbose (after `quiet`, so it wins): there it is run to see where it stops.
const PVM_CMDLINE: &str = "noxsave loglevel=7";

impl BerthVmm {
    pub fn probe(kvm: Kvm, on_pvm: bool) -> BerthVmm {
        BerthVmm {
            bin: find_tool("BERTH_VMM", "berth-vmm", &[]),
            virtiofsd: virtiofs::probe(),
            kvm,
            on_pvm,
        }
    }

    fn pvm(&self) -> bool {
        self.kvm == Kvm::Pvm
    }

    /// berth-vmm's `VmConfig` (vmm/src/config.rs) as JSON.
    fn config_json(&self, cfg: &VmConfig) -> serde_json::Value {
        let drives: Vec<serde_json::Value> = cfg
            .devices
            .iter()
            .filter_map(|d| match d {
                Device::Block { path, read_only } => {
                    Some(serde_json::json!({ "path": path, "read_only": read_only }))
                }
                _ => None,
            })
            .collect();
        let vsock = cfg.devices.iter().find_map(|d| match d {
            Device::Vsock {
                guest_cid,
                uds_path,
            } => Some(serde_json::json!({ "guest_cid": guest_cid, "uds_path": uds_path })),
            _ => None,
        });
        // The sockets are in the run dir, which is the jail's chroot: berth-vmm checks
        // they are inside it, as for vsock's uds_path.
        let fs: Vec<serde_json::Value> = cfg
            .devices
            .iter()
            .filter_map(|d| match d {
                Device::Fs { tag, .. } => Some(serde_json::json!({
                    "tag": tag,
                    "socket": virtiofs::socket_path(&cfg.run_dir, tag),
                })),
                _ => None,
            })
            .collect();
        // berth-vmm runs in the sandbox netns and opens each TAP by name before its jail.
        let net: Vec<serde_json::Value> = cfg
            .devices
            .iter()
            .filter_map(|d| match d {
                Device::Net { tap, mac } => Some(serde_json::json!({ "tap": tap, "mac": mac })),
                _ => None,
            })
            .collect();
        let jail = cfg
            .identity
            .map(|id| serde_json::json!({ "chroot": cfg.run_dir, "uid": id.uid, "gid": id.gid }));
        serde_json::json!({
            "kernel": cfg.kernel,
            "initrd": cfg.initrd,
            "cmdline": match self.pvm() {
                true => format!("{} {PVM_CMDLINE} {}", self.base_cmdline(), cfg.cmdline),
                false => format!("{} {}", self.base_cmdline(), cfg.cmdline),
            },
            "cpu_features": if self.pvm() { "pvm-emulator" } else { "host" },
            "vcpus": cfg.vcpus,
            "mem_mib": cfg.mem_mib,
            "drives": drives,
            "vsock": vsock,
            "fs": fs,
            "net": net,
            "serial": { "file": cfg.serial_log },
            "control_socket": cfg.run_dir.join("control.sock"),
            "jail": jail,
            "seccomp": true,
        })
    }
}

#[async_trait]
impl Hypervisor for BerthVmm {
    fn name(&self) -> &'static str {
        "berth"
    }

    fn unavailable_reason(&self) -> Option<String> {
        match self.kvm.unusable_reason() {
            Some(_) if self.pvm() && self.on_pvm => {}
            Some(why) => return Some(why),
            None => {}
        }
        if self.bin.is_none() {
            return Some(
                "berth-vmm binary not found (cargo build -p berth-vmm, or $BERTH_VMM)".into(),
            );
        }
        None
    }

    fn describe(&self) -> String {
        format!(
            "berth-vmm ({}), KVM{}",
            self.bin
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "not built".into()),
            match self.pvm() {
                true => " (PVM, --vmm-on-pvm: guests stop in early boot)",
                false => "",
            }
        )
    }

    fn capabilities(&self) -> HypervisorCaps {
        HypervisorCaps {
            hardware_accel: true,
            // One IO-APIC pin each, GSI 5..=23 (vmm/src/arch/layout.rs).
            max_devices: 19,
            shared_fs: match self.virtiofsd {
                Some(_) => Ok(()),
                None => Err(virtiofs::MISSING.into()),
            },
        }
    }

    fn base_cmdline(&self) -> &'static str {
        // berth-vmm's defaults: reset through the i8042 (reboot=k) ends the VMM with status 0.
        "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet"
    }

    fn exit_detail(&self, run_dir: &std::path::Path) -> Option<String> {
        exit_detail_from_log(&std::fs::read_to_string(run_dir.join("vmm.log")).ok()?)
    }

    async fn prepare_vm(&self, cfg: &VmConfig) -> Result<()> {
        if let Some(why) = self.unavailable_reason() {
            return Err(Error::invalid(format!(
                "berth-vmm backend unavailable: {why}"
            )));
        }
        if let Err(why) = self.capabilities().shared_fs {
            if cfg.devices.iter().any(|d| matches!(d, Device::Fs { .. })) {
                return Err(Error::invalid(why));
            }
        }
        let cfg_path = cfg.run_dir.join("vm.json");
        let bytes = serde_json::to_vec_pretty(&self.config_json(cfg)).map_err(Error::internal)?;
        crate::fsutil::write_atomic(&cfg_path, &bytes)?;
        Ok(())
    }

    async fn start_vm(&self, cfg: &VmConfig) -> Result<VmState> {
        self.prepare_vm(cfg).await?;
        let uds_path = cfg
            .devices
            .iter()
            .find_map(|d| match d {
                Device::Vsock { uds_path, .. } => Some(uds_path.clone()),
                _ => None,
            })
            .ok_or_else(|| Error::internal("a microVM needs a vsock device"))?;
        let _ = std::fs::remove_file(&uds_path);
        // The virtiofsds must listen before berth-vmm starts: it connects while it sets up
        // its devices.
        let mut helpers = Vec::new();
        if let Err(e) =
            virtiofs::start_virtiofsds(self.virtiofsd.as_deref(), cfg, &mut helpers).await
        {
            procs::kill_all(&helpers).await;
            return Err(e);
        }
        let mut cmd = Command::new(self.bin.as_ref().expect("probed"));
        cmd.env_clear()
            .env("BERTH_VMM_LOG", "info")
            .arg("--config")
            .arg(cfg.run_dir.join("vm.json"));
        // berth-vmm drops privileges itself (jail) once its resources are open.
        spawn_vmm(self.name(), cmd, "vmm.log", cfg, helpers, uds_path).await
    }
}

/// berth-vmm ends its log with `{"event":"exit","status":{..,"exit_reason":{"detail":..}}}`.
fn exit_detail_from_log(log: &str) -> Option<String> {
    log.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l.trim()).ok()?;
        (v["event"] == "exit").then_some(())?;
        let reason = &v["status"]["exit_reason"];
        let detail = reason["detail"].as_str().or(reason["kind"].as_str())?;
        Some(detail.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolation::microvm::procs::VmIdentity;

    #[test]
    fn config_json_is_a_valid_berth_vmm_config_with_fs_and_net_devices() {
        let run_dir = PathBuf::from("/run/berth/vm/abc");
        let cfg = VmConfig {
            name: "abc".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "berth.port=1024".into(),
            vcpus: 1,
            mem_mib: 256,
            devices: vec![
                Device::Block {
                    path: "/img".into(),
                    read_only: true,
                },
                Device::Vsock {
                    guest_cid: 3,
                    uds_path: run_dir.join("vsock.sock"),
                },
                Device::Fs {
                    tag: "m0".into(),
                    shared_dir: "/srv/data".into(),
                    read_only: true,
                },
                Device::Net {
                    tap: "tap0".into(),
                    mac: "02:42:0a:e9:00:02".into(),
                },
            ],
            run_dir: run_dir.clone(),
            serial_log: "/var/lib/berth/c/vm/console.log".into(),
            identity: Some(VmIdentity {
                uid: 1000,
                gid: 1000,
            }),
            cgroups: Vec::new(),
            netns: None,
        };
        let b = BerthVmm {
            bin: None,
            virtiofsd: Some("/bin/true".into()),
            kvm: Kvm::Hardware,
            on_pvm: false,
        };
        assert_eq!(b.capabilities().shared_fs, Ok(()));
        let json = serde_json::to_string(&b.config_json(&cfg)).unwrap();
        // berth-vmm's own parser and validation (sockets inside the chroot jail).
        let parsed = berth_vmm::VmConfig::from_json(&json).unwrap();
        assert_eq!(parsed.fs.len(), 1);
        assert_eq!(parsed.fs[0].tag, "m0");
        assert_eq!(parsed.fs[0].socket, run_dir.join("m0.sock"));
        assert_eq!(parsed.jail.unwrap().chroot, Some(run_dir));
        assert_eq!(parsed.net.len(), 1);
        assert_eq!(parsed.net[0].tap, "tap0");
        let without = BerthVmm {
            virtiofsd: None,
            ..b
        };
        assert!(without.capabilities().shared_fs.is_err());
        assert_eq!(parsed.cpu_features, berth_vmm::CpuFeatures::Host);
        // On PVM (only with --vmm-on-pvm) the guest is offered what the emulator runs.
        let pvm = BerthVmm {
            kvm: Kvm::Pvm,
            ..without
        };
        assert!(pvm.unavailable_reason().is_some());
        let pvm = BerthVmm {
            on_pvm: true,
            ..pvm
        };
        let json = serde_json::to_string(&pvm.config_json(&cfg)).unwrap();
        let parsed = berth_vmm::VmConfig::from_json(&json).unwrap();
        assert_eq!(parsed.cpu_features, berth_vmm::CpuFeatures::PvmEmulator);
        assert!(parsed.cmdline.contains(" noxsave "), "{}", parsed.cmdline);
    }

    #[test]
    fn exit_detail_is_read_from_the_vmm_log() {
        let log = "INFO booting\n{\"event\":\"exit\",\"status\":{\"exit_reason\":{\"detail\":\"KVM internal error on vcpu 0\",\"kind\":\"vcpu_error\"}}}\nINFO VM exited\n";
        assert_eq!(
            exit_detail_from_log(log).as_deref(),
            Some("KVM internal error on vcpu 0")
        );
        assert_eq!(exit_detail_from_log("no json"), None);
    }
}
