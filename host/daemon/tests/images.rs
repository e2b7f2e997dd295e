//! Image endpoints end to end: a real berthd driven by the real `docker` CLI and by
//! bollard; pull/push against Debian's `docker-registry` on loopback; hostile and
//! interrupted loads.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::images::busybox_tar;
use common::registry::{bcrypt_secret, free_port, start_registry};
use common::{stderr, stdout, TestDaemon};
use futures::StreamExt;
use serde_json::{json, Value};

// ---- helpers ---------------------------------------------------------------------------

fn sha256_hex(data: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A tar member with a raw name and link name (the tar crate's setters refuse `..`).
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    data: &[u8],
    link: Option<&str>,
) {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn tar_of(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    f(&mut b);
    b.into_inner().unwrap()
}

/// A docker-archive (`manifest.json`) holding one image made of `layers`.
/// `diff_ids` overrides the config's diff IDs (to forge a mismatch).
fn docker_archive(tag: &str, layers: &[Vec<u8>], diff_ids: Option<Vec<String>>) -> Vec<u8> {
    let diffs = diff_ids.unwrap_or_else(|| {
        layers
            .iter()
            .map(|l| format!("sha256:{}", sha256_hex(l)))
            .collect()
    });
    let cfg = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "created": "2025-01-01T00:00:00Z",
        "config": { "Cmd": ["/bin/sh"], "Labels": { "test": "images" } },
        "rootfs": { "type": "layers", "diff_ids": diffs },
        "history": layers.iter().enumerate().map(|(i, _)| json!({"created": "2025-01-01T00:00:00Z", "created_by": format!("layer {i}")})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let cfg_name = format!("{}.json", sha256_hex(&cfg));
    tar_of(|b| {
        let mut paths = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let p = format!("layer{i}/layer.tar");
            raw_entry(b, &p, tar::EntryType::Regular, l, None);
            paths.push(p);
        }
        raw_entry(b, &cfg_name, tar::EntryType::Regular, &cfg, None);
        let m = json!([{ "Config": cfg_name, "RepoTags": [tag], "Layers": paths }]);
        raw_entry(
            b,
            "manifest.json",
            tar::EntryType::Regular,
            &serde_json::to_vec(&m).unwrap(),
            None,
        );
    })
}

/// Deterministic pseudo-random bytes (incompressible, so sizes are honest).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn data_layer(name: &str, size: usize, seed: u64) -> Vec<u8> {
    tar_of(|b| {
        raw_entry(b, "data/", tar::EntryType::Directory, b"", None);
        raw_entry(
            b,
            &format!("data/{name}"),
            tar::EntryType::Regular,
            &noise(size, seed),
            None,
        );
    })
}

fn docker_load_bytes(d: &TestDaemon, data: &[u8]) -> std::process::Output {
    let mut c = d
        .docker_cmd(&["load"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let data = data.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = c.wait_with_output().unwrap();
    w.join().unwrap();
    out
}

fn dir_entries(p: &Path) -> Vec<String> {
    std::fs::read_dir(p)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// No image, no layer dir, no temp file left in the daemon's store.
fn assert_store_empty(d: &TestDaemon) {
    let ids = d.docker_ok(&["images", "-aq"]);
    assert!(ids.trim().is_empty(), "images left: {ids}");
    let root = d.data_root.join("images");
    assert_eq!(
        dir_entries(&root.join("layers")),
        Vec::<String>::new(),
        "layer dirs left"
    );
    assert_eq!(
        dir_entries(&root.join("tmp")),
        Vec::<String>::new(),
        "temp files left"
    );
}

/// Serve `files` (path → bytes) over HTTP on loopback; returns the base URL.
fn serve_files(files: HashMap<String, Vec<u8>>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            match files.get(&path) {
                Some(body) => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(body);
                }
                None => {
                    let _ = s.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            }
        }
    });
    base
}

fn compress(data: &[u8], cmd: &str) -> Vec<u8> {
    let mut c = Command::new(cmd)
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let d = data.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&d).unwrap());
    let out = c.wait_with_output().unwrap();
    w.join().unwrap();
    assert!(out.status.success(), "{cmd} failed");
    out.stdout
}

fn inspect(d: &TestDaemon, name: &str) -> Value {
    let out = d.docker_ok(&["image", "inspect", name]);
    serde_json::from_str::<Value>(&out).unwrap()[0].clone()
}

// ---- tests -----------------------------------------------------------------------------

