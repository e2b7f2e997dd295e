//! `docker build --cache-from IMAGE`: images whose history continues the build's own are
//! cache sources, as in dockerd's classic builder. Such an image usually came from a
//! registry or `docker load` and has no build cache behind it; its history says what each
//! of its layers was made by. A step may reuse a source's next layer when the source
//! starts with exactly the parent image's layers and history, and its next history
//! entry was made by the same instruction (`created_by`, which already holds the step's
//! build args and its sources' content hashes).

use serde_json::Value;

use crate::images::ImageStore;

/// The cache sources of one build: image ID and config, in the order given.
#[derive(Default)]
pub(super) struct CacheSources {
    images: Vec<(String, Value)>,
}

/// A source that continues the parent with the step.
pub(super) struct SourceHit<'a> {
    pub id: &'a str,
    pub config: &'a Value,
    /// The source's history entry for the step.
    pub entry: &'a Value,
    /// The layer that entry made (`None` for a config-only step).
    pub diff_id: Option<&'a str>,
    /// The entry is the source's last: the step's result is the source itself.
    pub last: bool,
}

fn history(config: &Value) -> &[Value] {
    config["history"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn diff_ids(config: &Value) -> Vec<&str> {
    config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn makes_layer(entry: &Value) -> bool {
    !entry["empty_layer"].as_bool().unwrap_or(false)
}

impl CacheSources {
    /// Names that resolve to no local image are skipped, as dockerd does; the build
    /// says so.
    pub fn resolve(images: &ImageStore, names: &[String]) -> (CacheSources, Vec<String>) {
        let mut out = CacheSources::default();
        let mut skipped = Vec::new();
        for name in names {
            let config = images.resolve(name).ok().and_then(|id| {
                let raw = images.read_blob(&id).ok()?;
                Some((id, serde_json::from_slice::<Value>(&raw).ok()?))
            });
            match config {
                Some(c) => out.images.push(c),
                None => skipped.push(name.clone()),
            }
        }
        (out, skipped)
    }

    /// The first source that starts with `parent` (the whole image config; an empty one
    /// for scratch) and continues it with an entry made by `created_by`.
    pub fn find(&self, parent: &Value, created_by: &str) -> Option<SourceHit<'_>> {
        let (p_history, p_layers) = (history(parent), diff_ids(parent));
        let n = p_history.len();
        self.images.iter().find_map(|(id, config)| {
            let s_history = history(config);
            let s_layers = diff_ids(config);
            let entry = s_history.get(n)?;
            if entry["created_by"].as_str() != Some(created_by)
                || s_history[..n] != *p_history
                || !s_layers.starts_with(&p_layers)
            {
                return None;
            }
            // The layers of the entries up to the parent's end must be the parent's.
            let layers_before = s_history[..n].iter().filter(|h| makes_layer(h)).count();
            if layers_before != p_layers.len() {
                return None;
            }
            let diff_id = match makes_layer(entry) {
                true => Some(*s_layers.get(layers_before)?),
                false => None,
            };
            Some(SourceHit {
                id,
                config,
                entry,
                diff_id,
                last: s_history.len() == n + 1,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn image(history: &[(&str, bool)], layers: &[&str]) -> Value {
        json!({
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": layers },
            "history": history.iter().map(|(by, empty)| if *empty {
                json!({ "created": "2026-01-01T00:00:00Z", "created_by": by, "empty_layer": true })
            } else {
                json!({ "created": "2026-01-01T00:00:00Z", "created_by": by })
            }).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn continues_the_parent_step_by_step() {
        let base = image(&[("ADD rootfs", false)], &["sha256:l0"]);
        let source = image(
            &[
                ("ADD rootfs", false),
                ("/bin/sh -c make", false),
                ("/bin/sh -c #(nop)  CMD [\"app\"]", true),
            ],
            &["sha256:l0", "sha256:l1"],
        );
        let sources = CacheSources {
            images: vec![("sha256:src".into(), source.clone())],
        };
        let hit = sources.find(&base, "/bin/sh -c make").unwrap();
        assert_eq!(hit.diff_id, Some("sha256:l1"));
        assert!(!hit.last);
        assert!(sources.find(&base, "/bin/sh -c other").is_none());
        // The next step, from the image the first one restored.
        let mid = image(
            &[("ADD rootfs", false), ("/bin/sh -c make", false)],
            &["sha256:l0", "sha256:l1"],
        );
        let hit = sources
            .find(&mid, "/bin/sh -c #(nop)  CMD [\"app\"]")
            .unwrap();
        assert!(hit.last && hit.diff_id.is_none());
        assert_eq!(hit.id, "sha256:src");
    }

    #[test]
    fn a_different_parent_is_no_match() {
        let other_base = image(&[("ADD other", false)], &["sha256:x"]);
        let source = image(
            &[("ADD rootfs", false), ("/bin/sh -c make", false)],
            &["sha256:l0", "sha256:l1"],
        );
        let sources = CacheSources {
            images: vec![("sha256:src".into(), source)],
        };
        assert!(sources.find(&other_base, "/bin/sh -c make").is_none());
        assert!(sources.find(&json!({}), "/bin/sh -c make").is_none());
        assert!(CacheSources::default().find(&json!({}), "x").is_none());
    }
}
