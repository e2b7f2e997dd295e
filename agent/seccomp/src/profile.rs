//! A Docker seccomp profile (as the host decoded it) compiled to classic BPF.
//!
//! Semantics follow runc + libseccomp where they are observable: rules whose `includes` /
//! `excludes` do not fit the process's capabilities or the running kernel are dropped; a
//! rule whose action equals the default action changes nothing and is dropped; names this
//! table does not know are skipped; argument comparisons are on the full 64-bit value and
//! all of a rule's comparisons must hold. Where rules for one syscall overlap, the first
//! matching rule in profile order decides. Only the native x86_64 ABI is filtered by the
//! profile: i386 and x32 calls are refused with EPERM, as in the default filter.
use berth_agent_protocol::{SeccompAction, SeccompArg, SeccompOp, SeccompProfile, SeccompRule};

use super::{
    jump, prologue, stmt, syscalls, HasCap, BPF_JEQ_K, BPF_JGE_K, BPF_JSET_K, BPF_LD_W_ABS,
    BPF_RET_K,
};

const BPF_JGT_K: u16 = 0x25;
const BPF_ALU_AND_K: u16 = 0x54;
/// The kernel's BPF_MAXINSNS.
const MAX_INSNS: usize = 4096;

/// The `SECCOMP_RET_*` value of `action`.
fn ret(action: SeccompAction) -> u32 {
    match action {
        SeccompAction::Allow => 0x7fff_0000,
        SeccompAction::Errno(e) => 0x0005_0000 | u32::from(e),
        SeccompAction::KillThread => 0,
        SeccompAction::KillProcess => 0x8000_0000,
        SeccompAction::Trap => 0x0003_0000,
        SeccompAction::Trace(m) => 0x7ff0_0000 | u32::from(m),
        SeccompAction::Log => 0x7ffc_0000,
    }
}

/// Whether `rule` applies to a process with the capabilities `has` on kernel `kernel`.
fn applies(rule: &SeccompRule, has: HasCap, kernel: (u32, u32)) -> bool {
    rule.include_caps.iter().all(|c| has(c))
        && !rule.exclude_caps.iter().any(|c| has(c))
        && rule.include_min_kernel.is_none_or(|v| kernel >= v)
        && rule.exclude_min_kernel.is_none_or(|v| kernel < v)
}

/// A jump target: the next instruction or a label bound later.
#[derive(Clone, Copy)]
enum To {
    Next,
    L(usize),
}

/// Classic BPF with forward labels, resolved in [`Asm::finish`].
struct Asm {
    /// Instructions; those with targets get their offsets in `finish`, the others keep
    /// theirs (the shared prologue's are already encoded).
    code: Vec<(libc::sock_filter, Option<(To, To)>)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.code.len());
    }
    fn op(&mut self, f: libc::sock_filter) {
        self.code.push((f, None));
    }
    fn jmp(&mut self, code: u16, k: u32, jt: To, jf: To) {
        self.code.push((jump(code, k, 0, 0), Some((jt, jf))));
    }
    fn finish(self) -> Result<Vec<libc::sock_filter>, String> {
        if self.code.len() > MAX_INSNS {
            return Err(format!(
                "the seccomp profile needs {} BPF instructions, the kernel allows {MAX_INSNS}",
                self.code.len()
            ));
        }
        let mut out = Vec::with_capacity(self.code.len());
        for (i, (mut f, targets)) in self.code.into_iter().enumerate() {
            let Some((jt, jf)) = targets else {
                out.push(f);
                continue;
            };
            let off = |to: To| -> Result<u8, String> {
                let target = match to {
                    To::Next => return Ok(0),
                    To::L(l) => self.labels[l].expect("every label is bound"),
                };
                u8::try_from(target - (i + 1))
                    .map_err(|_| "a seccomp rule is too large to compile".to_string())
            };
            f.jt = off(jt)?;
            f.jf = off(jf)?;
            out.push(f);
        }
        Ok(out)
    }
}