#[test]
fn cli_import_tag_inspect_history_save_load_rmi() {
    let d = common::images::daemon_with_busybox("bb:local");
    let id = inspect(&d, "bb:local")["Id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let diff = format!(
        "sha256:{}",
        sha256_hex(&std::fs::read(busybox_tar()).unwrap())
    );
    assert_eq!(
        inspect(&d, "bb:local")["RootFS"],
        json!({"Type": "layers", "Layers": [diff]})
    );

    d.docker_ok(&["tag", "bb:local", "bb:v2"]);
    d.docker_ok(&["tag", "bb:local", "example.com:5000/team/bb:3"]);
    let ins = inspect(&d, &id[7..19]);
    let mut tags: Vec<String> = serde_json::from_value(ins["RepoTags"].clone()).unwrap();
    tags.sort();
    assert_eq!(
        tags,
        vec!["bb:local", "bb:v2", "example.com:5000/team/bb:3"]
    );
    assert_eq!(ins["Os"], "linux");
    assert_eq!(ins["Architecture"], "amd64");
    assert!(ins["Size"].as_u64().unwrap() > 1_000_000);

    let table = d.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    assert!(
        table.contains("bb:local ") && table.contains("example.com:5000/team/bb:3"),
        "{table}"
    );
    let filtered = d.docker_ok(&[
        "images",
        "--filter",
        "reference=bb:v*",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]);
    assert_eq!(filtered.trim(), "bb:v2");
    let dangling = d.docker_ok(&["images", "-q", "--filter", "dangling=true"]);
    assert!(dangling.trim().is_empty());
    let by_label = d.docker_ok(&["images", "-q", "--filter", "label=nope"]);
    assert!(by_label.trim().is_empty());

    let hist = d.docker_ok(&["history", "--no-trunc", "bb:local"]);
    assert!(
        hist.contains("Imported from -") && hist.contains(&id),
        "{hist}"
    );

    // save → remove → load gives back the same image.
    let saved = d.dir.path().join("bb.tar");
    d.docker_ok(&["save", "-o", saved.to_str().unwrap(), "bb:local", "bb:v2"]);
    let err = d.docker_err(&["rmi", &id]);
    assert!(
        err.contains("must be forced") && err.contains("referenced in multiple repositories"),
        "{err}"
    );
    let out = d.docker_ok(&["rmi", "bb:v2"]);
    assert_eq!(out.trim(), "Untagged: bb:v2");
    let out = d.docker_ok(&["rmi", "-f", &id]);
    assert!(
        out.contains("Untagged: bb:local") && out.contains(&format!("Deleted: {id}")),
        "{out}"
    );
    assert_store_empty(&d);
    let out = d.docker_ok(&["load", "-i", saved.to_str().unwrap()]);
    assert!(
        out.contains("Loaded image: bb:local") && out.contains("Loaded image: bb:v2"),
        "{out}"
    );
    assert_eq!(inspect(&d, "bb:v2")["Id"], id.as_str());

    // Errors in Docker's words.
    let err = d.docker_err(&["image", "inspect", "nope"]);
    assert!(err.contains("No such image: nope:latest"), "{err}");
    let err = d.docker_err(&["rmi", "nope:1"]);
    assert!(err.contains("No such image: nope:1"), "{err}");
    let err = d.docker_err(&["tag", "bb:local", "Bad/Name"]);
    assert!(err.contains("invalid reference format"), "{err}");
    let err = d.docker_err(&[
        "save",
        "-o",
        d.dir.path().join("m.tar").to_str().unwrap(),
        "missing:x",
    ]);
    assert!(err.contains("No such image: missing:x"), "{err}");

    // The store survives a daemon restart.
    let mut d = d;
    d.restart();
    assert_eq!(inspect(&d, "bb:local")["Id"], id.as_str());
}

