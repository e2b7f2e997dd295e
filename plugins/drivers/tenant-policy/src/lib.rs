//! `tenant-policy`: berth's example authorization plugin for a multi-tenant host.
//!
//! Each verified TLS client certificate subject (CN) is a tenant. A tenant sees and
//! manages only the containers, volumes and networks carrying its tenant label: the
//! policy adds the label on create, refuses requests naming objects of another
//! tenant (as "No such ...", so names do not leak), and forces a label filter on
//! list, prune and events requests. Filtering the *responses* of list calls would
//! also be possible here (a plugin may replace a buffered response body), but a
//! forced filter costs nothing and works for streams (events) too.
//! Tenants may not use `--privileged`, host namespaces, `--cap-add`, `--device`,
//! bind mounts outside `allowed-bind-prefix` or process isolation (when `isolation`
//! is `microvm`). Images are a shared read-only catalog for tenants: they may pull,
//! list and inspect, not remove, tag, push, load, build or commit.
//! Root on the unix socket (`admin-uids`) is the admin and is never restricted.

mod create;
mod query;

use std::cell::RefCell;

wit_bindgen::generate!({
    path: "../../wit/authz-0.1.0",
    world: "authz-plugin",
});

use berth::authz::host::lookup;
use berth::authz::types::{ObjectKind, Rewrite};
use exports::berth::authz::authz::{Decision, Guest, Request, Response};

pub struct Policy {
    label: String,
    admin_uids: Vec<String>,
    bind_prefix: String,
    force_microvm: bool,
}

thread_local! {
    static POLICY: RefCell<Option<Policy>> = const { RefCell::new(None) };
}

/// Ownership questions about the objects a request names, for one tenant.
pub trait Owner {
    fn tenant(&self) -> &str;
    /// The tenant label of a volume, or None if there is no such volume.
    fn volume_owner(&self, name: &str) -> Option<String>;
    fn own_container(&self, name: &str) -> Result<(), String>;
    fn own_network(&self, name: &str) -> Result<(), String>;
}

struct Tenant<'a> {
    name: &'a str,
    label: &'a str,
}

impl Tenant<'_> {
    fn owner_of(&self, kind: ObjectKind, name: &str) -> Option<Option<String>> {
        let o = lookup(kind, name)?;
        Some(
            o.labels
                .into_iter()
                .find(|(k, _)| k == self.label)
                .map(|(_, v)| v),
        )
    }

    /// Ok when the object is the tenant's, or does not exist (the daemon answers
    /// 404 itself); another tenant's object is reported as missing.
    fn own(&self, kind: ObjectKind, what: &str, name: &str) -> Result<(), String> {
        match self.owner_of(kind, name) {
            None => Ok(()),
            Some(Some(t)) if t == self.name => Ok(()),
            Some(_) => Err(format!("No such {what}: {name}")),
        }
    }
}

impl Owner for Tenant<'_> {
    fn tenant(&self) -> &str {
        self.name
    }
    fn volume_owner(&self, name: &str) -> Option<String> {
        self.owner_of(ObjectKind::Volume, name)
            .map(|o| o.unwrap_or_default())
    }
    fn own_container(&self, name: &str) -> Result<(), String> {
        match self.owner_of(ObjectKind::Container, name) {
            Some(Some(t)) if t == self.name => Ok(()),
            _ => Err(format!("No such container: {name}")),
        }
    }
    fn own_network(&self, name: &str) -> Result<(), String> {
        match self.owner_of(ObjectKind::Network, name) {
            Some(Some(t)) if t == self.name => Ok(()),
            _ => Err(format!("network {name} not found")),
        }
    }
}

fn body(req: &Request) -> &[u8] {
    req.request_body.as_deref().unwrap_or(&[])
}

/// A body the policy must see: the host passes only JSON bodies up to 1 MiB, so
/// one sent as another content type (or too large) is refused rather than unchecked.
fn json_body(req: &Request) -> Result<serde_json::Value, String> {
    let b = req
        .request_body
        .as_deref()
        .ok_or("this request needs a JSON body (Content-Type: application/json, at most 1 MiB)")?;
    serde_json::from_slice(b).map_err(|e| format!("invalid JSON body: {e}"))
}

fn rewrite_uri(uri: String) -> Decision {
    Decision::AllowRewritten(Rewrite {
        uri: Some(uri),
        body: None,
    })
}

fn rewrite_body(body: Vec<u8>) -> Decision {
    Decision::AllowRewritten(Rewrite {
        uri: None,
        body: Some(body),
    })
}

