//! `docker import`: one tarball (maybe compressed, from the request body or a URL)
//! becomes a single-layer image, with Dockerfile-style `--change`s applied.

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::reference::{self, Reference};
use super::{digest, BlobRef, ImageStore, LayerRecord, NewImage, Progress};
use crate::{Error, Result};

pub enum ImportSource {
    /// The request body (`fromSrc=-`).
    Body(Box<dyn AsyncRead + Unpin + Send>),
    /// `fromSrc=http(s)://…`
    Url(String),
}

/// Split a shell-ish word list, honouring double and single quotes.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn exec_form(rest: &str) -> Vec<String> {
    let t = rest.trim();
    if t.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<Vec<String>>(t) {
            return v;
        }
    }
    vec!["/bin/sh".into(), "-c".into(), t.to_string()]
}

fn kv_pairs(rest: &str) -> Vec<(String, String)> {
    let ws = words(rest);
    if ws.len() >= 2 && !ws[0].contains('=') {
        // Legacy `ENV key value with spaces`.
        let (k, v) = rest
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((rest, ""));
        return vec![(k.to_string(), v.trim().to_string())];
    }
    ws.into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (w, String::new()),
        })
        .collect()
}

/// Apply `--change` instructions to a Docker `config` object.
pub fn apply_changes(config: &mut Map<String, Value>, changes: &[String]) -> Result<()> {
    for ch in changes {
        let ch = ch.trim();
        if ch.is_empty() {
            continue;
        }
        let (instr, rest) = ch.split_once(char::is_whitespace).unwrap_or((ch, ""));
        let rest = rest.trim();
        match instr.to_ascii_uppercase().as_str() {
            "CMD" => {
                config.insert("Cmd".into(), json!(exec_form(rest)));
            }
            "ENTRYPOINT" => {
                config.insert("Entrypoint".into(), json!(exec_form(rest)));
            }
            "ENV" => {
                let mut env: Vec<String> = config
                    .get("Env")
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or_default();
                for (k, v) in kv_pairs(rest) {
                    env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k.as_str()));
                    env.push(format!("{k}={v}"));
                }
                config.insert("Env".into(), json!(env));
            }
            "LABEL" => {
                let labels = config.entry("Labels").or_insert_with(|| json!({}));
                if labels.is_null() {
                    *labels = json!({});
                }
                for (k, v) in kv_pairs(rest) {
                    labels[k] = json!(v);
                }
            }
            "EXPOSE" => {
                let ports = config.entry("ExposedPorts").or_insert_with(|| json!({}));
                for p in words(rest) {
                    let p = if p.contains('/') {
                        p
                    } else {
                        format!("{p}/tcp")
                    };
                    ports[p] = json!({});
                }
            }
            "VOLUME" => {
                let vols = config.entry("Volumes").or_insert_with(|| json!({}));
                let list = if rest.starts_with('[') {
                    serde_json::from_str::<Vec<String>>(rest)
                        .map_err(|e| Error::invalid(format!("invalid VOLUME: {e}")))?
                } else {
                    words(rest)
                };
                for v in list {
                    vols[v] = json!({});
                }
            }
            "USER" => {
                config.insert("User".into(), json!(rest));
            }
            "WORKDIR" => {
                config.insert("WorkingDir".into(), json!(rest));
            }
            "STOPSIGNAL" => {
                config.insert("StopSignal".into(), json!(rest));
            }
            "HEALTHCHECK" => {
                config.insert("Healthcheck".into(), healthcheck(rest)?);
            }
            "ONBUILD" => {
                let ob = config.entry("OnBuild").or_insert_with(|| json!([]));
                if let Some(a) = ob.as_array_mut() {
                    a.push(json!(rest));
                }
            }
            other => {
                return Err(Error::invalid(format!(
                    "{} is not a valid change command",
                    other.to_lowercase()
                )));
            }
        }
    }
    Ok(())
}

