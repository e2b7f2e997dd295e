//! Mounts across the VM boundary, end to end with the real docker CLI: bind mounts and
//! directory volumes over virtio-fs (one sandboxed virtiofsd per share), block volumes as
//! virtio-blk disks, tmpfs and a read-only root inside the guest. Where a behaviour exists
//! in both isolation modes the same test runs in both. Here the microVMs run through qemu
//! under TCG; the tests skip, saying why, without the guest kernel, vhost-device-vsock or
//! virtiofsd (`scripts/test.sh` provides all three).

mod common;

use std::path::Path;
use std::time::Duration;

use common::images::busybox_tar;
use common::microvm::{
    daemon, inspect, leftover_files, leftover_processes, skip_without_microvm, virtiofsd,
    wait_until,
};
use common::{stderr, stdout, TestDaemon};

const MODES: [&str; 2] = ["process", "microvm"];

fn skip() -> bool {
    if skip_without_microvm() {
        return true;
    }
    if virtiofsd().is_none() {
        eprintln!("SKIPPED: no virtiofsd (run scripts/install-vm-tools.sh)");
        return true;
    }
    false
}

fn iso(mode: &str) -> String {
    format!("--isolation={mode}")
}

/// Every VM process of the daemon is gone and no container dirs are left.
fn assert_clean(d: &TestDaemon) {
    wait_until("VM processes to be gone", Duration::from_secs(15), || {
        leftover_processes(d.dir.path()).is_empty()
    });
    assert!(leftover_files(d).is_empty(), "{:?}", leftover_files(d));
}

#[test]
fn bind_mounts_work_both_ways_and_read_only_refuses_writes() {
    if skip() {
        return;
    }
    let d = daemon();
    for mode in MODES {
        let share = d.dir.path().join(format!("share-{mode}"));
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(share.join("from-host"), "host data\n").unwrap();
        let v = format!("{}:/data", share.display());
        let out = d.docker_ok(&[
            "run",
            "--rm",
            &iso(mode),
            "-v",
            &v,
            "bb",
            "sh",
            "-c",
            "cat /data/from-host; mkdir /data/dir; echo guest data > /data/dir/from-guest",
        ]);
        assert_eq!(out, "host data\n", "{mode}");
        assert_eq!(
            std::fs::read_to_string(share.join("dir/from-guest")).unwrap(),
            "guest data\n",
            "{mode}"
        );

        // `:ro` and `--mount ...,readonly`: reads work, writes get EROFS.
        let ro = format!("{}:/ro:ro", share.display());
        let mnt = format!("type=bind,source={},target=/ro2,readonly", share.display());
        let o = d.docker(&[
            "run",
            "--rm",
            &iso(mode),
            "-v",
            &ro,
            "--mount",
            &mnt,
            "bb",
            "sh",
            "-c",
            "cat /ro/from-host /ro2/dir/from-guest; echo x > /ro/new; echo x > /ro2/new",
        ]);
        assert_eq!(stdout(&o), "host data\nguest data\n", "{mode}");
        assert_eq!(
            stderr(&o).matches("Read-only file system").count(),
            2,
            "{mode}: {}",
            stderr(&o)
        );
        assert!(!share.join("new").exists(), "{mode}");
    }
    assert_clean(&d);
}

#[test]
fn microvm_read_only_share_is_enforced_on_the_host() {
    if skip() {
        return;
    }
    let d = daemon();
    let share = d.dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("f"), "original\n").unwrap();
    // A privileged container can remount its view read-write; virtiofsd (--readonly)
    // still refuses every write.
    let ro = format!("{}:/ro:ro", share.display());
    let o = d.docker(&[
        "run",
        "--rm",
        "--privileged",
        "--isolation=microvm",
        "-v",
        &ro,
        "bb",
        "sh",
        "-c",
        "mount -o remount,rw /ro && echo remounted; echo changed > /ro/f; touch /ro/new",
    ]);
    assert!(stdout(&o).contains("remounted"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(share.join("f")).unwrap(),
        "original\n"
    );
    assert!(!share.join("new").exists());
}

