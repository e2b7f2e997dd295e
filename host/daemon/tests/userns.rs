//! `berthd --userns-remap` (dockerd's flag): containers run in a user namespace whose root
//! is an unprivileged host uid from /etc/subuid. Checked from both sides: the maps and ids
//! inside, and on the host the uids of the container's processes and of the files its
//! root writes into binds, volumes and its rootfs. Each test makes its own system user
//! with its own subordinate ranges and removes them (only its own lines) when done.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::images::import_busybox;
use common::microvm::skip_without_microvm;
use common::{stderr, TestDaemon};

const SIZE: u32 = 65536;

/// A system user with one 65536-id range in /etc/subuid and /etc/subgid.
struct RemapUser {
    name: String,
    start: u32,
}

impl RemapUser {
    fn new(tag: &str) -> RemapUser {
        let name = format!("bu{}{tag}", std::process::id());
        let st = Command::new("useradd")
            .args(["-r", "-s", "/bin/false", &name])
            .status()
            .unwrap();
        assert!(st.success(), "useradd {name}");
        // Far above the usual 100000-based ranges, past every existing line.
        let used_end = ["/etc/subuid", "/etc/subgid"]
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter_map(|l| {
                let mut f = l.split(':').skip(1);
                let s: u32 = f.next()?.parse().ok()?;
                let c: u32 = f.next()?.parse().ok()?;
                Some(s.saturating_add(c))
            })
            .max()
            .unwrap_or(0);
        let start = used_end.max(1_000_000).div_ceil(SIZE) * SIZE;
        let u = RemapUser { name, start };
        for f in ["/etc/subuid", "/etc/subgid"] {
            let mut text = std::fs::read_to_string(f).unwrap_or_default();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("{}:{}:{SIZE}\n", u.name, u.start));
            std::fs::write(f, text).unwrap();
        }
        u
    }
}

