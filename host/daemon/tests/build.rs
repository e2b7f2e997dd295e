//! `docker build` with the classic builder, through the stock docker CLI (with
//! `DOCKER_BUILDKIT=0`, as the CLI needs without buildx) and docker-py: multi-stage
//! builds, the cache, build args, targets, ONBUILD, failures and hostile contexts.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::images::import_busybox;
use common::{stderr, stdout, TestDaemon};

fn daemon() -> TestDaemon {
    common::images::daemon_with_busybox("bb:local")
}

fn build(d: &TestDaemon, args: &[&str]) -> Output {
    d.docker_cmd(&[&["build"], args].concat())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build")
}

fn build_ok(d: &TestDaemon, args: &[&str]) -> String {
    let out = build(d, args);
    assert!(
        out.status.success(),
        "docker build {args:?} failed ({}):\n{}\n{}\n--- berthd log ---\n{}",
        out.status,
        stdout(&out),
        stderr(&out),
        common::tail(&d.log(), 30)
    );
    stdout(&out)
}

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn image_id(d: &TestDaemon, name: &str) -> String {
    d.docker_ok(&["image", "inspect", "-f", "{{.Id}}", name])
        .trim()
        .to_string()
}

const MULTI_STAGE: &str = r#"
# A "static binary" built in one stage and shipped alone in a scratch image.
ARG BASE=bb:local
FROM ${BASE} AS build
ARG MSG=default
ENV GREETING="hello from" \
    STAGE=build
WORKDIR /src
COPY . .
RUN test ! -e secret.txt && cat app.txt > /built.txt && echo "$GREETING $STAGE $MSG" >> /built.txt \
 && cp /bin/busybox /hello
RUN echo step output on stdout && echo step output on stderr >&2

FROM scratch
COPY --from=build /hello /bin/busybox
COPY --from=build /built.txt /etc/
LABEL org.example.kind=demo
EXPOSE 8080
ENTRYPOINT ["/bin/busybox"]
CMD ["cat", "/etc/built.txt"]
"#;

fn multi_stage_context(dir: &Path) {
    write(dir, "Dockerfile", MULTI_STAGE);
    write(dir, "app.txt", "app contents\n");
    write(dir, "secret.txt", "must not be sent\n");
    write(dir, ".dockerignore", "secret.txt\n");
}

#[test]
fn multi_stage_build_then_all_cache_hits() {
    let d = daemon();
    let ctx = tempfile::tempdir().unwrap();
    multi_stage_context(ctx.path());
    let ctx_s = ctx.path().to_str().unwrap();
    let out = build_ok(&d, &["-t", "app:1", "--build-arg", "MSG=argv", ctx_s]);
    assert!(out.contains("Step 1/"), "{out}");
    assert!(
        out.contains("step output on stdout"),
        "RUN output streamed: {out}"
    );
    assert!(out.contains("step output on stderr"), "{out}");
    assert!(out.contains("Successfully tagged app:1"), "{out}");
    let run = d.docker_ok(&["run", "--rm", "app:1"]);
    assert_eq!(run, "app contents\nhello from build argv\n");
    // Only the scratch stage's files: two layers, no shell.
    let layers = d.docker_ok(&["image", "inspect", "-f", "{{len .RootFS.Layers}}", "app:1"]);
    assert_eq!(layers.trim(), "2");
    let cfg = d.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{index .Config.Labels \"org.example.kind\"}} {{json .Config.ExposedPorts}}",
        "app:1",
    ]);
    assert_eq!(
        cfg.trim(),
        r#"["/bin/busybox"] ["cat","/etc/built.txt"] demo {"8080/tcp":{}}"#
    );
    let first = image_id(&d, "app:1");

    // Nothing changed: every step is a cache hit and the image is the same.
    let again = build_ok(&d, &["-t", "app:2", "--build-arg", "MSG=argv", ctx_s]);
    let steps = again.matches("Step ").count();
    let hits = again.matches("Using cache").count();
    let froms = 2;
    assert_eq!(
        hits + froms + 1,
        steps,
        "all but FROM and the meta ARG cached:\n{again}"
    );
    assert!(!again.contains("Running in"), "{again}");
    assert_eq!(image_id(&d, "app:2"), first);

    // A changed file invalidates its COPY and what follows, not what precedes.
    write(ctx.path(), "app.txt", "changed\n");
    let changed = build_ok(&d, &["-t", "app:3", "--build-arg", "MSG=argv", ctx_s]);
    assert!(changed.contains("Running in"), "{changed}");
    assert_eq!(
        d.docker_ok(&["run", "--rm", "app:3"]),
        "changed\nhello from build argv\n"
    );

    // Intermediate images stay out of `docker images`, and no build container is left.
    let listed = d.docker_ok(&["images", "-q"]);
    let all = d.docker_ok(&["images", "-aq"]);
    assert!(
        all.lines().count() > listed.lines().count() + 3,
        "{listed}\n{all}"
    );
    assert_eq!(d.docker_ok(&["ps", "-aq"]).trim(), "");

    // --no-cache runs every step again.
    let fresh = build_ok(&d, &["--no-cache", "-q", "--build-arg", "MSG=argv", ctx_s]);
    assert!(
        fresh.trim().starts_with("sha256:"),
        "-q prints the ID: {fresh}"
    );

    // `builder prune` drops the cache; the tagged images stay.
    let pruned = d.docker_ok(&["builder", "prune", "-f"]);
    assert!(pruned.contains("Total"), "{pruned}");
    d.docker_ok(&["run", "--rm", "app:3"]);
    let after = build_ok(&d, &["--build-arg", "MSG=argv", ctx_s]);
    assert!(
        after.contains("Running in"),
        "cache gone after prune: {after}"
    );
}

