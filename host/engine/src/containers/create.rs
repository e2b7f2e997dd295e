//! `POST /containers/create`: merge the image's defaults into the request, validate,
//! prepare the rootfs storage and persist the record.

use std::collections::HashMap;
use std::sync::Arc;

use bollard_stubs::models::{
    ContainerConfig, ContainerCreateBody, HostConfig, HostConfigCgroupnsModeEnum, MountType,
};

use super::record::{ContainerRecord, MountRecord, State};
use super::validate::{validate_host_config, validate_name, validate_run_options};
use super::{new_id, Container, Containers};
use crate::{Error, Result};

pub struct CreateRequest {
    pub name: Option<String>,
    pub body: ContainerCreateBody,
    /// `HostConfig.Isolation` as sent (taken out before model parsing, since the
    /// model's enum only knows Windows values).
    pub isolation: String,
}

/// Docker's env merge: image env first, request entries override by key.
fn merge_env(image: &[String], user: &[String]) -> Vec<String> {
    let key = |e: &str| e.split('=').next().unwrap_or("").to_string();
    let mut out: Vec<String> = image.to_vec();
    for e in user {
        let k = key(e);
        if let Some(slot) = out.iter_mut().find(|x| key(x) == k) {
            *slot = e.clone();
        } else {
            out.push(e.clone());
        }
    }
    out
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.clone().filter(|s| !s.is_empty())
}

impl Containers {
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<(String, Vec<String>)> {
        let body = req.body;
        let image_ref =
            non_empty(&body.image).ok_or_else(|| Error::invalid("No image specified"))?;
        let image_id = self.images.resolve(&image_ref).map_err(|e| match e {
            Error::NotFound(_) => Error::not_found(format!(
                "No such image: {}",
                normalize_for_message(&image_ref)
            )),
            other => other,
        })?;
        let img = self.images.image_config(&image_id)?;
        let mut hc: HostConfig = body.host_config.clone().unwrap_or_default();
        validate_host_config(&hc)?;
        validate_run_options(&hc)?;
        if hc.shm_size.unwrap_or(0) == 0 {
            // dockerd's default, shown by inspect.
            hc.shm_size = Some(64 << 20);
        }
        // dockerd records a bare `--memory`'s memory+swap limit as twice the memory, so
        // inspect shows it and `docker update` checks new limits against it.
        if hc.memory.unwrap_or(0) > 0
            && hc.memory_swap.unwrap_or(0) == 0
            && super::update::swap_limit_supported()
        {
            hc.memory_swap = hc.memory.map(|m| m.saturating_mul(2));
        }
        // `--runtime microvm|process` (the runtimes `docker info` lists) is an alias for
        // `--isolation`; `berth` is the daemon's default runtime.
        let runtime = hc.runtime.clone().filter(|r| !r.is_empty() && r != "berth");
        let isolation = match (req.isolation.as_str(), runtime) {
            ("" | "default", Some(rt)) => self.isolation.parse(&rt)?,
            (iso, _) => self.isolation.parse(iso)?,
        };
        let backend = self.isolation.get(isolation).clone();
        self.validate_userns(&hc)?;
        // Refused here, with 400, rather than at start.
        super::spec::parse_security_opts(&hc.security_opt.clone().unwrap_or_default())?;
        // dockerd records its default, which inspect shows: private on cgroup v2, host on v1.
        if matches!(
            hc.cgroupns_mode,
            None | Some(HostConfigCgroupnsModeEnum::EMPTY)
        ) {
            hc.cgroupns_mode = Some(if backend.capabilities().cgroup_v2 {
                HostConfigCgroupnsModeEnum::PRIVATE
            } else {
                HostConfigCgroupnsModeEnum::HOST
            });
        }

        let explicit_name = match req.name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => Some(validate_name(n)?),
            None => None,
        };
        // A generated name is only a placeholder until it is reserved under the map lock.
        let mut name = explicit_name.clone().unwrap_or_default();
        let id = new_id();