#[test]
fn microvm_symlinks_in_a_share_never_reach_outside_it() {
    if skip() {
        return;
    }
    let d = daemon();
    let base = d.dir.path().join("escape");
    let share = base.join("shared");
    let outside = base.join("outside");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let secret = "TOPSECRET-6b1f0c";
    std::fs::write(outside.join("secret"), secret).unwrap();
    let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, share.join(name));
    link(&outside, "abs").unwrap();
    link(&outside.join("secret"), "absfile").unwrap();
    link(Path::new("../outside"), "rel").unwrap();
    link(Path::new("../../../../../../.."), "root").unwrap();

    let v = format!("{}:/data", share.display());
    let script = "cat /data/absfile /data/abs/secret /data/rel/secret /data/root/etc/shadow; \
                  echo pwned > /data/abs/w1; echo pwned > /data/rel/w2; \
                  echo pwned > /data/absfile; ls /data/root/ | head -3";
    let o = d.docker(&[
        "run",
        "--rm",
        "--isolation=microvm",
        "-v",
        &v,
        "bb",
        "sh",
        "-c",
        script,
    ]);
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(!all.contains(secret), "{all}");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        secret
    );
    let listing: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listing, vec![std::ffi::OsString::from("secret")]);

    // Swap a directory for a symlink to the outside while the guest keeps using the path.
    let swap = share.join("swap");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (share, outside, stop) = (share.clone(), outside.clone(), stop.clone());
        std::thread::spawn(move || {
            let (dir, lnk) = (share.join("swap-dir"), share.join("swap-link"));
            let mut flips = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::create_dir(&dir);
                let _ = std::fs::rename(&dir, share.join("swap"));
                let _ = std::os::unix::fs::symlink(&outside, &lnk);
                let _ = std::fs::rename(&lnk, share.join("swap"));
                let _ = std::fs::remove_dir_all(share.join("swap"));
                let _ = std::fs::remove_file(share.join("swap"));
                flips += 1;
            }
            flips
        })
    };
    let o = d.docker(&[
        "run",
        "--rm",
        "--isolation=microvm",
        "-v",
        &v,
        "bb",
        "sh",
        "-c",
        "for i in $(seq 300); do cat /data/swap/secret 2>/dev/null; \
         echo pwned 2>/dev/null > /data/swap/w$i; done; echo done",
    ]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flips = swapper.join().unwrap();
    assert!(flips > 10, "the swapper ran only {flips} times");
    assert!(stdout(&o).ends_with("done\n"), "{}", stderr(&o));
    assert!(!stdout(&o).contains(secret));
    let _ = std::fs::remove_file(&swap);
    let listing: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listing, vec![std::ffi::OsString::from("secret")]);
    assert_clean(&d);
}

