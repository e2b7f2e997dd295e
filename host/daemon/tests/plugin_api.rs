//! `docker plugin` with berth's WASM plugins, the author's whole path: from an empty
//! directory, `berth-plugin new` a log driver, build it, push it to a loopback
//! registry, `docker plugin install` it, log through it; then ls / inspect / set /
//! disable (in use, and a run through a disabled driver) / enable / rm, across a
//! kill -9. Privileges asked at install, a tampered artifact and a refused plugin.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::images::import_busybox;
use common::plugin_sdk::run_tool;
use common::registry::{
    bcrypt_secret, start_registry, start_registry_with, Registry, RegistryOpts, TestCa,
};
use common::{stderr, stdout, TestDaemon};

/// A log driver made from nothing with `berth-plugin new` + `build`, once per run.
fn built_plugin() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        let out = run_tool(tmp.path(), &["new", "--kind", "log", "echo-log"]);
        assert!(out.contains("created"), "{out}");
        let project = tmp.path().join("echo-log");
        let out = run_tool(&project, &["build"]);
        assert!(out.contains("ok: log plugin \"echo-log\""), "{out}");
        let out = run_tool(&project, &["check"]);
        assert!(out.contains("imports within the log allowlist"), "{out}");
        (tmp, project)
    })
    .1
}

/// A copy of the built plugin's dist/ with its manifest changed (and optionally
/// bytes appended to the component as a custom section, for a distinct digest).
fn variant(name: &str, extra_manifest: &str, tag_bytes: Option<&[u8]>) -> tempfile::TempDir {
    let dist = built_plugin().join("dist");
    let tmp = tempfile::tempdir().unwrap();
    let m = std::fs::read_to_string(dist.join("manifest.toml"))
        .unwrap()
        .replace("name = \"echo-log\"", &format!("name = \"{name}\""));
    std::fs::write(
        tmp.path().join("manifest.toml"),
        format!("{m}\n{extra_manifest}"),
    )
    .unwrap();
    let mut wasm = std::fs::read(dist.join("plugin.wasm")).unwrap();
    if let Some(b) = tag_bytes {
        // A custom section: id 0, size, name "tag", payload.
        wasm.push(0);
        wasm.push((1 + 3 + b.len()) as u8);
        wasm.push(3);
        wasm.extend_from_slice(b"tag");
        wasm.extend_from_slice(b);
    }
    std::fs::write(tmp.path().join("plugin.wasm"), wasm).unwrap();
    tmp
}

/// A loopback registry serving HTTPS with a certificate nobody trusts: plugins are
/// pushed and installed the way dockerd reaches loopback registries (HTTPS first).
fn registry() -> Option<Registry> {
    static CA: OnceLock<TestCa> = OnceLock::new();
    start_registry_with(RegistryOpts {
        tls: Some(CA.get_or_init(|| TestCa::new("127.0.0.1"))),
        ..Default::default()
    })
}

