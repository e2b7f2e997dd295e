//! `--userns-remap` (dockerd's flag): the user and group whose subordinate id ranges
//! (`/etc/subuid`, `/etc/subgid`) containers' user namespaces map to. Resolved once at
//! start-up, with dockerd 20.10's rules and messages; the agent applies the maps.
use std::path::Path;

use berth_agent_protocol::{IdMap, UserNamespace};

use crate::{Error, Result};

/// dockerd's user for `--userns-remap default`.
pub const DEFAULT_REMAP_USER: &str = "dockremap";

#[derive(Debug, Clone, PartialEq)]
pub struct Remap {
    pub user: String,
    pub group: String,
    pub maps: UserNamespace,
}

impl Remap {
    /// Host uid and gid of the containers' root.
    pub fn root(&self) -> (u32, u32) {
        self.maps.root()
    }
}

/// `default`, `USER`, `USER:GROUP`, `UID[:GID]`. `Ok(None)`: remapping is off (empty, or
/// root remapped onto itself, which dockerd also turns off with a warning).
pub fn resolve(setting: &str) -> Result<Option<Remap>> {
    if setting.is_empty() {
        return Ok(None);
    }
    let (user, group) = parse_remapped_root(setting)?;
    if user == "root" {
        tracing::warn!(
            "User namespaces: root cannot be remapped with itself; user namespaces are OFF"
        );
        return Ok(None);
    }
    let uid = nix::unistd::User::from_name(&user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    let gid = nix::unistd::Group::from_name(&group)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    let subgid = std::fs::read_to_string("/etc/subgid").unwrap_or_default();
    let uid_map = id_map(&ranges_of(&subuid, &user, uid));
    if uid_map.is_empty() {
        return Err(Error::invalid(format!(
            "No subuid ranges found for user {user:?}"
        )));
    }
    let gid_map = id_map(&ranges_of(&subgid, &group, gid));
    if gid_map.is_empty() {
        return Err(Error::invalid(format!(
            "No subgid ranges found for group {group:?}"
        )));
    }
    tracing::info!("User namespaces: ID ranges will be mapped to subuid/subgid ranges of: {user}");
    Ok(Some(Remap {
        user,
        group,
        maps: UserNamespace { uid_map, gid_map },
    }))
}

/// dockerd's `parseRemappedRoot`: (user name, group name).
fn parse_remapped_root(spec: &str) -> Result<(String, String)> {
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.len() > 2 {
        return Err(Error::invalid(format!(
            "Invalid user/group specification in --userns-remap: {spec:?}"
        )));
    }
    let user_by_uid = |uid: u32| {
        nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map(|u| u.name)
            .ok_or_else(|| Error::invalid(format!("Uid {uid} has no entry in /etc/passwd")))
    };
    let group_by_gid = |gid: u32| {
        nix::unistd::Group::from_gid(gid.into())
            .ok()
            .flatten()
            .map(|g| g.name)
            .ok_or_else(|| Error::invalid(format!("Gid {gid} has no entry in /etc/group")))
    };
    let group_by_name = |name: &str| {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.name)
            .ok_or_else(|| Error::invalid(format!("Error during gid lookup for {name:?}")))
    };
    let (user, mut group) = if let Ok(uid) = parts[0].parse::<u32>() {
        let user = user_by_uid(uid)?;
        // A numeric uid alone: the same number is the gid.
        let group = if parts.len() == 1 {
            Some(group_by_gid(uid)?)
        } else {
            None
        };
        (user, group)
    } else if parts[0] == "default" {
        if nix::unistd::User::from_name(DEFAULT_REMAP_USER)
            .ok()
            .flatten()
            .is_none()
        {
            add_remap_user(DEFAULT_REMAP_USER)?;
        } else {
            ensure_ranges(DEFAULT_REMAP_USER)?;
        }
        (
            DEFAULT_REMAP_USER.to_string(),
            (parts.len() == 1).then(|| DEFAULT_REMAP_USER.to_string()),
        )
    } else {
        let name = parts[0];
        let user = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| Error::invalid(format!("Error during uid lookup for {name:?}")))?;
        let group = if parts.len() == 1 {
            Some(group_by_name(name)?)
        } else {
            None
        };
        (user.name, group)
    };
    if group.is_none() {
        group = Some(match parts[1].parse::<u32>() {
            Ok(gid) => group_by_gid(gid)?,
            Err(_) => group_by_name(parts[1]).map_err(|_| {
                Error::invalid(format!("Error during groupname lookup for {:?}", parts[1]))
            })?,
        });
    }
    Ok((user, group.expect("set above")))
}

