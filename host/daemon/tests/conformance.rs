//! Docker API details that clients rely on: status codes for bad bodies and archives,
//! version-dependent behaviour and what `docker version` reports.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{stdout, TestDaemon};

/// `curl -i` against the daemon's socket; `body` is sent as is.
fn curl(d: &TestDaemon, method: &str, path: &str, body: Option<&[u8]>) -> String {
    let mut cmd = Command::new("curl");
    // HEAD needs -I: with -X HEAD curl waits for the body that Content-Length announces.
    match method {
        "HEAD" => cmd.args(["-s", "-I", "--unix-socket"]),
        _ => cmd.args(["-s", "-i", "-X", method, "--unix-socket"]),
    };
    cmd.arg(&d.socket).arg(format!("http://x{path}"));
    if body.is_some() {
        cmd.args([
            "-H",
            "Content-Type: application/x-tar",
            "--data-binary",
            "@-",
        ]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(b) = body {
        stdin.write_all(b).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    stdout(&out)
}

#[test]
fn oversized_body_is_413() {
    let d = TestDaemon::start();
    let mut body = b"{\"Image\":\"bb:local\",\"Labels\":{\"x\":\"".to_vec();
    body.extend(std::iter::repeat_n(b'a', 3 << 20));
    body.extend_from_slice(b"\"}}");
    let out = Command::new("curl")
        .args(["-s", "-i", "-X", "POST", "--unix-socket"])
        .arg(&d.socket)
        .args([
            "-H",
            "Content-Type: application/json",
            "-H",
            "Expect:",
            "--data-binary",
            "@-",
            "http://x/v1.51/containers/create",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(&body)?;
            c.wait_with_output()
        })
        .unwrap();
    let text = stdout(&out);
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "{}",
        &text[..text.len().min(400)]
    );
    assert!(text.contains("\"message\":"), "{text}");
}

fn tar_with(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    // set_path refuses `..`; write the raw name as a hostile client would.
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn archive_with_parent_dir_members_is_refused() {
    let d = common::images::daemon_with_busybox("bb:local");
    d.docker_ok(&["run", "-d", "--name", "arch", "bb:local", "sleep", "1000"]);
    let out = curl(
        &d,
        "PUT",
        "/v1.51/containers/arch/archive?path=/tmp",
        Some(&tar_with("../escaped", b"x")),
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("is outside of"), "{out}");
    let ls = d.docker_ok(&["exec", "arch", "ls", "/"]);
    assert!(!ls.contains("escaped"), "{ls}");
    // A well-formed archive still lands.
    let ok = curl(
        &d,
        "PUT",
        "/v1.51/containers/arch/archive?path=/tmp",
        Some(&tar_with("fine", b"x")),
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(d.docker_ok(&["exec", "arch", "cat", "/tmp/fine"]), "x");
}

#[test]
fn volume_prune_follows_the_api_version() {
    let d = common::images::daemon_with_busybox("bb:local");
    let make = |d: &TestDaemon| {
        d.docker_ok(&["volume", "create", "named1"]);
        d.docker_ok(&["run", "--name", "anon", "-v", "/data", "bb:local", "true"]);
        d.docker_ok(&["rm", "anon"]);
    };
    let names = |d: &TestDaemon| d.docker_ok(&["volume", "ls", "-q"]);
    // From 1.42 only anonymous volumes go, unless all=true.
    make(&d);
    assert_eq!(names(&d).lines().count(), 2);
    let out = curl(&d, "POST", "/v1.43/volumes/prune", None);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(names(&d).trim(), "named1");
    // Before 1.42 every unused volume goes.
    make(&d);
    let out = curl(&d, "POST", "/v1.41/volumes/prune", None);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(names(&d).trim(), "");
}

#[test]
fn version_uses_go_names_and_build_stamps() {
    let d = TestDaemon::start();
    let out = d.docker_ok(&[
        "version",
        "-f",
        "{{.Server.Arch}} {{.Server.GitCommit}} {{range .Server.Components}}{{.Details.Arch}} {{.Details.BuildTime}}{{end}}",
    ]);
    // The CLI prints BuildTime in its own date format: check that a year is there.
    let f: Vec<&str> = out.split_whitespace().collect();
    assert!(f.len() >= 4, "{out}");
    assert_eq!(f[0], std::env::consts::ARCH.replace("x86_64", "amd64"));
    assert!(f[1].len() >= 7 && f[1] != "unknown", "{out}");
    assert_eq!(f[2], f[0], "{out}");
    assert!(
        f[3..].iter().any(|w| w.starts_with("20")),
        "BuildTime {out}"
    );
}

/// `docker cp` resolves paths through the container's volumes and binds in every state.
#[test]
fn archive_goes_through_mounts_in_every_state() {
    let d = common::images::daemon_with_busybox("bb:local");
    let host_dir = d.dir.path().join("bindsrc");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("hostfile"), "from host\n").unwrap();
    let bind = format!("{}:/b", host_dir.display());
    let bind_ro = format!("{}:/ro:ro", host_dir.display());
    let put = d.dir.path().join("put.txt");
    std::fs::write(&put, "put\n").unwrap();
    let cp_out = |src: &str| d.docker_ok(&["cp", src, "-"]);

    // Created: a PUT into the anonymous volume is what the first run sees.
    d.docker_ok(&[
        "create",
        "--name",
        "av",
        "-v",
        "/vol1",
        "-v",
        &bind,
        "-v",
        &bind_ro,
        "bb:local",
        "sh",
        "-c",
        "cat /vol1/put.txt; echo data > /vol1/data.txt",
    ]);
    d.docker_ok(&["cp", put.to_str().unwrap(), "av:/vol1/"]);
    assert!(cp_out("av:/b/hostfile").contains("from host"));
    assert_eq!(d.docker_ok(&["start", "-a", "av"]), "put\n");

    // Exited: the file written into the volume is found, with Docker's stat header.
    assert!(cp_out("av:/vol1/data.txt").contains("data\n"));
    let head = curl(
        &d,
        "HEAD",
        "/v1.51/containers/av/archive?path=/vol1/data.txt",
        None,
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-docker-container-path-stat:"),
        "{head}"
    );
    let missing = curl(
        &d,
        "HEAD",
        "/v1.51/containers/av/archive?path=/vol1/nope",
        None,
    );
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    // A PUT lands in the volume, not in the layer underneath.
    d.docker_ok(&["cp", put.to_str().unwrap(), "av:/vol1/again.txt"]);
    let vol = d
        .docker_ok(&[
            "inspect",
            "-f",
            "{{range .Mounts}}{{if eq .Destination \"/vol1\"}}{{.Name}}{{end}}{{end}}",
            "av",
        ])
        .trim()
        .to_string();
    let seen = d.docker_ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{vol}:/v"),
        "bb:local",
        "cat",
        "/v/again.txt",
    ]);
    assert_eq!(seen, "put\n");
    // Read-only mounts refuse writes, as in Docker.
    let err = d.docker_err(&["cp", put.to_str().unwrap(), "av:/ro/"]);
    assert!(err.contains("read-only"), "{err}");

    // Running: binds and volumes through the live root.
    d.docker_ok(&[
        "run", "-d", "--name", "live", "-v", "/vol2", "-v", &bind, "bb:local", "sleep", "1000",
    ]);
    d.docker_ok(&["cp", put.to_str().unwrap(), "live:/vol2/"]);
    assert_eq!(
        d.docker_ok(&["exec", "live", "cat", "/vol2/put.txt"]),
        "put\n"
    );
    assert!(cp_out("live:/b/hostfile").contains("from host"));
}

/// The decoded `X-Docker-Container-Path-Stat` of `HEAD .../archive?path=`.
fn path_stat(d: &TestDaemon, container: &str, path: &str) -> serde_json::Value {
    let head = curl(
        d,
        "HEAD",
        &format!("/v1.51/containers/{container}/archive?path={path}"),
        None,
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    let b64 = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-docker-container-path-stat")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no stat header: {head}"));
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b64.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{b64}: {e}"))
}

