//! Docker's `user[:group]` resolved against the container's /etc/passwd and /etc/group
//! (the semantics of moby/sys/user `GetExecUser`).
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read_lines(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

fn passwd(root: &Path) -> Vec<PasswdEntry> {
    read_lines(&root.join("etc/passwd"))
        .into_iter()
        .filter(|f| f.len() >= 4)
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f[0].clone(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).cloned().unwrap_or_default(),
            })
        })
        .collect()
}

fn groups(root: &Path) -> Vec<GroupEntry> {
    read_lines(&root.join("etc/group"))
        .into_iter()
        .filter(|f| f.len() >= 3)
        .filter_map(|f| {
            Some(GroupEntry {
                name: f[0].clone(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `spec` (`""`, `name`, `uid`, `name:group`, `uid:gid`, ...) and `--group-add` entries
/// inside the filesystem rooted at `root`.
pub fn resolve(root: &Path, spec: &str, additional: &[String]) -> Result<ExecUser, String> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users = passwd(root);
    let groups = groups(root);
    let mut out = ExecUser {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        home: "/".into(),
    };
    let mut user_name: Option<String> = None;
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let found = match user_part.parse::<u32>() {
        Ok(uid) => users.iter().find(|u| u.uid == uid),
        Err(_) => Some(users.iter().find(|u| u.name == user_part).ok_or_else(|| {
            format!("unable to find user {user_part}: no matching entries in passwd file")
        })?),
    };
    match found {
        Some(u) => {
            out.uid = u.uid;
            out.gid = u.gid;
            out.home = if u.home.is_empty() {
                "/".into()
            } else {
                u.home.clone()
            };
            user_name = Some(u.name.clone());
        }
        None => out.uid = user_part.parse().expect("numeric uid checked above"),
    }
    if let Some(g) = group_part.filter(|g| !g.is_empty()) {
        out.gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        };
    } else if let Some(name) = &user_name {
        // Supplementary groups from /etc/group membership (only when no group was given).
        out.groups = groups
            .iter()
            .filter(|e| e.members.iter().any(|m| m == name))
            .map(|e| e.gid)
            .collect();
    }
    for g in additional {
        let gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| &e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        };
        out.groups.push(gid);
    }
    out.groups.sort_unstable();
    out.groups.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_docker() {
        let root = std::env::temp_dir().join(format!("berth-user-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n").unwrap();
        std::fs::write(
            root.join("etc/group"),
            "root:x:0:\nwheel:x:10:app\napp:x:1000:\nnogroup:x:65534:\n",
        )
        .unwrap();
        let r = resolve(&root, "", &[]).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (0, 0, "/root"));
        let a = resolve(&root, "app", &["nogroup".into(), "5".into()]).unwrap();
        assert_eq!(
            (a.uid, a.gid, a.groups.clone()),
            (1000, 1000, vec![5, 10, 65534])
        );
        let n = resolve(&root, "4242:4343", &[]).unwrap();
        assert_eq!((n.uid, n.gid, n.home.as_str()), (4242, 4343, "/"));
        let g = resolve(&root, "nobody:wheel", &[]).unwrap();
        assert_eq!((g.uid, g.gid), (65534, 10));
        assert!(resolve(&root, "ghost", &[])
            .unwrap_err()
            .contains("unable to find user ghost"));
        assert!(resolve(&root, "0:ghosts", &[]).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