impl Drop for RemapUser {
    fn drop(&mut self) {
        let prefix = format!("{}:", self.name);
        for f in ["/etc/subuid", "/etc/subgid"] {
            if let Ok(text) = std::fs::read_to_string(f) {
                let kept: String = text
                    .lines()
                    .filter(|l| !l.starts_with(&prefix))
                    .map(|l| format!("{l}\n"))
                    .collect();
                let _ = std::fs::write(f, kept);
            }
        }
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

fn remapped_daemon(u: &RemapUser) -> TestDaemon {
    let d = TestDaemon::start_with(&["--userns-remap", &u.name]);
    import_busybox(&d, "bb");
    d
}

fn owner(p: &std::path::Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid())
}

#[test]
fn container_root_is_an_unprivileged_host_uid() {
    if common::skip_in_microvm_suite(
        "reads the host-side uid of a process container's main process",
    ) {
        return;
    }
    let u = RemapUser::new("a");
    let d = remapped_daemon(&u);
    let root = (u.start, u.start);
    let opts = d.docker_ok(&["info", "-f", "{{json .SecurityOptions}}"]);
    assert!(opts.contains("name=userns"), "{opts}");

    // The map, as the container reads it.
    let map = d.docker_ok(&["run", "--rm", "bb", "cat", "/proc/self/uid_map"]);
    let fields: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(fields, ["0", &u.start.to_string(), "65536"], "{map}");

    // A bind-mounted dir (writable by anyone), a named volume, and a root-only host file.
    let bind = d.dir.path().join("bind");
    std::fs::create_dir(&bind).unwrap();
    std::fs::set_permissions(&bind, std::fs::Permissions::from_mode(0o777)).unwrap();
    let secret = d.dir.path().join("secret");
    std::fs::write(&secret, "top secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bind_arg = format!("{}:/b", bind.display());
    let secret_arg = format!("{}:/secret:ro", secret.display());
    let id = d
        .docker_ok(&[
            "run",
            "-d",
            "--name",
            "u1",
            "-v",
            &bind_arg,
            "-v",
            "uvol:/v",
            "-v",
            &secret_arg,
            "bb",
            "sleep",
            "1000",
        ])
        .trim()
        .to_string();

    // The main process, seen from the host, runs as the remapped uid; so says `docker top`.
    let pid = d.docker_ok(&["inspect", "-f", "{{.State.Pid}}", &id]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uids: Vec<&str> = uid_line.split_whitespace().skip(1).collect();
    let want = u.start.to_string();
    assert_eq!(uids, [want.as_str(); 4], "{uid_line}");
    let top = d.docker_ok(&["top", "u1"]);
    assert!(
        top.lines()
            .nth(1)
            .unwrap()
            .starts_with(&u.start.to_string()),
        "{top}"
    );

    // exec joins the user namespace too, as root of it.
    let out = d.docker_ok(&["exec", "u1", "sh", "-c", "id -u; cat /proc/self/uid_map"]);
    assert!(out.starts_with("0\n"), "{out}");
    assert!(out.contains(&u.start.to_string()), "{out}");

    // Files the container's root creates are the remapped root's on the host.
    d.docker_ok(&["exec", "u1", "sh", "-c", "touch /b/f /v/f /newfile"]);
    assert_eq!(owner(&bind.join("f")), root);
    let vol = d.docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "uvol"]);
    let vol = std::path::Path::new(vol.trim());
    assert_eq!(
        owner(vol),
        root,
        "the volume's data dir is given to the remapped root"
    );
    assert_eq!(owner(&vol.join("f")), root);
    let upper = d.data_root.join("containers").join(&id).join("upper");
    assert_eq!(owner(&upper.join("newfile")), root);

    // The rootfs: the image's files are root's inside; diff and cp still work.
    let ls = d.docker_ok(&[
        "exec",
        "u1",
        "stat",
        "-c",
        "%u:%g",
        "/bin",
        "/etc/hosts",
        "/",
    ]);
    assert_eq!(
        ls, "0:0\n0:0\n0:0\n",
        "image files, engine files and / belong to root"
    );
    let diff = d.docker_ok(&["diff", "u1"]);
    assert!(diff.lines().any(|l| l == "A /newfile"), "{diff}");
    let out_dir = d.dir.path().join("cpout");
    std::fs::create_dir(&out_dir).unwrap();
    d.docker_ok(&["cp", "u1:/newfile", out_dir.to_str().unwrap()]);
    assert!(out_dir.join("newfile").exists());
    // Tars made from the container say what it saw (root = 0), not the host's ids.
    let owners_in = |tar_bytes: &[u8], name: &str| -> (u64, u64) {
        let mut a = tar::Archive::new(tar_bytes);
        let e = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().to_str() == Some(name))
            .unwrap_or_else(|| panic!("{name} not in the tar"));
        (e.header().uid().unwrap(), e.header().gid().unwrap())
    };
    let cp = d.docker_cmd(&["cp", "u1:/newfile", "-"]).output().unwrap();
    assert!(cp.status.success(), "{}", stderr(&cp));
    assert_eq!(owners_in(&cp.stdout, "newfile"), (0, 0), "docker cp out");
    let exp = d.docker_cmd(&["export", "u1"]).output().unwrap();
    assert!(exp.status.success(), "{}", stderr(&exp));
    assert_eq!(owners_in(&exp.stdout, "newfile"), (0, 0), "docker export");
    assert_eq!(owners_in(&exp.stdout, "bin/sh"), (0, 0), "docker export");
    d.docker_ok(&["commit", "u1", "snap"]);
    let st = d.docker_ok(&[
        "run", "--rm", "--userns", "host", "snap", "stat", "-c", "%u:%g", "/newfile",
    ]);
    assert_eq!(st, "0:0\n", "a committed layer holds the container's ids");
    let src = d.dir.path().join("in.txt");
    std::fs::write(&src, "hello\n").unwrap();
    d.docker_ok(&["cp", src.to_str().unwrap(), "u1:/in.txt"]);
    let st = d.docker_ok(&[
        "exec",
        "u1",
        "sh",
        "-c",
        "stat -c %u:%g /in.txt; cat /in.txt",
    ]);
    assert_eq!(
        st, "0:0\nhello\n",
        "docker cp gives files to the container's root"
    );
    let w = d.docker_ok(&[
        "exec",
        "u1",
        "sh",
        "-c",
        "echo '10.9.9.9 extra' >> /etc/hosts && tail -1 /etc/hosts",
    ]);
    assert_eq!(w, "10.9.9.9 extra\n");

    // A root-only host file stays out of reach: the container's root is not the host's.
    let o = d.docker(&["exec", "u1", "cat", "/secret"]);
    assert!(!o.status.success(), "remapped root read a 0600 host file");
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    // ... which a container without the user namespace (real root) can read.
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "--userns",
        "host",
        "-v",
        &secret_arg,
        "bb",
        "cat",
        "/secret",
    ]);
    assert_eq!(out, "top secret\n");
    d.docker_ok(&["rm", "-f", "u1"]);
}