/// Emits a test of `arg` that falls through when it holds and jumps to `fail` otherwise.
fn condition(a: &mut Asm, arg: &SeccompArg, fail: usize) {
    let lo_off = 16 + 8 * u32::from(arg.index);
    let hi_off = lo_off + 4;
    let (vhi, vlo) = ((arg.value >> 32) as u32, arg.value as u32);
    let fail = To::L(fail);
    let ok = a.label();
    let ok_to = To::L(ok);
    match arg.op {
        SeccompOp::Eq => {
            a.op(stmt(BPF_LD_W_ABS, hi_off));
            a.jmp(BPF_JEQ_K, vhi, To::Next, fail);
            a.op(stmt(BPF_LD_W_ABS, lo_off));
            a.jmp(BPF_JEQ_K, vlo, To::Next, fail);
        }
        SeccompOp::Ne => {
            a.op(stmt(BPF_LD_W_ABS, hi_off));
            a.jmp(BPF_JEQ_K, vhi, To::Next, ok_to);
            a.op(stmt(BPF_LD_W_ABS, lo_off));
            a.jmp(BPF_JEQ_K, vlo, fail, To::Next);
        }
        SeccompOp::MaskedEq => {
            let (whi, wlo) = ((arg.value_two >> 32) as u32, arg.value_two as u32);
            a.op(stmt(BPF_LD_W_ABS, hi_off));
            a.op(stmt(BPF_ALU_AND_K, vhi));
            a.jmp(BPF_JEQ_K, whi, To::Next, fail);
            a.op(stmt(BPF_LD_W_ABS, lo_off));
            a.op(stmt(BPF_ALU_AND_K, vlo));
            a.jmp(BPF_JEQ_K, wlo, To::Next, fail);
        }
        // Ordered: the high words decide unless they are equal, then the low words do.
        // Lower is "not greater (or equal)": the same tests with the outcomes swapped.
        SeccompOp::Gt | SeccompOp::Ge | SeccompOp::Le | SeccompOp::Lt => {
            let low = if matches!(arg.op, SeccompOp::Gt | SeccompOp::Le) {
                BPF_JGT_K
            } else {
                BPF_JGE_K
            };
            // Where each outcome goes: high word greater, high word lower, low test true,
            // low test false (falling through means the condition holds).
            let (greater, lower, low_true, low_false) =
                if matches!(arg.op, SeccompOp::Gt | SeccompOp::Ge) {
                    (ok_to, fail, To::Next, fail)
                } else {
                    (fail, ok_to, fail, To::Next)
                };
            a.op(stmt(BPF_LD_W_ABS, hi_off));
            a.jmp(BPF_JGT_K, vhi, greater, To::Next);
            a.jmp(BPF_JEQ_K, vhi, To::Next, lower);
            a.op(stmt(BPF_LD_W_ABS, lo_off));
            a.jmp(low, vlo, low_true, low_false);
        }
    }
    a.bind(ok);
}

/// The running kernel's `(major, minor)`.
pub fn kernel_version() -> (u32, u32) {
    // SAFETY: uname(2) fills the zeroed struct; its fields are NUL-terminated.
    let release = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) == 0 {
            std::ffi::CStr::from_ptr(u.release.as_ptr())
                .to_string_lossy()
                .into_owned()
        } else {
            String::new()
        }
    };
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Compiles `profile` for a process with the capabilities `has` on kernel `kernel`.
pub fn build(
    profile: &SeccompProfile,
    has: HasCap,
    kernel: (u32, u32),
) -> Result<Vec<libc::sock_filter>, String> {
    let mut a = Asm {
        code: Vec::new(),
        labels: Vec::new(),
    };
    for f in prologue() {
        a.op(f);
    }
    // The accumulator holds the syscall number between rules.
    for rule in &profile.rules {
        if rule.action == profile.default_action || !applies(rule, has, kernel) {
            continue;
        }
        let mut seen = Vec::new();
        for nr in rule.names.iter().filter_map(|n| syscalls::number(n)) {
            if seen.contains(&nr) {
                continue;
            }
            seen.push(nr);
            let next = a.label();
            a.jmp(BPF_JEQ_K, nr, To::Next, To::L(next));
            if rule.args.is_empty() {
                a.op(stmt(BPF_RET_K, ret(rule.action)));
            } else {
                let fail = a.label();
                for arg in &rule.args {
                    condition(&mut a, arg, fail);
                }
                a.op(stmt(BPF_RET_K, ret(rule.action)));
                a.bind(fail);
                a.op(stmt(BPF_LD_W_ABS, 0)); // seccomp_data.nr again
            }
            a.bind(next);
        }
    }
    a.op(stmt(BPF_RET_K, ret(profile.default_action)));
    a.finish()
}

/// What the kernel's classic-BPF checker (`bpf_check_classic`, for the opcodes these
/// filters use) and seccomp's own checks would refuse: a program that is empty or longer
/// than [`MAX_INSNS`], a jump past the end, a load outside `seccomp_data` or unaligned, an
/// opcode not emitted here, or a last instruction that is not a return.
pub fn check_program(p: &[libc::sock_filter]) -> Result<(), String> {
    if p.is_empty() || p.len() > MAX_INSNS {
        return Err(format!("{} instructions", p.len()));
    }
    for (i, f) in p.iter().enumerate() {
        let after = i + 1;
        match f.code {
            BPF_LD_W_ABS if f.k % 4 != 0 || f.k >= 64 => {
                return Err(format!("instruction {i}: load at offset {}", f.k))
            }
            BPF_LD_W_ABS | BPF_ALU_AND_K | BPF_RET_K => {}
            BPF_JEQ_K | BPF_JGE_K | BPF_JGT_K | BPF_JSET_K => {
                let far = after + usize::from(f.jt.max(f.jf));
                if far >= p.len() {
                    return Err(format!("instruction {i}: a jump past the end"));
                }
            }
            other => return Err(format!("instruction {i}: opcode {other:#x}")),
        }
    }
    match p.last() {
        Some(f) if f.code == BPF_RET_K => Ok(()),
        _ => Err("the last instruction is not a return".into()),
    }
}

#[cfg(test)]
mod tests;