        // Entrypoint/Cmd, moby's merge rule: a non-empty user entrypoint drops the
        // image's Cmd; `--entrypoint ""` (`[""]`) clears the image's entrypoint.
        let user_ep: Option<Vec<String>> = body.entrypoint.clone().map(|ep| {
            if ep.len() == 1 && ep[0].is_empty() {
                Vec::new()
            } else {
                ep
            }
        });
        let user_cmd = body.cmd.clone().filter(|c| !c.is_empty());
        let (entrypoint, cmd) = match user_ep {
            Some(ep) if !ep.is_empty() => (ep, user_cmd.unwrap_or_default()),
            Some(_) => (Vec::new(), user_cmd.or(img.cmd.clone()).unwrap_or_default()),
            None => (
                img.entrypoint.clone().unwrap_or_default(),
                user_cmd.or(img.cmd.clone()).unwrap_or_default(),
            ),
        };
        let argv: Vec<String> = entrypoint.iter().chain(cmd.iter()).cloned().collect();
        if argv.is_empty() {
            return Err(Error::invalid("No command specified"));
        }

        let mut labels = img.labels.clone();
        labels.extend(body.labels.clone().unwrap_or_default());
        let mut exposed: Vec<String> = img.exposed_ports.clone();
        for p in body.exposed_ports.clone().unwrap_or_default() {
            if !exposed.contains(&p) {
                exposed.push(p);
            }
        }
        let mut volumes: Vec<String> = img.volumes.clone();
        for v in body.volumes.clone().unwrap_or_default() {
            if !volumes.contains(&v) {
                volumes.push(v);
            }
        }
        let env = merge_env(&img.env, &body.env.clone().unwrap_or_default());
        let config = ContainerConfig {
            // Docker's default: the short id, or the host's name on the host's network.
            hostname: Some(non_empty(&body.hostname).unwrap_or_else(|| {
                match hc.network_mode.as_deref() {
                    Some("host") => nix::unistd::gethostname()
                        .ok()
                        .and_then(|h| h.into_string().ok())
                        .unwrap_or_else(|| id[..12].to_string()),
                    _ => id[..12].to_string(),
                }
            })),
            domainname: Some(body.domainname.clone().unwrap_or_default()),
            user: Some(non_empty(&body.user).unwrap_or(img.user.clone())),
            attach_stdin: Some(body.attach_stdin.unwrap_or(false)),
            attach_stdout: Some(body.attach_stdout.unwrap_or(false)),
            attach_stderr: Some(body.attach_stderr.unwrap_or(false)),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            tty: Some(body.tty.unwrap_or(false)),
            open_stdin: Some(body.open_stdin.unwrap_or(false)),
            stdin_once: Some(body.stdin_once.unwrap_or(false)),
            env: Some(env),
            cmd: Some(cmd),
            healthcheck: super::health::merge_image_healthcheck(
                body.healthcheck.clone(),
                img.healthcheck.as_ref(),
            ),
            args_escaped: body.args_escaped,
            image: Some(image_ref.clone()),
            volumes: (!volumes.is_empty()).then_some(volumes),
            working_dir: Some(non_empty(&body.working_dir).unwrap_or(img.working_dir.clone())),
            entrypoint: Some(entrypoint),
            network_disabled: body.network_disabled,
            on_build: None,
            labels: Some(labels),
            stop_signal: non_empty(&body.stop_signal).or(img.stop_signal.clone()),
            stop_timeout: body.stop_timeout,
            shell: body.shell.clone(),
        };

