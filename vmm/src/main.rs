//! berth-vmm: one microVM per process. See vmm/README.md.

use std::time::Instant;

use berth_vmm::config::{usage, VmConfig};
use berth_vmm::{builder, control, jail};

fn main() {
    // Boot times are measured from here.
    let start = Instant::now();
    if let Err(e) = jail::close_inherited_fds() {
        eprintln!("berth-vmm: {e}");
        std::process::exit(e.exit_code());
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args[0] == "--help" || args[0] == "-h" {
        println!("{}", usage());
        std::process::exit(if args.is_empty() { 2 } else { 0 });
    }
    let code = match run(&args, start) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("berth-vmm: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn run(args: &[String], start: Instant) -> berth_vmm::Result<i32> {
    let config = VmConfig::from_args(args)?;
    let vm = builder::build(&config, start)?;
    let running = vm.start()?;
    let shared = running.shared.clone();
    let reason = running.wait()?;
    // One machine-readable line for the host engine.
    let summary = serde_json::json!({
        "event": "exit",
        "status": control::status(&shared),
    });
    eprintln!("{summary}");
    // The device thread may not unlink (seccomp); clean up our sockets here.
    if let Some(p) = &config.control_socket {
        let _ = std::fs::remove_file(p);
    }
    if let Some(v) = &config.vsock {
        let _ = std::fs::remove_file(&v.uds_path);
    }
    tracing::info!("VM exited: {reason:?}");
    Ok(reason.exit_code())
}
