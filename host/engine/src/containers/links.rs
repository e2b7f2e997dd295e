//! Legacy container links (`docker run --link TARGET[:ALIAS]`), as dockerd keeps them.
//!
//! At create the target must exist and the link is recorded as `/TARGET:/LINKER/ALIAS`
//! (inspect's `HostConfig.Links`). At every start the target must be running and share a
//! network with the linker; the linker then gets an `/etc/hosts` line for the target
//! (`IP ALIAS HOSTNAME NAME`) and, on the default bridge, the `ALIAS_PORT_*`, `ALIAS_NAME`
//! and `ALIAS_ENV_*` variables. On a user-defined network the alias is a name only, as
//! in dockerd (no variables there). When a target starts again, running linkers' hosts
//! lines follow its new address.

use std::net::Ipv4Addr;

use super::{ContainerRecord, Containers};
use crate::networks::{etc, Networks};
use crate::{Error, Result};

/// One link: the target's name (no `/`) and the alias the linker knows it by.
#[derive(Debug, PartialEq)]
pub(crate) struct Link {
    pub target: String,
    pub alias: String,
}

/// `TARGET`, `TARGET:ALIAS` (the CLI's form) or `/TARGET:/LINKER/ALIAS` (the recorded form).
pub(crate) fn parse_link(s: &str) -> Result<Link> {
    let (target, alias) = match s.split_once(':') {
        Some((t, a)) => (t, a.rsplit('/').next().unwrap_or(a)),
        None => (s, s.trim_start_matches('/')),
    };
    let target = target.trim_start_matches('/');
    if target.is_empty() || alias.is_empty() {
        return Err(Error::invalid(format!("invalid link: {s:?}")));
    }
    Ok(Link {
        target: target.to_string(),
        alias: alias.to_string(),
    })
}

/// What a started linker learns about one target.
pub(crate) struct Linked {
    /// `ALIAS HOSTNAME NAME`: the names of the target's /etc/hosts line.
    pub names: String,
    /// The target's address on the network the two share.
    pub ip: Ipv4Addr,
    /// The variables, empty off the default bridge.
    pub env: Vec<String>,
}

impl Linked {
    /// The hosts line as an `--add-host` entry (`names:ip`).
    pub fn hosts_entry(&self) -> String {
        format!("{}:{}", self.names, self.ip)
    }
}

impl Containers {
    /// At create: every target exists. Returns the links in their recorded form, for
    /// a linker named `linker` (known once the name is reserved).
    pub(crate) fn check_links(&self, links: &[String]) -> Result<Vec<Link>> {
        links
            .iter()
            .map(|l| {
                let link = parse_link(l)?;
                self.get(&link.target).map_err(|e| {
                    Error::invalid(format!("could not get container for {}: {e}", link.target))
                })?;
                Ok(link)
            })
            .collect()
    }

    /// `docker rm --link /LINKER/ALIAS` (`DELETE /containers/LINKER/ALIAS?link=1`): the
    /// linker forgets the link; its `/etc/hosts` and variables change at its next start.
    pub fn remove_link(&self, name: &str) -> Result<()> {
        let name = name.trim_start_matches('/');
        let Some((linker, alias)) = name.rsplit_once('/') else {
            return Err(Error::internal(
                "Conflict, cannot remove the default link name of the container",
            ));
        };
        let c = self.get(linker).map_err(|_| {
            Error::internal(format!("Cannot get parent /{linker} for link name /{name}"))
        })?;
        c.update(|r| {
            if let Some(links) = r.host_config.links.as_mut() {
                links.retain(|l| parse_link(l).map_or(true, |l| l.alias != alias));
                if links.is_empty() {
                    r.host_config.links = None;
                }
            }
        });
        self.save(&c)
    }

    /// At start: each target, running, on a network the linker is on.
    pub(crate) fn resolve_links(&self, rec: &ContainerRecord) -> Result<Vec<Linked>> {
        let links = rec.host_config.links.clone().unwrap_or_default();
        if links.is_empty() {
            return Ok(Vec::new());
        }
        let nets = self.networks()?;
        links
            .iter()
            .map(|l| self.resolve_link(rec, &parse_link(l)?, nets))
            .collect()
    }

    fn resolve_link(&self, rec: &ContainerRecord, link: &Link, nets: &Networks) -> Result<Linked> {
        let shown = format!("/{} AS /{}/{}", link.target, rec.name, link.alias);
        let target = self.get(&link.target).map_err(|_| {
            Error::internal(format!("Cannot link to a non running container: {shown}"))
        })?;
        let trec = target.record();
        if !trec.state.status.is_running() {
            return Err(Error::internal(format!(
                "Cannot link to a non running container: {shown}"
            )));
        }
        let endpoints = nets.container_endpoints(&trec.id);
        let shared = rec.networks.iter().find_map(|a| {
            endpoints
                .iter()
                .find(|e| e.network_id == a.network_id)
                .map(|e| (a, e.ip))
        });
        let Some((attachment, ip)) = shared else {
            return Err(Error::invalid(format!(
                "Cannot link to /{}, as it does not belong to the default network",
                trec.name
            )));
        };
        let default_bridge = nets
            .get(&attachment.network_id)
            .map(|n| n.is_default_bridge())
            .unwrap_or(false);
        let hostname = trec.config.hostname.clone().unwrap_or_default();
        let mut names = vec![link.alias.clone()];
        for n in [hostname, trec.name.clone()] {
            if !n.is_empty() && !names.contains(&n) {
                names.push(n);
            }
        }
        Ok(Linked {
            names: names.join(" "),
            ip,
            env: if default_bridge {
                link_env(
                    &format!("/{}/{}", rec.name, link.alias),
                    ip,
                    trec.config.exposed_ports.as_deref().unwrap_or_default(),
                    trec.config.env.as_deref().unwrap_or_default(),
                )
            } else {
                Vec::new()
            },
        })
    }

