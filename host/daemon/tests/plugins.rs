//! WASM plugins through the real docker CLI: the json-file log plugin serves
//! `docker logs`, the local volume plugin keeps volumes across `rm` and daemon
//! restarts, and a second, test-built log plugin is picked with `--log-driver`.

mod common;

use std::path::PathBuf;

use common::images::import_busybox;
use common::{stdout, TestDaemon};

/// The staged plugins (scripts/build-plugins.sh output), built here if missing.
fn plugins_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("target/plugins");
    if !dir.join("json-file/plugin.wasm").exists() || !dir.join("template-log/plugin.wasm").exists()
    {
        let st = std::process::Command::new("bash")
            .arg(root.join("scripts/build-plugins.sh"))
            .status()
            .expect("run build-plugins.sh");
        assert!(st.success(), "building the plugins failed");
    }
    dir
}

fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

#[test]
fn json_file_plugin_serves_docker_logs() {
    plugins_dir();
    let d = common::images::daemon_with_busybox("bb:local");
    let info = d.docker_ok(&["info", "--format", "{{json .Plugins}}"]);
    assert!(info.contains("\"Log\":[\"json-file\",\"none\"]"), "{info}");
    assert!(info.contains("\"Volume\":[\"local\"]"), "{info}");
    let id = d.docker_ok(&[
        "run",
        "-d",
        "bb:local",
        "sh",
        "-c",
        "for i in 1 2 3; do echo line $i; done; echo oops >&2",
    ]);
    let id = id.trim();
    d.docker_ok(&["wait", id]);
    // Written by the plugin, in Docker's json-file format, inside its own data dir.
    let file = d
        .data_root
        .join("plugin-data/json-file/containers")
        .join(id)
        .join(format!("{id}-json.log"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(
        text.lines()
            .next()
            .unwrap()
            .starts_with(r#"{"log":"line 1\n","stream":"stdout","time":""#),
        "{text}"
    );
    let out = d.docker(&["logs", id]);
    assert_eq!(stdout(&out), "line 1\nline 2\nline 3\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    // Tail counts lines of both streams (the last one is on stderr).
    assert_eq!(d.docker_ok(&["logs", "--tail", "2", id]), "line 3\n");
    // Options are validated by the plugin: a bad one is a 400 at create.
    let err = d.docker_err(&["create", "--log-opt", "max-size=banana", "bb:local", "true"]);
    assert!(err.to_lowercase().contains("max-size"), "{err}");
    // Rotation: a small max-size keeps at most max-file files.
    let id2 = d.docker_ok(&[
        "run",
        "-d",
        "--log-opt",
        "max-size=1k",
        "--log-opt",
        "max-file=2",
        "bb:local",
        "sh",
        "-c",
        "i=0; while [ $i -lt 200 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done",
    ]);
    let id2 = id2.trim();
    d.docker_ok(&["wait", id2]);
    let logs = d.docker_ok(&["logs", id2]);
    assert!(
        logs.ends_with("line-199-xxxxxxxxxxxxxxxxxxxxxxxx\n"),
        "{logs}"
    );
    assert!(!logs.contains("line-0-"), "rotation kept everything");
    // docker rm drops the plugin's files for the container.
    d.docker_ok(&["rm", id]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!file.exists(), "logs outlived the container");
}

#[test]
fn volumes_persist_across_rm_and_daemon_restart() {
    plugins_dir();
    let mut d = common::images::daemon_with_busybox("bb:local");
    d.docker_ok(&["volume", "create", "--label", "team=a", "data"]);
    d.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        "bb:local",
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    // Named volumes are created on first use too.
    d.docker_ok(&[
        "run",
        "--name",
        "wv",
        "-v",
        "auto:/x",
        "bb:local",
        "sh",
        "-c",
        "echo auto > /x/f",
    ]);
    d.docker_ok(&["rm", "wv"]);
    d.restart();
    assert_eq!(
        d.docker_ok(&[
            "run",
            "--rm",
            "-v",
            "data:/data",
            "bb:local",
            "cat",
            "/data/f"
        ]),
        "kept\n"
    );
    assert_eq!(
        d.docker_ok(&["run", "--rm", "-v", "auto:/x", "bb:local", "cat", "/x/f"]),
        "auto\n"
    );
    let ls = d.docker_ok(&[
        "volume",
        "ls",
        "--format",
        "{{.Driver}} {{.Name}}",
        "--filter",
        "label=team=a",
    ]);
    assert_eq!(ls.trim(), "local data");
    let mp = d.docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "data"]);
    assert!(
        mp.trim()
            .starts_with(d.data_root.join("plugin-data/local").to_str().unwrap()),
        "{mp}"
    );
    // In use → 409; anonymous volumes go with rm -v.
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "user",
        "-v",
        "data:/data",
        "-v",
        "/anon",
        "bb:local",
        "sleep",
        "30",
    ]);
    let err = d.docker_err(&["volume", "rm", "data"]);
    assert!(err.contains("volume is in use"), "{err}");
    let before = d.docker_ok(&["volume", "ls", "-q"]);
    assert_eq!(before.lines().count(), 3, "{before}");
    d.docker_ok(&["rm", "-f", "-v", "user"]);
    let after = d.docker_ok(&["volume", "ls", "-q"]);
    assert_eq!(after.lines().count(), 2, "anonymous volume left: {after}");
    d.docker_ok(&["volume", "rm", "data", "auto"]);
    assert!(d.docker_ok(&["volume", "ls", "-q"]).trim().is_empty());
    let err = d.docker_err(&["volume", "inspect", "data"]);
    assert!(err.contains("no such volume"), "{err}");
    // Path tricks in names are refused before any plugin call.
    let err = d.docker_err(&["volume", "create", "../escape"]);
    assert!(err.contains("invalid characters"), "{err}");
}

#[test]
fn second_log_plugin_selected_with_log_driver() {
    let plugins = plugins_dir();
    let d = TestDaemon::start();
    // User plugins live in <data-root>/plugins; the daemon loads them at start.
    drop(d);
    let d = {
        let tmp = TestDaemon::start();
        let dst = tmp.data_root.join("plugins/template-log");
        copy_dir(&plugins.join("template-log"), &dst);
        let mut tmp = tmp;
        tmp.restart();
        tmp
    };
    import_busybox(&d, "bb:local");
    let info = d.docker_ok(&["info", "--format", "{{json .Plugins.Log}}"]);
    assert!(info.contains("template-log"), "{info}");
    let id = d.docker_ok(&[
        "run",
        "-d",
        "--log-driver",
        "template-log",
        "bb:local",
        "echo",
        "to-template",
    ]);
    let id = id.trim();
    d.docker_ok(&["wait", id]);
    let driver = d.docker_ok(&["inspect", "-f", "{{.HostConfig.LogConfig.Type}}", id]);
    assert_eq!(driver.trim(), "template-log");
    let file = d
        .data_root
        .join("plugin-data/template-log")
        .join(format!("{id}.log"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if text.contains("to-template") {
                assert!(text.starts_with("stdout "), "{text}");
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "template-log wrote nothing to {}",
            file.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let err = d.docker_err(&[
        "run",
        "--rm",
        "--log-driver",
        "no-such-driver",
        "bb:local",
        "true",
    ]);
    assert!(err.contains("no-such-driver"), "{err}");
}