        // Log driver and options.
        let (log_driver, log_opts) = {
            let lc = hc.log_config.clone().unwrap_or_default();
            let driver = non_empty(&lc.typ)
                .unwrap_or_else(|| self.default_log_driver.read().unwrap().clone());
            let opts: HashMap<String, String> = lc.config.unwrap_or_default();
            let d = self.log_drivers.read().unwrap().get(&driver)?;
            d.validate_opts(&opts)?;
            (driver, opts)
        };
        hc.log_config = Some(bollard_stubs::models::HostConfigLogConfig {
            typ: Some(log_driver.clone()),
            config: Some(log_opts.clone()),
        });
        if hc.network_mode.as_deref().is_none_or(|m| m.is_empty()) {
            hc.network_mode = Some("default".into());
        }
        let links = self.check_links(&hc.links.clone().unwrap_or_default())?;
        if !links.is_empty() {
            match hc.network_mode.as_deref().unwrap_or_default() {
                "host" => return Err(Error::invalid("conflicting options: host type networking can't be used with links. This would result in undefined behavior")),
                m if m.starts_with("container:") => return Err(Error::invalid("conflicting options: container type network can't be used with links. This would result in undefined behavior")),
                _ => {}
            }
        }
        let networks = self.plan_networks(&hc, body.networking_config.as_ref())?;
        let mut mounts = self.plan_mounts(&hc)?;
        self.mounts_from(&hc.volumes_from.clone().unwrap_or_default(), &mut mounts)?;
        backend.check_config(&hc, &mounts)?;
        let image_volumes = config.volumes.clone().unwrap_or_default();
        self.prepare_volumes(
            &mut mounts,
            &image_volumes,
            backend.capabilities().block_volumes,
        )
        .await?;

        let dir = self.container_dir(&id);
        std::fs::create_dir_all(&dir)?;
        let storage = backend.storage_name().to_string();