#[test]
fn named_volumes_keep_data_across_rm_restart_and_vmm_kill() {
    if skip() {
        return;
    }
    let mut d = daemon();
    for mode in MODES {
        let vol = format!("keep-{mode}:/v");
        d.docker_ok(&[
            "run",
            "--rm",
            &iso(mode),
            "-v",
            &vol,
            "bb",
            "sh",
            "-c",
            "echo first > /v/a; sync",
        ]);
        assert_eq!(
            d.docker_ok(&["run", "--rm", &iso(mode), "-v", &vol, "bb", "cat", "/v/a"]),
            "first\n",
            "{mode}"
        );
    }
    // A microVM's implicitly created volume is a block volume: an ext4 image, no host
    // directory shared with the guest.
    let kind = d.docker_ok(&[
        "volume",
        "inspect",
        "-f",
        "{{.Options.kind}}",
        "keep-microvm",
    ]);
    assert_eq!(kind.trim(), "disk");
    let mounts = d.docker_ok(&[
        "run",
        "--rm",
        "--isolation=microvm",
        "-v",
        "keep-microvm:/v",
        "bb",
        "sh",
        "-c",
        "grep ' /v ' /proc/mounts",
    ]);
    assert!(mounts.contains("ext4"), "{mounts}");

    d.restart();
    for mode in MODES {
        let vol = format!("keep-{mode}:/v");
        assert_eq!(
            d.docker_ok(&["run", "--rm", &iso(mode), "-v", &vol, "bb", "cat", "/v/a"]),
            "first\n",
            "{mode} after a daemon restart"
        );
    }

    // Data written and synced before the VMM is SIGKILLed survives. The container also has
    // a bind mount, so a virtiofsd is running too: it must not outlive the VM.
    let share = d.dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let bind = format!("{}:/b", share.display());
    let id = d
        .docker_ok(&[
            "run",
            "-d",
            "--isolation=microvm",
            "-v",
            "keep-microvm:/v",
            "-v",
            &bind,
            "bb",
            "sh",
            "-c",
            "echo synced > /v/b; sync; touch /b/ready; sleep 1000",
        ])
        .trim()
        .to_string();
    wait_until("the container to sync", Duration::from_secs(60), || {
        share.join("ready").exists()
    });
    // berthd is SIGKILLed and restarted first: the VM and its virtiofsd are re-adopted.
    d.kill();
    d.restart();
    let vmm = inspect(&d, &id, "{{.State.Pid}}");
    let killed = std::process::Command::new("kill")
        .args(["-9", &vmm])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 {vmm}");
    wait_until("the container to exit", Duration::from_secs(20), || {
        inspect(&d, &id, "{{.State.Status}}") == "exited"
    });
    wait_until("virtiofsd to be gone", Duration::from_secs(15), || {
        leftover_processes(d.dir.path()).is_empty()
    });
    d.docker_ok(&["rm", &id]);
    assert_eq!(
        d.docker_ok(&[
            "run",
            "--rm",
            "--isolation=microvm",
            "-v",
            "keep-microvm:/v",
            "bb",
            "cat",
            "/v/a",
            "/v/b"
        ]),
        "first\nsynced\n"
    );
    assert_clean(&d);
}

#[test]
fn volumes_shared_between_containers_follow_the_documented_rules() {
    if skip() {
        return;
    }
    let d = daemon();
    // A directory volume: process and microVM containers use it at the same time.
    d.docker_ok(&["volume", "create", "shared"]);
    let p = d
        .docker_ok(&[
            "run",
            "-d",
            "-v",
            "shared:/s",
            "bb",
            "sh",
            "-c",
            "echo from-process > /s/p; sleep 1000",
        ])
        .trim()
        .to_string();
    let m = d
        .docker_ok(&[
            "run",
            "-d",
            "--isolation=microvm",
            "-v",
            "shared:/s",
            "bb",
            "sh",
            "-c",
            "echo from-vm > /s/m; sleep 1000",
        ])
        .trim()
        .to_string();
    wait_until("both writes", Duration::from_secs(60), || {
        d.docker(&["exec", &p, "cat", "/s/m"]).status.success()
    });
    assert_eq!(d.docker_ok(&["exec", &m, "cat", "/s/p"]), "from-process\n");
    assert_eq!(d.docker_ok(&["exec", &p, "cat", "/s/m"]), "from-vm\n");

    // A disk volume: one running microVM at a time; never a process container.
    d.docker_ok(&[
        "volume",
        "create",
        "-o",
        "kind=disk",
        "-o",
        "size=64M",
        "blk",
    ]);
    let first = d
        .docker_ok(&[
            "run",
            "-d",
            "--isolation=microvm",
            "-v",
            "blk:/b",
            "bb",
            "sleep",
            "1000",
        ])
        .trim()
        .to_string();
    let err = d.docker_err(&[
        "run",
        "--rm",
        "--isolation=microvm",
        "-v",
        "blk:/b",
        "bb",
        "true",
    ]);
    assert!(
        err.contains("disk image attached to running container") && err.contains(&first[..12]),
        "{err}"
    );
    let err = d.docker_err(&["run", "--rm", "-v", "blk:/b", "bb", "true"]);
    assert!(
        err.contains("only microvm containers can attach it"),
        "{err}"
    );
    // Once the first container stops, the next one gets the disk.
    d.docker_ok(&["rm", "-f", &first]);
    d.docker_ok(&[
        "run",
        "--rm",
        "--isolation=microvm",
        "-v",
        "blk:/b",
        "bb",
        "true",
    ]);
    d.docker_ok(&["rm", "-f", &p, &m]);
    assert_clean(&d);
}