fn wait_logs(d: &TestDaemon, id: &str, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = d.docker(&["logs", id]);
        if stdout(&out) == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "docker logs: {:?} / {:?}",
            stdout(&out),
            stderr(&out)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn sdk_plugin_installed_from_registry_logs_and_is_managed() {
    let Some(reg) = registry() else { return };
    let project = built_plugin();
    let remote = format!("{}/echo-log:1.0", reg.addr);
    let out = run_tool(project, &["push", &remote]);
    assert!(out.contains("digest: sha256:"), "{out}");

    let mut d = common::images::daemon_with_busybox("bb:local");
    let out = d.docker_ok(&["plugin", "install", &remote]);
    assert!(out.contains(&format!("Installed plugin {remote}")), "{out}");
    let ls = d.docker_ok(&["plugin", "ls", "--format", "{{.Name}} {{.Enabled}}"]);
    assert_eq!(ls.trim(), format!("{remote} true"));
    let inspect = d.docker_ok(&[
        "plugin",
        "inspect",
        "-f",
        "{{.PluginReference}} {{index .Config.Interface.Types 0}} {{.Settings.Env}}",
        &remote,
    ]);
    assert_eq!(
        inspect.trim(),
        format!("{remote} docker.logdriver/1.0 [prefix=]")
    );
    let only_disabled = d.docker_ok(&["plugin", "ls", "-q", "--filter", "enabled=false"]);
    assert_eq!(only_disabled.trim(), "");
    let info = d.docker_ok(&["info", "--format", "{{json .Plugins.Log}}"]);
    assert!(info.contains("\"echo-log\""), "{info}");

    // Logging through it, by its manifest name, and `docker logs` reads it back.
    let id = d.docker_ok(&[
        "run",
        "-d",
        "--log-driver",
        "echo-log",
        "bb:local",
        "sh",
        "-c",
        "echo one; echo two >&2",
    ]);
    let id = id.trim();
    d.docker_ok(&["wait", id]);
    wait_logs(&d, id, "one\n");
    assert_eq!(
        d.docker_ok(&["inspect", "-f", "{{.HostConfig.LogConfig.Type}}", id])
            .trim(),
        "echo-log"
    );

    // Settings only while disabled; a running user blocks disable.
    let err = d.docker_err(&["plugin", "set", &remote, "prefix=x: "]);
    assert!(err.contains("disable plugin before setting"), "{err}");
    let busy = d.docker_ok(&[
        "run",
        "-d",
        "--log-driver",
        "echo-log",
        "bb:local",
        "sleep",
        "60",
    ]);
    let err = d.docker_err(&["plugin", "disable", &remote]);
    assert!(err.contains("is in use"), "{err}");
    d.docker_ok(&["rm", "-f", busy.trim()]);
    d.docker_ok(&["plugin", "disable", &remote]);
    let err = d.docker_err(&["plugin", "set", &remote, "nope=1"]);
    assert!(
        err.contains("not found in the plugin configuration"),
        "{err}"
    );
    d.docker_ok(&["plugin", "set", &remote, "prefix=x: "]);
    let err = d.docker_err(&[
        "run",
        "--rm",
        "--log-driver",
        "echo-log",
        "bb:local",
        "true",
    ]);
    assert!(err.contains("is disabled"), "{err}");
    let err = d.docker_err(&["plugin", "disable", &remote]);
    assert!(err.contains("already disabled"), "{err}");

    // The disabled state and the setting survive kill -9.
    d.kill();
    d.restart();
    let ls = d.docker_ok(&["plugin", "ls", "--format", "{{.Name}} {{.Enabled}}"]);
    assert_eq!(ls.trim(), format!("{remote} false"));
    let env = d.docker_ok(&["plugin", "inspect", "-f", "{{.Settings.Env}}", &remote]);
    assert_eq!(env.trim(), "[prefix=x: ]");
    let err = d.docker_err(&[
        "run",
        "--rm",
        "--log-driver",
        "echo-log",
        "bb:local",
        "true",
    ]);
    assert!(err.contains("is disabled"), "{err}");

    d.docker_ok(&["plugin", "enable", &remote]);
    let id2 = d.docker_ok(&[
        "run",
        "-d",
        "--log-driver",
        "echo-log",
        "bb:local",
        "echo",
        "three",
    ]);
    let id2 = id2.trim();
    d.docker_ok(&["wait", id2]);
    wait_logs(&d, id2, "three\n");
    // The plugin got the setting: it prefixes what it stores.
    let stored = std::fs::read_to_string(
        d.data_root
            .join("plugin-data/echo-log")
            .join(format!("{id2}.log")),
    )
    .unwrap();
    assert!(stored.starts_with("x: stdout "), "{stored}");

    // Upgrade (while disabled) to a different build pushed as 2.0: same plugin,
    // new component, the setting kept.
    let v2 = variant("echo-log", "", Some(b"v2"));
    let remote2 = format!("{}/echo-log:2.0", reg.addr);
    run_tool(v2.path(), &["push", &remote2]);
    let id_before = d.docker_ok(&["plugin", "inspect", "-f", "{{.Id}}", &remote]);
    let err = d.docker_err(&["plugin", "upgrade", &remote, &remote2]);
    assert!(err.contains("disabled before upgrading"), "{err}");
    d.docker_ok(&["plugin", "disable", &remote]);
    // (--skip-remote-check: the CLI asks before switching to another tag.)
    let out = d.docker_ok(&[
        "plugin",
        "upgrade",
        "--skip-remote-check",
        &remote,
        &remote2,
    ]);
    assert!(out.contains("Upgraded plugin"), "{out}");
    let after = d.docker_ok(&[
        "plugin",
        "inspect",
        "-f",
        "{{.Id}} {{.PluginReference}} {{.Settings.Env}}",
        &remote,
    ]);
    let want_tail = format!(" {remote2} [prefix=x: ]");
    assert!(after.trim().ends_with(&want_tail), "{after}");
    assert_ne!(after.split(' ').next().unwrap(), id_before.trim());
    d.docker_ok(&["plugin", "enable", &remote]);
    let err = d.docker_err(&["plugin", "rm", &remote]);
    assert!(err.contains("is enabled"), "{err}");
    d.docker_ok(&["plugin", "rm", "-f", &remote]);
    assert_eq!(d.docker_ok(&["plugin", "ls", "-q"]).trim(), "");
    let err = d.docker_err(&["plugin", "inspect", &remote]);
    assert!(err.contains("not found"), "{err}");
    d.kill();
    d.restart();
    assert_eq!(d.docker_ok(&["plugin", "ls", "-q"]).trim(), "");
}

/// One raw HTTP/1.0 request on berthd's socket; the whole response.
fn raw_request(d: &TestDaemon, req: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp
}

/// `POST /plugins/pull` without accepting the privileges, straight to the socket.
fn pull_without_privileges(d: &TestDaemon, remote: &str) -> String {
    raw_request(
        d,
        &format!("POST /v1.47/plugins/pull?remote={remote} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"),
    )
}

#[test]
fn privileges_tampering_and_refusal() {
    let Some(reg) = registry() else { return };
    let d = TestDaemon::start();

    // A plugin asking for a network grant: shown at install, refused unless accepted.
    let net = variant(
        "net-log",
        "[grants]\nnetwork = [\"127.0.0.1:5140\"]\n",
        None,
    );
    let net_ref = format!("{}/net-log:1.0", reg.addr);
    run_tool(net.path(), &["push", &net_ref]);
    let out = d
        .docker_cmd(&["plugin", "install", &net_ref])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("network: [127.0.0.1:5140]"), "{text}");
    assert!(
        text.contains("permission denied while installing plugin"),
        "{text}"
    );
    let resp = pull_without_privileges(&d, &net_ref);
    assert!(resp.starts_with("HTTP/1.0 403"), "{resp}");
    assert!(resp.contains("were not accepted"), "{resp}");
    assert_eq!(d.docker_ok(&["plugin", "ls", "-q"]).trim(), "");
    d.docker_ok(&["plugin", "install", "--grant-all-permissions", &net_ref]);
    let ls = d.docker_ok(&["plugin", "ls", "--format", "{{.Name}} {{.Enabled}}"]);
    assert_eq!(ls.trim(), format!("{net_ref} true"));

    // A tampered component: the registry serves bytes that do not match the digest.
    let bad = variant("tampered-log", "", Some(b"tampered"));
    let bad_ref = format!("{}/tampered-log:1.0", reg.addr);
    run_tool(bad.path(), &["push", &bad_ref]);
    let wasm = std::fs::read(bad.path().join("plugin.wasm")).unwrap();
    let digest = {
        let out = Command::new("sha256sum")
            .arg(bad.path().join("plugin.wasm"))
            .output()
            .unwrap();
        format!("sha256:{}", stdout(&out).split_whitespace().next().unwrap())
    };
    let blob = reg.blob_path(&digest);
    let mut flipped = std::fs::read(&blob).unwrap();
    assert_eq!(flipped, wasm);
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    std::fs::write(&blob, flipped).unwrap();
    let err = d.docker_err(&["plugin", "install", &bad_ref]);
    assert!(err.contains("digest mismatch"), "{err}");
    let ls = d.docker_ok(&["plugin", "ls", "--format", "{{.Name}}"]);
    assert!(!ls.contains("tampered"), "{ls}");

    // Not a plugin at all: a reference that is missing.
    let err = d.docker_err(&["plugin", "install", &format!("{}/missing:1", reg.addr)]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn refused_plugin_is_listed_with_its_reason() {
    let d = TestDaemon::start();
    // Copied by hand into the plugin dir, with a manifest that does not match the
    // component's interface version.
    let v = variant("stale-log", "", None);
    let dst = d.data_root.join("plugins/stale-log");
    std::fs::create_dir_all(&dst).unwrap();
    let m = std::fs::read_to_string(v.path().join("manifest.toml"))
        .unwrap()
        .replace("berth:driver@0.1.0", "berth:driver@0.2.0");
    std::fs::write(dst.join("manifest.toml"), m).unwrap();
    std::fs::copy(v.path().join("plugin.wasm"), dst.join("plugin.wasm")).unwrap();
    let mut d = d;
    d.restart();
    import_busybox(&d, "bb:local");
    let ls = d.docker_ok(&[
        "plugin",
        "ls",
        "--no-trunc",
        "--format",
        "{{.Name}}|{{.Enabled}}|{{.Description}}",
    ]);
    assert!(
        ls.trim()
            .starts_with("stale-log:latest|false|REFUSED: manifest says berth:driver@0.2.0"),
        "{ls}"
    );
    let err = d.docker_err(&[
        "run",
        "--rm",
        "--log-driver",
        "stale-log",
        "bb:local",
        "true",
    ]);
    assert!(
        err.contains("refused") && err.contains("berth:driver@0.2.0"),
        "{err}"
    );
    let err = d.docker_err(&["plugin", "enable", "stale-log"]);
    assert!(err.contains("berth:driver@0.2.0"), "{err}");
    d.docker_ok(&["plugin", "rm", "stale-log"]);
    assert!(!dst.exists());
}

#[test]
fn sdk_volume_plugin_serves_volumes_and_blocks_disable_while_used() {
    let Some(reg) = registry() else { return };
    let tmp = tempfile::tempdir().unwrap();
    run_tool(tmp.path(), &["new", "--kind", "volume", "my-vol"]);
    let project = tmp.path().join("my-vol");
    let out = run_tool(&project, &["build"]);
    assert!(out.contains("ok: volume plugin \"my-vol\""), "{out}");
    let remote = format!("{}/my-vol:1.0", reg.addr);
    run_tool(&project, &["push", &remote]);

    let d = common::images::daemon_with_busybox("bb:local");
    d.docker_ok(&["plugin", "install", "--alias", "my-vol", &remote]);
    let ls = d.docker_ok(&[
        "plugin",
        "ls",
        "--filter",
        "capability=volumedriver",
        "--format",
        "{{.Name}} {{.Enabled}}",
    ]);
    assert_eq!(ls.trim(), "my-vol:latest true");
    let none = d.docker_ok(&["plugin", "ls", "-q", "--filter", "capability=logdriver"]);
    assert_eq!(none.trim(), "");
    d.docker_ok(&["volume", "create", "-d", "my-vol", "data"]);
    d.docker_ok(&[
        "run",
        "--rm",
        "--volume-driver",
        "my-vol",
        "-v",
        "data:/data",
        "bb:local",
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    let got = d.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        "bb:local",
        "cat",
        "/data/f",
    ]);
    assert_eq!(got, "kept\n");
    let err = d.docker_err(&["plugin", "disable", "my-vol"]);
    assert!(err.contains("is in use") && err.contains("data"), "{err}");
    d.docker_ok(&["volume", "rm", "data"]);
    d.docker_ok(&["plugin", "disable", "my-vol"]);
    let err = d.docker_err(&["volume", "create", "-d", "my-vol", "again"]);
    assert!(err.contains("my-vol"), "{err}");
    d.docker_ok(&["plugin", "rm", "my-vol"]);
}

/// A registry with basic auth: `berth-plugin push` uses what `docker login` stored,
/// and `docker plugin install` passes the same credentials through X-Registry-Auth.
#[test]
fn private_registry_push_and_install_use_docker_login() {
    let Some(hash) = bcrypt_secret() else {
        eprintln!("SKIP: cannot make a bcrypt htpasswd line (python3 crypt module missing)");
        return;
    };
    let Some(reg) = start_registry(Some(&format!("tester:{hash}"))) else {
        return;
    };
    let project = built_plugin();
    let remote = format!("{}/private-log:1.0", reg.addr);
    let d = TestDaemon::start();
    let config_dir = d.dir.path().join("docker-config");
    let push = |expect_ok: bool| {
        let out = Command::new(common::plugin_sdk::tool())
            .args(["push", &remote])
            .current_dir(project)
            .env("DOCKER_CONFIG", &config_dir)
            .output()
            .unwrap();
        assert_eq!(out.status.success(), expect_ok, "{}", stderr(&out));
        stderr(&out)
    };
    let err = push(false);
    assert!(err.to_lowercase().contains("unauthorized"), "{err}");
    // berthd answers 401 without credentials (the CLI would then ask for a login
    // interactively, so this asks the API directly).
    let resp = raw_request(
        &d,
        &format!("GET /v1.47/plugins/privileges?remote={remote} HTTP/1.0\r\nHost: x\r\n\r\n"),
    );
    assert!(resp.starts_with("HTTP/1.0 401"), "{resp}");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"dGVzdGVyOnMzY3JldA=="}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    push(true);
    d.docker_ok(&["plugin", "install", "--alias", "private-log", &remote]);
    let ls = d.docker_ok(&["plugin", "ls", "--format", "{{.Name}} {{.Enabled}}"]);
    assert_eq!(ls.trim(), "private-log:latest true");
}