#[test]
fn target_args_onbuild_and_metadata() {
    let d = daemon();
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        "FROM bb:local AS first\nARG WHO\nRUN echo \"first ${WHO:-nobody}\" > /who\n\
         FROM bb:local AS second\nRUN echo second > /who\n",
    );
    let c = ctx.path().to_str().unwrap();
    build_ok(
        &d,
        &[
            "-t",
            "t:first",
            "--target",
            "first",
            "--build-arg",
            "WHO=me",
            c,
        ],
    );
    assert_eq!(
        d.docker_ok(&["run", "--rm", "t:first", "cat", "/who"]),
        "first me\n"
    );
    let e = stderr(&build(&d, &["--target", "nope", c]));
    assert!(e.contains("failed to reach build target nope"), "{e}");
    // An undeclared --build-arg is reported, as dockerd does.
    let out = build_ok(&d, &["-t", "t:second", "--build-arg", "UNUSED=1", c]);
    assert!(
        out.contains("[Warning] One or more build-args [UNUSED] were not consumed"),
        "{out}"
    );

    // ONBUILD triggers run in the child build.
    let base = tempfile::tempdir().unwrap();
    write(
        base.path(),
        "Dockerfile",
        "FROM bb:local\nONBUILD COPY --chown=1000:1000 marker /marker\nONBUILD RUN echo triggered >> /marker\n\
         USER 1000:1000\nSTOPSIGNAL SIGUSR1\nHEALTHCHECK --interval=5s CMD true\nVOLUME /data\nSHELL [\"/bin/sh\", \"-ec\"]\n",
    );
    build_ok(&d, &["-t", "onbuild:base", base.path().to_str().unwrap()]);
    let base_cfg = d.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.OnBuild}}|{{.Config.User}}|{{.Config.StopSignal}}|{{.Config.Healthcheck.Interval}}|{{json .Config.Volumes}}|{{json .Config.Shell}}",
        "onbuild:base",
    ]);
    assert_eq!(
        base_cfg.trim(),
        r#"["COPY --chown=1000:1000 marker /marker","RUN echo triggered >> /marker"]|1000:1000|SIGUSR1|5s|{"/data":{}}|["/bin/sh","-ec"]"#
    );
    let child = tempfile::tempdir().unwrap();
    write(child.path(), "Dockerfile", "FROM onbuild:base\nUSER 0\n");
    write(child.path(), "marker", "from child context\n");
    let out = build_ok(&d, &["-t", "onbuild:child", child.path().to_str().unwrap()]);
    assert!(out.contains("Executing 2 build triggers"), "{out}");
    assert_eq!(
        d.docker_ok(&["run", "--rm", "onbuild:child", "cat", "/marker"]),
        "from child context\ntriggered\n"
    );
    let onbuild = d.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.OnBuild}}",
        "onbuild:child",
    ]);
    assert_eq!(onbuild.trim(), "null", "triggers are not inherited twice");
}