#[test]
fn import_from_stdin_and_url_with_every_compression() {
    let d = TestDaemon::start();
    let plain = std::fs::read(busybox_tar()).unwrap();
    let diff = format!("sha256:{}", sha256_hex(&plain));
    let mut files = HashMap::new();
    files.insert("/rootfs.tar".to_string(), plain.clone());
    files.insert("/rootfs.tar.gz".to_string(), compress(&plain, "gzip"));
    files.insert("/rootfs.tar.xz".to_string(), compress(&plain, "xz"));
    files.insert("/rootfs.tar.zst".to_string(), compress(&plain, "zstd"));
    let base = serve_files(files.clone());
    for (i, ext) in ["tar", "tar.gz", "tar.xz", "tar.zst"].iter().enumerate() {
        let name = format!("imp:{i}");
        let out = d.docker_ok(&["import", &format!("{base}/rootfs.{ext}"), &name]);
        assert!(out.trim().starts_with("sha256:"), "{out}");
        assert_eq!(
            inspect(&d, &name)["RootFS"]["Layers"],
            json!([diff]),
            "{ext}"
        );
    }
    // Two imports of the same content share one unpacked layer.
    assert_eq!(dir_entries(&d.data_root.join("images/layers")).len(), 1);

    // stdin, xz-compressed, with --change and --message.
    let xz = files["/rootfs.tar.xz"].clone();
    let mut c = d
        .docker_cmd(&[
            "import",
            "-m",
            "hello msg",
            "-c",
            "CMD [\"/bin/sh\",\"-c\",\"echo hi\"]",
            "-c",
            "ENV A=1",
            "-c",
            "EXPOSE 8080",
            "-",
            "imp:stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(&xz).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let ins = inspect(&d, "imp:stdin");
    assert_eq!(ins["Config"]["Cmd"], json!(["/bin/sh", "-c", "echo hi"]));
    assert_eq!(ins["Config"]["Env"], json!(["A=1"]));
    assert_eq!(ins["Config"]["ExposedPorts"], json!({"8080/tcp": {}}));
    assert_eq!(ins["Comment"], "hello msg");

    let err = d.docker_err(&["import", &format!("{base}/missing.tar"), "imp:x"]);
    assert!(err.contains("404"), "{err}");
    let err = d.docker_err(&[
        "import",
        "-c",
        "RUN rm -rf /",
        &format!("{base}/rootfs.tar"),
        "imp:x",
    ]);
    assert!(err.contains("not a valid change command"), "{err}");
}

#[test]
fn oci_layout_archives_load() {
    let d = common::images::daemon_with_busybox("bb:local");
    let saved = d.dir.path().join("bb.tar");
    d.docker_ok(&["save", "-o", saved.to_str().unwrap(), "bb:local"]);
    // Our save is also an OCI layout: load it through index.json alone.
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            &format!("oci-archive:{}", saved.display()),
            &format!(
                "oci-archive:{}:bb:oci",
                d.dir.path().join("oci.tar").display()
            ),
        ])
        .output();
    let Ok(out) = out else {
        panic!("skopeo is required (apt-get install skopeo)");
    };
    assert!(out.status.success(), "skopeo: {}", stderr(&out));
    let out = d.docker_ok(&["load", "-i", d.dir.path().join("oci.tar").to_str().unwrap()]);
    assert!(out.contains("Loaded image"), "{out}");
    let orig = inspect(&d, "bb:local");
    let ids = d.docker_ok(&["images", "-q", "--no-trunc"]);
    assert!(ids.lines().count() >= 1);
    // Whatever skopeo rewrote, the layer content is the same.
    for id in ids.lines() {
        assert_eq!(inspect(&d, id)["RootFS"], orig["RootFS"]);
    }
}

#[test]
fn hostile_archives_are_refused_and_leave_nothing() {
    let d = TestDaemon::start();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().display().to_string();
    let ok_layer = tar_of(|b| raw_entry(b, "ok", tar::EntryType::Regular, b"fine", None));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            docker_archive(
                "h:1",
                &[tar_of(|b| {
                    raw_entry(b, "../../escaped", tar::EntryType::Regular, b"x", None)
                })],
                None,
            ),
            "escapes the layer root",
        ),
        (
            "absolute",
            docker_archive(
                "h:1",
                &[tar_of(|b| {
                    raw_entry(b, "/escaped", tar::EntryType::Regular, b"x", None)
                })],
                None,
            ),
            "absolute path",
        ),
        (
            "write through symlink",
            docker_archive(
                "h:1",
                &[tar_of(|b| {
                    raw_entry(b, "lnk", tar::EntryType::Symlink, b"", Some(&target));
                    raw_entry(b, "lnk/escaped", tar::EntryType::Regular, b"x", None);
                })],
                None,
            ),
            "symlink",
        ),
        (
            "escaping symlink",
            docker_archive(
                "h:1",
                &[tar_of(|b| {
                    raw_entry(
                        b,
                        "a",
                        tar::EntryType::Symlink,
                        b"",
                        Some("../../../etc/shadow"),
                    )
                })],
                None,
            ),
            "points outside",
        ),
        (
            "escaping hardlink",
            docker_archive(
                "h:1",
                &[tar_of(|b| {
                    raw_entry(b, "hl", tar::EntryType::Link, b"", Some("../../etc/shadow"))
                })],
                None,
            ),
            "points outside",
        ),
        (
            "device node",
            docker_archive(
                "h:1",
                &[tar_of(|b| {
                    raw_entry(b, "dev/sda", tar::EntryType::Block, b"", None)
                })],
                None,
            ),
            "device nodes",
        ),
        (
            "diff id mismatch",
            docker_archive(
                "h:1",
                std::slice::from_ref(&ok_layer),
                Some(vec![format!("sha256:{}", "0".repeat(64))]),
            ),
            "digest mismatch",
        ),
        ("garbage", b"this is not a tarball".repeat(100), "invalid"),
    ];
    for (what, data, needle) in cases {
        let out = docker_load_bytes(&d, &data);
        assert!(!out.status.success(), "{what}: load succeeded");
        let err = stderr(&out);
        assert!(err.contains(needle), "{what}: {err}");
        assert!(
            !outside.path().join("escaped").exists(),
            "{what}: wrote outside the layer"
        );
        assert_store_empty(&d);
    }
    // A truncated archive (cut in the middle of the layer data).
    let big = docker_archive("h:1", &[data_layer("blob", 200_000, 1)], None);
    let out = docker_load_bytes(&d, &big[..big.len() / 2]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("invalid"), "{}", stderr(&out));
    assert_store_empty(&d);
    // Hostile import (the import path uses the same unpacker).
    let mut c = d
        .docker_cmd(&["import", "-", "h:imp"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(&tar_of(|b| {
            raw_entry(b, "../x", tar::EntryType::Regular, b"x", None)
        }))
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        !out.status.success() && stderr(&out).contains("escapes"),
        "{}",
        stderr(&out)
    );
    assert_store_empty(&d);
    // And a good archive still loads afterwards.
    let out = docker_load_bytes(&d, &docker_archive("good:1", &[ok_layer], None));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Loaded image: good:1"));
}