/// `HEALTHCHECK [--interval=D] [--timeout=D] [--start-period=D] [--start-interval=D]
/// [--retries=N] CMD ...` or `HEALTHCHECK NONE`, as Docker's `Healthcheck` object.
fn healthcheck(rest: &str) -> Result<Value> {
    let bad = |m: String| Error::invalid(format!("HEALTHCHECK: {m}"));
    let mut hc = Map::new();
    let mut rest = rest.trim();
    while let Some(flag) = rest.strip_prefix("--") {
        let (opt, tail) = flag.split_once(char::is_whitespace).unwrap_or((flag, ""));
        let (name, value) = opt
            .split_once('=')
            .ok_or_else(|| bad(format!("flag --{opt} needs a value")))?;
        let key = match name {
            "interval" => "Interval",
            "timeout" => "Timeout",
            "start-period" => "StartPeriod",
            "start-interval" => "StartInterval",
            "retries" => "Retries",
            other => return Err(bad(format!("unknown flag: --{other}"))),
        };
        let n = if key == "Retries" {
            value
                .parse::<i64>()
                .map_err(|_| bad(format!("invalid --retries {value:?}")))?
        } else {
            crate::fsutil::parse_go_duration(value)
                .ok_or_else(|| bad(format!("invalid --{name} {value:?}")))?
        };
        hc.insert(key.into(), json!(n));
        rest = tail.trim_start();
    }
    let (kind, cmd) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let test = match kind.to_ascii_uppercase().as_str() {
        "NONE" if cmd.trim().is_empty() => json!(["NONE"]),
        "CMD" if cmd.trim_start().starts_with('[') => {
            let argv: Vec<String> = serde_json::from_str(cmd.trim())
                .map_err(|e| bad(format!("invalid JSON command: {e}")))?;
            let mut t = vec!["CMD".to_string()];
            t.extend(argv);
            json!(t)
        }
        "CMD" if !cmd.trim().is_empty() => json!(["CMD-SHELL", cmd.trim()]),
        _ => return Err(bad("expected CMD <command> or NONE".into())),
    };
    hc.insert("Test".into(), test);
    Ok(Value::Object(hc))
}

/// The reference an import is tagged with (`repo` may carry its own tag).
fn import_ref(repo: &str, tag: &str) -> Result<Option<Reference>> {
    if repo.is_empty() {
        return Ok(None);
    }
    let mut r = Reference::parse(repo)?;
    if r.digest.is_some() {
        return Err(Error::invalid("cannot import digest reference"));
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
    Ok(Some(r))
}

pub struct ImportOptions {
    pub repo: String,
    pub tag: String,
    pub message: String,
    pub changes: Vec<String>,
}

impl ImageStore {
    /// `POST /images/create?fromSrc=`. Returns the new image ID.
    pub async fn import(
        self: &Arc<Self>,
        src: ImportSource,
        opts: ImportOptions,
        progress: Progress,
    ) -> Result<String> {
        let mut config = Map::new();
        let checked = import_ref(&opts.repo, &opts.tag)
            .and_then(|t| apply_changes(&mut config, &opts.changes).map(|_| t));
        let target = match checked {
            Ok(t) => t,
            Err(e) => {
                // Read an uploaded body to its end first: a client still sending would see
                // a broken pipe instead of this error.
                if let ImportSource::Body(mut body) = src {
                    let _ = tokio::io::copy(&mut body, &mut tokio::io::sink()).await;
                }
                return Err(e);
            }
        };
        let tmp = tempfile::Builder::new()
            .prefix("import-")
            .tempfile_in(self.tmp_dir())?;
        let path = tmp.path().to_path_buf();
        let src_name = match src {
            ImportSource::Body(mut body) => {
                let mut f = tokio::fs::File::create(&path).await?;
                tokio::io::copy(&mut body, &mut f)
                    .await
                    .map_err(|e| Error::invalid(format!("reading import body: {e}")))?;
                f.flush().await?;
                "-".to_string()
            }
            ImportSource::Url(url) => {
                self.download(&url, &path, &progress).await?;
                url
            }
        };
        let store = self.clone();
        let message = opts.message.clone();
        let (id, layer) = tokio::task::spawn_blocking(move || -> Result<(String, LayerRecord)> {
            let f = std::fs::File::open(&path)?;
            let (_, plain) = digest::decompress(f)
                .map_err(|e| Error::invalid(format!("invalid archive: {e}")))?;
            // Keep the uncompressed tar as the blob: its digest is the diff ID.
            let btmp = tempfile::Builder::new()
                .prefix("blob-")
                .tempfile_in(store.tmp_dir())?;
            let mut tee = digest::TeeReader::new(plain, BufWriter::new(btmp.reopen()?));
            let mut guard = store.pending_guard();
            let (diff_id, tar_size, size) = store.ingest_layer(&mut tee, None, &mut guard)?;
            std::io::copy(&mut tee, &mut std::io::sink())?;
            let f = tee
                .into_writer()
                .into_inner()
                .map_err(|e| Error::from(e.into_error()))?;
            f.sync_data()?;
            let bpath = store.blob_path(&diff_id);
            if !bpath.exists() {
                btmp.persist(&bpath).map_err(|e| Error::from(e.error))?;
            }
            let layer = LayerRecord {
                diff_id: diff_id.clone(),
                tar_size,
                size,
                blob: BlobRef {
                    digest: diff_id.clone(),
                    media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                    size: tar_size,
                },
                gzip: None,
            };
            let now = crate::fsutil::now_rfc3339();
            let comment = if message.is_empty() {
                format!("Imported from {src_name}")
            } else {
                message.clone()
            };
            let mut top = BTreeMap::new();
            top.insert("architecture", json!("amd64"));
            top.insert("comment", json!(comment));
            top.insert("config", Value::Object(config));
            top.insert("created", json!(now));
            top.insert("history", json!([{ "created": now, "comment": comment }]));
            top.insert("os", json!("linux"));
            top.insert("rootfs", json!({ "type": "layers", "diff_ids": [diff_id] }));
            let raw = serde_json::to_vec(&top).map_err(Error::internal)?;
            let (id, _) = store.commit(NewImage {
                config: raw,
                layers: vec![layer.clone()],
                refs: target.clone().into_iter().collect(),
                parent: None,
            })?;
            drop(tmp);
            Ok((id, layer))
        })
        .await
        .map_err(Error::internal)??;
        let name = target_name(&opts.repo, &opts.tag).unwrap_or_else(|| id.clone());
        self.events
            .publish("image", "import", &id, [("name", name)]);
        tracing::debug!(id = %id, layer = %layer.diff_id, "imported image");
        progress.send(json!({ "status": id })).await?;
        Ok(id)
    }

    /// Fetch a URL import to `path`, bounded: at most `max_download_bytes`, and no stall
    /// longer than [`DOWNLOAD_STALL`] (connect included), so a hostile or dead server can
    /// neither fill the disk nor hold the request forever.
    async fn download(&self, url: &str, path: &std::path::Path, progress: &Progress) -> Result<()> {
        let max = self.max_download_bytes;
        let fail = |m: String| Error::invalid(format!("import {url}: {m}"));
        let client = super::trust::web_client_builder()
            .connect_timeout(DOWNLOAD_STALL)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let resp = tokio::time::timeout(DOWNLOAD_STALL, client.get(url).send())
            .await
            .map_err(|_| fail(format!("no response within {}s", DOWNLOAD_STALL.as_secs())))?
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        let too_big = || {
            fail(format!(
                "the image is larger than the daemon's limit of {max} bytes (--max-download-size)"
            ))
        };
        let total = resp.content_length().unwrap_or(0);
        if total > max {
            return Err(too_big());
        }
        let mut f = tokio::fs::File::create(path).await?;
        let mut stream = resp.bytes_stream();
        let mut got = 0u64;
        let mut last = std::time::Instant::now();
        loop {
            let next = tokio::time::timeout(DOWNLOAD_STALL, stream.next())
                .await
                .map_err(|_| fail(format!("no data for {}s", DOWNLOAD_STALL.as_secs())))?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| fail(e.to_string()))?;
            got += chunk.len() as u64;
            if got > max {
                return Err(too_big());
            }
            f.write_all(&chunk).await?;
            if last.elapsed().as_millis() > 100 {
                progress
                    .layer_progress("", "Downloading", got, total)
                    .await?;
                last = std::time::Instant::now();
            }
        }
        f.flush().await?;
        Ok(())
    }
}