/// `(start, count)` of every line of a subuid/subgid file naming `name` (or its id).
fn ranges_of(text: &str, name: &str, id: Option<u32>) -> Vec<(u32, u32)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            let matches = who == name || id.is_some_and(|id| who == id.to_string());
            Some((matches, start.parse().ok()?, count.parse().ok()?))
        })
        .filter(|(m, _, count)| *m && *count > 0)
        .map(|(_, s, c)| (s, c))
        .collect()
}

/// dockerd's `createIDMap`: the ranges back to back from container id 0.
fn id_map(ranges: &[(u32, u32)]) -> Vec<IdMap> {
    let mut next = 0u32;
    let mut out = Vec::new();
    for &(host_id, size) in ranges {
        out.push(IdMap {
            container_id: next,
            host_id,
            size,
        });
        next = match next.checked_add(size) {
            Some(n) => n,
            None => break,
        };
    }
    out
}

/// dockerd's `AddNamespaceRangesUser`: a system user without a shell, then ranges.
fn add_remap_user(name: &str) -> Result<()> {
    run(
        "useradd",
        &["-r", "-s", "/bin/false", name],
        &format!("Error during {name:?} user creation"),
    )?;
    ensure_ranges(name)
}

/// Gives `name` a 65536-id range in /etc/subuid and /etc/subgid when it has none: the
/// first free one from 100000, added with `usermod -v/-w` as dockerd does.
fn ensure_ranges(name: &str) -> Result<()> {
    const START: u32 = 100_000;
    const SIZE: u32 = 65_536;
    for (file, flag) in [("/etc/subuid", "-v"), ("/etc/subgid", "-w")] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let id = match flag {
            "-v" => nix::unistd::User::from_name(name)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw()),
            _ => nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw()),
        };
        if !ranges_of(&text, name, id).is_empty() {
            continue;
        }
        let start = first_free(&text, START, SIZE);
        let range = format!("{start}-{}", start + SIZE - 1);
        run(
            "usermod",
            &[flag, &range, name],
            &format!("Error during {name:?} subordinate range creation"),
        )?;
        if !Path::new(file).exists() {
            return Err(Error::invalid(format!("{file} was not created by usermod")));
        }
    }
    Ok(())
}

/// The lowest start >= `from` where `size` ids overlap no range of the file.
fn first_free(text: &str, from: u32, size: u32) -> u32 {
    let mut used: Vec<(u32, u32)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':').skip(1);
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect();
    used.sort();
    let mut start = from;
    for (s, c) in used {
        let end = s.saturating_add(c);
        if s < start.saturating_add(size) && end > start {
            start = end;
        }
    }
    start
}

fn run(cmd: &str, args: &[&str], what: &str) -> Result<()> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| Error::invalid(format!("{what}: {cmd}: {e}")))?;
    if !out.status.success() {
        return Err(Error::invalid(format!(
            "{what}: {cmd}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_maps() {
        let text = "alice:100000:65536\n1001:300000:10\nbob:200000:65536\nalice:500000:5\n";
        assert_eq!(
            ranges_of(text, "alice", Some(1000)),
            vec![(100000, 65536), (500000, 5)]
        );
        assert_eq!(ranges_of(text, "carol", Some(1001)), vec![(300000, 10)]);
        let m = id_map(&[(100000, 65536), (500000, 5)]);
        assert_eq!(m[1].container_id, 65536);
        assert_eq!(IdMap::to_host(&m, 65537), Some(500001));
        assert_eq!(IdMap::to_container(&m, 100005), Some(5));
        assert_eq!(IdMap::to_host(&m, 70000), None);
    }

    #[test]
    fn free_range() {
        assert_eq!(first_free("", 100000, 65536), 100000);
        let text = "a:100000:65536\nb:165536:65536\nc:400000:1\n";
        assert_eq!(first_free(text, 100000, 65536), 231072);
        assert_eq!(first_free("a:50000:60000\n", 100000, 65536), 110000);
    }
}
