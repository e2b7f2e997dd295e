//! Docker API details that clients rely on: status codes for bad bodies and archives,
//! version-dependent behaviour and what `docker version` reports.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::images::import_busybox;
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
    let d = TestDaemon::start();
    import_busybox(&d, "bb:local");
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
    let d = TestDaemon::start();
    import_busybox(&d, "bb:local");
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
    let d = TestDaemon::start();
    import_busybox(&d, "bb:local");
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

/// `docker diff` lists what the user changed, never the mount points the engine made.
#[test]
fn diff_hides_engine_mount_points() {
    let d = TestDaemon::start();
    import_busybox(&d, "bb:local");
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

/// `docker system df` counts volumes; `docker info` measures the backing filesystem.
#[test]
fn system_df_lists_volumes_and_info_measures_the_filesystem() {
    let d = TestDaemon::start();
    import_busybox(&d, "bb:local");
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
    let d = TestDaemon::start();
    import_busybox(&d, "bb");
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
