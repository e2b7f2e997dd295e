//! Docker's seccomp profile format (`--security-opt seccomp=<profile.json>`, which the CLI
//! sends as the file's JSON text), decoded and checked here so a bad profile is refused at
//! `create` with 400, and resolved as far as the host can: rules for other architectures are
//! dropped (moby's `includes`/`excludes.arches`, against the native arch in Go's naming) and
//! `name`/`names` merged. Capabilities and kernel versions are left to the agent, which knows
//! the process's capabilities and the kernel it runs on (a microVM's is not the host's).
use berth_agent_protocol::{
    SeccompAction, SeccompArg, SeccompMode, SeccompOp, SeccompProfile, SeccompRule,
};
use serde::{Deserialize, Deserializer};

use crate::{Error, Result};

/// Go's `encoding/json` takes `null` for a slice or struct: so do we.
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> std::result::Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    #[serde(default)]
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    architectures: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    arch_map: Vec<ArchMap>,
    #[serde(default, deserialize_with = "nullable")]
    syscalls: Vec<Syscall>,
    #[serde(default, deserialize_with = "nullable")]
    flags: Vec<String>,
    #[serde(default)]
    listener_path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default, deserialize_with = "nullable")]
    sub_architectures: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Syscall {
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    args: Vec<Arg>,
    #[serde(default, deserialize_with = "nullable")]
    includes: Filter,
    #[serde(default, deserialize_with = "nullable")]
    excludes: Filter,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default, deserialize_with = "nullable")]
    caps: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

/// libseccomp's architecture names.
const ARCHES: &[&str] = &[
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K",
    "SCMP_ARCH_SH",
    "SCMP_ARCH_SHEB",
];

/// The native architecture as profiles name it in `includes`/`excludes` (Go's GOARCH,
/// through moby's table: `amd64`, `arm64`, `x86`, ...).
fn native_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "x86",
        other => other,
    }
}

fn fail(msg: impl std::fmt::Display) -> Error {
    Error::invalid(format!("Decoding seccomp profile failed: {msg}"))
}

/// Linux's EPERM, the errno of an action that names none (as libseccomp's default).
const EPERM: u32 = 1;

fn action(name: &str, errno_ret: Option<u32>) -> Result<SeccompAction> {
    let ret = |what: &str| -> Result<u16> {
        let v = errno_ret.unwrap_or(EPERM);
        u16::try_from(v).map_err(|_| fail(format!("{what} value {v} is out of range")))
    };
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(ret("errnoRet")?),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_TRACE" => SeccompAction::Trace(ret("errnoRet")?),
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_NOTIFY" => {
            return Err(fail(
                "SCMP_ACT_NOTIFY is not supported (no seccomp notification listener)",
            ))
        }
        "" => return Err(fail("missing action")),
        other => return Err(fail(format!("unknown action {other:?}"))),
    })
}

fn op(name: &str) -> Result<SeccompOp> {
    Ok(match name {
        "SCMP_CMP_NE" => SeccompOp::Ne,
        "SCMP_CMP_LT" => SeccompOp::Lt,
        "SCMP_CMP_LE" => SeccompOp::Le,
        "SCMP_CMP_EQ" => SeccompOp::Eq,
        "SCMP_CMP_GE" => SeccompOp::Ge,
        "SCMP_CMP_GT" => SeccompOp::Gt,
        "SCMP_CMP_MASKED_EQ" => SeccompOp::MaskedEq,
        other => return Err(fail(format!("unknown argument operator {other:?}"))),
    })
}

/// `"4.8"` → `(4, 8)`, as moby's `KernelVersion` reads it.
fn kernel(v: &Option<String>) -> Result<Option<(u32, u32)>> {
    let Some(v) = v.as_deref() else {
        return Ok(None);
    };
    let parsed = v
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    parsed.map(Some).ok_or_else(|| {
        fail(format!(
            "invalid kernel version: {v}, expected \"<kernel>.<major>\""
        ))
    })
}

/// Decodes a profile's JSON text. A profile with neither a default action nor rules
/// disables seccomp, as in moby.
pub fn parse(text: &str) -> Result<SeccompMode> {
    let p: Profile = serde_json::from_str(text).map_err(fail)?;
    if p.default_action.is_empty() && p.syscalls.is_empty() {
        return Ok(SeccompMode::Unconfined);
    }
    if !p.architectures.is_empty() && !p.arch_map.is_empty() {
        return Err(fail("'architectures' and 'archMap' were specified in the seccomp profile, use either 'architectures' or 'archMap'"));
    }
    let arches = p.architectures.iter().chain(
        p.arch_map
            .iter()
            .flat_map(|m| std::iter::once(&m.architecture).chain(&m.sub_architectures)),
    );
    for a in arches {
        if !ARCHES.contains(&a.as_str()) {
            return Err(fail(format!("unknown architecture {a:?}")));
        }
    }
    if !p.listener_path.is_empty() {
        return Err(fail(
            "listenerPath is not supported (no seccomp notification listener)",
        ));
    }
    if let Some(f) = p.flags.first() {
        return Err(fail(format!(
            "seccomp filter flags are not supported: {f:?}"
        )));
    }
    let default_action = action(&p.default_action, p.default_errno_ret)?;
    let native = native_arch();
    let mut rules = Vec::new();
    for (i, call) in p.syscalls.into_iter().enumerate() {
        if !call.name.is_empty() && !call.names.is_empty() {
            return Err(fail("'name' and 'names' were specified in the seccomp profile, use either 'name' or 'names'"));
        }
        let names = if call.name.is_empty() {
            call.names
        } else {
            vec![call.name]
        };
        if names.iter().any(|n| n.is_empty()) {
            return Err(fail(format!("syscalls[{i}]: empty syscall name")));
        }
        let action = action(&call.action, call.errno_ret)?;
        if call.args.len() > 6 {
            return Err(fail(format!(
                "syscalls[{i}]: at most 6 argument conditions, got {}",
                call.args.len()
            )));
        }
        let mut args = Vec::new();
        for a in &call.args {
            let index = u8::try_from(a.index)
                .ok()
                .filter(|i| *i < 6)
                .ok_or_else(|| {
                    fail(format!(
                        "syscalls[{i}]: argument index {} is not in 0..5",
                        a.index
                    ))
                })?;
            args.push(SeccompArg {
                index,
                value: a.value,
                value_two: a.value_two,
                op: op(&a.op)?,
            });
        }
        let (include_min_kernel, exclude_min_kernel) = (
            kernel(&call.includes.min_kernel)?,
            kernel(&call.excludes.min_kernel)?,
        );
        // Checked for every rule, so the profile is refused whatever the architecture.
        if call.excludes.arches.iter().any(|a| a == native)
            || (!call.includes.arches.is_empty()
                && !call.includes.arches.iter().any(|a| a == native))
        {
            continue;
        }
        rules.push(SeccompRule {
            names,
            action,
            args,
            include_caps: call.includes.caps,
            exclude_caps: call.excludes.caps,
            include_min_kernel,
            exclude_min_kernel,
        });
    }
    Ok(SeccompMode::Profile(SeccompProfile {
        default_action,
        rules,
    }))
}

#[cfg(test)]
mod tests;
