//! The `berth-plugin` SDK command as plugin authors run it, for the tests that go
//! from an empty directory to a plugin berthd loads.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{stderr, stdout};

/// `berth-plugin`, next to `berthd` (built by `cargo build --workspace --bins`;
/// built here when missing).
pub fn tool() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_berthd")).with_file_name("berth-plugin");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "berth-plugin"])
            .status()
            .expect("cargo build -p berth-plugin");
        assert!(st.success(), "building berth-plugin failed");
    }
    bin
}

pub fn run_tool(dir: &Path, args: &[&str]) -> String {
    // The wasm build (std for the target, wit-bindgen) is cached across runs here.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-sdk");
    let out = Command::new(tool())
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "berth-plugin {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}