#[test]
fn microvm_tmpfs_read_only_root_and_anonymous_volumes() {
    if skip() {
        return;
    }
    let d = daemon();
    // An image with a VOLUME.
    let o = d
        .docker_cmd(&[
            "import",
            "--change",
            "VOLUME /iv",
            &busybox_tar().display().to_string(),
            "bbvol",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let out = d.docker_ok(&[
        "run",
        "--rm",
        "--isolation=microvm",
        "--read-only",
        "--tmpfs",
        "/scratch:size=8m",
        "--mount",
        "type=tmpfs,target=/t2",
        "-v",
        "/anon",
        "bbvol",
        "sh",
        "-c",
        "touch /rootfile 2>&1; echo a > /scratch/a && echo b > /t2/b && echo c > /anon/c && \
         echo d > /iv/d && grep -E ' /(scratch|t2) ' /proc/mounts | cut -d' ' -f2,3",
    ]);
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.contains("/scratch tmpfs\n"), "{out}");
    assert!(out.contains("/t2 tmpfs\n"), "{out}");
    // --rm took the anonymous volumes (`-v /anon` and the image's VOLUME) with it.
    wait_until("--rm to finish", Duration::from_secs(20), || {
        d.docker_ok(&["ps", "-aq"]).trim().is_empty()
    });
    assert_eq!(d.docker_ok(&["volume", "ls", "-q"]).trim(), "");

    // rm -v removes them too; plain rm keeps them.
    let id = d
        .docker_ok(&["create", "--isolation=microvm", "bbvol", "true"])
        .trim()
        .to_string();
    d.docker_ok(&["start", "-a", &id]);
    assert_eq!(d.docker_ok(&["volume", "ls", "-q"]).lines().count(), 1);
    d.docker_ok(&["rm", "-v", &id]);
    assert_eq!(d.docker_ok(&["volume", "ls", "-q"]).trim(), "");
    assert_clean(&d);
}

#[test]
fn microvm_cp_reaches_bind_mounts_and_directory_volumes() {
    if skip() {
        return;
    }
    let d = daemon();
    let share = d.dir.path().join("cp-share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("in-share"), "shared\n").unwrap();
    d.docker_ok(&["volume", "create", "dirvol"]);
    let bind = format!("{}:/data", share.display());
    let id = d
        .docker_ok(&[
            "run",
            "-d",
            "--isolation=microvm",
            "-v",
            &bind,
            "-v",
            "dirvol:/dv",
            "bb",
            "sleep",
            "1000",
        ])
        .trim()
        .to_string();
    let local = d.dir.path().join("cp-local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("up"), "uploaded\n").unwrap();
    let up = local.join("up").display().to_string();

    // Into the bind mount and the volume: the guest sees the files at once.
    d.docker_ok(&["cp", &up, &format!("{id}:/data/")]);
    d.docker_ok(&["cp", &up, &format!("{id}:/dv/nested-name")]);
    assert_eq!(
        d.docker_ok(&["exec", &id, "cat", "/data/up", "/dv/nested-name"]),
        "uploaded\nuploaded\n"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("up")).unwrap(),
        "uploaded\n"
    );
    // Out of them, a whole mount keeping its name.
    let out = local.join("out");
    d.docker_ok(&["cp", &format!("{id}:/data"), &out.display().to_string()]);
    assert_eq!(
        std::fs::read_to_string(out.join("in-share")).unwrap(),
        "shared\n"
    );
    let o = d
        .docker_cmd(&["cp", &format!("{id}:/data"), "-"])
        .output()
        .unwrap();
    let mut names: Vec<String> = tar::Archive::new(&o.stdout[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["data/", "data/in-share", "data/up"]);
    // A path on the guest disk is served by the guest agent, as the container sees it.
    let o = d
        .docker_cmd(&["cp", &format!("{id}:/etc/hostname"), "-"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let short_id = &id.as_bytes()[..12];
    assert!(
        o.stdout.windows(12).any(|w| w == short_id),
        "the container's hostname is not in the tar"
    );
    // A stopped container's mounts are still served.
    d.docker_ok(&["stop", "-t", "0", &id]);
    let o = d
        .docker_cmd(&["cp", &format!("{id}:/dv/nested-name"), "-"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    d.docker_ok(&["rm", &id]);
}