/// `GET .../archive?path=` of a missing path: Docker's 404 and message, which names the
/// container as the request did.
fn expect_missing(d: &TestDaemon, container: &str, path: &str) {
    let out = curl(
        d,
        "GET",
        &format!("/v1.51/containers/{container}/archive?path={path}"),
        None,
    );
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    let want =
        format!("{{\"message\":\"Could not find the file {path} in container {container}\"}}");
    assert!(out.trim_end().ends_with(&want), "want {want}:\n{out}");
}

/// Go's `os.FileMode` bits as dockerd puts them in the stat header.
const GO_MODE_DIR: u64 = 1 << 31;
const GO_MODE_SYMLINK: u64 = 1 << 27;
const GO_MODE_STICKY: u64 = 1 << 20;

/// `docker cp` through a tmpfs (only in the running container's mount namespace) and
/// while paused; the stat header's value as dockerd writes it; the 404 message.
#[test]
fn archive_through_tmpfs_while_paused_with_dockers_stat_header() {
    let d = common::images::daemon_with_busybox("bb:local");
    let put = d.dir.path().join("put.txt");
    std::fs::write(&put, "put\n").unwrap();
    let put = put.to_str().unwrap();
    let id = d
        .docker_ok(&[
            "run",
            "-d",
            "--name",
            "pz",
            "--tmpfs",
            "/scratch",
            "-v",
            "/vol3",
            "bb:local",
            "sh",
            "-c",
            "echo hi > /scratch/t; ln -s /scratch/t /scratch/link; exec sleep 1000",
        ])
        .trim()
        .to_string();
    common::eventually("the container wrote its files", 30, || {
        match d
            .docker(&["exec", "pz", "test", "-L", "/scratch/link"])
            .status
            .success()
        {
            true => Ok(()),
            false => Err("not yet".into()),
        }
    });
    // Running: what the layer under the tmpfs holds would be hidden from exec.
    d.docker_ok(&["cp", put, "pz:/scratch/"]);
    assert_eq!(
        d.docker_ok(&["exec", "pz", "cat", "/scratch/put.txt"]),
        "put\n"
    );
    assert!(d.docker_ok(&["cp", "pz:/scratch/t", "-"]).contains("hi\n"));

    // Paused: reads and writes through the tmpfs and the volume, seen after the thaw.
    d.docker_ok(&["pause", "pz"]);
    assert!(d.docker_ok(&["cp", "pz:/scratch/t", "-"]).contains("hi\n"));
    d.docker_ok(&["cp", put, "pz:/scratch/paused.txt"]);
    d.docker_ok(&["cp", put, "pz:/vol3/"]);
    assert_eq!(
        d.docker_ok(&["inspect", "-f", "{{.State.Status}}", "pz"])
            .trim(),
        "paused"
    );
    d.docker_ok(&["unpause", "pz"]);
    assert_eq!(
        d.docker_ok(&["exec", "pz", "cat", "/scratch/paused.txt", "/vol3/put.txt"]),
        "put\nput\n"
    );

    // The stat header: dockerd's fields, Go's mode bits, RFC 3339 mtime, link target.
    let file = path_stat(&d, "pz", "/scratch/t");
    assert_eq!(file["name"], "t", "{file}");
    assert_eq!(file["size"], 3, "{file}");
    assert_eq!(file["mode"], 0o644, "{file}");
    assert_eq!(file["linkTarget"], "", "{file}");
    let secs = d.docker_ok(&["exec", "pz", "stat", "-c", "%Y", "/scratch/t"]);
    let day = d.docker_ok(&[
        "exec",
        "pz",
        "date",
        "-u",
        "-d",
        &format!("@{}", secs.trim()),
        "+%Y-%m-%dT%H:%M:%S",
    ]);
    let mtime = file["mtime"].as_str().unwrap();
    assert!(mtime.starts_with(day.trim()), "{mtime} vs {day}");
    assert!(mtime.ends_with('Z'), "{mtime}");
    let link = path_stat(&d, "pz", "/scratch/link");
    assert_eq!(link["name"], "link", "{link}");
    assert_eq!(link["size"], "/scratch/t".len(), "{link}");
    assert_eq!(link["mode"], GO_MODE_SYMLINK | 0o777, "{link}");
    assert_eq!(link["linkTarget"], "/scratch/t", "{link}");
    let dir = path_stat(&d, "pz", "/scratch");
    assert_eq!(dir["name"], "scratch", "{dir}");
    assert_eq!(
        dir["mode"],
        GO_MODE_DIR | GO_MODE_STICKY | 0o777,
        "tmpfs root is 1777: {dir}"
    );

    // 404 with Docker's message, naming the container as asked (name or id).
    expect_missing(&d, "pz", "/x");
    expect_missing(&d, &id, "/scratch/nope");
    expect_missing(&d, &id[..12], "/vol3/nope");
    d.docker_ok(&["rm", "-f", "pz"]);
}