impl Policy {
    fn from_config(config: Vec<(String, String)>) -> Result<Policy, String> {
        let mut p = Policy {
            label: "berth.tenant".into(),
            admin_uids: vec!["0".into()],
            bind_prefix: String::new(),
            force_microvm: true,
        };
        for (k, v) in config {
            match k.as_str() {
                "tenant-label" if !v.is_empty() => p.label = v,
                "admin-uids" => {
                    p.admin_uids = v
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                }
                "allowed-bind-prefix" => {
                    if !v.is_empty() && (!v.starts_with('/') || v.split('/').any(|c| c == "..")) {
                        return Err(format!(
                            "allowed-bind-prefix must be an absolute path: {v:?}"
                        ));
                    }
                    p.bind_prefix = v
                }
                "isolation" => match v.as_str() {
                    "microvm" => p.force_microvm = true,
                    "any" => p.force_microvm = false,
                    _ => return Err(format!("isolation must be microvm or any, not {v:?}")),
                },
                _ => return Err(format!("unknown config key {k:?}")),
            }
        }
        Ok(p)
    }

    fn decide(&self, req: &Request) -> Result<Decision, String> {
        let tenant = match req.user_authn_method.as_str() {
            "SO_PEERCRED" if self.admin_uids.contains(&req.user) => return Ok(Decision::Allow),
            "SO_PEERCRED" => {
                return Err(format!("uid {} is not an admin of this daemon", req.user))
            }
            "TLS" if !req.user.is_empty() => req.user.as_str(),
            _ => return Err("a client certificate is required".into()),
        };
        let t = Tenant {
            name: tenant,
            label: &self.label,
        };
        let filter = format!("{}={}", self.label, tenant);
        let segs = query::segments(&req.request_uri);
        let seg: Vec<&str> = segs.iter().map(String::as_str).collect();
        let m = req.request_method.as_str();
        let uri = &req.request_uri;
        let d = match (m, seg.as_slice()) {
            ("GET" | "HEAD", ["_ping"] | ["version"] | ["info"]) => Decision::Allow,
            ("POST", ["auth"]) => Decision::Allow,
            ("GET", ["events"]) => rewrite_uri(query::force_label_filter(uri, &filter)?),
            // Containers.
            ("GET", ["containers", "json"]) | ("POST", ["containers", "prune"]) => {
                rewrite_uri(query::force_label_filter(uri, &filter)?)
            }
            ("POST", ["containers", "create"]) => {
                rewrite_body(self.container_create(&t, body(req))?)
            }
            (_, ["containers", id, "exec"]) => {
                t.own_container(id)?;
                let v = json_body(req)?;
                if v.get("Privileged").and_then(|p| p.as_bool()) == Some(true) {
                    return Err("privileged exec is not allowed for tenants".into());
                }
                Decision::Allow
            }
            (_, ["containers", id, ..]) => {
                t.own(ObjectKind::Container, "container", id)?;
                Decision::Allow
            }
            (_, ["exec", id, ..]) => {
                t.own(ObjectKind::Exec, "exec instance", id)?;
                Decision::Allow
            }
            // Volumes.
            ("GET", ["volumes"]) | ("POST", ["volumes", "prune"]) => {
                rewrite_uri(query::force_label_filter(uri, &filter)?)
            }
            ("POST", ["volumes", "create"]) => rewrite_body(self.labelled(body(req), tenant)?),
            (_, ["volumes", name]) => {
                t.own(ObjectKind::Volume, "volume", name)?;
                Decision::Allow
            }
            // Networks.
            ("GET", ["networks"]) | ("POST", ["networks", "prune"]) => {
                rewrite_uri(query::force_label_filter(uri, &filter)?)
            }
            ("POST", ["networks", "create"]) => rewrite_body(self.labelled(body(req), tenant)?),
            ("POST", ["networks", id, "connect" | "disconnect"]) => {
                t.own_network(id)?;
                let v = json_body(req)?;
                if let Some(c) = v.get("Container").and_then(|c| c.as_str()) {
                    t.own_container(c)?;
                }
                Decision::Allow
            }
            (_, ["networks", id]) => {
                t.own(ObjectKind::Network, "network", id)?;
                Decision::Allow
            }
            // Images: a shared catalog, read-only for tenants.
            ("POST", ["images", "create"]) if query::query_param(uri, "fromSrc").is_some() => {
                return Err("docker import is not allowed for tenants".into())
            }
            ("GET", ["images", ..]) | ("POST", ["images", "create"]) => Decision::Allow,
            _ => {
                return Err(format!(
                    "{m} {} is not allowed for tenants",
                    uri.split('?').next().unwrap_or("")
                ))
            }
        };
        Ok(d)
    }
}

struct Plugin;

impl Guest for Plugin {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let p = Policy::from_config(config)?;
        POLICY.with(|c| *c.borrow_mut() = Some(p));
        Ok(())
    }

    fn authz_req(req: Request) -> Decision {
        POLICY.with(|c| match c.borrow().as_ref() {
            Some(p) => p.decide(&req).unwrap_or_else(Decision::Deny),
            None => Decision::Deny("tenant-policy is not initialised".into()),
        })
    }

    fn authz_res(_req: Request, _res: Response) -> Decision {
        Decision::Allow
    }
}

export!(Plugin);
