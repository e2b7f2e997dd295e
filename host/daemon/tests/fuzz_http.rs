//! A fixed-seed slice of the HTTP fuzz campaign (`benches/fuzz/http_fuzz.py`) against a real
//! berthd: every generated request is answered, in Docker's error shape, with no crash, hang
//! or handler panic. The full campaign (100k requests) and its figure are in
//! benches/RESULTS.md.

mod common;

use common::{stderr, stdout};

#[test]
fn http_fuzz_fixed_seed() {
    let d = common::images::daemon_with_busybox("bb");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../benches/fuzz/http_fuzz.py"
    );
    let o = std::process::Command::new("python3")
        .arg(script)
        .arg("--socket")
        .arg(&d.socket)
        .args(["--pid", &d.pid().unwrap().to_string()])
        .args([
            "--requests",
            "5000",
            "--seed",
            "20261130",
            "--timeout",
            "20",
        ])
        .output()
        .unwrap();
    eprintln!("{}", stdout(&o));
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
}