#[test]
fn interrupted_loads_leave_no_half_image() {
    let mut d = TestDaemon::start();
    let archive = docker_archive("big:1", &[data_layer("a", 24 << 20, 7)], None);
    // 1. The client dies mid-upload.
    let mut c = d
        .docker_cmd(&["load"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    stdin.write_all(&archive[..8 << 20]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.kill().unwrap();
    let _ = c.wait();
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir_entries(&d.data_root.join("images/tmp")).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_store_empty(&d);
    // 2. The daemon dies mid-upload (SIGKILL, no cleanup); the next start cleans up.
    let mut c = d
        .docker_cmd(&["load"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    stdin.write_all(&archive[..12 << 20]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !dir_entries(&d.data_root.join("images/tmp")).is_empty(),
        "the upload should be in progress"
    );
    d.kill();
    let _ = c.kill();
    let _ = c.wait();
    d.restart();
    assert_store_empty(&d);
    // A complete load works after all that.
    let out = docker_load_bytes(&d, &archive);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `docker push` then `docker pull` through a real registry, plus the progress stream
/// as bollard sees it, and a registry that is down.
#[test]
fn registry_push_pull_progress() {
    let Some(reg) = start_registry(None) else {
        return;
    };
    let d = TestDaemon::start();
    let repo = format!("{}/multi", reg.addr);
    let layers = vec![
        std::fs::read(busybox_tar()).unwrap(),
        data_layer("one", 300_000, 2),
        data_layer("two", 200_000, 3),
    ];
    let out = docker_load_bytes(&d, &docker_archive(&format!("{repo}:1"), &layers, None));
    assert!(out.status.success(), "{}", stderr(&out));
    let id = inspect(&d, &format!("{repo}:1"))["Id"]
        .as_str()
        .unwrap()
        .to_string();

    let out = d.docker_ok(&["push", &format!("{repo}:1")]);
    assert!(
        out.contains(&format!("The push refers to repository [{repo}]")),
        "{out}"
    );
    assert_eq!(out.matches(": Pushed").count(), 3, "{out}");
    let digest_line = out
        .lines()
        .find(|l| l.starts_with("1: digest: sha256:"))
        .unwrap_or_else(|| panic!("{out}"));
    let digest = digest_line.split_whitespace().nth(2).unwrap().to_string();

    // Removed and loaded again: the registry is asked about the gzip digests it was
    // given before, and nothing is compressed or uploaded again.
    d.docker_ok(&["rmi", &format!("{repo}:1")]);
    let out = docker_load_bytes(&d, &docker_archive(&format!("{repo}:1"), &layers, None));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.docker_ok(&["push", &format!("{repo}:1")]);
    assert_eq!(out.matches(": Layer already exists").count(), 3, "{out}");
    assert!(out.contains(&digest), "{out}");

    d.docker_ok(&["rmi", &format!("{repo}:1")]);
    assert_store_empty(&d);
    let out = d.docker_ok(&["pull", &format!("{repo}:1")]);
    assert_eq!(out.matches(": Pull complete").count(), 3, "{out}");
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert!(
        out.contains(&format!("Status: Downloaded newer image for {repo}:1")),
        "{out}"
    );
    assert_eq!(inspect(&d, &format!("{repo}:1"))["Id"], id.as_str());
    assert_eq!(
        inspect(&d, &format!("{repo}:1"))["RepoDigests"],
        json!([format!("{repo}@{digest}")])
    );
    let out = d.docker_ok(&["pull", &format!("{repo}:1")]);
    assert!(
        out.contains(&format!("Status: Image is up to date for {repo}:1")),
        "{out}"
    );
    // By digest.
    d.docker_ok(&["rmi", &format!("{repo}:1")]);
    d.docker_ok(&["pull", &format!("{repo}@{digest}")]);
    assert_eq!(inspect(&d, &format!("{repo}@{digest}"))["Id"], id.as_str());

    // The JSON stream as a client library sees it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let docker = d.bollard();
        docker
            .remove_image(
                &format!("{repo}@{digest}"),
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
            .unwrap();
        let opts = bollard::query_parameters::CreateImageOptions {
            from_image: Some(repo.clone()),
            tag: Some("1".into()),
            ..Default::default()
        };
        let msgs: Vec<_> = docker.create_image(Some(opts), None, None).collect().await;
        let statuses: Vec<String> = msgs
            .into_iter()
            .map(|m| m.unwrap().status.unwrap_or_default())
            .collect();
        for want in [
            "Pulling from multi",
            "Pulling fs layer",
            "Verifying Checksum",
            "Download complete",
            "Pull complete",
        ] {
            assert!(
                statuses.iter().any(|s| s == want),
                "{want} missing in {statuses:?}"
            );
        }
        // Push: per-layer states and the aux digest record.
        docker
            .tag_image(
                &format!("{repo}:1"),
                Some(bollard::query_parameters::TagImageOptions {
                    repo: Some(repo.clone()),
                    tag: Some("2".into()),
                }),
            )
            .await
            .unwrap();
        let opts = bollard::query_parameters::PushImageOptions {
            tag: Some("2".into()),
            ..Default::default()
        };
        let msgs: Vec<_> = docker.push_image(&repo, Some(opts), None).collect().await;
        let msgs: Vec<_> = msgs.into_iter().map(|m| m.unwrap()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.status.as_deref() == Some("Layer already exists")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m
                .status
                .as_deref()
                .is_some_and(|s| s.starts_with(&format!("2: digest: {digest}")))),
            "{msgs:?}"
        );
        // A pull error after streaming started is reported in-band; before, as HTTP.
        let opts = bollard::query_parameters::CreateImageOptions {
            from_image: Some(format!("{}/nothere", reg.addr)),
            tag: Some("1".into()),
            ..Default::default()
        };
        let first = docker
            .create_image(Some(opts), None, None)
            .next()
            .await
            .unwrap();
        let e = first.unwrap_err().to_string();
        assert!(
            e.contains("not found") && e.contains("manifest unknown"),
            "{e}"
        );
    });

    // A registry that is down: a clear error, nothing registered.
    let down = format!("127.0.0.1:{}/x:1", free_port());
    let err = d.docker_err(&["pull", &down]);
    assert!(
        err.contains("unreachable") && err.contains("onnection refused"),
        "{err}"
    );
    let err = d.docker_err(&["push", &format!("{}/never:1", reg.addr)]);
    assert!(
        err.contains("An image does not exist locally with the tag"),
        "{err}"
    );
}

/// `X-Registry-Auth` reaches the registry: pushing without credentials is refused,
/// with them it works.
#[test]
fn registry_auth_is_honoured() {
    let Some(hash) = bcrypt_secret() else {
        eprintln!("SKIP: cannot make a bcrypt htpasswd line (python3 crypt module missing)");
        return;
    };
    let Some(reg) = start_registry(Some(&format!("tester:{hash}"))) else {
        return;
    };
    let d = TestDaemon::start();
    let repo = format!("{}/private", reg.addr);
    let out = docker_load_bytes(
        &d,
        &docker_archive(&format!("{repo}:1"), &[data_layer("p", 1000, 9)], None),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = d.docker_err(&["push", &format!("{repo}:1")]);
    assert!(
        err.to_lowercase().contains("unauthorized") || err.contains("authentication"),
        "{err}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let docker = d.bollard();
        let creds = bollard::auth::DockerCredentials {
            username: Some("tester".into()),
            password: Some("s3cret".into()),
            ..Default::default()
        };
        let opts = bollard::query_parameters::PushImageOptions {
            tag: Some("1".into()),
            ..Default::default()
        };
        let msgs: Vec<_> = docker
            .push_image(&repo, Some(opts), Some(creds.clone()))
            .collect()
            .await;
        assert!(msgs.iter().all(|m| m.is_ok()), "{msgs:?}");
        docker
            .remove_image(
                &format!("{repo}:1"),
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
            .unwrap();
        let opts = bollard::query_parameters::CreateImageOptions {
            from_image: Some(repo.clone()),
            tag: Some("1".into()),
            ..Default::default()
        };
        let msgs: Vec<_> = docker
            .create_image(Some(opts.clone()), None, Some(creds))
            .collect()
            .await;
        assert!(msgs.iter().all(|m| m.is_ok()), "{msgs:?}");
        docker.inspect_image(&format!("{repo}:1")).await.unwrap();
        let bad = bollard::auth::DockerCredentials {
            username: Some("tester".into()),
            password: Some("wrong".into()),
            ..Default::default()
        };
        let first = docker
            .create_image(Some(opts), None, Some(bad))
            .next()
            .await
            .unwrap();
        assert!(first.is_err());
    });
}

#[test]
fn bollard_image_api() {
    let d = TestDaemon::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let docker = d.bollard();
        // Load through bollard (POST /images/load).
        let archive = docker_archive(
            "bl:1",
            &[data_layer("x", 5000, 4), data_layer("y", 6000, 5)],
            None,
        );
        let msgs: Vec<_> = docker
            .import_image(
                bollard::query_parameters::ImportImageOptions::default(),
                bollard::body_full(archive.into()),
                None,
            )
            .collect()
            .await;
        let text: String = msgs
            .into_iter()
            .map(|m| m.unwrap().stream.unwrap_or_default())
            .collect();
        assert!(text.contains("Loaded image: bl:1"), "{text}");

        let list = docker
            .list_images(None::<bollard::query_parameters::ListImagesOptions>)
            .await
            .unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].repo_tags, vec!["bl:1".to_string()]);
        assert_eq!(
            list[0].labels.get("test").map(String::as_str),
            Some("images")
        );
        let ins = docker.inspect_image("bl:1").await.unwrap();
        assert_eq!(ins.root_fs.unwrap().layers.unwrap().len(), 2);
        let hist = docker.image_history("bl:1").await.unwrap();
        assert_eq!(hist.len(), 2);
        assert_eq!(hist[0].id, ins.id.clone().unwrap());
        assert_eq!(hist[1].created_by, "layer 0");

        docker
            .tag_image(
                "bl:1",
                Some(bollard::query_parameters::TagImageOptions {
                    repo: Some("other/bl".into()),
                    tag: Some("t".into()),
                }),
            )
            .await
            .unwrap();
        let mut filters = HashMap::new();
        filters.insert("reference".to_string(), vec!["other/*".to_string()]);
        let list = docker
            .list_images(Some(bollard::query_parameters::ListImagesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .unwrap();
        assert_eq!(list[0].repo_tags, vec!["other/bl:t".to_string()]);

        // Save through bollard and check it is a tar with both formats' indexes.
        let bytes: Vec<u8> = docker
            .export_image("other/bl:t")
            .map(|c| c.unwrap().to_vec())
            .collect::<Vec<_>>()
            .await
            .concat();
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&bytes[..]);
        for e in ar.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert!(
            names.contains(&"manifest.json".to_string())
                && names.contains(&"index.json".to_string()),
            "{names:?}"
        );

        // Untag one, then remove (and so delete) the image.
        let r = docker
            .remove_image(
                "other/bl:t",
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].untagged.as_deref(), Some("other/bl:t"));
        let e = docker
            .inspect_image("nope:9")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("No such image: nope:9"), "{e}");

        // Prune: dangling only by default; `dangling=false` takes unused tagged ones too.
        let archive = docker_archive("bl:1", &[data_layer("z", 7000, 6)], None);
        let _: Vec<_> = docker
            .import_image(
                bollard::query_parameters::ImportImageOptions::default(),
                bollard::body_full(archive.into()),
                None,
            )
            .collect()
            .await;
        let rep = docker
            .prune_images(None::<bollard::query_parameters::PruneImagesOptions>)
            .await
            .unwrap();
        assert_eq!(
            rep.images_deleted.unwrap_or_default().len(),
            1,
            "the old bl:1 became dangling"
        );
        let mut filters = HashMap::new();
        filters.insert("dangling".to_string(), vec!["false".to_string()]);
        let rep = docker
            .prune_images(Some(bollard::query_parameters::PruneImagesOptions {
                filters: Some(filters),
            }))
            .await
            .unwrap();
        assert!(rep.space_reclaimed.unwrap() >= 7000);
        assert!(docker
            .list_images(None::<bollard::query_parameters::ListImagesOptions>)
            .await
            .unwrap()
            .is_empty());
    });
    assert_store_empty(&d);
}