/// The archive API in a microVM container: an exited container's guest disk (stat header
/// and 404 message as dockerd), and `../` entries refused on a running one's.
#[test]
fn microvm_archive_stat_missing_path_and_hostile_puts() {
    if common::microvm::skip_without_microvm() {
        return;
    }
    let d = common::microvm::daemon();
    d.docker_ok(&[
        "run",
        "--isolation=microvm",
        "--name",
        "vex",
        "bb",
        "sh",
        "-c",
        "echo data > /data.txt",
    ]);
    // Exited: each call is answered from the container's disks in a VM of its own.
    assert!(d
        .docker_ok(&["cp", "vex:/data.txt", "-"])
        .contains("data\n"));
    let stat = path_stat(&d, "vex", "/data.txt");
    assert_eq!(stat["name"], "data.txt", "{stat}");
    assert_eq!(stat["size"], 5, "{stat}");
    assert_eq!(stat["mode"], 0o644, "{stat}");
    expect_missing(&d, "vex", "/nope");

    // Running: the guest disk refuses `../`, and a good archive still lands.
    d.docker_ok(&[
        "run",
        "-d",
        "--isolation=microvm",
        "--name",
        "varch",
        "bb",
        "sleep",
        "1000",
    ]);
    let out = curl(
        &d,
        "PUT",
        "/v1.51/containers/varch/archive?path=/tmp",
        Some(&tar_with("../escaped", b"x")),
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("is outside of"), "{out}");
    let ls = d.docker_ok(&["exec", "varch", "ls", "/"]);
    assert!(!ls.contains("escaped"), "{ls}");
    let ok = curl(
        &d,
        "PUT",
        "/v1.51/containers/varch/archive?path=/tmp",
        Some(&tar_with("fine", b"x")),
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(d.docker_ok(&["exec", "varch", "cat", "/tmp/fine"]), "x");
    d.docker_ok(&["rm", "-f", "vex", "varch"]);
}

/// `docker cp` through an anonymous volume of a created and of an exited microVM
/// container. The volume is a disk image the host never mounts: the VM booted for the
/// copy attaches it and the guest's archive child binds it at `/vol1`. (Before that it
/// attached only the root disks, and `docker cp f c:/vol1/` answered "no such
/// directory".) While a second container holds the volume, the copy fails clearly
/// instead of mounting the disk in two kernels.
#[test]
fn microvm_archive_through_an_anonymous_volume_created_and_exited() {
    if common::microvm::skip_without_microvm() {
        return;
    }
    let d = common::microvm::daemon();
    let put = d.dir.path().join("put.txt");
    std::fs::write(&put, "put\n").unwrap();
    let put = put.to_str().unwrap();
    d.docker_ok(&[
        "create",
        "--isolation=microvm",
        "--name",
        "vav",
        "-v",
        "/vol1",
        "bb",
        "sh",
        "-c",
        "cat /vol1/put.txt; echo data > /vol1/data.txt",
    ]);
    // Created: the first boot sees what was copied in.
    d.docker_ok(&["cp", put, "vav:/vol1/"]);
    assert_eq!(d.docker_ok(&["start", "-a", "vav"]), "put\n");
    // Exited: the guest's write is found, with the stat header; 404 for a missing path.
    assert!(d
        .docker_ok(&["cp", "vav:/vol1/data.txt", "-"])
        .contains("data\n"));
    let stat = path_stat(&d, "vav", "/vol1/data.txt");
    assert_eq!(
        (stat["name"].clone(), stat["size"].clone()),
        ("data.txt".into(), 5.into()),
        "{stat}"
    );
    expect_missing(&d, "vav", "/vol1/nope");
    // A PUT lands in the volume, not on the guest disk underneath.
    d.docker_ok(&["cp", put, "vav:/vol1/again.txt"]);
    let vol = d
        .docker_ok(&[
            "inspect",
            "-f",
            "{{range .Mounts}}{{if eq .Destination \"/vol1\"}}{{.Name}}{{end}}{{end}}",
            "vav",
        ])
        .trim()
        .to_string();
    let seen = d.docker_ok(&[
        "run",
        "--rm",
        "--isolation=microvm",
        "-v",
        &format!("{vol}:/v"),
        "bb",
        "cat",
        "/v/again.txt",
    ]);
    assert_eq!(seen, "put\n");
    let hostile = |c: &str, path: &str| {
        let out = curl(
            &d,
            "PUT",
            &format!("/v1.51/containers/{c}/archive?path={path}"),
            Some(&tar_with("../escaped", b"x")),
        );
        assert!(out.starts_with("HTTP/1.1 400"), "{c}:{path}: {out}");
        assert!(out.contains("is outside of"), "{out}");
    };
    hostile("vav", "/vol1");
    // While another running container has the disk attached, the copy is refused rather
    // than mounting one ext4 filesystem in two kernels.
    d.run_sleeper(
        "vholder",
        &["--isolation=microvm", "-v", &format!("{vol}:/v")],
    );
    let out = d.docker(&["cp", "vav:/vol1/data.txt", "-"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "copy from a volume attached elsewhere succeeded"
    );
    assert!(err.contains("attached to running container"), "{err}");

    d.docker_ok(&["rm", "-f", "vav", "vholder"]);
}

/// docker-py in both modes: `get_archive`/`put_archive` on a volume, `container.update`
/// (the new limit checked live), and `inspect_container`'s `HostConfig.Isolation` and
/// `NetworkSettings.MacAddress` (`py/archive_update_inspect.py`).
#[test]
fn docker_py_archive_update_and_inspect_in_both_modes() {
    let d = common::microvm::daemon();
    let mut modes = vec!["process"];
    if !common::microvm::skip_without_microvm() {
        modes.push("microvm");
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/archive_update_inspect.py"
    );
    for mode in modes {
        let out = Command::new("python3")
            .args([script, "bb", mode])
            .env("DOCKER_HOST", d.host())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{mode}: {}{}",
            stdout(&out),
            common::stderr(&out)
        );
        let id = stdout(&out).trim().to_string();
        let live = match mode {
            "microvm" => common::microvm::guest_cgroup_file(&d, &id, "memory.max"),
            _ => {
                let f = format!("/sys/fs/cgroup/memory/berth/{id}/memory.limit_in_bytes");
                std::fs::read_to_string(&f)
                    .unwrap_or_else(|e| panic!("{f}: {e}"))
                    .trim()
                    .to_string()
            }
        };
        assert_eq!(live, (64u64 << 20).to_string(), "{mode}");
        d.docker_ok(&["rm", "-f", "-v", &id]);
    }
}

/// `docker diff` lists what the user changed, never the mount points the engine made.
#[test]
fn diff_hides_engine_mount_points() {
    let d = common::images::daemon_with_busybox("bb:local");
    let out = d.docker_ok(&[
        "run",
        "--name",
        "df",
        "-v",
        "/vol/deep",
        "--tmpfs",
        "/scratch",
        "bb:local",
        "sh",
        "-c",
        "echo x > /tmp/new; echo y > /vol/deep/in-volume; echo z > /scratch/in-tmpfs; rm /bin/true",
    ]);
    assert_eq!(out, "");
    let diff = d.docker_ok(&["diff", "df"]);
    let lines: Vec<&str> = diff.lines().collect();
    assert_eq!(
        lines,
        ["C /bin", "D /bin/true", "C /tmp", "A /tmp/new"],
        "{diff}"
    );
}

/// A `docker run` killed (with berthd) before the container's record was written leaves
/// a folder; the next start removes it instead of warning about it forever.
#[test]
fn unfinished_creates_are_cleaned_on_start() {
    let mut d = TestDaemon::start();
    let stray = d.data_root.join("containers").join("f".repeat(64));
    std::fs::create_dir_all(stray.join("upper/etc")).unwrap();
    std::fs::write(stray.join("upper/etc/x"), "x").unwrap();
    d.kill();
    d.restart();
    assert!(!stray.exists(), "unfinished create left behind");
    assert!(
        !d.log().contains("skipping unreadable container record"),
        "{}",
        d.log()
    );
}

/// `docker system df` counts volumes (and each container's); `docker info` measures the
/// backing filesystem.
#[test]
fn system_df_lists_volumes_and_info_measures_the_filesystem() {
    let d = common::images::daemon_with_busybox("bb:local");
    d.docker_ok(&[
        "run",
        "--name",
        "dfv",
        "-v",
        "dfvol:/data",
        "bb:local",
        "sh",
        "-c",
        "head -c 100000 /dev/zero > /data/blob",
    ]);
    let df = d.docker_ok(&[
        "system",
        "df",
        "-v",
        "--format",
        "{{range .Volumes}}{{.Name}} {{.Links}} {{.Size}}{{end}}",
    ]);
    let f: Vec<&str> = df.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"dfvol"), "{df}");
    assert_eq!(f.get(1), Some(&"1"), "{df}");
    assert!(f.get(2).is_some_and(|s| s.starts_with("100")), "{df}");
    // A container's local volumes are counted from its mounts.
    let containers = d.docker_ok(&[
        "system",
        "df",
        "-v",
        "--format",
        "{{range .Containers}}{{.Names}} {{.LocalVolumes}}{{end}}",
    ]);
    assert_eq!(containers.trim(), "dfv 1");

    let expect = match stdout(
        &Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(&d.data_root)
            .output()
            .unwrap(),
    )
    .trim()
    {
        "ext2/ext3" => "extfs",
        "overlayfs" => "overlayfs",
        other => Box::leak(other.to_string().into_boxed_str()),
    };
    let info = d.docker_ok(&["info", "-f", "{{json .DriverStatus}}"]);
    assert!(
        info.contains(&format!("[\"Backing Filesystem\",\"{expect}\"]")),
        "{info} vs {expect}"
    );
}

