//! Mount options shared between containers: `--volumes-from` and volume subpaths
//! (`--mount type=volume,volume-subpath=...`, API 1.45), through the real docker CLI, in
//! both isolation modes where the microVM prerequisites exist.

mod common;

use common::microvm::{daemon, skip_without_microvm};
use common::stderr;

fn modes() -> Vec<&'static str> {
    if skip_without_microvm() {
        vec!["process"]
    } else {
        vec!["process", "microvm"]
    }
}

#[test]
fn volumes_from_shares_volumes_and_binds_with_modes() {
    let d = daemon();
    let share = d.dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("f"), "bound\n").unwrap();
    let bind = format!("{}:/b", share.display());
    // A directory volume, so process and microVM containers can both use it.
    d.docker_ok(&["volume", "create", "shared"]);
    d.docker_ok(&[
        "create",
        "--name",
        "src",
        "-v",
        "shared:/v",
        "-v",
        &bind,
        "bb",
        "true",
    ]);
    d.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "shared:/v",
        "bb",
        "sh",
        "-c",
        "echo from-src > /v/data",
    ]);
    for mode in modes() {
        let iso = format!("--isolation={mode}");
        let out = d.docker_ok(&[
            "run",
            "--rm",
            &iso,
            "--volumes-from",
            "src",
            "bb",
            "sh",
            "-c",
            "cat /v/data /b/f; echo more > /v/more && echo wrote",
        ]);
        assert_eq!(out, "from-src\nbound\nwrote\n", "{mode}");
        let o = d.docker(&[
            "run",
            "--rm",
            &iso,
            "--volumes-from",
            "src:ro",
            "bb",
            "sh",
            "-c",
            "cat /v/data; echo x > /v/x",
        ]);
        assert!(
            stderr(&o).contains("Read-only file system"),
            "{mode}: {}",
            stderr(&o)
        );
    }
    // Inspect shows where the mounts came from; rm -v of the borrower keeps the volume.
    let id = d
        .docker_ok(&["create", "--volumes-from", "src", "bb", "true"])
        .trim()
        .to_string();
    let dests = d.docker_ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Destination}} {{end}}",
        &id,
    ]);
    assert!(dests.contains("/v ") && dests.contains("/b "), "{dests}");
    d.docker_ok(&["rm", "-v", &id]);
    assert!(d.docker_ok(&["volume", "ls", "-q"]).contains("shared"));
    // An unknown container is a 404 (the CLI would take that for a missing image and try a
    // pull, as it does against dockerd), so ask the API directly.
    let script = r#"
import docker, sys
c = docker.APIClient(base_url=sys.argv[1])
try:
    c.create_container("bb", "true", host_config=c.create_host_config(volumes_from=["nosuch"]))
except docker.errors.NotFound as e:
    print(e.explanation)
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", script, &d.host()])
        .output()
        .unwrap();
    assert!(
        common::stdout(&o).contains("No such container: nosuch"),
        "{} {}",
        common::stdout(&o),
        stderr(&o)
    );
    let err = d.docker_err(&["create", "--volumes-from", "src:bogus", "bb", "true"]);
    assert!(err.contains("invalid mode"), "{err}");
}

#[test]
fn volume_subpath_mounts_one_directory_of_a_volume() {
    let d = daemon();
    d.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "data:/d",
        "bb",
        "sh",
        "-c",
        "mkdir -p /d/app/conf && echo c > /d/app/conf/x && echo top > /d/top",
    ]);
    for mode in modes() {
        let iso = format!("--isolation={mode}");
        let out = d.docker_ok(&[
            "run",
            "--rm",
            &iso,
            "--mount",
            "type=volume,source=data,target=/conf,volume-subpath=app/conf",
            "bb",
            "sh",
            "-c",
            "ls /conf; cat /conf/x; test -e /conf/top || echo no-top",
        ]);
        assert_eq!(out, "x\nc\nno-top\n", "{mode}");
    }
    if !skip_without_microvm() {
        // A block volume: the subpath is resolved inside the guest.
        d.docker_ok(&[
            "run",
            "--rm",
            "--isolation=microvm",
            "-v",
            "blk:/d",
            "bb",
            "sh",
            "-c",
            "mkdir -p /d/sub && echo in-disk > /d/sub/f",
        ]);
        let out = d.docker_ok(&[
            "run",
            "--rm",
            "--isolation=microvm",
            "--mount",
            "type=volume,source=blk,target=/s,volume-subpath=sub",
            "bb",
            "cat",
            "/s/f",
        ]);
        assert_eq!(out, "in-disk\n");
    }
    for (subpath, want) in [
        (
            "../escape",
            "subpath must be a relative path within the volume",
        ),
        ("/abs", "subpath must be a relative path within the volume"),
    ] {
        let m = format!("type=volume,source=data,target=/c,volume-subpath={subpath}");
        let err = d.docker_err(&["create", "--mount", &m, "bb", "true"]);
        assert!(err.contains(want), "{subpath}: {err}");
    }
    let err = d.docker_err(&[
        "run",
        "--rm",
        "--mount",
        "type=volume,source=data,target=/c,volume-subpath=missing",
        "bb",
        "true",
    ]);
    assert!(err.contains("cannot access path"), "{err}");
}

#[test]
fn volume_subpath_symlink_cannot_leave_the_volume() {
    let d = common::images::daemon_with_busybox("bb");
    d.docker_ok(&[
        "run", "--rm", "-v", "data:/d", "bb", "ln", "-s", "/etc", "/d/link",
    ]);
    let err = d.docker_err(&[
        "run",
        "--rm",
        "--mount",
        "type=volume,source=data,target=/c,volume-subpath=link",
        "bb",
        "true",
    ]);
    assert!(err.contains("resolves outside the volume"), "{err}");
}
