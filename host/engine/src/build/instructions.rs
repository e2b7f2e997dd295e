//! The instructions that only change the image config (ENV, LABEL, ARG, CMD, USER,
//! EXPOSE, …): each one still makes an image, as dockerd's classic builder does, so
//! the next step has a parent to be cached against.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::dockerfile::{CommandForm, Instruction, Kind};
use super::shell_lex::Lexer;
use super::stage::{BuildRun, State};
use crate::{Error, Result};

fn as_json_array(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl BuildRun<'_> {
    pub(super) async fn dispatch(&mut self, st: &mut State, instr: &Instruction) -> Result<()> {
        let escape = self.df.escape;
        let env = st.expansion_env();
        let lex = Lexer { escape, env: &env };
        match &instr.kind {
            Kind::From { .. } => Err(Error::internal("FROM inside a stage")),
            Kind::Run(cmd) => self.run(st, cmd).await,
            Kind::Copy(spec) => self.copy(st, spec, false).await,
            Kind::Add(spec) => self.copy(st, spec, true).await,
            Kind::Cmd(cmd) | Kind::Entrypoint(cmd) => {
                let argv = match cmd {
                    CommandForm::Exec(v) => v.clone(),
                    CommandForm::Shell(s) => {
                        let mut v = st.shell();
                        v.push(s.clone());
                        v
                    }
                };
                let (key, word) = match instr.kind {
                    Kind::Cmd(_) => ("Cmd", "CMD"),
                    _ => ("Entrypoint", "ENTRYPOINT"),
                };
                st.run_config().insert(key.into(), json!(argv));
                if key == "Entrypoint" && !st.config["config"]["Cmd"].is_null() {
                    // A new ENTRYPOINT drops a CMD inherited from the base image.
                    st.run_config().insert("Cmd".into(), Value::Null);
                }
                self.meta(st, format!("{word} {}", as_json_array(&argv)))
                    .await
            }
            Kind::Env(pairs) => {
                let mut shown = Vec::new();
                let mut envs = st.env();
                for (k, v) in pairs {
                    let k = lex.word(k)?;
                    let v = lex.word(v)?;
                    shown.push(format!("{k}={v}"));
                    let entry = format!("{k}={v}");
                    match envs
                        .iter_mut()
                        .find(|e| e.split('=').next() == Some(k.as_str()))
                    {
                        Some(slot) => *slot = entry,
                        None => envs.push(entry),
                    }
                }
                st.run_config().insert("Env".into(), json!(envs));
                self.meta(st, format!("ENV {}", shown.join(" "))).await
            }
            Kind::Label(pairs) => {
                let mut shown = Vec::new();
                let mut expanded = Vec::new();
                for (k, v) in pairs {
                    let (k, v) = (lex.word(k)?, lex.word(v)?);
                    shown.push(format!("{k}={v}"));
                    expanded.push((k, v));
                }
                let labels = st.run_config().entry("Labels").or_insert_with(|| json!({}));
                if !labels.is_object() {
                    *labels = json!({});
                }
                for (k, v) in expanded {
                    labels[k] = json!(v);
                }
                self.meta(st, format!("LABEL {}", shown.join(" "))).await
            }
            Kind::Arg(list) => {
                let mut shown = Vec::new();
                for (name, default) in list {
                    let mut value = self.arg_value(name, default.as_deref(), &env, escape)?;
                    if value.is_none() && default.is_none() {
                        // `ARG X` in a stage takes the value of a global `ARG X`.
                        value = self
                            .meta_args
                            .iter()
                            .find(|(k, _)| k == name)
                            .and_then(|(_, v)| v.clone());
                    }
                    shown.push(match &value {
                        Some(v) if default.is_some() => format!("{name}={v}"),
                        _ => name.clone(),
                    });
                    st.args.retain(|(k, _)| k != name);
                    st.args.push((name.clone(), value));
                }
                self.meta(st, format!("ARG {}", shown.join(" "))).await
            }
            Kind::Workdir(dir) => {
                let dir = lex.word(dir)?;
                let current = st.config["config"]["WorkingDir"]
                    .as_str()
                    .unwrap_or("/")
                    .to_string();
                let abs = if dir.starts_with('/') {
                    PathBuf::from(&dir)
                } else {
                    PathBuf::from(if current.is_empty() { "/" } else { &current }).join(&dir)
                };
                let abs = abs.to_string_lossy().to_string();
                st.run_config().insert("WorkingDir".into(), json!(abs));
                self.workdir(st, &abs).await
            }
            Kind::User(u) => {
                let u = lex.word(u)?;
                st.run_config().insert("User".into(), json!(u));
                self.meta(st, format!("USER {u}")).await
            }
            Kind::Expose(ports) => {
                let mut shown = Vec::new();
                for p in ports {
                    for w in lex.words(p)? {
                        let p = if w.contains('/') {
                            w.to_ascii_lowercase()
                        } else {
                            format!("{w}/tcp")
                        };
                        let (num, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                        let valid = num.split('-').all(|n| n.parse::<u16>().is_ok())
                            && matches!(proto, "tcp" | "udp" | "sctp");
                        if !valid {
                            return Err(Error::invalid(format!("Invalid containerPort: {w}")));
                        }
                        shown.push(p);
                    }
                }
                let ports = st
                    .run_config()
                    .entry("ExposedPorts")
                    .or_insert_with(|| json!({}));
                if !ports.is_object() {
                    *ports = json!({});
                }
                for p in &shown {
                    ports[p] = json!({});
                }
                self.meta(st, format!("EXPOSE {}", shown.join(" "))).await
            }
            Kind::Volume(vols) => {
                let mut shown = Vec::new();
                for v in vols {
                    let v = lex.word(v)?;
                    if v.trim().is_empty() {
                        return Err(Error::invalid(
                            "VOLUME specified can not be an empty string",
                        ));
                    }
                    shown.push(v);
                }
                let m = st
                    .run_config()
                    .entry("Volumes")
                    .or_insert_with(|| json!({}));
                if !m.is_object() {
                    *m = json!({});
                }
                for v in &shown {
                    m[v] = json!({});
                }
                self.meta(st, format!("VOLUME {}", as_json_array(&shown)))
                    .await
            }
            Kind::Shell(sh) => {
                st.run_config().insert("Shell".into(), json!(sh));
                self.meta(st, format!("SHELL {}", as_json_array(sh))).await
            }
            Kind::Stopsignal(sig) => {
                let sig = lex.word(sig)?;
                crate::containers::signal_number(&sig)?;
                st.run_config().insert("StopSignal".into(), json!(sig));
                self.meta(st, format!("STOPSIGNAL {sig}")).await
            }
            Kind::Healthcheck { flags, cmd } => {
                let test = match cmd {
                    None => vec!["NONE".to_string()],
                    Some(CommandForm::Exec(v)) => std::iter::once("CMD".to_string())
                        .chain(v.iter().cloned())
                        .collect(),
                    Some(CommandForm::Shell(s)) => vec!["CMD-SHELL".to_string(), s.clone()],
                };
                let mut hc = json!({ "Test": test });
                for (k, v) in flags {
                    let field = match k.as_str() {
                        "interval" => "Interval",
                        "timeout" => "Timeout",
                        "start-period" => "StartPeriod",
                        "start-interval" => "StartInterval",
                        _ => {
                            let n: i64 = v
                                .parse()
                                .map_err(|_| Error::invalid(format!("invalid retries: {v}")))?;
                            hc["Retries"] = json!(n);
                            continue;
                        }
                    };
                    let ns = crate::fsutil::parse_go_duration(v)
                        .ok_or_else(|| Error::invalid(format!("time: invalid duration \"{v}\"")))?;
                    hc[field] = json!(ns);
                }
                st.run_config().insert("Healthcheck".into(), hc.clone());
                self.meta(st, format!("HEALTHCHECK {hc}")).await
            }
            Kind::Onbuild(trigger) => {
                let list = st
                    .run_config()
                    .entry("OnBuild")
                    .or_insert_with(|| json!([]));
                if !list.is_array() {
                    *list = json!([]);
                }
                list.as_array_mut().expect("set above").push(json!(trigger));
                self.meta(st, format!("ONBUILD {trigger}")).await
            }
            Kind::Maintainer(m) => {
                let m = lex.word(m)?;
                st.config["author"] = json!(m);
                self.meta(st, format!("MAINTAINER {m}")).await
            }
        }
    }
}
