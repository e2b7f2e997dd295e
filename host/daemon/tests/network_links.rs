//! Legacy links (`docker run --link TARGET[:ALIAS]`) through the real docker CLI, with
//! berthd in a network namespace of its own: the `/etc/hosts` line and the variables on
//! the default bridge, a name only on a user-defined network, and dockerd's errors. Runs
//! in both isolation modes (`BERTH_TEST_ISOLATION=microvm` in the suite script).

mod common;

use common::images::import_busybox;
use common::TestDaemon;

const IMG: &str = "bb:local";

#[test]
fn links_give_hosts_entries_variables_and_dockerd_errors() {
    let d = TestDaemon::start_in_netns(&[
        "--bip",
        "10.231.0.1/24",
        "--default-address-pool",
        "base=10.232.0.0/16,size=24",
    ]);
    import_busybox(&d, IMG);
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "-e",
        "PGUSER=app",
        "--expose",
        "5432",
        IMG,
        "sleep",
        "1000",
    ]);
    let db_ip = d
        .docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "db"])
        .trim()
        .to_string();
    let db_host = d
        .docker_ok(&["inspect", "-f", "{{.Config.Hostname}}", "db"])
        .trim()
        .to_string();
    assert!(db_ip.starts_with("10.231.0."), "{db_ip}");

    d.docker_ok(&[
        "create",
        "--name",
        "web",
        "--link",
        "db:data",
        IMG,
        "sh",
        "-c",
        "cat /etc/hosts; env | sort; ping -c1 -W5 data >/dev/null && echo ping-ok",
    ]);
    assert_eq!(
        d.docker_ok(&["inspect", "-f", "{{json .HostConfig.Links}}", "web"])
            .trim(),
        r#"["/db:/web/data"]"#
    );
    let out = d.docker_ok(&["start", "-a", "web"]);
    assert!(
        out.contains(&format!("{db_ip}\tdata {db_host} db\n")),
        "{out}"
    );
    for var in [
        format!("DATA_PORT=tcp://{db_ip}:5432"),
        format!("DATA_PORT_5432_TCP=tcp://{db_ip}:5432"),
        format!("DATA_PORT_5432_TCP_ADDR={db_ip}"),
        "DATA_PORT_5432_TCP_PORT=5432".into(),
        "DATA_PORT_5432_TCP_PROTO=tcp".into(),
        "DATA_NAME=/web/data".into(),
        "DATA_ENV_PGUSER=app".into(),
    ] {
        assert!(out.lines().any(|l| l == var), "{var} missing:\n{out}");
    }
    assert!(!out.contains("DATA_ENV_PATH="), "{out}");
    assert!(out.contains("ping-ok"), "{out}");

    // dockerd's errors: an unknown target, links with the host's network, a stopped one.
    let e = d.docker_err(&["create", "--link", "nope:x", IMG, "true"]);
    assert!(e.contains("could not get container for nope"), "{e}");
    let e = d.docker_err(&["create", "--network", "host", "--link", "db", IMG, "true"]);
    assert!(
        e.contains("conflicting options: host type networking can't be used with links"),
        "{e}"
    );
    d.docker_ok(&["stop", "-t", "0", "db"]);
    let e = d.docker_err(&["start", "web"]);
    assert!(
        e.contains("Cannot link to a non running container: /db AS /web/data"),
        "{e}"
    );
    // The link follows the target across restarts (its address may change).
    d.docker_ok(&["start", "db"]);
    let out = d.docker_ok(&["start", "-a", "web"]);
    assert!(out.contains("ping-ok"), "{out}");
    // A linker that keeps running while its target restarts with another address: its
    // hosts line follows, as with dockerd.
    d.docker_ok(&[
        "run", "-d", "--name", "lnk", "--link", "db:data", IMG, "sleep", "1000",
    ]);
    let before = d.docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "db"]);
    d.docker_ok(&["stop", "-t", "0", "db"]);
    d.docker_ok(&["run", "-d", "--name", "filler", IMG, "sleep", "1000"]);
    d.docker_ok(&["start", "db"]);
    let after = d
        .docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "db"])
        .trim()
        .to_string();
    assert_ne!(
        before.trim(),
        after,
        "db kept its address: the test proves nothing"
    );
    let hosts = d.docker_ok(&["exec", "lnk", "cat", "/etc/hosts"]);
    assert!(
        hosts.contains(&format!("{after}\tdata {db_host} db\n")),
        "{hosts}"
    );
    assert!(!hosts.contains(&format!("{}\t", before.trim())), "{hosts}");
    d.docker_ok(&["exec", "lnk", "ping", "-c1", "-W5", "data"]);
    d.docker_ok(&["rm", "-f", "lnk", "filler"]);

    // On a user-defined network a link is a name only: no variables.
    d.docker_ok(&["network", "create", "app"]);
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "udb",
        "--network",
        "app",
        "--expose",
        "80",
        IMG,
        "sleep",
        "1000",
    ]);
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "app",
        "--link",
        "udb:store",
        IMG,
        "sh",
        "-c",
        "env; ping -c1 -W5 store >/dev/null && echo ping-ok",
    ]);
    assert!(out.contains("ping-ok"), "{out}");
    assert!(!out.contains("STORE_"), "{out}");
    // A target on another network than the linker's.
    let e = d.docker_err(&["run", "--rm", "--link", "udb:store", IMG, "true"]);
    assert!(
        e.contains("Cannot link to /udb, as it does not belong to the default network"),
        "{e}"
    );
    // `docker rm --link`: the linker forgets it (at its next start), dockerd's errors.
    d.docker_ok(&["rm", "--link", "/web/data"]);
    assert_eq!(
        d.docker_ok(&["inspect", "-f", "{{json .HostConfig.Links}}", "web"])
            .trim(),
        "null"
    );
    // Its ping of `data` fails now: no name, no variables.
    let o = d.docker(&["start", "-a", "web"]);
    let out = common::stdout(&o);
    assert!(!o.status.success(), "{out}");
    assert!(!out.contains("DATA_") && !out.contains("\tdata "), "{out}");
    let e = d.docker_err(&["rm", "--link", "/data"]);
    assert!(
        e.contains("cannot remove the default link name of the container"),
        "{e}"
    );
    let e = d.docker_err(&["rm", "--link", "/nope/data"]);
    assert!(
        e.contains("Cannot get parent /nope for link name /nope/data"),
        "{e}"
    );
    // Every other route still answers: a non-link DELETE of two segments is a 404.
    d.docker_ok(&["inspect", "web"]);
    d.docker_ok(&["rm", "-f", "web", "db", "udb"]);
}
