//! Engine-level tests of the store: unpacking (including hostile layers), load/save
//! round trips, tags, deletion and crash leftovers. Pull/push run against a real
//! registry in the daemon's integration tests.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use serde_json::json;
use tar::{EntryType, Header};

use super::*;

/// A tar member with a raw name (the `tar` crate's path setters refuse `..`).
fn entry(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: EntryType,
    data: &[u8],
    link: Option<&str>,
) {
    let mut h = Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn tar_of(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    f(&mut b);
    b.into_inner().unwrap()
}

fn unpack(data: &[u8]) -> (tempfile::TempDir, Result<u64>) {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("layer");
    fs::create_dir(&dest).unwrap();
    let r = unpack::unpack_layer(data, &dest).map_err(Error::from);
    (d, r)
}

fn err_of(r: Result<u64>) -> String {
    match r {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn unpacks_files_links_and_overlay_whiteouts() {
    let data = tar_of(|b| {
        entry(b, "bin/", EntryType::Directory, b"", None);
        entry(b, "bin/busybox", EntryType::Regular, b"#!fake", None);
        entry(b, "bin/sh", EntryType::Symlink, b"", Some("busybox"));
        entry(b, "bin/ls", EntryType::Link, b"", Some("bin/busybox"));
        entry(b, "etc/.wh.passwd", EntryType::Regular, b"", None);
        entry(b, "var/.wh..wh..opq", EntryType::Regular, b"", None);
        entry(b, "var/new", EntryType::Regular, b"x", None);
        entry(b, "abs", EntryType::Symlink, b"", Some("/bin/busybox"));
    });
    let (d, r) = unpack(&data);
    assert_eq!(r.unwrap(), 7);
    let root = d.path().join("layer");
    assert_eq!(fs::read(root.join("bin/busybox")).unwrap(), b"#!fake");
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::metadata(root.join("bin/ls")).unwrap().ino(),
        fs::metadata(root.join("bin/busybox")).unwrap().ino()
    );
    let wh = fs::symlink_metadata(root.join("etc/passwd")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!root.join("etc/.wh.passwd").exists());
    let mut buf = [0u8; 2];
    let p = std::ffi::CString::new(root.join("var").as_os_str().as_encoded_bytes()).unwrap();
    let k = std::ffi::CString::new("trusted.overlay.opaque").unwrap();
    // SAFETY: valid strings and buffer.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), 2) };
    assert_eq!((n, buf[0]), (1, b'y'));
    assert_eq!(
        fs::metadata(root.join("bin")).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        fs::metadata(root.join("bin")).unwrap().mtime(),
        1_700_000_000
    );
}

#[test]
fn hostile_layers_are_refused_and_nothing_escapes() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().display().to_string();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            tar_of(|b| entry(b, "../escaped", EntryType::Regular, b"x", None)),
            "escapes",
        ),
        (
            "nested dotdot",
            tar_of(|b| entry(b, "a/../../escaped", EntryType::Regular, b"x", None)),
            "escapes",
        ),
        (
            "absolute",
            tar_of(|b| entry(b, "/tmp/escaped", EntryType::Regular, b"x", None)),
            "absolute",
        ),
        (
            "write through symlink",
            tar_of(|b| {
                entry(b, "link", EntryType::Symlink, b"", Some(&target));
                entry(b, "link/escaped", EntryType::Regular, b"x", None);
            }),
            "symlink",
        ),
        (
            "escaping symlink",
            tar_of(|b| entry(b, "a/link", EntryType::Symlink, b"", Some("../../etc"))),
            "outside",
        ),
        (
            "escaping hardlink",
            tar_of(|b| entry(b, "hl", EntryType::Link, b"", Some("../etc/passwd"))),
            "outside",
        ),
        (
            "hardlink to missing host path",
            tar_of(|b| entry(b, "hl", EntryType::Link, b"", Some("/etc/passwd"))),
            "does not exist",
        ),
        (
            "char device",
            tar_of(|b| entry(b, "dev/mem", EntryType::Char, b"", None)),
            "device",
        ),
        (
            "block device",
            tar_of(|b| entry(b, "sda", EntryType::Block, b"", None)),
            "device",
        ),
    ];
    for (what, data, needle) in cases {
        let (_d, r) = unpack(&data);
        let msg = err_of(r);
        assert!(msg.contains(needle), "{what}: {msg}");
        assert!(
            !outside.path().join("escaped").exists(),
            "{what} wrote outside"
        );
    }
    // Truncated: the header promises more bytes than follow.
    let mut data = tar_of(|b| entry(b, "big", EntryType::Regular, &[7u8; 5000], None));
    data.truncate(2048);
    let (_d, r) = unpack(&data);
    assert!(err_of(r).contains("EOF"));
}

