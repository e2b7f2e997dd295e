//! Read-side and bookkeeping verbs: list, inspect, history, tag, df (removal is in
//! `remove.rs`).

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use serde_json::{json, Value};

use super::reference::{self, Reference};
use super::{ImageStore, State};
use crate::{Error, Result};

/// One row of `GET /images/json` (Docker's `ImageSummary`).
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "ParentId")]
    pub parent_id: String,
    #[serde(rename = "RepoTags")]
    pub repo_tags: Vec<String>,
    #[serde(rename = "RepoDigests")]
    pub repo_digests: Vec<String>,
    #[serde(rename = "Created")]
    pub created: i64,
    #[serde(rename = "Size")]
    pub size: i64,
    #[serde(rename = "SharedSize")]
    pub shared_size: i64,
    #[serde(rename = "Labels")]
    pub labels: HashMap<String, String>,
    #[serde(rename = "Containers")]
    pub containers: i64,
}

#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub all: bool,
    pub dangling: Option<bool>,
    pub reference: Vec<String>,
    pub label: Vec<String>,
    pub before: Option<String>,
    pub since: Option<String>,
    pub until: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeleteItem {
    #[serde(rename = "Untagged", skip_serializing_if = "Option::is_none")]
    pub untagged: Option<String>,
    #[serde(rename = "Deleted", skip_serializing_if = "Option::is_none")]
    pub deleted: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    #[serde(rename = "ImagesDeleted")]
    pub images_deleted: Option<Vec<DeleteItem>>,
    #[serde(rename = "SpaceReclaimed")]
    pub space_reclaimed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskUsage {
    pub layers_size: u64,
    pub images: Vec<ImageSummary>,
}

/// `path.Match` with `*` and `?` (neither crosses `/`), in O(pattern × name) time: on a
/// mismatch only the most recent `*` takes one more character, so a pattern of thousands
/// of stars from a client cannot make the match exponential.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    let (mut pi, mut si) = (0, 0);
    // The last `*` seen and the position in `s` it currently extends to.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some('?') if s[si] != '/' => {
                pi += 1;
                si += 1;
            }
            Some(c) if *c != '?' && *c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                // A star never swallows a `/`, and no earlier star could either.
                Some((sp, ss)) if s[ss] != '/' => {
                    star = Some((sp, ss + 1));
                    pi = sp + 1;
                    si = ss + 1;
                }
                _ => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

pub(super) fn familiar(full: &str) -> String {
    Reference::parse(full)
        .map(|r| r.familiar())
        .unwrap_or_else(|_| full.to_string())
}

pub(super) fn created_unix(created: &str) -> i64 {
    crate::fsutil::parse_rfc3339(created)
        .map(|n| n.div_euclid(1_000_000_000) as i64)
        .unwrap_or(0)
}

impl ImageStore {
    fn tags_and_digests(st: &State, id: &str) -> (Vec<String>, Vec<String>) {
        let mut tags = Vec::new();
        let mut digests = Vec::new();
        for r in st.refs_of(id) {
            if r.contains('@') {
                digests.push(familiar(r));
            } else {
                tags.push(familiar(r));
            }
        }
        (tags, digests)
    }

    pub(super) fn labels_of(&self, id: &str) -> HashMap<String, String> {
        self.image_config(id).map(|c| c.labels).unwrap_or_default()
    }

    fn summary(&self, st: &State, id: &str) -> ImageSummary {
        let rec = &st.images[id];
        let (repo_tags, repo_digests) = Self::tags_and_digests(st, id);
        ImageSummary {
            id: id.to_string(),
            parent_id: rec.parent.clone(),
            repo_tags,
            repo_digests,
            created: created_unix(&rec.created),
            size: rec.size as i64,
            shared_size: -1,
            labels: self.labels_of(id),
            containers: -1,
        }
    }

    fn created_of(st: &State, name: &str) -> Result<i64> {
        let id = Self::resolve_in(st, name)?;
        Ok(created_unix(&st.images[&id].created))
    }