#[test]
fn userns_host_and_dockerd_rules() {
    let u = RemapUser::new("b");
    let d = remapped_daemon(&u);
    // `--userns host`: the identity map, real root.
    let map = d.docker_ok(&[
        "run",
        "--rm",
        "--userns",
        "host",
        "bb",
        "cat",
        "/proc/self/uid_map",
    ]);
    let fields: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(fields, ["0", "0", "4294967295"], "{map}");
    // dockerd 20.10's refusals, word for word.
    for (args, want) in [
        (&["--privileged"][..], "privileged mode is incompatible with user namespaces.  You must run the container in the host namespace when running privileged mode"),
        (&["--network", "host"][..], "cannot share the host's network namespace when user namespaces are enabled"),
        (&["--pid", "host"][..], "cannot share the host PID namespace when user namespaces are enabled"),
    ] {
        let mut a = vec!["run", "--rm"];
        a.extend_from_slice(args);
        a.extend(["bb", "true"]);
        let err = d.docker_err(&a);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // ... all of which run with `--userns host`.
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "--privileged",
        "--userns",
        "host",
        "bb",
        "cat",
        "/proc/self/uid_map",
    ]);
    assert!(out.contains("4294967295"), "{out}");
    // Any other mode: the CLI refuses it itself; the API answers 400.
    let err = d.docker_err(&["run", "--rm", "--userns", "bogus", "bb", "true"]);
    assert!(err.contains("invalid USER mode"), "{err}");
    let (code, body) = d.api(
        "POST",
        "/containers/create",
        Some(r#"{"Image":"bb","Cmd":["true"],"HostConfig":{"UsernsMode":"bogus"}}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"message\""), "{body}");
}

#[test]
fn startup_errors_name_what_is_missing() {
    let run = |remap: &str| {
        let dir = tempfile::Builder::new()
            .prefix("berth-t")
            .tempdir_in("/tmp")
            .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_berthd"))
            .arg("-H")
            .arg(format!("unix://{}", dir.path().join("d.sock").display()))
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("run"))
            .arg("--pidfile")
            .arg(dir.path().join("pid"))
            .args(["--bridge", "none", "--userns-remap", remap])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "berthd started with --userns-remap {remap}"
        );
        stderr(&out)
    };
    let err = run("no-such-user-berth");
    assert!(
        err.contains("Error during uid lookup for \"no-such-user-berth\""),
        "{err}"
    );
    // A user without ranges.
    let u = RemapUser::new("c");
    let bare = format!("{}x", u.name);
    assert!(Command::new("useradd")
        .args(["-r", "-s", "/bin/false", &bare])
        .status()
        .unwrap()
        .success());
    let err = run(&bare);
    let _ = Command::new("userdel").arg(&bare).status();
    assert!(
        err.contains(&format!("No subuid ranges found for user \"{bare}\"")),
        "{err}"
    );
    let err = run("a:b:c");
    assert!(err.contains("Invalid user/group specification"), "{err}");
}

/// A microVM's guest agent applies the same user namespace in the guest (idmapped erofs
/// image under the overlay); a bind shared over virtio-fs passes the guest's ids through,
/// so the host sees the remapped uid there too; a disk volume's root is the container's.
#[test]
fn microvm_containers_are_remapped_in_the_guest() {
    if skip_without_microvm() {
        return;
    }
    let u = RemapUser::new("d");
    let d = TestDaemon::start_with(&["--vmm", "qemu", "--userns-remap", &u.name]);
    import_busybox(&d, "bb");
    let bind = d.dir.path().join("vmbind");
    std::fs::create_dir(&bind).unwrap();
    std::fs::set_permissions(&bind, std::fs::Permissions::from_mode(0o777)).unwrap();
    let bind_arg = format!("{}:/b", bind.display());
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "--isolation",
        "microvm",
        "-v",
        &bind_arg,
        "-v",
        "mvol:/v",
        "bb",
        "sh",
        "-c",
        "cat /proc/self/uid_map; touch /newfile /b/f /v/f && stat -c %u:%g / /bin /v/f",
    ]);
    let mut lines = out.lines();
    let map: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(map, ["0", &u.start.to_string(), "65536"], "{out}");
    assert_eq!(lines.collect::<Vec<_>>(), ["0:0", "0:0", "0:0"], "{out}");
    assert_eq!(owner(&bind.join("f")), (u.start, u.start), "virtio-fs bind");
    let err = d.docker_err(&[
        "run",
        "--rm",
        "--isolation",
        "microvm",
        "--privileged",
        "bb",
        "true",
    ]);
    assert!(
        err.contains("privileged mode is incompatible with user namespaces"),
        "{err}"
    );
}