#[test]
fn failing_run_exits_non_zero_with_the_step_output() {
    let d = daemon();
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        "FROM bb:local\nRUN echo visible-step-output && exit 3\n",
    );
    let out = build(&d, &[ctx.path().to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("visible-step-output"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("The command '/bin/sh -c echo visible-step-output && exit 3' returned a non-zero code: 3"),
        "{}",
        stderr(&out)
    );
    // --force-rm removes the failed step's container; the default keeps it, as dockerd.
    assert_eq!(d.docker_ok(&["ps", "-aq"]).lines().count(), 1);
    build(&d, &["--force-rm", ctx.path().to_str().unwrap()]);
    assert_eq!(d.docker_ok(&["ps", "-aq"]).lines().count(), 1);

    // BuildKit-only syntax gets the classic builder's error.
    write(
        ctx.path(),
        "Dockerfile",
        "FROM bb:local\nRUN --mount=type=cache,target=/c true\n",
    );
    let e = stderr(&build(&d, &[ctx.path().to_str().unwrap()]));
    assert!(e.contains("requires BuildKit"), "{e}");
    write(ctx.path(), "Dockerfile", "FROM bb:local\nBOGUS x\n");
    let e = stderr(&build(&d, &[ctx.path().to_str().unwrap()]));
    assert!(e.contains("unknown instruction: BOGUS"), "{e}");
}

/// POST /build with a raw tar: (status, body).
fn post_build(d: &TestDaemon, tar: &[u8]) -> (u16, String) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), tar).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"])
        .args(["--unix-socket", d.socket.to_str().unwrap()])
        .args(["-H", "Content-Type: application/x-tar", "--data-binary"])
        .arg(format!("@{}", f.path().display()))
        .arg("http://localhost/v1.45/build?t=evil:1")
        .output()
        .unwrap();
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        let bytes = name.as_bytes();
        h.as_gnu_mut().unwrap().name[..bytes.len()].copy_from_slice(bytes);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn hostile_contexts_never_reach_outside_files() {
    let d = daemon();
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path().to_str().unwrap();
    // COPY of a path above the context.
    write(ctx.path(), "Dockerfile", "FROM bb:local\nCOPY ../x /x\n");
    let e = stderr(&build(&d, &[c]));
    assert!(e.contains("outside the build context"), "{e}");
    // A symlink in the context that points at a host file resolves inside the context.
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "host-secret", "host secret\n");
    std::os::unix::fs::symlink(outside.path().join("host-secret"), ctx.path().join("link"))
        .unwrap();
    write(ctx.path(), "Dockerfile", "FROM bb:local\nCOPY link /got\n");
    let out = build(&d, &["-t", "leak:1", c]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("file not found in build context"),
        "{}",
        stderr(&out)
    );
    // A relative link that climbs out of the context: the context is refused.
    std::fs::remove_file(ctx.path().join("link")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../etc/hostname", ctx.path().join("link"))
        .unwrap();
    let e = stderr(&build(&d, &["-t", "leak:2", c]));
    assert!(e.contains("points outside the layer root"), "{e}");
    assert!(d.docker(&["image", "inspect", "leak:2"]).status.code() != Some(0));

    // A context tar with `..` entries is refused before anything is built.
    let tar = tar_with(&[
        ("Dockerfile", b"FROM bb:local\nCOPY . /\n"),
        ("../../escaped", b"x"),
    ]);
    let (code, body) = post_build(&d, &tar);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("escapes"), "{body}");
    assert!(!Path::new("/escaped").exists());
    // A context without a Dockerfile.
    let (code, body) = post_build(&d, &tar_with(&[("x", b"y")]));
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("Cannot locate specified Dockerfile"),
        "{body}"
    );
    // A malformed tag never reads the context.
    let (code, _) = {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .args(["--unix-socket", d.socket.to_str().unwrap()])
            .arg("http://localhost/v1.45/build?t=UPPER:case")
            .output()
            .unwrap();
        (stdout(&out), ())
    };
    assert_eq!(code.trim(), "400");
}

#[test]
fn docker_py_build_with_rm_leaves_no_containers() {
    let d = daemon();
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        "FROM bb:local\nRUN echo one > /one\nRUN echo two > /two\nCMD [\"cat\", \"/one\", \"/two\"]\n",
    );
    let script = r#"
import docker, sys
c = docker.DockerClient(base_url=sys.argv[1], version="1.41")
img, logs = c.images.build(path=sys.argv[2], tag="py:built", rm=True)
lines = [l.get("stream", "") for l in logs]
assert any("Successfully built" in l for l in lines), lines
print(img.id)
print(len(c.containers.list(all=True)))
print(c.containers.run("py:built", remove=True).decode(), end="")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(d.host())
        .arg(ctx.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("sha256:"), "{text}");
    assert_eq!(lines[1], "0", "no intermediate containers left: {text}");
    assert_eq!(&lines[2..], ["one", "two"]);
}