    /// After `target` started again (maybe with a new address): every running linker's
    /// /etc/hosts line for it, as dockerd updates them. The link variables stay what
    /// they were at the linker's start, as in dockerd.
    pub(super) async fn refresh_linkers(&self, target: &ContainerRecord) {
        let Ok(nets) = self.networks() else {
            return;
        };
        for linker in self.all() {
            // On every start: most containers link to nothing, so look before copying
            // the record.
            let has_links = linker
                .rec
                .lock()
                .unwrap()
                .host_config
                .links
                .as_ref()
                .is_some_and(|l| !l.is_empty());
            if !has_links || linker.id == target.id {
                continue;
            }
            let rec = linker.record();
            if !rec.state.status.is_running() {
                continue;
            }
            for l in rec.host_config.links.iter().flatten() {
                let Ok(link) = parse_link(l) else { continue };
                if self.get(&link.target).map(|t| t.id.clone()).ok().as_deref() != Some(&target.id)
                {
                    continue;
                }
                let Ok(linked) = self.resolve_link(&rec, &link, nets) else {
                    continue;
                };
                let edit = |hosts: &str| etc::hosts_with_link(hosts, &linked.names, &linked.ip);
                if let Err(e) = self.edit_etc_hosts(&linker, &rec, edit).await {
                    tracing::warn!(linker = %rec.id, target = %target.id, "updating a link's hosts line: {e}");
                }
            }
        }
    }
}

/// dockerd's link variables (moby `links.Link.ToEnv`): `name` is `/LINKER/ALIAS`,
/// `exposed` the target's `80/tcp`-style ports, `target_env` its environment.
fn link_env(name: &str, ip: Ipv4Addr, exposed: &[String], target_env: &[String]) -> Vec<String> {
    let alias = name
        .rsplit('/')
        .next()
        .unwrap_or(name)
        .to_uppercase()
        .replace('-', "_");
    let mut ports: Vec<(u16, String)> = exposed
        .iter()
        .filter_map(|p| {
            let (port, proto) = p.split_once('/').unwrap_or((p.as_str(), "tcp"));
            Some((port.parse().ok()?, proto.to_string()))
        })
        .collect();
    // Lowest port first, tcp before udp at a port, as nat.Sort orders them.
    ports.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| (a.1 != "tcp").cmp(&(b.1 != "tcp")))
    });
    let mut env = Vec::new();
    if let Some((port, proto)) = ports.first() {
        env.push(format!("{alias}_PORT={proto}://{ip}:{port}"));
    }
    for (port, proto) in &ports {
        let p = format!("{alias}_PORT_{port}_{}", proto.to_uppercase());
        env.push(format!("{p}={proto}://{ip}:{port}"));
        env.push(format!("{p}_ADDR={ip}"));
        env.push(format!("{p}_PORT={port}"));
        env.push(format!("{p}_PROTO={proto}"));
    }
    env.push(format!("{alias}_NAME={name}"));
    for kv in target_env {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        // Set by every image build; not the target's own settings.
        if k == "HOME" || k == "PATH" {
            continue;
        }
        env.push(format!("{alias}_ENV_{k}={v}"));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let l = |t: &str, a: &str| Link {
            target: t.into(),
            alias: a.into(),
        };
        assert_eq!(parse_link("db").unwrap(), l("db", "db"));
        assert_eq!(parse_link("db:data").unwrap(), l("db", "data"));
        assert_eq!(parse_link("/db:/web/data").unwrap(), l("db", "data"));
        assert!(parse_link(":x").is_err());
        assert!(parse_link("db:").is_err());
    }

    #[test]
    fn variables_match_dockerd() {
        let env = link_env(
            "/web/my-db",
            "172.17.0.2".parse().unwrap(),
            &["5432/tcp".into(), "53/udp".into()],
            &["PATH=/bin".into(), "PGUSER=app".into()],
        );
        assert_eq!(
            env,
            [
                "MY_DB_PORT=udp://172.17.0.2:53",
                "MY_DB_PORT_53_UDP=udp://172.17.0.2:53",
                "MY_DB_PORT_53_UDP_ADDR=172.17.0.2",
                "MY_DB_PORT_53_UDP_PORT=53",
                "MY_DB_PORT_53_UDP_PROTO=udp",
                "MY_DB_PORT_5432_TCP=tcp://172.17.0.2:5432",
                "MY_DB_PORT_5432_TCP_ADDR=172.17.0.2",
                "MY_DB_PORT_5432_TCP_PORT=5432",
                "MY_DB_PORT_5432_TCP_PROTO=tcp",
                "MY_DB_NAME=/web/my-db",
                "MY_DB_ENV_PGUSER=app",
            ]
        );
    }
}