    /// `GET /images/json`.
    pub fn list(&self, opts: &ListOptions) -> Result<Vec<ImageSummary>> {
        let st = self.state.lock().unwrap().clone();
        let before = opts
            .before
            .as_deref()
            .map(|b| Self::created_of(&st, b))
            .transpose()?;
        let since = opts
            .since
            .as_deref()
            .map(|s| Self::created_of(&st, s))
            .transpose()?;
        // Images something was built on (a build step's parent), looked up once.
        let parents: BTreeSet<&str> = st.images.values().map(|i| i.parent.as_str()).collect();
        let mut out = Vec::new();
        for (id, rec) in &st.images {
            let created = created_unix(&rec.created);
            let refs: Vec<&String> = st.refs_of(id).collect();
            let untagged = !refs.iter().any(|r| !r.contains('@'));
            let intermediate = untagged && refs.is_empty() && parents.contains(id.as_str());
            if intermediate && !opts.all {
                continue;
            }
            let dangling = untagged && !intermediate;
            if let Some(d) = opts.dangling {
                if d != dangling {
                    continue;
                }
            }
            if before.is_some_and(|b| created >= b) || since.is_some_and(|s| created <= s) {
                continue;
            }
            if opts.until.is_some_and(|u| created > u) {
                continue;
            }
            if !opts.reference.is_empty() {
                let hit = opts.reference.iter().any(|pat| {
                    refs.iter().any(|r| {
                        Reference::parse(r)
                            .map(|p| {
                                glob_match(pat, &p.familiar())
                                    || glob_match(pat, &p.familiar_name())
                            })
                            .unwrap_or(false)
                    })
                });
                if !hit {
                    continue;
                }
            }
            let mut s = self.summary(&st, id);
            if !opts.label.is_empty() {
                let ok = opts.label.iter().all(|f| match f.split_once('=') {
                    Some((k, v)) => s.labels.get(k).map(|x| x == v).unwrap_or(false),
                    None => s.labels.contains_key(f.as_str()),
                });
                if !ok {
                    continue;
                }
            }
            if !opts.reference.is_empty() {
                // Docker narrows RepoTags to the matching ones.
                s.repo_tags.retain(|t| {
                    opts.reference.iter().any(|pat| {
                        glob_match(pat, t)
                            || Reference::parse(t)
                                .map(|p| glob_match(pat, &p.familiar_name()))
                                .unwrap_or(false)
                    })
                });
            }
            out.push(s);
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// `GET /images/{name}/json` in Docker's `ImageInspect` shape.
    pub fn inspect(&self, name: &str) -> Result<Value> {
        let st = self.state.lock().unwrap().clone();
        let id = Self::resolve_in(&st, name)?;
        let rec = &st.images[&id];
        let raw = self.read_blob(&id)?;
        let v: Value = serde_json::from_slice(&raw).map_err(Error::internal)?;
        let (tags, digests) = Self::tags_and_digests(&st, &id);
        let mut config = json!({
            "Hostname": "", "Domainname": "", "User": "", "AttachStdin": false,
            "AttachStdout": false, "AttachStderr": false, "Tty": false, "OpenStdin": false,
            "StdinOnce": false, "Env": null, "Cmd": null, "Image": "", "Volumes": null,
            "WorkingDir": "", "Entrypoint": null, "OnBuild": null, "Labels": null,
        });
        if let (Some(dst), Some(src)) = (config.as_object_mut(), v["config"].as_object()) {
            for (k, val) in src {
                dst.insert(k.clone(), val.clone());
            }
        }
        let lower: Vec<String> = rec
            .layers
            .iter()
            .rev()
            .skip(1)
            .map(|d| self.layer_path(d).display().to_string())
            .collect();
        let top = rec
            .layers
            .last()
            .map(|d| self.layer_path(d).display().to_string())
            .unwrap_or_default();
        Ok(json!({
            "Id": id,
            "RepoTags": tags,
            "RepoDigests": digests,
            "Parent": rec.parent,
            "Comment": v["comment"].as_str().unwrap_or(""),
            "Created": rec.created,
            "DockerVersion": v["docker_version"].as_str().unwrap_or(""),
            "Author": v["author"].as_str().unwrap_or(""),
            "Config": config,
            "Architecture": v["architecture"].as_str().unwrap_or("amd64"),
            "Variant": v.get("variant").cloned(),
            "Os": v["os"].as_str().unwrap_or("linux"),
            "Size": rec.size,
            "GraphDriver": {
                "Name": "berth-layers",
                "Data": { "LowerDir": lower.join(":"), "UpperDir": top },
            },
            "RootFS": { "Type": "layers", "Layers": rec.layers },
            "Metadata": { "LastTagTime": rec.last_tag_time.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into()) },
        }))
    }

    /// `GET /images/{name}/history`, newest first.
    pub fn history(&self, name: &str) -> Result<Vec<Value>> {
        let st = self.state.lock().unwrap().clone();
        let id = Self::resolve_in(&st, name)?;
        let rec = &st.images[&id];
        let (_, cfg) = self.config_of(&id)?;
        let sizes: Vec<u64> = rec
            .layers
            .iter()
            .map(|d| st.layers.get(d).map(|l| l.size).unwrap_or(0))
            .collect();
        let mut items = Vec::new();
        let mut layer = 0usize;
        match cfg.history() {
            Some(h) if !h.is_empty() => {
                for e in h {
                    let empty = e.empty_layer().unwrap_or(false);
                    let size = if empty {
                        0
                    } else {
                        sizes.get(layer).copied().unwrap_or(0)
                    };
                    if !empty {
                        layer += 1;
                    }
                    items.push(json!({
                        "Id": "<missing>",
                        "Created": e.created().as_deref().map(created_unix).unwrap_or(0),
                        "CreatedBy": e.created_by().clone().unwrap_or_default(),
                        "Tags": null,
                        "Size": size,
                        "Comment": e.comment().clone().unwrap_or_default(),
                    }));
                }
            }
            _ => {
                for s in &sizes {
                    items.push(json!({
                        "Id": "<missing>", "Created": created_unix(&rec.created), "CreatedBy": "",
                        "Tags": null, "Size": s, "Comment": "",
                    }));
                }
            }
        }
        items.reverse();
        if let Some(top) = items.first_mut() {
            let (tags, _) = Self::tags_and_digests(&st, &id);
            top["Id"] = json!(id);
            top["Tags"] = if tags.is_empty() {
                Value::Null
            } else {
                json!(tags)
            };
        }
        Ok(items)
    }

    /// `POST /images/{name}/tag?repo=&tag=`.
    pub fn tag(&self, name: &str, repo: &str, tag: &str) -> Result<()> {
        let mut r = Reference::parse(repo)?;
        if r.digest.is_some() {
            return Err(Error::invalid(
                "refusing to create a tag with a digest reference",
            ));
        }
        if !tag.is_empty() {
            if !reference::is_valid_tag(tag) {
                return Err(Error::invalid(format!("invalid tag format: {tag}")));
            }
            r.tag = Some(tag.to_string());
        }
        if r.tag.is_none() {
            r.tag = Some(reference::DEFAULT_TAG.into());
        }
        let id = {
            let mut st = self.state.lock().unwrap();
            let id = Self::resolve_in(&st, name)?;
            st.refs.insert(r.to_string(), id.clone());
            if let Some(rec) = st.images.get_mut(&id) {
                rec.last_tag_time = Some(crate::fsutil::now_rfc3339());
            }
            self.save_state(&st)?;
            id
        };
        self.events
            .publish("image", "tag", &id, [("name", r.familiar())]);
        Ok(())
    }

    /// For `GET /system/df`: every image (with `SharedSize` filled) and the total size
    /// of unpacked layers. `Containers` is left at -1 for the caller to fill.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let st = self.state.lock().unwrap().clone();
        let mut users: HashMap<&String, usize> = HashMap::new();
        for img in st.images.values() {
            for d in &img.layers {
                *users.entry(d).or_default() += 1;
            }
        }
        let mut images = Vec::new();
        for id in st.images.keys() {
            let mut s = self.summary(&st, id);
            s.shared_size = st.images[id]
                .layers
                .iter()
                .filter(|d| users.get(d).copied().unwrap_or(0) > 1)
                .map(|d| st.layers.get(d).map(|l| l.size).unwrap_or(0) as i64)
                .sum();
            images.push(s);
        }
        Ok(DiskUsage {
            layers_size: st.layers.values().map(|l| l.size).sum(),
            images,
        })
    }
}
