//! Writes seed inputs for the cargo-fuzz targets (vmm/fuzz) from the same
//! structured generator the fixed-seed unit test uses.
//! Usage: cargo run -p berth-vmm --example fuzz_seeds -- <corpus-dir>

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let mut g = berth_vmm::fuzz::InputGen::new(0x5eed);
    for target in ["virtio_block", "virtio_vsock", "virtio_net"] {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        for i in 0..32 {
            std::fs::write(d.join(format!("seed-{i:02}")), g.input())?;
        }
    }
    println!("wrote seeds under {}", dir.display());
    Ok(())
}
