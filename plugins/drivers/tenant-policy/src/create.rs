//! The body of `POST /containers/create`: what a tenant may not ask for, and the
//! tenant label (and isolation) the policy adds.

use serde_json::{Map, Value};

use crate::{Owner, Policy};

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn non_empty(v: &Value, k: &str) -> bool {
    match v.get(k) {
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        _ => false,
    }
}

/// `path` is beneath `prefix`, lexically (no `..` anywhere, so no escape).
fn under_prefix(path: &str, prefix: &str) -> bool {
    if prefix.is_empty() || !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return false;
    }
    let prefix = prefix.trim_end_matches('/');
    path == prefix || path.starts_with(&format!("{prefix}/"))
}

impl Policy {
    /// A named volume is the tenant's; an unknown name would be created unlabelled.
    fn check_volume(&self, o: &dyn Owner, name: &str) -> Result<(), String> {
        match o.volume_owner(name) {
            Some(t) if t == o.tenant() => Ok(()),
            Some(_) => Err(format!("No such volume: {name}")),
            None => Err(format!(
                "volume {name} does not exist: create it first with docker volume create"
            )),
        }
    }

    fn check_bind(&self, o: &dyn Owner, src: &str) -> Result<(), String> {
        if src.starts_with('/') {
            if under_prefix(src, &self.bind_prefix) {
                return Ok(());
            }
            return Err(if self.bind_prefix.is_empty() {
                format!("bind mount of {src} is not allowed: tenants may not bind-mount host paths")
            } else {
                format!(
                    "bind mount of {src} is not allowed: only paths under {} may be bind-mounted",
                    self.bind_prefix
                )
            });
        }
        self.check_volume(o, src)
    }

    fn check_ns(&self, o: &dyn Owner, what: &str, mode: &str) -> Result<(), String> {
        if mode == "host" {
            return Err(format!(
                "{what}=host is not allowed: tenants may not use host namespaces"
            ));
        }
        if let Some(c) = mode.strip_prefix("container:") {
            o.own_container(c)?;
        }
        Ok(())
    }

    /// Check a create body and return it with the tenant label (and isolation) set.
    pub fn container_create(&self, o: &dyn Owner, body: &[u8]) -> Result<Vec<u8>, String> {
        let mut v: Value =
            serde_json::from_slice(body).map_err(|e| format!("invalid create body: {e}"))?;
        let root = v
            .as_object_mut()
            .ok_or("create body is not a JSON object")?;
        let hc = root
            .entry("HostConfig")
            .or_insert_with(|| Value::Object(Map::new()));
        if hc.is_null() {
            *hc = Value::Object(Map::new());
        }
        let hcv = hc.clone();
        if hcv.get("Privileged").and_then(Value::as_bool) == Some(true) {
            return Err("privileged containers are not allowed for tenants".into());
        }
        for (what, key) in [
            ("--pid", "PidMode"),
            ("--ipc", "IpcMode"),
            ("--uts", "UTSMode"),
            ("--userns", "UsernsMode"),
            ("--cgroupns", "CgroupnsMode"),
            ("--network", "NetworkMode"),
        ] {
            self.check_ns(o, what, s(&hcv, key))?;
        }
        if non_empty(&hcv, "CapAdd") {
            return Err("--cap-add is not allowed for tenants".into());
        }
        if non_empty(&hcv, "Devices")
            || non_empty(&hcv, "DeviceRequests")
            || non_empty(&hcv, "DeviceCgroupRules")
        {
            return Err("--device is not allowed for tenants".into());
        }
        if non_empty(&hcv, "CgroupParent") {
            return Err("--cgroup-parent is not allowed for tenants".into());
        }
        if let Some(opts) = hcv.get("SecurityOpt").and_then(Value::as_array) {
            if opts
                .iter()
                .filter_map(Value::as_str)
                .any(|o| o.contains("unconfined"))
            {
                return Err("--security-opt ...=unconfined is not allowed for tenants".into());
            }
            // A profile of the tenant's own could allow what the default filter denies.
            if opts.iter().filter_map(Value::as_str).any(|o| {
                o.strip_prefix("seccomp")
                    .and_then(|v| v.strip_prefix(['=', ':']))
                    .is_some_and(|v| !matches!(v, "" | "default" | "builtin"))
            }) {
                return Err("custom seccomp profiles are not allowed for tenants".into());
            }
        }
        for b in hcv
            .get("Binds")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let b = b.as_str().unwrap_or("");
            let src = b.split(':').next().unwrap_or("");
            self.check_bind(o, src)?;
        }
        for m in hcv
            .get("Mounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let src = s(m, "Source");
            match s(m, "Type") {
                "bind" => self.check_bind(o, src)?,
                "volume" if !src.is_empty() => self.check_volume(o, src)?,
                "volume" | "tmpfs" => {}
                other => return Err(format!("mount type {other:?} is not allowed for tenants")),
            }
        }
        for c in hcv
            .get("VolumesFrom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let c = c.as_str().unwrap_or("");
            o.own_container(c.split(':').next().unwrap_or(""))?;
        }
        let net = s(&hcv, "NetworkMode");
        if !net.is_empty()
            && !net.starts_with("container:")
            && !matches!(net, "default" | "bridge" | "none")
        {
            o.own_network(net)?;
        }
        if let Some(eps) = root
            .get("NetworkingConfig")
            .and_then(|n| n.get("EndpointsConfig"))
            .and_then(Value::as_object)
        {
            for name in eps.keys() {
                if !matches!(name.as_str(), "default" | "bridge" | "none") && name != net {
                    o.own_network(name)?;
                }
            }
        }
        if self.force_microvm {
            match s(&hcv, "Isolation") {
                "" | "default" | "microvm" | "hyperv" => {}
                other => {
                    return Err(format!(
                        "isolation {other:?} is not allowed: tenants run in microVMs"
                    ))
                }
            }
            if let Some(h) = root.get_mut("HostConfig").and_then(Value::as_object_mut) {
                h.insert("Isolation".into(), Value::String("microvm".into()));
            }
        }
        self.set_label(root, o.tenant());
        Ok(Value::Object(root.clone()).to_string().into_bytes())
    }

    /// Set the tenant label in a body's `Labels`, replacing any value the client sent.
    pub fn set_label(&self, root: &mut Map<String, Value>, tenant: &str) {
        let labels = root
            .entry("Labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if !labels.is_object() {
            *labels = Value::Object(Map::new());
        }
        if let Some(m) = labels.as_object_mut() {
            m.insert(self.label.clone(), Value::String(tenant.to_string()));
        }
    }

    /// Volume and network create: the same label.
    pub fn labelled(&self, body: &[u8], tenant: &str) -> Result<Vec<u8>, String> {
        let mut v: Value = if body.is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))?
        };
        let root = v.as_object_mut().ok_or("body is not a JSON object")?;
        self.set_label(root, tenant);
        Ok(v.to_string().into_bytes())
    }
}