/// A docker-archive with one image per `(tag, layers)`; returns the tar and image IDs.
fn docker_archive(images: &[(&str, Vec<Vec<u8>>)]) -> (Vec<u8>, Vec<String>) {
    let mut ids = Vec::new();
    let mut manifest = Vec::new();
    let data = tar_of(|b| {
        for (i, (tag, layers)) in images.iter().enumerate() {
            let mut paths = Vec::new();
            let mut diffs = Vec::new();
            for (j, l) in layers.iter().enumerate() {
                let p = format!("l{i}-{j}/layer.tar");
                entry(b, &p, EntryType::Regular, l, None);
                paths.push(p);
                diffs.push(digest::sha256_of(l));
            }
            let cfg = serde_json::to_vec(&json!({
                "architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
                "config": { "Cmd": ["/bin/sh"], "Env": ["A=1"], "Labels": { "k": "v" } },
                "rootfs": { "type": "layers", "diff_ids": diffs },
                "history": layers.iter().map(|_| json!({"created_by": "test"})).collect::<Vec<_>>(),
            }))
            .unwrap();
            ids.push(digest::sha256_of(&cfg));
            let cp = format!("c{i}.json");
            entry(b, &cp, EntryType::Regular, &cfg, None);
            manifest.push(json!({ "Config": cp, "RepoTags": [tag], "Layers": paths }));
        }
        entry(
            b,
            "manifest.json",
            EntryType::Regular,
            &serde_json::to_vec(&manifest).unwrap(),
            None,
        );
    });
    (data, ids)
}

fn store_at(dir: &Path) -> ImageStore {
    ImageStore::open(dir, Arc::new(EventBus::new())).unwrap()
}

fn load(store: &ImageStore, data: &[u8]) -> Result<Vec<String>> {
    let f = tempfile::NamedTempFile::new().unwrap();
    fs::write(f.path(), data).unwrap();
    store.load_file(f.path(), &Progress::none())
}

