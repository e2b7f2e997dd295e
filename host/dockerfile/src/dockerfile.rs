//! The Dockerfile parser of the classic builder: parser directives, comments, line
//! continuations and per-instruction argument forms, with moby's rules.
//!
//! Why not a parser crate: the maintained one (`parse-dockerfile`) keeps shell-form
//! commands raw (continuations included), splits sources without the quoting rules
//! the builder then applies, and parses BuildKit-only syntax (heredocs, `--chmod`)
//! that the classic builder must refuse with dockerd's own messages. The line-level
//! rules below are small and are what decide compatibility.

use crate::{Error, Result};

/// An instruction's command in shell form (run through `SHELL`) or exec form (JSON).
#[derive(Debug, Clone, PartialEq)]
pub enum CommandForm {
    Shell(String),
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    From {
        image: String,
        name: Option<String>,
        platform: Option<String>,
    },
    Run(CommandForm),
    Cmd(CommandForm),
    Entrypoint(CommandForm),
    /// `key=value` pairs (quotes kept for expansion) or the legacy `ENV key value`.
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    /// `name` or `name=default`.
    Arg(Vec<(String, Option<String>)>),
    Copy(CopySpec),
    Add(CopySpec),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    Shell(Vec<String>),
    Stopsignal(String),
    Healthcheck {
        flags: Vec<(String, String)>,
        /// `None` for `HEALTHCHECK NONE`.
        cmd: Option<CommandForm>,
    },
    /// The trigger as written after `ONBUILD` (stored in the image, run by children).
    Onbuild(String),
    Maintainer(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CopySpec {
    pub from: Option<String>,
    pub chown: Option<String>,
    pub srcs: Vec<String>,
    pub dest: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    /// The instruction as shown in `Step N/M : …` (continuations joined).
    pub original: String,
    pub line: usize,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub struct Dockerfile {
    /// `ARG`s before the first `FROM`: usable in `FROM` lines.
    pub meta_args: Vec<Instruction>,
    pub stages: Vec<Stage>,
    pub escape: char,
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub from: Instruction,
    pub name: Option<String>,
    pub instructions: Vec<Instruction>,
}

impl Dockerfile {
    /// Every instruction, in order (for `Step N/M` numbering).
    pub fn step_count(&self) -> usize {
        self.meta_args.len()
            + self
                .stages
                .iter()
                .map(|s| 1 + s.instructions.len())
                .sum::<usize>()
    }
}

fn parse_error(line: usize, msg: impl std::fmt::Display) -> Error {
    Error::invalid(format!("dockerfile parse error line {line}: {msg}"))
}

/// A logical line: continuations joined, comments and blank lines dropped.
struct Logical {
    line: usize,
    text: String,
}

fn is_comment(s: &str) -> bool {
    s.trim_start().starts_with('#')
}

/// Strips a trailing escape char (and whitespace after it): `(text, ends_here)`.
fn trim_continuation(s: &str, escape: char) -> (String, bool) {
    let t = s.trim_end_matches([' ', '\t']);
    match t.strip_suffix(escape) {
        Some(rest) => (rest.to_string(), false),
        None => (s.to_string(), true),
    }
}

/// Parser directives (`# escape=`, `# syntax=`) at the very top, then logical lines.
fn logical_lines(text: &str) -> Result<(char, Vec<Logical>)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split('\n').map(|l| l.trim_end_matches('\r')).collect();
    let mut escape = '\\';
    let mut i = 0;
    // Directives: `# key=value` lines before anything else; the first other line
    // (comment, blank or instruction) ends them.
    let mut seen = std::collections::HashSet::new();
    while i < lines.len() {
        let l = lines[i].trim();
        let Some(body) = l.strip_prefix('#') else {
            break;
        };
        let Some((k, v)) = body.split_once('=') else {
            break;
        };
        let key = k.trim().to_ascii_lowercase();
        if key.is_empty() || key.contains(char::is_whitespace) {
            break;
        }
        if !seen.insert(key.clone()) {
            return Err(parse_error(
                i + 1,
                format!("only one {key} parser directive can be used"),
            ));
        }
        if key == "escape" {
            escape = match v.trim() {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(parse_error(
                        i + 1,
                        format!("invalid escape token '{other}' does not match ` or \\"),
                    ))
                }
            };
        }
        i += 1;
    }
    let mut out = Vec::new();
    while i < lines.len() {
        let first = lines[i].trim_start();
        i += 1;
        if first.is_empty() || is_comment(first) {
            continue;
        }
        let start = i;
        let (mut text, mut done) = trim_continuation(first, escape);
        while !done && i < lines.len() {
            let next = lines[i];
            i += 1;
            if is_comment(next) || next.trim().is_empty() {
                continue;
            }
            let (more, end) = trim_continuation(next, escape);
            text.push_str(&more);
            done = end;
        }
        if text.trim().is_empty() {
            continue;
        }
        out.push(Logical { line: start, text });
    }
    Ok((escape, out))
}

/// `--name=value` flags at the start of the arguments.
fn split_flags(mut rest: &str) -> (Vec<(String, Option<String>)>, &str) {
    let mut flags = Vec::new();
    loop {
        let r = rest.trim_start();
        if !r.starts_with("--") {
            return (flags, r);
        }
        let end = r.find(char::is_whitespace).unwrap_or(r.len());
        let word = &r[2..end];
        match word.split_once('=') {
            Some((k, v)) => flags.push((k.to_string(), Some(v.to_string()))),
            None => flags.push((word.to_string(), None)),
        }
        rest = &r[end..];
    }
}

/// A JSON string array, if the arguments are one.
fn json_array(rest: &str) -> Option<Vec<String>> {
    let t = rest.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(t).ok()
}

fn command_form(rest: &str) -> CommandForm {
    match json_array(rest) {
        Some(v) => CommandForm::Exec(v),
        None => CommandForm::Shell(rest.trim().to_string()),
    }
}

fn fields(rest: &str) -> Vec<String> {
    rest.split_whitespace().map(str::to_string).collect()
}

/// Words as moby's `parseWords` splits them: whitespace outside quotes separates;
/// quotes and escapes are kept for the later expansion step.
fn words_keeping_quotes(s: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == escape {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
            continue;
        }
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                cur.push(c);
            }
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `ENV`/`LABEL` arguments: `k=v k2="v 2"`, or the legacy single `k v…` form.
fn name_values(
    rest: &str,
    instr: &str,
    line: usize,
    escape: char,
) -> Result<Vec<(String, String)>> {
    let words = words_keeping_quotes(rest, escape);
    let Some(first) = words.first() else {
        return Err(parse_error(
            line,
            format!("{instr} requires at least one argument"),
        ));
    };
    if !first.contains('=') {
        // Legacy `ENV key value with spaces`.
        let t = rest.trim_start();
        let (k, v) = t
            .split_once(char::is_whitespace)
            .ok_or_else(|| parse_error(line, format!("{instr} must have two arguments")))?;
        return Ok(vec![(k.to_string(), v.trim_start().to_string())]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(parse_error(
                line,
                format!("Syntax error - can't find = in \"{w}\". Must be of the form: name=value"),
            )),
        })
        .collect()
}

fn no_flags(flags: &[(String, Option<String>)], line: usize) -> Result<()> {
    match flags.first() {
        Some((k, _)) => Err(parse_error(line, format!("Unknown flag: {k}"))),
        None => Ok(()),
    }
}

fn copy_spec(
    instr: &str,
    flags: Vec<(String, Option<String>)>,
    rest: &str,
    line: usize,
) -> Result<CopySpec> {
    let mut spec = CopySpec {
        from: None,
        chown: None,
        srcs: Vec::new(),
        dest: String::new(),
    };
    for (k, v) in flags {
        match (k.as_str(), instr) {
            ("from", "COPY") => spec.from = v,
            ("chown", _) => spec.chown = v,
            ("chmod", _) | ("link", _) | ("parents", _) | ("exclude", _) | ("checksum", _)
            | ("keep-git-dir", _) => {
                return Err(parse_error(
                    line,
                    format!("the --{k} option requires BuildKit. Refer to https://docs.docker.com/go/buildkit/ to learn how to build images with BuildKit enabled"),
                ))
            }
            _ => return Err(parse_error(line, format!("Unknown flag: {k}"))),
        }
    }
    if rest.trim_start().starts_with("<<") {
        return Err(parse_error(
            line,
            "here-documents require BuildKit. Refer to https://docs.docker.com/go/buildkit/ to learn how to build images with BuildKit enabled",
        ));
    }
    let mut args = json_array(rest).unwrap_or_else(|| fields(rest));
    if args.len() < 2 {
        return Err(parse_error(
            line,
            format!("{instr} requires at least two arguments, but only one was provided. Destination could not be determined."),
        ));
    }
    spec.dest = args.pop().unwrap_or_default();
    spec.srcs = args;
    Ok(spec)
}

fn parse_instruction(cmd: &str, rest: &str, line: usize, escape: char) -> Result<Kind> {
    let need_args = |what: &str| -> Result<()> {
        if rest.trim().is_empty() {
            Err(parse_error(
                line,
                format!("{what} requires at least one argument"),
            ))
        } else {
            Ok(())
        }
    };
    let (flags, rest) = split_flags(rest);
    Ok(match cmd {
        "FROM" => {
            let mut platform = None;
            for (k, v) in flags {
                match k.as_str() {
                    "platform" => platform = v,
                    _ => return Err(parse_error(line, format!("Unknown flag: {k}"))),
                }
            }
            let f = fields(rest);
            let (image, name) = match f.as_slice() {
                [img] => (img.clone(), None),
                [img, as_, name] if as_.eq_ignore_ascii_case("as") => {
                    (img.clone(), Some(name.to_ascii_lowercase()))
                }
                [] => {
                    return Err(parse_error(
                        line,
                        "FROM requires either one or three arguments",
                    ))
                }
                _ => {
                    return Err(parse_error(
                        line,
                        "FROM requires either one or three arguments",
                    ))
                }
            };
            Kind::From {
                image,
                name,
                platform,
            }
        }
        "RUN" => {
            if let Some((k, _)) = flags.first() {
                return Err(parse_error(
                    line,
                    format!("the --{k} option requires BuildKit. Refer to https://docs.docker.com/go/buildkit/ to learn how to build images with BuildKit enabled"),
                ));
            }
            need_args("RUN")?;
            if rest.trim_start().starts_with("<<") {
                return Err(parse_error(
                    line,
                    "here-documents require BuildKit. Refer to https://docs.docker.com/go/buildkit/ to learn how to build images with BuildKit enabled",
                ));
            }
            Kind::Run(command_form(rest))
        }
        "CMD" => {
            no_flags(&flags, line)?;
            Kind::Cmd(command_form(rest))
        }
        "ENTRYPOINT" => {
            no_flags(&flags, line)?;
            Kind::Entrypoint(command_form(rest))
        }
        "ENV" => {
            no_flags(&flags, line)?;
            Kind::Env(name_values(rest, "ENV", line, escape)?)
        }
        "LABEL" => {
            no_flags(&flags, line)?;
            Kind::Label(name_values(rest, "LABEL", line, escape)?)
        }
        "ARG" => {
            no_flags(&flags, line)?;
            need_args("ARG")?;
            let words = words_keeping_quotes(rest, escape);
            Kind::Arg(
                words
                    .into_iter()
                    .map(|w| match w.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (w, None),
                    })
                    .collect(),
            )
        }
        "COPY" => Kind::Copy(copy_spec("COPY", flags, rest, line)?),
        "ADD" => Kind::Add(copy_spec("ADD", flags, rest, line)?),
        "WORKDIR" => {
            no_flags(&flags, line)?;
            need_args("WORKDIR")?;
            Kind::Workdir(rest.trim().to_string())
        }
        "USER" => {
            no_flags(&flags, line)?;
            need_args("USER")?;
            Kind::User(rest.trim().to_string())
        }
        "EXPOSE" => {
            no_flags(&flags, line)?;
            need_args("EXPOSE")?;
            Kind::Expose(fields(rest))
        }
        "VOLUME" => {
            no_flags(&flags, line)?;
            need_args("VOLUME")?;
            Kind::Volume(json_array(rest).unwrap_or_else(|| fields(rest)))
        }
        "SHELL" => {
            no_flags(&flags, line)?;
            match json_array(rest) {
                Some(v) if !v.is_empty() => Kind::Shell(v),
                _ => {
                    return Err(parse_error(
                        line,
                        "SHELL requires the arguments to be in JSON form",
                    ))
                }
            }
        }
        "STOPSIGNAL" => {
            no_flags(&flags, line)?;
            need_args("STOPSIGNAL")?;
            Kind::Stopsignal(rest.trim().to_string())
        }
        "MAINTAINER" => {
            no_flags(&flags, line)?;
            need_args("MAINTAINER")?;
            Kind::Maintainer(rest.trim().to_string())
        }
        "HEALTHCHECK" => {
            let mut hc_flags = Vec::new();
            for (k, v) in flags {
                match k.as_str() {
                    "interval" | "timeout" | "start-period" | "start-interval" | "retries" => {
                        hc_flags.push((k, v.unwrap_or_default()))
                    }
                    _ => return Err(parse_error(line, format!("Unknown flag: {k}"))),
                }
            }
            let t = rest.trim_start();
            let (word, tail) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
            match word.to_ascii_uppercase().as_str() {
                "NONE" if tail.trim().is_empty() => Kind::Healthcheck {
                    flags: hc_flags,
                    cmd: None,
                },
                "NONE" => return Err(parse_error(line, "HEALTHCHECK NONE takes no arguments")),
                "CMD" if !tail.trim().is_empty() => Kind::Healthcheck {
                    flags: hc_flags,
                    cmd: Some(command_form(tail)),
                },
                _ => {
                    return Err(parse_error(
                        line,
                        "Unknown type for HEALTHCHECK: expected CMD or NONE",
                    ))
                }
            }
        }
        "ONBUILD" => {
            no_flags(&flags, line)?;
            let t = rest.trim();
            let inner = t
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            match inner.as_str() {
                "" => return Err(parse_error(line, "ONBUILD requires at least one argument")),
                "ONBUILD" => {
                    return Err(parse_error(
                        line,
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                    ))
                }
                "FROM" | "MAINTAINER" => {
                    return Err(parse_error(
                        line,
                        format!("{inner} isn't allowed as an ONBUILD trigger"),
                    ))
                }
                _ => {}
            }
            // Validate the trigger now, as dockerd does.
            let (icmd, irest) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
            parse_instruction(&icmd.to_ascii_uppercase(), irest, line, escape)?;
            Kind::Onbuild(
                format!("{} {}", icmd.to_ascii_uppercase(), irest.trim_start())
                    .trim()
                    .to_string(),
            )
        }
        other => return Err(parse_error(line, format!("unknown instruction: {}", other))),
    })
}