        let mut rec = ContainerRecord {
            id: id.clone(),
            name: name.clone(),
            created: crate::fsutil::now_rfc3339(),
            image_ref,
            image_id,
            config,
            host_config: hc,
            isolation,
            state: State::new(),
            mounts,
            path: argv[0].clone(),
            args: argv[1..].to_vec(),
            log_driver,
            log_opts,
            log_path: String::new(),
            storage,
            generation: 0,
            networks,
        };
        {
            let d = self.log_drivers.read().unwrap().get(&rec.log_driver)?;
            rec.log_path = d.log_path(&self.log_info(&rec));
        }
        if let Err(e) = backend.prepare_storage(&rec).await {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        // Reserve the name atomically with insertion.
        {
            let mut map = self.map.write().unwrap();
            if explicit_name.is_none() {
                name = generate_name(|n| map.values().any(|o| o.name() == n));
                rec.name = name.clone();
            }
            if !links.is_empty() {
                rec.host_config.links = Some(
                    links
                        .iter()
                        .map(|l| format!("/{}:/{name}/{}", l.target, l.alias))
                        .collect(),
                );
            }
            let c = Container::new(rec);
            if let Some(other) = map.values().find(|o| o.name() == name) {
                let other_id = other.id.clone();
                drop(map);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(Error::conflict(format!(
                    "Conflict. The container name \"/{name}\" is already in use by container \"{other_id}\". You have to remove (or rename) that container to be able to reuse that name."
                )));
            }
            map.insert(id.clone(), c);
        }
        let c = self.get(&id)?;
        if let Err(e) = self.save(&c) {
            self.remove_from_map(&id);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        self.publish(&c.record(), "create", &[]);
        let mut warnings = Vec::new();
        if c.record()
            .host_config
            .memory_swappiness
            .is_some_and(|s| s >= 0)
        {
            warnings.push("Your kernel does not support memory swappiness capabilities or the cgroup is not mounted. Memory swappiness discarded.".to_string());
        }
        Ok((id, warnings))
    }

    /// Binds, `Mounts` and `Tmpfs` → mount records, validated.
    fn plan_mounts(&self, hc: &HostConfig) -> Result<Vec<MountRecord>> {
        let mut out: Vec<MountRecord> = Vec::new();
        for b in hc.binds.clone().unwrap_or_default() {
            let parts: Vec<&str> = b.split(':').collect();
            let (src, dst, opts) = match parts.as_slice() {
                [s, d] => (*s, *d, ""),
                [s, d, o] => (*s, *d, *o),
                _ => {
                    return Err(Error::invalid(format!(
                        "invalid volume specification: '{b}'"
                    )))
                }
            };
            if !dst.starts_with('/') {
                return Err(Error::invalid(format!(
                    "invalid volume specification: '{b}': invalid mount config for type \"bind\": invalid mount path: '{dst}' mount path must be absolute"
                )));
            }
            let rw = !opts.split(',').any(|o| o == "ro");
            if src.starts_with('/') {
                if !std::path::Path::new(src).exists() {
                    // dockerd creates missing bind sources for -v (not for --mount).
                    std::fs::create_dir_all(src)?;
                }
                out.push(MountRecord {
                    kind: "bind".into(),
                    name: String::new(),
                    source: src.into(),
                    destination: dst.into(),
                    driver: String::new(),
                    rw,
                    options: opts.into(),
                    anonymous: false,
                    block: false,
                    subpath: String::new(),
                    propagation: super::propagation::from_bind_options(opts)?,
                });
            } else {
                out.push(MountRecord {
                    kind: "volume".into(),
                    name: src.into(),
                    source: String::new(),
                    destination: dst.into(),
                    // Empty: an existing volume keeps its driver, a new one is
                    // `local` (see prepare_volumes), as in Docker.
                    driver: hc.volume_driver.clone().unwrap_or_default(),
                    rw,
                    options: opts.into(),
                    anonymous: false,
                    block: false,
                    subpath: String::new(),
                    propagation: String::new(),
                });
            }
        }
        for m in hc.mounts.clone().unwrap_or_default() {
            let target = m.target.clone().unwrap_or_default();
            if !target.starts_with('/') {
                return Err(Error::invalid(format!(
                    "invalid mount config: mount path must be absolute: '{target}'"
                )));
            }
            let ro = m.read_only.unwrap_or(false);
            match m.typ {
                Some(MountType::BIND) => {
                    let src = m.source.clone().unwrap_or_default();
                    if !std::path::Path::new(&src).exists() {
                        return Err(Error::invalid(format!(
                            "invalid mount config for type \"bind\": bind source path does not exist: {src}"
                        )));
                    }
                    out.push(MountRecord {
                        kind: "bind".into(),
                        name: String::new(),
                        source: src,
                        destination: target,
                        driver: String::new(),
                        rw: !ro,
                        options: String::new(),
                        anonymous: false,
                        block: false,
                        subpath: String::new(),
                        propagation: super::propagation::or_default(
                            m.bind_options
                                .as_ref()
                                .and_then(|o| o.propagation)
                                .map(|p| p.to_string()),
                        ),
                    });
                }
                Some(MountType::TMPFS) => {
                    let mut opts = Vec::new();
                    if let Some(t) = &m.tmpfs_options {
                        if let Some(s) = t.size_bytes {
                            opts.push(format!("size={s}"));
                        }
                        if let Some(mode) = t.mode {
                            opts.push(format!("mode={mode:o}"));
                        }
                    }
                    out.push(MountRecord {
                        kind: "tmpfs".into(),
                        name: String::new(),
                        source: String::new(),
                        destination: target,
                        driver: String::new(),
                        rw: !ro,
                        options: opts.join(","),
                        anonymous: false,
                        block: false,
                        subpath: String::new(),
                        propagation: String::new(),
                    });
                }
                Some(MountType::VOLUME) => {
                    let name = m.source.clone().unwrap_or_default();
                    let subpath = m
                        .volume_options
                        .as_ref()
                        .and_then(|o| o.subpath.clone())
                        .unwrap_or_default();
                    let escapes = subpath.starts_with('/')
                        || subpath.split('/').any(|c| c == ".." || c == ".");
                    if escapes {
                        return Err(Error::invalid(format!(
                            "invalid mount config for type \"volume\": subpath must be a relative path within the volume: {subpath:?}"
                        )));
                    }
                    out.push(MountRecord {
                        kind: "volume".into(),
                        name: name.clone(),
                        source: String::new(),
                        destination: target,
                        driver: m
                            .volume_options
                            .as_ref()
                            .and_then(|o| o.driver_config.as_ref())
                            .and_then(|c| c.name.clone())
                            .unwrap_or_default(),
                        rw: !ro,
                        options: String::new(),
                        anonymous: name.is_empty(),
                        block: false,
                        subpath,
                        propagation: String::new(),
                    });
                }
                _ => return Err(Error::invalid("mount type not supported")),
            }
        }
        for (dst, opts) in hc.tmpfs.clone().unwrap_or_default() {
            out.push(MountRecord {
                kind: "tmpfs".into(),
                name: String::new(),
                source: String::new(),
                destination: dst,
                driver: String::new(),
                rw: !opts.split(',').any(|o| o == "ro"),
                options: opts,
                anonymous: false,
                block: false,
                subpath: String::new(),
                propagation: String::new(),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for m in &out {
            if !seen.insert(m.destination.clone()) {
                return Err(Error::invalid(format!(
                    "Duplicate mount point: {}",
                    m.destination
                )));
            }
        }
        Ok(out)
    }
}

/// Docker-style random names: adjective_surname, unique among `taken`.
fn generate_name(taken: impl Fn(&str) -> bool) -> String {
    use rand::seq::SliceRandom;
    const LEFT: &[&str] = &[
        "admiring",
        "brave",
        "calm",
        "dazzling",
        "eager",
        "festive",
        "gallant",
        "happy",
        "keen",
        "lucid",
        "modest",
        "nifty",
        "optimistic",
        "quirky",
        "serene",
        "tender",
        "upbeat",
        "vibrant",
        "wizardly",
        "zealous",
        "amazing",
        "bold",
        "clever",
        "dreamy",
        "elastic",
        "focused",
        "gifted",
        "hopeful",
        "jolly",
        "kind",
        "loving",
        "mystifying",
        "nostalgic",
        "peaceful",
        "relaxed",
        "sharp",
        "trusting",
        "vigilant",
        "wonderful",
        "youthful",
    ];
    const RIGHT: &[&str] = &[
        "babbage",
        "curie",
        "dijkstra",
        "euler",
        "feynman",
        "goodall",
        "hopper",
        "knuth",
        "lamport",
        "lovelace",
        "meitner",
        "noether",
        "pasteur",
        "ritchie",
        "shannon",
        "thompson",
        "turing",
        "wozniak",
        "yalow",
        "zuse",
        "archimedes",
        "bohr",
        "darwin",
        "einstein",
        "fermat",
        "galileo",
        "hawking",
        "kepler",
        "liskov",
        "mendel",
        "newton",
        "pike",
        "ramanujan",
        "sinoussi",
        "tesla",
        "volhard",
        "wilson",
        "hypatia",
        "johnson",
        "kilby",
    ];
    let mut rng = rand::thread_rng();
    for attempt in 0..100 {
        let mut n = format!(
            "{}_{}",
            LEFT.choose(&mut rng).unwrap(),
            RIGHT.choose(&mut rng).unwrap()
        );
        if attempt > 10 {
            n.push_str(&attempt.to_string());
        }
        if !taken(&n) {
            return n;
        }
    }
    super::new_id()[..16].to_string()
}

/// `bb` → `bb:latest` in "No such image" messages, as Docker prints them.
fn normalize_for_message(r: &str) -> String {
    let last = r.rsplit('/').next().unwrap_or(r);
    if r.contains('@') || last.contains(':') {
        r.to_string()
    } else {
        format!("{r}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_merge_overrides_by_key() {
        let m = merge_env(
            &["PATH=/bin".into(), "A=1".into()],
            &["A=2".into(), "B=3".into()],
        );
        assert_eq!(m, vec!["PATH=/bin", "A=2", "B=3"]);
    }

    #[test]
    fn image_names_in_messages() {
        assert_eq!(normalize_for_message("bb"), "bb:latest");
        assert_eq!(
            normalize_for_message("127.0.0.1:5000/bb"),
            "127.0.0.1:5000/bb:latest"
        );
        assert_eq!(normalize_for_message("bb:1"), "bb:1");
    }
}