/// `ADD <url>`: berthd fetches the file (here from a busybox httpd inside the daemon's
/// own network namespace) and stores it 0600 under the destination directory.
#[test]
fn add_fetches_a_url_into_the_image() {
    let d = TestDaemon::start_in_netns(&[
        "--bip",
        "10.231.10.1/24",
        "--default-address-pool",
        "base=10.242.0.0/16,size=24",
    ]);
    import_busybox(&d, "bb:local");
    let www = tempfile::tempdir().unwrap();
    write(www.path(), "payload.txt", "from the web\n");
    let serve = format!(
        "timeout 120 /bin/busybox httpd -f -p 10.239.0.2:18099 -h {} >/dev/null 2>&1 &",
        www.path().display()
    );
    let started = d.in_netns(&["sh", "-c", &serve]);
    assert!(started.status.success(), "{}", stderr(&started));
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        "FROM bb:local\nADD http://10.239.0.2:18099/payload.txt /data/\n\
         RUN cat /data/payload.txt && stat -c '%a' /data/payload.txt\n",
    );
    // The server may take a moment to listen.
    let mut result = Err(String::new());
    for _ in 0..20 {
        let out = build(&d, &["-t", "fetched:1", ctx.path().to_str().unwrap()]);
        if out.status.success() {
            result = Ok(stdout(&out));
            break;
        }
        result = Err(stderr(&out));
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let _ = Command::new("pkill")
        .args(["-f", "httpd -f -p 10.239.0.2:18099"])
        .status();
    let text = result.unwrap_or_else(|e| panic!("ADD of a URL never worked: {e}"));
    assert!(text.contains("from the web\n600\n"), "{text}");
}

/// `--cache-from`: an image with no build cache behind it (saved, removed, loaded back, as
/// a CI job gets it from a registry) stands in for the steps its history shows.
#[test]
fn cache_from_reuses_a_loaded_images_layers() {
    let d = daemon();
    let ctx = d.dir.path().join("cache-from");
    write(
        &ctx,
        "Dockerfile",
        "FROM bb:local\nARG V=1\nRUN echo $V > /v\nCOPY f /f\nRUN cat /f /v > /g\nENV X=y\nCMD [\"cat\", \"/g\"]\n",
    );
    write(&ctx, "f", "from the context\n");
    let ctx_s = ctx.to_str().unwrap();
    build_ok(&d, &["-t", "app:1", ctx_s]);
    let id = image_id(&d, "app:1");
    let tar = d.dir.path().join("app.tar");
    d.docker_ok(&["save", "-o", tar.to_str().unwrap(), "app:1"]);
    d.docker_ok(&["rmi", "app:1"]);
    d.docker_ok(&["builder", "prune", "-f"]);
    d.docker_ok(&["load", "-i", tar.to_str().unwrap()]);
    assert_eq!(image_id(&d, "app:1"), id);

    // Without it the loaded image is no cache: the steps run.
    let out = build_ok(&d, &["-t", "tmp", ctx_s]);
    assert!(out.contains("Running in"), "{out}");
    d.docker_ok(&["rmi", "tmp"]);
    d.docker_ok(&["builder", "prune", "-f"]);

    // With it every step after FROM is a cache hit, and the result is the same image.
    let out = build_ok(&d, &["--cache-from", "app:1", "-t", "app:2", ctx_s]);
    assert!(!out.contains("Running in"), "{out}");
    assert_eq!(out.matches("Using cache").count(), 6, "{out}");
    assert_eq!(image_id(&d, "app:2"), id);
    assert_eq!(
        d.docker_ok(&["run", "--rm", "app:2"]),
        "from the context\n1\n"
    );

    // A changed source: the steps before it still come from the cache image, the rest run.
    write(&ctx, "f", "changed\n");
    let out = build_ok(&d, &["--cache-from", "app:1", "-t", "app:3", ctx_s]);
    assert_eq!(out.matches("Using cache").count(), 2, "{out}");
    assert_eq!(out.matches("Running in").count(), 1, "{out}");
    assert_eq!(d.docker_ok(&["run", "--rm", "app:3"]), "changed\n1\n");
    // A build arg that differs is a different step, as in the build cache.
    let out = build_ok(
        &d,
        &[
            "--cache-from",
            "app:1",
            "--build-arg",
            "V=2",
            "-t",
            "app:4",
            ctx_s,
        ],
    );
    assert_eq!(out.matches("Running in").count(), 2, "{out}");
    assert_eq!(d.docker_ok(&["run", "--rm", "app:4"]), "changed\n2\n");
    // An unknown cache source is skipped, not an error.
    build_ok(&d, &["--cache-from", "nope:1", "-q", ctx_s]);
    // `--squash` needs dockerd's experimental mode, which berthd does not report (so the
    // CLI refuses it itself; an API client gets dockerd's 400).
    let o = build(&d, &["--squash", ctx_s]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("experimental features enabled"),
        "{}",
        stderr(&o)
    );
}
