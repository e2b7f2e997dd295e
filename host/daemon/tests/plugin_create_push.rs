//! `docker plugin create NAME DIR` from what `berth-plugin build` staged, then
//! `docker plugin push NAME` to a registry with basic auth (credentials from
//! `docker login`'s config, sent as X-Registry-Auth), and `docker plugin install`
//! of what was pushed on another daemon, logging through it. A Docker rootfs
//! plugin directory is refused with how to make a WASM one.

mod common;

use std::path::Path;

use common::images::import_busybox;
use common::plugin_sdk::run_tool;
use common::registry::{bcrypt_secret, start_registry};
use common::{stderr, stdout, TestDaemon};

fn docker_as(d: &TestDaemon, config: &Path, args: &[&str]) -> std::process::Output {
    d.docker_cmd(args)
        .env("DOCKER_CONFIG", config)
        .output()
        .unwrap()
}

#[test]
fn plugin_create_push_and_install_elsewhere() {
    let Some(hash) = bcrypt_secret() else {
        eprintln!("SKIP: cannot make a bcrypt htpasswd line (python3 crypt module missing)");
        return;
    };
    let Some(reg) = start_registry(Some(&format!("tester:{hash}"))) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    run_tool(tmp.path(), &["new", "--kind", "log", "made-log"]);
    let project = tmp.path().join("made-log");
    run_tool(&project, &["build"]);
    let dist = project.join("dist");
    let remote = format!("{}/made-log:1.0", reg.addr);

    let a = TestDaemon::start();
    // Docker's own plugin format: config.json + rootfs/.
    let rootfs = tmp.path().join("rootfs-plugin");
    std::fs::create_dir_all(rootfs.join("rootfs/bin")).unwrap();
    std::fs::write(rootfs.join("config.json"), r#"{"Description":"x"}"#).unwrap();
    let err = a.docker_err(&[
        "plugin",
        "create",
        "rootfs-plugin",
        rootfs.to_str().unwrap(),
    ]);
    assert!(err.contains("WASM components, not rootfs plugins"), "{err}");
    assert!(err.contains("berth-plugin build"), "{err}");

    let out = a.docker_ok(&["plugin", "create", &remote, dist.to_str().unwrap()]);
    assert_eq!(out.trim(), remote);
    let ls = a.docker_ok(&["plugin", "ls", "--format", "{{.Name}} {{.Enabled}}"]);
    assert_eq!(ls.trim(), format!("{remote} false"));
    let err = a.docker_err(&["plugin", "create", &remote, dist.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");

    // Without credentials the registry refuses; with docker login's, it is pushed.
    let config = tmp.path().join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let out = docker_as(&a, &config, &["plugin", "push", &remote]);
    assert!(!out.status.success(), "pushed without credentials");
    assert!(
        stderr(&out).to_lowercase().contains("unauthorized"),
        "{}",
        stderr(&out)
    );
    std::fs::write(
        config.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"dGVzdGVyOnMzY3JldA=="}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let out = docker_as(&a, &config, &["plugin", "push", &remote]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("digest: sha256:"), "{}", stdout(&out));
    let err = a.docker_err(&["plugin", "push", "no-such-plugin"]);
    assert!(err.contains("not found"), "{err}");

    // Another daemon installs and logs through what was pushed.
    let b = TestDaemon::start();
    import_busybox(&b, "bb:local");
    let out = docker_as(&b, &config, &["plugin", "install", &remote]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = b.docker_ok(&[
        "run",
        "-d",
        "--log-driver",
        "made-log",
        "bb:local",
        "echo",
        "made",
    ]);
    let id = id.trim();
    b.docker_ok(&["wait", id]);
    common::eventually("docker logs through the pushed plugin", 10, || {
        let out = b.docker(&["logs", id]);
        if stdout(&out) == "made\n" {
            Ok(())
        } else {
            Err(format!("{:?} / {:?}", stdout(&out), stderr(&out)))
        }
    });
}