#[test]
fn load_inspect_tag_save_roundtrip_and_remove() {
    let base = tar_of(|b| {
        entry(b, "etc/", EntryType::Directory, b"", None);
        entry(
            b,
            "etc/passwd",
            EntryType::Regular,
            b"root:x:0:0::/:/bin/sh\n",
            None,
        );
        entry(b, "etc/gone", EntryType::Regular, b"x", None);
        entry(b, "opq/", EntryType::Directory, b"", None);
        entry(b, "opq/old", EntryType::Regular, b"x", None);
        entry(b, "lnk", EntryType::Symlink, b"", Some("etc"));
    });
    let top = tar_of(|b| {
        entry(b, "etc/.wh.gone", EntryType::Regular, b"", None);
        entry(b, "opq/.wh..wh..opq", EntryType::Regular, b"", None);
        entry(b, "opq/new", EntryType::Regular, b"y", None);
        entry(b, "lnk/", EntryType::Directory, b"", None);
        entry(b, "lnk/inside", EntryType::Regular, b"z", None);
    });
    let (archive, ids) = docker_archive(&[
        ("bb:latest", vec![base.clone(), top.clone()]),
        ("other/x:1", vec![base.clone()]),
    ]);
    let d = tempfile::tempdir().unwrap();
    let store = store_at(d.path());
    let lines = load(&store, &archive).unwrap();
    assert_eq!(
        lines,
        vec!["Loaded image: bb:latest", "Loaded image: other/x:1"]
    );
    assert_eq!(store.resolve("bb").unwrap(), ids[0]);
    assert_eq!(
        store.resolve("docker.io/library/bb:latest").unwrap(),
        ids[0]
    );
    assert_eq!(store.resolve(&ids[0][7..19]).unwrap(), ids[0]);
    assert_eq!(store.resolve(&ids[0]).unwrap(), ids[0]);
    assert_eq!(
        store.resolve("nope").unwrap_err().to_string(),
        "No such image: nope:latest"
    );
    assert!(matches!(
        store.resolve("Bad:Ref"),
        Err(Error::InvalidArgument(_))
    ));
    // The base layer is stored once and shared.
    let dirs = store.layer_dirs("bb").unwrap();
    assert_eq!(dirs.len(), 2);
    assert_eq!(store.layer_dirs("other/x:1").unwrap()[0], dirs[0]);
    for d in &dirs {
        assert_eq!(
            fs::metadata(d).unwrap().permissions().mode() & 0o7777,
            0o755
        );
    }

    let cfg = store.image_config("bb").unwrap();
    assert_eq!(cfg.cmd, Some(vec!["/bin/sh".to_string()]));
    assert_eq!(cfg.labels.get("k").map(String::as_str), Some("v"));
    let ins = store.inspect("bb").unwrap();
    assert_eq!(ins["RepoTags"], json!(["bb:latest"]));
    assert_eq!(ins["RootFS"]["Layers"].as_array().unwrap().len(), 2);
    assert_eq!(ins["Config"]["Env"], json!(["A=1"]));
    assert_eq!(store.history("bb").unwrap().len(), 2);

    // Flattened rootfs applies whiteouts and opaque dirs.
    let flat = d.path().join("flat");
    store.flatten_into("bb", &flat).unwrap();
    assert!(flat.join("etc/passwd").exists());
    assert!(!flat.join("etc/gone").exists());
    assert!(!flat.join("opq/old").exists() && flat.join("opq/new").exists());
    assert!(
        fs::symlink_metadata(flat.join("lnk")).unwrap().is_dir(),
        "upper dir replaces lower symlink"
    );
    assert!(flat.join("lnk/inside").exists() && !flat.join("etc/inside").exists());

    store.tag("bb", "bb", "v2").unwrap();
    let listed = store
        .list(&ListOptions {
            reference: vec!["bb".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(listed.len(), 1);
    let mut tags = listed[0].repo_tags.clone();
    tags.sort();
    assert_eq!(tags, vec!["bb:latest", "bb:v2"]);

    // save → load into a fresh store yields the same image.
    let mut out = Vec::new();
    store.save(&["bb:latest".to_string()], &mut out).unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let store2 = store_at(d2.path());
    assert_eq!(
        load(&store2, &out).unwrap(),
        vec!["Loaded image: bb:latest"]
    );
    assert_eq!(store2.resolve("bb").unwrap(), ids[0]);

    // rmi: untag first, then delete; by ID with two tags needs force.
    assert!(matches!(
        store.remove(&ids[0], false, false),
        Err(Error::Conflict(_))
    ));
    assert_eq!(
        store.remove("bb:v2", false, false).unwrap(),
        vec![DeleteItem {
            untagged: Some("bb:v2".into()),
            deleted: None
        }]
    );
    store.set_in_use_hook(Arc::new(|_: &str| true));
    assert!(matches!(
        store.remove("bb", false, false),
        Err(Error::Conflict(_))
    ));
    store.set_in_use_hook(Arc::new(|_: &str| false));
    let del = store.remove("bb", false, false).unwrap();
    assert_eq!(
        del.last().unwrap().deleted.as_deref(),
        Some(ids[0].as_str())
    );
    assert!(!dirs[1].exists(), "unshared top layer removed");
    assert!(dirs[0].exists(), "base layer still used by other/x");

    // State survives reopen.
    drop(store);
    let store = store_at(d.path());
    assert_eq!(store.resolve("other/x:1").unwrap(), ids[1]);
    assert!(store.resolve("bb").is_err());
    let rep = store.prune(false, None, &[], &[]).unwrap();
    assert_eq!(rep.images_deleted.unwrap().len(), 2);
    assert!(rep.space_reclaimed > 0);
    assert_eq!(fs::read_dir(d.path().join("layers")).unwrap().count(), 0);
}

#[test]
fn bad_archives_leave_the_store_consistent() {
    let d = tempfile::tempdir().unwrap();
    let store = store_at(d.path());
    let good = tar_of(|b| entry(b, "f", EntryType::Regular, b"data", None));
    let (mut archive, _) = docker_archive(&[("ok:1", vec![good.clone()])]);
    // Corrupt one byte of the layer's content: the diff ID no longer matches.
    let pos = archive.windows(4).position(|w| w == b"data").unwrap();
    archive[pos] = b'D';
    let msg = load(&store, &archive).unwrap_err().to_string();
    assert!(msg.contains("digest mismatch"), "{msg}");
    // A hostile layer inside an otherwise fine archive.
    let evil = tar_of(|b| entry(b, "../../x", EntryType::Regular, b"x", None));
    let (archive2, _) = docker_archive(&[("evil:1", vec![evil])]);
    assert!(load(&store, &archive2)
        .unwrap_err()
        .to_string()
        .contains("escapes"));
    // Truncated archive.
    let (archive3, _) = docker_archive(&[("t:1", vec![good])]);
    let msg = load(&store, &archive3[..archive3.len() / 2])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("invalid"), "{msg}");
    assert!(load(&store, b"not a tar at all, just some bytes").is_err());
    assert!(store.list(&ListOptions::default()).unwrap().is_empty());
    // Simulate a crash mid-load: leftovers in tmp/, an uncommitted layer dir and blob.
    fs::create_dir_all(d.path().join("tmp/layer-x/a")).unwrap();
    fs::create_dir_all(d.path().join("layers").join("ab".repeat(32))).unwrap();
    fs::write(d.path().join("blobs/sha256").join("cd".repeat(32)), b"x").unwrap();
    drop(store);
    let _store = store_at(d.path());
    assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(d.path().join("layers")).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(d.path().join("blobs/sha256")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn import_tarball_with_changes() {
    let d = tempfile::tempdir().unwrap();
    let store = Arc::new(store_at(d.path()));
    let data = tar_of(|b| entry(b, "hello", EntryType::Regular, b"hi", None));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &data).unwrap();
    let gz = gz.finish().unwrap();
    let id = store
        .import(
            ImportSource::Body(Box::new(std::io::Cursor::new(gz))),
            import::ImportOptions {
                repo: "imp".into(),
                tag: "t".into(),
                message: "msg".into(),
                changes: vec!["CMD [\"/hello\"]".into()],
            },
            Progress::none(),
        )
        .await
        .unwrap();
    assert_eq!(store.resolve("imp:t").unwrap(), id);
    assert_eq!(
        store.image_config("imp:t").unwrap().cmd,
        Some(vec!["/hello".to_string()])
    );
    assert_eq!(store.inspect("imp:t").unwrap()["Comment"], "msg");
    // The stored blob is the uncompressed tar: save can hand it out as-is.
    let l = store.layer(&digest::sha256_of(&data)).unwrap();
    assert_eq!(l.blob.digest, l.diff_id);
}

/// A PAX extended header (type `x`) applying to the next member.
fn pax(b: &mut tar::Builder<Vec<u8>>, recs: &[(&str, &[u8])]) {
    let mut data = Vec::new();
    for (k, v) in recs {
        let body_len = 1 + k.len() + 1 + v.len() + 1; // " k=v\n"
        let mut len = body_len + 1;
        while len != body_len + len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} {k}=").as_bytes());
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    // The tar crate only honours PAX headers in ustar/GNU format members.
    let mut h = Header::new_ustar();
    h.set_path("PaxHeader").unwrap();
    h.set_entry_type(EntryType::XHeader);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &data[..]).unwrap();
}

fn get_xattr(p: &Path, key: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let k = std::ffi::CString::new(key).unwrap();
    let mut buf = [0u8; 256];
    // SAFETY: valid strings and buffer.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

#[test]
fn pax_xattrs_applied_but_never_trusted_ones() {
    let data = tar_of(|b| {
        pax(
            b,
            &[
                ("SCHILY.xattr.user.note", b"hello"),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ],
        );
        entry(b, "dir/", EntryType::Directory, b"", None);
        pax(b, &[("SCHILY.xattr.user.note", b"file")]);
        entry(b, "dir/f", EntryType::Regular, b"x", None);
    });
    let d = tempfile::tempdir().unwrap();
    let store = store_at(&d.path().join("store"));
    let (archive, _) = docker_archive(&[("x:1", vec![data])]);
    load(&store, &archive).unwrap();
    let layer = &store.layer_dirs("x:1").unwrap()[0];
    assert_eq!(
        get_xattr(&layer.join("dir"), "user.note").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(
        get_xattr(&layer.join("dir"), "trusted.overlay.opaque"),
        None,
        "a tar must not forge overlay metadata"
    );
    assert_eq!(
        get_xattr(&layer.join("dir/f"), "user.note").as_deref(),
        Some(&b"file"[..])
    );
    let flat = d.path().join("flat");
    store.flatten_into("x:1", &flat).unwrap();
    assert_eq!(
        get_xattr(&flat.join("dir/f"), "user.note").as_deref(),
        Some(&b"file"[..])
    );
    assert_eq!(
        get_xattr(&flat.join("dir"), "user.note").as_deref(),
        Some(&b"hello"[..])
    );
}

#[test]
fn glob_matches_like_path_match_and_stays_fast() {
    use super::query::glob_match;
    assert!(glob_match("busy*", "busybox"));
    assert!(glob_match("*box", "busybox"));
    assert!(glob_match("b?sy*x", "busybox"));
    assert!(glob_match("*/*", "library/busybox"));
    assert!(!glob_match("*", "library/busybox"));
    assert!(!glob_match("lib*box", "library/busybox"));
    assert!(glob_match("", ""));
    assert!(!glob_match("a", ""));
    assert!(glob_match("**", ""));
    assert!(glob_match("é*", "éclair"));
    // 5,000 stars against a near miss: exponential backtracking never finishes this.
    let pattern = "a*".repeat(5000) + "b";
    let name = "a".repeat(6000);
    assert!(!glob_match(&pattern, &name));
}