pub fn parse(text: &str) -> Result<Dockerfile> {
    let (escape, lines) = logical_lines(text)?;
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for l in lines {
        let t = l.text.trim_start();
        let (cmd, rest) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
        let cmd = cmd.to_ascii_uppercase();
        let kind = parse_instruction(&cmd, rest, l.line, escape)?;
        let original = format!("{cmd} {}", rest.trim()).trim_end().to_string();
        let instr = Instruction {
            original,
            line: l.line,
            kind,
        };
        match &instr.kind {
            Kind::From { name, .. } => stages.push(Stage {
                name: name.clone(),
                from: instr,
                instructions: Vec::new(),
            }),
            Kind::Arg(_) if stages.is_empty() => meta_args.push(instr),
            _ => match stages.last_mut() {
                Some(s) => s.instructions.push(instr),
                None => {
                    return Err(Error::invalid(format!(
                        "failed to parse Dockerfile: no build stage in current context (line {}: {cmd} before the first FROM)",
                        l.line
                    )))
                }
            },
        }
    }
    if stages.is_empty() {
        return Err(Error::invalid(
            "the Dockerfile (Dockerfile) cannot be empty",
        ));
    }
    Ok(Dockerfile {
        meta_args,
        stages,
        escape,
    })
}

#[cfg(test)]
#[path = "dockerfile_tests.rs"]
mod tests;