/// How long a URL import may go without a byte.
const DOWNLOAD_STALL: std::time::Duration = std::time::Duration::from_secs(60);

fn target_name(repo: &str, tag: &str) -> Option<String> {
    import_ref(repo, tag).ok().flatten().map(|r| r.familiar())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_like_dockerfile() {
        let mut c = Map::new();
        apply_changes(
            &mut c,
            &[
                "CMD [\"/bin/sh\",\"-c\",\"echo hi\"]".into(),
                "ENTRYPOINT top -b".into(),
                "ENV A=1 B=\"two words\"".into(),
                "ENV LEGACY some value".into(),
                "EXPOSE 80 53/udp".into(),
                "LABEL a=b".into(),
                "WORKDIR /srv".into(),
                "USER 1000".into(),
                "VOLUME /data".into(),
                "STOPSIGNAL SIGINT".into(),
                "HEALTHCHECK --interval=1m30s --retries=2 CMD curl -f http://x/".into(),
            ],
        )
        .unwrap();
        let v = Value::Object(c);
        assert_eq!(v["Cmd"], json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(v["Entrypoint"], json!(["/bin/sh", "-c", "top -b"]));
        assert_eq!(v["Env"], json!(["A=1", "B=two words", "LEGACY=some value"]));
        assert_eq!(v["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
        assert_eq!(v["Labels"], json!({"a": "b"}));
        assert_eq!(v["WorkingDir"], "/srv");
        assert_eq!(v["User"], "1000");
        assert_eq!(v["Volumes"], json!({"/data": {}}));
        assert_eq!(v["StopSignal"], "SIGINT");
        assert_eq!(
            v["Healthcheck"],
            json!({"Test": ["CMD-SHELL", "curl -f http://x/"], "Interval": 90_000_000_000i64, "Retries": 2})
        );
        let mut c = Map::new();
        apply_changes(&mut c, &["HEALTHCHECK NONE".into()]).unwrap();
        assert_eq!(c["Healthcheck"], json!({"Test": ["NONE"]}));
        assert!(apply_changes(&mut c, &["HEALTHCHECK --bogus=1 CMD true".into()]).is_err());
        let mut c = Map::new();
        assert!(apply_changes(&mut c, &["RUN rm -rf /".into()]).is_err());
    }
}
