//! The default `local` volume driver through the real host.

mod common;

use berth_plugin_host::*;
use common::*;

#[tokio::test]
async fn directory_volume_lifecycle() {
    let t = host_with(&["local"], |_| {});
    let vol = t.host.volume_driver("local").unwrap();
    let root = t.host.data_dir("local").unwrap();
    assert_eq!(vol.capabilities().await.unwrap(), VolumeScope::Local);

    vol.create("data", &[]).await.unwrap();
    assert!(matches!(
        vol.create("data", &[]).await,
        Err(PluginError::AlreadyExists(_))
    ));
    let src = vol.mount("data", "c1").await.unwrap();
    let dir = root.join("volumes/data/_data");
    assert_eq!(src, MountSource::Directory(dir.clone()));
    std::fs::write(dir.join("hello"), b"persist me").unwrap();
    vol.mount("data", "c2").await.unwrap();

    let e = vol.remove("data").await.unwrap_err();
    assert_eq!(e.http_status(), 409, "{e}");
    vol.unmount("data", "c1").await.unwrap();
    assert!(matches!(vol.remove("data").await, Err(PluginError::Busy(m)) if m.contains("c2")));
    vol.unmount("data", "c2").await.unwrap();

    let info = vol.get("data").await.unwrap();
    assert_eq!(info.source, Some(MountSource::Directory(dir.clone())));
    assert!(info.created_nano > 0);
    assert_eq!(
        vol.path("data").await.unwrap(),
        Some(MountSource::Directory(dir.clone()))
    );
    vol.create("other", &[]).await.unwrap();
    let names: Vec<String> = vol
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, vec!["data", "other"]);

    vol.remove("data").await.unwrap();
    assert!(!dir.exists());
    assert_eq!(vol.get("data").await.unwrap_err().http_status(), 404);
    assert_eq!(
        vol.mount("data", "c1").await.unwrap_err().http_status(),
        404
    );
}

#[tokio::test]
async fn options_and_names_are_validated() {
    let t = host_with(&["local"], |_| {});
    let vol = t.host.volume_driver("local").unwrap();
    assert_eq!(
        vol.create("bad name", &[]).await.unwrap_err().http_status(),
        400
    );
    assert_eq!(
        vol.create("../x", &[]).await.unwrap_err().http_status(),
        400
    );
    assert_eq!(
        vol.create("v1", &opts(&[("colour", "red")]))
            .await
            .unwrap_err()
            .http_status(),
        400
    );
    assert_eq!(
        vol.create("v1", &opts(&[("type", "nfs")]))
            .await
            .unwrap_err()
            .http_status(),
        501
    );
    assert_eq!(
        vol.create("v1", &opts(&[("kind", "disk"), ("size", "1k")]))
            .await
            .unwrap_err()
            .http_status(),
        400
    );
    assert!(
        vol.list().await.unwrap().is_empty(),
        "failed creates leave nothing behind"
    );
}

#[tokio::test]
async fn volumes_persist_across_host_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = stage(tmp.path(), &["local"]);
    {
        let host = PluginHost::new(test_config(tmp.path())).unwrap();
        assert!(host.load_dir(&plugins).is_empty());
        let vol = host.volume_driver("local").unwrap();
        vol.create("keep", &[]).await.unwrap();
        let MountSource::Directory(d) = vol.mount("keep", "c1").await.unwrap() else {
            panic!()
        };
        std::fs::write(d.join("f"), b"1").unwrap();
        vol.unmount("keep", "c1").await.unwrap();
    }
    let host = PluginHost::new(test_config(tmp.path())).unwrap();
    assert!(host.load_dir(&plugins).is_empty());
    assert!(
        host.list()[0].cache_hit,
        "second start must use the precompiled cache"
    );
    let vol = host.volume_driver("local").unwrap();
    let MountSource::Directory(d) = vol.mount("keep", "c9").await.unwrap() else {
        panic!()
    };
    assert_eq!(std::fs::read(d.join("f")).unwrap(), b"1");
}

fn have(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn disk_image_volume() {
    let t = host_with(&["local"], |_| {});
    let vol = t.host.volume_driver("local").unwrap();
    let fs = if have("mkfs.ext4") { "ext4" } else { "none" };
    if fs == "none" {
        eprintln!("mkfs.ext4 missing (e2fsprogs): testing a raw image without a filesystem");
    }
    vol.create(
        "disk1",
        &opts(&[("kind", "disk"), ("size", "16M"), ("fs", fs)]),
    )
    .await
    .unwrap();
    let src = vol.mount("disk1", "c1").await.unwrap();
    let MountSource::Disk {
        path,
        format,
        read_only,
    } = src
    else {
        panic!("{src:?}")
    };
    assert_eq!((format, read_only), (DiskFormat::Raw, false));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 16 << 20);
    if fs == "ext4" {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&path).unwrap();
        let mut magic = [0u8; 2];
        f.seek(SeekFrom::Start(0x438)).unwrap();
        f.read_exact(&mut magic).unwrap();
        assert_eq!(magic, [0x53, 0xef], "ext4 superblock magic");
    }
    let info = vol.get("disk1").await.unwrap();
    assert!(info
        .status
        .contains(&("kind".to_string(), "disk".to_string())));
    vol.unmount("disk1", "c1").await.unwrap();
    vol.remove("disk1").await.unwrap();
    assert!(!path.exists());
}
