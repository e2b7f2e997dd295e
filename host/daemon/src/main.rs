//! berthd: the berth daemon. Parses flags, opens the engine, serves the Docker API
//! on each `-H` socket, and shuts down cleanly on SIGTERM/SIGINT.

mod authz;
mod config;

use std::io::Write;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use config::{Config, Flags};

fn main() {
    // Internal re-exec used by `docker cp`: a chrooted helper, not a daemon.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("__archive") {
        std::process::exit(berth_engine::containers::archive::child_main(&argv[2..]));
    }
    let flags = Flags::parse();
    let config = match Config::resolve(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berthd: {e:#}");
            std::process::exit(1);
        }
    };
    init_logging(&config.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(config)) {
        tracing::error!("{e:#}");
        eprintln!("berthd: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(level: &str) {
    let level = if level == "fatal" { "error" } else { level };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Refuse to start if another live berthd owns the pidfile; otherwise claim it.
fn write_pidfile(path: &std::path::Path) -> Result<()> {
    if let Ok(old) = std::fs::read_to_string(path) {
        if let Ok(pid) = old.trim().parse::<i32>() {
            if pid != std::process::id() as i32
                && std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "berthd" {
                    anyhow::bail!(
                        "pid file found, ensure berthd is not running or delete {} (pid {pid})",
                        path.display()
                    );
                }
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::File::create(path)
        .with_context(|| format!("create pidfile {}", path.display()))?;
    write!(f, "{}", std::process::id())?;
    Ok(())
}

async fn run(config: Config) -> Result<()> {
    write_pidfile(&config.pidfile)?;
    let engine = berth_engine::Engine::open(berth_engine::EngineConfig {
        data_root: config.data_root.clone(),
        exec_root: config.exec_root.clone(),
        agent_bin: config.agent_bin.clone(),
        plugin_dirs: config.plugin_dirs.clone(),
        default_log_driver: config.log_driver.clone(),
        storage_driver: config.storage_driver.clone(),
        default_isolation: config.default_isolation.clone(),
        microvm: berth_engine::isolation::microvm::MicrovmConfig {
            vmm: config.vmm.clone(),
            kernel: config.guest_kernel.clone(),
            vmm_on_pvm: config.vmm_on_pvm,
        },
        max_download_bytes: config.max_download_bytes,
        registry: config.registry.clone(),
        network: config.network.clone(),
        userns_remap: config.userns_remap.clone(),
    })
    .await
    .context("open engine state")?;

    let authz = match authz::load_chain(&config, engine.clone()).await {
        Ok(a) => a,
        Err(e) => {
            engine.shutdown().await;
            return Err(e);
        }
    };

    // Handlers first: a SIGTERM right after the ready line must still shut down cleanly.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = Vec::new();
    for sock in &config.sockets {
        let listener = berth_api::bind_unix(sock, config.socket_group)?;
        let mut stop = stop_tx.subscribe();
        let engine = engine.clone();
        let sock = sock.clone();
        let authz = authz.clone();
        tracing::info!(socket = %sock.display(), "API listening");
        servers.push(tokio::spawn(async move {
            berth_api::serve(listener, engine, authz, async move {
                let _ = stop.recv().await;
            })
            .await
            .with_context(|| format!("serve {}", sock.display()))
        }));
    }
    let mut tcp_addrs = Vec::new();
    if let Some(files) = &config.tls {
        let tls = berth_api::tls::server_config(files).context("TLS configuration")?;
        for addr in &config.tcp {
            let listener = berth_api::tls::TlsListener::bind(*addr, tls.clone()).await?;
            let local = listener.addr();
            tracing::info!(%local, client_certs = files.client_ca.is_some(), "API listening (TLS)");
            tcp_addrs.push(local);
            let mut stop = stop_tx.subscribe();
            let engine = engine.clone();
            let authz = authz.clone();
            servers.push(tokio::spawn(async move {
                berth_api::serve(listener, engine, authz, async move {
                    let _ = stop.recv().await;
                })
                .await
                .with_context(|| format!("serve tcp://{local}"))
            }));
        }
    }
    // A machine-readable line for scripts and tests: the daemon is ready.
    for sock in &config.sockets {
        println!("berthd listening on unix://{}", sock.display());
    }
    for addr in &tcp_addrs {
        println!("berthd listening on tcp://{addr}");
    }
    let _ = std::io::stdout().flush();
    tracing::info!(data_root = %config.data_root.display(), "berthd started");

    let first_failure = async {
        for s in servers {
            match s.await {
                Ok(Err(e)) => return e,
                Err(e) => return anyhow::anyhow!("server task failed: {e}"),
                Ok(Ok(())) => {}
            }
        }
        futures_pending().await
    };
    let result = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); Ok(()) }
        _ = int.recv() => { tracing::info!("SIGINT: shutting down"); Ok(()) }
        e = first_failure => Err(e),
    };
    let _ = stop_tx.send(());
    engine.shutdown().await;
    for sock in &config.sockets {
        let _ = std::fs::remove_file(sock);
    }
    let _ = std::fs::remove_file(&config.pidfile);
    tracing::info!("berthd stopped");
    result
}

async fn futures_pending() -> anyhow::Error {
    std::future::pending().await
}