/// The entry names of a tar archive.
fn tar_names(bytes: &[u8]) -> Vec<String> {
    tar::Archive::new(bytes)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[test]
fn export_gives_the_container_filesystem_without_its_volumes() {
    let d = common::images::daemon_with_busybox("bb");
    let id = d
        .docker_ok(&[
            "run",
            "-d",
            "-v",
            "/vol",
            "bb",
            "sh",
            "-c",
            "echo layer > /in-layer; echo vol > /vol/in-volume; sleep 1000",
        ])
        .trim()
        .to_string();
    let export = |d: &TestDaemon| {
        let o = d.docker_cmd(&["export", &id]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        tar_names(&o.stdout)
    };
    let wait = std::time::Instant::now();
    let names = loop {
        let n = export(&d);
        if n.iter().any(|p| p == "in-layer") || wait.elapsed().as_secs() > 20 {
            break n;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // Running: the layer's file and the image, the mount points but not what is in them.
    for want in ["in-layer", "bin/busybox", "vol", "proc"] {
        assert!(
            names.iter().any(|p| p == want),
            "{want} missing from {names:?}"
        );
    }
    assert!(!names.iter().any(|p| p.starts_with("vol/in-volume")));
    assert!(!names.iter().any(|p| p.starts_with("proc/1")));
    // Stopped: the same filesystem.
    d.docker_ok(&["stop", "-t", "0", &id]);
    let names = export(&d);
    assert!(names.iter().any(|p| p == "in-layer"), "{names:?}");
    assert!(!names.iter().any(|p| p.starts_with("vol/in-volume")));
    // `docker export -o` writes the same tar; an unknown container is a 404.
    let err = d.docker_err(&["export", "nosuchcontainer"]);
    assert!(err.contains("No such container"), "{err}");
    d.docker_ok(&["rm", "-v", &id]);
}