/// Killing the client, or berthd itself, in the middle of a pull registers nothing
/// half-done; the next start cleans up what the dead pull wrote.
#[test]
fn interrupted_pulls_leave_no_half_image() {
    let Some(reg) = start_registry(None) else {
        return;
    };
    let mut d = TestDaemon::start();
    let repo = format!("{}/big", reg.addr);
    let layers = vec![data_layer("a", 32 << 20, 11), data_layer("b", 32 << 20, 12)];
    let out = docker_load_bytes(&d, &docker_archive(&format!("{repo}:1"), &layers, None));
    assert!(out.status.success(), "{}", stderr(&out));
    d.docker_ok(&["push", &format!("{repo}:1")]);
    d.docker_ok(&["rmi", &format!("{repo}:1")]);
    assert_store_empty(&d);

    // Either the pull finished before the kill (then the image is whole) or nothing of
    // it is registered.
    let whole_or_absent = |d: &TestDaemon| {
        let out = d.docker(&["image", "inspect", &format!("{repo}:1")]);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v[0]["RootFS"]["Layers"].as_array().unwrap().len(), 2);
            for l in v[0]["RootFS"]["Layers"].as_array().unwrap() {
                let hex = &l.as_str().unwrap()[7..];
                assert!(d.data_root.join("images/layers").join(hex).is_dir());
            }
            d.docker_ok(&["rmi", &format!("{repo}:1")]);
            eprintln!("note: the pull completed before the interruption");
        } else {
            eprintln!("note: the pull was interrupted; nothing registered");
        }
        assert_store_empty(d);
    };

    // 1. The client goes away.
    let mut c = d
        .docker_cmd(&["pull", &format!("{repo}:1")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    let _ = c.stdout.as_mut().unwrap().read(&mut first);
    c.kill().unwrap();
    let _ = c.wait();
    // The engine notices on its next progress message and cleans up.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir_entries(&d.data_root.join("images/tmp")).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    whole_or_absent(&d);

    // 2. berthd is SIGKILLed mid-pull.
    let mut c = d
        .docker_cmd(&["pull", &format!("{repo}:1")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _ = c.stdout.as_mut().unwrap().read(&mut first);
    d.kill();
    let _ = c.wait();
    d.restart();
    whole_or_absent(&d);
    // And a pull after all that works.
    d.docker_ok(&["pull", &format!("{repo}:1")]);
    assert_eq!(
        inspect(&d, &format!("{repo}:1"))["RootFS"]["Layers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// The engine's in-use hook (wired to containers by the engine) guards `rmi`.
#[test]
fn rmi_refuses_images_in_use() {
    let d = common::images::daemon_with_busybox("bb:used");
    let id = inspect(&d, "bb:used")["Id"].as_str().unwrap().to_string();
    let out = d.docker(&["create", "--name", "user", "bb:used", "/bin/true"]);
    if !out.status.success() {
        panic!("docker create failed: {}", stderr(&out));
    }
    let err = d.docker_err(&["rmi", "bb:used"]);
    assert!(
        err.contains("conflict") && err.contains("container is using its referenced image"),
        "{err}"
    );
    let err = d.docker_err(&["rmi", &id]);
    assert!(err.contains("being used by a container"), "{err}");
    // Forced: the tag goes, the image (and its layer) stays for the container.
    let out = d.docker_ok(&["rmi", "-f", "bb:used"]);
    assert!(
        out.contains("Untagged: bb:used") && !out.contains("Deleted"),
        "{out}"
    );
    assert_eq!(inspect(&d, &id)["Id"], id.as_str());
    let pruned = d.docker_ok(&["image", "prune", "-f"]);
    assert!(!pruned.contains(&id), "{pruned}");
    d.docker_ok(&["rm", "user"]);
    let pruned = d.docker_ok(&["image", "prune", "-f"]);
    assert!(pruned.contains(&id), "{pruned}");
    assert_store_empty(&d);
}

/// Two loads of the same image at once: both succeed, one image, one copy of each layer.
#[test]
fn concurrent_loads_of_one_image() {
    let d = TestDaemon::start();
    let archive = docker_archive(
        "twice:1",
        &[data_layer("a", 4 << 20, 21), data_layer("b", 4 << 20, 22)],
        None,
    );
    let outs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| docker_load_bytes(&d, &archive)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &outs {
        assert!(o.status.success(), "{}", stderr(o));
        assert!(stdout(o).contains("Loaded image: twice:1"));
    }
    assert_eq!(d.docker_ok(&["images", "-q"]).lines().count(), 1);
    assert_eq!(dir_entries(&d.data_root.join("images/layers")).len(), 2);
    d.docker_ok(&["rmi", "twice:1"]);
    assert_store_empty(&d);
}

/// Archives cross over with Debian's dockerd 20.10: what berthd saves dockerd loads
/// (same image ID), and dockerd's own save format loads into berthd.
#[test]
fn save_and_load_interoperate_with_dockerd() {
    if !Path::new("/usr/sbin/dockerd").exists() && !Path::new("/usr/bin/dockerd").exists() {
        let ok = Command::new("sh")
            .arg("-c")
            .arg("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null 2>&1")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("SKIP: dockerd (docker.io) is not installed and could not be installed");
            return;
        }
    }
    let d = TestDaemon::start();
    let rd = tempfile::Builder::new()
        .prefix("bref")
        .tempdir_in("/tmp")
        .unwrap();
    let sock = rd.path().join("d.sock");
    let mut dockerd = Command::new("dockerd")
        .arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .arg("--data-root")
        .arg(rd.path().join("data"))
        .arg("--exec-root")
        .arg(rd.path().join("exec"))
        .arg("--pidfile")
        .arg(rd.path().join("pid"))
        .args([
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--storage-driver=vfs",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(rd.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg(self.0.id().to_string()).status();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut dockerd);
    let ref_docker = |args: &[&str]| {
        Command::new(common::DOCKER_CLI)
            .env("DOCKER_HOST", format!("unix://{}", sock.display()))
            .env("DOCKER_CONFIG", rd.path().join("cfg"))
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ref_docker(&["version"]).status.success() {
        assert!(Instant::now() < deadline, "dockerd did not start");
        std::thread::sleep(Duration::from_millis(200));
    }

    let layers = vec![
        std::fs::read(busybox_tar()).unwrap(),
        data_layer("x", 100_000, 31),
    ];
    let out = docker_load_bytes(&d, &docker_archive("xo:1", &layers, None));
    assert!(out.status.success(), "{}", stderr(&out));
    let id = inspect(&d, "xo:1")["Id"].as_str().unwrap().to_string();
    let ours = rd.path().join("ours.tar");
    d.docker_ok(&["save", "-o", ours.to_str().unwrap(), "xo:1"]);
    let out = ref_docker(&["load", "-i", ours.to_str().unwrap()]);
    assert!(out.status.success(), "dockerd load: {}", stderr(&out));
    let out = ref_docker(&["image", "inspect", "--format", "{{.Id}}", "xo:1"]);
    assert_eq!(stdout(&out).trim(), id);

    let theirs = rd.path().join("theirs.tar");
    ref_docker(&["tag", "xo:1", "xo:fromdockerd"]);
    let out = ref_docker(&["save", "-o", theirs.to_str().unwrap(), "xo:fromdockerd"]);
    assert!(out.status.success(), "{}", stderr(&out));
    d.docker_ok(&["rmi", "xo:1"]);
    assert_store_empty(&d);
    let out = d.docker_ok(&["load", "-i", theirs.to_str().unwrap()]);
    assert!(out.contains("Loaded image: xo:fromdockerd"), "{out}");
    assert_eq!(inspect(&d, "xo:fromdockerd")["Id"], id.as_str());
}

/// `docker login` asks berthd (`POST /auth`), which checks the credentials with the
/// registry; the CLI then sends them with every push.
#[test]
fn docker_login_checks_credentials_with_the_registry() {
    let Some(hash) = bcrypt_secret() else {
        eprintln!("SKIP: cannot make a bcrypt htpasswd line (python3 crypt module missing)");
        return;
    };
    let Some(reg) = start_registry(Some(&format!("tester:{hash}"))) else {
        return;
    };
    let d = TestDaemon::start();
    let login = |password: &str| {
        let mut c = d.docker_cmd(&["login", "-u", "tester", "--password-stdin", &reg.addr]);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let bad = login("wrong");
    assert!(!bad.status.success(), "{}", stdout(&bad));
    assert!(stderr(&bad).contains("401"), "{}", stderr(&bad));
    let good = login("s3cret");
    assert!(good.status.success(), "{}", stderr(&good));
    assert!(
        stdout(&good).contains("Login Succeeded"),
        "{}",
        stdout(&good)
    );
    // The stored credentials now go with a push.
    let repo = format!("{}/afterlogin", reg.addr);
    let out = docker_load_bytes(
        &d,
        &docker_archive(&format!("{repo}:1"), &[data_layer("l", 500, 3)], None),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    d.docker_ok(&["push", &format!("{repo}:1")]);
    // A registry that is not there: a clear error, not a hang.
    let out = d.docker(&["login", "-u", "x", "-p", "y", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unreachable"), "{}", stderr(&out));
}
